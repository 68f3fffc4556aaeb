"""One client connection: socket <-> protocol core <-> pipeline.

Strategy: the session is an `asyncio.Protocol` (no streams): `data_received`
only appends to the core's buffer and wakes one task that runs the dialogue.
That task takes events from the core until it needs data, answers them, and
writes every reply of a pipelined group in one `write` just before it waits
for more input. Message content goes from the core straight into the
message's buffer chunk by chunk, and reading pauses when unprocessed input
piles up, so a connection's memory stays small whatever the message size.

This module is the only place where exceptions become SMTP replies: an
`SMTPError` is answered as it says (with the message ID once there is one);
anything else is logged in full and answered `451 4.3.0` (a 4xx loses no
mail); a fault in the dialogue itself closes with `421 4.0.0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from kittiwake import address
from kittiwake.auth.base import InvalidCredentials, TemporaryAuthFailure
from kittiwake.buffer import Buffer, BufferSpec
from kittiwake.errors import SMTPError
from kittiwake.header import HeaderReader
from kittiwake.log import Logger
from kittiwake.message import ConnInfo, MsgMeta, SMTPOptions, new_msg_id
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
from kittiwake.protocol.connection import State
from kittiwake.protocol.events import MailParams
from kittiwake.protocol.sasl import INVALID, Challenge, Credentials, Done, Exchange, Step
from kittiwake.server.submission import prepare_submission_header

if TYPE_CHECKING:
    from kittiwake.dns import Resolver
    from kittiwake.pipeline.pipeline import MessageDelivery, Pipeline
    from kittiwake.server.authenticate import Authenticator

HIGH_WATER = 256 * 1024  # unprocessed input that pauses reading
LOW_WATER = 64 * 1024  # ... and resumes it

INTERNAL_ERROR = SMTPError(451, (4, 3, 0), "Internal server error")
SHUTTING_DOWN = Reply(421, (4, 3, 2), "Service shutting down, try again later")
IDLE_TIMEOUT = Reply(421, (4, 4, 2), "Idle timeout, bye bye")
FAULT = Reply(421, (4, 0, 0), "Internal server error")
AUTH_REQUIRED = Reply(530, (5, 7, 0), "Authentication required")
TOO_MANY_CONNECTIONS = Reply(421, (4, 7, 0), "Too many connections, try again later")
AUTH_OK = Reply(235, (2, 0, 0), "Authentication succeeded")
AUTH_TEMPORARY = Reply(454, (4, 7, 0), "Temporary authentication failure")
AUTH_LOCKOUT = Reply(421, (4, 7, 0), "Too many authentication failures")
#: Settled question 1: the n-th failed AUTH of a session is answered after
#: min(2^(n-1), 8) seconds; the 5th closes the session.
AUTH_MAX_FAILURES = 5
AUTH_MAX_DELAY = 8.0


@dataclass
class ConnectionGate:
    """Caps on simultaneous connections, in all and per client IP.

    Shared by the sessions of one endpoint. Past a cap a new connection is
    told `421 4.7.0` and closed before any dialogue, so one client cannot
    use up the server and everybody else is still served. 0 = no cap.
    Unix-socket clients have no IP and only count towards the total.
    """

    max_total: int = 10000
    max_per_ip: int = 100
    total: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)

    def enter(self) -> bool:
        if self.max_total and self.total >= self.max_total:
            return False
        self.total += 1
        return True

    def leave(self) -> None:
        self.total -= 1

    def enter_ip(self, ip: str) -> bool:
        count = self.per_ip.get(ip, 0)
        if self.max_per_ip and count >= self.max_per_ip:
            return False
        self.per_ip[ip] = count + 1
        return True

    def leave_ip(self, ip: str) -> None:
        count = self.per_ip.pop(ip, 0) - 1
        if count > 0:
            self.per_ip[ip] = count


@dataclass
class SessionConfig:
    """What every session of one endpoint shares (built by the endpoint)."""

    kind: str  # smtp, submission, lmtp
    hostname: str  # A-label form
    settings: Settings
    pipeline: Pipeline
    buffer: BufferSpec
    log: Logger
    io_log: Logger | None
    resolver: Resolver | None
    tls_context: ssl.SSLContext | None
    read_timeout: float
    write_timeout: float
    max_header_size: int
    max_received: int
    defer_sender_reject: bool
    max_logged_rcpt_errors: int
    authenticator: Authenticator | None = None
    gate: ConnectionGate = field(default_factory=ConnectionGate)
    #: Seconds of delay for the n-th failed AUTH (tests may shorten it).
    auth_delay: Callable[[int], float] = lambda n: min(2.0 ** (n - 1), AUTH_MAX_DELAY)

    @property
    def banner(self) -> Reply:
        proto = "LMTP" if self.kind == "lmtp" else "ESMTP"
        return Reply(220, None, f"{self.hostname} {proto} Service Ready")


@dataclass
class Transaction:
    """One MAIL ... final reply exchange, as the session sees it."""

    mail_from: str
    params: MailParams
    msg_id: str = ""
    meta: MsgMeta | None = None
    delivery: MessageDelivery | None = None
    sender_started: bool = False
    sender_error: Reply | None = None
    #: accepted recipients: (as the client wrote it, clean form)
    rcpts: list[tuple[str, str]] = field(default_factory=list)
    buffer: Buffer | None = None
    header: HeaderReader | None = None
    body_error: SMTPError | None = None
    committed: bool = False


class Session(asyncio.Protocol):
    """The server side of one connection."""

    def __init__(self, cfg: SessionConfig, sessions: set[Session], *, tls: bool) -> None:
        self.cfg = cfg
        self.conn = ServerConnection(cfg.settings, tls=tls)
        self._sessions = sessions
        self._transport: asyncio.Transport | None = None
        self._plain = not tls  # eof_received may keep a plain socket half-open
        self._out = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._lost = False
        self._closing = False
        self._timed_out = False
        self._shutdown = False
        self._reading_paused = False
        self._writing_paused = False
        self._deadline = 0.0
        self._txn: Transaction | None = None
        self._rdns: asyncio.Task[str | None] | None = None
        self._rcpt_errors_logged = 0
        self._sasl: Exchange | None = None
        self._auth_failures = 0
        self.auth_user: str | None = None
        self.peer_ip: str | None = None
        self.peer_port = 0
        self.helo = ""
        self.task: asyncio.Task[None] | None = None
        self._counted_ip: str | None = None

    # -- asyncio.Protocol callbacks -----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
        if not self.cfg.gate.enter():
            self._refuse("connection limit reached")
            return
        self._sessions.add(self)
        self.task = asyncio.get_running_loop().create_task(self._run())

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
        if self.conn.state in (State.DATA, State.BDAT):
            # Settled question 6: while content streams, each read re-arms.
            self._deadline = time.monotonic() + self.cfg.read_timeout
        if self.conn.pending_input > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._wake()
        # Settled question 7: answer what came before the client's EOF.
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
        try:
            if self.peer_ip is not None:
                if not self.cfg.gate.enter_ip(self.peer_ip):
                    self._out += TOO_MANY_CONNECTIONS.render()
                    self.cfg.log.info("per-IP connection limit reached", src_ip=self.peer_ip)
                    await self._flush()
                    return
                self._counted_ip = self.peer_ip
            self._out += self.cfg.banner.render()
            self._reset_deadline()
            while not self._closing:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    if self._lost:
                        break
                    await self._flush()
                    if self._shutdown and self._txn is None:
                        self._out += SHUTTING_DOWN.render()
                        break
                    await self._wait()
                    continue
                assert isinstance(event, Event)
                await self._dispatch(event)
            if not self._lost:
                await self._flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.cfg.log.error("session fault", err=exc, peer=self.peer_ip)
            self._out.clear()
            self._out += FAULT.render()
            with contextlib.suppress(Exception):
                await self._flush()
        finally:
            if self._counted_ip is not None:
                self.cfg.gate.leave_ip(self._counted_ip)
            self.cfg.gate.leave()
            await self._end_transaction()
            if self._rdns is not None:
                self._rdns.cancel()
            if self._transport is not None:
                self._transport.close()
            self._sessions.discard(self)

    async def _wait(self) -> None:
        """Wait for input, within the read deadline."""
        if self._reading_paused and self.conn.pending_input < LOW_WATER:
            self._reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = None
        if self.cfg.read_timeout:
            timer = loop.call_at(self._loop_deadline(loop), self._on_timeout)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self._timed_out:
            self._out += IDLE_TIMEOUT.render()
            self._closing = True

    def _loop_deadline(self, loop: asyncio.AbstractEventLoop) -> float:
        return loop.time() + max(0.0, self._deadline - time.monotonic())

    def _on_timeout(self) -> None:
        if self._deadline <= time.monotonic() + 0.001:
            self._timed_out = True
        self._wake()

    def _reset_deadline(self) -> None:
        self._deadline = time.monotonic() + self.cfg.read_timeout

    async def _flush(self) -> None:
        if not self._out or self._transport is None or self._lost:
            self._out.clear()
            return
        data = bytes(self._out)
        self._out.clear()
        if self.cfg.io_log is not None:
            self.cfg.io_log.debug("write", peer=self.peer_ip, data=data)
        self._transport.write(data)
        if self._writing_paused:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                timeout = self.cfg.write_timeout or None
                await asyncio.wait_for(self._drain, timeout)
            except TimeoutError:
                self.cfg.log.info("write timeout, closing", peer=self.peer_ip)
                self._transport.abort()
                self._lost = True
            finally:
                self._drain = None

    def _reply(self, reply: Reply) -> None:
        self._out += self.conn.send(reply)

    async def _dispatch(self, event: Event) -> None:
        kind = type(event)
        if kind is BodyChunk:
            assert isinstance(event, BodyChunk)
            await self._body_chunk(event.data)
            return
        if kind is Bdat:
            assert isinstance(event, Bdat)
            if event.first:
                self._open_body()
            return
        if kind is ConnectionClosed:
            self._closing = True
            return
        if kind is AutoReply:
            assert isinstance(event, AutoReply)
            for reply in event.replies:
                self._reply(reply)
            if event.close:
                self._closing = True
            self._reset_deadline()
            return
        handler = self._handlers.get(kind)
        if handler is None:
            raise RuntimeError(f"no handler for {event!r}")
        try:
            await handler(self, event)
        except SMTPError as exc:
            self._answer_owed(exc)
        except Exception as exc:
            msg_id = self._txn.msg_id if self._txn else ""
            self.cfg.log.error("internal error", err=exc, msg_id=msg_id, peer=self.peer_ip)
            self._answer_owed(INTERNAL_ERROR)
        self._reset_deadline()

    def _answer_owed(self, exc: SMTPError) -> None:
        reply = self._error_reply(exc)
        while self.conn.replies_owed:
            self._reply(reply)

    def _error_reply(self, exc: SMTPError) -> Reply:
        msg_id = self._txn.msg_id if self._txn else ""
        return Reply.from_error(exc, msg_id)

    # -- commands -----------------------------------------------------------

    async def _on_greeting(self, event: Greeting) -> None:
        await self._end_transaction()  # RFC 5321 §4.1.4: a greeting resets
        self.helo = event.domain
        self._start_rdns()
        if event.extended:
            self._reply(R.ehlo(event.domain, self.conn.ehlo_capabilities()))
        else:
            self._reply(Reply(250, (2, 0, 0), f"Hello {event.domain}"))

    def _start_rdns(self) -> None:
        if self._rdns is None and self.cfg.resolver is not None and self.peer_ip:
            self._rdns = asyncio.get_running_loop().create_task(
                self.cfg.resolver.reverse(self.peer_ip)
            )

    async def _on_mail(self, event: MailFrom) -> None:
        if self.cfg.kind == "submission" and not self.conn.authenticated:
            self._reply(AUTH_REQUIRED)  # RFC 4954 §6
            return
        txn = Transaction(event.address, event.params)
        if not self.cfg.defer_sender_reject:
            error = await self._start_sender(txn)
            if error is not None:
                # The old transaction (if any) stays as it was (spec §7).
                self._reply(error)
                return
        await self._end_transaction()
        self._txn = txn
        self._reply(Reply(250, (2, 0, 0), f"Roger, accepting mail from <{event.address}>"))

    async def _start_sender(self, txn: Transaction) -> Reply | None:
        """Sender processing (spec §8.2 steps 2-6); the reply on failure."""
        txn.sender_started = True
        txn.msg_id = new_msg_id()
        sender = txn.mail_from
        if not txn.params.smtputf8 and address.needs_smtputf8(sender):
            return Reply(550, (5, 6, 7), "SMTPUTF8 is required for non-ASCII senders")
        try:
            clean = address.clean_address(sender)
        except ValueError:
            return Reply(553, (5, 1, 7), "Unable to normalize the sender address")
        txn.meta = MsgMeta(
            id=txn.msg_id,
            conn=self._conn_info(),
            smtp=SMTPOptions(
                size=txn.params.size,
                body=txn.params.body,
                smtputf8=txn.params.smtputf8,
                requiretls=txn.params.requiretls,
                auth=txn.params.auth,
            ),
            original_from=sender,
            dont_trace_sender=self.cfg.kind == "submission",
        )
        try:
            txn.delivery = await self.cfg.pipeline.start(txn.meta, clean)
        except SMTPError as exc:
            self.cfg.log.info("MAIL FROM error", msg_id=txn.msg_id, sender=sender, reason=exc)
            return Reply.from_error(exc, txn.msg_id)
        except Exception as exc:
            self.cfg.log.error("MAIL FROM error", err=exc, msg_id=txn.msg_id)
            return Reply.from_error(INTERNAL_ERROR, txn.msg_id)
        self.cfg.log.info(
            "incoming message",
            msg_id=txn.msg_id,
            src_host=self.helo,
            src_ip=self.peer_ip or "unix",
            sender=sender,
        )
        return None

    def _conn_info(self) -> ConnInfo:
        proto = "ESMTPS" if self.conn.tls else "ESMTP"
        if self.cfg.kind == "lmtp":
            proto = "LMTP"
        return ConnInfo(
            remote_ip=self.peer_ip,
            remote_port=self.peer_port,
            helo=self.helo,
            tls=self.conn.tls,
            proto=proto,
            auth_user=self.auth_user,
            endpoint=self.cfg.kind,
        )

    async def _on_rcpt(self, event: RcptTo) -> None:
        txn = self._txn
        assert txn is not None  # the core checked that MAIL was accepted
        if not txn.sender_started:
            txn.sender_error = await self._start_sender(txn)
        if txn.sender_error is not None:
            # Spec §8.3: every RCPT of the transaction gets the same reply.
            self._reply(txn.sender_error)
            return
        rcpt = event.address
        try:
            if not txn.params.smtputf8 and address.needs_smtputf8(rcpt):
                raise SMTPError(553, (5, 6, 7), "SMTPUTF8 is required for non-ASCII recipients")
            try:
                clean = address.clean_address(rcpt)
            except ValueError:
                raise SMTPError(
                    501, (5, 1, 2), "Unable to normalize the recipient address"
                ) from None
            assert txn.delivery is not None
            await txn.delivery.add_rcpt(clean)
        except SMTPError as exc:
            self._log_rcpt_error(txn, rcpt, exc)
            self._reply(self._error_reply(exc))
            return
        txn.rcpts.append((rcpt, clean))
        self.cfg.log.debug("RCPT ok", msg_id=txn.msg_id, rcpt=rcpt)
        self._reply(Reply(250, (2, 0, 0), f"I'll make sure <{rcpt}> gets this"))

    def _log_rcpt_error(self, txn: Transaction, rcpt: str, exc: SMTPError) -> None:
        """Spec §19: log the first N RCPT errors of a session, then fall silent."""
        limit = self.cfg.max_logged_rcpt_errors
        if self._rcpt_errors_logged >= limit:
            return
        self._rcpt_errors_logged += 1
        self.cfg.log.info("RCPT error", msg_id=txn.msg_id, rcpt=rcpt, reason=exc)
        if self._rcpt_errors_logged == limit:
            self.cfg.log.info(
                "too many RCPT errors, possible dictionary attack",
                src_ip=self.peer_ip or "unix",
                msg_id=txn.msg_id,
            )

    async def _on_data(self, event: Data) -> None:
        self._open_body()
        self._reply(R.START_DATA)

    def _open_body(self) -> None:
        txn = self._txn
        assert txn is not None
        txn.header = HeaderReader(self.cfg.max_header_size)
        try:
            txn.buffer = self.cfg.buffer.new()
        except SMTPError as exc:
            txn.body_error = exc

    async def _body_chunk(self, data: bytes) -> None:
        txn = self._txn
        if txn is None or txn.body_error is not None or txn.header is None:
            return
        try:
            if not txn.header.done:
                rest = txn.header.feed(data)
                if rest is None:
                    return
                data = rest
            if data and txn.buffer is not None:
                await txn.buffer.write(data)
        except SMTPError as exc:
            txn.body_error = exc

    async def _on_body_end(self, event: BodyEnd) -> None:
        txn = self._txn
        assert txn is not None
        if not event.last:
            error = txn.body_error or (_too_large() if event.too_large else None)
            if error is None:
                self._reply(R.BDAT_CONTINUE)
                return
            self._answer_owed(error)
            await self._end_transaction()
            return
        try:
            failure: SMTPError | None = None
            statuses: list[SMTPError | None] = []
            try:
                statuses = await self._deliver(txn, event)
            except SMTPError as exc:
                failure = exc
            except Exception as exc:
                self.cfg.log.error("delivery failed", err=exc, msg_id=txn.msg_id)
                failure = INTERNAL_ERROR
        finally:
            # Settled question 13: the buffer is gone before the final reply.
            if txn.buffer is not None:
                txn.buffer.remove()
        if failure is not None:
            self.cfg.log.info("DATA error", msg_id=txn.msg_id, reason=failure)
            statuses = [failure] * max(1, len(txn.rcpts))
        if self.cfg.kind == "lmtp":
            for (rcpt, _), status in zip(txn.rcpts, statuses, strict=True):
                self._reply(_lmtp_reply(rcpt, status, txn.msg_id))
        else:
            status = statuses[0] if statuses else None
            self._reply(R.QUEUED if status is None else Reply.from_error(status, txn.msg_id))
        await self._end_transaction()

    async def _deliver(self, txn: Transaction, event: BodyEnd) -> list[SMTPError | None]:
        """Finish the content and hand it to the pipeline; one status per recipient."""
        if event.too_large:
            raise _too_large()
        if txn.body_error is not None:
            raise txn.body_error
        assert txn.header is not None and txn.buffer is not None
        assert txn.delivery is not None and txn.meta is not None
        txn.header.finish()
        header = txn.header.header
        assert header is not None
        if self.cfg.kind == "submission":
            prepare_submission_header(header, self.cfg.hostname)  # spec §13
        await txn.buffer.finish()
        received = header.count("Received")
        if received > self.cfg.max_received:
            raise SMTPError(
                554,
                (5, 4, 6),
                f"Too many Received header fields ({received}), possible forwarding loop",
            )
        tls_required = header.get("TLS-Required")
        txn.meta.tls_not_required = tls_required is not None and tls_required.lower() == "no"
        if self._rdns is not None and txn.meta.conn is not None:
            txn.meta.conn.rdns = await self._rdns
        if self.cfg.kind == "lmtp":
            collector = _Statuses()
            await txn.delivery.body_non_atomic(collector, header, txn.buffer)
            await txn.delivery.commit()
            txn.committed = True
            result = [collector.get(clean) for _, clean in txn.rcpts]
        else:
            await txn.delivery.body(header, txn.buffer)
            await txn.delivery.commit()
            txn.committed = True
            result = [None]
        self.cfg.log.info("accepted", msg_id=txn.msg_id, rcpts=len(txn.rcpts), size=len(txn.buffer))
        return result

    async def _on_reset(self, event: Reset) -> None:
        await self._end_transaction()
        self._reply(R.RSET)

    async def _on_quit(self, event: Quit) -> None:
        self._reply(R.BYE)
        self._closing = True

    async def _on_starttls(self, event: StartTLS) -> None:
        if self.conn.pending_input:
            # RFC 3207 §4.2: bytes pipelined after STARTTLS must never run.
            self.cfg.log.info("client pipelined past STARTTLS, closing", peer=self.peer_ip)
            self._answer_owed(SMTPError(554, (5, 5, 1), "Data after STARTTLS, closing"))
            self._closing = True
            return
        await self._end_transaction()
        self._reply(R.READY_TLS)
        await self._flush()
        transport = self._transport
        assert transport is not None and self.cfg.tls_context is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(
                transport,
                self,
                self.cfg.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.cfg.read_timeout or None,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.cfg.log.info("TLS handshake failed", peer=self.peer_ip, reason=exc)
            self._lost = True
            self._closing = True
            transport.abort()
            return
        if new is None:
            self._lost = True
            self._closing = True
            return
        self._transport = new
        self._plain = False
        self.conn.tls_started()
        self.auth_user = None  # RFC 3207 §4.2: nothing from before TLS is kept

    async def _on_auth(self, event: Auth) -> None:
        self._sasl = Exchange(event.mechanism, event.initial)
        await self._sasl_step(self._sasl.start())

    async def _on_auth_line(self, event: AuthLine) -> None:
        assert self._sasl is not None
        await self._sasl_step(self._sasl.respond(event.line))

    async def _sasl_step(self, step: Step) -> None:
        if isinstance(step, Challenge):
            self._reply(Reply(334, None, step.text))
            return
        self._sasl = None
        if isinstance(step, Done):
            self._reply(step.reply)
            return
        await self._check_credentials(step)

    async def _check_credentials(self, step: Credentials) -> None:
        authenticator = self.cfg.authenticator
        try:
            if authenticator is None or step.authzid_mismatch:
                raise InvalidCredentials("no provider, or authzid differs from authcid")
            account = await authenticator.verify(step.username, step.password)
        except TemporaryAuthFailure as exc:
            self.cfg.log.info(
                "authentication failed temporarily", username=step.username, reason=exc
            )
            self._reply(AUTH_TEMPORARY)
            return
        except InvalidCredentials:
            await self._auth_failed(step.username)
            return
        self.auth_user = step.username  # the raw authcid (auth.md §1.3)
        self.cfg.log.info(
            "authenticated", username=step.username, account=account, src_ip=self.peer_ip
        )
        self._reply(AUTH_OK)

    async def _auth_failed(self, username: str) -> None:
        self._auth_failures += 1
        n = self._auth_failures
        self.cfg.log.info(
            "authentication failed", username=username, src_ip=self.peer_ip or "unix", count=n
        )
        # Answer what was already due, then make the guesser wait: the delay
        # is the same for an unknown user and a wrong password.
        await self._flush()
        await asyncio.sleep(self.cfg.auth_delay(n))
        if n >= AUTH_MAX_FAILURES:
            self._reply(AUTH_LOCKOUT)
            self._closing = True
        else:
            self._reply(INVALID)

    _handlers: dict[type[Event], Callable[[Session, Event], Awaitable[None]]] = {}

    # -- transactions and shutdown -------------------------------------------

    async def _end_transaction(self) -> None:
        """Forget the transaction; abort its deliveries unless committed."""
        txn, self._txn = self._txn, None
        if txn is None:
            return
        if txn.buffer is not None:
            txn.buffer.remove()
        if txn.delivery is not None and not txn.committed:
            try:
                await txn.delivery.abort()
            except Exception as exc:
                self.cfg.log.error("abort failed", err=exc, msg_id=txn.msg_id)
            self.cfg.log.info("aborted", msg_id=txn.msg_id)

    def begin_shutdown(self) -> None:
        """SIGTERM: an idle session is told at once; a busy one after its reply."""
        self._shutdown = True
        if self._txn is None and self._waiter is not None:
            self._wake()

    def force_close(self) -> None:
        """The grace period is over: say 421 and drop the connection."""
        if self._transport is not None and not self._lost:
            with contextlib.suppress(Exception):
                self._transport.write(SHUTTING_DOWN.render())
            self._transport.close()
        if self.task is not None:
            self.task.cancel()


Session._handlers = {
    Greeting: Session._on_greeting,  # type: ignore[dict-item]
    MailFrom: Session._on_mail,  # type: ignore[dict-item]
    RcptTo: Session._on_rcpt,  # type: ignore[dict-item]
    Data: Session._on_data,  # type: ignore[dict-item]
    BodyEnd: Session._on_body_end,  # type: ignore[dict-item]
    Reset: Session._on_reset,  # type: ignore[dict-item]
    Quit: Session._on_quit,  # type: ignore[dict-item]
    StartTLS: Session._on_starttls,  # type: ignore[dict-item]
    Auth: Session._on_auth,  # type: ignore[dict-item]
    AuthLine: Session._on_auth_line,  # type: ignore[dict-item]
}


class _Statuses:
    """Collects per-recipient outcomes from body_non_atomic (LMTP)."""

    def __init__(self) -> None:
        self._errors: dict[str, Exception | None] = {}

    def set_status(self, rcpt: str, error: Exception | None) -> None:
        self._errors.setdefault(rcpt, error)

    def get(self, rcpt: str) -> SMTPError | None:
        error = self._errors.get(rcpt)
        if error is None or isinstance(error, SMTPError):
            return error
        return INTERNAL_ERROR


def _too_large() -> SMTPError:
    return SMTPError(552, (5, 3, 4), "Maximum message size exceeded")


def _lmtp_reply(rcpt: str, status: SMTPError | None, msg_id: str) -> Reply:
    """RFC 2033 §4.2 per-recipient reply, naming the recipient as the client did."""
    if status is None:
        return Reply(250, (2, 0, 0), f"<{rcpt}> OK: queued")
    text = f"<{rcpt}> {status.message} (msg ID = {msg_id})"
    return Reply(status.code, status.enhanced, text)
