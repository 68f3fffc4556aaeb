"""kittiwake.message.mime and kittiwake.message.xtext: the encoders DSNs are written with.

Each encoder is checked against an independent decoder (the standard
library's where there is one) over arbitrary input, split into blocks at
arbitrary points where it streams.
"""

from __future__ import annotations

import base64
import binascii
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kittiwake.message.mime import (
    LINE_MAX,
    LineScanner,
    Shape,
    base64_lines,
    crlf,
    crlf_blocks,
    fold_field,
    quoted_printable,
    shape_of,
)
from kittiwake.message.xtext import clean_line, encode_unitext, encode_xtext, escape_non_ascii

_line_bytes = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"\x00", b"\xe9", b"-"]))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(st.binary(max_size=300) | _line_bytes.map(b"".join), st.lists(st.integers(0, 400)))
def test_crlf_blocks_equals_crlf_of_the_whole(data: bytes, cuts: list[int]) -> None:
    """A CR at the end of one block and an LF at the start of the next are one line end."""
    assert b"".join(crlf_blocks(split_at(data, cuts))) == crlf(data)


def test_crlf() -> None:
    assert crlf(b"a\rb\nc\r\nd\n\re\r\r\n") == b"a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\n"


def _lines_starting(data: bytes, marker: bytes) -> bool:
    return any(line.startswith(marker) for line in data.split(b"\r\n"))


@given(
    st.lists(
        st.sampled_from([b"--b=_x", b"-", b"\r\n", b"x" * 500, b"\xff", b"\x00", b"=_x"]),
        max_size=12,
    ).map(b"".join),
    st.lists(st.integers(0, 3000)),
)
def test_the_scanner_sees_what_a_whole_look_sees(data: bytes, cuts: list[int]) -> None:
    """Fed as `crlf_blocks` yields them: line ends whole, lines cut anywhere."""
    scanner = LineScanner(b"--b=_x")
    for block in crlf_blocks(split_at(data, cuts)):
        scanner.feed(block)
    assert scanner.finish() == shape_of(crlf(data))
    assert scanner.hit == _lines_starting(crlf(data), b"--b=_x")


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        (b"plain\r\n", Shape()),
        (b"\xc3\xa9\r\n", Shape(eight_bit=True)),
        (b"a\x00b", Shape(nul=True)),
        (b"y" * LINE_MAX + b"\r\n" + b"y" * LINE_MAX, Shape()),
        (b"y" * (LINE_MAX + 1), Shape(long_line=True)),
    ],
)
def test_shapes(data: bytes, shape: Shape) -> None:
    assert shape_of(data) == shape
    assert shape.seven_bit == (shape == Shape())
    assert shape.eight_bit_ok == (not shape.nul and not shape.long_line)


@given(st.binary(max_size=400).map(crlf))
def test_quoted_printable_round_trips(data: bytes) -> None:
    encoded = quoted_printable(data)
    assert encoded.isascii()
    assert binascii.a2b_qp(encoded) == data
    lines = encoded.split(b"\r\n")
    assert max(len(line) for line in lines) <= 76
    assert all(not line.endswith((b" ", b"\t")) for line in lines)
    assert encoded.endswith(b"\r\n") == data.endswith(b"\r\n")


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000)))
def test_base64_lines_round_trip(data: bytes, cuts: list[int]) -> None:
    encoded = b"".join(base64_lines(split_at(data, cuts)))
    assert base64.b64decode(encoded) == data
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) == 76 for line in lines[:-2])


_value = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp"]) | st.just(" "),
    max_size=3000,
)


@given(_value)
def test_fold_field_keeps_every_line_within_998_octets(value: str) -> None:
    data = fold_field("Diagnostic-Code", value)
    assert data.endswith(b"\r\n")
    lines = data[:-2].split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert all(line.strip() for line in lines), "no line of white space alone"
    unfolded = data[:-2].replace(b"\r\n", b"").decode("utf-8")
    if all(len(word.encode()) <= 900 for word in value.split(" ")):
        assert unfolded == (f"Diagnostic-Code: {value}" if value else "Diagnostic-Code:")


def test_fold_field_breaks_before_spaces_at_78() -> None:
    data = fold_field("Subject", "word " * 40)
    lines = data.split(b"\r\n")[:-1]
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b" ") for line in lines[1:])
    assert fold_field("A", "") == b"A:\r\n"


def _decode_unitext(text: str) -> str:
    return re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: chr(int(m.group(1), 16)), text)


@given(st.text(st.characters(codec="utf-8")))
def test_unitext_round_trips(text: str) -> None:
    seven = encode_unitext(text, seven_bit=True)
    assert seven.isascii()
    assert re.fullmatch(r"(?:[!-*,-<>-\[\]-~]|\\x\{(?:0|[1-9A-F][0-9A-F]*)\})*", seven)
    assert _decode_unitext(seven) == text
    eight = encode_unitext(text, seven_bit=False)
    assert _decode_unitext(eight) == text
    assert all(not c.isascii() or "!" <= c <= "~" for c in eight)


def test_unitext_examples() -> None:
    assert encode_unitext("jörg+x=y\\z a@b", seven_bit=True) == (
        "j\\x{F6}rg\\x{2B}x\\x{3D}y\\x{5C}z\\x{20}a@b"
    )
    assert encode_unitext("jörg@bü.example", seven_bit=False) == "jörg@bü.example"
    assert escape_non_ascii("née \\ +") == "n\\x{E9}e \\ +"


@given(st.text(st.characters(codec="utf-8")) | st.text(st.sampled_from("\udc80\udcff\ud800a")))
def test_xtext_is_printable_ascii(text: str) -> None:
    encoded = encode_xtext(text)
    assert re.fullmatch(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*", encoded)


def test_xtext_examples() -> None:
    assert encode_xtext("a+b=c d\r\n") == "a+2Bb+3Dc+20d+0D+0A"
    assert encode_xtext("é") == "+C3+A9"
    assert encode_xtext("\udcff") == "+FF"  # an undecodable byte comes back as itself


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("a\r\nb", "a b"),
        ("  a \x00\x00 b\t", "a b"),
        ("x\u2028y\u202ez\x85", "x y z"),
        ("bad \udcff byte", "bad \ufffd byte"),
        ("ab" * 10, "abababababab [...]"),
    ],
)
def test_clean_line(text: str, clean: str) -> None:
    assert clean_line(text, 12) == clean
