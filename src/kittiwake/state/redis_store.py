"""The Redis (or Valkey) `StateStore`: counters shared by several nodes.

Strategy: every decision is one Lua script (kittiwake/state/lua.py), sent
with EVALSHA over redis-py's asyncio client: one round trip, atomic, so two
nodes can never both take the last slot. Each call is bounded by `timeout`
in all (connecting included); a call that fails, times out or finds the
store in its retry window raises `StoreUnavailable`, and `Outage` keeps
the log to one line per interval. Nothing here blocks the event loop.

Concurrency slots are *leases*: a slot is a member of a sorted set scored
with its expiry (`lease` seconds ahead). A background task renews every
lease this store holds each `lease / 3` seconds, in one script call per
batch, so a slot lives as long as its holder and no longer: the slots of
a node that died, or lost its network, expire within `lease` and the other
nodes count without them. A lease is dropped from the renewal list before
it is released, so one whose release fails is not kept alive either.

Key layout (docs/state.md): `PREFIX` then `rate:`, `slot:`, `fail:` or
`known:`, then the counter name, `:`, and the key. A `:` or `%` in a
counter name is written `%3A`, `%25`; the key (an address, a domain, a
user name) comes last as it is, so no two counters can share a Redis key.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, RedisError

from kittiwake import metrics
from kittiwake.log import Logger
from kittiwake.state import lua
from kittiwake.state.base import Failure, Grant, Held, Locks, Rate, Slot, StoreUnavailable
from kittiwake.state.memory import GUESS_SIZE, IDLE_TTL, MAX_GUESSES
from kittiwake.state.outage import Outage, reason_of

__all__ = ["POOL_SIZE", "RedisStore", "connect", "connect_sentinel", "describe"]

#: Connections to Redis at most; a decision waits (within its timeout) for
#: a free one rather than opening hundreds under a flood.
POOL_SIZE = 32
#: Leases renewed per script call.
RENEW_BATCH = 1000
#: How often a waiter re-checks a full slot (a hint in `Grant.wait`).
SLOT_POLL = 0.25

_Script = Callable[[list[str], list[str | bytes | int]], Any]


def connect(url: str, *, timeout: float, connect_timeout: float, root_ca: str = "") -> Redis:
    """A client for `url`; it connects on first use, not now (no I/O here).

    `root_ca`: PEM certificates trusted beside the system's (`rediss://`).

    One retry on a connection error, at once: after the server restarts,
    the pool's old connections are dead and the first command on each
    fails; the retry reconnects. The caller bounds the whole call anyway.
    """
    retry = Retry(NoBackoff(), 1)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=retry,
        **({"ssl_ca_data": root_ca} if root_ca else {}),
    )
    return Redis(connection_pool=pool, retry=retry)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections, found through the Sentinels, at most
    `max_connections` of them, waiting (within `timeout`) for a free one as
    `connect`'s pool does instead of failing under a flood.

    `on_master` is called with (host, port) whenever the Sentinels name
    another master than before (the first time included), so the log says
    which server holds the counters, and when a failover moved them.
    """

    on_master: Callable[[str, int], None] | None = None
    _named: tuple[str, int] | None = None

    async def get_master_address(self) -> tuple[str, int]:
        host, port = await cast(Any, super()).get_master_address()
        found = (str(host), int(port))
        if found != self._named:
            self._named = found
            if self.on_master is not None:
                self.on_master(*found)
        return found


