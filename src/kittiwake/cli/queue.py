"""`kittiwake queue`: look at and manage the outbound queue (docs/queue-operations.md).

`list`, `show ID`, `flush [ID]`, `delete ID` and `bounce ID`, each with
`-c FILE` (the server's configuration: it names the queues and the
runtime directory), `--queue NAME` (needed only when the configuration has
several queues) and `--json` (the answer as JSON, for scripts).

With a server running, the command goes to it over the control socket
(`RUNTIME_DIR/control.sock`) and the server acts on its own entries, so
nothing races its deliveries. Without one, `list` and `show` read the
files, `delete` removes them once it holds the queue's lock, and `flush`
and `bounce` refuse: only a running server delivers.

Exit status: 0 done, 1 refused or failed (unknown ID, no server for
`flush`/`bounce`), 2 configuration or command-line problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from kittiwake.cli.common import EXIT_FAILURE, EXIT_OK, build, config_error
from kittiwake.control import SOCKET_NAME, CommandError, Unavailable, request
from kittiwake.errors import ConfigError
from kittiwake.queue import commands
from kittiwake.queue.record import CorruptEntry
from kittiwake.queue.target import QueueTarget

__all__ = ["add_queue_commands"]

_ACTIONS = {
    "list": "list the entries: ID, age, size, sender, recipients, next attempt, last error",
    "show": "show one entry: its metadata and header",
    "flush": "try one entry (or every entry) now",
    "delete": "remove one entry without delivering it or notifying anyone",
    "bounce": "fail one entry now and notify its sender",
}


def add_queue_commands(
    commands_: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = commands_.add_parser("queue", help="look at and manage the outbound queue")
    actions = parser.add_subparsers(dest="queue_action", metavar="ACTION", required=True)
    for action, text in _ACTIONS.items():
        p = actions.add_parser(action, help=text)
        config_option(p)
        p.add_argument("--queue", metavar="NAME", help="the queue's block name or location")
        p.add_argument("--json", action="store_true", help="print the answer as JSON")
        if action == "flush":
            p.add_argument("id", nargs="?", metavar="ID", help="the entry (default: all)")
        elif action != "list":
            p.add_argument("id", metavar="ID", help="the entry's ID (16 hex digits)")
        p.set_defaults(handler=cmd_queue)


def cmd_queue(args: argparse.Namespace) -> int:
    try:
        container, _ = build(args, serving=False)
        queue = _choose(container.modules, args.queue, container.config_file)
    except ConfigError as exc:
        return config_error(exc)
    action: str = args.queue_action
    entry_id: str | None = getattr(args, "id", None)
    socket = container.runtime_path(SOCKET_NAME)
    try:
        try:
            result = request(socket, f"queue.{action}", {"instance": queue.name, "id": entry_id})
            running = True
        except Unavailable:
            result = _offline(queue, action, entry_id, socket)
            running = False
    except (CommandError, CorruptEntry, OSError) as exc:
        print(f"kittiwake queue {action}: {_explain(exc)}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    if args.json:
        if action == "list":  # the entries with what the text's heading says
            result = {"queue": queue.name, "server_running": running, "entries": result}
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        sys.stdout.write(_render(action, queue.name, result, running))
    return EXIT_OK


def _choose(modules: list[Any], wanted: str | None, config_file: str) -> QueueTarget:
    queues = [m for m in modules if isinstance(m, QueueTarget)]
    if not queues:
        raise ConfigError("no target.queue in this configuration", config_file)
    if wanted is None:
        if len(queues) > 1:
            names = ", ".join(q.name for q in queues)
            raise ConfigError(f"several queues, choose one with --queue: {names}", config_file)
        return queues[0]
    for queue in queues:
        # The block name, the location as written inline, or as resolved.
        if wanted in (queue.name, queue.location, *queue.inline_args) or (
            os.path.abspath(wanted) == queue.location
        ):
            return queue
    names = ", ".join(q.name for q in queues)
    raise ConfigError(f"no queue {wanted!r}; there are: {names}", config_file)


#: Why a command finds no server or no queue directory, most often.
_RELATIVE_HINT = (
    "relative state_dir and runtime_dir are taken from the directory a command runs in:"
    " run it where the server was started, or make them absolute"
)


def _explain(exc: Exception) -> str:
    """An error for the operator: the path and what to check, never a bare errno."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename} does not exist ({_RELATIVE_HINT})"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _offline(queue: QueueTarget, action: str, entry_id: str | None, socket: str) -> Any:
    """The answer read from the files: no server answers on `socket`."""
    if action == "list":
        return commands.offline_list(queue.store)
    if action == "show":
        assert entry_id is not None
        return commands.offline_show(queue.store, entry_id)
    if action == "delete":
        assert entry_id is not None
        return commands.offline_delete(queue.store, entry_id)
    raise CommandError(
        f"no server answers on {socket}: nothing would deliver; start it to {action}"
        f" (if it runs, {_RELATIVE_HINT})"
    )


