"""The idle connection pool of `target.remote`: bookkeeping only, no I/O.

Strategy: a connection that finished a transaction cleanly (RSET answered)
may carry the next message to the same destination domain instead of a
fresh dial, EHLO and TLS handshake. The pool keeps, per domain, at most
`max_idle` idle connections, each for at most `idle_time` seconds, newest
last; `take` hands out the newest (the least likely to have been closed by
the other side). A connection that has carried `reuse_limit` transactions
is never pooled again.

The pool never closes anything itself: `give`, `take`, `expired` and
`drain` return the connections the caller must close (QUIT), so the
closing (which awaits the network) stays in the target and this module
can be tested with a fake clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Pool", "PoolSettings"]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    reuse_limit: int = 10  # transactions per connection
    max_idle: int = 5  # idle connections per domain
    idle_time: float = 150.0  # seconds


class Pool(Generic[C]):
    """Idle connections by destination domain."""

    def __init__(
        self, settings: PoolSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._idle: dict[str, deque[tuple[float, C]]] = {}
        self.closed = False

    def __len__(self) -> int:
        return sum(len(q) for q in self._idle.values())

    def idle(self, domain: str) -> int:
        return len(self._idle.get(domain, ()))

    def take(self, domain: str) -> tuple[C | None, list[C]]:
        """The newest idle connection to `domain` still in its idle time, or
        None; and the stale ones found on the way, to close."""
        queue = self._idle.get(domain)
        stale: list[C] = []
        found: C | None = None
        now = self.clock()
        while queue:
            since, conn = queue.pop()
            if now - since < self.settings.idle_time:
                found = conn
                break
            stale.append(conn)
        if queue is not None and not queue:
            del self._idle[domain]
        return found, stale

    def give(self, domain: str, conn: C, transactions: int) -> list[C]:
        """Put `conn`, which has carried `transactions` messages, back.

        Returns what to close: `conn` itself when it has reached the reuse
        limit, the pool is full for the domain or closed; else nothing.
        """
        s = self.settings
        if self.closed or transactions >= s.reuse_limit or s.max_idle <= 0:
            return [conn]
        queue = self._idle.setdefault(domain, deque())
        if len(queue) >= s.max_idle:
            return [conn]
        queue.append((self.clock(), conn))
        return []

    def expired(self) -> list[C]:
        """Remove and return every connection idle for `idle_time` or longer."""
        now = self.clock()
        out: list[C] = []
        for domain in list(self._idle):
            queue = self._idle[domain]
            while queue and now - queue[0][0] >= self.settings.idle_time:
                out.append(queue.popleft()[1])
            if not queue:
                del self._idle[domain]
        return out

    def drain(self) -> list[C]:
        """Close the pool: every idle connection is returned; later gives are refused."""
        self.closed = True
        out = [conn for queue in self._idle.values() for _, conn in queue]
        self._idle.clear()
        return out
