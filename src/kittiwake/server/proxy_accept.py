"""Accepting connections behind a PROXY-protocol proxy (docs/proxy.md).

Strategy: for an endpoint with `proxy_protocol`, the listener accepts
sockets itself instead of letting asyncio do it, and reads the header from
a trusted peer before anything else happens: before the banner and before
any TLS handshake. The header is read with MSG_PEEK and only its own bytes
are consumed, so whatever the client sent right after it (typically a TLS
ClientHello, in the same segment) stays in the kernel's buffer for the TLS
layer or the SMTP session that comes next. Only then is the socket handed
to the event loop as an ordinary connection, with TLS when the listener is
`tls://` or the proxy channel is encrypted.

A trusted peer must send a header within the deadline; a missing, partial,
malformed or over-long one closes the connection without a word. An
untrusted peer is never asked for one: its session simply starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from kittiwake.log import Logger
from kittiwake.protocol.proxy import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    ProxyError,
    ProxyHeader,
    ProxyResult,
    parse_header,
)
from kittiwake.server.proxy_trust import TrustList

#: The largest header either version may have.
MAX_HEADER = max(MAX_V1_LENGTH, 16 + MAX_V2_LENGTH)
#: How long a trusted peer has to send its header.
HEADER_DEADLINE = 5.0


@dataclass(frozen=True)
class ProxyConfig:
    """The `proxy_protocol` directive of one endpoint."""

    trust: TrustList
    #: TLS between the proxy and kittiwake, started after the header.
    tls: Callable[[], ssl.SSLContext | None] | None = None
    deadline: float = HEADER_DEADLINE


#: Makes the protocol for an accepted connection: (tls, client address).
SessionFactory = Callable[[bool, tuple[str, int] | None], asyncio.Protocol]


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def read_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ProxyHeader:
    """Read exactly one PROXY header from `sock`; raise ProxyError otherwise."""
    taken = b""
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(MAX_HEADER - len(taken), socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not peeked:
            raise ProxyError("connection closed before the PROXY header was complete")
        result = parse_header(taken + peeked)
        if not isinstance(result, ProxyResult):  # NEED_DATA
            # Every byte seen so far belongs to the header: take it out of
            # the kernel's buffer, or the socket would stay readable forever.
            sock.recv(len(peeked))
            taken += peeked
            if len(taken) >= MAX_HEADER:
                raise ProxyError("PROXY header too long")
            continue
        used = len(taken) + len(peeked) - len(result.rest)
        sock.recv(used - len(taken))
        return result.header


class ProxyAcceptor:
    """The accept loop of one listening socket of a `proxy_protocol` endpoint."""

    def __init__(
        self,
        listening: socket.socket,
        config: ProxyConfig,
        *,
        implicit_tls: Callable[[], ssl.SSLContext | None] | None,
        make_session: SessionFactory,
        handshake_timeout: float | None,
        log: Logger,
    ) -> None:
        self.sock = listening
        self.config = config
        self._implicit_tls = implicit_tls
        self._make_session = make_session
        self._handshake_timeout = handshake_timeout
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as exc:  # EMFILE and friends: breathe, then go on
                self.log.error("accept failed", err=exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._admit(conn, peer))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _admit(self, conn: socket.socket, peer: object) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else None
        client: tuple[str, int] | None = None
        tls_context = self._implicit_tls() if self._implicit_tls is not None else None
        if self.config.trust.trusts(peer_ip):
            try:
                header = await asyncio.wait_for(read_header(loop, conn), self.config.deadline)
            except (ProxyError, TimeoutError, OSError) as exc:
                why = str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    why = f"no PROXY header within {self.config.deadline:g} s"
                self.log.info(
                    "bad or missing PROXY header, closing", peer=peer_ip or "unix", reason=why
                )
                conn.close()
                return
            if not header.local and header.source_ip is not None:
                client = (header.source_ip, header.source_port or 0)
            if self.config.tls is not None:
                tls_context = self.config.tls()
        try:
            await loop.connect_accepted_socket(
                lambda: self._make_session(tls_context is not None, client),
                conn,
                ssl=tls_context,
                ssl_handshake_timeout=self._handshake_timeout if tls_context else None,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.log.info("TLS handshake failed", peer=peer_ip or "unix", reason=exc)
            conn.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._pending):
            task.cancel()
        self.sock.close()
