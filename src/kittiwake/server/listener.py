"""Serving an endpoint's addresses, accepting, and stopping gracefully.

The sockets themselves are the process's (server/sockets.py), so a reload
can hand them to the next configuration. Each accepted connection becomes
a `Session`. On stop the listener stops accepting first; sessions without
an open transaction are told `421 4.3.2` at once, the others may finish
within the grace period, and whoever is left then is told the same and
disconnected (docs/server.md, "Shutdown").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
from collections.abc import Callable

from kittiwake.config.values import ListenAddress
from kittiwake.log import Logger
from kittiwake.server.proxy_accept import ProxyAcceptor, ProxyConfig
from kittiwake.server.session import Session
from kittiwake.server.sockets import Bind, ListenSockets, bind_of, real_bind


class Listener:
    """The listening sockets of one endpoint and the sessions they accepted."""

    def __init__(
        self,
        addresses: list[ListenAddress],
        *,
        runtime_dir: str,
        sockets: ListenSockets,
        tls_context: Callable[[], ssl.SSLContext | None],
        make_session: Callable[[set[Session], bool, tuple[str, int] | None], Session],
        handshake_timeout: float | None,
        proxy: ProxyConfig | None = None,
        log: Logger | None = None,
    ) -> None:
        self._addresses = addresses
        self._runtime_dir = runtime_dir
        self._sockets = sockets
        self._tls_context = tls_context
        self._make_session = make_session
        self._handshake_timeout = handshake_timeout
        self._servers: list[asyncio.AbstractServer] = []
        self._proxy = proxy
        self._log = log
        self._acceptors: list[ProxyAcceptor] = []
        self._bound: list[str] = []
        self._binds: list[Bind] = []
        self.sessions: set[Session] = set()

    def bound(self) -> list[str]:
        """The addresses actually listened on (a port 0 shows the real port)."""
        return list(self._bound)

    def binds(self) -> list[Bind]:
        """What this listener serves, port 0 as the port it got (server/sockets.py)."""
        return list(self._binds)

    async def start(self) -> None:
        """Serve every address, on the process's socket for it (server/sockets.py)."""
        loop = asyncio.get_running_loop()
        for addr in self._addresses:
            implicit_tls = addr.scheme == "tls"
            sock = self._sockets.take(addr, self._runtime_dir)
            bind = real_bind(bind_of(addr, self._runtime_dir), sock)
            self._binds.append(bind)
            if bind[0] == "unix":
                shown = f"unix://{bind[1]}"
            else:
                host = f"[{addr.host}]" if sock.family == socket.AF_INET6 else addr.host
                shown = f"{addr.scheme}://{host}:{bind[2]}"
            self._bound.append(shown)
            if self._proxy is not None:
                self._start_proxied(sock, implicit_tls)
                continue
            context = self._tls_context() if implicit_tls else None

            def factory(tls: bool = implicit_tls) -> Session:
                return self._make_session(self.sessions, tls, None)

            if addr.scheme == "unix":
                server: asyncio.AbstractServer = await _unix_server(loop, factory, sock)
            else:
                server = await loop.create_server(
                    factory,
                    sock=sock,
                    ssl=context,
                    ssl_handshake_timeout=self._handshake_timeout if context else None,
                )
            self._servers.append(server)

    def _start_proxied(self, sock: socket.socket, implicit_tls: bool) -> None:
        """Accept through a ProxyAcceptor: the header comes before TLS and banner."""
        assert self._proxy is not None and self._log is not None
        acceptor = ProxyAcceptor(
            sock,
            self._proxy,
            implicit_tls=self._tls_context if implicit_tls else None,
            make_session=lambda tls, client: self._make_session(self.sessions, tls, client),
            handshake_timeout=self._handshake_timeout,
            log=self._log,
        )
        acceptor.start()
        self._acceptors.append(acceptor)

    async def close(self) -> None:
        """Stop accepting; sessions in progress go on (a reload, docs/reload.md).

        Only this endpoint's duplicate of each socket closes: a socket the
        next configuration serves stays open for it.
        """
        for server in self._servers:
            server.close()
        for acceptor in self._acceptors:
            await acceptor.stop()
        self._acceptors.clear()

    async def drain(self, within: float) -> bool:
        """Wait up to `within` seconds for every session to end; whether they did."""
        deadline = asyncio.get_running_loop().time() + within
        while self.sessions:
            tasks = [s.task for s in self.sessions if s.task is not None]
            left = deadline - asyncio.get_running_loop().time()
            if not tasks or left <= 0:
                return False
            await asyncio.wait(tasks, timeout=left)
        return True

    async def stop(self, grace: float) -> None:
        await self.close()
        for session in list(self.sessions):
            session.begin_shutdown()
        tasks = [s.task for s in self.sessions if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for session in list(self.sessions):
                session.force_close()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()


async def _unix_server(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], Session], sock: socket.socket
) -> asyncio.AbstractServer:
    """Python 3.13 removes a Unix socket's file when its server closes; the file
    belongs to the process's socket (server/sockets.py), which may outlive it."""
    if sys.version_info >= (3, 13):
        return await loop.create_unix_server(factory, sock=sock, cleanup_socket=False)
    return await loop.create_unix_server(factory, sock=sock)
