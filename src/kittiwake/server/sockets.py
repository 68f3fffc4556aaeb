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

With worker processes (docs/workers.md) the main process binds every
socket and the workers inherit them. Where the kernel balances
connections between sockets bound to one port (`SO_REUSEPORT` on Linux),
each worker gets a socket of its own for each TCP address (a "slot",
`slot`), so the kernel spreads clients evenly and a worker that dies
leaves its socket open in the main process: clients arriving meanwhile
wait in its backlog for the restarted worker instead of being refused.
Elsewhere, and for Unix sockets, every worker accepts on the one shared
socket. A worker's own `ListenSockets` holds only what it inherited
(`adopt`) and never binds, nor removes a Unix socket's file, which is the
main process's.

`diff` is the pure part: which addresses a reload adds, removes and keeps.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from kittiwake.config.values import ListenAddress
from kittiwake.networks import host_port

__all__ = [
    "UNIX_SOCKET_MODE",
    "Bind",
    "ListenDiff",
    "ListenSockets",
    "balanced_reuse_port",
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


def balanced_reuse_port() -> bool:
    """Whether sockets bound to one port share its connections out evenly.

    Linux's `SO_REUSEPORT` does; the BSDs' and macOS's lets several
    sockets bind but gives the connections to one of them.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


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
    return host_port(host, port)


class ListenSockets:
    """Every listening socket of the process, by what it binds."""

    def __init__(self, *, reuse_port: bool = False, inherited_only: bool = False) -> None:
        """`reuse_port`: bind TCP sockets with SO_REUSEPORT, so that `slot` can
        add sockets on the same port (the main process of workers).
        `inherited_only`: a worker's, which binds nothing itself."""
        self.reuse_port = reuse_port
        self.inherited_only = inherited_only
        self._sockets: dict[Bind, socket.socket] = {}
        #: Port-0 sockets under the bind they asked for, until `take` hands them out.
        self._fresh: dict[Bind, list[socket.socket]] = {}
        #: The sockets of slots 1.. of a bind (slot 0 is `_sockets[bind]`).
        self._slots: dict[Bind, list[socket.socket]] = {}

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
                sock = self._bind(bind)
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
        copy = self._sockets[self.assign(addr, runtime_dir)].dup()
        copy.setblocking(False)
        return copy

    def assign(self, addr: ListenAddress, runtime_dir: str) -> Bind:
        """The socket for `addr` (bound now if needed), by the bind it got.

        A port-0 address gets the next of the sockets `prepare` bound for
        it, as `take` does; the main process of workers assigns the
        addresses its workers will serve.
        """
        bind = bind_of(addr, runtime_dir)
        waiting = self._fresh.get(bind)
        if waiting:
            sock = waiting.pop(0)
            if not waiting:
                del self._fresh[bind]
        elif bind in self._sockets:
            return bind
        else:
            sock = self._bind(bind)
        got = real_bind(bind, sock)
        self._sockets[got] = sock
        return got

    def slot(self, bind: Bind, index: int) -> socket.socket:
        """The socket worker slot `index` serves `bind` on (an assigned bind).

        Slot 0 is the socket itself; with `reuse_port`, each further slot
        of a TCP address has its own socket on the same port, bound on
        first use. Otherwise every slot shares the one socket.
        """
        sock = self._sockets[bind]
        if index == 0 or not self.reuse_port or bind[0] != "inet":
            return sock
        extra = self._slots.setdefault(bind, [])
        while len(extra) < index:
            extra.append(_bind(bind, reuse_port=True))
        return extra[index - 1]

    def trim_slots(self, count: int) -> None:
        """Close the slot sockets of slots `count` and beyond (fewer workers)."""
        for extra in self._slots.values():
            while len(extra) > max(0, count - 1):
                extra.pop().close()

    def adopt(self, bind: Bind, sock: socket.socket) -> None:
        """A socket inherited from the main process, for `bind` as configured.

        Port-0 binds are handed out in the order adopted, like sockets
        `prepare` bound.
        """
        if bind[0] == "inet" and bind[2] == 0:
            self._fresh.setdefault(bind, []).append(sock)
        else:
            self._sockets[bind] = sock

    def _bind(self, bind: Bind) -> socket.socket:
        if self.inherited_only:
            raise OSError(f"{show(bind)}: not among the sockets the main process passed on")
        return _bind(bind, reuse_port=self.reuse_port)

    def release(self, in_use: Iterable[Bind]) -> list[Bind]:
        """Close every socket not in `in_use`; the binds closed."""
        keep = set(in_use)
        closed = [b for b in self._sockets if b not in keep]
        for bind in closed:
            for extra in self._slots.pop(bind, []):
                extra.close()
            _close(bind, self._sockets.pop(bind), unlink=not self.inherited_only)
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


def _bind(bind: Bind, *, reuse_port: bool = False) -> socket.socket:
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
    return socket.create_server((host, port), family=family, backlog=BACKLOG, reuse_port=reuse_port)


def _close(bind: Bind, sock: socket.socket, *, unlink: bool = True) -> None:
    sock.close()
    if bind[0] == "unix" and unlink:
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
