"""The listening sockets of the process, kept across configuration reloads (docs/reload.md).

Strategy: an endpoint does not own its listening sockets; the process
does, in one `ListenSockets` shared by every configuration it runs. A
socket is found by what it binds (`Bind`: the Unix path, or the IP address
and port), not by which endpoint or scheme uses it, so a reload that keeps
an address hands the *same* kernel socket to the new endpoint: nothing is
unbound, and a client connecting during the switch waits in the socket's
backlog instead of being refused. Each endpoint serves a duplicate of the
descriptor (`socket.dup`): closing its server stops that endpoint accepting
and leaves the socket open for whoever else serves it. A socket is closed
(and a Unix socket file removed) only when no configuration in use names
it any more (`release`) or when the server stops (`close_all`).

`diff` is the pure part: which addresses a reload adds, removes and keeps.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from kittiwake.config.values import ListenAddress

__all__ = [
    "UNIX_SOCKET_MODE",
    "Bind",
    "ListenDiff",
    "ListenSockets",
    "bind_of",
    "diff",
    "real_bind",
    "show",
]

#: Unix sockets are for local MTAs: owner and group only.
UNIX_SOCKET_MODE = 0o660
BACKLOG = 1024

#: ("unix", PATH, 0) or ("inet", IP, PORT), as `Endpoint.binds` gives them.
Bind = tuple[str, str, int]


def bind_of(addr: ListenAddress, runtime_dir: str) -> Bind:
    """What `addr` binds: a scheme change (tcp to tls) keeps the same socket."""
    if addr.scheme == "unix":
        return ("unix", os.path.abspath(os.path.join(runtime_dir, addr.path)), 0)
    return ("inet", addr.host, addr.port)


@dataclass(frozen=True)
class ListenDiff:
    """What a reload does to the listening sockets, each list sorted."""

    added: list[Bind]
    removed: list[Bind]
    kept: list[Bind]


def diff(old: Iterable[Bind], new: Iterable[Bind]) -> ListenDiff:
    """Compare the binds of two configurations.

    Port 0 means "any free port": it is never the same socket twice, so a
    port-0 address is always added (and the port it got, which is what
    `old` holds for a running server, always removed).
    """
    before = set(old)
    after = set(new)
    fresh = {b for b in after if b[0] == "inet" and b[2] == 0}
    kept = (after - fresh) & before
    return ListenDiff(
        added=sorted(after - kept),
        removed=sorted(before - kept),
        kept=sorted(kept),
    )


def real_bind(bind: Bind, sock: socket.socket) -> Bind:
    """`bind` with the port `sock` actually got (a port 0 asks for any)."""
    if bind[0] != "inet":
        return bind
    return ("inet", bind[1], int(sock.getsockname()[1]))


def show(bind: Bind) -> str:
    """A bind as the operator wrote it, for log lines."""
    kind, host, port = bind
    if kind == "unix":
        return f"unix://{host}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListenSockets:
    """Every listening socket of the process, by what it binds."""

    def __init__(self) -> None:
        self._sockets: dict[Bind, socket.socket] = {}
        #: Port-0 sockets under the bind they asked for, until `take` hands them out.
        self._fresh: dict[Bind, list[socket.socket]] = {}

    def binds(self) -> list[Bind]:
        """The binds open now, port-0 sockets under the port they got."""
        return sorted(self._sockets)

    def prepare(self, binds: Iterable[Bind]) -> None:
        """Bind every address not open yet (`Endpoint.binds` of a configuration).

        Done for a whole configuration before any of its modules starts, so
        an address that cannot be bound refuses a reload while nothing has
        changed. On failure the sockets this call bound are closed again.
        """
        opened: list[socket.socket] = []
        try:
            for bind in binds:
                if bind in self._sockets:
                    continue
                sock = _bind(bind)
                opened.append(sock)
                if bind[0] == "inet" and bind[2] == 0:
                    self._fresh.setdefault(bind, []).append(sock)
                else:
                    self._sockets[bind] = sock
        except BaseException:
            for sock in opened:
                self._forget(sock)
                sock.close()
            raise

    def take(self, addr: ListenAddress, runtime_dir: str) -> socket.socket:
        """A duplicate of the socket for `addr` (bound now if needed), for one server."""
        bind = bind_of(addr, runtime_dir)
        waiting = self._fresh.get(bind)
        if waiting:
            sock = waiting.pop(0)
            if not waiting:
                del self._fresh[bind]
            self._sockets[real_bind(bind, sock)] = sock
        elif bind in self._sockets:
            sock = self._sockets[bind]
        else:
            sock = _bind(bind)
            self._sockets[real_bind(bind, sock)] = sock
        copy = sock.dup()
        copy.setblocking(False)
        return copy

    def release(self, in_use: Iterable[Bind]) -> list[Bind]:
        """Close every socket not in `in_use`; the binds closed."""
        keep = set(in_use)
        closed = [b for b in self._sockets if b not in keep]
        for bind in closed:
            _close(bind, self._sockets.pop(bind))
        for socks in self._fresh.values():
            for sock in socks:
                sock.close()
        self._fresh.clear()
        return closed

    def close_all(self) -> None:
        self.release(())

    def _forget(self, sock: socket.socket) -> None:
        for bind, known in list(self._sockets.items()):
            if known is sock:
                del self._sockets[bind]
        for bind, socks in list(self._fresh.items()):
            if sock in socks:
                socks.remove(sock)
                if not socks:
                    del self._fresh[bind]


def _bind(bind: Bind) -> socket.socket:
    if bind[0] == "unix":
        path = bind[1]
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, UNIX_SOCKET_MODE)
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        return sock
    host, port = bind[1], bind[2]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # SO_REUSEADDR on; an IPv6 socket is v6-only, so `[::]:25` and
    # `0.0.0.0:25` are two sockets (kittiwake/container.py `_check_binds`).
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def _close(bind: Bind, sock: socket.socket) -> None:
    sock.close()
    if bind[0] == "unix":
        try:
            if stat.S_ISSOCK(os.lstat(bind[1]).st_mode):
                os.unlink(bind[1])
        except OSError:
            pass


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
