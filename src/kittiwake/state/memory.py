"""The in-process `StateStore`: the counters of one process, bounded in memory.

The default when no `state` is configured (docs/state.md). Every decision is
plain dictionary work with no I/O, so the `async` methods never suspend:
the hot path of a session costs what it did before the interface existed.

Strategy, memory: every key comes from the network (client addresses,
sender domains, user names), so no table may grow without bound.

- A token bucket unused for a minute (or one period, if longer) is full
  again, indistinguishable from a new one, and is dropped. Buckets sit in
  least-recently-used order, so expiry costs O(1) per request.
- Each counter keeps at most `max_keys` entries: past that the least
  recently used one is forgotten, which can only make that one client's
  limit more lenient, never refuse anybody (docs/limits.md, "Memory").
- A concurrency counter exists only while a slot is held (it is deleted at
  zero), so the slot tables are bounded by what is in progress; if one
  counter already holds slots for `max_keys` different keys, a new key is
  refused like a full slot.
- A failed-login entry lives until its window or lockout is over,
  whichever is later; the known-address table expires its entries too.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass

from kittiwake.state.base import Failure, Grant, Held, Locks, Rate, Slot

__all__ = ["GUESS_SIZE", "IDLE_TTL", "MAX_GUESSES", "MAX_KEYS", "MemoryStore"]

#: A bucket unused this long (or one period, if longer) is dropped.
IDLE_TTL = 60.0
#: Entries kept per counter at most.
MAX_KEYS = 20_000
#: How often a waiter should re-check a full slot (a hint in `Grant.wait`).
SLOT_POLL = 0.25
#: Guesses remembered per failed-login entry for the repeat rule; beyond it
#: every failure counts (only matters for limits above it).
MAX_GUESSES = 64
GUESS_SIZE = 8
#: Shortest wait hint, so rounding can never make a caller spin.
_MIN_WAIT = 0.001


class _Buckets(OrderedDict[str, "_Bucket"]):
    """One counter's buckets, least recently used first."""

    #: How long a bucket lives unused: max(idle_ttl, the rule's period).
    ttl: float = 0.0


@dataclass(slots=True)
class _Bucket:
    tokens: int
    refilled: float  # the last refill-to-full time; refills follow every period
    used: float  # last access, for idle expiry
    burst: int  # the size it was last asked with (a reload may change it)


@dataclass(slots=True)
class _Failures:
    count: int
    window_end: float
    locked_until: float
    guesses: bytes  # GUESS_SIZE bytes per counted guess

    @property
    def expires(self) -> float:
        return max(self.window_end, self.locked_until)


