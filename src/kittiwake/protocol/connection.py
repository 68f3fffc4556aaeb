"""The server side of one SMTP or LMTP connection, without I/O.

Strategy: `receive_data(bytes)` appends to one receive buffer; each
`next_event()` takes the next thing the client did out of it, or returns
`NEED_DATA`. Command lines are cut with `bytes.find(b"\\n")`. Message content
is never handled line by line: each call scans the whole buffered region with
`find` for CR LF `.`, which is either the end marker CR LF `.` CR LF or a
stuffed dot; removes dot-stuffing with one `replace` only when a stuffed dot
was seen, and turns bare LFs into CR LF only when a search shows there are
any; a tail that could be the start of the end marker is kept back for the
next call. That keeps the per-byte work in C and the per-message work in a
few calls, whatever the message size.

The core enforces the protocol: command order, the line-length and size
limits, the LMTP reply count. Policy (who may send, where mail goes) is the
server's: it answers the events with `send(reply)`, and the core learns from
each reply's code whether a MAIL, RCPT, DATA, AUTH or STARTTLS took effect.

End of data (RFC 5321 §4.1.1.4, docs/protocol.md): only CR LF `.` CR LF ends DATA,
and only a `.` right after CR LF (or at the very start) is a stuffed dot. A
bare LF is stored as CR LF but starts no line for these rules, so no
combination of bare CR and LF can end the data early or differently from how
a downstream server would read what we forward (SMTP smuggling).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kittiwake.protocol import replies
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
from kittiwake.protocol.parse import ParseError, parse_mail, parse_rcpt, valid_base64
from kittiwake.protocol.replies import Reply


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class LocalProtocolError(Exception):
    """The server layer used the core wrongly (a reply out of turn)."""


class State(enum.Enum):
    COMMAND = "command"
    AUTH = "auth"  # a SASL exchange: lines are AuthLine events
    DATA = "data"  # reading DATA content
    BDAT = "bdat"  # reading a BDAT chunk's payload
    TLS = "tls"  # 220 sent to STARTTLS: nothing is read until the handshake
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Settings:
    """What the core needs to know of the endpoint's configuration."""

    lmtp: bool = False
    max_line_length: int = 4000  # 0 = unlimited
    max_message_size: int = 32 * 1024 * 1024  # 0 = unlimited
    max_recipients: int = 20000  # 0 = unlimited
    tls_available: bool = False
    auth_mechanisms: tuple[str, ...] = ()  # offered when AUTH is allowed
    insecure_auth: bool = False
    max_protocol_errors: int = 3  # the next one closes the connection
    #: Commands that move no message forward (NOOP, RSET, VRFY, greetings,
    #: MAIL, empty BDAT chunks, ...) allowed between two messages; the next
    #: one closes the connection. 0 = no limit.
    max_junk_commands: int = 100
    #: Offer the DSN extension (RFC 3461) and take its parameters; off when
    #: the endpoint's pipeline cannot send the notices they ask for.
    dsn: bool = True


_NOT_IMPLEMENTED = frozenset({"SEND", "SOML", "SAML", "EXPN", "HELP", "TURN"})
# Commands that make no progress on their own: a client that only sends
# these (or keeps starting transactions it never finishes) holds a session
# and its resources for nothing, like Postfix's smtpd_junk_command_limit.
_JUNK = frozenset({"NOOP", "RSET", "VRFY", "HELO", "EHLO", "LHLO", "MAIL"}) | _NOT_IMPLEMENTED
# Cross-protocol attacks (a browser made to POST to port 25) start like this:
# hang up at once instead of answering line after line of HTTP.
_HTTP_VERBS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"CONNECT ", b"OPTIONS ")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# The same test written to start with its literal, so `re` can jump from LF
# to LF in C: 2.5 times faster than two counts over a 10 KiB chunk.
_ANY_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_CRLF_DOT = b"\r\n."
_END = b"\r\n.\r\n"
_END_PREFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")


