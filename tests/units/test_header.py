"""The header reader: where the header ends in streamed content, and its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.errors import SMTPError
from kittiwake.message.header import HeaderReader


def fields(count: int) -> bytes:
    return b"".join(b"X-F%d: v\r\n" % i for i in range(count))


def read(data: bytes, step: int, max_fields: int = 1000) -> tuple[HeaderReader, bytes]:
    reader = HeaderReader(1024 * 1024, max_fields)
    rest = b""
    for i in range(0, len(data), step):
        got = reader.feed(data[i : i + step])
        if got is not None:
            rest = got + data[i + step :]
            break
    return reader, rest


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_body_lines_are_not_header_fields(step: int) -> None:
    """A small header then thousands of body lines, in any chunking."""
    body = b"line\r\n" * 5000
    reader, rest = read(b"Subject: x\r\n\r\n" + body, step)
    assert reader.header is not None and len(reader.header) == 1
    assert rest == body


@pytest.mark.parametrize("step", [1, 5, 64, 1 << 20])
@pytest.mark.parametrize(("count", "ok"), [(50, True), (51, False)])
def test_field_count_at_and_past_the_bound(step: int, count: int, ok: bool) -> None:
    data = fields(count) + b"\r\nbody\r\n"
    if ok:
        reader, rest = read(data, step, max_fields=50)
        assert reader.header is not None and len(reader.header) == 50
        assert rest == b"body\r\n"
    else:
        with pytest.raises(SMTPError, match=r"552 5\.3\.4 Too many header fields"):
            read(data, step, max_fields=50)


def test_folded_lines_are_one_field() -> None:
    folded = b"".join(b"X-F%d: a\r\n b\r\n\tc\r\n" % i for i in range(50))
    reader, _ = read(folded + b"\r\n", 3, max_fields=50)
    assert reader.header is not None and len(reader.header) == 50


def test_a_header_of_tiny_fields_is_dropped_early() -> None:
    """Past the bound while the header is still coming: refused, bytes dropped."""
    reader = HeaderReader(1024 * 1024, 1000)
    with pytest.raises(SMTPError, match="Too many header fields"):
        for _ in range(300):
            reader.feed(b"a:\r\n" * 100)
    assert len(reader._buf) == 0


@settings(max_examples=300, deadline=None)
@given(
    head=st.lists(
        st.sampled_from([b"A: 1", b"B: x\r\n y", b"C:", b"Subject: hi", b"D: z\n\tw"]), max_size=6
    ),
    newline=st.sampled_from([b"\r\n", b"\n"]),
    body=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=60), max_size=6),
)
def test_any_chunking_finds_the_same_header_and_body(
    head: list[bytes], newline: bytes, body: bytes, cuts: list[int]
) -> None:
    """Whether the header comes whole in the first chunk (cut out of it at
    once) or in pieces (collected first), the fields and the body are the same."""
    data = b"".join(line + newline for line in head) + newline + body
    expected = HeaderReader(1 << 20)
    whole = expected.feed(data)
    assert whole is not None and expected.header is not None
    reader = HeaderReader(1 << 20)
    pos, rest = 0, None
    for size in [*cuts, len(data)]:
        rest = reader.feed(data[pos : pos + size])
        pos += size
        if rest is not None:
            break
    assert rest is not None and reader.header is not None
    assert rest + data[pos:] == whole
    assert [f.raw for f in reader.header] == [f.raw for f in expected.header]
