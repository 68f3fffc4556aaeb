"""One outgoing SMTP or LMTP connection over asyncio (docs/client.md).

Strategy: `_Wire` is an `asyncio.Protocol` (no streams): every byte the
server sends goes straight into the sans-IO core (`protocol/client.py`), so
the core sees everything that arrived, which is what makes its STARTTLS
check complete (nothing can hide in a stream's buffer). `SMTPClient` writes
the bytes the core's command methods return and waits for the core's
events, each wait bounded by a timeout:

* `connect_timeout` for the dial (and the handshake of `tls://`);
* `command_timeout` for the greeting, every command's reply, the
  STARTTLS handshake and every write that has to wait for the socket;
* `submission_timeout` for each reply after the end of the content.

Reading stops while more than `HIGH_WATER` bytes wait unparsed, so a server
that floods costs bounded memory. Every failure that is not a reply becomes
an `SMTPError` (`smtpclient/errors.py`) before it leaves this module, so
callers handle one kind of error.

The message content is streamed from the body buffer chunk by chunk
through the core's encoder (CR LF line ends, dot-stuffing for DATA): it is
never whole in memory. BDAT is used when the server offers CHUNKING.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from typing import cast

from kittiwake.errors import SMTPError
from kittiwake.log import Logger
from kittiwake.message.buffer import Buffer
from kittiwake.protocol.client import (
    Capabilities,
    ClientConnection,
    ClientState,
    ConnectionClosed,
    Limits,
    RemoteProtocolError,
    ReplyReceived,
)
from kittiwake.protocol.connection import LocalProtocolError
from kittiwake.protocol.replies import Reply
from kittiwake.smtpclient.endpoint import Endpoint
from kittiwake.smtpclient.errors import (
    TLSHandshakeError,
    connect_error,
    dns_error,
    network_error,
    protocol_error,
    reply_error,
    reply_text,
    tls_error,
)
from kittiwake.smtpclient.sasl import MAX_CHALLENGES, Mechanism
from kittiwake.tls.directive import ClientTLS

__all__ = [
    "CHUNK_SIZE",
    "QUIT_TIMEOUT",
    "TLS_UNSUPPORTED",
    "ClientSettings",
    "SMTPClient",
    "default_client_tls",
]

HIGH_WATER = 64 * 1024  # unparsed input that pauses reading
LOW_WATER = 16 * 1024  # ... and resumes it
QUIT_TIMEOUT = 5.0  # a polite QUIT is not worth waiting longer for
CHUNK_SIZE = 256 * 1024  # body read size: one BDAT chunk

TLS_UNSUPPORTED = "TLS required but unsupported by downstream"


@dataclass(frozen=True)
class ClientSettings:
    """How to talk to a downstream server (one per `target.smtp` block)."""

    hostname: str  # the EHLO/LHLO name, in A-labels
    lmtp: bool = False
    starttls: bool = True
    tls: ClientTLS | None = None  # None: the defaults (system trust store)
    connect_timeout: float = 300.0
    command_timeout: float = 300.0
    submission_timeout: float = 300.0
    limits: Limits = field(default_factory=Limits)
    #: The local address to dial from (`target.remote`'s `local_ip`).
    local_ip: str | None = None
    #: The wait for the greeting; None: `command_timeout`.
    greeting_timeout: float | None = None
    #: Check the server's certificate; False: opportunistic TLS that takes
    #: any certificate (RFC 7435), for a server that failed the check.
    verify: bool = True


class _Wire(asyncio.Protocol):
    """The socket side: every byte read goes into the core at once."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._gone: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        if self.conn.pending_input > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.receive_data(b"")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    async def wait_closed(self) -> None:
        """Until the socket is really closed (asyncio closes it a loop turn later)."""
        transport = self.transport
        if self.lost or transport is None:
            return
        if transport.get_protocol() is not self:
            # A handshake that never finished: asyncio's TLS layer owns the
            # transport and will not tell us; its abort completes next turn.
            await asyncio.sleep(0)
            return
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._gone)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def readable(self) -> None:
        """Wait until the server sends something or closes."""
        if self._reading_paused and self.conn.pending_input < LOW_WATER:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def write(self, data: bytes) -> None:
        """Write, and wait while the socket's buffer is full."""
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        transport.write(data)
        if self._writing_paused:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
            if self.lost:
                raise ConnectionResetError("the connection was lost while writing")


