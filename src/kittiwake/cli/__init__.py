"""The `kittiwake` command: the parser, the entry point and the small commands.

`run` lives in `cli/run.py` (its reloads in `cli/reloader.py`), `reload` in
`cli/reload.py`, `creds` and `hash` in `cli/creds.py`, `dkim`
in `cli/dkim.py`, `queue` in `cli/queue.py`, `tls-report` in
`cli/tlsreport.py`, `sendmail` in `cli/sendmail.py`, what they
share in `cli/common.py`. This module is the program's composition root: it
imports `kittiwake.modules`, the list of every built-in module, so that a
configuration can name them (the registry never imports modules itself).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable, Sequence

import kittiwake.modules  # noqa: F401  (registers every built-in module)
from kittiwake import __version__, log
from kittiwake.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    add_debug_flags,
    build,
    config_error,
    config_option,
    default_config_text,
    log_target_error,
)
from kittiwake.cli.creds import add_creds_commands
from kittiwake.cli.dkim import add_dkim_commands
from kittiwake.cli.explain import add_explain_command
from kittiwake.cli.queue import add_queue_commands
from kittiwake.cli.reload import add_reload_command
from kittiwake.cli.run import cmd_run, traceback_fields
from kittiwake.cli.sendmail import main as sendmail_main
from kittiwake.cli.tlsreport import add_tls_report_command
from kittiwake.config import show, values
from kittiwake.config.node import Node
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.supervise.count import option as worker_count


def cmd_version(args: argparse.Namespace) -> int:
    build = "compiled" if compiled() else "pure Python"
    print(f"kittiwake {__version__} (Python {platform.python_version()}, {build})")
    return EXIT_OK


def compiled() -> bool:
    """Whether the message path runs compiled (setup.py, docs/performance.md).

    Its core module stands for all of them: one build compiles them together.
    """
    from kittiwake.protocol import connection

    return not (connection.__file__ or "").endswith(".py")


def cmd_config_default(args: argparse.Namespace) -> int:
    sys.stdout.write(default_config_text())
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        container, nodes = build(args)
        try:
            log.check_targets(container.globals.log)
        except OSError as exc:
            raise log_target_error(container, nodes, exc) from None
    except ConfigError as exc:
        return config_error(exc)
    print(f"{container.config_file}: configuration OK")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    """The effective configuration, like Postfix's `postconf -n` (`-d`: with defaults)."""
    try:
        container, nodes = build(args)
        text = show.render(
            nodes,
            defaults=container.defaults_of if args.defaults else None,
            global_defaults=_global_defaults(container, nodes) if args.defaults else None,
            shown=None if args.show_secrets else container.shown_args,
        )
    except ConfigError as exc:
        return config_error(exc)
    except ValueError as exc:
        print(f"kittiwake: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(text)
    return EXIT_OK


def _global_defaults(container: Container, nodes: list[Node]) -> dict[str, list[str]]:
    """The global directives the file leaves out that have a plain value."""
    g = container.globals
    known = {
        "state_dir": [g.state_dir],
        "runtime_dir": [g.runtime_dir],
        "log": list(g.log),
        "log_format": [g.log_format],
        "debug": values.format_bool(g.debug),
    }
    written = {node.name for node in nodes}
    return {name: args for name, args in known.items() if name not in written}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kittiwake",
        description="kittiwake mail server: SMTP, Submission and LMTP.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the server in the foreground")
    config_option(run)
    run.add_argument(
        "-j",
        "--workers",
        metavar="N",
        type=worker_count,
        help="serve with N worker processes, or one per usable core with 'auto'"
        " (overrides the workers directive)",
    )
    add_debug_flags(run)
    run.set_defaults(handler=cmd_run)

    config = commands.add_parser("config", help="check or print configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_commands.add_parser(
        "check", help="parse and build the configuration without binding anything"
    )
    config_option(check)
    add_debug_flags(check)
    check.set_defaults(handler=cmd_config_check)
    show_cmd = config_commands.add_parser(
        "show",
        help="print the effective configuration: imports, snippets, macros and {env:...} expanded",
    )
    config_option(show_cmd)
    show_cmd.add_argument(
        "-d",
        "--defaults",
        action="store_true",
        help="also print every default a module used, marked '# default'",
    )
    show_cmd.add_argument(
        "--show-secrets",
        action="store_true",
        help="print passwords as they are instead of ***",
    )
    show_cmd.set_defaults(handler=cmd_config_show)
    default = config_commands.add_parser("default", help="print the embedded default configuration")
    default.set_defaults(handler=cmd_config_default)

    add_explain_command(commands, config_option)
    add_creds_commands(commands, config_option)
    add_dkim_commands(commands, config_option)
    add_queue_commands(commands, config_option)
    add_reload_command(commands, config_option)
    add_tls_report_command(commands, config_option)
    # Listed for --help only: main() hands `sendmail` its arguments as they
    # are, because sendmail's options are not argparse's (-oi, -fSENDER).
    commands.add_parser(
        "sendmail",
        help="send a message read on stdin, sendmail-compatible (-t, -f, -i ...)",
        add_help=False,
    )

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sendmail"]:
        return sendmail_main(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
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
    logger.error("unexpected error, exiting", err=exc, **traceback_fields(logger, exc))
