"""The header section of a message: parsed once, kept byte for byte.

Strategy: while content streams in, `HeaderReader` collects bytes only until
the empty line that ends the header (bounded by `max_header_size`); the rest
goes straight to the body buffer. The header is split into fields but every
field keeps its original bytes (folding, spacing, even 8-bit text), so what we
forward or store is exactly what we received plus the fields we add on top.
Nothing here runs `email.parser` over a whole message.

Memory: a header costs about its own size twice while it is parsed, never a
multiple of its field count. `max_fields` bounds the number of fields (a
header of a million one-byte fields would otherwise become a million
objects); the streaming reader counts field starts as bytes arrive, with
`bytes.count` over each new chunk only, and gives up on a header that is
over the bound at once, dropping what it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kittiwake.errors import SMTPError

MALFORMED = SMTPError(554, (5, 6, 0), "Malformed message header")
#: The bytes a field name may hold (RFC 5322 §3.6.8: printable US-ASCII
#: except the colon, which ends the name): deleting them from a valid
#: name leaves nothing, one C call per field.
_NAME_BYTES = bytes(range(33, 127))


#: Fields per header when nothing else is configured (`max_header_fields`):
#: generous for real mail, whose headers rarely reach 100 fields.
MAX_FIELDS = 1000


def header_too_big() -> SMTPError:
    return SMTPError(552, (5, 3, 4), "Message header size exceeds limit")


def too_many_fields() -> SMTPError:
    return SMTPError(552, (5, 3, 4), "Too many header fields")


@dataclass(slots=True)
class Field:
    """One header field: its name as written and its exact bytes (with CR LF)."""

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        """The unfolded value, decoded as UTF-8 (RFC 6532), trimmed."""
        _, _, value = self.raw.partition(b":")
        text = value.decode("utf-8", "surrogateescape")
        return text.replace("\r\n", "").replace("\n", "").strip()


def fold(name: str, value: str, *, first: int = 66, later: int = 76) -> bytes:
    """Write `Name: value` folded before white space (RFC 5322 §2.2.3).

    The first line holds `Name: ` plus up to `first` characters of value,
    each later line up to `later` characters including its leading white
    space; a break goes before the last space or tab that keeps the line
    within the limit; where there is none the hard limit 998 is tried.
    """
    lines = []
    rest = value
    limit = first
    while len(rest) > limit:
        cut = max(rest.rfind(" ", 1, limit + 1), rest.rfind("\t", 1, limit + 1))
        if cut <= 0:
            cut = max(rest.rfind(" ", 1, 999), rest.rfind("\t", 1, 999))
            if cut <= 0:
                break
        lines.append(rest[:cut])
        rest = rest[cut:]
        limit = later
    lines.append(rest)
    return (f"{name}: " + "\r\n".join(lines) + "\r\n").encode("utf-8")


class Header:
    """An ordered list of fields; new fields go on top (trace order)."""

    __slots__ = ("fields",)

    def __init__(self, fields: list[Field] | None = None) -> None:
        self.fields = fields if fields is not None else []

    @classmethod
    def parse(cls, data: bytes, max_fields: int = 0) -> Header:
        """Split a header section (without its final empty line) into fields.

        Raises the `554 5.6.0` SMTPError for a continuation line with no field
        before it, a line without a colon, or a name outside RFC 5322's
        printable characters, and `552 5.3.4` past `max_fields` (0: no cap).
        Each field's bytes are one slice of `data`: no list of lines.
        """
        fields: list[Field] = []
        if not data:
            return cls(fields)
        if not data.endswith(b"\n"):
            data += b"\n"
        n = len(data)
        pos = 0
        start = -1  # where the current field began
        name = ""
        while pos < n:
            end = data.find(b"\n", pos) + 1
            if data[pos] in (0x20, 0x09):  # a continuation line
                if start < 0:
                    raise MALFORMED
                pos = end
                continue
            if start >= 0:
                fields.append(Field(name, data[start:pos]))
                if max_fields and len(fields) >= max_fields:
                    raise too_many_fields()
            colon = data.find(b":", pos, end)
            raw_name = data[pos:colon].rstrip(b" \t") if colon > pos else b""
            if not raw_name or raw_name.translate(None, _NAME_BYTES):
                raise MALFORMED
            name = raw_name.decode("ascii")
            start = pos
            pos = end
        fields.append(Field(name, data[start:]))
        return cls(fields)

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def get(self, name: str) -> str | None:
        """The value of the first field called `name` (any case), or None."""
        key = name.lower()
        for f in self.fields:
            if f.name.lower() == key:
                return f.value
        return None

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [f.value for f in self.fields if f.name.lower() == key]

    def count(self, name: str) -> int:
        key = name.lower()
        return sum(1 for f in self.fields if f.name.lower() == key)

    def add(self, name: str, value: str, *, folded: bool = True) -> None:
        """Prepend a field: fields we add go above what we received."""
        raw = fold(name, value) if folded else f"{name}: {value}\r\n".encode()
        self.fields.insert(0, Field(name, raw))

    def to_bytes(self) -> bytes:
        """The header section including the empty line that ends it."""
        return b"".join(f.raw for f in self.fields) + b"\r\n"


class HeaderReader:
    """Finds the end of the header in streamed content.

    `feed(chunk)` returns None while the header is incomplete; once the empty
    line is seen it returns whatever body bytes followed it in that chunk.
    `finish()` handles a message that ended inside its header (header only).
    """

    __slots__ = ("_buf", "_done", "_starts", "header", "max_fields", "max_size")

    def __init__(self, max_size: int, max_fields: int = MAX_FIELDS) -> None:
        self.max_size = max_size
        self.max_fields = max_fields
        self._buf = bytearray()
        self._done = False
        self._starts = 0  # line breaks not followed by white space, so far
        self.header: Header | None = None

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, chunk: bytes) -> bytes | None:
        # The usual message brings its whole header in its first chunk:
        # then the chunk is cut where the header ends, without collecting
        # it first (one copy of the body instead of three).
        data: bytes | bytearray = chunk
        old = len(self._buf)
        found = _header_end(chunk, 0) if not old else None
        if found is None:
            self._buf += chunk
            data = self._buf
            found = _header_end(data, max(0, old - 3))
        if found is None:
            if self.max_size and len(data) > self.max_size:
                self._give_up()
                raise header_too_big()
            if self.max_fields:
                self._count_fields(old)
            return None
        head_end, body_at = found
        if self.max_size and body_at > self.max_size:
            self._give_up()
            raise header_too_big()
        try:
            self.header = Header.parse(bytes(data[:head_end]), self.max_fields)
        finally:
            self._done = True
        rest = bytes(data[body_at:])
        self._buf = bytearray()
        return rest

    def _count_fields(self, old: int) -> None:
        """Count field starts in what `feed` just added; give up past the bound.

        Called only while the header is incomplete, so every byte counted
        is header (a complete header is counted exactly by `Header.parse`).
        A field starts after every line break not followed by a space or a
        tab. Line breaks are counted in the new bytes only, and the two-byte
        continuation patterns where they end in the new bytes, so each is
        counted once; a break at the very end still waiting for its next
        byte counts as a start, hence a little slack.
        """
        buf = self._buf
        cont_from = max(0, old - 1)
        self._starts += (
            buf.count(b"\n", old) - buf.count(b"\n ", cont_from) - buf.count(b"\n\t", cont_from)
        )
        if self._starts > self.max_fields + 2:
            self._give_up()
            raise too_many_fields()

    def _give_up(self) -> None:
        """Drop what was collected: the message is refused, its bytes unneeded."""
        self._buf = bytearray()
        self._done = True

    def finish(self) -> None:
        """End of content: what was collected is the whole header."""
        if self._done:
            return
        data = bytes(self._buf)
        self._buf = bytearray()
        self._done = True
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        self.header = Header.parse(data, self.max_fields)


def _header_end(buf: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(where the header's last line ends, where the body starts), or None
    while the empty line that ends the header has not come.

    DATA content has CR LF line ends only; BDAT content may use bare LFs,
    so an LF LF also ends the header. `start`: where new bytes may begin
    a terminator (earlier bytes were searched already).
    """
    if buf.startswith(b"\r\n"):
        return 0, 2
    if buf.startswith(b"\n"):
        return 0, 1
    crlf = buf.find(b"\r\n\r\n", start)
    # An LF LF counts only before that CR LF CR LF: not searched past it, so
    # a usual header does not cost a scan of the whole body that follows.
    lf = buf.find(b"\n\n", start, len(buf) if crlf < 0 else crlf + 2)
    if lf >= 0 and (crlf < 0 or lf < crlf + 1):
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 2, crlf + 4
    return None
