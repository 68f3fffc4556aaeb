"""Writing MIME content safely: line ends, transfer encodings, folded fields.

The pieces a generated message (a DSN, `kittiwake.dsn`) needs to be well
formed whatever it carries: CRLF line ends, no line over 998 octets
(RFC 5322 §2.1.1), and content put in an encoding that can carry it
(RFC 2045 §2.7-2.8, §6.7-6.8). They work on bytes and on streams of
blocks, so a large original message is never held whole.

Strategy. Content is first normalised to CRLF (`crlf`, `crlf_blocks`);
`Shape` (or `LineScanner`, for a stream) then says whether it is fit for
`7bit`, for `8bit`, or needs quoted-printable or base64. The scanner also
looks for a MIME boundary at the start of every line, carrying the open
line's length and first octets across blocks, so one pass over a file
answers both questions. Nothing here does I/O: callers pass blocks in.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "LINE_MAX",
    "LineScanner",
    "Shape",
    "base64_lines",
    "crlf",
    "crlf_blocks",
    "fold_field",
    "quoted_printable",
    "shape_of",
]

#: Octets a line may hold, its CRLF not counted (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6).
LINE_MAX = 998
_FOLD_AT = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
_WORD_MAX = 900  # octets of one unbroken word; leaves room for any field name
_NEWLINES = re.compile(rb"\r\n|\r|\n")
_LONG_LINE = re.compile(rb"[^\r\n]{%d}" % (LINE_MAX + 1))
_TOKENS = re.compile(r" *[^ ]+| +")


# --- Line ends ------------------------------------------------------------------


def crlf(data: bytes) -> bytes:
    """Every line end as CRLF: bare CR and bare LF included (one line end each)."""
    return _NEWLINES.sub(b"\r\n", data)


def crlf_blocks(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """`crlf` over a stream: a CR that ends a block waits for the next one.

    Without that, a CRLF split across two blocks would become two line ends.
    """
    held = b""
    for block in blocks:
        data = held + block
        held = b""
        if data.endswith(b"\r"):
            data, held = data[:-1], b"\r"
        if data:
            yield crlf(data)
    if held:
        yield b"\r\n"


# --- Transfer encodings ---------------------------------------------------------


def _qp_line(line: bytes) -> list[bytes]:
    """One line as quoted-printable, soft-broken into lines of at most 76 characters."""
    out, current = [], b""
    last = len(line) - 1
    for i, byte in enumerate(line):
        # RFC 2045 §6.7 rules 2 and 3: printable ASCII but "=" as it is, and
        # space or tab unless it ends the line.
        literal = (33 <= byte <= 126 and byte != 61) or (byte in (9, 32) and i < last)
        token = bytes((byte,)) if literal else b"=%02X" % byte
        if len(current) + len(token) > 75:
            out.append(current + b"=")
            current = b""
        current += token
    out.append(current)
    return out


def quoted_printable(data: bytes) -> bytes:
    """CRLF-normalised `data` as quoted-printable; each line end stays a hard break.

    The result is 7-bit, its lines are at most 76 characters, and it ends
    with CRLF exactly when `data` does.
    """
    if not data:
        return b""
    lines = data.split(b"\r\n")
    ends = lines[-1] == b""
    if ends:
        lines.pop()
    encoded = b"\r\n".join(b"\r\n".join(_qp_line(line)) for line in lines)
    return encoded + b"\r\n" if ends else encoded


def base64_lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """A stream as base64 lines of 76 characters, each ending with CRLF (RFC 2045 §6.8).

    Whole groups of 57 octets are encoded as blocks arrive; the rest waits.
    """
    rest = b""
    for block in blocks:
        data = rest + block
        cut = len(data) - len(data) % 57
        if cut:
            yield base64.encodebytes(data[:cut]).replace(b"\n", b"\r\n")
        rest = data[cut:]
    if rest:
        yield base64.encodebytes(rest).replace(b"\n", b"\r\n")


# --- What content holds ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """What CRLF-normalised content holds, which decides how it may travel."""

    eight_bit: bool = False
    nul: bool = False
    long_line: bool = False

    @property
    def seven_bit(self) -> bool:
        """Fit for `7bit` (RFC 2045 §2.7): ASCII, no NUL, no line over 998 octets."""
        return not (self.eight_bit or self.nul or self.long_line)

    @property
    def eight_bit_ok(self) -> bool:
        """Fit for `8bit` (RFC 2045 §2.8): no NUL, no line over 998 octets."""
        return not (self.nul or self.long_line)


def shape_of(data: bytes) -> Shape:
    """The `Shape` of CRLF-normalised content held in memory."""
    return Shape(not data.isascii(), b"\0" in data, _LONG_LINE.search(data) is not None)


class LineScanner:
    """The `Shape` of a stream of CRLF-normalised blocks, and whether a line starts with `marker`.

    Feed it blocks as `crlf_blocks` yields them: a CRLF is never split
    between two blocks, but a line may span blocks: the open line's length and its first
    `len(marker)` octets are carried over. Whole lines inside a block are
    checked with one regular expression and one search each, not a loop.
    """

    __slots__ = ("_head", "_length", "eight_bit", "hit", "long_line", "marker", "nul")

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.eight_bit = self.nul = self.long_line = self.hit = False
        self._length = 0  # octets of the open line so far
        self._head = b""  # its first len(marker) octets

    def feed(self, data: bytes) -> None:
        self.eight_bit = self.eight_bit or not data.isascii()
        self.nul = self.nul or b"\0" in data
        first = data.find(b"\r\n")
        if first < 0:
            self._extend(data)
            return
        self._extend(data[:first])
        self._end_line()
        last = data.rfind(b"\r\n")
        middle = data[first : last + 2]  # whole lines, each after a CRLF
        if _LONG_LINE.search(middle):
            self.long_line = True
        if self.marker and b"\r\n" + self.marker in middle:
            self.hit = True
        self._extend(data[last + 2 :])

    def finish(self) -> Shape:
        """End of the stream: the last line counts even without its CRLF."""
        self._end_line()
        return Shape(self.eight_bit, self.nul, self.long_line)

    def _extend(self, piece: bytes) -> None:
        self._length += len(piece)
        if len(self._head) < len(self.marker):
            self._head += piece[: len(self.marker) - len(self._head)]
        if self._length > LINE_MAX:
            self.long_line = True

    def _end_line(self) -> None:
        if self.marker and self._head == self.marker:
            self.hit = True
        self._length, self._head = 0, b""


# --- Header-like fields ---------------------------------------------------------


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _split_word(token: str) -> list[str]:
    """A token of more than `_WORD_MAX` octets in pieces; later pieces start with a space.

    Folding only happens before white space (RFC 5322 §2.2.3), so a word
    longer than a line gets a space put into it: the one change made to a
    value, and only to values no honest peer sends.
    """
    if _octets(token) <= _WORD_MAX:
        return [token]
    pieces, current, size = [], "", 0
    for c in token:
        n = _octets(c)
        if size + n > _WORD_MAX:
            pieces.append(current)
            current, size = " ", 1
        current += c
        size += n
    pieces.append(current)
    return pieces


def fold_field(name: str, value: str) -> bytes:
    """`Name: value` and CRLF, UTF-8, folded before a space to keep within 78 characters.

    `value` must hold no CR, LF or other control characters. A line holds
    at least one word, so it may pass 78 characters but never 998 octets
    (for names of up to 90 characters).
    """
    words = _TOKENS.findall(" " + value) if value else []
    tokens = [piece for word in words for piece in _split_word(word)]
    lines: list[str] = []
    line, fresh = f"{name}:", True
    for token in tokens:
        fits = _octets(line) + _octets(token) <= _FOLD_AT
        # Break only before a space that has a word after it: a line of
        # white space alone is no folding (RFC 5322 §3.2.2).
        if fits or fresh or not token.startswith(" ") or not token.strip():
            line += token
        else:
            lines.append(line)
            line = token
        fresh = False
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
