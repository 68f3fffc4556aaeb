"""A permissive server around the sans-IO core, for protocol tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from kittiwake.protocol import (
    NEED_DATA,
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
    Reply,
    Reset,
    ServerConnection,
    Settings,
    StartTLS,
)
from kittiwake.protocol import replies as R


@dataclass
class Message:
    sender: str
    rcpts: list[str]
    body: bytes
    too_large: bool
    via_bdat: bool = False


@dataclass
class Driver:
    """Answers every event the way an accept-all server would."""

    settings: Settings = field(default_factory=Settings)
    tls: bool = False
    conn: ServerConnection = field(init=False)
    out: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    closed: bool = False
    reject_rcpt: set[str] = field(default_factory=set)
    _body: bytearray = field(default_factory=bytearray)
    _sender: str = ""
    _rcpts: list[str] = field(default_factory=list)
    _bdat: bool = False

    def __post_init__(self) -> None:
        self.conn = ServerConnection(self.settings, tls=self.tls)

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.pump()

    def pump(self) -> None:
        while not self.closed:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                return
            assert isinstance(ev, Event)
            self.events.append(ev)
            self.answer(ev)

    def send(self, reply: Reply) -> None:
        self.out += self.conn.send(reply)

    def answer(self, ev: Event) -> None:
        if isinstance(ev, AutoReply):
            for r in ev.replies:
                self.send(r)
            if ev.close:
                self.closed = True
        elif isinstance(ev, Greeting):
            if ev.extended:
                self.send(R.ehlo(ev.domain, self.conn.ehlo_capabilities()))
            else:
                self.send(Reply(250, (2, 0, 0), f"Hello {ev.domain}"))
            self._rcpts = []
        elif isinstance(ev, MailFrom):
            self._sender, self._rcpts = ev.address, []
            self.send(Reply(250, (2, 0, 0), f"Roger, accepting mail from <{ev.address}>"))
        elif isinstance(ev, RcptTo):
            if ev.address in self.reject_rcpt:
                self.send(Reply(550, (5, 1, 1), "User doesn't exist"))
            else:
                self._rcpts.append(ev.address)
                self.send(Reply(250, (2, 0, 0), f"I'll make sure <{ev.address}> gets this"))
        elif isinstance(ev, Data):
            self._body.clear()
            self._bdat = False
            self.send(R.START_DATA)
        elif isinstance(ev, Bdat):
            if ev.first:
                self._body.clear()
                self._bdat = True
        elif isinstance(ev, BodyChunk):
            self._body += ev.data
        elif isinstance(ev, BodyEnd):
            if ev.too_large:
                reply = Reply(552, (5, 3, 4), "Maximum message size exceeded")
            elif not ev.last:
                self.send(R.BDAT_CONTINUE)
                return
            else:
                reply = Reply(250, (2, 0, 0), "OK: queued")
                self.messages.append(
                    Message(
                        self._sender, list(self._rcpts), bytes(self._body), ev.too_large, self._bdat
                    )
                )
            for _ in range(len(self._rcpts) if self.settings.lmtp and ev.last else 1):
                self.send(reply)
        elif isinstance(ev, Reset):
            self.send(R.RSET)
        elif isinstance(ev, Quit):
            self.send(R.BYE)
            self.closed = True
        elif isinstance(ev, StartTLS):
            self.send(R.READY_TLS)
        elif isinstance(ev, Auth | AuthLine):
            self.send(Reply(235, (2, 0, 0), "Authentication succeeded"))
        elif isinstance(ev, ConnectionClosed):
            self.closed = True
        else:  # pragma: no cover
            raise AssertionError(ev)

    @property
    def lines(self) -> list[str]:
        return bytes(self.out).decode("utf-8").split("\r\n")[:-1]


def run(data: bytes, settings: Settings | None = None, *, step: int = 0) -> Driver:
    """Feed `data` all at once (step 0) or `step` bytes at a time, then EOF."""
    d = Driver(settings or Settings())
    if step:
        for i in range(0, len(data), step):
            d.feed(data[i : i + step])
    else:
        d.feed(data)
    d.feed(b"")
    return d


def envelope(body: bytes) -> bytes:
    return b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + body
