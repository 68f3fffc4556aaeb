"""`kittiwake run`: start every module, serve until a signal, stop cleanly.

Strategy: everything that can be wrong with the configuration is found
before the event loop starts (parse, build, log targets, directories), so a
broken file never leaves a half-started server. Only then are modules
started; the readiness lines are printed after *every* endpoint is bound,
because scripts wait for them (systemd gets READY=1 at the same moment,
kittiwake/systemd.py), and so is the control socket
(`RUNTIME_DIR/control.sock`, kittiwake/control.py) that `kittiwake queue`
talks to. Signals are handled inside the event loop:
SIGTERM/SIGINT start a graceful stop (the endpoints bound it by their grace
period; systemd is told STOPPING=1), a second one exits at once. SIGUSR2
rereads the configuration, as `kittiwake reload` does through the control
socket (cli/reloader.py, docs/reload.md; systemd is told RELOADING=1 and
READY=1 around it); SIGHUP and SIGUSR1 reopen log files (logrotate sends one
of them; maddy's packaging sends SIGUSR1 for logs and SIGUSR2 for a
reload): no signal a service manager or a log rotator sends kills the
server silently.

With `workers` above 1 (or `-j`), this process becomes the supervisor of
worker processes (cli/supervised.py, docs/workers.md); a worker is this
same command started again by it (supervise/worker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable

from kittiwake import __version__, heap, log, systemd
from kittiwake.cli.common import EXIT_FAILURE, EXIT_OK, build, config_error, log_target_error
from kittiwake.cli.reloader import Outcome, Reloader
from kittiwake.config.globals import Globals
from kittiwake.config.node import Node
from kittiwake.container import Container
from kittiwake.control import SOCKET_NAME, ControlServer
from kittiwake.errors import ConfigError
from kittiwake.module import Role
from kittiwake.supervise import worker


def _raise_open_file_limit() -> None:
    """Use the hard limit on open files: every connection is one.

    The soft limit is often 1,024, far below what `max_connections` allows;
    raising it to the hard limit needs no privilege.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: Signals that reopen log files; their default action would end the process.
REOPEN_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)
#: The signal that reloads the configuration (maddy's).
RELOAD_SIGNAL = signal.SIGUSR2


def cmd_run(args: argparse.Namespace) -> int:
    # A crash in C code (an extension module, or the compiled build of
    # docs/performance.md) leaves every thread's Python stack on standard
    # error, where the service manager keeps it, instead of a bare signal.
    faulthandler.enable()
    # Until the event loop handles them, a log rotation must not kill us.
    for sig in (*REOPEN_SIGNALS, RELOAD_SIGNAL):
        signal.signal(sig, signal.SIG_IGN)
    _raise_open_file_limit()
    if worker.is_worker():
        return worker.run_worker(_loop_factory())
    override: int | None = getattr(args, "workers", None)

    def role(found: Globals) -> Role:
        return Role.SUPERVISOR if (override or found.workers) > 1 else Role.SINGLE

    try:
        container, nodes = build(args, role=role)
        count = override or container.globals.workers
        container.prepare_dirs()
        _configure_logging(container, nodes)
    except ConfigError as exc:
        return config_error(exc)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        if count > 1:
            from kittiwake.cli.supervised import serve_supervised
            from kittiwake.supervise.fleet import Fleet

            return runner.run(serve_supervised(container, Fleet(override)))
        return runner.run(_serve(container))


def _configure_logging(container: Container, nodes: list[Node]) -> None:
    g = container.globals
    try:
        log.configure(g.log, fmt=g.log_format, debug=g.debug)
    except OSError as exc:
        raise log_target_error(container, nodes, exc) from None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (the `fast` extra), else asyncio's."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _serve(container: Container) -> int:
    logger = log.get("")
    loop = asyncio.get_running_loop()
    log.attach_loop(loop)
    try:
        return await _serve_on(container, loop, logger)
    finally:
        log.attach_loop(None)


