"""The signature tag checks against dkimpy's `validate_signature_fields`.

`kittiwake.dkim.verify.signature_problem` replaces dkimpy's function on the
verification path (dkimpy compiles its regular expressions again on every
call); both must refuse the same signatures with the same words. Random tag
values over the bytes that matter, plus a case for each rule.
"""

from __future__ import annotations

import time

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.dkim.verify import (
    _BASE64_SYNTAX,
    _H_SPLIT,
    _base64_syntax,
    _signed_names,
    signature_problem,
)

B64 = b"DqSqleerbqMI5X5KjZZuQPh6g3kOzgTT6xu8Asu6V2VN+/GGM3zFP05aeJMDNMQB28alKJC=="
GOOD: dict[bytes, bytes] = {
    b"v": b"1",
    b"a": b"rsa-sha256",
    b"b": B64,
    b"bh": b"0bumorKtNt+6Kq1p5b1u27L+lB6+E7HSF/sHEqAQWUU=",
    b"d": b"example.org",
    b"h": b"from : to",
    b"s": b"sel",
}


def reference(tags: dict[bytes, bytes]) -> str:
    """dkimpy's verdict: its message, "" for none, or the exception it raised."""
    try:
        dkim.validate_signature_fields(tags)
    except dkim.ValidationError as exc:
        return str(exc)
    except (KeyError, IndexError, ValueError) as exc:
        return repr(exc)
    return ""


def ours(tags: dict[bytes, bytes]) -> str:
    try:
        return signature_problem(tags)
    except (KeyError, IndexError, ValueError) as exc:
        return repr(exc)


now = int(time.time())
CASES: list[dict[bytes, bytes]] = [
    {},
    {b"a": b"rsa-md5"},
    {b"a": b"rsa-sha1"},
    {b"a": b"ed25519-sha256"},
    {b"b": b"!!!"},
    {b"b": B64[:-1]},
    {b"b": b"ab cd\r\n ef gh"},
    {b"b": b""},
    {b"bh": b"abc"},
    {b"bh": b"!!!!"},
    {b"bh": b"ab\tcd"},
    {b"cv": b"pass"},
    {b"cv": b"maybe"},
    {b"d": b"exa(mple).org"},
    {b"d": b"ex\\ample.org"},
    {b"d": "bücher.example".encode()},
    {b"d": "bü@cher.example".encode()},
    {b"i": b"@example.org"},
    {b"i": b"user@sub.example.org"},
    {b"i": b"user@EXAMPLE.ORG"},
    {b"i": b"user@badexample.org"},
    {b"i": b"example.org"},
    {b"i": b"user@example.net"},
    {b"d": b"", b"i": b"@"},
    {b"l": b"100"},
    {b"l": b""},
    {b"l": b"1" * 77},
    {b"l": b"12a"},
    {b"q": b"dns/txt"},
    {b"q": b"dns"},
    {b"t": str(now).encode()},
    {b"t": str(now + 40000).encode()},
    {b"t": b"soon"},
    {b"v": b"2"},
    {b"x": str(now + 100).encode()},
    {b"x": str(now - 40000).encode()},
    {b"x": b"later"},
    {b"t": str(now).encode(), b"x": str(now - 100).encode()},
    {b"t": b"0", b"x": b"1"},
    {b"v": b"2", b"x": b"nope", b"t": b"nope"},
]


@pytest.mark.parametrize("change", CASES)
def test_each_rule_as_dkimpy(change: dict[bytes, bytes]) -> None:
    tags = {**GOOD, **change}
    assert ours(tags) == reference(tags)


values = st.lists(
    st.sampled_from([b" ", b"\t", b"\r\n", b"=", b"@", b".", b"(", b"0", b"9", b"a", b"Z", b"+"]),
    max_size=12,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([b"b", b"bh", b"cv", b"d", b"i", b"l", b"q", b"v"]), values))
def test_random_tags_as_dkimpy(change: dict[bytes, bytes]) -> None:
    tags = {**GOOD, **change}
    assert ours(tags) == reference(tags)


b64_values = st.lists(
    st.sampled_from([b" ", b"\t", b"\r\n", b"\n", b"=", b"A", b"z", b"0", b"+", b"/", b"-", b"@"]),
    max_size=12,
).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(b64_values)
def test_base64_syntax_is_the_pattern(value: bytes) -> None:
    assert _base64_syntax(value) == (_BASE64_SYNTAX.match(value) is not None)


h_values = st.lists(
    st.sampled_from([b" ", b"\t", b"\r\n", b":", b"From", b"to", b"x-y", b"\x0b"]), max_size=12
).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(h_values)
def test_signed_names_split_as_the_pattern(h: bytes) -> None:
    expected = [name.lower() for name in _H_SPLIT.split(h.strip()) if name]
    assert _signed_names(h) == expected
