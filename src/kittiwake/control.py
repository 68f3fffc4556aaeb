"""The control socket: operator commands to a running server (docs/queue-operations.md).

A running `kittiwake run` listens on `RUNTIME_DIR/control.sock`, a Unix
stream socket of mode 0600 (only the server's user, and root, may connect).
Each request is one line of JSON, each answer one line of JSON, and one
connection may carry several:

    {"command": "queue.list", "args": {"instance": "outbound"}}
    {"ok": true, "result": [...]}
    {"ok": false, "error": "no entry 0123456789abcdef"}

Commands belong to modules: a module adds its handlers to the container's
`Commands` when it starts and removes them when it stops, under its own
instance name, so several modules can answer the same command (two
queues) and the request names the one it means (`args["instance"]`; it
may be left out when only one module answers). Nothing here knows what a
command does; the `kittiwake` command-line side of each lives in `cli/`.

A handler gets the request's `args` and returns anything JSON can carry;
it raises `CommandError` for an answer the operator should read (an unknown
ID, a wrong argument). Any other exception is a bug: it is logged and the
client is told only that the command failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from kittiwake import log as _log

__all__ = [
    "SOCKET_NAME",
    "CommandError",
    "Commands",
    "ControlServer",
    "Unavailable",
    "request",
]

SOCKET_NAME = "control.sock"
#: Longest request line: a command and a few arguments, never a message.
MAX_LINE = 1024 * 1024
#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT = 60.0

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class CommandError(Exception):
    """A command's answer for the operator: the request cannot be done as asked."""


class Unavailable(Exception):
    """No server answers on the control socket (none runs, or it is not ours)."""


class Commands:
    """The control commands of one running configuration, by module instance."""

    def __init__(self) -> None:
        self._handlers: dict[str, dict[str, Handler]] = {}

    def add(self, command: str, instance: str, handler: Handler) -> None:
        owners = self._handlers.setdefault(command, {})
        if instance in owners:
            raise ValueError(f"control command {command} already has an instance {instance!r}")
        owners[instance] = handler

    def remove(self, command: str, instance: str) -> None:
        owners = self._handlers.get(command, {})
        owners.pop(instance, None)
        if not owners:
            self._handlers.pop(command, None)

    def instances(self, command: str) -> list[str]:
        return sorted(self._handlers.get(command, {}))

    async def dispatch(self, command: str, args: dict[str, Any]) -> Any:
        owners = self._handlers.get(command)
        if not owners:
            raise CommandError(f"unknown command: {command}")
        name = args.get("instance")
        if name is None:
            if len(owners) > 1:
                raise CommandError(
                    f"{command}: several instances, choose one of: {', '.join(sorted(owners))}"
                )
            handler = next(iter(owners.values()))
        else:
            found = owners.get(str(name))
            if found is None:
                raise CommandError(
                    f"{command}: no instance {name!r}; there are: {', '.join(sorted(owners))}"
                )
            handler = found
        return await handler(args)


class ControlServer:
    """Serves `Commands` on a Unix socket for the life of the server."""

    def __init__(self, commands: Commands, path: str, logger: _log.Logger | None = None) -> None:
        self.commands = commands
        self.path = path
        self.log = logger or _log.get("control")
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> bool:
        """Bind the socket; False (logged) when it cannot be served.

        The server runs without it (mail flows; only the operator commands
        are missing), so a problem here is an error in the log, not a
        failed start. A socket answered by another live process is left
        alone; a stale one (a server that was killed) is replaced.
        """
        try:
            if await asyncio.to_thread(_answered, self.path):
                self.log.error("control socket in use by another process", path=self.path)
                return False
            self._server = await self._bind()
        except OSError as exc:
            self.log.error("cannot serve the control socket", path=self.path, err=exc)
            return False
        self.log.debug("control socket ready", path=self.path)
        return True

    async def _bind(self) -> asyncio.AbstractServer:
        """Bind under a temporary name, set mode 0600, then rename into place.

        So the socket is never reachable with the permissions the umask
        would give it, not even for a moment.
        """
        tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            sock.listen(16)
            sock.setblocking(False)
            return await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients))
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except (TimeoutError, ValueError, ConnectionError):
                    return  # idle, over-long line, or gone
                if not line:
                    return
                answer = await self._answer(line)
                writer.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._clients.discard(task)
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = request["command"]
            args = request.get("args") or {}
            if not isinstance(command, str) or not isinstance(args, dict):
                raise TypeError("command must be a string and args an object")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return {"ok": False, "error": f"malformed request: {exc}"}
        try:
            result = await self.commands.dispatch(command, args)
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            self.log.error("control command failed", command=command, err=exc)
            return {"ok": False, "error": f"{command} failed: internal error (see the log)"}
        return {"ok": True, "result": result}


def _answered(path: str) -> bool:
    """Whether a live process accepts connections on socket `path`."""
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def request(path: str, command: str, args: dict[str, Any], timeout: float = 60.0) -> Any:
    """Send one command to the server at `path` and return its result (blocking).

    Raises `Unavailable` when no server listens there and `CommandError`
    with the server's text when the command was refused or failed.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Unavailable(f"no server answers at {path}") from exc
        sock.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise CommandError("the server closed the connection without answering")
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise CommandError(str(answer.get("error", "failed")))
    return answer.get("result")
