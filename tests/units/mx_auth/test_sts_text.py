"""MTA-STS texts read strictly: the TXT record (RFC 8461 §3.1), the policy file
(§3.2) and MX pattern matching (§4.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.mx_auth.sts_text import (
    MAX_AGE_LIMIT,
    Mode,
    STSError,
    mx_matches,
    parse_policy,
    parse_txt_records,
)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([b"v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        ([b"v=STSv1;id=abc"], "abc"),
        ([b"v=STSv1 ;\tid=abc ; "], "abc"),
        ([b"v=STSv1; id=abc; ext_1.x=some-value"], "abc"),
        ([b"v=spf1 -all", b"v=STSv1; id=X1"], "X1"),  # other records are ignored
        ([], None),
        ([b"v=spf1 -all"], None),
        ([b"v=STSv10; id=abc"], None),  # another version is not STSv1
    ],
)
def test_txt_records(records: list[bytes], expected: str | None) -> None:
    assert parse_txt_records(records) == expected


@pytest.mark.parametrize(
    "records",
    [
        [b"v=STSv1; id=a", b"v=STSv1; id=b"],  # more than one: no policy
        [b"v=STSv1"],  # no id
        [b"v=STSv1; id=a; id=b"],
        [b"v=STSv1; id=" + b"a" * 33],  # id too long
        [b"v=STSv1; id=a-b"],  # id is letters and digits only
        [b"v=STSv1; id="],
        [b"v=STSv1; id=abc;;"],
        [b"v=STSv1 id=abc"],
        [b"v=STSv1; ext=a;b"],
        [b"v=STSv1; id=abc; ext=\x7f"],
    ],
)
def test_bad_txt_records(records: list[bytes]) -> None:
    with pytest.raises(STSError):
        parse_txt_records(records)


def test_policy_file() -> None:
    policy = parse_policy(
        b"version: STSv1\r\nmode: enforce\r\nmx: MX1.Example.com.\r\nmx: *.example.net\r\n"
        b"max_age: 604800\r\nfuture_key: whatever value\r\n"
    )
    assert policy.mode is Mode.ENFORCE
    assert policy.max_age == 604800
    assert policy.mx == ("mx1.example.com", "*.example.net")
    assert policy.text[0] == "version: STSv1" and len(policy.text) == 6
    # LF line ends, no final newline, `none` without mx.
    none = parse_policy(b"version: STSv1\nmode: none\nmax_age: 0")
    assert (none.mode, none.max_age, none.mx) == (Mode.NONE, 0, ())
    testing = parse_policy(b"mode: testing\nversion: STSv1\nmax_age: 1\nmx: a.test\n")
    assert testing.mode is Mode.TESTING
    assert parse_policy(f"version: STSv1\nmode: none\nmax_age: {MAX_AGE_LIMIT}\n".encode())


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"version: STSv1\nmode: enforce\nmax_age: 86400\n",  # no mx
        b"version: STSv1\nmode: enforce\nmx: a.test\n",  # no max_age
        b"mode: enforce\nmx: a.test\nmax_age: 1\n",  # no version
        b"version: STSv1\nversion: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\n",
        b"version: STSv1\nmode: enforce\nmode: testing\nmx: a.test\nmax_age: 1\n",
        b"version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
        b"version: STSv1\nmode: Enforce\nmx: a.test\nmax_age: 1\n",
        b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1d\n",
        b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 12345678901\n",
        f"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: {MAX_AGE_LIMIT + 1}\n".encode(),
        b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: +1\n",
        b"version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n",
        b"version: STSv1\nmode: enforce\nmx: *.com\nmax_age: 1\n",
        b"version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n",
        b"version: STSv1\nmode: enforce\nmx: a_b.test\nmax_age: 1\n",
        b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\nthis is not a field\n",
        b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\nkey:\n",
        b"version: STSv1\nmode: enforce\nmx: b\xc3\xbccher.test\nmax_age: 1\n",
        b"<html>version: STSv1</html>",
    ],
)
def test_bad_policy_files(body: bytes) -> None:
    with pytest.raises(STSError):
        parse_policy(body)


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mx.example.com", "mx.example.com", True),
        ("mx.example.com", "MX.Example.COM.", True),
        ("mx.example.com", "mx2.example.com", False),
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "example.com", False),  # the wildcard is one whole label
        ("*.example.com", "a.mx.example.com", False),  # and only one
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mx.example.com.evil.test", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


# -- hostile input: only STSError, and what parses is what the grammar allows --------------

_POLICY_PIECES = st.sampled_from(
    [
        b"version: STSv1",
        b"mode: enforce",
        b"mode: testing",
        b"mode: none",
        b"mx: mx.example.test",
        b"mx: *.example.test",
        b"max_age: 86400",
        b"max_age: 99999999999",
        b"key: value",
        b"mx:",
        b"\x00",
        b"\xff",
        b" ",
        b":",
        b"",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_POLICY_PIECES, max_size=12), st.sampled_from([b"\n", b"\r\n", b"\r", b" "]))
def test_policy_parser_never_fails_otherwise(pieces: list[bytes], eol: bytes) -> None:
    body = eol.join(pieces)
    try:
        policy = parse_policy(body)
    except STSError:
        return
    assert 0 <= policy.max_age <= MAX_AGE_LIMIT
    assert policy.mode is Mode.NONE or policy.mx
    assert all(m == m.lower() and not m.endswith(".") for m in policy.mx)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_txt_parser_never_fails_otherwise(records: list[bytes]) -> None:
    try:
        found = parse_txt_records([b"v=STSv1; " + r for r in records] + records)
    except STSError:
        return
    assert found is None or (found.isalnum() and 1 <= len(found) <= 32)
