"""What a worker process is started with, and starting it.

A worker is the same program started again (`sys.orig_argv`: the same
interpreter options, the same entry point, so a launcher that registers
extra modules works too), told by `WORKER_ENV` which inherited file
descriptor is its channel to the supervisor. Its first message on the
channel (`WorkerInit`) carries everything else: the configuration tree
the supervisor read and checked, as data (so every worker runs exactly
the configuration the supervisor checked, even if the file changed
since), its slot, and the descriptors of the listening sockets it
inherited, by the address each serves. A second socket pair, its own
too, reaches the supervisor's store (`state_fd`, supervise/statehost.py):
a decision never waits behind a metrics answer on the channel, and the
supervisor sees the connection end when the worker dies.

Workers are not told about systemd (`NOTIFY_SOCKET` is removed): the
main process alone reports readiness (docs/production.md).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kittiwake.config.node import Node
from kittiwake.container import DebugFlags
from kittiwake.server.sockets import Bind
from kittiwake.supervise.channel import Channel

__all__ = ["WORKER_ENV", "Started", "WorkerInit", "node_from_json", "node_to_json", "start"]

#: Set in a worker's environment: the descriptor of its channel.
WORKER_ENV = "KITTIWAKE_WORKER_CHANNEL"


def node_to_json(node: Node) -> list[Any]:
    children = None if node.children is None else [node_to_json(c) for c in node.children]
    return [node.name, list(node.args), children, node.file, node.line]


def node_from_json(data: list[Any]) -> Node:
    name, args, children, file, line = data
    kids = None if children is None else [node_from_json(c) for c in children]
    return Node(str(name), [str(a) for a in args], kids, str(file), int(line))


@dataclass
class WorkerInit:
    """The first message to a worker: what it serves, and how."""

    slot: int
    generation: int
    workers: int
    config_file: str
    cwd: str
    nodes: list[list[Any]]
    #: (bind as configured, inherited descriptor), in the order the
    #: endpoints take them (a port-0 address is served by the next one).
    sockets: list[tuple[Bind, int]] = field(default_factory=list)
    debug_flags: dict[str, Any] = field(default_factory=dict)
    #: The inherited descriptor of the connection to the supervisor's store
    #: (-1: none, every counter stays in the worker), and the key of the
    #: failed-login guess hashes, in hexadecimal (state/host.py `HostState`).
    state_fd: int = -1
    guess_key: str = ""

    def message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> WorkerInit:
        return cls(
            slot=int(data["slot"]),
            generation=int(data["generation"]),
            workers=int(data["workers"]),
            config_file=str(data["config_file"]),
            cwd=str(data["cwd"]),
            nodes=list(data["nodes"]),
            sockets=[((str(b[0]), str(b[1]), int(b[2])), int(fd)) for b, fd in data["sockets"]],
            debug_flags=dict(data.get("debug_flags") or {}),
            state_fd=int(data.get("state_fd", -1)),
            guess_key=str(data.get("guess_key", "")),
        )

    def tree(self) -> list[Node]:
        return [node_from_json(n) for n in self.nodes]

    def flags(self) -> DebugFlags:
        return DebugFlags(**self.debug_flags)


@dataclass
class Started:
    """A worker process just started, and the supervisor's end of its channel."""

    process: asyncio.subprocess.Process
    channel: Channel
    #: The supervisor's end of the store connection (None: not asked for).
    state: socket.socket | None = None


def command() -> list[str]:
    """This program as it was started, with the running interpreter."""
    return [sys.executable, *sys.orig_argv[1:]]


async def start(init: WorkerInit, sockets: list[socket.socket], *, state: bool = False) -> Started:
    """Start one worker with `sockets` inherited and send it `init`.

    `init.sockets` must name the descriptors of `sockets`: a child keeps
    the numbers of the descriptors it inherits. `state`: give it a
    connection to the supervisor's store too (`Started.state` is ours).
    """
    ours, theirs = socket.socketpair()
    pair = socket.socketpair() if state else None
    inherited = [theirs.fileno(), *(s.fileno() for s in sockets)]
    if pair is not None:
        init = replace(init, state_fd=pair[1].fileno())
        inherited.append(pair[1].fileno())
    try:
        environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        environ[WORKER_ENV] = str(theirs.fileno())
        process = await asyncio.create_subprocess_exec(
            *command(), stdin=subprocess.DEVNULL, env=environ, pass_fds=inherited
        )
    except BaseException:
        ours.close()
        if pair is not None:
            pair[0].close()
        raise
    finally:
        theirs.close()
        if pair is not None:
            pair[1].close()  # the worker's now: its end closes when it dies
    channel = await Channel.open(ours)
    channel.send("init", **init.message())
    return Started(process, channel, pair[0] if pair is not None else None)
