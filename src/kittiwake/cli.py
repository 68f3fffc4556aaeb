"""The `kittiwake` command (interface.md): run, config check/default, creds, hash, version.

Exit status: 0 on success and after a clean shutdown; 2 for any
configuration problem (printed as `FILE:LINE: message`, before anything is
bound) and for command-line misuse; 1 when the server cannot start (address
in use, permission), when a `creds` operation fails (user exists, ...) or for
anything unexpected.

Strategy for `run`: everything that can be wrong with the configuration is
found before the event loop starts (parse, build, log targets, directories),
so a broken file never leaves a half-started server. Only then are modules
started; the readiness lines are printed after *every* endpoint is bound,
because scripts wait for them. Signals are handled inside the event loop:
SIGTERM/SIGINT start a graceful stop (the endpoints bound it by their grace
period), a second one exits at once, SIGHUP reopens log files.

Strategy for `creds`: only the named block is built (with whatever it
references), never the endpoints, so managing users works with a server
running on the same configuration and does not bind or load anything else.
Everything that can be wrong with the command line or the configuration is
reported before a password is asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import os
import platform
import re
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from importlib import resources

from kittiwake import __version__, log
from kittiwake.config import parser
from kittiwake.config.node import Node
from kittiwake.container import Container, DebugFlags
from kittiwake.errors import ConfigError

#: The file name errors in the embedded default configuration are reported with.
EMBEDDED_NAME = "<default>"
#: Stands for the machine's FQDN in default.conf; replaced when it is loaded.
HOSTNAME_PLACEHOLDER = "@FQDN@"
CONFIG_ENV = "KITTIWAKE_CONFIG"
LOCAL_CONFIG = "kittiwake.conf"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?\Z")


# -- configuration sources ----------------------------------------------------


def machine_fqdn() -> str:
    """The machine's fully qualified name, or `localhost` if it has no usable one."""
    name = socket.getfqdn().strip()
    return name if _HOSTNAME_RE.match(name) else "localhost"


def default_config_text() -> str:
    """The embedded default configuration, with this machine's name filled in."""
    raw = resources.files("kittiwake").joinpath("default.conf").read_text(encoding="utf-8")
    return raw.replace(HOSTNAME_PLACEHOLDER, machine_fqdn())


def resolve_config(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The configuration file to read, or None for the embedded default.

    `-c FILE` wins, then `$KITTIWAKE_CONFIG`, then `./kittiwake.conf`. A file
    named explicitly (by `-c` or the variable) must exist: silently falling
    back to the default because of a typo would start the wrong server.
    """
    env = os.environ if environ is None else environ
    for path, origin in ((explicit, ""), (env.get(CONFIG_ENV) or None, f" (${CONFIG_ENV})")):
        if path is None:
            continue
        if not os.path.exists(path):
            raise ConfigError(f"no such file{origin}", path)
        return path
    return LOCAL_CONFIG if os.path.exists(LOCAL_CONFIG) else None


def load_config(path: str | None) -> list[Node]:
    """Parse the chosen file, or the embedded default when `path` is None."""
    if path is None:
        return parser.parse_text(default_config_text(), EMBEDDED_NAME, base_dir=os.getcwd())
    return parser.parse_file(path)  # unreadable files are ConfigErrors too


def build(args: argparse.Namespace) -> tuple[Container, list[Node]]:
    """Parse and build the configuration named on the command line."""
    path = resolve_config(args.config)
    nodes = load_config(path)
    container = Container(nodes, config_file=path or EMBEDDED_NAME, debug_flags=_debug_flags(args))
    container.build()
    return container, nodes


def config_error(exc: ConfigError) -> int:
    """Report a configuration problem: `FILE:LINE: message` where there is a place."""
    text = str(exc) if exc.file else f"kittiwake: {exc.message}"
    print(text, file=sys.stderr, flush=True)
    return EXIT_CONFIG


# -- debug flags --------------------------------------------------------------


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 1-65535")
    return int(text)


def _host_port(text: str) -> str:
    """`IP:PORT` or `[IPv6]:PORT`, returned in that canonical form."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected HOST:PORT")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r}: HOST must be an IP address"
        ) from None
    if ip.version == 6 and not bracketed:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: write IPv6 as [ADDRESS]:PORT")
    number = _port(port)
    return f"[{ip}]:{number}" if ip.version == 6 else f"{ip}:{number}"


def _add_debug_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("debug flags (tests and local experiments only)")
    group.add_argument(
        "--debug.dnsoverride",
        dest="debug_dnsoverride",
        metavar="HOST:PORT",
        type=_host_port,
        help="send every DNS query to this server",
    )
    group.add_argument(
        "--debug.smtpport",
        dest="debug_smtpport",
        metavar="PORT",
        type=_port,
        help="port target.remote connects to instead of 25",
    )


def _debug_flags(args: argparse.Namespace) -> DebugFlags:
    return DebugFlags(
        dns_override=getattr(args, "debug_dnsoverride", None),
        smtp_port=getattr(args, "debug_smtpport", None),
    )


