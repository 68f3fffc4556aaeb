"""`state.redis` and the `state` directives: what the configuration accepts,
and every mistake refused at its FILE:LINE (docs/state.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trustme

import kittiwake.state
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.limits import LimitsModule
from kittiwake.server.endpoint import SMTPEndpoint
from kittiwake.state.redis import RedisState, Sentinel

HEAD = "hostname mx.example.org\ntls off\n"


def build(text: str, tmp_path: Path) -> Container:
    c = Container(parse_text(HEAD + text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    c.build()
    return c


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        build(text, tmp_path)
    return str(info.value)


def state_block(*lines: str) -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return f"state.redis cluster {{\n{body}}}\n"


ENDPOINT = "smtp tcp://127.0.0.1:2525 {\n    state &cluster\n    reject\n}\n"


def test_defaults_and_a_full_block(tmp_path: Path) -> None:
    c = build(state_block("endpoint redis://10.0.0.5/0") + ENDPOINT, tmp_path)
    (state,) = (m for m in c.modules if isinstance(m, RedisState))
    assert (state.url, state.fail_open, state.key_prefix) == (
        "redis://10.0.0.5/0",
        False,
        "kittiwake:",
    )
    assert (state.connect_timeout, state.timeout, state.lease) == (1.0, 1.0, 30.0)
    text = state_block(
        "endpoint rediss://:pw@redis.example:6380/2",
        "fail_open",
        "key_prefix site-a:",
        "connect_timeout 200ms",
        "timeout 2s",
        "lease 1m",
    )
    c = build(text + ENDPOINT, tmp_path)
    (state,) = (m for m in c.modules if isinstance(m, RedisState))
    assert (state.fail_open, state.key_prefix, state.timeout, state.lease) == (
        True,
        "site-a:",
        2.0,
        60.0,
    )


def test_endpoints_and_limits_refer_to_it(tmp_path: Path) -> None:
    text = state_block("endpoint unix:///run/redis/redis.sock") + (
        "limits inbound {\n    state &cluster\n    all rate 10 1s\n}\n"
        "smtp tcp://127.0.0.1:2525 {\n    state &cluster\n    limits &inbound\n    reject\n}\n"
        "submission tcp://127.0.0.1:5870 {\n    state &cluster shared-name\n"
        "    limits {\n        ip concurrency 2\n    }\n    reject\n}\n"
    )
    c = build(text.replace("submission", "smtp", 1), tmp_path)
    smtp, other = c.endpoints
    assert isinstance(smtp, SMTPEndpoint) and isinstance(other, SMTPEndpoint)
    assert smtp.state_owner == "smtp/2525" and other.state_owner == "shared-name"
    assert isinstance(smtp.limits, LimitsModule) and isinstance(other.limits, LimitsModule)
    assert smtp.limits.limiter.prefix == "limits/inbound/"
    assert other.limits.limiter.prefix == "limits/shared-name/"  # inline: the endpoint's
    assert smtp.limits.state is other.limits.state is smtp.state  # inherited by the inline


def test_a_sentinel_block(tmp_path: Path) -> None:
    text = state_block(
        "sentinel mymaster 10.0.0.5 10.0.0.6:26380 [::1]:26381",
        "db 2",
        "username kittiwake",
        "password s3cret",
        "sentinel_username watcher",
        "sentinel_password t0p",
        "tls yes",
    )
    c = build(text + ENDPOINT, tmp_path)
    (state,) = (m for m in c.modules if isinstance(m, RedisState))
    assert state.url is None
    assert state.sentinel == Sentinel(
        "mymaster", (("10.0.0.5", 26379), ("10.0.0.6", 26380), ("::1", 26381))
    )
    login = (state.db, state.username, state.password)
    assert login == (2, "kittiwake", "s3cret")
    assert (state.sentinel_username, state.sentinel_password) == ("watcher", "t0p")
    assert state.tls
    # What the log names: no password in it.
    assert state.where() == "sentinel mymaster@10.0.0.5:26379,10.0.0.6:26380,[::1]:26381"


BAD = {
    "no endpoint": (["fail_open"], 1, "missing required directive: endpoint"),
    "scheme": (
        ["endpoint http://10.0.0.5:6379"],
        2,
        "endpoint: http://10.0.0.5:6379: the scheme must be redis://, rediss:// or unix://",
    ),
    "port": (["endpoint redis://h:63x9/0"], 2, "endpoint: redis://h:63x9/0: invalid port"),
    "no host": (["endpoint redis:///0"], 2, "endpoint: redis:///0: a host is required"),
    "unencoded password": (
        ['endpoint "redis://:Pa#ss/Word@127.0.0.1:6379/0"'],
        2,
        "endpoint: redis://:***@127.0.0.1:6379/0: a password with / ? # or @ in it "
        "must be percent-encoded (%2F %3F %23 %40)",
    ),
    "relative unix path": (
        ["endpoint unix://rel.sock?password=pw"],
        2,
        "endpoint: unix://rel.sock?password=***: a unix:// endpoint needs an absolute path",
    ),
    "database": (
        ["endpoint redis://10.0.0.5/zero"],
        2,
        "endpoint: redis://10.0.0.5/zero: the database must be a number, as in /0",
    ),
    "two urls": (
        ["endpoint redis://a redis://b"],
        2,
        "endpoint: expected one URL, for example redis://127.0.0.1:6379/0",
    ),
    "unix path": (
        ["endpoint unix://redis.sock"],
        2,
        "endpoint: unix://redis.sock: a unix:// endpoint needs an absolute path",
    ),
    "both modes": (
        ["endpoint redis://h", "fail_open", "fail_closed"],
        4,
        "fail_open and fail_closed cannot both be set: choose one",
    ),
    "mode argument": (["endpoint redis://h", "fail_open yes"], 3, "fail_open takes no arguments"),
    "prefix": (
        ["endpoint redis://h", 'key_prefix "a b"'],
        3,
        "key_prefix: invalid prefix 'a b': use 1 to 64 letters, digits and _ . : / -",
    ),
    "timeout": (["endpoint redis://h", "timeout 0s"], 3, "timeout"),
    "lease": (
        ["endpoint redis://h", "lease 2s"],
        3,
        "lease: must be at least 3s (leases are renewed every third of it)",
    ),
    "unknown": (["endpoint redis://h", "passwd x"], 3, "unexpected directive: passwd"),
    "login with endpoint": (
        ["endpoint redis://h", "password x"],
        3,
        "password: only with sentinel; with endpoint, write it in the URL",
    ),
    "endpoint and sentinel": (
        ["endpoint redis://h", "sentinel mymaster h"],
        3,
        "endpoint and sentinel cannot both be set: with sentinel, the Sentinels say where",
    ),
    "no sentinel address": (
        ["sentinel mymaster"],
        2,
        "sentinel: expected the master's name and at least one HOST:PORT of a Sentinel",
    ),
    "sentinel port": (["sentinel mymaster h:0"], 2, "sentinel: h:0: invalid port '0'"),
    "sentinel ipv6": (
        ["sentinel mymaster ::1"],
        2,
        "sentinel: ::1: write an IPv6 address in brackets, as in [::1]:26379",
    ),
    "sentinel db": (["sentinel mymaster h", "db x"], 3, "db"),
    "sentinel login with endpoint": (
        ["endpoint redis://h", "sentinel_password x"],
        3,
        "sentinel_password: only with sentinel (it is the Sentinels' own)",
    ),
    "sentinel empty port": (["sentinel mymaster h:"], 2, "sentinel: h:: invalid port ''"),
    "sentinel url": (
        ["sentinel mymaster redis://h:26379"],
        2,
        "sentinel: redis://h:26379: a Sentinel is written HOST:PORT, not as a URL "
        "(for TLS to the Sentinels and the master, add `tls yes`)",
    ),
    "tls with endpoint": (
        ["endpoint redis://h", "tls yes"],
        3,
        "tls: only with sentinel; with endpoint, use rediss://",
    ),
    "sentinel tls value": (["sentinel mymaster h", "tls maybe"], 3, "tls"),
    "root_ca without tls": (
        ["endpoint redis://h", "root_ca /etc/ssl/ca.pem"],
        3,
        "root_ca: only with TLS: a rediss:// endpoint, or sentinel with tls yes",
    ),
    "root_ca with sentinel without tls": (
        ["sentinel mymaster h", "root_ca /etc/ssl/ca.pem"],
        3,
        "root_ca: only with TLS",
    ),
    "root_ca missing file": (
        ["endpoint rediss://h", "root_ca /nonexistent/ca.pem"],
        3,
        "root_ca: /nonexistent/ca.pem: cannot read",
    ),
    "sentinel commas": (
        ["sentinel mymaster h1:26379,h2:26379"],
        2,
        "sentinel: h1:26379,h2:26379: separate the Sentinels with spaces, not commas",
    ),
    "sentinel brackets": (
        ["sentinel mymaster [h]:26379"],
        2,
        "sentinel: [h]:26379: brackets are for IPv6 addresses only",
    ),
    "sentinel without master": (
        ["sentinel 10.0.0.5:26379 10.0.0.6:26379"],
        2,
        "sentinel: 10.0.0.5:26379: the first argument is the master's name as the "
        "Sentinels know it (their `sentinel monitor` line), then the Sentinels",
    ),
    "sentinel ip as master": (
        ["sentinel 10.0.0.5 10.0.0.6"],
        2,
        "sentinel: 10.0.0.5: the first argument is the master's name",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_mistakes_in_the_block_carry_their_line(case: str, tmp_path: Path) -> None:
    lines, offset, message = BAD[case]
    text = error_of(state_block(*lines) + ENDPOINT, tmp_path)
    assert text.startswith(f"t.conf:{2 + offset}: {message}"), text


def test_a_password_is_never_shown(tmp_path: Path) -> None:
    text = error_of(state_block("endpoint http://user:s3cret@h/0") + ENDPOINT, tmp_path)
    assert "s3cret" not in text and "user:***@h" in text, text


@pytest.mark.parametrize(
    ("use", "message"),
    [
        ("state cluster", "state: expected &NAME of a state block, and optionally a counter name"),
        ("state &cluster a:b", "state: invalid counter name 'a:b'"),
        ("state &mb", "state: module storage.maildir (mb) cannot be used here: it is not a shared"),
        ("state &nothing", "unknown configuration block: nothing"),
    ],
)  # fmt: skip
def test_mistakes_in_referring_to_it(use: str, message: str, tmp_path: Path) -> None:
    text = state_block("endpoint redis://h") + "storage.maildir mb {\n    path m\n}\n"
    text += f"smtp tcp://127.0.0.1:2525 {{\n    {use}\n    limits {{\n        state &cluster\n"
    text += "    }\n    deliver_to &mb\n}\n"
    assert error_of(text, tmp_path).startswith(f"t.conf:10: {message}")


def test_an_unused_block_is_an_error(tmp_path: Path) -> None:
    text = state_block("endpoint redis://h") + "smtp tcp://127.0.0.1:2525 {\n    reject\n}\n"
    assert error_of(text, tmp_path) == "t.conf:3: unused configuration block cluster (state.redis)"


def test_without_redis_py_the_block_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    monkeypatch.delitem(sys.modules, "kittiwake.state.redis_store", raising=False)
    monkeypatch.delattr(kittiwake.state, "redis_store", raising=False)
    text = error_of(state_block("endpoint redis://h") + ENDPOINT, tmp_path)
    assert text == (
        "t.conf:3: state.redis: the redis package is not installed: pip install 'kittiwake[redis]'"
    )


def test_root_ca_files_are_read_and_checked(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    # Relative paths resolve against state_dir, as tls_client's root_ca.
    here = f"state_dir {tmp_path}\n"
    for first in ("endpoint rediss://h", "sentinel mymaster h\n    tls yes"):
        c = build(here + state_block(first, "root_ca ca.pem") + ENDPOINT, tmp_path)
        (state,) = (m for m in c.modules if isinstance(m, RedisState))
        assert state.root_ca.startswith("-----BEGIN CERTIFICATE-----")
    text = here + state_block("endpoint rediss://h", "root_ca junk.pem") + ENDPOINT
    expected = f"root_ca: {tmp_path / 'junk.pem'}: not a PEM certificate bundle"
    assert expected in error_of(text, tmp_path)
