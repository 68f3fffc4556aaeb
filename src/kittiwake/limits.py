"""The `limits` module: rate and concurrency limits by scope (docs/limits.md).

```
limits {                      # inline: this endpoint's own counters
    all rate 20 1s
    ip concurrency 3
}
limits &inbound               # top-level `limits inbound { ... }`: shared
limits {                      # counters in Redis, shared by several nodes
    state &cluster
    all rate 20 1s
}
```

Strategy: three layers, so that where the counters live is not the
policy's business.

- A `StateStore` (kittiwake/state/base.py) keeps the counters and answers
  at once, never waiting: take a token from a bucket, take or give back a
  concurrency slot. The in-process store is the default; with worker
  processes it is the supervisor's host store, and `state &NAME` puts the
  counters in a shared one (docs/state.md).
- `Limiter` is the policy: the rules in order all -> ip -> source, the keys
  (Unix clients count as 127.0.0.1, the null sender is ""), and the wait:
  a limit that is hit is retried until the deadline (5 s, docs/limits.md),
  then answered `451 4.4.5`, temporary, so the sender retries later and no
  mail is lost. It never answers 5xx. The rules still to take go to the
  store together, one decision (one round trip to Redis) per try.
- `LimitsModule` is the configuration block; it owns one `Limiter`, so every
  endpoint referencing the same named block shares one set of counters.

Counter names are stable across nodes, reloads and reorderings of the
block: `limits/OWNER/SCOPE.KIND.N`, where OWNER is the block's name (or the
endpoint's counter name for an inline block) and N counts the lines of the
same scope and kind.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Sequence
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
from kittiwake.state.base import Held, Rate, Slot, StateStore, StoreUnavailable
from kittiwake.state.memory import MemoryStore

__all__ = [
    "DEFAULT_DEADLINE",
    "Limiter",
    "Limits",
    "LimitsModule",
    "LimitsUnavailable",
    "Rule",
    "Ticket",
]

#: How long a transaction waits for a limit before the 451 (docs/limits.md,
#: "Waiting, then 451").
DEFAULT_DEADLINE = 5.0
#: The `ip` key of a client on a Unix socket (docs/limits.md, "Scopes").
UNIX_CLIENT_IP = "127.0.0.1"
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


class LimitsUnavailable(SMTPError):
    """The limits' shared store cannot answer and they fail closed: no limit
    was reached, the decision could not be made (docs/state.md)."""


def _unavailable() -> SMTPError:
    """A shared store that cannot answer, with `fail_closed` (docs/state.md)."""
    return LimitsUnavailable(
        451, (4, 4, 5), "Sending limits cannot be checked now, try again later"
    )


# -- the policy --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One `SCOPE KIND ARGS` line that limits anything.

    `kind` is `rate` (uses `burst`, `period`) or `concurrency` (uses
    `max_slots`). `name` identifies the rule's counters in the store,
    after the limiter's prefix.
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
        self._held: list[Held] = []

    @property
    def slots(self) -> int:
        """Slots still held."""
        return len(self._held)

    async def release(self) -> None:
        if not self._held:
            return
        # Last taken, first given back; the ticket is empty from here on,
        # whatever the store answers.
        held, self._held = self._held[::-1], []
        limiter = self._limiter
        try:
            await limiter.store.release(held)
        except StoreUnavailable:
            pass  # the store logged it; shared slots expire with their lease
        except Exception as exc:
            limiter.log.error("cannot release limit slots", err=exc, slots=len(held))
        limiter.wake_waiters()

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
        self,
        rules: Sequence[Rule],
        store: StateStore | None = None,
        *,
        log: Logger | None = None,
        prefix: str = "",
    ) -> None:
        """`prefix` goes before every rule's name in the store (its owner)."""
        # Order all -> ip -> source, file order within a scope (docs/limits.md,
        # "When a limit is taken and given back").
        self.rules = sorted((r for r in rules if r.scope in _ORDER), key=lambda r: _ORDER[r.scope])
        #: destination and mx rules, for `take_scoped` (target.remote).
        self.scoped_rules = [r for r in rules if r.scope in SCOPED]
        self.store: StateStore = store if store is not None else MemoryStore()
        self._counters: dict[str, str] = {}
        self._keyless: dict[str, Rate | Slot] = {}
        self.prefix = prefix
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
        cancelled while waiting. A shared store that cannot answer lets the
        transaction through (`fail_open`) or answers 451 at once.
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

    @property
    def prefix(self) -> str:
        """What goes before every rule's name in the store (its owner)."""
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: str) -> None:
        self._prefix = prefix
        # Made once, not per transaction: the counter names, and the whole
        # request of each rule for the key "" (`all`, the null sender).
        self._counters = {r.name: prefix + r.name for r in (*self.rules, *self.scoped_rules)}
        self._keyless = {r.name: self._request(r, "") for r in (*self.rules, *self.scoped_rules)}

    def _request(self, rule: Rule, key: str) -> Rate | Slot:
        if rule.kind == "rate":
            return Rate(self._counters[rule.name], key, rule.burst, rule.period)
        return Slot(self._counters[rule.name], key, rule.max_slots)

    def _requests(self, wanted: list[tuple[Rule, str]]) -> list[Rate | Slot]:
        keyless = self._keyless
        return [keyless[rule.name] if not key else self._request(rule, key) for rule, key in wanted]

    async def _take(self, wanted: list[tuple[Rule, str]], deadline_s: float) -> Ticket:
        ticket = Ticket(self)
        if not wanted:
            return ticket
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        waited: Rule | None = None  # one wait counted per transaction and rule
        try:
            while True:
                try:
                    grant = await self.store.acquire(self._requests(wanted))
                except StoreUnavailable:
                    if self.store.fail_open:
                        return ticket  # the rules not yet taken are not applied
                    raise _unavailable() from None
                ticket._held.extend(grant.held)
                if grant.refused < 0:
                    return ticket
                # The rules before the refused one are taken; try from it on.
                wanted = wanted[grant.refused :]
                rule, key = wanted[0]
                if waited is not rule:
                    waited = rule
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
                await self._sleep(min(grant.wait, remaining))
        except BaseException:
            await ticket.release()
            raise

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