async def _serve_on(
    container: Container, loop: asyncio.AbstractEventLoop, logger: log.Logger
) -> int:
    stopping = asyncio.Event()

    def on_stop(sig: signal.Signals) -> None:
        if stopping.is_set():
            logger.warn("second signal during shutdown, exiting at once", signal=sig.name)
            log.flush()
            sys.stdout.flush()
            os._exit(EXIT_FAILURE)
        logger.info("shutting down", signal=sig.name)
        systemd.notify_stopping()
        stopping.set()

    def on_reopen(sig: signal.Signals) -> None:
        try:
            log.reopen()
        except OSError as exc:
            logger.error("cannot reopen log files", err=exc, signal=sig.name)
            return
        logger.info("log files reopened", signal=sig.name)

    reloader: Reloader | None = None
    reloads: set[asyncio.Task[Outcome]] = set()

    def on_reload(sig: signal.Signals) -> None:
        if reloader is None or stopping.is_set():
            logger.warn("reload ignored: the server is starting or stopping", signal=sig.name)
            return
        task = loop.create_task(reloader.reload(sig.name))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.set_exception_handler(loop_error_handler(logger))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    for sig in REOPEN_SIGNALS:
        loop.add_signal_handler(sig, on_reopen, sig)
    loop.add_signal_handler(RELOAD_SIGNAL, on_reload, RELOAD_SIGNAL)
    try:
        log_debug_flags(container, logger)
        try:
            await container.start()
        except ConfigError as exc:
            return config_error(exc)
        except OSError as exc:
            report_start_failure(container, exc)
            return EXIT_FAILURE
        # Before the readiness lines: a script that waits for them may
        # run `kittiwake queue` at once.
        control = ControlServer(container.control, container.runtime_path(SOCKET_NAME))
        reloader = Reloader(container, control, announce)
        await control.start()
        heap.settle()  # what starting made lives until a reload (kittiwake/heap.py)
        if not stopping.is_set():
            addresses = _addresses(container)
            announce(addresses)
            systemd.notify_ready(f"listening on {', '.join(addresses)}")
            logger.info("started", version=__version__, config=container.config_file)
            await stopping.wait()
        await control.stop()
        await reloader.stop()
        logger.info("stopped")
        return EXIT_OK
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, *REOPEN_SIGNALS, RELOAD_SIGNAL):
            loop.remove_signal_handler(sig)


def loop_error_handler(
    logger: log.Logger,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, object]], None]:
    """asyncio would print errors of background tasks through the stdlib
    `logging` module, around our log targets; this keeps them in our format."""

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        error = exc if isinstance(exc, BaseException) else None
        fields = traceback_fields(logger, error)
        logger.error(
            "unhandled error in a background task",
            err=error,
            detail=str(context.get("message", "")),
            **fields,
        )

    return on_loop_error


def log_debug_flags(container: Container, logger: log.Logger) -> None:
    flags = container.debug_flags
    if flags.dns_override is not None:
        logger.warn(
            "debug flag in use: DNS queries go to a fixed server", server=flags.dns_override
        )
    if flags.smtp_port is not None:
        logger.warn("debug flag in use: outbound SMTP port changed", port=flags.smtp_port)
    if flags.mtasts_port is not None or flags.mtasts_ca is not None:
        logger.warn(
            "debug flag in use: MTA-STS policy fetches changed",
            port=flags.mtasts_port or 443,
            ca=flags.mtasts_ca or "",
        )


def _addresses(container: Container) -> list[str]:
    return [address for endpoint in container.endpoints for address in endpoint.addresses()]


def announce(addresses: list[str]) -> None:
    """The readiness lines scripts wait for, all at once, after every bind
    (and after a reload, for the addresses it added)."""
    lines = [f"kittiwake: listening on {address}\n" for address in addresses]
    try:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    except OSError:
        pass  # nobody reads stdout; the server itself is fine


def report_start_failure(container: Container, exc: OSError) -> None:
    detail = exc.strerror or str(exc)
    if exc.filename:
        detail = f"{exc.filename}: {detail}"
    print(f"kittiwake: cannot start: {detail}", file=sys.stderr, flush=True)
    if any(t not in ("stderr", "stderr_ts", "off") for t in container.globals.log):
        log.get("").error("cannot start", err=exc)  # also where the operator reads logs


def traceback_fields(logger: log.Logger, exc: BaseException | None) -> dict[str, str]:
    """The traceback as one field (one line once rendered), in debug mode only."""
    if exc is None or not logger.debug_enabled:
        return {}
    return {"traceback": "".join(traceback.format_exception(exc))}
