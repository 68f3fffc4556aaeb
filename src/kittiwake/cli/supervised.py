"""`kittiwake run` with worker processes: the supervisor's life (docs/workers.md).

Strategy: the same steps as a single process (cli/run.py), the mail
endpoints served by workers instead:

1. the configuration was read, checked and built before the event loop
   started, with the process role `SUPERVISOR`; a problem is exit 2;
2. every listening socket is bound here, before anything starts (an
   address in use is exit 1, `cannot start`);
3. the supervisor's own modules start: the queues (each takes its
   directory's lock and reads its entries), the metrics page, the rest
   configured as usual but idle; then the control socket;
4. the first generation of workers starts (supervise/fleet.py); when
   every one is ready, and only then, the readiness lines are printed
   and systemd is told READY=1, once;
5. signals: SIGTERM/SIGINT stop the workers gracefully (they answer
   `421 4.3.2` as a single process does), then the supervisor's modules;
   a second one kills the workers and exits 1. SIGUSR2 and `kittiwake
   reload` reload (cli/reloader.py, with a new generation of workers).
   SIGHUP/SIGUSR1 reopen the log files here and in every worker.

A worker that cannot start at step 4 stops the server: its error is
printed once, `FILE:LINE: message` and exit 2 for a configuration error,
`kittiwake: cannot start: ...` and exit 1 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from kittiwake import __version__, log, metrics, systemd
from kittiwake.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, config_error
from kittiwake.cli.reloader import Outcome, Reloader
from kittiwake.cli.run import (
    RELOAD_SIGNAL,
    REOPEN_SIGNALS,
    announce,
    log_debug_flags,
    loop_error_handler,
    report_start_failure,
)
from kittiwake.container import Container
from kittiwake.control import SOCKET_NAME, ControlServer
from kittiwake.errors import ConfigError
from kittiwake.supervise.fleet import Fleet, WorkersFailed

__all__ = ["serve_supervised"]


async def serve_supervised(container: Container, fleet: Fleet) -> int:
    loop = asyncio.get_running_loop()
    log.attach_loop(loop)
    try:
        return await Supervised(container, fleet, loop).run()
    finally:
        log.attach_loop(None)


class Supervised:
    """The supervisor's signals and its steps from start to stop."""

    def __init__(self, container: Container, fleet: Fleet, loop: asyncio.AbstractEventLoop) -> None:
        self.container = container
        self.fleet = fleet
        self.loop = loop
        self.log = log.get("")
        self.stopping = asyncio.Event()
        self.reloader: Reloader | None = None
        self._reloads: set[asyncio.Task[Outcome]] = set()

    async def run(self) -> int:
        loop = self.loop
        loop.set_exception_handler(loop_error_handler(self.log))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        for sig in REOPEN_SIGNALS:
            loop.add_signal_handler(sig, self._on_reopen, sig)
        loop.add_signal_handler(RELOAD_SIGNAL, self._on_reload, RELOAD_SIGNAL)
        try:
            log_debug_flags(self.container, self.log)
            return await self._serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, *REOPEN_SIGNALS, RELOAD_SIGNAL):
                loop.remove_signal_handler(sig)

    async def _serve(self) -> int:
        container = self.container
        live = metrics.current()
        if isinstance(live, metrics.LiveMetrics):
            live.gather = self.fleet.gather_metrics
        try:
            container.shared.sockets.prepare(b for e in container.endpoints for b in e.binds())
            await container.start()
        except ConfigError as exc:
            container.shared.sockets.close_all()
            return config_error(exc)
        except OSError as exc:
            await container.stop()
            report_start_failure(container, exc)
            return EXIT_FAILURE
        control = ControlServer(container.control, container.runtime_path(SOCKET_NAME))
        self.reloader = Reloader(container, control, announce, fleet=self.fleet)
        await control.start()
        try:
            await self.fleet.launch(container)
        except WorkersFailed as exc:
            await control.stop()
            await self.reloader.stop()
            return _report_workers_failed(container, exc)
        if not self.stopping.is_set():
            addresses = [address for address, _ in self.reloader.served(container)]
            log.flush()  # the `worker ready` lines before the readiness lines
            announce(addresses)
            systemd.notify_ready(f"listening on {', '.join(addresses)}")
            self.log.info(
                "started",
                version=__version__,
                config=container.config_file,
                workers=self.fleet.count(container),
            )
            await self.stopping.wait()
        await self.fleet.stop(_grace(self.reloader.current))
        await control.stop()
        await self.reloader.stop()
        self.log.info("stopped")
        return EXIT_OK

    # -- signals -----------------------------------------------------------------------

    def _on_stop(self, sig: signal.Signals) -> None:
        if self.stopping.is_set():
            self.log.warn("second signal during shutdown, exiting at once", signal=sig.name)
            self.fleet.kill()
            log.flush()
            sys.stdout.flush()
            os._exit(EXIT_FAILURE)
        self.log.info("shutting down", signal=sig.name)
        systemd.notify_stopping()
        self.stopping.set()

    def _on_reopen(self, sig: signal.Signals) -> None:
        self.fleet.reopen(sig.name)
        try:
            log.reopen()
        except OSError as exc:
            self.log.error("cannot reopen log files", err=exc, signal=sig.name)
            return
        self.log.info("log files reopened", signal=sig.name)

    def _on_reload(self, sig: signal.Signals) -> None:
        if self.reloader is None or self.stopping.is_set():
            self.log.warn("reload ignored: the server is starting or stopping", signal=sig.name)
            return
        task = self.loop.create_task(self.reloader.reload(sig.name))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)


def _grace(container: Container) -> float:
    """The longest grace period of the endpoints the workers serve."""
    return max((e.grace for e in container.endpoints), default=10.0)


def _report_workers_failed(container: Container, exc: WorkersFailed) -> int:
    """A worker could not start: its error, once, as a single process says it."""
    if exc.status == EXIT_CONFIG:
        print(exc.text, file=sys.stderr, flush=True)
        return EXIT_CONFIG
    print(f"kittiwake: cannot start: {exc.text}", file=sys.stderr, flush=True)
    if any(t not in ("stderr", "stderr_ts", "off") for t in container.globals.log):
        log.get("").error("cannot start", reason=exc.text)
    return EXIT_FAILURE
