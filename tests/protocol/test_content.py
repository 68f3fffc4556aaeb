"""Outgoing content: CR LF only, dots stuffed, whatever the bytes and chunking.

The property (robustness rule R4): for any content cut into any chunks,
what the next server reads, once unstuffed, is the content with every lone
CR and lone LF made CR LF and a final CR LF added; the wire carries no CR
or LF outside a CR LF pair, so it ends exactly once, at our terminator.
Checked twice: against a reference unstuffing, and against kittiwake's own
server core reading the same bytes.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.protocol import AutoReply, BodyChunk, BodyEnd, Reply, ServerConnection, Settings
from kittiwake.protocol.content import ContentEncoder
from kittiwake.protocol.replies import LINE_TOO_LONG

_LONE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
OK = Reply(250, (2, 0, 0), "ok")


def normalised(content: bytes) -> bytes:
    """The reference rule, written differently from the encoder's."""
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", content)
    return out if out.endswith(b"\r\n") or not out else out + b"\r\n"


def encode(pieces: list[bytes], *, stuff: bool) -> bytes:
    encoder = ContentEncoder(stuff=stuff)
    return b"".join(encoder.feed(p) for p in pieces) + encoder.finish()


def unstuff(wire: bytes) -> bytes:
    """Read DATA content as RFC 5321 §4.5.2 says: up to CR LF . CR LF, dots removed."""
    assert wire.endswith(b".\r\n")
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    body = lines[:-1]
    assert b"." not in body  # nothing ends the data early
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in body)


def through_server_core(wire: bytes) -> bytes:
    """What kittiwake's own server takes from the same bytes after DATA."""
    conn = ServerConnection(Settings(max_line_length=0, max_message_size=0))
    conn.receive_data(b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + wire)
    for reply in (OK, OK, OK, Reply(354, None, "go")):
        conn.next_event()
        conn.send(reply)
    data = b""
    while True:
        event = conn.next_event()
        if isinstance(event, BodyChunk):
            data += event.data
        else:
            assert isinstance(event, BodyEnd)
            return data


def chunked(content: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(content) + 1) for c in cuts})
    pieces, start = [], 0
    for p in [*points, len(content)]:
        pieces.append(content[start:p])
        start = p
    return pieces


CONTENT = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"..", b"\r\n", b"a", b"\r\n.\r\n", b"\n.\n", b"\0"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(content=CONTENT, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_data_wire_is_normalised_and_stuffed(content: bytes, cuts: list[int]) -> None:
    wire = encode(chunked(content, cuts), stuff=True)
    assert not _LONE.search(wire)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    assert unstuff(wire) == normalised(content)
    assert through_server_core(wire) == normalised(content)


@settings(max_examples=300, deadline=None)
@given(content=CONTENT, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_bdat_wire_is_normalised_whatever_the_chunking(content: bytes, cuts: list[int]) -> None:
    wire = encode(chunked(content, cuts), stuff=False)
    assert not _LONE.search(wire)
    assert wire == normalised(content)


def test_examples() -> None:
    assert encode([b""], stuff=True) == b".\r\n"
    assert encode([b"a"], stuff=True) == b"a\r\n.\r\n"
    assert encode([b".", b"\r", b"\n."], stuff=True) == b"..\r\n..\r\n.\r\n"
    assert encode([b"x\r", b"\r\n"], stuff=True) == b"x\r\n\r\n.\r\n"
    assert encode([b"end\r"], stuff=False) == b"end\r\n"
    # The smuggling sequences become ordinary, stuffed lines.
    assert encode([b"a\n.\nMAIL FROM:<x@y>\r\n"], stuff=True) == (
        b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"
    )


def test_size_counts_the_wire_bytes() -> None:
    encoder = ContentEncoder(stuff=True)
    out = encoder.feed(b".a\n") + encoder.feed(b"b")
    out += encoder.finish()
    assert encoder.size == len(out) - len(b".\r\n")


def refused_for_length(wire: bytes, cuts: list[int], limit: int) -> bool:
    """Whether the server core closes with "Too long line" reading `wire` after DATA."""
    conn = ServerConnection(Settings(max_line_length=limit, max_message_size=0))
    conn.receive_data(b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    for reply in (OK, OK, OK, Reply(354, None, "go")):
        conn.next_event()
        conn.send(reply)
    for piece in chunked(wire, cuts):
        if not piece:
            continue  # b"" would mean the client closed
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if isinstance(event, AutoReply):
                return event.replies[0] == LINE_TOO_LONG
            if isinstance(event, BodyEnd):
                return False
            if not isinstance(event, BodyChunk):
                break  # NEED_DATA: the next piece
            if conn.replies_owed:
                conn.send(OK)
    raise AssertionError("the content never ended")


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.integers(min_value=0, max_value=60), max_size=30),
    limit=st.integers(min_value=20, max_value=40),  # the commands stay shorter
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_line_length_limit_whatever_the_chunking(
    lines: list[int], limit: int, cuts: list[int]
) -> None:
    """A content line of `limit` bytes or more (its CR counted, as the client
    sent it) closes the session, however the bytes arrive; shorter ones never do."""
    wire = b"".join(b"x" * n + b"\r\n" for n in lines) + b".\r\n"
    expected = any(n + 1 >= limit for n in lines)
    assert refused_for_length(wire, cuts, limit) == expected
