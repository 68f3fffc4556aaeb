"""The line between the supervisor and one worker: JSON messages on a socket pair.

Each message is one JSON object on one line, with a `kind`. Either side
may also ask and wait for the answer (`ask`): the question carries an
`id`, the answer the same number in `re`. A message that cannot be read
ends the channel, as the peer's end of file does: for a worker that means
its supervisor is gone, and it stops; for the supervisor, that the worker
is (its exit status says how).

The socket pair is made by the supervisor for each worker it starts
(supervise/spawn.py), one end passed to the child as an inherited file
descriptor, so nothing else can reach it and no file names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["MAX_MESSAGE", "Channel", "Message"]

Message = dict[str, Any]
#: The largest message: a worker's metrics are some hundred kilobytes at most.
MAX_MESSAGE = 64 * 1024 * 1024

Handler = Callable[[Message], Awaitable[None]]


class Channel:
    """One end of a supervisor-worker socket pair, on the event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[Message]] = {}
        self._closed = False

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer)

    def send(self, kind: str, **fields: Any) -> None:
        """Queue one message; dropped once the channel is closed (never raises)."""
        if self._closed or self._writer.is_closing():
            return
        line = json.dumps({"kind": kind, **fields}, ensure_ascii=False, separators=(",", ":"))
        self._writer.write(line.encode("utf-8") + b"\n")

    async def drain(self) -> None:
        """Wait until what was sent has left (or the peer is gone)."""
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()

    def answer(self, question: Message, kind: str, **fields: Any) -> None:
        self.send(kind, re=question.get("id"), **fields)

    async def ask(self, kind: str, within: float, **fields: Any) -> Message | None:
        """Send a question and wait up to `within` seconds for its answer (None if none)."""
        number = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._answers[number] = future
        try:
            self.send(kind, id=number, **fields)
            answer = await asyncio.wait_for(future, within)
            return answer or None  # empty: the channel ended first
        except TimeoutError:
            return None
        finally:
            self._answers.pop(number, None)

    async def receive(self) -> Message | None:
        """The next message that is not an answer; None at the end of the channel."""
        while True:
            try:
                line = await self._reader.readline()
            except (ConnectionError, OSError, ValueError):
                line = b""
            if not line.endswith(b"\n"):
                self._end()
                return None
            try:
                message = json.loads(line)
            except ValueError:
                self._end()
                return None
            if not isinstance(message, dict):
                continue
            answered = message.get("re")
            if answered is not None:
                future = self._answers.get(answered)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            return message

    def _end(self) -> None:
        self._closed = True
        for future in self._answers.values():
            if not future.done():
                future.set_result({})

    def close(self) -> None:
        self._end()
        with contextlib.suppress(Exception):
            self._writer.close()

    @property
    def closed(self) -> bool:
        return self._closed