# --- text output ------------------------------------------------------------------------


def _render(action: str, name: str, result: Any, running: bool) -> str:
    if action == "list":
        return _render_list(name, result, running)
    if action == "show":
        return _render_show(result)
    if action == "flush":
        flushed = result.get("flushed", [])
        if result.get("in_flight"):
            return "being delivered right now: nothing to do\n"
        return f"flushed {len(flushed)} {_plural(len(flushed), 'entry', 'entries')}\n"
    if action == "delete":
        note = (
            " (its attempt in progress ends; it is not tried again)" if result["in_flight"] else ""
        )
        return f"deleted {result['deleted']}{note}\n"
    count = result["rcpts"]
    return f"bounced {result['bounced']}: {count} {_plural(count, 'recipient', 'recipients')}\n"


def _render_list(name: str, entries: list[dict[str, Any]], running: bool) -> str:
    where = "" if running else " (server not running: read from disk)"
    if not entries:
        return f"queue {name} is empty{where}\n"
    now = time.time()
    lines = []
    for e in entries:
        if e["state"] == "unreadable":
            lines.append(f"{e['id']}  unreadable: {e['last_error']}")
            continue
        lines.append(
            f"{e['id']}  age {duration(e['age'])}  {size(e['size'])}  "
            f"{_next(e, now)}  from <{e['sender']}>"
        )
        for r in e["rcpts"]:
            error = f": {r['last_error']}" if r["last_error"] else ""
            lines.append(f"    {r['addr']} (tries {r['tries']}){error}")
        if e.get("notices_owed"):
            lines.append(f"    {e['notices_owed']} notice(s) not yet sent")
    count = len(entries)
    lines.append(f"{count} {_plural(count, 'entry', 'entries')} in queue {name}{where}")
    return "\n".join(lines) + "\n"


def _next(entry: dict[str, Any], now: float) -> str:
    state: str = entry["state"]
    if state != "waiting":
        return state
    when = entry.get("next_attempt")
    if when is None:
        return "waiting"
    return f"next in {duration(max(0.0, when - now))}"


def _render_show(entry: dict[str, Any]) -> str:
    meta = entry["metadata"]
    lines = [
        f"id: {entry['id']}",
        f"msg_id: {entry['msg_id']}",
        f"state: {entry['state']}",
        f"sender: <{entry['sender']}>",
        f"arrival: {_stamp(meta['arrival'])} (age {duration(entry['age'])})",
        f"size: {size(entry['size'])}",
    ]
    if meta.get("last_attempt"):
        lines.append(f"last attempt: {_stamp(meta['last_attempt'])}")
    if entry.get("next_attempt"):
        lines.append(f"next attempt: {_stamp(entry['next_attempt'])}")
    for r in entry["rcpts"]:
        error = f": {r['last_error']}" if r["last_error"] else ""
        lines.append(f"recipient: {r['addr']} (tries {r['tries']}){error}")
    for n in meta.get("notices", []):
        lines.append(f"notice owed: {n['action']} for {n['rcpt']}")
    lines.append("")
    header: str = entry["header"]
    return "\n".join(lines) + "\n" + header.replace("\r\n", "\n")


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ts))


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def duration(seconds: float) -> str:
    """`45s`, `12m05s`, `3h20m`, `2d05h`: short and exact enough for a queue."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