class MemoryStore:
    """Counters in this process; `clock`, idle time and key cap are for tests."""

    shared = False
    fail_open = True  # never consulted: this store does not fail

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        idle_ttl: float = IDLE_TTL,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.clock = clock
        self.idle_ttl = idle_ttl
        self.max_keys = max_keys
        # Per counter; least recently used first.
        self._buckets: dict[str, _Buckets] = {}
        self._slots: dict[str, dict[str, int]] = {}
        self._failures: dict[str, OrderedDict[str, _Failures]] = {}
        self._known: dict[str, OrderedDict[str, float]] = {}
        #: Entries forgotten because a counter reached `max_keys` (logs, tests).
        self.evicted = 0
        self._next_sweep = clock() + idle_ttl

    # -- the interface ---------------------------------------------------------

    async def acquire(self, wanted: Sequence[Rate | Slot]) -> Grant:
        held: list[Held] = []
        for index, request in enumerate(wanted):
            if type(request) is Rate:
                wait = self.take_token(request.counter, request.key, request.burst, request.period)
                if wait > 0:
                    return Grant(held, index, wait)
            elif self.take_slot(request.counter, request.key, request.limit):  # type: ignore[union-attr]
                held.append(request)  # type: ignore[arg-type]  # a Slot is its own Held
            else:
                return Grant(held, index, SLOT_POLL)
        return Grant(held)

    async def release(self, held: Sequence[Held]) -> None:
        for slot in held:
            self.give_slot(slot.counter, slot.key)

    async def locked(self, counters: Sequence[tuple[str, str]], known: tuple[str, str]) -> Locks:
        left = tuple(self.lockout_left(counter, key) for counter, key in counters)
        return Locks(left, any(left) and self.is_known(*known))

    async def count_failure(self, failures: Sequence[Failure], guess: bytes) -> list[int]:
        return [
            self.add_failure(
                f.counter, f.key, guess, window=f.window, limit=f.limit, lockout=f.lockout
            )
            for f in failures
        ]

    async def remember(self, known: tuple[str, str], ttl: float) -> None:
        self.remember_key(known[0], known[1], ttl)

    # -- rate buckets ------------------------------------------------------------

    def take_token(self, counter: str, key: str, burst: int, period: float) -> float:
        """0.0 when a token was taken, else the seconds until the next refill."""
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        table = self._buckets.get(counter)
        if table is None:
            table = self._buckets[counter] = _Buckets()
        table.ttl = max(self.idle_ttl, period)
        self._expire_buckets(table, now)
        bucket = table.get(key)
        if bucket is None:
            if len(table) >= self.max_keys:
                table.popitem(last=False)
                self.evicted += 1
            bucket = table[key] = _Bucket(burst, now, now, burst)
        else:
            table.move_to_end(key)
            elapsed = now - bucket.refilled
            if elapsed >= period:
                # Refills happen on a fixed beat from the bucket's creation,
                # like a ticker: skip the beats nobody was there to see.
                bucket.refilled += (elapsed // period) * period
                bucket.tokens = burst
            elif bucket.burst != burst:
                # The limit was changed (a reload): what was used this period
                # stays used, the rest follows the new size at once. Below
                # zero when more was used than the new size allows, so that
                # raising it again gives back no token already spent.
                bucket.tokens += burst - bucket.burst
            bucket.burst = burst
            bucket.used = now
        if bucket.tokens > 0:
            bucket.tokens -= 1
            return 0.0
        return max(bucket.refilled + period - now, _MIN_WAIT)

    @staticmethod
    def _expire_buckets(table: _Buckets, now: float) -> None:
        # Idle for at least one period means full again: dropping it changes
        # nothing a client can observe. Oldest first, so stop at the first
        # bucket still in use.
        while table:
            oldest = next(iter(table.values()))
            if now - oldest.used < table.ttl:
                return
            table.popitem(last=False)

    # -- concurrency slots -----------------------------------------------------

    def take_slot(self, counter: str, key: str, limit: int) -> bool:
        table = self._slots.get(counter)
        if table is None:
            table = self._slots[counter] = {}
        held = table.get(key, 0)
        if held >= limit or (held == 0 and len(table) >= self.max_keys):
            return False
        table[key] = held + 1
        return True

    def give_slot(self, counter: str, key: str) -> None:
        table = self._slots.get(counter)
        if table is None:
            return
        held = table.get(key, 0) - 1
        if held > 0:
            table[key] = held
        else:
            table.pop(key, None)

    # -- failed logins -----------------------------------------------------------

    def lockout_left(self, counter: str, key: str) -> float:
        table = self._failures.get(counter)
        entry = table.get(key) if table is not None else None
        if entry is None:
            return 0.0
        return max(entry.locked_until - self.clock(), 0.0)

    def add_failure(
        self, counter: str, key: str, guess: bytes, *, window: float, limit: int, lockout: float
    ) -> int:
        """Count one failure (see `StateStore.count_failure`); its count."""
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        table = self._failures.setdefault(counter, OrderedDict())
        self._expire_failures(table, now)
        entry = table.get(key)
        if entry is None or entry.expires <= now:
            table.pop(key, None)
            if len(table) >= self.max_keys:
                table.popitem(last=False)
                self.evicted += 1
            entry = table[key] = _Failures(0, now + window, 0.0, b"")
        else:
            table.move_to_end(key)
        if now < entry.locked_until:
            return 0
        if now >= entry.window_end:
            entry.count, entry.guesses, entry.window_end = 0, b"", now + window
        guess = guess[:GUESS_SIZE].ljust(GUESS_SIZE, b"\0")
        if _has_guess(entry.guesses, guess):
            return entry.count
        entry.count += 1
        if len(entry.guesses) < MAX_GUESSES * GUESS_SIZE:
            entry.guesses += guess
        count = entry.count
        if count >= limit:
            entry.locked_until = now + lockout
            entry.count, entry.guesses, entry.window_end = 0, b"", now
        return count

    @staticmethod
    def _expire_failures(table: OrderedDict[str, _Failures], now: float) -> None:
        # Oldest written first; entries written later almost always expire
        # later, so stopping at the first live one is enough (the cap bounds
        # the rest).
        while table:
            oldest = next(iter(table.values()))
            if oldest.expires > now:
                return
            table.popitem(last=False)

    def remember_key(self, counter: str, key: str, ttl: float) -> None:
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        known = self._known.setdefault(counter, OrderedDict())
        self._expire_known(known, now)
        if key in known:
            known.move_to_end(key)
        elif len(known) >= self.max_keys:
            known.popitem(last=False)
            self.evicted += 1
        known[key] = now + ttl

    @staticmethod
    def _expire_known(known: OrderedDict[str, float], now: float) -> None:
        while known and next(iter(known.values())) <= now:
            known.popitem(last=False)

    # -- counters nobody asks for any more ------------------------------------------

    def _sweep(self, now: float) -> None:
        """Expire every counter's entries, and drop the counters left empty.

        Each counter expires its own entries when it is used; one that a
        reload renamed or removed is never used again, so without this its
        last entries (up to `max_keys`) would stay for the life of the
        process, in the supervisor's host store for the life of the server.
        Runs at most once per `idle_ttl`.
        """
        self._next_sweep = now + self.idle_ttl
        for counter, buckets in list(self._buckets.items()):
            self._expire_buckets(buckets, now)
            if not buckets:
                del self._buckets[counter]
        for counter, failures in list(self._failures.items()):
            self._expire_failures(failures, now)
            if not failures:
                del self._failures[counter]
        for counter, known in list(self._known.items()):
            self._expire_known(known, now)
            if not known:
                del self._known[counter]
        for counter, slots in list(self._slots.items()):
            if not slots:
                del self._slots[counter]

    def counters(self) -> list[str]:
        """The names of the counters it keeps a table for (statistics, tests)."""
        groups = (self._buckets, self._slots, self._failures, self._known)
        return sorted({name for group in groups for name in group})

    def is_known(self, counter: str, key: str) -> bool:
        table = self._known.get(counter)
        expires = table.get(key) if table is not None else None
        return expires is not None and expires > self.clock()

    # -- for tests and statistics ----------------------------------------------

    def key_count(self, counter: str | None = None) -> int:
        """Entries held, for one counter or all."""
        return sum(
            _sizes(group, counter)
            for group in (self._buckets, self._slots, self._failures, self._known)
        )

    def entries(self, counter: str) -> list[str]:
        """The keys one counter holds (tests)."""
        for group in (self._buckets, self._slots, self._failures, self._known):
            table = group.get(counter)
            if table:
                return list(table)
        return []


def _sizes(group: Mapping[str, Sized], counter: str | None) -> int:
    return sum(len(table) for name, table in group.items() if counter in (None, name))


def _has_guess(guesses: bytes, guess: bytes) -> bool:
    return any(guesses[i : i + GUESS_SIZE] == guess for i in range(0, len(guesses), GUESS_SIZE))
