"""Tag lists and signed header data against dkimpy's own functions.

`kittiwake.dkim.header` must hash exactly what dkimpy hashes (its
`hash_headers`, `parse_tag_value` and `RE_BTAG`), or a signature one
verifier accepts the other refuses. Random input over the bytes that
matter (white space of every kind, CR, LF, `;`, `=`, `b`, base64), plus
the cases that made each rule.
"""

from __future__ import annotations

import dkim
import dkim.util
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.dkim.header import parse_tags, remove_b_value, signed_header_data


class _Collect:
    """Stands in for a hash object: keeps what dkimpy would hash."""

    def __init__(self) -> None:
        self.data = bytearray()

    def update(self, data: bytes) -> None:
        self.data += data


def reference(
    headers: list[tuple[bytes, bytes]],
    include: list[bytes],
    sig_field: tuple[bytes, bytes],
    relaxed: bool,
) -> bytes:
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple" if relaxed else b"simple/simple")
    collect = _Collect()
    dkim.hash_headers(collect, policy, policy.canonicalize_headers(headers), include, sig_field, {})
    return bytes(collect.data)


def ours(
    headers: list[tuple[bytes, bytes]],
    include: list[bytes],
    sig_field: tuple[bytes, bytes],
    relaxed: bool,
) -> bytes:
    return signed_header_data(headers, include, sig_field, relaxed)


# --- b= removal ----------------------------------------------------------------------

b_values = st.lists(
    st.sampled_from(
        [b" ", b"\t", b"\r", b"\n", b"\r\n", b";", b"b", b"=", b"b=", b"bh=", b"Ab+/", b"x", b"-"]
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(b_values)
def test_remove_b_value_is_dkimpys(value: bytes) -> None:
    assert remove_b_value(value) == dkim.RE_BTAG.sub(b"\\1", value)


@pytest.mark.parametrize(
    "value",
    [
        b" v=1; a=rsa-sha256; bh=AAAA; b=abc+/=\r\n",
        b" v=1; b=ab\r\n\tcd; bh=AAAA;\r\n",
        b" v=1; b = ab cd ; bh=AAAA",
        b" b=\r\n",
        b" b= \r\n",
        b" b=abc\n",
        b" b=abc \r\n",
        b";b=abc;b=def",
        b" bh=xyz",
        b"b=abc",  # nothing before b: not a tag start
    ],
)
def test_remove_b_value_cases(value: bytes) -> None:
    assert remove_b_value(value) == dkim.RE_BTAG.sub(b"\\1", value)


# --- tag lists -------------------------------------------------------------------


def _parse(parser: object, value: bytes) -> object:
    try:
        return parser(value)  # type: ignore[operator]
    except dkim.util.InvalidTagValueList as exc:
        return (type(exc), exc.args)


tag_lists = st.lists(
    st.sampled_from([b"a", b"b", b"1", b"_", b" ", b"\t", b"\r\n", b";", b"=", b"v", b"-"]),
    max_size=25,
).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(tag_lists)
def test_parse_tags_is_dkimpys(value: bytes) -> None:
    assert _parse(parse_tags, value) == _parse(dkim.util.parse_tag_value, value)


def test_parse_tags_errors() -> None:
    assert parse_tags(b" v=1; a = rsa-sha256 ;") == {b"v": b"1", b"a": b"rsa-sha256"}
    with pytest.raises(dkim.util.DuplicateTag):
        parse_tags(b"v=1; v=2")
    with pytest.raises(dkim.util.InvalidTagSpec):
        parse_tags(b"v=1;; a=2")
    with pytest.raises(dkim.util.InvalidTagSpec):
        parse_tags(b"1v=1")


# --- signed header data ------------------------------------------------------------

names = st.sampled_from([b"From", b"from", b"FROM ", b"To", b"Subject", b"X-A", b"x-a\t"])
values = st.lists(
    st.sampled_from(
        [b" ", b"\t", b"  ", b"\r\n ", b"\r\n\t", b"\n ", b"\r", b"a", b"b c", b"\x0b"]
    ),
    max_size=12,
).map(lambda parts: b"".join(parts) + b"\r\n")
signature_values = st.lists(
    st.sampled_from([b" v=1;", b" b=", b"AbC+/=", b"\r\n\t", b" ", b"; bh=", b"h=from"]),
    max_size=12,
).map(b"".join)
includes = st.lists(
    st.sampled_from([b"from", b"to", b"subject", b"x-a", b"from ", b"cc"]), max_size=8
)


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.tuples(names, values), max_size=10),
    includes,
    signature_values,
    st.sampled_from([b"DKIM-Signature", b"dkim-signature "]),
    st.booleans(),
)
def test_signed_header_data_is_dkimpys(
    headers: list[tuple[bytes, bytes]],
    include: list[bytes],
    sig_value: bytes,
    sig_name: bytes,
    relaxed: bool,
) -> None:
    sig_field = (sig_name, sig_value + b"\r\n")
    assert ours(headers, include, sig_field, relaxed) == reference(
        headers, include, sig_field, relaxed
    )


def test_signed_header_data_bottom_up_and_oversigned() -> None:
    headers = [
        (b"From", b" first\r\n"),
        (b"Subject", b" a  \t b \r\n folded\r\n"),
        (b"From", b" second\r\n"),
    ]
    include = [b"from", b"subject", b"from", b"from"]
    sig_field = (b"DKIM-Signature", b" v=1; h=from:subject; b=ABC\r\n def=\r\n")
    for relaxed in (False, True):
        assert ours(headers, include, sig_field, relaxed) == reference(
            headers, include, sig_field, relaxed
        )
    relaxed_data = ours(headers, include, sig_field, True)
    assert relaxed_data == (
        b"from:second\r\nsubject:a b folded\r\nfrom:first\r\ndkim-signature:v=1; h=from:subject; b="
    )
