"""`kittiwake reload [-c FILE]`: make the running server reread its configuration (docs/reload.md).

The configuration names the runtime directory, where the server's control
socket is; the server then rereads the file it was started with (the same
file, in the usual case) and answers what its reload did. Exit status: 0
reloaded, 2 the configuration has an error (printed as `FILE:LINE:
message`, as `config check` prints it; the server goes on with the
configuration it had), 1 no server answers or the reload failed otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from kittiwake.cli.common import (
    EMBEDDED_NAME,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    config_error,
    load_config,
    read_places,
    resolve_config,
)
from kittiwake.control import SOCKET_NAME, CommandError, Unavailable, request
from kittiwake.errors import ConfigError

__all__ = ["add_reload_command"]

#: A reload waits for the queue's deliveries in progress (docs/reload.md).
WAIT = 120.0


def add_reload_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = commands.add_parser("reload", help="make the running server reread its configuration")
    config_option(parser)
    parser.set_defaults(handler=cmd_reload)


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        path = resolve_config(args.config)
        places = read_places(load_config(path), path or EMBEDDED_NAME)
    except ConfigError as exc:
        return config_error(exc)
    socket = os.path.join(places.runtime_dir, SOCKET_NAME)
    try:
        result: dict[str, Any] = request(socket, "reload", {}, timeout=WAIT)
    except Unavailable:
        print(
            f"kittiwake reload: no server answers on {socket}: is kittiwake running"
            " with this configuration (a relative runtime_dir is taken from the"
            " directory the command runs in)?",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILURE
    except (CommandError, OSError) as exc:
        print(f"kittiwake reload: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    status = result.get("status")
    if status == "config_error":
        print(result.get("error", ""), file=sys.stderr, flush=True)
        return EXIT_CONFIG
    if status != "reloaded":
        print(f"kittiwake reload: {result.get('error', 'failed')}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    lines = [
        f"{what}: {' '.join(result.get(what) or []) or '-'}"
        for what in ("added", "removed", "kept")
    ]
    print("reloaded; listeners " + "; ".join(lines), flush=True)
    return EXIT_OK
