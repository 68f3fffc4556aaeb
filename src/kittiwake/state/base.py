"""The shared-state contract: the counters that decide who may do how much.

Everything that must hold across processes and nodes goes through this one
interface (docs/state.md):

- the `limits` counters: rate buckets and concurrency slots of every scope
  (docs/limits.md);
- the connection caps `max_connections` and `max_connections_per_ip`, which
  are concurrency slots held for a connection's life;
- the failed-AUTH counters of `auth_ratelimit`, per client address and per
  user name, and the addresses known for a user (docs/auth.md).

Strategy: each method is one *decision* and a store answers it in one step
(one Lua script, one round trip, for Redis), so that no other node can act
between reading a counter and changing it. Policy (which rules apply, the
keys, waiting, the replies) stays with the callers; a store only counts.
Counters are named `KIND/OWNER/RULE` by their callers (`limits/inbound/
ip.concurrency.0`, `conn/smtp/25/ip`), keys are client addresses, sender
domains, user names, or "" for a counter of everybody.

A store that cannot answer raises `StoreUnavailable`, and the caller
applies the store's `fail_open`: let the request through, or refuse it with
a temporary reply. A store never raises anything else for an outage, and
never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kittiwake.module import capability

__all__ = [
    "Failure",
    "Grant",
    "Held",
    "Locks",
    "Rate",
    "Slot",
    "StateStore",
    "StoreUnavailable",
]


class StoreUnavailable(Exception):
    """The store could not answer (unreachable, timed out, refused the script).

    The store has logged it (once per interval, not per decision); the
    caller only applies the fail mode.
    """


# Requests and holdings are made for every transaction and connection, so
# they are plain slotted dataclasses: a frozen one costs three times as much
# to build (each field goes through object.__setattr__). Nobody changes them.


@dataclass(slots=True)
class Rate:
    """Take one token from the bucket `(counter, key)`.

    The bucket holds `burst` tokens, is full when first used, and is
    refilled to full every `period` seconds, on a fixed beat from its
    creation (docs/limits.md, "Kinds").
    """

    counter: str
    key: str
    burst: int
    period: float


@dataclass(slots=True)
class Held:
    """A slot taken by `acquire`; give it to `release` exactly once.

    `lease` names this holding in a shared store, so that it can be renewed
    while held and expires if its holder dies; "" in a store of this process.
    """

    counter: str
    key: str
    lease: str = field(default="", kw_only=True)


@dataclass(slots=True)
class Slot(Held):
    """Take one of the `limit` slots of `(counter, key)` until it is released.

    A granted request is also its own holding: the in-process store hands
    it back as it is, one object less per slot.
    """

    limit: int


@dataclass(slots=True)
class Grant:
    """What `acquire` took.

    Requests are granted in order until the first that is refused:
    `refused` is its index (-1: all were granted) and `wait` the seconds
    after which it may succeed (a hint: the bucket's next refill, or a
    poll interval for a full slot). Tokens taken before it are spent; the
    slots taken before it are in `held`, and the caller gives them back.
    """

    held: list[Held] = field(default_factory=list)
    refused: int = -1
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed login to count against `(counter, key)` (docs/auth.md).

    The window starts with the first counted failure and lasts `window`
    seconds. The failure that brings the count to `limit` locks the key for
    `lockout` seconds and clears the count.
    """

    counter: str
    key: str
    window: float
    limit: int
    lockout: float


@dataclass(frozen=True, slots=True)
class Locks:
    """What `locked` found: seconds of lockout left per counter asked (0.0:
    not locked), and whether the `known` key was remembered."""

    left: tuple[float, ...]
    known: bool


@capability("shared state store")
@runtime_checkable
class StateStore(Protocol):
    """Where the counters live. Every call is one decision and answers at once.

    `shared`: other processes or nodes see the same counters (they outlive
    this process and a reload). `fail_open`: what callers do when a call
    raises `StoreUnavailable`: let the request through (True) or refuse it
    with a temporary reply (False).
    """

    shared: bool
    fail_open: bool

    async def acquire(self, wanted: Sequence[Rate | Slot]) -> Grant:
        """Take a token or a slot of each request, in order, until one is refused."""
        ...

    async def release(self, held: Sequence[Held]) -> None:
        """Give back slots `acquire` took. Unknown or expired ones are ignored."""
        ...

    async def locked(self, counters: Sequence[tuple[str, str]], known: tuple[str, str]) -> Locks:
        """The lockouts of `(counter, key)` pairs and whether `known` is remembered."""
        ...

    async def count_failure(self, failures: Sequence[Failure], guess: bytes) -> list[int]:
        """Count one failed login against each counter; the count of each.

        `guess` (8 bytes, a keyed hash of name and password) already
        counted in a key's window is not counted again. The failure that
        reaches a limit returns the limit and starts the lockout; while a
        key is locked nothing is counted and 0 is returned.
        """
        ...

    async def remember(self, known: tuple[str, str], ttl: float) -> None:
        """Remember `(counter, key)` for `ttl` seconds (an address known for a user)."""
        ...
