"""The `limits` module: rate and concurrency limits by scope (docs/limits.md).

```
limits {                      # inline: this endpoint's own counters
    all rate 20 1s
    ip concurrency 3
}
limits &inbound               # top-level `limits inbound { ... }`: shared
```

Strategy: three layers, so that the counters can later live in Redis and be
shared by several kittiwake nodes without touching the rest.

- `LimitStore` keeps the counters and answers at once, never waiting: take
  a token from a bucket, take or give back a concurrency slot.
  `MemoryLimitStore` is today's implementation, with a clock that tests
  replace.
- `Limiter` is the policy: the rules in order all → ip → source, the keys
  (Unix clients count as 127.0.0.1, the null sender is ""), and the wait:
  a limit that is hit is retried until the deadline (5 s, docs/limits.md), then
  answered `451 4.4.5`, temporary, so the sender retries later and no mail
  is lost. It never answers 5xx.
- `LimitsModule` is the configuration block; it owns one `Limiter`, so every
  endpoint referencing the same named block shares one set of counters.

Memory: the keys of the `ip` and `source` scopes come from the network, so
they must not grow without bound. A token bucket unused for a minute (or one
period, if longer) is full again, indistinguishable from a new one, and is
dropped; buckets sit in least-recently-used order so expiry costs O(1) per
request. Each rule also keeps at most `max_keys` (20 000) buckets: past that
the least recently used bucket is forgotten, which can only make that one
client's limit more lenient, never refuse anybody. A concurrency counter
exists only while a slot is held (it is deleted when it drops to zero), so
the slot tables are bounded by the transactions in progress; if a rule
already holds slots for `max_keys` different keys, a new key waits like a
full slot and then gets the 451.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from kittiwake import metrics
from kittiwake.config import values
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.errors import SMTPError
from kittiwake.log import Logger
from kittiwake.log import get as get_logger
from kittiwake.module import Module, capability, register

__all__ = [
    "DEFAULT_DEADLINE",
    "IDLE_TTL",
    "MAX_KEYS",
    "LimitStore",
    "Limiter",
    "Limits",
    "LimitsModule",
    "MemoryLimitStore",
    "Rule",
    "Ticket",
]

#: How long a transaction waits for a limit before the 451 (docs/limits.md,
#: "Waiting, then 451").
DEFAULT_DEADLINE = 5.0
#: A bucket unused this long (or one period, if longer) is dropped.
IDLE_TTL = 60.0
#: Buckets (or keys holding slots) kept per rule at most.
MAX_KEYS = 20_000
#: The `ip` key of a client on a Unix socket (docs/limits.md, "Scopes").
UNIX_CLIENT_IP = "127.0.0.1"
#: How often a waiter re-checks a full concurrency slot. Releases in this
#: process wake waiters at once; the poll only matters for releases the
#: process cannot see (another node sharing a future Redis store).
SLOT_POLL = 0.25
#: Shortest sleep between two tries, so rounding can never make a spin loop.
_MIN_WAIT = 0.001

#: Config scope name -> the scope it means. `endpoint` is the spelling of
#: the founding example (tests/e2e/fixtures/seed-smtp.conf), which maddy
#: refuses; kittiwake takes it as `all` (docs/limits.md, "Scopes").
_SCOPES = {
    "all": "all",
    "endpoint": "all",
    "ip": "ip",
    "source": "source",
    "destination": "destination",
    "mx": "mx",
}
_ORDER = {"all": 0, "ip": 1, "source": 2}
#: Scopes whose key is only known to a delivery target (`target.remote`):
#: the recipient's domain, the MX host. Endpoints accept and ignore them.
SCOPED = ("destination", "mx")


def _high_load() -> SMTPError:
    return SMTPError(451, (4, 4, 5), "High load, try again later")


# -- the store ---------------------------------------------------------------


class LimitStore(Protocol):
    """Where the counters live; every call answers at once.

    `limit` names one rule (unique within a `Limiter`), `key` the client,
    sender domain or "" for the `all` scope. A store may be shared by
    several processes (Redis): the policy above it assumes nothing else.
    """

    async def acquire_token(self, limit: str, key: str, burst: int, period: float) -> float:
        """Take a token from the bucket `(limit, key)`.

        The bucket holds `burst` tokens, is full when first used, and is
        refilled to full every `period` seconds. Returns 0.0 when a token
        was taken, otherwise the seconds until the next refill (a hint for
        when to try again).
        """
        ...

    async def acquire_slot(self, limit: str, key: str, max_slots: int) -> bool:
        """Take one of `max_slots` slots of `(limit, key)`; False if all are held."""
        ...

    async def release_slot(self, limit: str, key: str) -> None:
        """Give back a slot taken by `acquire_slot`."""
        ...


@dataclass(slots=True)
class _Bucket:
    tokens: int
    refilled: float  # the last refill-to-full time; refills follow every period
    used: float  # last access, for idle expiry


class MemoryLimitStore:
    """The in-process `LimitStore`, bounded in memory (see the module docstring)."""

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
        # Per rule; least recently used first.
        self._buckets: dict[str, OrderedDict[str, _Bucket]] = {}
        self._slots: dict[str, dict[str, int]] = {}
        #: Buckets forgotten because a rule reached `max_keys` (for the log).
        self.evicted = 0

    async def acquire_token(self, limit: str, key: str, burst: int, period: float) -> float:
        now = self.clock()
        table = self._buckets.get(limit)
        if table is None:
            table = self._buckets[limit] = OrderedDict()
        self._expire(table, now, max(self.idle_ttl, period))
        bucket = table.get(key)
        if bucket is None:
            if len(table) >= self.max_keys:
                table.popitem(last=False)
                self.evicted += 1
            bucket = table[key] = _Bucket(burst, now, now)
        else:
            table.move_to_end(key)
            elapsed = now - bucket.refilled
            if elapsed >= period:
                # Refills happen on a fixed beat from the bucket's creation,
                # like a ticker: skip the beats nobody was there to see.
                bucket.refilled += (elapsed // period) * period
                bucket.tokens = burst
            bucket.used = now
        if bucket.tokens > 0:
            bucket.tokens -= 1
            return 0.0
        return max(bucket.refilled + period - now, _MIN_WAIT)

    @staticmethod
    def _expire(table: OrderedDict[str, _Bucket], now: float, ttl: float) -> None:
        # Idle for at least one period means full again: dropping it changes
        # nothing a client can observe. Oldest first, so stop at the first
        # bucket still in use.
        while table:
            oldest = next(iter(table.values()))
            if now - oldest.used < ttl:
                return
            table.popitem(last=False)

    async def acquire_slot(self, limit: str, key: str, max_slots: int) -> bool:
        table = self._slots.get(limit)
        if table is None:
            table = self._slots[limit] = {}
        held = table.get(key, 0)
        if held >= max_slots or (held == 0 and len(table) >= self.max_keys):
            return False
        table[key] = held + 1
        return True

    async def release_slot(self, limit: str, key: str) -> None:
        table = self._slots.get(limit)
        if table is None:
            return
        held = table.get(key, 0) - 1
        if held > 0:
            table[key] = held
        else:
            table.pop(key, None)

    def key_count(self, limit: str | None = None) -> int:
        """Buckets and slot counters held, for one rule or all (tests, stats)."""
        tables: list[dict[str, _Bucket] | dict[str, int]] = []
        for group in (self._buckets, self._slots):
            tables.extend(t for name, t in group.items() if limit is None or name == limit)
        return sum(len(t) for t in tables)


# -- the policy --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One `SCOPE KIND ARGS` line that limits anything.

    `kind` is `rate` (uses `burst`, `period`) or `concurrency` (uses
    `max_slots`). `name` identifies the rule's counters in the store.
    """

    scope: str  # all | ip | source | destination | mx
    kind: str  # rate | concurrency
    name: str
    burst: int = 0
    period: float = 1.0
    max_slots: int = 0


