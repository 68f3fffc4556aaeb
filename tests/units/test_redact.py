"""Hiding passwords in URLs and database DSNs (kittiwake/config/redact.py)."""

from __future__ import annotations

import pytest

from kittiwake.config.redact import HIDDEN, dsn_argument, url


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("redis://:pw@10.0.0.5:6379/0", f"redis://:{HIDDEN}@10.0.0.5:6379/0"),
        ("rediss://app:pw@h/1", f"rediss://app:{HIDDEN}@h/1"),
        ("redis://app@h/1", "redis://app@h/1"),  # a user name alone is no secret
        ("redis://h:6379", "redis://h:6379"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("http://[::1", "http://[::1"),  # not a URL urllib can read: left alone
        ("redis://h:6379/0?password=pw", f"redis://h:6379/0?password={HIDDEN}"),
        ("unix:///run/r.sock?db=0&password=pw", f"unix:///run/r.sock?db=0&password={HIDDEN}"),
        # A password that is not percent-encoded: all up to the last '@' goes.
        ("redis://:Pa#ss/Word@127.0.0.1:6379/0", f"redis://:{HIDDEN}@127.0.0.1:6379/0"),
    ],
)
def test_url(given: str, shown: str) -> None:
    assert url(given) == shown


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("file:/var/lib/u.db", "file:/var/lib/u.db"),
        ("file:/u.db password=pw", f"file:/u.db password={HIDDEN}"),
        ("password=pw", f"password={HIDDEN}"),
        (
            "host=db user=m password = 'a b\\' c' dbname=x",
            f"host=db user=m password = {HIDDEN} dbname=x",
        ),
        ("PWD=pw;Server=db", f"PWD={HIDDEN};Server=db"),
        # A file URI's other options stay as they are.
        ("file:u.db?password=pw&mode=ro", f"file:u.db?password={HIDDEN}&mode=ro"),
        ("postgres://u:pw@db/mail", f"postgres://u:{HIDDEN}@db/mail"),
        ("host=db passfile=/etc/pgpass", "host=db passfile=/etc/pgpass"),
    ],
)
def test_dsn_argument(given: str, shown: str) -> None:
    assert dsn_argument(given) == shown
