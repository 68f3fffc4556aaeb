"""The `StateStore` contract, held by every store: the in-process one, the
host store (a worker's client of its supervisor's in-process store, over a
real socket pair, served by the supervisor's code) and the Redis one,
whose Lua scripts run in a real `redis-server` (docs/state.md).

Each behaviour is one test run against all three, on a fake clock: the Redis
store passes the clock's milliseconds to its scripts instead of the
server's `TIME`, so refill beats, windows, lockouts and lease expiry are
checked exactly, without sleeping. The clock starts at the real time,
because Redis expires keys on its own clock. What only Redis has (key
expiry, leases renewed or lost, an unreachable server) is checked at the
end, against the real server's clock; what only the host store has (a
dead worker's slots given back, a supervisor gone, a late answer) after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from kittiwake import log
from kittiwake.state.base import Failure, Grant, Held, Rate, Slot, StateStore, StoreUnavailable
from kittiwake.state.host import HostStore
from kittiwake.state.memory import MemoryStore
from kittiwake.state.redis_store import RedisStore, connect
from kittiwake.supervise.statehost import StateHost
from redisd import RedisServer

_prefixes = itertools.count(1)


class FakeClock:
    """Seconds, starting now; `ms` is what the Redis scripts are given."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def ms(self) -> int:
        return round(self.now * 1000)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def redis_store(
    server: RedisServer, clock: FakeClock | None, **options: object
) -> RedisStore:
    client = connect(server.url, timeout=2.0, connect_timeout=2.0)
    return RedisStore(
        client,
        log.Logger("state.redis/test"),
        prefix=f"test{next(_prefixes)}:",
        clock=clock.ms if clock is not None else None,
        **options,  # type: ignore[arg-type]
    )


