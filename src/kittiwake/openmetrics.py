"""The `openmetrics` module: the process's metrics over HTTP (docs/metrics.md).

```
openmetrics tcp://127.0.0.1:9749 { }
```

maddy's module name and syntax: the arguments are listen addresses
(`tcp://HOST:PORT` or `unix://PATH`), the block takes no directives. A
Prometheus scrape is `GET /metrics`; every other path is `404`, every other
method `405`.

Strategy: configuring the block turns the process's metrics on
(`metrics.enable()`), before any endpoint starts, so nothing counted is
missed and a server without the block never pays for them. The HTTP side is
a small asyncio server on the event loop, one request per connection: read
the request head (at most 8 KiB, within 10 s), answer, close. Rendering the
registry is CPU work of well under a millisecond for our few hundred
series, so it runs inline rather than in a thread. With worker processes
(docs/workers.md) the supervisor serves the page, and each scrape adds the
workers' counts to its own (supervise/metrics.py): one scrape, the whole
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import Any, ClassVar

from prometheus_client import generate_latest

from kittiwake import metrics
from kittiwake.config.values import ListenAddress, parse_listen_address
from kittiwake.module import Directives, Endpoint, Role, register
from kittiwake.server.sockets import Bind, bind_of, real_bind
from kittiwake.supervise.metrics import Family, Merged

#: The request head's limit and deadline: a scrape sends a few hundred bytes.
MAX_REQUEST_HEAD = 8 * 1024
REQUEST_TIMEOUT = 10.0
PATH = "/metrics"
#: The text format every Prometheus reads. Our names are all classic ones
#: (letters, digits, `_`), so the client's newer 1.0.0 format would write
#: the same bytes; saying 0.0.4 keeps older scrapers on their usual parser.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Python 3.13 removes a Unix socket's file when its server closes; the file
#: belongs to the process's socket, which a reload keeps (server/sockets.py).
_KEEP_SOCKET_FILE: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}


@register("openmetrics")
class OpenMetrics(Endpoint):
    """Serves `/metrics` in the Prometheus text format."""

    grace = 1.0
    #: With workers, the supervisor serves the page for the whole server.
    roles: ClassVar[frozenset[Role]] = frozenset({Role.SINGLE, Role.SUPERVISOR})

    def configure(self, cfg: Directives) -> None:
        node = cfg.node
        self.listen: list[ListenAddress] = []
        for text in self.inline_args:
            try:
                addr = parse_listen_address(text)
            except ValueError as exc:
                raise node.error(str(exc)) from None
            if addr.scheme == "tls":
                raise node.error(f"{self.module_name}: {text}: TLS is not offered; use tcp://")
            self.listen.append(addr)
        if not self.listen:
            raise node.error(f"{self.module_name}: at least one listen address is required")
        cfg.finish()
        self.metrics = metrics.enable()
        self._servers: list[asyncio.Server] = []
        self._bound: list[str] = []
        self._binds: list[Bind] = []
        self._handlers: set[asyncio.Task[None]] = set()

    def binds(self) -> list[Bind]:
        runtime_dir = self.container.globals.runtime_dir
        return [bind_of(a, runtime_dir) for a in self.listen]

    async def start(self) -> None:
        """Serve on the process's socket for each address (server/sockets.py):
        a reload that keeps an address keeps the socket, scrapes included."""
        sockets = self.container.shared.sockets
        runtime_dir = self.container.globals.runtime_dir
        for addr in self.listen:
            sock = sockets.take(addr, runtime_dir)
            bind = real_bind(bind_of(addr, runtime_dir), sock)
            if bind[0] == "unix":
                server = await asyncio.start_unix_server(
                    self._accept, sock=sock, limit=MAX_REQUEST_HEAD, **_KEEP_SOCKET_FILE
                )
                self._bound.append(f"unix://{bind[1]}")
            else:
                server = await asyncio.start_server(self._accept, sock=sock, limit=MAX_REQUEST_HEAD)
                host = f"[{addr.host}]" if sock.family == socket.AF_INET6 else addr.host
                self._bound.append(f"tcp://{host}:{bind[2]}")
            self._binds.append(bind)
            self._servers.append(server)

    async def close(self) -> None:
        """Stop accepting; a scrape in progress is answered (a reload)."""
        for server in self._servers:
            server.close()

    async def drain(self, within: float) -> bool:
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=within)
        return not self._handlers

    async def stop(self) -> None:
        await self.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=self.grace)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), self.grace)
        self._servers.clear()

    def addresses(self) -> list[str]:
        return list(self._bound)

    def listen_addresses(self) -> list[ListenAddress]:
        return list(self.listen)

    def serving(self) -> list[tuple[str, str, int]]:
        return list(self._binds)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the scraper went away or sent garbage: nothing to answer
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        gather = self.metrics.gather
        workers = await gather() if gather is not None and _route(head) == "ok" else None
        status, body, content_type = answer(head, self.metrics, workers)
        method = head.split(b" ", 1)[0]
        lines = [
            f"HTTP/1.1 {status}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if status.startswith("405"):
            lines.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        if method != b"HEAD":
            writer.write(body)
        await writer.drain()


def answer(
    head: bytes, live: metrics.LiveMetrics, workers: list[list[Family]] | None = None
) -> tuple[str, bytes, str]:
    """The status line's rest, body and content type for one request head.

    Pure, for tests: `GET /metrics` (a query string is ignored) renders the
    registry, plus the samples of `workers` when given; other paths are
    404, other methods 405, a request line that is not HTTP/1.x is 400.
    """
    text = "text/plain; charset=utf-8"
    route = _route(head)
    if route == "bad":
        return "400 Bad Request", b"bad request\n", text
    if route == "elsewhere":
        return "404 Not Found", b"not found: metrics are at /metrics\n", text
    if route == "method":
        return "405 Method Not Allowed", b"method not allowed\n", text
    if workers is None:
        return "200 OK", generate_latest(live.registry), CONTENT_TYPE
    return "200 OK", generate_latest(Merged(live.registry, workers)), CONTENT_TYPE


def _route(head: bytes) -> str:
    """`ok` for a scrape; `bad`, `elsewhere` (another path) or `method` otherwise."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return "bad"
    method, target = parts[0], parts[1]
    if target.split("?", 1)[0] != PATH:
        return "elsewhere"
    if method not in ("GET", "HEAD"):
        return "method"
    return "ok"
