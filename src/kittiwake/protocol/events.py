"""What the client did, as the core reports it to the server layer.

Every event but `BodyChunk`, `Bdat` and `ConnectionClosed` expects exactly one
reply through `ServerConnection.send` (LMTP's `BodyEnd`: one per accepted
recipient). Events are named for what the peer did, not for what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kittiwake.message.meta import RcptDSN
from kittiwake.protocol.replies import Reply


class Event:
    """Base class of all events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Greeting(Event):
    """HELO, EHLO or LHLO with its argument (first word, not validated)."""

    verb: str
    domain: str

    @property
    def extended(self) -> bool:
        return self.verb != "HELO"


@dataclass(frozen=True, slots=True)
class MailParams:
    """ESMTP parameters of MAIL FROM that the core understood."""

    size: int | None = None
    body: str = ""  # "", "7BIT" or "8BITMIME"
    smtputf8: bool = False
    requiretls: bool = False
    auth: str | None = None  # xtext-decoded AUTH= value, "" for <>
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    envid: str | None = None  # RFC 3461 ENVID, xtext-decoded


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """`address` is the path content as parsed (`""` for the null sender)."""

    address: str
    params: MailParams = field(default_factory=MailParams)


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    address: str
    dsn: RcptDSN | None = None  # RFC 3461 NOTIFY/ORCPT, when given


@dataclass(frozen=True, slots=True)
class Data(Event):
    """DATA passed the core's checks; reply 354 to receive the content."""


@dataclass(frozen=True, slots=True)
class Bdat(Event):
    """A BDAT command; its `size` payload bytes follow as BodyChunk events.

    No reply now: the reply comes at the `BodyEnd` that closes this chunk.
    `first` tells the server to open the message's buffer.
    """

    size: int
    last: bool
    first: bool


@dataclass(frozen=True, slots=True)
class BodyChunk(Event):
    """Message content, unstuffed and with CR LF line ends (DATA) or raw (BDAT)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BodyEnd(Event):
    """The end of DATA content or of one BDAT chunk.

    `too_large`: content passed the size limit; nothing after the limit was
    delivered as BodyChunk and the reply must be 552. `last` is False only
    for a non-final BDAT chunk (reply `250 2.0.0 Continue` or an error that
    ends the transaction).
    """

    last: bool = True
    too_large: bool = False


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """RSET: abort the transaction; reply 250."""


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT: reply 221 and close."""


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STARTTLS passed the core's checks; reply 220 and start the handshake."""


@dataclass(frozen=True, slots=True)
class Auth(Event):
    """AUTH MECH [initial-response]; `initial` is the raw base64 text or None."""

    mechanism: str
    initial: str | None


@dataclass(frozen=True, slots=True)
class AuthLine(Event):
    """A client line during a SASL exchange (base64, or `*` to cancel)."""

    line: str


@dataclass(frozen=True, slots=True)
class AutoReply(Event):
    """A command the core answered itself (syntax, sequence, NOOP, ...).

    The server sends `replies` as they are. With `close`, the connection ends
    after them, and any open transaction is aborted (too many errors, a line
    too long).
    """

    replies: tuple[Reply, ...]
    close: bool = False
    protocol_error: bool = False
    #: For a protocol error, the start of the offending line (for the log).
    line: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The client closed its side; everything before it has been reported."""
