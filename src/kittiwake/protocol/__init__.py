"""The sans-IO SMTP/LMTP server core: bytes in, events and replies out.

Nothing in this package touches a socket, a clock or an event loop; the
asyncio layer in `kittiwake.server` feeds it and carries out its decisions.
"""

from kittiwake.protocol.connection import NEED_DATA, ServerConnection, Settings
from kittiwake.protocol.events import (
    Auth,
    AuthLine,
    AutoReply,
    Bdat,
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    Data,
    Event,
    Greeting,
    MailFrom,
    Quit,
    RcptTo,
    Reset,
    StartTLS,
)
from kittiwake.protocol.replies import Reply

__all__ = [
    "NEED_DATA",
    "Auth",
    "AuthLine",
    "AutoReply",
    "Bdat",
    "BodyChunk",
    "BodyEnd",
    "ConnectionClosed",
    "Data",
    "Event",
    "Greeting",
    "MailFrom",
    "Quit",
    "RcptTo",
    "Reply",
    "Reset",
    "ServerConnection",
    "Settings",
    "StartTLS",
]
