"""`auth_ratelimit`'s counters on a fake clock: windows, lockouts, repeats,
known addresses, the keys, and memory that stays flat under a flood of
distinct addresses and user names (docs/auth.md, "Password guessing")."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

import pytest

from kittiwake import address, log
from kittiwake.config.parser import parse_text
from kittiwake.server.auth_throttle import (
    KNOWN_TTL,
    MAX_KEYS,
    AuthThrottle,
    Lockout,
    ThrottleSettings,
    parse_auth_ratelimit,
)
from kittiwake.state.base import Failure, Locks, StoreUnavailable
from kittiwake.state.memory import MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guess(n: int) -> bytes:
    return n.to_bytes(8, "big")


LIMIT = {"window": 60.0, "limit": 3, "lockout": 120.0}


# -- the store -------------------------------------------------------------------


async def test_the_failure_that_reaches_the_limit_locks_and_clears_the_count() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_keys=MAX_KEYS)
    assert [store.add_failure("ip", "a", guess(i), **LIMIT) for i in range(3)] == [1, 2, 3]
    assert store.lockout_left("ip", "a") == 120.0
    assert store.lockout_left("ip", "b") == 0.0
    assert store.lockout_left("username", "a") == 0.0  # scopes are apart
    # While locked nothing counts.
    assert store.add_failure("ip", "a", guess(9), **LIMIT) == 0
    clock.now += 119
    assert store.lockout_left("ip", "a") == pytest.approx(1.0)
    clock.now += 1
    assert store.lockout_left("ip", "a") == 0.0
    # After the lockout the key starts afresh.
    assert store.add_failure("ip", "a", guess(10), **LIMIT) == 1


async def test_a_window_starts_at_the_first_failure_and_expires() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_keys=MAX_KEYS)
    assert store.add_failure("ip", "a", guess(1), **LIMIT) == 1
    clock.now += 59
    assert store.add_failure("ip", "a", guess(2), **LIMIT) == 2
    clock.now += 1  # 60 s after the first failure: a new window
    assert store.add_failure("ip", "a", guess(3), **LIMIT) == 1
    assert store.lockout_left("ip", "a") == 0.0


async def test_a_repeated_guess_counts_once_per_window() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_keys=MAX_KEYS)
    for _ in range(5):
        assert store.add_failure("ip", "a", guess(1), **LIMIT) == 1
    assert store.add_failure("ip", "a", guess(2), **LIMIT) == 2
    clock.now += 60
    assert store.add_failure("ip", "a", guess(1), **LIMIT) == 1  # new window


async def test_known_keys_expire() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_keys=MAX_KEYS)
    store.remember_key("known", "127.0.0.1 me", 10.0)
    assert store.is_known("known", "127.0.0.1 me")
    assert not store.is_known("known", "127.0.0.2 me")
    clock.now += 10
    assert not store.is_known("known", "127.0.0.1 me")
    store.remember_key("known", "127.0.0.3 me", 10.0)  # drops the expired one
    assert store.key_count("known") == 1


async def test_idle_entries_expire_and_the_cap_evicts_the_oldest() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_keys=3)
    for key in "abc":
        store.add_failure("ip", key, guess(1), **LIMIT)
    store.add_failure("ip", "a", guess(2), **LIMIT)  # a is now the newest
    store.add_failure("ip", "d", guess(1), **LIMIT)  # evicts b
    assert store.evicted == 1
    assert store.add_failure("ip", "b", guess(2), **LIMIT) == 1  # forgotten
    assert store.add_failure("ip", "a", guess(3), **LIMIT) == 3  # kept
    clock.now += 121  # every window and lockout is over
    store.add_failure("ip", "e", guess(1), **LIMIT)
    assert store.key_count("ip") == 1


# -- the policy ------------------------------------------------------------------


def throttle(clock: FakeClock, **settings: object) -> AuthThrottle:
    values: dict[str, object] = {"ip_limit": 2, "user_limit": 3, "lockout": 100.0, "exempt": ()}
    values.update(settings)
    return AuthThrottle(
        ThrottleSettings(**values),  # type: ignore[arg-type]
        log.Logger("test"),
        normalize=address.get_normalizer("auto"),
        store=MemoryStore(clock=clock),
    )


async def test_an_address_locks_for_every_user_name() -> None:
    t = throttle(FakeClock(), user_limit=0)
    await t.record_failure("192.0.2.1", "a@example.org", "x")
    assert await t.check("192.0.2.1", "a@example.org") is None
    await t.record_failure("192.0.2.1", "b@example.org", "y")
    assert await t.check("192.0.2.1", "c@example.org") == Lockout("ip", 100.0)
    assert await t.check("192.0.2.2", "a@example.org") is None


async def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    t = throttle(FakeClock(), user_limit=0)
    await t.record_failure("2001:db8:0:1::1", "a", "x")
    await t.record_failure("2001:db8:0:1:ffff::2", "a", "y")
    assert await t.check("2001:db8:0:1::99", "a") is not None
    assert await t.check("2001:db8:0:2::1", "a") is None
    await t.record_failure("::ffff:192.0.2.7", "a", "x")
    await t.record_failure("192.0.2.7", "a", "y")
    assert await t.check("::ffff:192.0.2.7", "a") is not None


async def test_exempt_addresses_and_unix_clients() -> None:
    t = throttle(FakeClock(), user_limit=0, exempt=ThrottleSettings().exempt)
    for pw in "xyz":
        await t.record_failure(None, "a", pw)  # a Unix client counts as 127.0.0.1
        await t.record_failure("127.0.0.5", "a", pw)
        await t.record_failure("::1", "a", pw)
    assert await t.check(None, "a") is None
    assert await t.check("127.0.0.5", "a") is None
    t = throttle(FakeClock(), user_limit=0)  # exempt none
    await t.record_failure(None, "a", "x")
    await t.record_failure("127.0.0.1", "a", "y")
    assert await t.check(None, "a") == Lockout("ip", 100.0)


async def test_a_user_name_locks_for_unknown_addresses_only() -> None:
    t = throttle(FakeClock(), ip_limit=0)
    await t.record_success("192.0.2.9", "Me@Example.org")
    for n, pw in enumerate("xyz"):
        await t.record_failure(f"198.51.100.{n}", "me@example.org", pw)
    assert await t.check("203.0.113.1", "ME@example.ORG") == Lockout("username", 100.0)
    assert await t.check("192.0.2.9", "me@example.org") is None
    assert await t.check("203.0.113.1", "you@example.org") is None


async def test_the_same_password_is_one_guess_whatever_the_case_of_the_name() -> None:
    t = throttle(FakeClock())
    for name in ("me@example.org", "ME@example.org", "Me@Example.Org"):
        await t.record_failure("192.0.2.1", name, "stale")
    assert await t.check("192.0.2.1", "me@example.org") is None


async def test_long_user_names_are_kept_as_a_hash() -> None:
    clock = FakeClock()
    t = throttle(clock, ip_limit=0, user_limit=1)
    name = "x" * 10_000
    await t.record_failure("192.0.2.1", name, "pw")
    assert await t.check("192.0.2.2", name) is not None
    assert isinstance(t.store, MemoryStore)
    (key,) = t.store.entries("username")
    assert key.startswith("#") and len(key) == 65


class BrokenStore(MemoryStore):
    """Fails every decision: with a bug (`error`), or as an unreachable
    shared store (`StoreUnavailable`), in the given fail mode."""

    def __init__(self, error: Exception, *, fail_open: bool = False) -> None:
        super().__init__()
        self.error = error
        self.fail_open = fail_open

    async def locked(self, counters: Sequence[tuple[str, str]], known: tuple[str, str]) -> Locks:
        raise self.error

    async def count_failure(self, failures: Sequence[Failure], guess: bytes) -> list[int]:
        raise self.error

    async def remember(self, known: tuple[str, str], ttl: float) -> None:
        raise self.error


async def test_a_failing_store_locks_nobody_out(capsys: pytest.CaptureFixture[str]) -> None:
    t = throttle(FakeClock())
    t.store = BrokenStore(ConnectionError("store down"))
    await t.record_failure("192.0.2.1", "a", "x")
    await t.record_success("192.0.2.1", "a")
    assert await t.check("192.0.2.1", "a") is None
    assert capsys.readouterr().err.count("auth_ratelimit store failed") == 3


async def test_an_unreachable_store_follows_its_fail_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """fail_closed: `check` raises, and the session answers 454; fail_open:
    let through. Either way failures go uncounted and nothing is logged
    here (the store logs the outage once per interval)."""
    t = throttle(FakeClock())
    t.store = BrokenStore(StoreUnavailable("down"))
    with pytest.raises(StoreUnavailable):
        await t.check("192.0.2.1", "a")
    await t.record_failure("192.0.2.1", "a", "x")
    await t.record_success("192.0.2.1", "a")
    t.store = BrokenStore(StoreUnavailable("down"), fail_open=True)
    assert await t.check("192.0.2.1", "a") is None
    assert capsys.readouterr().err == ""


async def test_counters_are_named_for_their_endpoint_in_a_shared_store() -> None:
    store = MemoryStore(clock=FakeClock())
    t = AuthThrottle(
        ThrottleSettings(ip_limit=1, user_limit=1, exempt=()),
        log.Logger("test"),
        store=store,
        owner="submission/587",
    )
    await t.record_failure("192.0.2.1", "me", "x")
    await t.record_success("192.0.2.2", "me")
    assert store.entries("auth/submission/587/ip") == ["192.0.2.1"]
    assert store.entries("auth/submission/587/username") == ["me"]
    assert store.entries("auth/submission/587/known") == ["192.0.2.2 me"]


async def test_known_addresses_are_remembered_for_30_days() -> None:
    clock = FakeClock()
    t = throttle(clock, ip_limit=0, user_limit=1)
    await t.record_success("192.0.2.9", "me")
    await t.record_failure("192.0.2.1", "me", "x")
    assert await t.check("192.0.2.9", "me") is None
    clock.now += KNOWN_TTL
    assert await t.check("192.0.2.9", "me") is None  # the lockout is over too
    await t.record_failure("192.0.2.1", "me", "y")
    assert await t.check("192.0.2.9", "me") == Lockout("username", 100.0)


# -- the directive ---------------------------------------------------------------


def test_defaults_and_a_full_block() -> None:
    assert ThrottleSettings() == ThrottleSettings(10, 600.0, 20, 600.0, 900.0)
    (node,) = parse_text(
        "auth_ratelimit {\n ip 5\n username 0\n lockout 1h\n exempt 10.0.0.0/8 ::1\n}\n", "t"
    )
    s = parse_auth_ratelimit(node)
    assert (s.ip_limit, s.ip_window, s.user_limit, s.lockout) == (5, 600.0, 0, 3600.0)
    assert [str(n) for n in s.exempt] == ["10.0.0.0/8", "::1/128"]
    (node,) = parse_text("auth_ratelimit {\n exempt none\n}\n", "t")
    assert parse_auth_ratelimit(node).exempt == ()
    (node,) = parse_text("auth_ratelimit {\n ip 0\n username 0\n}\n", "t")
    assert not parse_auth_ratelimit(node).enabled


# -- memory ----------------------------------------------------------------------

FLOOD = 200_000
KiB = 1024


async def _flood(store: MemoryStore, clock: FakeClock, step: float) -> list[int]:
    """FLOOD failures, each from a new address for a new user name.

    Returns the traced memory every 10 000 failures.
    """
    tracemalloc.start()
    try:
        samples = []
        for i in range(FLOOD):
            clock.now += step
            ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            store.add_failure("ip", ip, guess(i), **LIMIT)
            store.add_failure("username", f"user{i}@example.org", guess(i), **LIMIT)
            if i % 10_000 == 0:
                samples.append(tracemalloc.get_traced_memory()[0])
        samples.append(tracemalloc.get_traced_memory()[0])
        return samples
    finally:
        tracemalloc.stop()


async def test_memory_is_flat_at_the_key_cap() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_keys=MAX_KEYS)
    samples = await _flood(store, clock, 0.0)  # a frozen clock: nothing expires
    assert store.key_count("ip") == store.key_count("username") == MAX_KEYS
    assert store.evicted == 2 * (FLOOD - MAX_KEYS)
    # From half way on (the tables have been full, and their dicts have
    # grown to the size this churn needs, since ~90 000), nothing grows;
    # an entry kept per key would add ~30 MB.
    steady = samples[len(samples) // 2 :]
    assert max(steady) - steady[0] < 256 * KiB, [s // KiB for s in samples]


async def test_entries_expire_under_a_flood() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_keys=MAX_KEYS)
    # 10 ms apart: a minute's worth (6000 keys per table) is live at a time.
    for i in range(FLOOD):
        clock.now += 0.01
        store.add_failure("ip", f"ip{i}", guess(i), **LIMIT)
        store.add_failure("username", f"user{i}", guess(i), **LIMIT)
    assert store.key_count("ip") <= 6001
    assert store.key_count("username") <= 6001
    assert store.evicted == 0
