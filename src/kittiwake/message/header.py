"""The header section of a message: parsed once, kept byte for byte.

Strategy: while content streams in, `HeaderReader` collects bytes only until
the empty line that ends the header (bounded by `max_header_size`); the rest
goes straight to the body buffer. The header is split into fields but every
field keeps its original bytes (folding, spacing, even 8-bit text), so what we
forward or store is exactly what we received plus the fields we add on top.
Nothing here runs `email.parser` over a whole message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kittiwake.errors import SMTPError

MALFORMED = SMTPError(554, (5, 6, 0), "Malformed message header")


def header_too_big() -> SMTPError:
    return SMTPError(552, (5, 3, 4), "Message header size exceeds limit")


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
    def parse(cls, data: bytes) -> Header:
        """Split a header section (without its final empty line) into fields.

        Raises the `554 5.6.0` SMTPError for a continuation line with no field
        before it, a line without a colon, or a name outside RFC 5322's
        printable characters.
        """
        fields: list[Field] = []
        if not data:
            return cls(fields)
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        current: list[bytes] = []
        name = ""
        for line in lines:
            if line[:1] in (b" ", b"\t"):
                if not current:
                    raise MALFORMED
                current.append(line + b"\n")
                continue
            if current:
                fields.append(Field(name, b"".join(current)))
            colon = line.find(b":")
            raw_name = line[:colon].rstrip(b" \t")
            if colon <= 0 or not raw_name or any(b < 33 or b > 126 for b in raw_name):
                raise MALFORMED
            name = raw_name.decode("ascii")
            current = [line + b"\n"]
        if current:
            fields.append(Field(name, b"".join(current)))
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

    __slots__ = ("_buf", "_done", "header", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._done = False
        self.header: Header | None = None

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, chunk: bytes) -> bytes | None:
        start = max(0, len(self._buf) - 3)
        self._buf += chunk
        buf = self._buf
        # head_end: where the header's last line ends; body_at: where the
        # body starts. DATA content has CR LF line ends only; BDAT content
        # may use bare LFs, so an LF LF also ends the header.
        if buf.startswith(b"\r\n"):
            head_end, body_at = 0, 2
        elif buf.startswith(b"\n"):
            head_end, body_at = 0, 1
        else:
            crlf = buf.find(b"\r\n\r\n", start)
            lf = buf.find(b"\n\n", start)
            if lf >= 0 and (crlf < 0 or lf < crlf + 1):
                head_end, body_at = lf + 1, lf + 2
            elif crlf >= 0:
                head_end, body_at = crlf + 2, crlf + 4
            else:
                if self.max_size and len(buf) > self.max_size:
                    raise header_too_big()
                return None
        if self.max_size and body_at > self.max_size:
            raise header_too_big()
        self.header = Header.parse(bytes(buf[:head_end]))
        self._done = True
        rest = bytes(buf[body_at:])
        self._buf = bytearray()
        return rest

    def finish(self) -> None:
        """End of content: what was collected is the whole header."""
        if self._done:
            return
        data = bytes(self._buf)
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        self.header = Header.parse(data)
        self._done = True
        self._buf = bytearray()
