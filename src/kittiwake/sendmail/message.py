"""The message a `sendmail` caller pipes in, made ready for SMTP (docs/sendmail.md).

Strategy: programs that call sendmail write whatever they like: bare LF
line ends, no `Date` or `Message-ID`, sometimes an mbox `From ` line, the
recipients only in `To`/`Cc`/`Bcc` (with `-t`). The input is read as
lines (any of CRLF, LF), the header split off at the first empty line or
at the first line that cannot be a header field (RFC 5322 §2.2: a name of
printable characters but the colon, then a colon; folded lines start with
white space), and the whole message is written back with CRLF line ends
(RFC 5321 §2.3.8), the header fields byte for byte as they came except
that `Bcc` is removed with `-t` and the missing `From`, `Date` and
`Message-ID` are added on top. Dot-stuffing is the SMTP client's job.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import uuid
from dataclasses import dataclass, field

__all__ = ["Message", "read_message"]

#: A header field's first line: a name (printable ASCII but the colon), a colon.
_FIELD = re.compile(rb"[!-9;-~]+:")


@dataclass
class Message:
    """The header fields (each a list of its lines, without line ends) and the body lines."""

    fields: list[list[bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)

    def names(self) -> list[str]:
        return [f[0].split(b":", 1)[0].strip().decode("ascii").lower() for f in self.fields]

    def value(self, f: list[bytes]) -> str:
        """A field's value, unfolded (RFC 5322 §2.2.3), as text."""
        raw = b"".join([f[0].split(b":", 1)[1], *f[1:]])
        return raw.decode("utf-8", "surrogateescape").strip()

    def has(self, name: str) -> bool:
        """A field `name` is present with a value (an empty one counts as missing)."""
        return any(
            n == name and self.value(f) for n, f in zip(self.names(), self.fields, strict=True)
        )

    def remove(self, name: str) -> None:
        self.fields = [f for n, f in zip(self.names(), self.fields, strict=True) if n != name]

    def addresses(self, *names: str) -> list[str]:
        """The addresses of every field called one of `names` (groups flattened)."""
        values = [
            self.value(f) for n, f in zip(self.names(), self.fields, strict=True) if n in names
        ]
        return [addr for _, addr in email.utils.getaddresses(values) if addr]

    def complete(self, *, sender: str, full_name: str, hostname: str) -> None:
        """Add `From`, `Date` and `Message-ID` when they are missing (or empty).

        The same three a submission server adds or insists on (RFC 6409 §8),
        here because sendmail may hand the message to an `smtp` or `lmtp`
        endpoint, which leaves the header alone (docs/submission.md).
        """
        added: list[bytes] = []
        if not self.has("from"):
            self.remove("from")
            shown = (
                email.utils.formataddr((full_name, sender), charset="utf-8")
                if full_name
                else sender
            )
            added.append(f"From: {shown}".encode())
        if not self.has("date"):
            self.remove("date")
            added.append(f"Date: {email.utils.format_datetime(dt.datetime.now(dt.UTC))}".encode())
        if not self.has("message-id"):
            self.remove("message-id")
            added.append(f"Message-ID: <{uuid.uuid4()}@{hostname}>".encode())
        self.fields = [[line] for line in added] + self.fields

    def to_bytes(self) -> bytes:
        """The message with CRLF line ends, ending with one."""
        lines = [line for f in self.fields for line in f]
        lines.append(b"")
        lines.extend(self.body)
        return b"".join(line + b"\r\n" for line in lines)

    def eight_bit(self) -> bool:
        return any(
            b > 0x7F for line in (*[x for f in self.fields for x in f], *self.body) for b in line
        )


def read_message(data: bytes, *, dot_ends: bool) -> Message:
    """Split `data` into header fields and body lines.

    `dot_ends`: a line holding a single dot ends the message, the way
    sendmail reads its input without `-i` (what follows is ignored).
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final line end
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if dot_ends and b"." in lines:
        lines = lines[: lines.index(b".")]
    message = Message()
    start = 1 if lines and lines[0].startswith(b"From ") else 0  # an mbox separator
    i = start
    while i < len(lines):
        line = lines[i]
        if line == b"":
            i += 1  # the separator itself
            break
        if line[:1] in (b" ", b"\t") and message.fields:
            message.fields[-1].append(line)
        elif _FIELD.match(line):
            message.fields.append([line])
        else:
            break  # not a header line: the body starts here
        i += 1
    message.body = lines[i:]
    return message
