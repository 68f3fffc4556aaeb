"""The supervisor's store, served to its workers (docs/workers.md, docs/state.md).

Strategy. The supervisor keeps one `MemoryStore` (state/host.py
`HostState`): the same counting code a single process uses, once for
the whole server. Each worker gets a socket pair of its own at start
(supervise/spawn.py); this module reads the worker's requests from its
end, in order, and answers each with the store's decision (state/wire.py):
all the requests one read brings are answered in one write. The memory
store never suspends, so a request is answered as soon as it is read and
no two workers' decisions interleave.

A worker that dies cannot give back what it held: for each connection
the slots granted and not yet given back are counted here, by counter
and key, and when the connection ends (the kernel closes a dead
process's end, `kill -9` included) they are all given back at once.
That count also keeps a worker from giving back a slot it never took,
which would free another worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter

from kittiwake.log import Logger
from kittiwake.state import wire
from kittiwake.state.base import Held, StateStore

__all__ = ["StateHost"]

#: (counter, key) -> slots a worker holds there.
Holdings = Counter[tuple[str, str]]
#: Bytes read at most at once.
READ_SIZE = 256 * 1024


class StateHost:
    """Serves `store` to every worker, each on its own connection.

    `store` must name holdings by counter and key alone, as the in-process
    store does (a slot it grants is its own holding, without a lease).
    """

    def __init__(self, store: StateStore, log: Logger) -> None:
        self.store = store
        self.log = log
        self._tasks: set[asyncio.Task[None]] = set()

    def serve(self, sock: socket.socket, pid: int) -> None:
        """Answer the worker `pid` on `sock` (the supervisor's end of its pair)."""
        task = asyncio.get_running_loop().create_task(self._serve(sock, pid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop serving (the server stops, after its workers)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, sock: socket.socket, pid: int) -> None:
        held: Holdings = Counter()
        writer: asyncio.StreamWriter | None = None
        try:
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock)
            frames = wire.Frames()
            while data := await reader.read(READ_SIZE):
                answers = [await self._answer(body, held) for body in frames.feed(data)]
                out = b"".join(a for a in answers if a is not None)
                if out:
                    writer.write(out)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass  # the worker is gone
        except wire.WireError as exc:
            self.log.error("unreadable frame from a worker's store connection", pid=pid, err=exc)
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()
            await self._give_back(held, pid)

    async def _answer(self, body: bytes, held: Holdings) -> bytes | None:
        """The answer to one request (None for those told, not asked)."""
        try:
            request = wire.decode_request(body)
        except wire.WireError as exc:
            # The frame itself was whole: the next one can still be read.
            self.log.error("unreadable request from a worker", err=exc)
            return wire.encode_error(str(exc))
        store = self.store
        try:
            if isinstance(request, wire.Acquire):
                grant = await store.acquire(request.wanted)
                for slot in grant.held:
                    held[(slot.counter, slot.key)] += 1
                return wire.encode_grant(grant)
            if isinstance(request, wire.Release):
                mine = [h for h in request.held if _give(held, h)]
                if mine:
                    await store.release(mine)
                return None
            if isinstance(request, wire.Locked):
                return wire.encode_locks(await store.locked(request.counters, request.known))
            if isinstance(request, wire.CountFailure):
                counts = await store.count_failure(request.failures, request.guess)
                return wire.encode_counts(counts)
            await store.remember(request.known, request.ttl)
            return None
        except Exception as exc:  # a bug: that decision fails, the worker goes on
            self.log.error("state store failed", err=exc)
            told = isinstance(request, (wire.Release, wire.Remember))
            return None if told else wire.encode_error(type(exc).__name__)

    async def _give_back(self, held: Holdings, pid: int) -> None:
        """The connection ended: what its worker still held is free again."""
        slots = [Held(counter, key) for (counter, key), n in held.items() for _ in range(n)]
        if not slots:
            return
        await self.store.release(slots)
        self.log.info("slots of a worker that is gone given back", pid=pid, slots=len(slots))


def _give(held: Holdings, slot: Held) -> bool:
    """Take `slot` off a worker's holdings; False if it holds none there."""
    where = (slot.counter, slot.key)
    count = held.get(where, 0)
    if count <= 0:
        return False
    if count == 1:
        del held[where]
    else:
        held[where] = count - 1
    return True