# -- commands -----------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    print(f"kittiwake {__version__} (Python {platform.python_version()})")
    return EXIT_OK


def cmd_config_default(args: argparse.Namespace) -> int:
    sys.stdout.write(default_config_text())
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        container, _ = build(args)
    except ConfigError as exc:
        return config_error(exc)
    print(f"{container.config_file}: configuration OK")
    return EXIT_OK


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


def cmd_run(args: argparse.Namespace) -> int:
    # Until the event loop handles SIGHUP, a log rotation must not kill us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _raise_open_file_limit()
    try:
        container, nodes = build(args)
        container.prepare_dirs()
        _configure_logging(container, nodes)
    except ConfigError as exc:
        return config_error(exc)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(container))


def _configure_logging(container: Container, nodes: list[Node]) -> None:
    g = container.globals
    try:
        log.configure(g.log, fmt=g.log_format, debug=g.debug)
    except OSError as exc:
        where = next((n for n in nodes if n.name == "log"), None)
        message = f"log: cannot open {exc.filename}: {exc.strerror}"
        if where is None:
            raise ConfigError(message, container.config_file) from None
        raise where.error(message) from None


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
        stopping.set()

    def on_hup() -> None:
        try:
            log.reopen()
        except OSError as exc:
            logger.error("cannot reopen log files", err=exc)
            return
        logger.info(
            "log files reopened; configuration reload is not supported, restart to apply changes"
        )

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # asyncio would print these through the stdlib `logging` module,
        # around our log targets; keep them in our own format instead.
        exc = context.get("exception")
        error = exc if isinstance(exc, BaseException) else None
        fields = _traceback_fields(logger, error)
        logger.error(
            "unhandled error in a background task",
            err=error,
            detail=str(context.get("message", "")),
            **fields,
        )

    loop.set_exception_handler(on_loop_error)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        _log_debug_flags(container, logger)
        try:
            await container.start()
        except ConfigError as exc:
            return config_error(exc)
        except OSError as exc:
            _report_start_failure(container, exc)
            return EXIT_FAILURE
        if not stopping.is_set():
            _announce(container)
            logger.info("started", version=__version__, config=container.config_file)
            await stopping.wait()
        await container.stop()
        logger.info("stopped")
        return EXIT_OK
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _log_debug_flags(container: Container, logger: log.Logger) -> None:
    flags = container.debug_flags
    if flags.dns_override is not None:
        logger.warn(
            "debug flag in use: DNS queries go to a fixed server", server=flags.dns_override
        )
    if flags.smtp_port is not None:
        logger.warn("debug flag in use: outbound SMTP port changed", port=flags.smtp_port)


def _announce(container: Container) -> None:
    """The readiness lines scripts wait for, all at once, after every bind."""
    lines = [
        f"kittiwake: listening on {address}\n"
        for endpoint in container.endpoints
        for address in endpoint.addresses()
    ]
    try:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    except OSError:
        pass  # nobody reads stdout; the server itself is fine


def _report_start_failure(container: Container, exc: OSError) -> None:
    detail = exc.strerror or str(exc)
    if exc.filename:
        detail = f"{exc.filename}: {detail}"
    print(f"kittiwake: cannot start: {detail}", file=sys.stderr, flush=True)
    if any(t not in ("stderr", "stderr_ts", "off") for t in container.globals.log):
        log.get("").error("cannot start", err=exc)  # also where the operator reads logs


def _traceback_fields(logger: log.Logger, exc: BaseException | None) -> dict[str, str]:
    """The traceback as one field (one line once rendered), in debug mode only."""
    if exc is None or not logger.debug_enabled:
        return {}
    return {"traceback": "".join(traceback.format_exception(exc))}


# -- argument parsing and the entry point ---------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kittiwake",
        description="kittiwake mail server: SMTP, Submission and LMTP.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help=f"configuration file (default: ${CONFIG_ENV}, then ./{LOCAL_CONFIG}, "
            "then the embedded default)",
        )

    run = commands.add_parser("run", help="run the server in the foreground")
    config_option(run)
    _add_debug_flags(run)
    run.set_defaults(handler=cmd_run)

    config = commands.add_parser("config", help="check or print configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_commands.add_parser(
        "check", help="parse and build the configuration without binding anything"
    )
    config_option(check)
    _add_debug_flags(check)
    check.set_defaults(handler=cmd_config_check)
    default = config_commands.add_parser("default", help="print the embedded default configuration")
    default.set_defaults(handler=cmd_config_default)

    # The credentials commands live in their own module (it imports this one).
    from kittiwake.creds import add_creds_commands

    add_creds_commands(commands, config_option)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except KeyboardInterrupt:  # SIGINT before the event loop took it over
        return 130
    except BrokenPipeError:
        # `kittiwake config default | head`: the reader left, which is fine.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        _report_unexpected(exc)
        return EXIT_FAILURE


def _report_unexpected(exc: BaseException) -> None:
    logger = log.get("")
    logger.error("unexpected error, exiting", err=exc, **_traceback_fields(logger, exc))
