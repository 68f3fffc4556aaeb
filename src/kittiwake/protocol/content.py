"""Outgoing message content: line ends made CR LF, dots stuffed (docs/client.md).

What kittiwake relays must be read by the next server exactly as we read it,
or the two disagree about where the message ends (SMTP smuggling). RFC 5321
§2.3.8 allows CR and LF on the wire only as the pair CR LF, so every lone LF
and every lone CR becomes CR LF on the way out: the reference rule is
`re.sub(rb"\\r\\n|\\r|\\n", b"\\r\\n", content)`, then a final CR LF if the
content does not end with one.

Strategy: content arrives in chunks of any size (the header, then the body
buffer's pieces). Each chunk is converted on its own with C-speed calls:
`count` decides whether anything needs changing at all, one regex `sub`
fixes lone CRs and LFs, one `replace` stuffs dots after line ends. The only
state carried from one chunk to the next is whether the output ended at a
line start (for a dot at the very start of the next chunk) and a CR held
back from the end of a chunk, because only the next chunk tells whether it
is half of a CR LF pair. Memory is one chunk, whatever the message size.
"""

from __future__ import annotations

import re

__all__ = ["ContentEncoder"]

_LONE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class ContentEncoder:
    """Turns message content into what goes on the wire after DATA or BDAT.

    With `stuff` (DATA): a `.` that starts a line is doubled (RFC 5321
    §4.5.2) and `finish` adds the terminating `.` CR LF. Without (BDAT,
    RFC 3030): the bytes are only normalised; chunk sizes are the caller's.
    """

    __slots__ = ("_held_cr", "_line_start", "_stuff", "size")

    def __init__(self, *, stuff: bool) -> None:
        self._stuff = stuff
        self._held_cr = False
        # The content starts a line: right after `DATA` CR LF (and its 354).
        self._line_start = True
        #: Bytes returned so far (the content as sent, terminator excluded).
        self.size = 0

    def feed(self, data: bytes) -> bytes:
        """The wire form of the next piece of content (possibly `b""`)."""
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        if not data:
            return b""
        pairs = data.count(b"\r\n")
        if data.count(b"\r") != pairs or data.count(b"\n") != pairs:
            data = _LONE.sub(b"\r\n", data)
        if self._stuff:
            data = data.replace(b"\n.", b"\n..")
            if self._line_start and data.startswith(b"."):
                data = b"." + data
        self._line_start = data.endswith(b"\n")
        self.size += len(data)
        return data

    def finish(self) -> bytes:
        """The end of the content: the line end it lacks, then (DATA) `.` CR LF."""
        tail = b""
        if self._held_cr or not self._line_start:
            tail = b"\r\n"  # a held-back lone CR is a line end of its own
        self._held_cr = False
        self._line_start = True
        self.size += len(tail)
        return tail + b".\r\n" if self._stuff else tail
