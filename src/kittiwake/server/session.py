"""One client connection: socket <-> protocol core <-> pipeline.

Strategy: the session is an `asyncio.Protocol` (no streams): `data_received`
only appends to the core's buffer and wakes one task that runs the dialogue.
That task takes events from the core until it needs data, answers them, and
writes every reply of a pipelined group in one `write` just before it waits
for more input. Message content goes from the core straight into the
message's buffer chunk by chunk, and reading pauses when unprocessed input
piles up, so a connection's memory stays small whatever the message size.

Errors: every exception raised while one command is handled goes through
`server/errors.py`'s `client_error` (an `SMTPError` is answered as it says,
with the message ID once there is one; anything else is logged in full and
answered `451 4.3.0`, since a 4xx loses no mail) and answers every reply
that command still owes. Replies already owed to earlier pipelined commands
are never dropped: a fault in the dialogue itself (a bug outside any
command) adds `421 4.0.0` after them and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from kittiwake.dns import ReverseName
from kittiwake.errors import SMTPError
from kittiwake.message import new_msg_id
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
    StartTLS,
)
from kittiwake.protocol import replies as R
from kittiwake.protocol.connection import State
from kittiwake.server.errors import client_error
from kittiwake.server.sasl import SASLHandling
from kittiwake.server.session_config import SessionConfig
from kittiwake.server.transaction import MailTransactions
from kittiwake.state.base import Held, StoreUnavailable

HIGH_WATER = 256 * 1024  # unprocessed input that pauses reading
LOW_WATER = 64 * 1024  # ... and resumes it

SHUTTING_DOWN = Reply(421, (4, 3, 2), "Service shutting down, try again later")
IDLE_TIMEOUT = Reply(421, (4, 4, 2), "Idle timeout, bye bye")
TOO_SLOW = Reply(421, (4, 4, 2), "Message content too slow, bye bye")
FAULT = Reply(421, (4, 0, 0), "Internal server error")
TOO_MANY_CONNECTIONS = Reply(421, (4, 7, 0), "Too many connections, try again later")
#: The connection caps are in a shared store that cannot answer, and it
#: fails closed (docs/state.md): before the greeting only 421 may be sent.
STATE_UNAVAILABLE = Reply(
    421, (4, 4, 5), "Connection limits cannot be checked now, try again later"
)
NO_NAME = ReverseName()


class Session(asyncio.Protocol):
    """The server side of one connection."""

    def __init__(
        self,
        cfg: SessionConfig,
        sessions: set[Session],
        *,
        tls: bool,
        client: tuple[str, int] | None = None,
    ) -> None:
        """`client`: the address a trusted PROXY header named, if any."""
        self.cfg = cfg
        self.conn = ServerConnection(cfg.settings, tls=tls)
        self._sessions = sessions
        self._transport: asyncio.Transport | None = None
        self._plain = not tls  # eof_received may keep a plain socket half-open
        self._out = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._lost = False
        self.closing = False
        self._timed_out = False
        self._shutdown = False
        self._reading_paused = False
        self._writing_paused = False
        self._deadline = 0.0
        # The content of the current message (DATA, or every BDAT chunk):
        # when it began (-1: none) and how many bytes came since.
        self._transfer_start = -1.0
        self._transfer_bytes = 0
        self._idle_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # Cached: asyncio.get_running_loop() costs a getpid() call each time.
        self._loop = asyncio.get_running_loop()
        # The reverse lookup of the client: one per session, started at the
        # greeting (or when a check first asks), shared by Received and checks.
        self._rdns: asyncio.Task[ReverseName] | None = None
        self._rdns_result: ReverseName | None = None
        self.auth_user: str | None = None
        #: Kept for `target.smtp`'s `auth forward`; never logged.
        self.auth_password: str | None = None
        #: Per-session memory of modules (`ConnInfo.module_data`).
        self.module_data: dict[object, object] = {}
        self.mail = MailTransactions(self)
        self.sasl = SASLHandling(self)
        self.peer_ip: str | None = None
        self.peer_port = 0
        self.helo = ""
        self.task: asyncio.Task[None] | None = None
        self._client = client
        self._counted_ip: str | None = None
        #: The connection caps' slots in a shared store (docs/state.md).
        self._shared_slots: Sequence[Held] = ()
        #: Names the connection in its log lines and its messages' lines.
        self.id = new_msg_id()
        self._opened = self._loop.time()
        #: Messages of this connection taken / not taken (the closing line).
        self.accepted = 0
        self.not_accepted = 0

    # -- asyncio.Protocol callbacks -----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
        if self._client is not None:  # from a trusted PROXY header (docs/proxy.md)
            self.peer_ip, self.peer_port = self._client
        if not self.cfg.gate.enter():
            self._refuse("connection limit reached")
            return
        self.cfg.metrics.tls(transport)
        self._sessions.add(self)
        self.task = self._loop.create_task(self._run())

    def tls_description(self) -> str:
        """`TLSv1.3 TLS_AES_256_GCM_SHA384`, or "" without TLS (for log lines)."""
        if not self.conn.tls or self._transport is None:
            return ""
        tls = self._transport.get_extra_info("ssl_object")
        if not isinstance(tls, (ssl.SSLObject, ssl.SSLSocket)):
            return "TLS"
        cipher = tls.cipher()
        return f"{tls.version()} {cipher[0]}" if cipher else str(tls.version())

    def _refuse(self, why: str) -> None:
        """Turn a connection away before any dialogue (a cap was reached)."""
        self.cfg.log.info(why, src_ip=self.peer_ip or "unix")
        self._lost = True
        if self._transport is not None:
            self._transport.write(TOO_MANY_CONNECTIONS.render())
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self.cfg.io_log is not None:
            self.cfg.io_log.debug("read", peer=self.peer_ip, data=data)
        self.conn.receive_data(data)
        if self.conn.state in _CONTENT_STATES:
            # While content streams, each read re-arms the read timeout, but
            # the whole transfer must keep up min_data_rate (below).
            now = self._loop.time()
            if self._transfer_start < 0:
                self._transfer_start = now
            self._transfer_bytes += len(data)
            self._deadline = self._content_deadline(now)
        if self.conn.pending_input > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._wake()
        # Answer what came before the client's EOF (docs/protocol.md).
        return self._plain

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.conn.receive_data(b"")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the dialogue -------------------------------------------------------

    async def _run(self) -> None:
        self.cfg.log.info(
            "connection opened",
            conn_id=self.id,
            src_ip=self.peer_ip or "unix",
            src_port=self.peer_port,
            **self.cfg.conn_fields,
        )
        try:
            if self.peer_ip is not None and self.cfg.gate.counts(self.peer_ip):
                if not self.cfg.gate.enter_ip(self.peer_ip):
                    self._out += TOO_MANY_CONNECTIONS.render()
                    self.cfg.log.info("per-IP connection limit reached", src_ip=self.peer_ip)
                    await self.flush()
                    return
                self._counted_ip = self.peer_ip
            if self.cfg.gate.store is not None:
                refusal = await self._enter_shared()
                if refusal is not None:
                    self._out += refusal.render()
                    await self.flush()
                    return
            self._out += self.cfg.banner.render()
            self._reset_deadline()
            while not self.closing:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    if self._lost:
                        break
                    if self._write_out():  # what the commands so far are owed
                        await self._drain_out()
                    if self._shutdown and self.mail.txn is None:
                        self._out += SHUTTING_DOWN.render()
                        break
                    await self._wait()
                    continue
                assert isinstance(event, Event)
                await self._dispatch(event)
            if not self._lost:
                await self.flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.cfg.log.error("session fault", err=exc, peer=self.peer_ip)
            # What earlier commands were told stays; the 421 comes after it.
            self._out += FAULT.render()
            with contextlib.suppress(Exception):
                await self.flush()
        finally:
            if self._counted_ip is not None:
                self.cfg.gate.leave_ip(self._counted_ip)
            self.cfg.gate.leave()
            if self._shared_slots:
                await self._leave_shared()
            await self.mail.end()
            self.cfg.log.info(
                "connection closed",
                conn_id=self.id,
                src_ip=self.peer_ip or "unix",
                duration=round(self._loop.time() - self._opened, 3),
                accepted=self.accepted,
                not_accepted=self.not_accepted,
                tls=self.tls_description(),
                auth=self.auth_user or "",
            )
            if self._rdns is not None:
                self._rdns.cancel()
            if self._timer is not None:
                self._timer.cancel()
            if self._transport is not None:
                self._transport.close()
            self._sessions.discard(self)

    async def _enter_shared(self) -> Reply | None:
        """The connection caps across nodes: None when let in, else the reply.

        One decision in the endpoint's shared store. When it cannot answer,
        its `fail_open` lets the connection in (this process's own caps
        still apply) or turns it away with a temporary reply.
        """
        gate = self.cfg.gate
        assert gate.store is not None
        try:
            grant = await gate.enter_shared(self._counted_ip)
        except StoreUnavailable:
            if gate.store.fail_open:
                return None
            self.cfg.log.info(
                "connection refused, shared state unavailable", src_ip=self.peer_ip or "unix"
            )
            return STATE_UNAVAILABLE
        self._shared_slots = grant.held
        if grant.refused < 0:
            return None
        if grant.refused == 0:
            self.cfg.log.info("connection limit reached", src_ip=self.peer_ip or "unix")
        else:
            self.cfg.log.info("per-IP connection limit reached", src_ip=self.peer_ip)
        return TOO_MANY_CONNECTIONS

    async def _leave_shared(self) -> None:
        """Give the caps' slots back; if the store cannot, their leases expire."""
        held, self._shared_slots = self._shared_slots, ()
        store = self.cfg.gate.store
        assert store is not None
        try:
            await store.release(held)
        except StoreUnavailable:
            pass  # logged by the store
        except Exception as exc:
            self.cfg.log.error("cannot release connection slots", err=exc)

    async def _wait(self) -> None:
        """Wait for input, within the read deadline."""
        if self._reading_paused and self.conn.pending_input < LOW_WATER:
            self._reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()
        if self.cfg.read_timeout:
            if self._deadline <= self._loop.time():
                self._timed_out = True
            else:
                self._arm_timer()
        if not self._timed_out:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._timed_out:
            slow = self._transfer_start >= 0 and self._loop.time() < self._idle_deadline
            self.cfg.log.info(
                "content too slow, closing" if slow else "idle timeout, closing",
                src_ip=self.peer_ip or "unix",
            )
            self._out += (TOO_SLOW if slow else IDLE_TIMEOUT).render()
            self.closing = True

    # The read deadline moves on with every command and every content read.
    # Instead of a timer per wait, one timer is armed lazily: when it fires
    # early (the deadline has moved since), it re-arms for the new deadline.

    def _arm_timer(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        if self._deadline > self._loop.time():
            self._arm_timer()
        elif self._waiter is not None:
            self._timed_out = True
            self._wake()
        # Otherwise the session is busy, not reading; _wait checks again.

    def _reset_deadline(self) -> None:
        self._deadline = self._content_deadline(self._loop.time())

    def _content_deadline(self, now: float) -> float:
        """The read deadline, and while a message's content is coming, its pace.

        Each read must come within `read_timeout`. On top of that the
        content as a whole, from its first byte until its end (across every
        BDAT chunk), gets `read_timeout` plus the time `min_data_rate` takes
        for what has arrived so far, as Postfix's smtpd_min_data_rate does.
        So a client trickling a byte a second cannot hold a session, a
        buffer and a limit slot for ever, while any honest link finishes.
        """
        self._idle_deadline = now + self.cfg.read_timeout
        rate = self.cfg.min_data_rate
        if not rate or self._transfer_start < 0:
            return self._idle_deadline
        paced = self._transfer_start + self.cfg.read_timeout + self._transfer_bytes / rate
        return min(self._idle_deadline, paced)

    async def flush(self) -> None:
        """Write the replies gathered so far; wait while the client is not reading."""
        if self._write_out():
            await self._drain_out()

    def _write_out(self) -> bool:
        """Write the replies gathered so far in one call; True when the
        transport's buffer is full and `_drain_out` must wait. Not a
        coroutine: after nearly every command there is nothing to wait for."""
        if not self._out or self._transport is None or self._lost:
            self._out.clear()
            return False
        data = bytes(self._out)
        self._out.clear()
        if self.cfg.io_log is not None:
            self.cfg.io_log.debug("write", peer=self.peer_ip, data=data)
        self._transport.write(data)
        return self._writing_paused

    async def _drain_out(self) -> None:
        """Wait until the client reads again, within `write_timeout`."""
        assert self._transport is not None
        self._drain = self._loop.create_future()
        try:
            timeout = self.cfg.write_timeout or None
            await asyncio.wait_for(self._drain, timeout)
        except TimeoutError:
            self.cfg.log.info("write timeout, closing", peer=self.peer_ip)
            self._transport.abort()
            self._lost = True
        finally:
            self._drain = None

    def reply(self, reply: Reply) -> None:
        self.cfg.metrics.reply(reply.code)
        self._out += self.conn.send(reply)

    async def _dispatch(self, event: Event) -> None:
        """Handle one event; whatever it raises answers what it still owes."""
        kind = type(event)
        if kind is BodyChunk:  # content: no reply, no new deadline
            assert isinstance(event, BodyChunk)
            await self.mail.body_chunk(event.data)
            return
        try:
            self.cfg.metrics.command(event)
            handler = _HANDLERS.get(kind)
            if handler is not None:
                await handler(self, event)
            else:
                self._handle_core_event(event)
        except Exception as exc:
            msg_id = self.mail.txn.msg_id if self.mail.txn else ""
            error = client_error(
                exc, self.cfg.log, "internal error", msg_id=msg_id, peer=self.peer_ip
            )
            self.answer_owed(error)
        if self._transfer_start >= 0 and self.conn.mail is None:
            self._transfer_start = -1.0  # the transaction is over
            self._transfer_bytes = 0
        if self.conn.state is not State.BDAT:
            self._reset_deadline()

    def _handle_core_event(self, event: Event) -> None:
        """What the protocol core decided itself: a BDAT chunk's start, the
        end of input, its own replies (syntax, sequence, limits)."""
        kind = type(event)
        if kind is Bdat:
            assert isinstance(event, Bdat)
            if event.first:
                self.mail.open_body()
        elif kind is ConnectionClosed:
            self.closing = True
        elif kind is AutoReply:
            assert isinstance(event, AutoReply)
            if event.protocol_error and event.line.startswith("PROXY "):
                # Never honoured from an untrusted peer, but noted (docs/proxy.md).
                self.cfg.log.info(
                    "PROXY header from an untrusted peer ignored", src_ip=self.peer_ip or "unix"
                )
            if event.close:
                self.closing = True
            for reply in event.replies:
                self.reply(reply)
        else:
            raise RuntimeError(f"no handler for {event!r}")

    def answer_owed(self, exc: SMTPError) -> None:
        """Answer every reply the current event still owes with `exc`."""
        msg_id = self.mail.txn.msg_id if self.mail.txn else ""
        reply = Reply.from_error(exc, msg_id)
        while self.conn.replies_owed:
            self.reply(reply)

    # -- commands -----------------------------------------------------------

    async def _on_greeting(self, event: Greeting) -> None:
        await self.mail.end()  # RFC 5321 §4.1.4: a greeting resets
        self.helo = event.domain
        if self.cfg.rdns_at_greeting:
            self._start_rdns()
        try:
            await self.cfg.pipeline.check_early(self.mail.conn_info())
        except Exception as exc:
            # The check's error is the reply (no message ID yet) and the
            # client stays un-greeted (docs/checks.md, "Early checks").
            error = client_error(exc, self.cfg.log, "early check failed", src_ip=self.peer_ip)
            self.cfg.log.info("rejected at greeting", src_ip=self.peer_ip, reason=error)
            self.reply(Reply.from_error(error))
            return
        if event.extended:
            self.reply(R.ehlo(event.domain, self.conn.ehlo_capabilities()))
        else:
            self.reply(Reply(250, (2, 0, 0), f"Hello {event.domain}"))

    def _start_rdns(self) -> None:
        """Start the PTR lookup of the client, once per session (docs/dns.md)."""
        if self._rdns is not None or self._rdns_result is not None:
            return
        if not self.peer_ip:  # a Unix-socket client has no address to look up
            self._rdns_result = NO_NAME
            return
        if self.cfg.resolver is None:
            return
        resolver = self.cfg.resolver()
        cached = resolver.cached_reverse(self.peer_ip)
        if cached is not None:  # the usual case for an MTA that keeps sending: no task
            self._rdns_result = cached
            return
        self._rdns = self._loop.create_task(resolver.reverse_lookup(self.peer_ip))

    async def reverse_lookup(self) -> ReverseName:
        """The session's reverse lookup of the client, started now if it was not.

        `ConnInfo.reverse` for checks (`require_matching_rdns`): they share
        this one lookup instead of making their own. Shielded, so a check
        that is cancelled does not cancel the lookup for everyone else.
        """
        self._start_rdns()
        task = self._rdns
        if task is not None:
            result = await asyncio.shield(task)
            self._rdns_result, self._rdns = result, None
        return self._rdns_result or NO_NAME

    async def reverse_name(self) -> str | None:
        """The client's PTR name for Received, if a lookup was started (else None)."""
        if self._rdns is None and self._rdns_result is None:
            return None
        return (await self.reverse_lookup()).name

    async def _on_reset(self, event: Reset) -> None:
        await self.mail.end()
        self.reply(R.RSET)

    async def _on_quit(self, event: Quit) -> None:
        self.reply(R.BYE)
        self.closing = True

    async def _on_starttls(self, event: StartTLS) -> None:
        if self.conn.pending_input:
            # RFC 3207 §4.2: bytes pipelined after STARTTLS must never run.
            self.cfg.log.info("client pipelined past STARTTLS, closing", peer=self.peer_ip)
            self.answer_owed(SMTPError(554, (5, 5, 1), "Data after STARTTLS, closing"))
            self.closing = True
            return
        await self.mail.end()
        self.reply(R.READY_TLS)
        await self.flush()
        transport = self._transport
        assert transport is not None and self.cfg.tls_context is not None
        try:
            new = await self._loop.start_tls(
                transport,
                self,
                self.cfg.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.cfg.read_timeout or None,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.cfg.log.info("TLS handshake failed", peer=self.peer_ip, reason=exc)
            self._lost = True
            self.closing = True
            transport.abort()
            return
        if new is None:
            self._lost = True
            self.closing = True
            return
        self._transport = new
        self.cfg.metrics.tls(new)
        self._plain = False
        self.conn.tls_started()
        self.auth_user = None  # RFC 3207 §4.2: nothing from before TLS is kept
        self.auth_password = None

    # -- transactions and shutdown -------------------------------------------

    def begin_shutdown(self) -> None:
        """SIGTERM: an idle session is told at once; a busy one after its reply."""
        self._shutdown = True
        if self.mail.txn is None and self._waiter is not None:
            self._wake()

    def force_close(self) -> None:
        """The grace period is over: say 421 and drop the connection."""
        if self._transport is not None and not self._lost:
            with contextlib.suppress(Exception):
                self._transport.write(SHUTTING_DOWN.render())
            self._transport.close()
        if self.task is not None:
            self.task.cancel()


#: The core's states in which reads are a message's content (their pace is watched).
_CONTENT_STATES = frozenset({State.DATA, State.BDAT})

#: What answers each event the core hands over (AutoReply, Bdat and the
#: content are dealt with in `_handle_core_event` and `_dispatch`). One table for every
#: session: a table of bound methods per session cost a kilobyte for each
#: connection, idle ones included.
_HANDLERS: dict[type[Event], Callable[[Session, Any], Awaitable[None]]] = {
    Greeting: Session._on_greeting,
    MailFrom: lambda s, e: s.mail.on_mail(e),
    RcptTo: lambda s, e: s.mail.on_rcpt(e),
    Data: lambda s, e: s.mail.on_data(e),
    BodyEnd: lambda s, e: s.mail.on_body_end(e),
    Reset: Session._on_reset,
    Quit: Session._on_quit,
    StartTLS: Session._on_starttls,
    Auth: lambda s, e: s.sasl.on_auth(e),
    AuthLine: lambda s, e: s.sasl.on_auth_line(e),
}
