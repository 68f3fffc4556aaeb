"""Delivery agents: helper processes that write a message's Maildir files.

Why processes (docs/storage-maildir.md, "Delivery agents"): a durable
delivery is mostly waiting for fsyncs, and waiting on threads inside the
server process costs the event loop dearly. Every fsync that returns wakes
a thread that must take Python's lock from the event loop, and `perf`
showed about 40 % of a busy Maildir server's CPU in those hand-overs
(futex waits and wake-ups), not in the file work. A single-threaded agent
process per delivery in flight does the same system calls with no lock to
share: on the development machine the Maildir rate at 50 sessions went
from about 1,450 to about 2,000 messages a second (docs/bench.md).
Postfix's and Dovecot's local delivery agents are processes for the same
reason.

What an agent does is exactly `maildir_files.write_and_publish`, the
one-step delivery of a message whose only target is this storage: write
every copy into `tmp/`, fsync, link into `new/`, fsync `new/`. The other
steps (LMTP's per-recipient delivery, the two-step body and commit beside
other targets, aborts, mailbox lookups) stay on the storage's threads.

The event-loop side is `AgentPool`; the agent side is `serve`, run as
`python -m kittiwake.storage.maildir_agents FD`. They talk over a
socketpair, one request at a time per agent:

    server -> agent   b"R" + length (4 bytes, big-endian) + pickled `Request`
    server -> agent   b"C"   cancel the request in progress, if any
    agent -> server   length + pickled `Reply`

An agent looks for a `C` (or for the server having gone away) where the
threads look at their cancel flag: between body chunks and after the last
fsync, before anything is linked into `new/`. It ignores the signals an
operator sends the service (the server drains its sessions, then closes
the socket) and exits when the socket closes, so a server killed with
SIGKILL leaves no agents behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import io
import os
import pickle
import signal
import site
import socket
import struct
import subprocess
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from kittiwake import metrics
from kittiwake.errors import SMTPError
from kittiwake.storage.maildir_files import Mailbox, _Cancelled, _File, _Job, write_and_publish

if TYPE_CHECKING:
    from kittiwake.log import Logger

__all__ = ["AgentPool", "Reply", "Request", "serve"]

_LENGTH = struct.Struct("!I")
_REQUEST = b"R"
_CANCEL = b"C"
#: recv flags for a look at the socket that neither waits nor consumes
#: (a plain int: the enum's `|` costs more than the system call).
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
#: How long `stop` waits for the requests in flight, then for the agents to exit.
STOP_WAIT = 10.0
EXIT_WAIT = 2.0
#: An agent idle this long (seconds) is closed: Postfix's `max_idle`.
IDLE_EXIT = 100.0


class Request(NamedTuple):
    """One message's copies, as `write_and_publish` needs them.

    Plain values, not the `_File` objects: pickling and unpickling those
    cost more than the rest of the agent's Python work per message.
    """

    copies: list[tuple[str, str, bool, bytes]]  # (Maildir, recipient, create, prefix) each
    header: bytes
    body: bytes | None  # the body in memory, or
    body_path: str | None  # the file holding it (a spilled buffer)
    host: str
    sync: bool
    junk: bool

    @classmethod
    def of(cls, job: _Job, body: bytes | None, body_path: str | None) -> Request:
        copies = [(f.mailbox.path, f.mailbox.recipient, f.create, f.prefix) for f in job.files]
        return cls(copies, job.header, body, body_path, job.host, job.sync, job.junk)


class Reply(NamedTuple):
    """What became of a `Request`: each copy as the agent left it, or why not."""

    copies: list[tuple[str, str, str, int, int]]  # (folder, base, new_path, size, vsize) each
    new_mailboxes: list[str]
    failed: dict[int, OSError]  # by index in `copies`, as `_commit` says
    error: BaseException | None = None
    cancelled: bool = False

    def update(self, files: list[_File]) -> None:
        """Give the server's `_File`s what the agent's copies became."""
        for f, (folder, base, new_path, size, vsize) in zip(files, self.copies, strict=True):
            f.folder, f.base, f.new_path, f.size, f.vsize = folder, base, new_path, size, vsize


# --- the agent process ------------------------------------------------------


@dataclass
class _Body:
    """The body as `_Job` reads it: `open()` gives a reader from the start."""

    data: bytes | None
    path: str | None

    def open(self) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb")
        return io.BytesIO(self.data or b"")


@dataclass
class _PeekCancel:
    """The job's cancel flag: a `C` waiting on the socket, or the server gone."""

    sock: socket.socket

    def is_set(self) -> bool:
        try:
            data = self.sock.recv(1, _PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return data != _REQUEST  # b"C", or b"" when the server has gone away


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    """`n` bytes, or None if the socket closes first.

    `MSG_WAITALL` usually returns them at once, but may return fewer (a
    stopped and continued process), so the rest is read again.
    """
    data = sock.recv(n, socket.MSG_WAITALL)
    while 0 < len(data) < n:
        more = sock.recv(n - len(data), socket.MSG_WAITALL)
        if not more:
            return None
        data += more
    return data if len(data) == n else None


def _next_request(sock: socket.socket) -> Request | None:
    """The next request; None once the server has closed the socket."""
    while True:
        kind = _read_exactly(sock, 1)
        if kind is None:
            return None
        if kind == _CANCEL:  # meant for a request already answered
            continue
        head = _read_exactly(sock, _LENGTH.size)
        if head is None:
            return None
        payload = _read_exactly(sock, _LENGTH.unpack(head)[0])
        if payload is None:
            return None
        request: Request = pickle.loads(payload)
        return request


def _handle(request: Request, sock: socket.socket) -> Reply:
    files = [
        _File(Mailbox(path, recipient), [], create=create, prefix=prefix)
        for path, recipient, create, prefix in request.copies
    ]
    job = _Job(
        files=files,
        header=request.header,
        body=_Body(request.body, request.body_path),
        host=request.host,
        sync=request.sync,
        junk=request.junk,
        atomic=True,
        cancel=_PeekCancel(sock),
    )
    created = job.new_mailboxes
    try:
        failed = write_and_publish(job, request.host, request.sync)
    except _Cancelled:
        return Reply([], created, {}, cancelled=True)
    except (SMTPError, OSError) as exc:
        return Reply([], created, {}, error=exc)
    except Exception as exc:  # a bug: reported as such, the agent lives on
        return Reply([], created, {}, error=RuntimeError(repr(exc)))
    copies = [(f.folder, f.base, f.new_path, f.size, f.vsize) for f in files]
    return Reply(copies, created, failed)


def serve(sock: socket.socket) -> None:
    """Answer requests until the server closes the socket."""
    # Whatever the server inherited without close-on-exec (a wrapper's
    # pipe) is not the agent's to keep open.
    os.closerange(3, sock.fileno())
    os.closerange(sock.fileno() + 1, max(os.sysconf("SC_OPEN_MAX"), sock.fileno() + 1))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    _batch_scheduling()
    while (request := _next_request(sock)) is not None:
        payload = pickle.dumps(_handle(request, sock), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            sock.sendall(_LENGTH.pack(len(payload)) + payload)
        except OSError:  # the server has gone away
            return


def _batch_scheduling() -> None:
    """Run as a batch task: an agent woken up never preempts its server.

    Each request wakes an agent, and each fsync's completion wakes it
    again. With the default policy Linux lets the woken agent preempt the
    server on the same core, so the event loop stalls in the middle of
    a turn and the two switch back and forth. `SCHED_BATCH` keeps the
    agent's fair share of the CPU but waits for the core to be free:
    about a tenth more messages a second at one message per session on
    the development machine (docs/storage-maildir.md). Where the policy
    does not exist the agent runs as it is.
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy, os.sched_param(0))


# --- the server side ----------------------------------------------------------


class AgentLost(Exception):
    """The agent died or closed its socket while it held a request."""


@dataclass(eq=False)
class _Agent:
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0  # loop time it was last given back

    def send(self, request: Request) -> None:
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.write(_REQUEST + _LENGTH.pack(len(payload)) + payload)

    def cancel(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(_CANCEL)

    async def receive(self) -> Reply:
        try:
            head = await self.reader.readexactly(_LENGTH.size)
            reply: Reply = pickle.loads(await self.reader.readexactly(_LENGTH.unpack(head)[0]))
        except asyncio.IncompleteReadError:
            raise AgentLost("it exited or closed its socket") from None
        except OSError as exc:
            raise AgentLost(str(exc)) from exc
        return reply

    def close(self) -> None:
        """Close the socket: an agent waiting for work exits at once."""
        with contextlib.suppress(Exception):
            self.writer.close()

    def kill(self) -> None:
        """Close, and end the process however it is doing."""
        self.close()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


class AgentPool:
    """Up to `size` agents, started when deliveries need them and reused.

    Each delivery in flight takes one, so the busiest minute decides how
    many run; one left idle for `IDLE_EXIT` seconds is closed, as Postfix's
    delivery agents exit after `max_idle`, so a quiet server keeps none.
    An agent that dies is replaced by the next delivery that needs one; the
    delivery it held fails with a temporary error (`451 4.3.0`), so the
    client sends it again. An agent the pool gives up on for any other
    reason is killed, never left behind.
    """

    def __init__(self, size: int, log: Logger, name: str = "") -> None:
        self.size = size
        self._log = log
        self.name = name  # the storage block's: in `ps` and the metrics
        self._agents: set[_Agent] = set()  # started and not lost
        self._free: list[_Agent] = []  # the longest idle first
        self._waiting: collections.deque[asyncio.Future[_Agent]] = collections.deque()
        self._starting = 0
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()  # settling and replacing agents
        self._sweeper: asyncio.TimerHandle | None = None

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def running(self) -> int:
        """Agents started and alive."""
        return len(self._agents)

    def pids(self) -> list[int]:
        return [agent.process.pid for agent in self._agents]

    async def call(self, request: Request) -> Reply:
        """Run `request` in an agent; its `Reply`.

        Raises `SMTPError` (`451 4.3.0`) if the agent dies meanwhile. If the
        caller is cancelled, the agent is told to stop before it publishes
        anything and removes its own files; the pool waits for its answer in
        the background before giving it work again (`wait_idle`).
        """
        agent = await self._take()
        try:
            agent.send(request)
            reply = await agent.receive()
        except asyncio.CancelledError:
            agent.cancel()
            self._background(self._settle(agent))
            raise
        except AgentLost as exc:
            self._lose(agent, f"{exc}")
            raise SMTPError(
                451, (4, 3, 0), "Local delivery error", reason=f"maildir delivery agent lost: {exc}"
            ) from None
        except BaseException:
            self._lose(agent, "interrupted")
            raise
        self._give(agent)
        return reply

    async def wait_idle(self) -> None:
        """Until no agent holds a request, a cancelled one's included."""
        await self._idle.wait()

    async def _settle(self, agent: _Agent) -> None:
        """Wait out a cancelled request's reply, then free the agent."""
        try:
            await agent.receive()
        except AgentLost as exc:
            self._lose(agent, f"{exc}")
        except BaseException:
            self._lose(agent, "interrupted")
            raise
        else:
            self._give(agent)

    async def _take(self) -> _Agent:
        if self._closed:
            raise SMTPError(451, (4, 3, 0), "Local delivery error", reason="storage is stopping")
        if self._free:
            agent = self._free.pop()  # the most recently used: the others may retire
        elif len(self._agents) + self._starting < self.size:
            self._starting += 1
            try:
                agent = await self._start()
            finally:
                self._starting -= 1
            self._agents.add(agent)
        else:
            waiter: asyncio.Future[_Agent] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                agent = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed over as we were cancelled
                    self._give(waiter.result())
                raise
            self._busy -= 1  # counted by the `_give` that handed it over
        self._busy += 1
        self._idle.clear()
        return agent

    def _give(self, agent: _Agent) -> None:
        """An agent is free again: to the first waiter, else to the free list."""
        if self._closed:
            self._release_slot()
            self._lose(agent, "")
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(agent)  # stays busy: `_take` evens the count
                return
        loop = asyncio.get_running_loop()
        agent.idle_since = loop.time()
        self._free.append(agent)
        self._release_slot()
        if self._sweeper is None:
            self._sweeper = loop.call_later(IDLE_EXIT / 2, self._retire_idle)

    def _retire_idle(self) -> None:
        """Close the agents idle for `IDLE_EXIT`; check again while any is free."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - IDLE_EXIT
        while self._free and self._free[0].idle_since <= oldest:
            agent = self._free.pop(0)
            self._agents.discard(agent)
            agent.close()  # it exits on the closed socket
        if self._free:
            self._sweeper = loop.call_later(IDLE_EXIT / 2, self._retire_idle)

    def _release_slot(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    def _lose(self, agent: _Agent, why: str) -> None:
        """Forget an agent that died or cannot be trusted; start another for a waiter."""
        agent.kill()
        if agent not in self._agents:
            return
        self._agents.discard(agent)
        if why:
            self._log.error("maildir delivery agent lost", reason=why, pid=agent.process.pid)
            metrics.current().maildir_agent_lost(self.name)
        if not self._closed:
            self._release_slot()
            if any(not w.done() for w in self._waiting):
                self._background(self._replace())

    async def _replace(self) -> None:
        try:
            agent = await self._start()
        except Exception as exc:
            self._log.error("starting a maildir delivery agent failed", err=exc)
            return
        if self._closed:  # stopped meanwhile: the agent exits once its socket closes
            agent.close()
            return
        self._agents.add(agent)
        self._busy += 1
        self._give(agent)

    async def _start(self) -> _Agent:
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                str(theirs.fileno()),
                self.name,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=_agent_environment(),
            )
        except OSError as exc:
            ours.close()
            raise SMTPError(
                451, (4, 3, 0), "Local delivery error", reason=f"starting a delivery agent: {exc}"
            ) from None
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        return _Agent(process, reader, writer)

    async def stop(self) -> None:
        """Let the requests in flight finish, then close every agent and reap it.

        Requests still running after `STOP_WAIT` (a stalled disk) are
        given up: their agents are killed, and their clients, told nothing,
        send the messages again.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_WAIT)
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        agents = list(self._agents)  # busy ones too: `_lose` forgets them below
        self._agents.clear()
        self._free.clear()
        for waiter in self._waiting:
            waiter.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for agent in agents:
            agent.close()
        # An agent exits as soon as it sees its socket closed; one that has
        # not within EXIT_WAIT (stopped, or stuck in the kernel) is killed.
        exits = {asyncio.ensure_future(agent.process.wait()): agent for agent in agents}
        if exits:
            _, late = await asyncio.wait(exits, timeout=EXIT_WAIT)
            for waiting in late:
                exits[waiting].kill()
            await asyncio.gather(*exits)


def _agent_environment() -> dict[str, str]:
    """The server's environment, with this kittiwake on the agent's import path.

    An agent must run the same code as its server. Installed in a
    site-packages folder, the agent finds it there as the server did; from
    anywhere else (a checkout, a `pip install --target` folder, a test's
    `sys.path`) that folder goes first on `PYTHONPATH`. A site-packages
    folder is never put there: on `PYTHONPATH` it would come before the
    standard library.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    if root in _site_folders():
        return env
    rest = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = root + (os.pathsep + rest if rest else "")
    return env


def _site_folders() -> set[str]:
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    return {os.path.abspath(folder) for folder in folders}


if __name__ == "__main__":
    # `python -m kittiwake.storage.maildir_agents FD [BLOCK]`: BLOCK, the
    # storage block's name, is only there for `ps`. Run as `-m`, this file is
    # `__main__`; the classes pickled back to the server must be the ones it
    # knows, so serve from the module by name.
    importlib.import_module(__spec__.name).serve(socket.socket(fileno=int(sys.argv[1])))
