"""A worker process: serve the endpoints on inherited sockets, as the supervisor says.

Strategy. The worker builds the configuration tree its supervisor sent
(supervise/spawn.py), with the process role `WORKER`: its endpoints
serve on the sockets it inherited (it binds none), its queues only
accept and report each commit (queue/target.py), its TLS report counts
go to the supervisor (tlsrpt/forward.py). When every module has started
it says `ready`, with the addresses it serves; a start that fails is
reported (`failed`, with the `FILE:LINE: message` of a configuration
error) for the supervisor to print once, and the worker exits.

Then it obeys its channel:

* `stop`: the graceful stop of `kittiwake run` (sessions get their
  endpoint's grace period, then `421 4.3.2`);
* `retire`: a reload replaced this worker's configuration; stop
  accepting (and say so: the reload is over only when no old worker
  takes a new connection), let sessions finish (`cli/reloader.py` DRAIN_TIMEOUT at
  most), then stop;
* `reopen`: reopen the log files;
* `metrics`: answer with this process's samples (supervise/metrics.py).

The end of the channel means the supervisor is gone: the worker stops as
for `stop`, so no worker outlives its server. So does the end of its
connection to the supervisor's store of counters (state/host.py): without
it every decision would fail, and a worker started again gets a new one.
SIGTERM and SIGINT sent to the worker itself also stop it gracefully (a service manager or a
terminal may signal every process of the server at once); repeating them
changes nothing: on a second signal the supervisor itself ends its
workers at once (SIGKILL). SIGHUP and
SIGUSR1 reopen the logs; SIGUSR2 is the supervisor's (a reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from kittiwake import heap, log, metrics
from kittiwake.container import Container, Shared
from kittiwake.errors import ConfigError
from kittiwake.module import Role
from kittiwake.state.host import HostState, HostStore
from kittiwake.supervise.channel import Channel, Message
from kittiwake.supervise.metrics import families
from kittiwake.supervise.spawn import WORKER_ENV, WorkerInit

__all__ = ["DRAIN_TIMEOUT", "is_worker", "run_worker"]

#: As long as a reload lets the previous configuration's sessions go on.
DRAIN_TIMEOUT = 300.0
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def is_worker() -> bool:
    """Whether this process was started by a supervisor as its worker."""
    return bool(os.environ.get(WORKER_ENV))


def run_worker(loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> int:
    """The whole life of a worker process; its exit status."""
    fd = int(os.environ.pop(WORKER_ENV))
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_main(fd))


async def _main(fd: int) -> int:
    channel = await Channel.open(socket.socket(fileno=fd))
    first = await channel.receive()
    if first is None or first.get("kind") != "init":
        return EXIT_FAILURE
    worker = Worker(channel, WorkerInit.from_message(first))
    loop = asyncio.get_running_loop()
    log.attach_loop(loop)
    try:
        return await worker.run()
    finally:
        log.attach_loop(None)
        await channel.drain()
        channel.close()


class ChannelUplink:
    """`container.Uplink` over the worker's channel."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def queued(self, location: str, entry_id: str) -> None:
        self._channel.send("queued", location=location, id=entry_id)

    def tls_counts(self, day: str, counts: dict[str, Any]) -> None:
        self._channel.send("tlsrpt", day=day, counts=counts)


