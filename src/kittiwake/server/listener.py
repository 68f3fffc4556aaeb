"""Binding an endpoint's addresses, accepting, and stopping gracefully.

Each accepted connection becomes a `Session`. On stop the listening sockets
close first; sessions without an open transaction are told `421 4.3.2` at
once, the others may finish within the grace period, and whoever is left
then is told the same and disconnected (docs/server.md, "Shutdown").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
from collections.abc import Callable

from kittiwake.config.values import ListenAddress
from kittiwake.log import Logger
from kittiwake.server.proxy_accept import ProxyAcceptor, ProxyConfig
from kittiwake.server.session import Session

#: Unix sockets are for local MTAs: owner and group only.
UNIX_SOCKET_MODE = 0o660


class Listener:
    """The listening sockets of one endpoint and the sessions they accepted."""

    def __init__(
        self,
        addresses: list[ListenAddress],
        *,
        runtime_dir: str,
        tls_context: Callable[[], ssl.SSLContext | None],
        make_session: Callable[[set[Session], bool, tuple[str, int] | None], Session],
        handshake_timeout: float | None,
        proxy: ProxyConfig | None = None,
        log: Logger | None = None,
    ) -> None:
        self._addresses = addresses
        self._runtime_dir = runtime_dir
        self._tls_context = tls_context
        self._make_session = make_session
        self._handshake_timeout = handshake_timeout
        self._servers: list[asyncio.Server] = []
        self._proxy = proxy
        self._log = log
        self._acceptors: list[ProxyAcceptor] = []
        self._bound: list[str] = []
        self.sessions: set[Session] = set()

    def bound(self) -> list[str]:
        """The addresses actually listened on (a port 0 shows the real port)."""
        return list(self._bound)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for addr in self._addresses:
            implicit_tls = addr.scheme == "tls"
            if self._proxy is not None:
                self._start_proxied(addr, implicit_tls)
                continue
            context = self._tls_context() if implicit_tls else None

            def factory(tls: bool = implicit_tls) -> Session:
                return self._make_session(self.sessions, tls, None)

            if addr.scheme == "unix":
                path = self.unix_path(addr)
                _remove_stale_socket(path)
                server = await loop.create_unix_server(factory, path, backlog=1024)
                os.chmod(path, UNIX_SOCKET_MODE)
                self._servers.append(server)
                self._bound.append(f"unix://{path}")
                continue
            server = await loop.create_server(
                factory,
                addr.host,
                addr.port,
                ssl=context,
                ssl_handshake_timeout=self._handshake_timeout if context else None,
                reuse_address=True,
                backlog=1024,
            )
            self._servers.append(server)
            sock = server.sockets[0]
            port = sock.getsockname()[1]
            host = f"[{addr.host}]" if sock.family == socket.AF_INET6 else addr.host
            self._bound.append(f"{addr.scheme}://{host}:{port}")

    def _start_proxied(self, addr: ListenAddress, implicit_tls: bool) -> None:
        """Accept through a ProxyAcceptor: the header comes before TLS and banner."""
        assert self._proxy is not None and self._log is not None
        if addr.scheme == "unix":
            path = self.unix_path(addr)
            _remove_stale_socket(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, UNIX_SOCKET_MODE)
            sock.listen(1024)
            bound = f"unix://{path}"
        else:
            family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            sock = socket.create_server((addr.host, addr.port), family=family, backlog=1024)
            port = sock.getsockname()[1]
            host = f"[{addr.host}]" if family == socket.AF_INET6 else addr.host
            bound = f"{addr.scheme}://{host}:{port}"
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
        self._bound.append(bound)

    def unix_path(self, addr: ListenAddress) -> str:
        return os.path.join(self._runtime_dir, addr.path)

    async def stop(self, grace: float) -> None:
        for server in self._servers:
            server.close()
        for acceptor in self._acceptors:
            await acceptor.stop()
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
        for addr in self._addresses:
            if addr.scheme == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_path(addr))
        self._servers.clear()


def _remove_stale_socket(path: str) -> None:
    """Replace a socket file left by a crashed process, never a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process")