class Ticket:
    """The concurrency slots one transaction holds; give them back with `release`.

    Rate tokens are spent for good and are not part of a ticket. `release`
    is idempotent: the session may call it from every path that ends a
    transaction (DATA done, RSET, abort, disconnect).
    """

    __slots__ = ("_held", "_limiter")

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter
        self._held: list[tuple[str, str]] = []

    @property
    def slots(self) -> int:
        """Slots still held."""
        return len(self._held)

    async def release(self) -> None:
        if not self._held:
            return
        while self._held:
            limit, key = self._held.pop()
            try:
                await self._limiter.store.release_slot(limit, key)
            except Exception as exc:  # a remote store may fail; free the rest
                self._limiter.log.error("cannot release a limit slot", err=exc, limit=limit)
        self._limiter.wake_waiters()

    async def __aenter__(self) -> Ticket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


class Limiter:
    """Applies a list of rules to transactions, waiting when one is hit."""

    def __init__(
        self, rules: Sequence[Rule], store: LimitStore | None = None, *, log: Logger | None = None
    ) -> None:
        # Order all -> ip -> source, file order within a scope (docs/limits.md,
        # "When a limit is taken and given back").
        self.rules = sorted((r for r in rules if r.scope in _ORDER), key=lambda r: _ORDER[r.scope])
        #: destination and mx rules, for `take_scoped` (target.remote).
        self.scoped_rules = [r for r in rules if r.scope in SCOPED]
        self.store: LimitStore = store if store is not None else MemoryLimitStore()
        self.log = log if log is not None else get_logger("limits")
        self._waiters: set[asyncio.Future[None]] = set()

    async def take(
        self, ip: str | None, source_domain: str, *, deadline_s: float = DEFAULT_DEADLINE
    ) -> Ticket:
        """Take a token or slot of every rule for one transaction.

        `ip` is the client address (`None` for a Unix-socket client),
        `source_domain` the normalised sender domain ("" for `<>`). Waits up
        to `deadline_s` seconds in all when a limit is hit, then raises
        `SMTPError(451, (4,4,5), "High load, try again later")`. Slots taken
        before the failure are given back; so are they if the caller is
        cancelled while waiting.
        """
        keys = {"all": "", "ip": _ip_key(ip), "source": source_domain}
        return await self._take([(rule, keys[rule.scope]) for rule in self.rules], deadline_s)

    async def take_scoped(
        self, scope: str, key: str, *, deadline_s: float = DEFAULT_DEADLINE
    ) -> Ticket:
        """Take the `destination` (key: recipient domain) or `mx` (key: MX
        host) rules, as `take` does the others; `target.remote` calls it."""
        rules = [r for r in self.scoped_rules if r.scope == scope]
        return await self._take([(rule, key) for rule in rules], deadline_s)

    async def _take(self, wanted: list[tuple[Rule, str]], deadline_s: float) -> Ticket:
        ticket = Ticket(self)
        if not wanted:
            return ticket
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        try:
            for rule, key in wanted:
                waited = False
                while (wait := await self._try(rule, key, ticket)) > 0:
                    if not waited:  # one wait per transaction and rule
                        waited = True
                        metrics.current().limit_wait(rule.scope)
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        metrics.current().limit_refusal(rule.scope)
                        self.log.info(
                            "limit reached",
                            scope=rule.scope,
                            kind=rule.kind,
                            key=key,
                            waited=round(deadline_s, 3),
                        )
                        raise _high_load()
                    await self._sleep(min(wait, remaining))
        except BaseException:
            await ticket.release()
            raise
        return ticket

    async def _try(self, rule: Rule, key: str, ticket: Ticket) -> float:
        """0.0 when the rule let the transaction through, else a wait hint."""
        if rule.kind == "rate":
            return await self.store.acquire_token(rule.name, key, rule.burst, rule.period)
        if await self.store.acquire_slot(rule.name, key, rule.max_slots):
            ticket._held.append((rule.name, key))
            return 0.0
        return SLOT_POLL

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until this process releases a slot."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, max(seconds, _MIN_WAIT))
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    def wake_waiters(self) -> None:
        """A slot was released: every waiter tries again now."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _ip_key(ip: str | None) -> str:
    """One key per client host, whatever text form its address came in."""
    if ip is None:
        return UNIX_CLIENT_IP
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


# -- the module --------------------------------------------------------------


@capability("limits")
@runtime_checkable
class Limits(Protocol):
    """What an endpoint uses: one ticket per transaction."""

    async def take(
        self, ip: str | None, source_domain: str, *, deadline_s: float = DEFAULT_DEADLINE
    ) -> Ticket: ...

    async def take_scoped(
        self, scope: str, key: str, *, deadline_s: float = DEFAULT_DEADLINE
    ) -> Ticket: ...


@register("limits")
class LimitsModule(Module):
    """`limits [NAME] { SCOPE KIND ARGS ... }`, inline or top level."""

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error("limits takes no arguments: write the limits in its block")
        rules: list[Rule] = []
        for index, node in enumerate(cfg.node.block):
            rule = _parse_rule(node, index)
            if rule is not None:
                rules.append(rule)
        for name in {node.name for node in cfg.node.block}:
            cfg.all(name)  # every line was read above
        cfg.finish()
        self.limiter = Limiter(rules, log=self.log)

    @property
    def rules(self) -> list[Rule]:
        return self.limiter.rules

    def use_store(self, store: LimitStore) -> None:
        """Keep the counters elsewhere (tests: a fake clock; later: Redis)."""
        self.limiter.store = store

    async def take(
        self, ip: str | None, source_domain: str, *, deadline_s: float = DEFAULT_DEADLINE
    ) -> Ticket:
        return await self.limiter.take(ip, source_domain, deadline_s=deadline_s)

    async def take_scoped(
        self, scope: str, key: str, *, deadline_s: float = DEFAULT_DEADLINE
    ) -> Ticket:
        return await self.limiter.take_scoped(scope, key, deadline_s=deadline_s)


def _parse_rule(node: Node, index: int) -> Rule | None:
    """One line; None when it limits nothing (0 = unlimited, `destination`).

    Checks in maddy's order (arguments, kind, then scope), so a line with
    two mistakes reports the same one.
    """
    if node.children is not None:
        raise node.error(f"{node.name}: unexpected block")
    if not node.args:
        raise node.error("at least two arguments are required")
    kind, args = node.args[0], node.args[1:]
    burst, period, max_slots = 0, 1.0, 0
    if kind == "rate":
        burst, period = _parse_rate(node, args)
        unlimited = burst == 0
    elif kind == "concurrency":
        max_slots = _parse_concurrency(node, args)
        unlimited = max_slots <= 0
    else:
        raise node.error(f"unknown limit kind: {kind}")
    scope = _SCOPES.get(node.name)
    if scope is None:
        raise node.error(f"unknown limit scope: {node.name}")
    if unlimited:
        return None
    # destination and mx rules are kept for target.remote; an endpoint
    # takes its limits before any recipient is known and ignores them, as
    # maddy does (docs/limits.md).
    name = f"{scope}.{kind}.{index}"
    return Rule(scope, kind, name, burst=burst, period=period, max_slots=max_slots)


def _parse_rate(node: Node, args: list[str]) -> tuple[int, float]:
    if not args:
        raise node.error("at least burst size is needed")
    if len(args) > 2:
        raise node.error("too many arguments")
    try:
        burst = values.parse_int(args[:1])
    except ValueError:
        raise node.error(f"invalid burst size {args[0]!r}: expected an integer") from None
    if burst < 0:
        raise node.error(f"invalid burst size {burst}: must not be negative (0 = unlimited)")
    period = 1.0
    if len(args) == 2:
        try:
            period = values.parse_duration(args[1:])
        except ValueError as exc:
            raise node.error(f"invalid rate period: {exc}") from None
        if period <= 0:
            raise node.error("invalid rate period: must be greater than zero")
    return burst, period


def _parse_concurrency(node: Node, args: list[str]) -> int:
    if len(args) != 1:
        raise node.error("max concurrency value is needed")
    try:
        return values.parse_int(args)
    except ValueError:
        raise node.error(f"invalid max concurrency {args[0]!r}: expected an integer") from None