class Host:
    """A supervisor's store and its server; `worker()` connects one more worker."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.server = StateHost(store, log.Logger("workers"))
        self.workers: list[HostStore] = []

    async def worker(self, **options: object) -> HostStore:
        ours, theirs = socket.socketpair()
        self.server.serve(ours, 1000 + len(self.workers))
        client = HostStore(theirs, log.Logger("state.host"), **options)  # type: ignore[arg-type]
        await client.open()
        self.workers.append(client)
        return client

    async def close(self) -> None:
        for client in self.workers:
            await client.close()
        await self.server.close()


@contextlib.asynccontextmanager
async def hosted(store: StateStore) -> AsyncIterator[Host]:
    host = Host(store)
    try:
        yield host
    finally:
        await host.close()


@pytest.fixture(params=["memory", "host", "redis"])
async def store(
    request: pytest.FixtureRequest, clock: FakeClock, redis_server: RedisServer
) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore(clock=clock)
        return
    if request.param == "host":
        async with hosted(MemoryStore(clock=clock)) as host:
            yield await host.worker()
        return
    made = await redis_store(redis_server, clock)
    try:
        yield made
    finally:
        await made.stop()


async def take(store: StateStore, *wanted: Rate | Slot) -> tuple[int, float, list[Held]]:
    grant = await store.acquire(wanted)
    return grant.refused, grant.wait, grant.held


# -- rate buckets ------------------------------------------------------------------


async def test_a_bucket_gives_its_burst_then_refuses_until_the_refill(
    store: StateStore, clock: FakeClock
) -> None:
    rate = Rate("limits/x/all.rate.0", "", 3, 10.0)
    for _ in range(3):  # at the limit
        assert (await take(store, rate))[0] == -1
    refused, wait, _ = await take(store, rate)  # past it
    assert refused == 0 and wait == pytest.approx(10.0, abs=0.002)
    clock.now += 9.5
    refused, wait, _ = await take(store, rate)
    assert refused == 0 and wait == pytest.approx(0.5, abs=0.002)
    clock.now += 0.5  # a period after the start: full again, not one token
    for _ in range(3):
        assert (await take(store, rate))[0] == -1
    assert (await take(store, rate))[0] == 0


async def test_refills_keep_their_beat(store: StateStore, clock: FakeClock) -> None:
    rate = Rate("r", "k", 1, 10.0)
    assert (await take(store, rate))[0] == -1  # created now
    clock.now += 25.0  # beats at 10 and 20: the next one is at 30
    assert (await take(store, rate))[0] == -1
    refused, wait, _ = await take(store, rate)
    assert refused == 0 and wait == pytest.approx(5.0, abs=0.002)


async def test_a_changed_burst_applies_at_once(store: StateStore, clock: FakeClock) -> None:
    """A reload raises or lowers a rate: what was used this period stays used,
    and the rest of the bucket follows the new size without waiting for a refill."""
    for _ in range(2):
        assert (await take(store, Rate("r", "k", 2, 3600.0)))[0] == -1
    assert (await take(store, Rate("r", "k", 2, 3600.0)))[0] == 0  # spent
    raised = Rate("r", "k", 5, 3600.0)
    for _ in range(3):  # 5 - the 2 used
        assert (await take(store, raised))[0] == -1
    assert (await take(store, raised))[0] == 0
    clock.now += 3600.0  # the refill: the new size in full
    for _ in range(5):
        assert (await take(store, raised))[0] == -1
    lowered = Rate("r", "k", 1, 3600.0)
    clock.now += 3600.0
    for _ in range(2):  # two of five used
        assert (await take(store, raised))[0] == -1
    refused, wait, _ = await take(store, lowered)  # two used, one allowed: none left
    assert refused == 0 and wait == pytest.approx(3600.0, abs=0.002)
    # Back up to five: the two are still used, and the one over the lowered
    # size is not given back.
    for _ in range(3):
        assert (await take(store, raised))[0] == -1
    assert (await take(store, raised))[0] == 0


async def test_buckets_are_per_counter_and_key(store: StateStore) -> None:
    assert (await take(store, Rate("r", "a", 1, 60.0)))[0] == -1
    assert (await take(store, Rate("r", "a", 1, 60.0)))[0] == 0
    assert (await take(store, Rate("r", "b", 1, 60.0)))[0] == -1
    assert (await take(store, Rate("q", "a", 1, 60.0)))[0] == -1
    # A key with the separator in it is still its own (user names can be anything).
    assert (await take(store, Rate("r", "a:b", 1, 60.0)))[0] == -1
    assert (await take(store, Rate("r:a", "b", 1, 60.0)))[0] == -1


# -- concurrency slots ---------------------------------------------------------------


async def test_slots_at_the_limit_past_it_and_given_back(store: StateStore) -> None:
    slot = Slot("limits/x/ip.concurrency.0", "192.0.2.1", 2)
    first, second = (await take(store, slot))[2], (await take(store, slot))[2]
    refused, wait, held = await take(store, slot)
    assert (refused, held) == (0, []) and wait > 0
    assert (await take(store, Slot(slot.counter, "192.0.2.2", 2)))[0] == -1  # another key
    await store.release(first)
    third = (await take(store, slot))[2]
    assert len(third) == 1
    await store.release(second + third)
    assert (await take(store, slot))[0] == -1
    await store.release([Held("nope", "never", lease="gone")])  # unknown: ignored


async def test_requests_are_taken_in_order_until_one_is_refused(store: StateStore) -> None:
    """Tokens before the refused request are spent; slots before it are held
    and returned; nothing after it is touched."""
    full = Slot("b", "", 1)
    (await take(store, full))[2]
    refused, _, held = await take(
        store, Slot("a", "", 5), Rate("r", "", 1, 60.0), full, Slot("c", "", 1)
    )
    assert refused == 2
    assert [(h.counter, h.key) for h in held] == [("a", "")]
    assert (await take(store, Rate("r", "", 1, 60.0)))[0] == 0  # its token is spent
    assert (await take(store, Slot("c", "", 1)))[0] == -1  # c untouched
    await store.release(held)


# -- failed logins ------------------------------------------------------------------------


def failure(key: str = "192.0.2.1", limit: int = 3) -> Failure:
    return Failure("auth/x/ip", key, window=60.0, limit=limit, lockout=120.0)


def guess(n: int) -> bytes:
    return n.to_bytes(8, "big")


async def test_failures_lock_at_the_limit_for_the_lockout(
    store: StateStore, clock: FakeClock
) -> None:
    counts = [(await store.count_failure([failure()], guess(i)))[0] for i in range(3)]
    assert counts == [1, 2, 3]  # the third reaches the limit and locks
    locks = await store.locked([("auth/x/ip", "192.0.2.1"), ("auth/x/ip", "b")], ("k", "z"))
    assert locks.left == (pytest.approx(120.0, abs=0.002), 0.0)
    assert not locks.known
    assert await store.count_failure([failure()], guess(9)) == [0]  # locked: not counted
    clock.now += 119.0
    locks = await store.locked([("auth/x/ip", "192.0.2.1")], ("k", "z"))
    assert locks.left[0] == pytest.approx(1.0, abs=0.002)
    clock.now += 1.0
    assert (await store.locked([("auth/x/ip", "192.0.2.1")], ("k", "z"))).left == (0.0,)
    assert await store.count_failure([failure()], guess(10)) == [1]  # afresh


async def test_a_repeated_guess_counts_once_per_window(store: StateStore, clock: FakeClock) -> None:
    for _ in range(5):
        assert await store.count_failure([failure()], guess(1)) == [1]
    assert await store.count_failure([failure()], guess(2)) == [2]
    clock.now += 60.0  # the window is over: the same guess counts again
    assert await store.count_failure([failure()], guess(1)) == [1]


async def test_one_failure_counts_against_every_counter(store: StateStore) -> None:
    both = [failure("192.0.2.1", limit=1), Failure("auth/x/username", "me", 60.0, 5, 120.0)]
    assert await store.count_failure(both, guess(1)) == [1, 1]
    assert await store.count_failure(both, guess(2)) == [0, 2]  # ip locked, name counted


async def test_remembered_keys_are_known(store: StateStore) -> None:
    await store.remember(("auth/x/known", "192.0.2.9 me"), 3600.0)
    locks = await store.locked([("auth/x/username", "me")], ("auth/x/known", "192.0.2.9 me"))
    other = await store.locked([("auth/x/username", "me")], ("auth/x/known", "192.0.2.8 me"))
    # The memory store (the host store's too) only looks the key up when a
    # counter is locked.
    assert locks.known or not isinstance(store, RedisStore)
    assert not other.known


# -- Redis only: leases, expiry, outages -------------------------------------------------------


async def test_a_dead_holders_slot_expires_with_its_lease(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    alive = await redis_store(redis_server, clock, lease=30.0)
    dead = RedisStore(alive.client, log.Logger("t"), prefix=alive.prefix, clock=clock.ms)
    try:
        slot = Slot("conn/smtp/25/total", "", 2)
        mine = (await take(alive, slot))[2]
        (await take(dead, slot))[2]  # never renewed, never released
        assert (await take(alive, slot))[0] == 0  # full
        clock.now += 20.0
        assert await alive.renew() == 0
        clock.now += 20.0  # 40 s: the dead lease is gone, the renewed one lives
        again = (await take(alive, slot))[2]
        assert len(again) == 1
        assert (await take(alive, slot))[0] == 0
        clock.now += 31.0  # nobody renewed: all expired; renewal says so
        assert await alive.renew() == 2
        assert alive.leases == {}
        await alive.release(mine + again)
    finally:
        await alive.stop()


async def test_keys_expire_on_the_servers_clock(redis_server: RedisServer) -> None:
    store = await redis_store(redis_server, None, lease=30.0)
    try:
        p = store.prefix.encode()
        assert (await take(store, Rate("r", "k", 1, 1.0)))[0] == -1
        assert 59_000 <= int(redis_server.command(b"PTTL", p + b"rate:r:k")[1:]) <= 60_000
        assert (await take(store, Rate("r", "h", 1, 3600.0)))[0] == -1
        assert int(redis_server.command(b"PTTL", p + b"rate:r:h")[1:]) > 3_500_000
        held = (await take(store, Slot("s", "k", 1)))[2]
        assert 29_000 <= int(redis_server.command(b"PTTL", p + b"slot:s:k")[1:]) <= 30_000
        await store.release(held)
        assert redis_server.command(b"EXISTS", p + b"slot:s:k") == b":0"  # gone at once
        await store.count_failure([failure()], guess(1))
        ttl = int(redis_server.command(b"PTTL", p + b"fail:auth/x/ip:192.0.2.1")[1:])
        assert 59_000 <= ttl <= 60_000
        await store.remember(("auth/x/known", "a b"), 10.0)
        assert int(redis_server.command(b"PTTL", p + b"known:auth/x/known:a b")[1:]) >= 9_000
    finally:
        await store.stop()


async def test_an_unreachable_server_fails_fast_and_logs_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = RedisServer(tmp_path / "down")  # never started: nothing listens
    store = await redis_store(server, None, fail_open=False, timeout=0.5)
    try:
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(StoreUnavailable):
                await store.acquire([Rate("r", "", 1, 1.0)])
        assert time.monotonic() - started < 1.0
        err = capsys.readouterr().err
        assert err.count("shared state store unreachable") == 1, err
        assert "mode=fail_closed" in err
        server.start()  # reachable again: the next try after the window works
        try:
            await asyncio.sleep(store.outage.retry)
            assert (await store.acquire([Rate("r", "", 1, 1.0)])).refused == -1
            assert "shared state store reachable again" in capsys.readouterr().err
        finally:
            server.kill()
    finally:
        await store.stop()


# -- host store only: workers that die, a supervisor that is gone, late answers ------------


async def test_the_slots_of_a_worker_that_dies_are_given_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    memory = MemoryStore()
    async with hosted(memory) as host:
        doomed, other = await host.worker(), await host.worker()
        slot = Slot("conn/smtp/127.0.0.1:25/ip", "192.0.2.1", 3)
        for _ in range(2):
            assert (await take(doomed, slot))[0] == -1
        assert (await take(doomed, Slot("limits/x/all.concurrency.0", "", 1)))[0] == -1
        mine = (await take(other, slot))[2]
        assert (await take(other, slot))[0] == 0  # full: three held
        doomed._sock.close()  # as the kernel does for a process killed with -9
        await asyncio.sleep(0.1)
        assert memory.key_count("limits/x/all.concurrency.0") == 0
        again = (await take(other, slot))[2] + (await take(other, slot))[2]
        assert len(again) == 2  # the dead worker's two are free, and no more
        assert (await take(other, slot))[0] == 0
        await other.release(mine + again)
        await other.locked([], ("k", "z"))  # one question after: the releases are in
        assert memory.key_count(slot.counter) == 0
    err = capsys.readouterr().err
    assert "slots of a worker that is gone given back pid=1000 slots=3" in err


async def test_a_worker_cannot_give_back_what_another_holds() -> None:
    memory = MemoryStore()
    async with hosted(memory) as host:
        holder, stranger = await host.worker(), await host.worker()
        slot = Slot("s", "k", 1)
        held = (await take(holder, slot))[2]
        await stranger.release(held)  # not its own: ignored
        await stranger.release([Held("s", "k")])
        assert (await take(stranger, slot))[0] == 0
        await holder.release(held)
        await holder.release(held)  # twice: the second is ignored too
        assert len((await take(stranger, slot))[2]) == 1
        assert (await take(holder, slot))[0] == 0


async def test_a_release_is_in_before_the_next_question_without_waiting() -> None:
    async with hosted(MemoryStore()) as host:
        worker = await host.worker()
        slot = Slot("s", "", 1)
        for _ in range(100):
            held = (await take(worker, slot))[2]
            assert len(held) == 1
            await worker.release(held)  # sent, not answered


class SlowStore(MemoryStore):
    """A memory store whose grants take `delay` seconds (a stalled supervisor)."""

    delay = 0.0

    async def acquire(self, wanted: Sequence[Rate | Slot]) -> Grant:
        await asyncio.sleep(self.delay)
        return await super().acquire(wanted)


async def test_a_grant_that_comes_too_late_is_given_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    memory = SlowStore()
    async with hosted(memory) as host:
        worker = await host.worker(timeout=0.2)
        memory.delay = 0.5
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await worker.acquire([Slot("s", "", 1)])
        assert time.monotonic() - started < 0.4
        with pytest.raises(StoreUnavailable):  # the retry window: at once
            await worker.acquire([Slot("s", "", 1)])
        await asyncio.sleep(0.5)  # the grant arrived and was sent back
        memory.delay = 0.0
        await asyncio.sleep(worker.outage.retry)
        assert len((await take(worker, Slot("s", "", 1)))[2]) == 1
    err = capsys.readouterr().err
    assert err.count("shared state store unreachable") == 1, err
    assert "shared state store reachable again" in err
    # Only workers ask the host store, and several log the same outage: each says whose.
    assert f"down_for=0.0 pid={os.getpid()}" in err, err
    assert re.search(rf"reachable again down_for=\S+ failed=\d+ pid={os.getpid()}", err), err


async def test_a_supervisor_that_is_gone_fails_every_decision_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lost: list[bool] = []
    async with hosted(MemoryStore()) as host:
        worker = await host.worker(on_lost=lambda: lost.append(True))
        held = (await take(worker, Slot("s", "", 1)))[2]
        await host.server.close()  # the supervisor's end closes
        await asyncio.sleep(0.1)
        assert lost == [True]
        assert worker.fail_open is False
        started = time.monotonic()
        for call in (
            worker.acquire([Rate("r", "", 1, 1.0)]),
            worker.locked([("c", "k")], ("k", "z")),
            worker.count_failure([failure()], guess(1)),
            worker.release(held),
            worker.remember(("k", "z"), 1.0),
        ):
            with pytest.raises(StoreUnavailable):
                await call
        assert time.monotonic() - started < 0.5
    err = capsys.readouterr().err
    assert err.count("shared state store unreachable") == 1, err
