"""The host store: the counters of every worker, kept once by their supervisor.

With `workers N` (docs/workers.md) every counter that no `state &NAME`
names lives in one `MemoryStore` in the supervisor, so `all rate 20`
admits 20 for the whole server, not 20 per worker (docs/state.md, "The
host store"). The supervisor's own modules use that store directly; each
worker reaches it through a `HostStore`, on a socket pair the supervisor
made for it (supervise/statehost.py serves the other end).

Strategy: each decision is one frame out and one frame back
(state/wire.py), on a connection of this worker alone. Answers come in
the order of the questions, so the client keeps a queue of the futures
waiting for them; nothing is polled and nothing blocks the event loop.
Giving back slots and remembering an address are sent without waiting
for an answer: the supervisor reads this worker's frames in order, so the
slot is free before any later question is answered, and a release can
never be lost to a slow supervisor (only to a gone one, which has given
back everything this worker held anyway).

A question unanswered within `timeout` raises `StoreUnavailable`, as does
every question once the connection is gone; the callers then apply
`fail_open`, which is False: the bounds hold or the client is told to try
again later (`451`, `421`, `454`: docs/state.md). The connection ends
only when the supervisor is gone (its worker is then stopping too) or on
a bug; the worker is told (`on_lost`) and stops, so it is started again.
A grant that arrives after its question timed out is given back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kittiwake.log import Logger
from kittiwake.state import wire
from kittiwake.state.base import (
    Failure,
    Grant,
    Held,
    Locks,
    Rate,
    Slot,
    StateStore,
    StoreUnavailable,
)
from kittiwake.state.memory import MemoryStore
from kittiwake.state.outage import Outage

__all__ = ["GUESS_KEY_SIZE", "MAX_KEYS", "TIMEOUT", "HostState", "HostStore"]

T = TypeVar("T")

#: How long a worker waits for its supervisor's answer to one decision.
TIMEOUT = 2.0
#: Keys per counter in the host store: the larger of the two in-process
#: bounds (`auth_ratelimit`'s), since one store counts for every worker.
MAX_KEYS = 50_000
#: Bytes of the key of the failed-login guess hashes (server/auth_throttle.py).
GUESS_KEY_SIZE = 32
#: Bytes read at most at once.
READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class HostState:
    """The counters no `state &NAME` names, in a server of several processes.

    `store` is the supervisor's `MemoryStore` in the supervisor and a
    `HostStore` reaching it in each worker. `guess_key` keys the hashes of
    failed logins: the same in every process of the server, so a repeated
    wrong password counts once whichever worker sees it (docs/auth.md).
    """

    store: StateStore
    guess_key: bytes

    @classmethod
    def for_supervisor(cls) -> HostState:
        return cls(MemoryStore(max_keys=MAX_KEYS), os.urandom(GUESS_KEY_SIZE))


@dataclass(slots=True)
class _Question:
    future: asyncio.Future[bytes | None]
    #: The requests of an `acquire`, to give back a grant that came too late.
    wanted: Sequence[Rate | Slot] | None


class HostStore:
    """A `StateStore` in the supervisor, for one worker process."""

    shared = True
    fail_open = False

    def __init__(
        self,
        sock: socket.socket,
        log: Logger,
        *,
        timeout: float = TIMEOUT,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.log = log
        self.timeout = timeout
        # Only workers ask the host store: their lines say which one.
        self.outage = Outage(log, mode="fail_closed", fields={"pid": os.getpid()})
        self._sock = sock
        self._on_lost = on_lost
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._questions: deque[_Question] = deque()
        self._closing = False
        #: The connection is over (its end read, or closed): nothing more is sent.
        self._over = False

    async def open(self) -> None:
        """Start using the socket (before any decision)."""
        self._sock.setblocking(False)
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def close(self) -> None:
        """Stop: every question still waiting fails, as at the end of the connection."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._end()

    # -- the interface ---------------------------------------------------------

    async def acquire(self, wanted: Sequence[Rate | Slot]) -> Grant:
        body = await self._ask(wire.Acquire(list(wanted)), wanted)
        return self._decoded(lambda: wire.decode_grant(body, wanted))

    async def release(self, held: Sequence[Held]) -> None:
        if held:
            self._tell(wire.Release(list(held)))

    async def locked(self, counters: Sequence[tuple[str, str]], known: tuple[str, str]) -> Locks:
        body = await self._ask(wire.Locked(list(counters), known))
        return self._decoded(lambda: wire.decode_locks(body, len(counters)))

    async def count_failure(self, failures: Sequence[Failure], guess: bytes) -> list[int]:
        body = await self._ask(wire.CountFailure(list(failures), guess))
        return self._decoded(lambda: wire.decode_counts(body, len(failures)))

    async def remember(self, known: tuple[str, str], ttl: float) -> None:
        self._tell(wire.Remember(known, ttl))

    # -- questions and answers -----------------------------------------------------

    async def _ask(
        self, request: wire.Request, wanted: Sequence[Rate | Slot] | None = None
    ) -> bytes:
        """Send one question; its answer's body. Raises `StoreUnavailable`."""
        if self.outage.skip():
            raise StoreUnavailable("the supervisor's store is not answering (retrying shortly)")
        writer = self._connected()
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._questions.append(_Question(future, wanted))
        writer.write(wire.encode_request(request))
        try:
            async with asyncio.timeout(self.timeout):
                body = await future
        except TimeoutError as exc:
            # The future was cancelled with the wait: its answer, when it
            # comes, is dropped (a grant given back, `_answered`).
            self.outage.failed(exc)
            raise StoreUnavailable("the supervisor's store did not answer in time") from None
        if body is None:
            ended = ConnectionError("the connection to the supervisor's store ended")
            self.outage.failed(ended)
            raise StoreUnavailable(str(ended))
        self.outage.succeeded()
        return body

    def _tell(self, request: wire.Request) -> None:
        """Send a request nothing answers; even during an outage's retry window
        (a slot given back must reach the store while it can)."""
        self._connected().write(wire.encode_request(request))

    def _connected(self) -> asyncio.StreamWriter:
        writer = self._writer
        if writer is None or self._over or writer.is_closing():
            exc = ConnectionError("no connection to the supervisor's store")
            self.outage.failed(exc)
            raise StoreUnavailable(str(exc))
        return writer

    def _decoded(self, decode: Callable[[], T]) -> T:
        """An answer decoded; one that is not what was asked is an outage (a bug)."""
        try:
            return decode()
        except wire.WireError as exc:
            self.outage.failed(exc)
            raise StoreUnavailable(str(exc)) from None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        frames = wire.Frames()
        try:
            while data := await reader.read(READ_SIZE):
                for body in frames.feed(data):
                    self._answered(body)
        except (wire.WireError, ConnectionError, OSError) as exc:
            if not self._closing:
                self.log.error("unreadable answer from the supervisor's store", err=exc)
        finally:
            self._end()
            if not self._closing and self._on_lost is not None:
                self._on_lost()

    def _answered(self, body: bytes) -> None:
        if not self._questions:
            raise wire.WireError("an answer to no question")
        question = self._questions.popleft()
        if not question.future.done():
            question.future.set_result(body)
        elif question.wanted is not None:
            self._give_back_late(body, question.wanted)

    def _give_back_late(self, body: bytes, wanted: Sequence[Rate | Slot]) -> None:
        """A grant whose caller stopped waiting: nobody holds its slots."""
        try:
            grant = wire.decode_grant(body, wanted)
        except wire.WireError:
            return
        if grant.held:
            with contextlib.suppress(StoreUnavailable):
                self._tell(wire.Release(grant.held))

    def _end(self) -> None:
        """The connection is over: every waiting question gets no answer."""
        self._over = True
        if self._writer is not None:
            self._writer.close()
        questions, self._questions = self._questions, deque()
        for question in questions:
            if not question.future.done():
                question.future.set_result(None)