class ServerConnection:
    """Protocol state of one connection. Not thread-safe; no I/O."""

    def __init__(self, settings: Settings, *, tls: bool = False) -> None:
        self.settings = settings
        self.state = State.COMMAND
        self.tls = tls
        self.greeting: str | None = None
        self.authenticated = False
        self.protocol_errors = 0
        self.junk_commands = 0  # since the last message's content ended
        self._buf = bytearray()
        self._eof = False
        self._closed_reported = False
        # transaction
        self.mail: MailFrom | None = None
        self.rcpt_count = 0
        self.smtputf8 = False
        self._bdat_active = False
        self._body_size = 0
        # reading content
        self._remaining = 0  # BDAT bytes still to read
        self._too_large = False
        self._bdat_last = False
        self._discard_reply: Reply | None = None
        self._strip_prefix = False
        self._line_carry = 0
        # replies owed
        self._awaiting: Event | None = None
        self._owed = 0
        self._end_queued = False  # BodyEnd follows the final BodyChunk

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; `b""` means the client closed."""
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def replies_owed(self) -> int:
        """How many replies the last event still expects (LMTP: one per recipient)."""
        return self._owed

    @property
    def content_size(self) -> int:
        """Bytes of the current message's content received so far (unstuffed),
        those past `max_message_size` included; 0 outside a transaction."""
        return self._body_size

    @property
    def pending_input(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf)

    def next_event(self) -> Event | _NeedData:
        if self._owed:
            raise LocalProtocolError(f"reply to {self._awaiting!r} not sent yet")
        if self._end_queued:
            self._end_queued = False
            return self._body_end(True)
        state = self.state
        if state is State.COMMAND:
            return self._next_command()
        if state is State.DATA:
            return self._next_data()
        if state is State.BDAT:
            return self._next_bdat()
        if state is State.AUTH:
            return self._next_auth_line()
        if state is State.CLOSED:
            return self._closed()
        return NEED_DATA  # TLS: wait for tls_started()

    def _closed(self) -> Event | _NeedData:
        if self._closed_reported:
            return NEED_DATA
        self._closed_reported = True
        self.state = State.CLOSED
        return ConnectionClosed()

    def _expect(self, event: Event, count: int = 1) -> Event:
        self._awaiting = event
        self._owed = count
        return event

    # -- commands -------------------------------------------------------------

    def _read_line(self) -> str | Event | None:
        """The next line without its CR LF, decoded (bytes that are not UTF-8
        as lone surrogates); an Event when the line is too long; None until
        a whole line is there."""
        buf = self._buf
        limit = self.settings.max_line_length
        nl = buf.find(b"\n")
        if nl < 0:
            if limit and len(buf) >= limit:
                return self._fatal(replies.LINE_TOO_LONG)
            return None
        if limit and nl >= limit:
            return self._fatal(replies.LINE_TOO_LONG)
        end = nl - 1 if nl and buf[nl - 1] == 13 else nl
        line = buf[:end].decode("utf-8", "surrogateescape")
        del buf[: nl + 1]
        return line

    def _fatal(self, reply: Reply) -> Event:
        self._buf.clear()
        self._reset_transaction()
        self.state = State.CLOSED
        self._closed_reported = True
        return self._auto(reply, close=True)

    def _auto(
        self, *reply_list: Reply, close: bool = False, error: bool = False, line: str = ""
    ) -> Event:
        event = AutoReply(reply_list, close=close, protocol_error=error, line=line)
        return self._expect(event, len(reply_list))

    def _protocol_error(self, reply: Reply, line: str = "") -> Event:
        self.protocol_errors += 1
        line = line[:80]
        if self.protocol_errors > self.settings.max_protocol_errors:
            self._buf.clear()
            self._reset_transaction()
            self.state = State.CLOSED
            self._closed_reported = True
            return self._auto(reply, replies.TOO_MANY_ERRORS, close=True, error=True, line=line)
        return self._auto(reply, error=True, line=line)

    def _next_command(self) -> Event | _NeedData:
        if self._buf.startswith(_HTTP_VERBS):
            return self._fatal(replies.BAD_COMMAND)
        line = self._read_line()
        if line is None:
            return self._closed() if self._eof else NEED_DATA
        if not isinstance(line, str):
            return line
        if not line:
            return self._protocol_error(replies.BAD_SYNTAX)
        verb = line[:4].upper()
        if verb == "STAR" and line[:8].upper() == "STARTTLS":
            return self._starttls()
        n = len(line)
        if n < 4 or n == 5 or (n > 5 and line[4] != " "):
            return self._protocol_error(replies.BAD_COMMAND, line)
        args = line[5:].strip(" \t")
        if verb in _JUNK and self._junk():
            return self._fatal(replies.TOO_MANY_JUNK)
        handler = _HANDLERS.get(verb)
        if handler is not None:
            return handler(self, args)
        if verb in _NOT_IMPLEMENTED:
            return self._auto(replies.not_implemented(verb))
        return self._protocol_error(replies.unrecognized(verb), line)

    def _junk(self) -> bool:
        """Count a command that makes no progress; True once past the limit."""
        self.junk_commands += 1
        limit = self.settings.max_junk_commands
        return bool(limit) and self.junk_commands > limit

    def _greet(self, verb: str, args: str) -> Event:
        if self.settings.lmtp != (verb == "LHLO"):
            return self._auto(replies.IS_LMTP if self.settings.lmtp else replies.NOT_LMTP)
        domain = args.split(" ", 1)[0] if args else ""
        if not domain:
            return self._auto(replies.HELO_ARG)
        if not (domain.isascii() and domain.isprintable()):
            # A domain or address literal is printable ASCII (RFC 5321
            # §4.1.1.1): a control character or an 8-bit byte is refused,
            # so it can never reach a reply, a log line or `Received`.
            return self._auto(replies.HELO_BAD_ARG)
        # RFC 5321 §4.1.4: a greeting resets any transaction in progress.
        self._reset_transaction()
        self.greeting = None
        return self._expect(Greeting(verb, domain))

    def _helo(self, args: str) -> Event:
        return self._greet("HELO", args)

    def _ehlo(self, args: str) -> Event:
        return self._greet("EHLO", args)

    def _lhlo(self, args: str) -> Event:
        return self._greet("LHLO", args)

    def _mail(self, args: str) -> Event:
        if self.greeting is None:
            return self._auto(replies.NEED_GREETING)
        if self._bdat_active:
            return self._auto(replies.during_transfer("MAIL"))
        try:
            address, params = parse_mail(args, self.settings.max_message_size, self.settings.dsn)
        except ParseError as exc:
            return self._auto(exc.reply)
        if params.requiretls and not self.tls:
            # RFC 8689 §4.1: REQUIRETLS only travels over TLS, and is only
            # offered there; a clear-text session cannot promise it.
            return self._auto(replies.REQUIRETLS_WITHOUT_TLS)
        return self._expect(MailFrom(address, params))

    def _rcpt(self, args: str) -> Event:
        if self._bdat_active:
            return self._auto(replies.during_transfer("RCPT"))
        if self.mail is None:
            return self._auto(replies.MISSING_MAIL)
        limit = self.settings.max_recipients
        if limit and self.rcpt_count >= limit:
            return self._auto(Reply(452, (4, 5, 3), f"Maximum limit of {limit} recipients reached"))
        try:
            address, dsn = parse_rcpt(args, self.settings.dsn)
        except ParseError as exc:
            return self._auto(exc.reply)
        return self._expect(RcptTo(address, dsn))

    def _data(self, args: str) -> Event:
        if args:
            return self._auto(replies.DATA_ARGS)
        if self._bdat_active:
            return self._auto(replies.during_transfer("DATA"))
        if self.mail is None or not self.rcpt_count:
            return self._auto(replies.MISSING_RCPT)
        return self._expect(Data())

    def _bdat(self, args: str) -> Event | _NeedData:
        words = args.split()
        size: int | None = None
        if words and words[0].isascii() and words[0].isdigit() and int(words[0]) <= 4294967295:
            size = int(words[0])
        if not words:
            error: Reply | None = Reply(501, (5, 5, 4), "Missing chunk size argument")
        elif len(words) > 2:
            error = Reply(501, (5, 5, 4), "Too many arguments")
        elif self.mail is None or not self.rcpt_count:
            error = replies.MISSING_RCPT
        elif len(words) == 2 and words[1].upper() != "LAST":
            error = Reply(501, (5, 5, 4), "Unknown BDAT argument")
        elif size is None:
            error = Reply(501, (5, 5, 4), "Malformed size argument")
        else:
            error = None
        if error is not None:
            if size is None:
                return self._auto(error)
            # The chunk is read and dropped before the reply, so its bytes
            # are never taken for commands (docs/protocol.md, "BDAT").
            self._discard_reply = error
            self._remaining = size
            self.state = State.BDAT
            return self._next_bdat()
        assert size is not None
        last = len(words) == 2
        if not size and not last and self._junk():
            # An empty chunk that is not the last moves nothing forward.
            self._remaining = 0
            return self._fatal(replies.TOO_MANY_JUNK)
        first = not self._bdat_active
        self._bdat_active = True
        self._bdat_last = last
        self._remaining = size
        limit = self.settings.max_message_size
        self._too_large = bool(limit) and self._body_size + size > limit
        self.state = State.BDAT
        return Bdat(size, last, first)

    def _rset(self, args: str) -> Event:
        self._reset_transaction()
        return self._expect(Reset())

    def _noop(self, args: str) -> Event:
        return self._auto(replies.NOOP)

    def _vrfy(self, args: str) -> Event:
        return self._auto(replies.VRFY)

    def _quit(self, args: str) -> Event:
        return self._expect(Quit())

    def _starttls(self) -> Event:
        if self.tls:
            return self._auto(replies.ALREADY_TLS)
        if not self.settings.tls_available:
            return self._auto(replies.NO_TLS)
        return self._expect(StartTLS())

    def _auth(self, args: str) -> Event:
        if self.greeting is None:
            return self._auto(replies.NEED_GREETING)
        if self.authenticated:
            return self._auto(Reply(503, (5, 5, 1), "Already authenticated"))
        if self.mail is not None:
            return self._auto(Reply(503, (5, 5, 1), "AUTH not allowed during a mail transaction"))
        words = args.split()
        if not words:
            return self._auto(Reply(501, (5, 5, 4), "Missing parameter"))
        if not self.auth_allowed:
            return self._auto(
                Reply(538, (5, 7, 11), "Encryption required for requested authentication mechanism")
            )
        initial = words[1] if len(words) > 1 else None
        if initial is not None and not valid_base64(initial):
            return self._auto(Reply(501, (5, 5, 2), "Invalid base64 data"))
        mechanism = words[0].upper()
        if mechanism not in self.settings.auth_mechanisms:
            return self._auto(Reply(504, (5, 5, 4), "Unrecognized authentication type"))
        return self._expect(Auth(mechanism, initial))

    @property
    def auth_allowed(self) -> bool:
        """RFC 4954 §4: no plain-text passwords over a clear channel unless allowed."""
        return bool(self.settings.auth_mechanisms) and (
            self.tls or self.settings.insecure_auth or not self.settings.tls_available
        )

    def _next_auth_line(self) -> Event | _NeedData:
        line = self._read_line()
        if line is None:
            return self._closed() if self._eof else NEED_DATA
        if not isinstance(line, str):
            return line
        return self._expect(AuthLine(line.strip()))

    # -- content --------------------------------------------------------------

    def _next_data(self) -> Event | _NeedData:
        buf = self._buf
        # Every CR LF "." is either the end marker or a stuffed dot, and most
        # messages hold no line starting with a dot: when the first one is
        # the end, one scan found the end and proved there is nothing to
        # unstuff. Otherwise the search for the end goes on from there.
        first = buf.find(_CRLF_DOT)
        stuffed = first >= 0
        if stuffed and buf[first + 3 : first + 5] == b"\r\n":
            idx, stuffed = first, False
        else:
            idx = buf.find(_END, first) if stuffed else -1
        if idx >= 0:
            region = bytes(buf[: idx + 2])
            del buf[: idx + 5]
            done = True
        else:
            if self._eof:
                return self._closed()
            keep = 0
            for prefix in _END_PREFIXES:
                if buf.endswith(prefix):
                    keep = len(prefix)
                    break
            n = len(buf) - keep
            if n <= (2 if self._strip_prefix else 0):
                return NEED_DATA
            region = bytes(buf[:n])
            del buf[:n]
            done = False
        limit = self.settings.max_line_length
        if limit and self._line_too_long(region, limit):
            return self._fatal(replies.LINE_TOO_LONG)
        data = region.replace(_CRLF_DOT, b"\r\n") if stuffed else region
        if self._strip_prefix:
            data = data[2:]
            self._strip_prefix = False
        if _ANY_BARE_LF.search(data) is not None:
            data = _BARE_LF.sub(b"\r\n", data)
        if done:
            self.state = State.COMMAND
            last_chunk = self._add_content(data)
            if last_chunk is None:
                return self._body_end(True)
            self._end_queued = True
            return last_chunk
        chunk = self._add_content(data)
        return chunk if chunk is not None else self._next_data()

    def _line_too_long(self, region: bytes, limit: int) -> bool:
        """Track line lengths across regions; True once a line reaches `limit`."""
        first_nl = region.find(b"\n")
        if first_nl < 0:
            self._line_carry += len(region)
            return self._line_carry >= limit
        if self._line_carry + first_nl >= limit:
            return True
        last_nl = region.rfind(b"\n")
        self._line_carry = len(region) - last_nl - 1
        if self._line_carry >= limit:
            return True
        # Between the first and the last newline: hop from newline to the
        # last newline within the next `limit` bytes; a window without one
        # holds a line of `limit` bytes or more. A few C scans per region,
        # where splitting it into lines made an object per line.
        pos = first_nl
        while last_nl - pos > limit:
            nl = region.rfind(b"\n", pos + 1, pos + 1 + limit)
            if nl < 0:
                return True
            pos = nl
        return False

    def _add_content(self, data: bytes) -> BodyChunk | None:
        if not data:
            return None
        # Counted past the limit too: the message line says how much came.
        self._body_size += len(data)
        if self._too_large:
            return None
        limit = self.settings.max_message_size
        if limit and self._body_size > limit:
            self._too_large = True
            return None
        return BodyChunk(data)

    def _body_end(self, last: bool) -> Event:
        # RFC 2033 §4.2: after the final chunk LMTP owes one reply per
        # accepted recipient, whatever the outcome (a size failure included).
        count = self.rcpt_count if (self.settings.lmtp and last) else 1
        if last:
            self.junk_commands = 0  # a whole message came: that is progress
        return self._expect(BodyEnd(last=last, too_large=self._too_large), count)

    def _next_bdat(self) -> Event | _NeedData:
        if self._remaining:
            buf = self._buf
            if not buf:
                return self._closed() if self._eof else NEED_DATA
            n = min(self._remaining, len(buf))
            chunk = bytes(buf[:n])
            del buf[:n]
            self._remaining -= n
            if self._discard_reply is None:
                self._body_size += n
                if not self._too_large:
                    return BodyChunk(chunk)
            if self._remaining:
                return self._next_bdat()
        self.state = State.COMMAND
        if self._discard_reply is not None:
            reply, self._discard_reply = self._discard_reply, None
            return self._auto(reply)
        return self._body_end(self._bdat_last)

    # -- output ---------------------------------------------------------------

    def send(self, reply: Reply) -> bytes:
        """Render the reply owed to the last event, and learn from its code."""
        if not self._owed:
            raise LocalProtocolError(f"no reply is owed (sending {reply})")
        self._owed -= 1
        event = self._awaiting
        utf8 = event.params.smtputf8 if type(event) is MailFrom else self.smtputf8
        out = reply.render(utf8)
        if self._owed:
            return out
        self._awaiting = None
        learn = _LEARN.get(type(event))
        if learn is not None:
            learn(self, event, reply.code)
        if reply.code == 421:
            self.state = State.CLOSED
            self._closed_reported = True
        return out

    # What the last reply of each kind of event changes (`send`).

    def _greeted(self, event: Greeting, code: int) -> None:
        self.greeting = event.domain if code < 400 else None

    def _mail_answered(self, event: MailFrom, code: int) -> None:
        if code < 400:
            self._reset_transaction()
            self.mail = event
            self.smtputf8 = event.params.smtputf8

    def _rcpt_answered(self, event: RcptTo, code: int) -> None:
        if code < 400:
            self.rcpt_count += 1

    def _data_answered(self, event: Data, code: int) -> None:
        if code == 354:
            self._enter_data()

    def _body_answered(self, event: BodyEnd, code: int) -> None:
        if event.last or code >= 400:
            self._reset_transaction()

    def _auth_answered(self, event: Auth | AuthLine, code: int) -> None:
        if code == 334:
            self.state = State.AUTH
        else:
            self.state = State.COMMAND
            self.authenticated = code == 235

    def _starttls_answered(self, event: StartTLS, code: int) -> None:
        if code == 220:
            self.state = State.TLS

    def _quit_answered(self, event: Quit, code: int) -> None:
        self.state = State.CLOSED
        self._closed_reported = True

    def _enter_data(self) -> None:
        self.state = State.DATA
        # The DATA line's own CR LF starts the first line: a virtual prefix
        # lets `.` on the first line be handled like any other line start.
        self._buf[0:0] = b"\r\n"
        self._strip_prefix = True
        self._line_carry = 0
        self._body_size = 0
        self._too_large = False

    def tls_started(self) -> None:
        """The handshake after STARTTLS succeeded: everything starts afresh."""
        if self.state is not State.TLS:
            raise LocalProtocolError("tls_started() without STARTTLS")
        self.tls = True
        self.state = State.COMMAND
        self.greeting = None
        self.authenticated = False
        self._reset_transaction()
        self._buf.clear()

    def ehlo_capabilities(self) -> list[str]:
        """The EHLO/LHLO keyword lines, in the order docs/protocol.md gives."""
        s = self.settings
        caps = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"]
        if s.dsn:
            caps.append("DSN")
        if s.tls_available and not self.tls:
            caps.append("STARTTLS")
        if self.auth_allowed:
            caps.append("AUTH " + " ".join(s.auth_mechanisms))
        caps.append("SMTPUTF8")
        if self.tls:
            caps.append("REQUIRETLS")
        caps.append(f"SIZE {s.max_message_size}" if s.max_message_size else "SIZE")
        if s.max_recipients:
            caps.append(f"LIMITS RCPTMAX={s.max_recipients}")
        return caps

    def _reset_transaction(self) -> None:
        self.mail = None
        self.rcpt_count = 0
        self.smtputf8 = False
        self._bdat_active = False
        self._body_size = 0
        self._too_large = False


_HANDLERS = {
    "HELO": ServerConnection._helo,
    "EHLO": ServerConnection._ehlo,
    "LHLO": ServerConnection._lhlo,
    "MAIL": ServerConnection._mail,
    "RCPT": ServerConnection._rcpt,
    "DATA": ServerConnection._data,
    "BDAT": ServerConnection._bdat,
    "RSET": ServerConnection._rset,
    "NOOP": ServerConnection._noop,
    "VRFY": ServerConnection._vrfy,
    "QUIT": ServerConnection._quit,
    "AUTH": ServerConnection._auth,
}

#: What a kind of event's last reply teaches the core (`ServerConnection.send`).
_LEARN: dict[type, Callable[[ServerConnection, Any, int], None]] = {
    Greeting: ServerConnection._greeted,
    MailFrom: ServerConnection._mail_answered,
    RcptTo: ServerConnection._rcpt_answered,
    Data: ServerConnection._data_answered,
    BodyEnd: ServerConnection._body_answered,
    Auth: ServerConnection._auth_answered,
    AuthLine: ServerConnection._auth_answered,
    StartTLS: ServerConnection._starttls_answered,
    Quit: ServerConnection._quit_answered,
}