def connect_sentinel(
    master: str,
    sentinels: list[tuple[str, int]],
    *,
    db: int,
    username: str | None,
    password: str | None,
    sentinel_username: str | None = None,
    sentinel_password: str | None,
    tls: bool = False,
    root_ca: str = "",
    timeout: float,
    connect_timeout: float,
    on_master: Callable[[str, int], None] | None = None,
) -> Redis:
    """A client for the master the Sentinels name `master`; no I/O here.

    Each new connection asks the Sentinels (in turn, the first that knows
    wins) where the master is. When a failover moves it, the connections
    to the old master fail; the one retry reconnects through the Sentinels
    and reaches the new master. `password` is the master's, and
    `sentinel_username`/`sentinel_password` the Sentinels' own (the same
    for every Sentinel), which may differ. `on_master`: see the pool.

    `tls`: TLS to the Sentinels and to the master, verified as a
    `rediss://` endpoint is (the system's CAs and `root_ca`'s, and the certificate must
    name the address the connection goes to: the one written here for a
    Sentinel, the one the Sentinels announce for the master).
    """
    retry = Retry(NoBackoff(), 1)
    # The Sentinels are asked in turn within one decision's `timeout`: each
    # gets a share of it, twice (the retry), so that one that hangs (a host
    # that drops packets, or a port that does not speak TLS when `tls` is
    # on) leaves the next one and the master time to answer. A Sentinel
    # answers in milliseconds.
    share = min(connect_timeout, timeout / (2 * len(sentinels) + 1))
    asking: dict[str, Any] = {
        "socket_timeout": share,
        "socket_connect_timeout": share,
        "username": sentinel_username,
        "password": sentinel_password,
        "retry": retry,
    }
    secure: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required"} if tls else {}
    if tls and root_ca:
        secure["ssl_ca_data"] = root_ca
    manager = Sentinel(sentinels, sentinel_kwargs={**asking, **secure})
    client: Redis = manager.master_for(
        master,
        connection_pool_class=_BlockingSentinelPool,
        db=db,
        username=username,
        password=password,
        max_connections=POOL_SIZE,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=retry,
        **secure,
    )
    pool = client.connection_pool
    assert isinstance(pool, _BlockingSentinelPool)
    pool.on_master = on_master
    return client


def describe(exc: BaseException, *, sentinel: bool, tls: bool = False) -> str:
    """What a failed call says in the log: the cause, without redis-py's internals.

    When no Sentinel named a master, redis-py's text holds the whole repr of
    each Sentinel's client; each is cut down to `Sentinel HOST:PORT`. A
    refused login says whose password it is about. The usual signs of TLS on
    one side only get a hint, phrased as the question it is: a TLS port
    resets a connection that starts in plain text, and a plain port never
    answers a TLS handshake (other servers may do either for other reasons).
    """
    text = str(exc)
    name = type(exc).__name__
    if isinstance(exc, MasterNotFoundError):
        text = _SENTINEL_REPR.sub(r"Sentinel \1:\2: ", text)
        if "AuthenticationError" in text or "NOAUTH" in text:
            return f"{name}: {text} (the login to a Sentinel failed: check sentinel_password)"
        return f"{name}: {text}{_tls_hint(exc, text, sentinel=sentinel, tls=tls)}"
    if isinstance(exc, AuthenticationError) or "NOAUTH" in text or "HELLO must be called" in text:
        whose = "password" if sentinel else "the password in the endpoint URL"
        return f"{name}: {text} (the login to the Redis master failed: check {whose})"
    return reason_of(exc) + _tls_hint(exc, text, sentinel=sentinel, tls=tls)


def _tls_hint(exc: BaseException, text: str, *, sentinel: bool, tls: bool) -> str:
    if not tls and (isinstance(exc, ConnectionResetError) or "Connection reset by peer" in text):
        return f" (is it a TLS port? then {'tls yes' if sentinel else 'rediss://'})"
    if tls and isinstance(exc, TimeoutError):
        return f" (is it a TLS port? if not, {'tls no' if sentinel else 'redis://'})"
    return ""


#: One Sentinel's client in redis-py's MasterNotFoundError text, and its error's prefix.
_SENTINEL_REPR = re.compile(
    r"<redis\.asyncio\.client\.Redis\(.*?[(,]host=([^,]*),port=(\d+)\b.*?\)>\)>\)> - (?:\w+:)?"
)