class Worker:
    """One worker process's configuration and its orders."""

    def __init__(self, channel: Channel, init: WorkerInit) -> None:
        self.channel = channel
        self.init = init
        self.log = log.get("worker")
        self._stop = asyncio.Event()
        self._retire = asyncio.Event()
        self._retire_question: Message | None = None
        #: This worker's connection to the supervisor's store, if it has one.
        self.host: HostStore | None = None

    async def run(self) -> int:
        try:
            container = self._build()
            if self.host is not None:
                await self.host.open()
        except ConfigError as exc:
            return self._failed(EXIT_CONFIG, str(exc))
        except OSError as exc:
            return self._failed(EXIT_FAILURE, _describe(exc))
        try:
            return await self._run(container)
        finally:
            if self.host is not None:
                await self.host.close()

    async def _run(self, container: Container) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        self._install_signals(loop)
        orders = loop.create_task(self._obey())
        try:
            try:
                await container.start()
            except ConfigError as exc:
                return self._failed(EXIT_CONFIG, str(exc))
            except Exception as exc:
                return self._failed(EXIT_FAILURE, _describe(exc))
            served = [
                (e.addresses(), e.serving()) if container.runs_here(e) else ([], [])
                for e in container.endpoints
            ]
            heap.settle()  # kittiwake/heap.py
            self.channel.send("ready", served=served, pid=os.getpid())
            await self._serve(container)
            self._send_metrics("final")
            return EXIT_OK
        finally:
            orders.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await orders
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(sig)

    def _build(self) -> Container:
        init = self.init
        shared = Shared(init.flags(), Role.WORKER)
        shared.uplink = ChannelUplink(self.channel)
        if init.state_fd >= 0:
            # Every counter no `state &NAME` names is the supervisor's
            # (docs/workers.md): the modules configured below count there.
            self.host = HostStore(
                socket.socket(fileno=init.state_fd), log.get("state.host"), on_lost=self._lost
            )
            shared.host_state = HostState(self.host, bytes.fromhex(init.guess_key))
        container = Container(
            init.tree(),
            config_file=init.config_file,
            cwd=init.cwd,
            debug_flags=init.flags(),
            shared=shared,
        )
        # What configuring says (a warning about a setting) the supervisor
        # said once already, configuring the same tree: not once per worker.
        log.configure(["off"])
        container.build()
        g = container.globals
        log.configure(g.log, fmt=g.log_format, debug=g.debug)
        for bind, fd in init.sockets:
            family = socket.AF_UNIX if bind[0] == "unix" else socket.AF_INET
            if bind[0] == "inet" and ":" in bind[1]:
                family = socket.AF_INET6
            shared.sockets.adopt(bind, socket.socket(family, socket.SOCK_STREAM, fileno=fd))
        return container

    def _lost(self) -> None:
        if not self._stop.is_set():
            self.log.warn("the connection to the supervisor's store ended, stopping")
            self._stop.set()

    def _failed(self, status: int, error: str) -> int:
        self.channel.send("failed", status=status, error=error)
        return status

    async def _serve(self, container: Container) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        retire = asyncio.ensure_future(self._retire.wait())
        await asyncio.wait([stop, retire], return_when=asyncio.FIRST_COMPLETED)
        if self._retire.is_set() and not self._stop.is_set():
            for endpoint in container.endpoints:
                if container.runs_here(endpoint):
                    await endpoint.close()
            if self._retire_question is not None:
                self.channel.answer(self._retire_question, "closed")
            drained = asyncio.ensure_future(_drain(container))
            await asyncio.wait(
                [drained, stop], timeout=DRAIN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            drained.cancel()
        stop.cancel()
        retire.cancel()
        await container.stop()

    # -- orders -----------------------------------------------------------------------

    async def _obey(self) -> None:
        while True:
            message = await self.channel.receive()
            if message is None:
                if not self._stop.is_set():
                    self.log.warn("the supervisor is gone, stopping")
                    self._stop.set()
                return
            self._order(message)

    def _order(self, message: Message) -> None:
        kind = message.get("kind")
        if kind == "stop":
            self._stop.set()
        elif kind == "retire":
            self._retire_question = message
            self._retire.set()
        elif kind == "reopen":
            self._reopen(str(message.get("signal", "")))
        elif kind == "metrics":
            self._send_metrics("metrics", message)

    def _send_metrics(self, kind: str, question: Message | None = None) -> None:
        live = metrics.current()
        if not isinstance(live, metrics.LiveMetrics):
            return
        samples = families(live.registry)
        if question is None:
            self.channel.send(kind, families=samples)
        else:
            self.channel.answer(question, kind, families=samples)

    def _reopen(self, signame: str) -> None:
        try:
            log.reopen()
        except OSError as exc:
            self.log.error("cannot reopen log files", err=exc, signal=signame)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """In our log format, as `kittiwake run` does (asyncio would use `logging`)."""
        exc = context.get("exception")
        self.log.error(
            "unhandled error in a background task",
            err=exc if isinstance(exc, BaseException) else None,
            detail=str(context.get("message", "")),
        )

    # -- signals sent to the worker itself ----------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            loop.add_signal_handler(sig, self._reopen, sig.name)
        # SIGUSR2 stays ignored (cli/run.py set it so): reloads are the supervisor's.


async def _drain(container: Container) -> None:
    await asyncio.gather(
        *(e.drain(DRAIN_TIMEOUT) for e in container.endpoints if container.runs_here(e))
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__
