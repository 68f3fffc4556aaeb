"""The supervisor's workers: starting, watching, restarting and stopping them.

Strategy. Workers come in generations: one per configuration the
supervisor runs. The first is launched at start; each reload launches a
new one beside the running one and, once every new worker is ready,
retires the old (it stops accepting and lets its sessions finish), so a
reload never refuses a connection (docs/reload.md, docs/workers.md).
Each worker of a generation has a slot, 0..N-1, and serves each address
on its slot's socket (server/sockets.py `slot`).

A worker of the running generation that exits unasked has crashed: it is
logged and started again in its slot at once. If it dies again before it
has served for `STABLE_AFTER` seconds, the next start waits 1 second,
then twice as long each time up to `MAX_BACKOFF`, so one that dies at
start cannot spin. Its slot's sockets
stay open in the supervisor meanwhile: clients wait in their backlog.
After any crash the queues look for entries the dead worker committed
but never reported (queue/target.py `sweep`), and they do every
`SWEEP_INTERVAL` anyway.

What workers report arrives here: readiness, a start that failed,
committed queue entries (handed to the supervisor's queue of the same
configuration, in batches), TLS report counts (to the one store), and
metrics when a scrape asks for them (supervise/metrics.py). Each worker
also has a connection to the supervisor's store of counters
(supervise/statehost.py); it outlives generations, so a reload keeps
every count.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from kittiwake import log
from kittiwake.container import Container
from kittiwake.module import Role
from kittiwake.queue.target import QueueTarget
from kittiwake.server.sockets import Bind, bind_of
from kittiwake.state.host import HostState
from kittiwake.supervise.channel import Channel, Message
from kittiwake.supervise.metrics import Family, Retired
from kittiwake.supervise.spawn import WorkerInit, node_to_json, start
from kittiwake.supervise.statehost import StateHost
from kittiwake.tlsrpt.aggregate import DayCounts
from kittiwake.tlsrpt.store import shared as tls_store

__all__ = ["Fleet", "WorkersFailed"]

#: A generation whose workers are not all ready by then has failed.
READY_TIMEOUT = 60.0
#: A worker that served this long before dying is started again at once.
STABLE_AFTER = 10.0
#: The longest pause before starting again a worker that keeps dying.
MAX_BACKOFF = 30.0
#: How long a reload waits for a retired worker to stop accepting.
CLOSE_TIMEOUT = 5.0
#: How long a scrape waits for a worker's samples.
METRICS_TIMEOUT = 2.0
#: Seconds between two looks for queue entries nobody reported.
SWEEP_INTERVAL = 30.0
#: After their grace period, how long stopping workers get before SIGKILL.
STOP_MARGIN = 5.0


class WorkersFailed(Exception):
    """A generation of workers could not start; `status` 2 is a configuration error."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(eq=False)
class Handle:
    """One worker process, as the supervisor sees it."""

    slot: int
    generation: Generation
    process: asyncio.subprocess.Process
    channel: Channel
    started: float
    ready: asyncio.Future[Message]
    #: Its metrics samples, as last reported (a scrape, or its final ones).
    samples: list[Family] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass(eq=False)
