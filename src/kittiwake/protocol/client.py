"""The client side of one SMTP or LMTP connection, without I/O (docs/client.md).

The mirror of `connection.py`: `receive_data(bytes)` appends the server's
bytes (`b""` = the server closed), `next_event()` turns them into
`ReplyReceived` events, one per complete reply, and the command methods
(`ehlo`, `mail`, `rcpt`, `data`, ...) return the bytes to write while
remembering which replies they are owed. Several commands may be written
before their replies come (PIPELINING, RFC 2920): replies are matched to
commands in order. From each reply's code the core learns what took effect
(a capability list, an accepted recipient, the 354 that opens the content,
the 220 that starts TLS), so the transaction state lives in one place.

Strategy (a hostile or broken server). Reply lines are cut with
`bytes.find(b"\\n")`; a line longer than `max_line_length`, a reply of more
than `max_reply_lines` lines, a line that does not start with a three-digit
code from 200 to 599, or a continuation line with another code is a
`RemoteProtocolError`, after which the connection is in state `ERROR` and
good for nothing but closing. So a server that sends an endless line or an
endless multi-line reply costs a bounded amount of memory; the asyncio
layer also stops reading while unparsed input piles up.

After the 220 to STARTTLS nothing the server sent in clear text may be
read as coming from inside TLS: bytes already received after that reply are
a `RemoteProtocolError` (the client-side twin of the STARTTLS command
injection attacks, CVE-2011-0411).

Message content goes through `content.ContentEncoder`: line ends normalised
to CR LF, dots stuffed for DATA, a final CR LF added.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kittiwake.errors import EnhancedCode
from kittiwake.protocol.connection import NEED_DATA, LocalProtocolError, _NeedData
from kittiwake.protocol.content import ContentEncoder
from kittiwake.protocol.replies import Reply

__all__ = [
    "Capabilities",
    "ClientConnection",
    "ClientState",
    "Command",
    "ConnectionClosed",
    "Limits",
    "RemoteProtocolError",
    "ReplyReceived",
]


class RemoteProtocolError(Exception):
    """The server broke the protocol (a reply that cannot be parsed, too long, ...)."""


class ClientState(enum.Enum):
    GREETING = "greeting"  # waiting for the banner
    READY = "ready"  # commands may be written
    AUTH = "auth"  # a 334 came: the next line written is a SASL response
    CONTENT = "content"  # the 354 came: message content is being written
    TLS = "tls"  # the 220 to STARTTLS came: nothing until the handshake is done
    CLOSED = "closed"
    ERROR = "error"


class Command(enum.Enum):
    """What a reply answers."""

    GREETING = "greeting"  # the banner, owed from the start
    EHLO = "EHLO"
    LHLO = "LHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"  # AUTH and each SASL response line
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "."  # the terminating dot (LMTP: one reply per recipient)
    BDAT = "BDAT"  # a non-final chunk
    BDAT_LAST = "BDAT LAST"  # the final chunk (LMTP: one reply per recipient)
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


#: Replies after which the message is over: LMTP owes one per recipient.
_FINAL = frozenset({Command.END_OF_DATA, Command.BDAT_LAST})


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The server's reply to `command`.

    After the content of an LMTP transaction, `index` says which accepted
    recipient (0, 1, ... in the order their RCPTs were accepted) the reply
    is for; it is 0 for every other reply.
    """

    command: Command
    reply: Reply
    index: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.reply.code < 400


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed its side; `owed` replies never came."""

    owed: int


Event = ReplyReceived | ConnectionClosed


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a server may make the client hold in memory.

    RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets; real servers
    send longer texts, so the default is generous. Length is counted
    without the line end. A reply of more lines than any capability list
    in the field is an attack, not an answer.
    """

    max_line_length: int = 2048
    max_reply_lines: int = 128


_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|\Z)")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the EHLO/LHLO reply advertised (RFC 5321 §4.1.1.1).

    `keywords` maps each upper-cased keyword to its parameters as written.
    An empty set (HELO, or a server without extensions) offers nothing.
    """

    keywords: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Capabilities:
        """From the reply lines after the first (which names the server)."""
        found: dict[str, str] = {}
        for line in lines:
            word, _, params = line.strip().partition(" ")
            if word.upper().startswith("AUTH="):  # the pre-RFC 4954 spelling
                word, params = "AUTH", word[5:] + " " + params
            if _KEYWORD.match(word):
                found.setdefault(word.upper(), params.strip())
        return cls(found)

    def has(self, keyword: str) -> bool:
        return keyword in self.keywords

    @property
    def size(self) -> int | None:
        """SIZE (RFC 1870): the server's limit, 0 for "no fixed limit", None if absent."""
        if "SIZE" not in self.keywords:
            return None
        value = self.keywords["SIZE"].split(" ", 1)[0]
        if value.isascii() and value.isdigit() and len(value) <= 20:
            return int(value)
        return 0

    @property
    def auth(self) -> frozenset[str]:
        """The SASL mechanisms offered (RFC 4954), upper-cased."""
        return frozenset(m.upper() for m in self.keywords.get("AUTH", "").split())

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.keywords

    @property
    def dsn(self) -> bool:
        return "DSN" in self.keywords

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def requiretls(self) -> bool:
        return "REQUIRETLS" in self.keywords