@functools.lru_cache(maxsize=4096)
def _ip_key(ip: str | None) -> str:
    """One key per client host, whatever text form its address came in
    (kept per text: parsing an address costs more than a decision)."""
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
        # `state &NAME`: counters in a shared store (docs/state.md); the
        # other lines are all rules.
        self.state: StateStore | None = cfg.module("state", StateStore, "state")
        rules: list[Rule] = []
        seen: dict[tuple[str, str], int] = {}
        for node in cfg.node.block:
            if node.name == "state":
                continue
            rule = _parse_rule(node, seen)
            if rule is not None:
                rules.append(rule)
        for name in {node.name for node in cfg.node.block}:
            cfg.all(name)  # every line was read above
        cfg.finish()
        # Without a `state`: the server's host store when it has worker
        # processes (docs/state.md, "The host store"), else this block's own.
        host = self.container.shared.host_state
        store: StateStore
        if self.state is not None:
            store = self.state
        elif host is not None:
            store = host.store
        else:
            store = MemoryStore()
        self.limiter = Limiter(rules, store, log=self.log, prefix=self._prefix(self.instance_name))

    @staticmethod
    def _prefix(owner: str) -> str:
        return f"limits/{owner}/"

    @property
    def rules(self) -> list[Rule]:
        return self.limiter.rules

    def adopt(self, state: StateStore | None, owner: str) -> None:
        """An inline block takes its endpoint's `state` (unless it names its
        own) and counter names under `owner`, the endpoint's, so that the
        same endpoint on every node shares them (docs/state.md)."""
        if self.instance_name:
            return  # a named block: its own store and its own name
        self.limiter.prefix = self._prefix(owner)
        if self.state is None and state is not None:
            self.state = self.limiter.store = state

    def use_store(self, store: StateStore) -> None:
        """Keep the counters elsewhere (tests: a fake clock)."""
        self.limiter.store = store

    async def take(
        self, ip: str | None, source_domain: str, *, deadline_s: float = DEFAULT_DEADLINE
    ) -> Ticket:
        return await self.limiter.take(ip, source_domain, deadline_s=deadline_s)

    async def take_scoped(
        self, scope: str, key: str, *, deadline_s: float = DEFAULT_DEADLINE
    ) -> Ticket:
        return await self.limiter.take_scoped(scope, key, deadline_s=deadline_s)


def _parse_rule(node: Node, seen: dict[tuple[str, str], int]) -> Rule | None:
    """One line; None when it limits nothing (0 = unlimited, `destination`).

    `seen` counts the lines of each scope and kind so far: the rule's name
    is `SCOPE.KIND.N`, stable when other lines are added, removed or moved.

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
    index = seen.get((scope, kind), 0)
    seen[(scope, kind)] = index + 1
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
