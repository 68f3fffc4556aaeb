"""Reloading the configuration of a running server (docs/reload.md).

Strategy: a reload builds a complete second configuration beside the
running one and switches only once it has started, so whatever goes wrong
leaves the running one untouched:

1. read, parse and build the file again (a new `Container`), create its
   directories and check its log files: a `ConfigError` refuses the reload;
2. bind the addresses it adds (server/sockets.py); an address that cannot
   be bound refuses it too;
3. start it: modules that must not run twice take over from the running
   configuration first (the queue, queue/target.py `take_over`); if a
   start fails, they give it back and the reload is refused;
4. switch: the control socket answers with the new configuration's
   commands, the old endpoints stop accepting (kept sockets stay open: the
   new endpoints already serve them), sockets no configuration names are
   closed, and one `reloaded` line says what was added, removed and kept;
5. retire the old configuration: its sessions finish on the modules they
   started with; once the last has ended, or `DRAIN_TIMEOUT` has passed
   (then they are stopped as at shutdown), its modules stop.

Reloads run one at a time.

With worker processes (docs/workers.md) the supervisor's configuration
has no mail endpoints of its own to start: step 3 also launches a new
generation of workers for the new configuration (supervise/fleet.py)
and refuses the reload, giving back what was taken over, when one of
them cannot start; step 4 retires the old generation, whose workers
drain as the old endpoints would; step 5 stops the old modules once
those workers have exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kittiwake import heap, log, systemd
from kittiwake.cli.common import EMBEDDED_NAME, load_config
from kittiwake.container import Container
from kittiwake.control import ControlServer
from kittiwake.errors import ConfigError
from kittiwake.server.sockets import Bind, diff, show
from kittiwake.supervise.fleet import Fleet, WorkersFailed

__all__ = ["DRAIN_TIMEOUT", "Outcome", "Reloader"]

#: How long sessions of a retired configuration may go on before they are
#: stopped as at shutdown (421 when idle, their endpoint's grace otherwise).
DRAIN_TIMEOUT = 300.0
#: With workers: how much longer than that the retired ones may take to exit.
WORKERS_EXIT_MARGIN = 60.0


@dataclass
class Outcome:
    """What a reload did; `status` is `reloaded`, `config_error` or `failed`."""

    status: str
    error: str = ""
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reloader:
    """The running configuration, the retired ones still draining, and reloads."""

    def __init__(
        self,
        container: Container,
        control: ControlServer,
        announce: Callable[[list[str]], None],
        fleet: Fleet | None = None,
    ) -> None:
        self.current = container
        self._fleet = fleet
        self._control = control
        self._announce = announce
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._commands: set[asyncio.Task[Outcome]] = set()
        self._stopping = asyncio.Event()
        self.log = log.get("reload")
        self._install(container)

    def _install(self, container: Container) -> None:
        container.control.add("reload", "", self._command)
        self._control.commands = container.control

    async def _command(self, args: dict[str, Any]) -> dict[str, Any]:
        # Shielded: the control server cancels its clients when the server
        # stops, and a reload cut in the middle would leave a configuration
        # started and never switched to. `stop` waits for it instead.
        task = asyncio.get_running_loop().create_task(self.reload("control"))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        return (await asyncio.shield(task)).as_dict()

    async def reload(self, trigger: str) -> Outcome:
        """Reread the configuration file; `trigger` (a signal's name) is logged."""
        async with self._lock:
            if self._stopping.is_set():
                return Outcome("failed", "the server is stopping")
            # systemd (Type=notify) waits for READY=1 after RELOADING=1,
            # whether the new configuration was taken or refused.
            systemd.notify_reloading()
            outcome = await self._reload(trigger)
            if outcome.status == "reloaded":
                systemd.notify_ready("configuration reloaded")
            else:
                systemd.notify_ready(f"reload refused, running as before: {outcome.error}")
            return outcome

    async def _reload(self, trigger: str) -> Outcome:
        old = self.current
        try:
            new = _build(old)
        except ConfigError as exc:
            self.log.error("reload refused: configuration error", error=str(exc), trigger=trigger)
            return Outcome("config_error", str(exc))
        moved = _moved_runtime_dir(old, new)
        if moved:
            self.log.error("reload refused: configuration error", error=moved, trigger=trigger)
            return Outcome("config_error", moved)
        if self._fleet is None and new.globals.workers > 1:
            self.log.warn(
                "workers: a reload does not start worker processes; that takes a restart",
                workers=new.globals.workers,
            )
        before = self._in_use(old)
        sockets = old.shared.sockets
        try:
            sockets.prepare(b for endpoint in new.endpoints for b in endpoint.binds())
            await new.start(previous=old)
        except ConfigError as exc:
            sockets.release(before)
            self.log.error("reload refused: configuration error", error=str(exc), trigger=trigger)
            return Outcome("config_error", str(exc))
        except Exception as exc:
            sockets.release(before)
            self.log.error("reload refused: cannot start", err=exc, trigger=trigger)
            return Outcome("failed", f"cannot start: {_describe(exc)}")
        refused = await self._launch(new, trigger)
        if refused is not None:
            sockets.release(before)
            return refused
        self._install(new)
        self.current = new
        _apply_logging(old, new, self.log)
        for endpoint in old.endpoints:
            await endpoint.close()
        if self._fleet is not None:
            await self._fleet.retire(old)
        after = self._in_use(new)
        sockets.release(after)
        change = diff(before, after)
        added = set(change.added)
        self._announce([address for address, bind in self.served(new) if bind in added])
        outcome = Outcome(
            "reloaded",
            added=[show(b) for b in change.added],
            removed=[show(b) for b in change.removed],
            kept=[show(b) for b in change.kept],
        )
        self.log.info(
            "reloaded",
            trigger=trigger,
            config=new.config_file,
            added=" ".join(outcome.added),
            removed=" ".join(outcome.removed),
            kept=" ".join(outcome.kept),
        )
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        # Once the old configuration is stopped and let go of, what it
        # left is collected and the new one kept out of the way (kittiwake/heap.py).
        task.add_done_callback(lambda _: heap.settle())
        return outcome

    async def _launch(self, new: Container, trigger: str) -> Outcome | None:
        """Start the new configuration's workers; the refusal if they cannot start."""
        if self._fleet is None:
            return None
        try:
            await self._fleet.launch(new)
        except WorkersFailed as exc:
            await new.abandon()
            if exc.status == 2:
                self.log.error(
                    "reload refused: configuration error", error=exc.text, trigger=trigger
                )
                return Outcome("config_error", exc.text)
            self.log.error("reload refused: cannot start", reason=exc.text, trigger=trigger)
            return Outcome("failed", f"cannot start: {exc.text}")
        return None

    def _in_use(self, container: Container) -> list[Bind]:
        """The sockets `container` serves, itself or through its workers."""
        workers = self._fleet.binds(container) if self._fleet is not None else []
        return _serving(container) + workers

    def served(self, container: Container) -> list[tuple[str, Bind]]:
        """(address, bind) of every endpoint in order, wherever it is served."""
        out: list[tuple[str, Bind]] = []
        for index, endpoint in enumerate(container.endpoints):
            if container.runs_here(endpoint):
                out += zip(endpoint.addresses(), endpoint.serving(), strict=True)
            elif self._fleet is not None:
                out += self._fleet.served(container, index)
        return out

    async def _drained(self, old: Container) -> None:
        await _drain(old)
        if self._fleet is not None:
            await self._fleet.gone(old)

    async def _retire(self, old: Container) -> None:
        """Let the old configuration's sessions end, then stop its modules."""
        drained = asyncio.ensure_future(self._drained(old))
        stopping = asyncio.ensure_future(self._stopping.wait())
        timeout = DRAIN_TIMEOUT + (WORKERS_EXIT_MARGIN if self._fleet is not None else 0.0)
        done, _ = await asyncio.wait(
            [drained, stopping], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (drained, stopping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if drained not in done:
            self.log.warn("previous configuration: sessions still open, stopping them")
        await old.stop(final=False)
        self.log.info("previous configuration stopped", config=old.config_file)

    async def stop(self) -> None:
        """The server stops: every configuration at once, then what they share.

        Retired configurations and the running one stop together, so the
        shutdown takes one grace period, not one per configuration still
        draining. An entry a retired queue's session commits after its
        successor stopped stays on disk for the next start.
        """
        self._stopping.set()
        async with self._lock:  # a reload in progress completes first
            pass
        await asyncio.gather(*self._retiring, self.current.stop(final=False))
        await self.current.close_shared()


def _moved_runtime_dir(old: Container, new: Container) -> str:
    """Why `new` cannot be switched to in place, or "".

    The control socket stays where the server first opened it, so a new
    `runtime_dir` would leave `kittiwake reload` and `kittiwake queue`
    (which look for it there) unable to find the running server.
    """
    before = os.path.abspath(old.globals.runtime_dir)
    after = os.path.abspath(new.globals.runtime_dir)
    if before == after:
        return ""
    return (
        f"runtime_dir changed from {before} to {after}: moving it takes a restart (docs/reload.md)"
    )


def _build(old: Container) -> Container:
    """The configuration file read and built again, as `kittiwake run` does."""
    path = None if old.config_file == EMBEDDED_NAME else old.config_file
    nodes = load_config(path)
    new = Container(
        nodes,
        config_file=old.config_file,
        cwd=old.cwd,
        debug_flags=old.debug_flags,
        shared=old.shared,
    )
    new.build()
    new.prepare_dirs()
    try:
        log.check_targets(new.globals.log)
    except OSError as exc:
        where = next((n for n in nodes if n.name == "log"), None)
        message = f"log: cannot open {exc.filename}: {exc.strerror}"
        raise (where.error(message) if where else ConfigError(message, new.config_file)) from None
    return new


def _apply_logging(old: Container, new: Container, logger: log.Logger) -> None:
    """Point the log at the new configuration's targets, if they changed."""
    before, after = old.globals, new.globals
    if (before.log, before.log_format, before.debug) == (after.log, after.log_format, after.debug):
        return
    try:
        log.configure(after.log, fmt=after.log_format, debug=after.debug)
    except OSError as exc:  # checked a moment ago; the file system changed since
        logger.error("cannot open the new log targets, keeping the old ones", err=exc)


def _serving(container: Container) -> list[Bind]:
    return [b for endpoint in container.endpoints for b in endpoint.serving()]


async def _drain(container: Container) -> None:
    await asyncio.gather(*(e.drain(DRAIN_TIMEOUT) for e in container.endpoints))


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