NO_CAPABILITIES = Capabilities()


@dataclass(slots=True)
class _Owed:
    """Replies one written command is still owed."""

    command: Command
    count: int
    index: int = 0


class ClientConnection:
    """Protocol state of one outgoing connection. Not thread-safe; no I/O."""

    def __init__(
        self, *, lmtp: bool = False, tls: bool = False, limits: Limits | None = None
    ) -> None:
        """`tls`: the connection is TLS from the first byte (implicit TLS)."""
        self.lmtp = lmtp
        self.limits = limits or Limits()
        self.state = ClientState.GREETING
        self.tls = tls
        self.capabilities = NO_CAPABILITIES
        self.authenticated = False
        #: MAIL was accepted; RCPTs accepted since (this transaction).
        self.mail_accepted = False
        self.accepted_rcpts = 0
        self._buf = bytearray()
        self._eof = False
        self._closed_reported = False
        self._owed: deque[_Owed] = deque([_Owed(Command.GREETING, 1)])
        self._lines: list[bytes] = []  # lines of a multi-line reply so far
        self._encoder: ContentEncoder | None = None
        self._bdat: ContentEncoder | None = None

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; `b""` means the server closed."""
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def pending_input(self) -> int:
        """Bytes received but not yet turned into replies."""
        return len(self._buf)

    @property
    def replies_owed(self) -> int:
        return sum(o.count for o in self._owed)

    def next_event(self) -> Event | _NeedData:
        """The next reply (or the server's close), or NEED_DATA."""
        if self.state is ClientState.ERROR:
            raise RemoteProtocolError("the connection already failed")
        if self.state is ClientState.CLOSED and self._closed_reported:
            return NEED_DATA
        while True:
            line = self._read_line()
            if line is None:
                break
            reply = self._add_line(line)
            if reply is not None:
                return self._received(reply)
        if self._eof:
            self._closed_reported = True
            self.state = ClientState.CLOSED
            return ConnectionClosed(self.replies_owed)
        return NEED_DATA

    def _fail(self, why: str) -> RemoteProtocolError:
        self.state = ClientState.ERROR
        self._buf.clear()
        self._lines.clear()
        return RemoteProtocolError(why)

    def _read_line(self) -> bytes | None:
        buf = self._buf
        limit = self.limits.max_line_length
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) >= limit + 2:  # even with a CR LF still to come, too long
                raise self._fail(f"reply line longer than {limit} bytes")
            return None
        end = nl - 1 if nl and buf[nl - 1] == 13 else nl
        if end > limit:
            raise self._fail(f"reply line longer than {limit} bytes")
        line = bytes(buf[:end])
        del buf[: nl + 1]
        return line

    def _add_line(self, line: bytes) -> Reply | None:
        """Collect one line; return the reply once its last line came."""
        code = line[:3]
        sep = line[3:4]
        valid = len(code) == 3 and code.isdigit() and b"200" <= code <= b"599"
        if not valid or sep not in (b"", b" ", b"-"):
            raise self._fail(f"malformed reply line {line[:40]!r}")
        if self._lines and code != self._lines[0][:3]:
            raise self._fail(f"reply code changed within a reply: {line[:40]!r}")
        self._lines.append(line)
        if sep == b"-":
            if len(self._lines) >= self.limits.max_reply_lines:
                raise self._fail(f"reply longer than {self.limits.max_reply_lines} lines")
            return None
        lines, self._lines = self._lines, []
        return _parse_reply(lines, enhanced=self._expects_enhanced(int(code)))

    def _expects_enhanced(self, code: int) -> bool:
        """EHLO lists and SASL challenges carry no enhanced code (RFC 2034 §4)."""
        owed = self._owed[0].command if self._owed else None
        return code != 334 and owed not in (Command.EHLO, Command.LHLO, Command.HELO)

    # -- replies ----------------------------------------------------------------

    def _received(self, reply: Reply) -> ReplyReceived:
        if not self._owed:
            # Replies are matched to commands by order alone: one that
            # answers nothing means the two sides no longer agree.
            raise self._fail(f"a reply to no command: {str(reply)[:60]!r}")
        owed = self._owed[0]
        event = ReplyReceived(owed.command, reply, owed.index)
        owed.count -= 1
        owed.index += 1
        if not owed.count:
            self._owed.popleft()
        self._learn(event, done=not owed.count)
        if reply.code == 421 and owed.command not in _FINAL:
            self.state = ClientState.CLOSED  # RFC 5321 §3.8: the server is going away
        return event

    def _learn(self, event: ReplyReceived, *, done: bool) -> None:
        """What a reply means for the connection's state; `done`: the command's last."""
        command, code = event.command, event.reply.code
        ok = 200 <= code < 300
        if command is Command.GREETING:
            self.state = ClientState.READY
        elif command in (Command.EHLO, Command.LHLO):
            lines = event.reply.text
            assert isinstance(lines, tuple)
            self.capabilities = Capabilities.parse(lines[1:]) if ok else NO_CAPABILITIES
        elif command is Command.HELO:
            self.capabilities = NO_CAPABILITIES
        elif command is Command.STARTTLS:
            if code == 220:
                if self._buf:
                    raise self._fail("the server sent data after its STARTTLS reply")
                self.state = ClientState.TLS
        elif command is Command.AUTH:
            self.state = ClientState.AUTH if code == 334 else ClientState.READY
            self.authenticated = self.authenticated or code == 235
        elif command is Command.MAIL:
            self.mail_accepted = ok
            self.accepted_rcpts = 0
        elif command is Command.RCPT:
            if ok and self.mail_accepted:
                self.accepted_rcpts += 1
        elif command is Command.DATA:
            if code == 354:
                self.state = ClientState.CONTENT
                self._encoder = ContentEncoder(stuff=True)
            else:
                self._end_transaction()
        elif command is Command.BDAT:
            if not ok:
                self._end_transaction()  # RFC 3030 §2: the transaction is over
        elif command in _FINAL or command is Command.RSET:
            if done:
                self._end_transaction()
        elif command is Command.QUIT:
            self.state = ClientState.CLOSED

    def _end_transaction(self) -> None:
        self.mail_accepted = False
        self.accepted_rcpts = 0
        self._bdat = None
        self._encoder = None

    # -- commands -----------------------------------------------------------------

    def _write(self, line: str, command: Command, count: int = 1) -> bytes:
        if self.state not in (ClientState.READY, ClientState.AUTH):
            raise LocalProtocolError(f"cannot send {command.value} in state {self.state.value}")
        if self.state is ClientState.AUTH and command is not Command.AUTH:
            raise LocalProtocolError(f"{command.value} during a SASL exchange")
        if any(c in line for c in "\r\n\0"):
            raise LocalProtocolError(f"line break or NUL in a {command.value} command")
        self._owed.append(_Owed(command, count))
        return line.encode("utf-8") + b"\r\n"

    def ehlo(self, hostname: str) -> bytes:
        """EHLO (LHLO for LMTP) with our name: A-labels or an address literal."""
        if not hostname or not hostname.isascii() or not hostname.isprintable() or " " in hostname:
            raise LocalProtocolError(f"invalid EHLO name {hostname!r}")
        if self.lmtp:
            return self._write(f"LHLO {hostname}", Command.LHLO)
        return self._write(f"EHLO {hostname}", Command.EHLO)

    def helo(self, hostname: str) -> bytes:
        """HELO, for an SMTP server that refused EHLO: no extensions."""
        if self.lmtp:
            raise LocalProtocolError("LMTP has no HELO")
        if not hostname or not hostname.isascii() or not hostname.isprintable() or " " in hostname:
            raise LocalProtocolError(f"invalid HELO name {hostname!r}")
        return self._write(f"HELO {hostname}", Command.HELO)

    def starttls(self) -> bytes:
        if self.tls:
            raise LocalProtocolError("TLS is already on")
        return self._write("STARTTLS", Command.STARTTLS)

    def tls_started(self) -> None:
        """The handshake succeeded: RFC 3207 §4.2, forget everything, EHLO again."""
        if self.state is not ClientState.TLS:
            raise LocalProtocolError("tls_started() without a 220 to STARTTLS")
        self.state = ClientState.READY
        self.tls = True
        self.capabilities = NO_CAPABILITIES
        self.authenticated = False
        self._end_transaction()

    def auth(self, mechanism: str, initial: str | None = None) -> bytes:
        """AUTH MECHANISM [initial-response] (base64 text, `=` for empty)."""
        if self.state is not ClientState.READY or self.mail_accepted:
            raise LocalProtocolError("AUTH outside the command state or in a transaction")
        return self._write(f"AUTH {mechanism}" + (f" {initial}" if initial else ""), Command.AUTH)

    def auth_response(self, text: str) -> bytes:
        """One SASL response line (base64, or `*` to cancel) after a 334."""
        if self.state is not ClientState.AUTH:
            raise LocalProtocolError("no SASL challenge to respond to")
        self.state = ClientState.READY  # until the next 334
        return self._write(text, Command.AUTH)

    def mail(self, path: str, params: Iterable[str] = ()) -> bytes:
        """MAIL FROM:<path> with ESMTP parameters; `path` in wire form."""
        return self._write(" ".join([f"MAIL FROM:<{path}>", *params]), Command.MAIL)

    def rcpt(self, path: str, params: Iterable[str] = ()) -> bytes:
        return self._write(" ".join([f"RCPT TO:<{path}>", *params]), Command.RCPT)

    def data(self) -> bytes:
        """DATA; after its 354 (state CONTENT) write `content` pieces, then `end_of_data`."""
        self._need_recipient("DATA")
        return self._write("DATA", Command.DATA)

    def content(self, data: bytes) -> bytes:
        """A piece of the message, in wire form: CR LF line ends, dots stuffed."""
        if self.state is not ClientState.CONTENT or self._encoder is None:
            raise LocalProtocolError("message content before the 354 to DATA")
        return self._encoder.feed(data)

    def end_of_data(self) -> bytes:
        """The rest of the last line and the terminating dot."""
        if self.state is not ClientState.CONTENT or self._encoder is None:
            raise LocalProtocolError("end of data before the 354 to DATA")
        out = self._encoder.finish()
        self._encoder = None
        self.state = ClientState.READY
        self._owed.append(_Owed(Command.END_OF_DATA, self._final_replies()))
        return out

    def bdat(self, data: bytes, *, last: bool = False) -> bytes:
        """One BDAT chunk (RFC 3030) with `data` normalised; `b""` if nothing to send yet.

        A chunk that normalises to nothing (a lone CR held back) is not sent
        and owes no reply, unless it is the last one (`BDAT 0 LAST` then).
        """
        if self.state is not ClientState.READY:
            raise LocalProtocolError(f"cannot send BDAT in state {self.state.value}")
        if self._bdat is None:
            self._need_recipient("BDAT")
            self._bdat = ContentEncoder(stuff=False)
        payload = self._bdat.feed(data)
        if last:
            payload += self._bdat.finish()
            self._bdat = None
        elif not payload:
            return b""
        command = Command.BDAT_LAST if last else Command.BDAT
        count = self._final_replies() if last else 1
        self._owed.append(_Owed(command, count))
        return f"BDAT {len(payload)}{' LAST' if last else ''}\r\n".encode() + payload

    def _need_recipient(self, verb: str) -> None:
        if any(o.command in (Command.MAIL, Command.RCPT) for o in self._owed):
            raise LocalProtocolError(f"{verb} before every MAIL/RCPT reply came")
        if not self.mail_accepted or not self.accepted_rcpts:
            raise LocalProtocolError(f"{verb} without an accepted sender and recipient")

    def _final_replies(self) -> int:
        """RFC 2033 §4.2: an LMTP server answers the content once per recipient."""
        return self.accepted_rcpts if self.lmtp else 1

    def rset(self) -> bytes:
        out = self._write("RSET", Command.RSET)
        self._bdat = None
        return out

    def noop(self) -> bytes:
        return self._write("NOOP", Command.NOOP)

    def quit(self) -> bytes:
        return self._write("QUIT", Command.QUIT)


def _parse_reply(lines: list[bytes], *, enhanced: bool) -> Reply:
    """A Reply from its raw lines; the enhanced code taken off each text."""
    code = int(lines[0][:3])
    texts: list[str] = []
    ecode: EnhancedCode | None = None
    for i, raw in enumerate(lines):
        text = raw[4:].decode("utf-8", "replace")
        if enhanced:
            found = _ENHANCED.match(text)
            if found and int(found.group(1)) == code // 100:
                if i == 0:
                    ecode = (int(found.group(1)), int(found.group(2)), int(found.group(3)))
                text = text[found.end() :]
        texts.append(text)
    return Reply(code, ecode, tuple(texts))