class Generation:
    """The workers of one configuration."""

    number: int
    container: Container
    count: int
    #: (bind as configured, bind as served) of every address the workers serve.
    sockets: list[tuple[Bind, Bind]]
    handles: dict[int, Handle] = field(default_factory=dict)
    backoff: dict[int, float] = field(default_factory=dict)
    #: Per endpoint, the addresses and binds a worker said it serves.
    served: list[tuple[list[str], list[Bind]]] = field(default_factory=list)
    #: Every worker became ready once: a worker that dies is started again.
    launched: bool = False
    #: Retired by a reload, or its launch failed: nothing is started again.
    over: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class Fleet:
    """Every worker of the server, by generation."""

    def __init__(self, override: int | None = None) -> None:
        """`override`: `-j`, which wins over the `workers` directive of every reload."""
        self.override = override
        self.log = log.get("workers")
        self.current: Generation | None = None
        self._generations: list[Generation] = []
        self._numbers = 0
        self._stopping = False
        self.retired = Retired()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pickups: dict[QueueTarget, list[str]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        #: Serves the supervisor's store to the workers; made with the first one.
        self._state_host: StateHost | None = None

    def count(self, container: Container) -> int:
        return self.override or container.globals.workers

    # -- generations ---------------------------------------------------------------------

    async def launch(self, container: Container) -> None:
        """Start the workers of `container` and wait until every one is ready.

        Raises `WorkersFailed` (the first worker's error) when one cannot
        start; the others are stopped again.
        """
        sockets = container.shared.sockets
        runtime_dir = container.globals.runtime_dir
        pairs = [
            (bind_of(addr, runtime_dir), sockets.assign(addr, runtime_dir))
            for endpoint in container.endpoints
            if Role.WORKER in endpoint.roles
            for addr in endpoint.listen_addresses()
        ]
        self._numbers += 1
        gen = Generation(self._numbers, container, self.count(container), pairs)
        self._generations.append(gen)
        try:
            handles = [await self._spawn(gen, slot) for slot in range(gen.count)]
            done = await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(h.ready) for h in handles)), READY_TIMEOUT
            )
        except TimeoutError:
            await self._end(gen)
            raise WorkersFailed(
                1, f"the workers were not ready within {READY_TIMEOUT:.0f}s"
            ) from None
        except WorkersFailed:
            await self._end(gen)
            raise
        except OSError as exc:
            await self._end(gen)
            raise WorkersFailed(1, f"cannot start a worker: {exc}") from None
        gen.served = _served(done[0])
        gen.launched = True
        self.current = gen
        for handle in handles:
            self.log.info(
                "worker ready", slot=handle.slot, pid=handle.process.pid, generation=gen.number
            )
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_now_and_then())

    def binds(self, container: Container) -> list[Bind]:
        """The sockets the workers of `container` serve (to keep open)."""
        gen = self._generation(container)
        return [real for _, real in gen.sockets] if gen else []

    def served(self, container: Container, index: int) -> list[tuple[str, Bind]]:
        """(address, bind) of endpoint number `index` of `container`, as its workers serve it."""
        gen = self._generation(container)
        if gen is None or index >= len(gen.served):
            return []
        addresses, binds = gen.served[index]
        return list(zip(addresses, binds, strict=False))

    async def retire(self, container: Container) -> None:
        """A reload replaced `container`: its workers stop accepting and drain.

        Returns once each has said it stopped accepting (or `CLOSE_TIMEOUT`
        passed): from then on every new connection goes to the new workers.
        """
        gen = self._generation(container)
        if gen is None:
            return
        gen.over = True
        handles = list(gen.handles.values())
        if not handles:
            gen.gone.set()
        await asyncio.gather(*(h.channel.ask("retire", CLOSE_TIMEOUT) for h in handles))
        if self.current is not None:
            container.shared.sockets.trim_slots(self.current.count)

    async def gone(self, container: Container) -> None:
        """Wait until every worker of a retired `container` has exited."""
        gen = self._generation(container)
        if gen is not None:
            await gen.gone.wait()
            with contextlib.suppress(ValueError):
                self._generations.remove(gen)

    def _generation(self, container: Container) -> Generation | None:
        return next((g for g in self._generations if g.container is container), None)

    # -- one worker ------------------------------------------------------------------------

    async def _spawn(self, gen: Generation, slot: int) -> Handle:
        sockets = gen.container.shared.sockets
        inherited = [sockets.slot(real, slot) for _, real in gen.sockets]
        host = gen.container.shared.host_state
        init = WorkerInit(
            slot=slot,
            generation=gen.number,
            workers=gen.count,
            config_file=gen.container.config_file,
            cwd=gen.container.cwd,
            nodes=[node_to_json(n) for n in gen.container.nodes],
            sockets=[
                (configured, s.fileno())
                for (configured, _), s in zip(gen.sockets, inherited, strict=True)
            ],
            debug_flags=_flags(gen.container),
            guess_key=host.guess_key.hex() if host is not None else "",
        )
        started = await start(init, inherited, state=host is not None)
        if started.state is not None and host is not None:
            self._serve_state(host).serve(started.state, started.process.pid)
        ready: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        handle = Handle(slot, gen, started.process, started.channel, time.monotonic(), ready)
        gen.handles[slot] = handle
        loop = asyncio.get_running_loop()
        handle.tasks = [
            loop.create_task(self._listen(handle)),
            loop.create_task(self._watch(handle)),
        ]
        return handle

    def _serve_state(self, host: HostState) -> StateHost:
        if self._state_host is None:
            self._state_host = StateHost(host.store, self.log)
        return self._state_host

    async def _listen(self, handle: Handle) -> None:
        """What one worker says."""
        while True:
            message = await handle.channel.receive()
            if message is None:
                return
            kind = message.get("kind")
            if kind == "ready":
                _settle(handle.ready, message)
            elif kind == "failed":
                error = WorkersFailed(int(message.get("status", 1)), str(message.get("error", "")))
                _settle(handle.ready, error)
            elif kind == "queued":
                self._queued(handle.generation, message)
            elif kind == "tlsrpt":
                self._tls_counts(handle.generation, message)
            elif kind == "final":
                handle.samples = list(message.get("families") or [])

    async def _watch(self, handle: Handle) -> None:
        """Wait for the worker to exit, then decide what follows."""
        status = await handle.process.wait()
        # What it said before exiting comes first (its final metrics, a failure).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(handle.tasks[0]), 1.0)
        handle.channel.close()
        gen = handle.generation
        if gen.handles.get(handle.slot) is handle:
            del gen.handles[handle.slot]
        if handle.samples:
            self.retired.add(handle.samples)
        was_ready = handle.ready.done() and handle.ready.exception() is None
        _settle(handle.ready, WorkersFailed(1, f"a worker {_how(status)} before it was ready"))
        # A worker that fails during its generation's launch fails the launch.
        if gen.over or self._stopping or not (gen.launched or was_ready):
            if not gen.handles:
                gen.gone.set()
            return
        uptime = time.monotonic() - handle.started
        stable = was_ready and uptime >= STABLE_AFTER
        before = None if stable else gen.backoff.get(handle.slot)
        # Once at once; again and again, after a pause that doubles.
        delay = 0.0 if before is None else min(max(1.0, 2 * before), MAX_BACKOFF)
        gen.backoff[handle.slot] = delay
        self.log.error(
            "worker died",
            slot=handle.slot,
            pid=handle.process.pid,
            status=_how(status),
            uptime=f"{uptime:.1f}",
            restart_in=f"{delay:.0f}s",
        )
        self._spawn_task(self._restart(gen, handle.slot, delay))
        self._spawn_task(self._sweep(gen.container))

    async def _restart(self, gen: Generation, slot: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping or gen.over or slot in gen.handles:
            return
        try:
            handle = await self._spawn(gen, slot)
        except OSError as exc:
            self.log.error("cannot start a worker again", slot=slot, err=exc)
            self._spawn_task(self._restart(gen, slot, min(max(1.0, 2 * delay), MAX_BACKOFF)))
            return
        try:
            await asyncio.wait_for(asyncio.shield(handle.ready), READY_TIMEOUT)
            if gen.over or self._stopping:  # retired or stopped while it started
                handle.channel.send("stop")
                return
        except WorkersFailed as exc:
            self.log.error("worker could not start again", slot=slot, reason=exc.text)
            return  # its exit starts the next try (`_watch`)
        except TimeoutError:
            self.log.error(
                "worker not ready in time, killing it", slot=slot, pid=handle.process.pid
            )
            _kill(handle)
            return
        self.log.info("worker restarted", slot=slot, pid=handle.process.pid)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what workers report -------------------------------------------------------------------

    def _queued(self, gen: Generation, message: Message) -> None:
        """A worker committed a queue entry: the supervisor's queue of the same
        location (in the configuration of that worker) delivers it."""
        location = str(message.get("location", ""))
        queue = next(
            (
                m
                for m in gen.container.modules
                if isinstance(m, QueueTarget) and m.location == location
            ),
            None,
        )
        if queue is None:
            self.log.warn("entry for an unknown queue; found at the next start", location=location)
            return
        batch = self._pickups.get(queue)
        if batch is None:
            batch = self._pickups[queue] = []
            asyncio.get_running_loop().call_soon(self._pick_up, queue)
        batch.append(str(message.get("id", "")))

    def _pick_up(self, queue: QueueTarget) -> None:
        ids = self._pickups.pop(queue, [])
        if ids:
            self._spawn_task(self._guarded(queue.pick_up(ids), "cannot pick up queue entries"))

    def _tls_counts(self, gen: Generation, message: Message) -> None:
        try:
            day = dt.date.fromisoformat(str(message.get("day", "")))
            counts = DayCounts.from_json(message.get("counts"))
        except ValueError as exc:
            self.log.error("unreadable TLS report counts from a worker", err=exc)
            return
        tls_store(gen.container).add_counts(day, counts)

    async def _guarded(self, coro: Any, what: str) -> None:
        try:
            await coro
        except Exception as exc:
            self.log.error(what, err=exc)

    # -- queues ----------------------------------------------------------------------------------

    async def _sweep(self, container: Container) -> None:
        for module in container.modules:
            if isinstance(module, QueueTarget):
                await self._guarded(module.sweep(), "cannot look for queue entries")

    async def _sweep_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if self.current is not None:
                await self._sweep(self.current.container)

    # -- the whole server ------------------------------------------------------------

    def reopen(self, signame: str) -> None:
        """Every worker reopens its log files."""
        for handle in self._handles():
            handle.channel.send("reopen", signal=signame)

    async def gather_metrics(self) -> list[list[Family]]:
        """Every worker's samples, and those of workers gone (for one scrape)."""
        handles = [h for h in self._handles() if h.ready.done() and h.ready.exception() is None]
        answers = await asyncio.gather(
            *(h.channel.ask("metrics", METRICS_TIMEOUT) for h in handles)
        )
        for handle, answer in zip(handles, answers, strict=True):
            if answer is not None:
                handle.samples = list(answer.get("families") or [])
        return [h.samples for h in self._handles() if h.samples] + [self.retired.as_families()]

    async def stop(self, grace: float) -> None:
        """Stop every worker gracefully; those still running after `grace` (plus a
        margin) are killed."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        handles = self._handles()
        for handle in handles:
            handle.channel.send("stop")
        await self._wait_exit(handles, grace + STOP_MARGIN)
        for task in list(self._tasks):
            task.cancel()
        if self._state_host is not None:
            await self._state_host.close()

    def kill(self) -> None:
        """A second SIGTERM: every worker ends at once."""
        self._stopping = True
        for handle in self._handles():
            _kill(handle)

    async def _end(self, gen: Generation) -> None:
        """Stop the workers of a generation that failed to start."""
        gen.over = True
        handles = list(gen.handles.values())
        for handle in handles:
            handle.channel.send("stop")
        await self._wait_exit(handles, STOP_MARGIN + 10.0)
        with contextlib.suppress(ValueError):
            self._generations.remove(gen)

    async def _wait_exit(self, handles: list[Handle], within: float) -> None:
        watchers = [h.tasks[1] for h in handles if len(h.tasks) > 1]
        if not watchers:
            return
        _, late = await asyncio.wait(watchers, timeout=within)
        if late:
            for handle in handles:
                if handle.process.returncode is None:
                    self.log.error(
                        "worker did not stop in time, killing it", pid=handle.process.pid
                    )
                    _kill(handle)
            await asyncio.wait(late, timeout=5.0)

    def _handles(self) -> list[Handle]:
        return [h for g in self._generations for h in g.handles.values()]


def _settle(future: asyncio.Future[Message], outcome: Message | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
        future.exception()  # seen: nobody may be waiting any more
    else:
        future.set_result(outcome)


def _kill(handle: Handle) -> None:
    with contextlib.suppress(ProcessLookupError):
        handle.process.send_signal(signal.SIGKILL)


def _how(status: int) -> str:
    """An exit status as words: `exited with status 1`, `killed by SIGKILL`."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def _served(ready: Message) -> list[tuple[list[str], list[Bind]]]:
    out = []
    for addresses, binds in ready.get("served") or []:
        out.append(
            ([str(a) for a in addresses], [(str(b[0]), str(b[1]), int(b[2])) for b in binds])
        )
    return out


def _flags(container: Container) -> dict[str, Any]:
    flags = container.debug_flags
    return {
        "dns_override": flags.dns_override,
        "smtp_port": flags.smtp_port,
        "mtasts_port": flags.mtasts_port,
        "mtasts_ca": flags.mtasts_ca,
    }