class RedisStore:
    """A `StateStore` in Redis; `clock` (ms) is for tests, else Redis's own."""

    shared = True

    def __init__(
        self,
        client: Redis,
        log: Logger,
        *,
        name: str = "redis",
        prefix: str = "kittiwake:",
        fail_open: bool = False,
        timeout: float = 1.0,
        lease: float = 30.0,
        clock: Callable[[], int] | None = None,
        log_fields: dict[str, object] | None = None,
        sentinels: str = "",
        tls: bool = False,
    ) -> None:
        """`log_fields`: added to the outage lines (a worker's `pid`);
        `sentinels`: their addresses when the master is found through
        Sentinels, for the log's words ("" with an endpoint)."""
        self.client = client
        self.log = log
        #: The `state.redis` block's name: the `store` label of its metrics.
        self.name = name
        self.prefix = prefix
        self.fail_open = fail_open
        self.timeout = timeout
        self.lease = lease
        self.clock = clock
        #: Who did not answer when a whole call timed out (for the log).
        self._whom = (
            f" from the Sentinels ({sentinels}) or the master they named" if sentinels else ""
        )
        mode = "fail_open" if fail_open else "fail_closed"
        self.outage = Outage(
            log,
            mode=mode,
            fields=log_fields,
            describe=lambda exc: describe(exc, sentinel=bool(sentinels), tls=tls),
        )
        self._acquire = self._script(lua.ACQUIRE)
        self._release = self._script(lua.RELEASE)
        self._renew = self._script(lua.RENEW)
        self._locked = self._script(lua.LOCKED)
        self._failure = self._script(lua.FAILURE)
        # Counter names are few and fixed (configuration lines): their
        # escaped form is made once.
        self._bases: dict[tuple[str, str], str] = {}
        #: This process's leases: lease id -> the sorted set it is in.
        self.leases: dict[str, str] = {}
        # Lease ids: unique across nodes and restarts, and telling whose.
        self._holder = f"{socket.gethostname()}/{os.getpid()}/{os.urandom(3).hex()}"
        self._ids = itertools.count(1)
        self._renewer: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None

    def _script(self, text: str) -> _Script:
        script: AsyncScript = self.client.register_script(text)

        def call(keys: list[str], args: list[str | bytes | int]) -> Any:
            return script(keys=keys, args=args)

        return call

    # -- the interface ---------------------------------------------------------

    async def acquire(self, wanted: Sequence[Rate | Slot]) -> Grant:
        keys: list[str] = []
        args: list[str | bytes | int] = [self._now(), _ms(self.lease), _ms(IDLE_TTL)]
        leases: list[str] = []
        for request in wanted:
            if isinstance(request, Rate):
                keys.append(f"{self._base('rate', request.counter)}{request.key}")
                args += ["r", request.burst, _ms(request.period)]
                leases.append("")
            else:
                lease = f"{self._holder}/{next(self._ids)}"
                keys.append(f"{self._base('slot', request.counter)}{request.key}")
                args += ["s", request.limit, lease]
                leases.append(lease)
        refused, wait_ms = await self._call(self._acquire, keys, args)
        grant = Grant(refused=int(refused))
        taken = len(wanted) if grant.refused < 0 else grant.refused
        for request, key, lease in zip(wanted[:taken], keys, leases, strict=False):
            if lease:
                grant.held.append(Held(request.counter, request.key, lease=lease))
                self.leases[lease] = key
        if grant.refused >= 0:
            grant.wait = int(wait_ms) / 1000 if int(wait_ms) > 0 else SLOT_POLL
        return grant

    async def release(self, held: Sequence[Held]) -> None:
        keys: list[str] = []
        args: list[str | bytes | int] = [""]  # ARGV[1]: the time, unused
        for slot in held:
            # Off the renewal list first: a lease whose release fails expires.
            key = self.leases.pop(slot.lease, "")
            if key:
                keys.append(key)
                args.append(slot.lease)
        if keys:
            await self._call(self._release, keys, args)

    async def locked(self, counters: Sequence[tuple[str, str]], known: tuple[str, str]) -> Locks:
        keys = [self._base("fail", counter) + key for counter, key in counters]
        keys.append(self._known_key(known))
        out = await self._call(self._locked, keys, [self._now()])
        return Locks(tuple(int(ms) / 1000 for ms in out[:-1]), bool(int(out[-1])))

    async def count_failure(self, failures: Sequence[Failure], guess: bytes) -> list[int]:
        keys = [self._base("fail", f.counter) + f.key for f in failures]
        guess = guess[:GUESS_SIZE].ljust(GUESS_SIZE, b"\0")
        args: list[str | bytes | int] = [self._now(), guess, MAX_GUESSES * GUESS_SIZE]
        for f in failures:
            args += [_ms(f.window), f.limit, _ms(f.lockout)]
        return [int(n) for n in await self._call(self._failure, keys, args)]

    async def remember(self, known: tuple[str, str], ttl: float) -> None:
        key = self._known_key(known)
        await self._run(self.client.set(key, b"1", px=_ms(ttl)))

    def _known_key(self, known: tuple[str, str]) -> str:
        return self._base("known", known[0]) + known[1]

    def _base(self, kind: str, counter: str) -> str:
        """`PREFIX KIND : COUNTER :`, the part of a key before its own key."""
        base = self._bases.get((kind, counter))
        if base is None:
            escaped = counter.replace("%", "%25").replace(":", "%3A")
            base = self._bases[(kind, counter)] = f"{self.prefix}{kind}:{escaped}:"
        return base

    # -- calls -------------------------------------------------------------------

    def _now(self) -> str | int:
        """ARGV[1] of every script: "" = the Redis server's clock."""
        return "" if self.clock is None else self.clock()

    async def _call(self, script: _Script, keys: list[str], args: list[str | bytes | int]) -> Any:
        return await self._run(script(keys, args))

    async def _run(self, call: Any) -> Any:
        """Await one command within `timeout`; any failure is `StoreUnavailable`.

        Each call is counted in the metrics (docs/metrics.md, "Shared
        state") with how long Redis took, when metrics are on.
        """
        counted = metrics.current()
        if self.outage.skip():
            call.close()  # a coroutine never awaited would warn
            if counted.enabled:
                counted.state_call(self.name, "skipped", 0.0)
            raise StoreUnavailable("state store unreachable (retrying shortly)")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await call
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) and not str(exc):  # the whole call's bound
                exc = TimeoutError(f"no answer within {self.timeout:g}s{self._whom}")
            self.outage.failed(exc)
            if counted.enabled:
                counted.state_call(self.name, "failed", time.perf_counter() - started)
            raise StoreUnavailable(str(exc)) from exc
        self.outage.succeeded()
        if counted.enabled:
            counted.state_call(self.name, "ok", time.perf_counter() - started)
        return result

    # -- leases --------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing leases, and ask Redis once in the background, so an
        unreachable server is in the log at start rather than at the first
        message (the module's start; it never waits for Redis)."""
        metrics.current().watch_state_store(self.name, lambda: self.outage.down)
        if self._renewer is None:
            loop = asyncio.get_running_loop()
            self._renewer = loop.create_task(self._renew_loop())
            self._probe = loop.create_task(self._ping())

    async def _ping(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._run(self.client.ping())

    async def stop(self) -> None:
        """Stop renewing and close the connections (the module's stop)."""
        for task in (self._renewer, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._renewer = self._probe = None
        await self.client.aclose()
        await cast(BlockingConnectionPool, self.client.connection_pool).disconnect()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.renew()
            except StoreUnavailable:
                pass  # logged by the outage; renewed next time if not expired
            except Exception as exc:  # never let the renewer die
                self.log.error("cannot renew slot leases", err=exc)

    async def renew(self) -> int:
        """Renew every lease held now; the number found expired (lost)."""
        held = list(self.leases.items())
        lost = 0
        for start in range(0, len(held), RENEW_BATCH):
            batch = held[start : start + RENEW_BATCH]
            args: list[str | bytes | int] = [self._now(), _ms(self.lease)]
            args += [lease for lease, _ in batch]
            positions = await self._call(self._renew, [key for _, key in batch], args)
            for position in positions:
                # Expired meanwhile: not held any more, not to be renewed.
                self.leases.pop(batch[int(position) - 1][0], None)
                lost += 1
        if lost:
            self.log.warn("slot leases expired before renewal", lost=lost)
        return lost


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1 (a zero TTL would delete a key at once)."""
    return max(round(seconds * 1000), 1)