class SMTPClient:
    """One connection to one endpoint; a fresh one per message (no pooling)."""

    def __init__(self, endpoint: Endpoint, settings: ClientSettings, log: Logger) -> None:
        self.endpoint = endpoint
        self.remote = str(endpoint)
        self.settings = settings
        self.log = log
        self.conn = ClientConnection(
            lmtp=settings.lmtp, tls=endpoint.implicit_tls, limits=settings.limits
        )
        self._wire = _Wire(self.conn)
        #: Why the connection cannot be used any more (see `_broken`).
        self.failure: SMTPError | None = None
        #: The name the server gave in its last EHLO reply's first line.
        self.helo_name = ""

    @property
    def capabilities(self) -> Capabilities:
        return self.conn.capabilities

    @property
    def tls(self) -> bool:
        return self.conn.tls

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS session once TLS is up (certificate, version, cipher), else None."""
        transport = self._wire.transport
        if transport is None or not self.conn.tls:
            return None
        found = transport.get_extra_info("ssl_object")
        return found if isinstance(found, ssl.SSLObject) else None

    @property
    def local_address(self) -> str:
        """The address this end of the connection has ("" before the dial)."""
        transport = self._wire.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return str(sockname[0]) if isinstance(sockname, tuple) and sockname else ""

    @property
    def alive(self) -> bool:
        """Nothing known to be wrong: not failed, not closed by either side."""
        return (
            self.failure is None
            and not self._wire.lost
            and self.conn.state is ClientState.READY
            and self._wire.transport is not None
            and not self._wire.transport.is_closing()
        )

    # -- connecting ---------------------------------------------------------------

    async def connect(self) -> None:
        """Dial, read the greeting, EHLO (LHLO); STARTTLS and EHLO again if wanted."""
        await self._dial()
        try:
            settings = self.settings
            wait = settings.greeting_timeout or settings.command_timeout
            greeting = await self.read_reply(wait)
            if greeting.reply.code != 220:
                raise reply_error(greeting.reply, self.remote, "the greeting")
            await self._hello()
            if self.settings.starttls and not self.endpoint.implicit_tls:
                await self._starttls()
        except Exception:
            await self.quit()
            raise
        except BaseException:  # cancelled: no time for a goodbye
            self.close()
            raise

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        context = self._tls_context() if ep.implicit_tls else None
        timeout = self.settings.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                if ep.scheme == "unix":
                    await loop.create_unix_connection(lambda: self._wire, ep.path)
                else:
                    local = self.settings.local_ip
                    await loop.create_connection(
                        lambda: self._wire,
                        ep.host,
                        ep.port,
                        ssl=context,
                        server_hostname=ep.tls_name if context else None,
                        ssl_handshake_timeout=timeout if context else None,
                        local_addr=(local, 0) if local else None,
                    )
        except TimeoutError:
            raise connect_error(self.remote, f"no connection within {timeout:g}s") from None
        except socket.gaierror as exc:
            raise dns_error(self.remote, exc.strerror or str(exc)) from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise tls_error(self.remote, str(exc)) from None
        except OSError as exc:
            if context is not None and isinstance(exc, ConnectionAbortedError):
                raise tls_error(self.remote, str(exc)) from None
            raise connect_error(self.remote, exc.strerror or str(exc)) from None
        self.log.debug("connected", remote=self.remote)

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.settings.tls or default_client_tls()
        return tls.context(
            verify=self.settings.verify, check_hostname=self.endpoint.tls_name is not None
        )

    async def _hello(self) -> None:
        name = self.settings.hostname
        hello = await self.ask(self.conn.ehlo(name))
        if not self.conn.lmtp and hello.reply.code in (500, 502):
            # RFC 5321 §3.2: a server that does not know EHLO gets HELO.
            hello = await self.ask(self.conn.helo(name))
        if not hello.ok:
            raise reply_error(hello.reply, self.remote, hello.command.value)
        lines = (hello.reply.text,) if isinstance(hello.reply.text, str) else hello.reply.text
        self.helo_name = lines[0].split(" ", 1)[0] if lines and lines[0] else ""

    async def starttls(self) -> None:
        """STARTTLS and EHLO again, on a connection made without `settings.starttls`.

        A refused STARTTLS command raises `SMTPError`; a failed handshake
        `TLSHandshakeError`, which says whether the certificate check was
        the cause (the connection is unusable after either).
        """
        await self._starttls()

    async def _starttls(self) -> None:
        if not self.capabilities.starttls:
            raise SMTPError(
                451,
                (4, 7, 0),
                TLS_UNSUPPORTED,
                reason=f"{self.remote} does not offer STARTTLS",
                misc={"remote_server": self.remote},
            )
        answer = await self.ask(self.conn.starttls())
        if answer.reply.code != 220:
            raise tls_error(self.remote, f"STARTTLS refused: {answer.reply}")
        loop = asyncio.get_running_loop()
        transport = self._wire.transport
        assert transport is not None
        timeout = self.settings.command_timeout
        try:
            async with asyncio.timeout(timeout):
                new = await loop.start_tls(
                    transport,
                    self._wire,
                    self._tls_context(),
                    server_hostname=self.endpoint.tls_name,
                    ssl_handshake_timeout=timeout,
                )
        except TimeoutError:
            why = f"no handshake within {timeout:g}s"
            raise self._broken(TLSHandshakeError(self.remote, why)) from None
        except ssl.SSLCertVerificationError as exc:
            code = exc.verify_code if isinstance(exc.verify_code, int) else 0
            raise self._broken(TLSHandshakeError(self.remote, str(exc), code)) from None
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            raise self._broken(TLSHandshakeError(self.remote, str(exc))) from None
        if new is None:
            why = "the connection closed during the handshake"
            raise self._broken(TLSHandshakeError(self.remote, why))
        self._wire.transport = new
        self.conn.tls_started()
        self.log.debug("TLS started", remote=self.remote)
        await self._hello()

    async def authenticate(self, mechanism: Mechanism) -> None:
        """AUTH with one mechanism; a failure is ours to fix, so temporary."""
        if mechanism.name not in self.capabilities.auth:
            raise _auth_failed(self.remote, f"AUTH {mechanism.name} is not offered")
        line = self.conn.auth(mechanism.name, mechanism.initial())
        await self.send(line, secret=True)
        answer = await self.read_reply()
        rounds = 0
        while answer.reply.code == 334:
            if rounds > MAX_CHALLENGES:  # even our `*` did not end it: give up
                raise _auth_failed(self.remote, "the server keeps sending challenges")
            response = mechanism.respond(rounds) if rounds < MAX_CHALLENGES else "*"
            await self.send(self.conn.auth_response(response), secret=True)
            answer = await self.read_reply()
            rounds += 1
        if answer.reply.code != 235:
            raise _auth_failed(self.remote, f"{answer.reply}")
        self.log.debug("authenticated", remote=self.remote, mechanism=mechanism.name)

    # -- commands and replies -----------------------------------------------------

    async def send(self, data: bytes, *, secret: bool = False, note: str = "") -> None:
        """Write bytes the core produced, within `command_timeout`.

        `secret`: a SASL line, never logged (it carries credentials).
        `note`: what the debug log says instead of the bytes.
        """
        if not data:
            return
        if note and self.log.debug_enabled:
            self.log.debug("sent", remote=self.remote, line=note)
        elif self.log.debug_enabled:
            self._log_sent(data, secret)
        self.check_usable()
        timeout = self.settings.command_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._wire.write(data)
        except TimeoutError:
            why = f"write blocked for {timeout:g}s"
            raise self._broken(network_error(self.remote, why)) from None
        except OSError as exc:
            raise self._broken(network_error(self.remote, f"write failed: {exc}")) from None

    async def read_reply(self, within: float | None = None) -> ReplyReceived:
        """The next reply, within `within` seconds (default `command_timeout`)."""
        self.check_usable()
        limit = self.settings.command_timeout if within is None else within
        try:
            async with asyncio.timeout(limit):
                while True:
                    event = self.conn.next_event()
                    if isinstance(event, ReplyReceived):
                        self.log.debug("reply", remote=self.remote, reply=str(event.reply))
                        return event
                    if isinstance(event, ConnectionClosed):
                        why = f"connection closed by the server ({event.owed} replies missing)"
                        raise self._broken(network_error(self.remote, why))
                    await self._wire.readable()
        except TimeoutError:
            raise self._broken(network_error(self.remote, f"no reply within {limit:g}s")) from None
        except RemoteProtocolError as exc:
            raise self._broken(protocol_error(self.remote, str(exc))) from None

    def _broken(self, error: SMTPError) -> SMTPError:
        """Remember why the connection is unusable; every later use fails the same way.

        After a timeout a late reply could still come and be taken for the
        next command's; after a protocol error nothing the server says can
        be trusted. Either way the connection is only good for closing.
        """
        if self.failure is None:
            self.failure = error
        return error

    def check_usable(self) -> None:
        """Raise the failure that made this connection unusable, if there was one.

        Callers check before they build a command: the core refuses to
        build one on a connection that is closed or broken.
        """
        if self.failure is None and self.conn.state in (ClientState.CLOSED, ClientState.ERROR):
            self._broken(network_error(self.remote, "the connection is closed"))
        if self.failure is not None:
            raise self.failure.with_traceback(None)

    async def ask(self, data: bytes, within: float | None = None) -> ReplyReceived:
        """Send one command and read its reply."""
        await self.send(data)
        return await self.read_reply(within)

    def _log_sent(self, data: bytes, secret: bool) -> None:
        """Commands at debug level; content as a byte count; credentials never."""
        if secret:
            self.log.debug("sent", remote=self.remote, line="(SASL exchange, hidden)")
        elif data.startswith(b"BDAT "):
            command = data[: data.index(b"\r\n")].decode("ascii")
            self.log.debug("sent", remote=self.remote, line=command)
        elif self.conn.state is ClientState.CONTENT:
            self.log.debug("sent content", remote=self.remote, bytes=len(data))
        else:
            for line in data.decode("utf-8", "replace").splitlines():
                self.log.debug("sent", remote=self.remote, line=line)

    # -- the message content -------------------------------------------------------

    async def send_message(self, header: bytes, body: Buffer, replies: list[Reply]) -> None:
        """Send the content; append each final reply to `replies` as it comes.

        One final reply for SMTP, one per accepted recipient for LMTP (in
        RCPT order). A refusal before the end (DATA not answered 354, a
        BDAT chunk refused) is the reply for every recipient. Failures that
        are not replies raise `SMTPError`, with the replies so far kept.
        """
        count = self.conn.accepted_rcpts if self.conn.lmtp else 1
        if self.capabilities.chunking:
            early = await self._send_bdat(header, body)
        else:
            early = await self._send_data(header, body)
        if early is not None:
            replies.extend([early] * count)
            return
        for _ in range(count):
            answer = await self.read_reply(self.settings.submission_timeout)
            replies.append(answer.reply)

    async def _send_data(self, header: bytes, body: Buffer) -> Reply | None:
        """DATA, then the content in writes of about `CHUNK_SIZE`.

        Pieces are gathered before they are written: each write is a system
        call (on loopback the receiver's TCP work runs inside it), so a
        message smaller than a chunk, the final dot included, goes out in one.
        """
        answer = await self.ask(self.conn.data())
        if answer.reply.code != 354:
            return answer.reply if answer.reply.code >= 400 else _unexpected(answer)
        pending = self.conn.content(header)
        async for chunk in body.chunks(CHUNK_SIZE):
            pending += self.conn.content(chunk)
            if len(pending) >= CHUNK_SIZE:
                await self.send(pending)
                pending = b""
        size = len(pending)
        await self.send(pending + self.conn.end_of_data(), note=f"({size} bytes, end of data)")
        return None

    async def _send_bdat(self, header: bytes, body: Buffer) -> Reply | None:
        """BDAT chunks; the last one with the body's last piece (`BDAT n LAST`).

        One chunk is held back until the next is read, so the last piece
        of the body rides with LAST rather than costing a `BDAT 0 LAST`
        round trip of its own.
        """
        pending = header  # the header rides with the first body chunk
        held: bytes | None = None
        async for chunk in body.chunks(CHUNK_SIZE):
            if held is not None:
                out = self.conn.bdat(pending + held)
                pending = b""
                if out:
                    answer = await self.ask(out)
                    if not answer.ok:
                        return answer.reply
            held = chunk
        await self.send(self.conn.bdat(pending + (held or b""), last=True))
        return None

    # -- the end ---------------------------------------------------------------------

    async def quit(self) -> None:
        """QUIT politely (briefly), close, and wait until the socket is closed. Never raises."""
        try:
            usable = self.failure is None and not self._wire.lost
            if usable and self.conn.state is ClientState.READY:
                await self.ask(self.conn.quit(), QUIT_TIMEOUT)
        except (SMTPError, LocalProtocolError) as exc:
            self.log.debug("QUIT failed", remote=self.remote, reason=str(exc))
        finally:
            self.close()
        try:
            async with asyncio.timeout(QUIT_TIMEOUT):
                await self._wire.wait_closed()
        except TimeoutError:
            transport = self._wire.transport
            if transport is not None:
                transport.abort()  # a TLS goodbye the server never acknowledged

    def close(self) -> None:
        """Close at once; after a protocol error or mid-content, without a goodbye."""
        transport = self._wire.transport
        if transport is None or transport.is_closing():
            return
        clean = self.failure is None or self.conn.state is ClientState.CLOSED
        if clean and self.conn.state in (ClientState.READY, ClientState.CLOSED):
            transport.close()
        else:
            transport.abort()


def _auth_failed(remote: str, why: str) -> SMTPError:
    """AUTH trouble is a configuration problem, never the message's: temporary."""
    return SMTPError(
        451,
        (4, 7, 0),
        "Authentication with the downstream server failed",
        reason=f"{remote}: {why}",
        misc={"remote_server": remote},
    )


def _unexpected(answer: ReplyReceived) -> Reply:
    """A 2xx where 354 belongs: the two sides disagree, so a temporary refusal."""
    text = reply_text(answer.reply)
    return Reply(451, (4, 5, 0), f"Unexpected reply to {answer.command.value}: {text}"[:200])


_DEFAULT_TLS: list[ClientTLS] = []


def default_client_tls() -> ClientTLS:
    """The `tls_client` defaults, built once (loading the trust store costs)."""
    if not _DEFAULT_TLS:
        _DEFAULT_TLS.append(ClientTLS())
    return _DEFAULT_TLS[0]
