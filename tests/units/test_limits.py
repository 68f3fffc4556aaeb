"""The `limits` module: its configuration (with lines), the token bucket and
concurrency semantics on a fake clock, the wait-then-451 policy, shared
counters, and bounded memory under a flood of distinct sender domains."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError, SMTPError
from kittiwake.limits import (
    Limiter,
    Limits,
    LimitsModule,
    Rule,
)
from kittiwake.module import Endpoint, register, unregister
from kittiwake.state.base import Grant, Held, Rate, Slot, StoreUnavailable
from kittiwake.state.memory import MemoryStore


class LimitedEndpoint(Endpoint):
    """Reads `limits` the way the real endpoints do."""

    def configure(self, cfg: Directives) -> None:
        self.limits = cfg.module("limits", Limits, "", default_module="limits")
        cfg.finish()

    def addresses(self) -> list[str]:
        return list(self.inline_args)


@pytest.fixture(autouse=True)
def endpoint_module() -> Iterator[None]:
    register("test.limited")(LimitedEndpoint)
    yield
    unregister("test.limited")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(text: str, tmp_path: Path) -> list[LimitedEndpoint]:
    c = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    c.build()
    eps = [ep for ep in c.endpoints if isinstance(ep, LimitedEndpoint)]
    assert len(eps) == len(c.endpoints)
    return eps


def limits_of(body: str, tmp_path: Path) -> LimitsModule:
    (ep,) = build(f"test.limited tcp://127.0.0.1:1 {{\n  limits {{\n{body}\n  }}\n}}\n", tmp_path)
    assert isinstance(ep.limits, LimitsModule)
    return ep.limits


def error_of(body: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        limits_of(body, tmp_path)
    return str(info.value)


# -- configuration ----------------------------------------------------------


def test_lines_become_rules_in_scope_order(tmp_path: Path) -> None:
    mod = limits_of(
        "    source concurrency 3\n"
        "    ip rate 5 10s\n"
        "    all rate 20\n"
        "    endpoint concurrency 10\n"
        "    ip concurrency 2\n"
        "    destination rate 7\n",
        tmp_path,
    )
    got = [(r.scope, r.kind, r.burst, r.period, r.max_slots) for r in mod.rules]
    assert got == [
        ("all", "rate", 20, 1.0, 0),  # default period 1s
        ("all", "concurrency", 0, 1.0, 10),  # `endpoint` is `all`
        ("ip", "rate", 5, 10.0, 0),
        ("ip", "concurrency", 0, 1.0, 2),
        ("source", "concurrency", 0, 1.0, 3),
    ]  # destination: accepted, no-op in an endpoint
    assert len({r.name for r in mod.rules}) == 5


def test_zero_means_unlimited(tmp_path: Path) -> None:
    mod = limits_of(
        "all rate 0\nall rate 0 5s\nip concurrency 0\nsource concurrency -3\n", tmp_path
    )
    assert mod.rules == []


def test_empty_block_and_bare_directive(tmp_path: Path) -> None:
    (ep,) = build("test.limited tcp://127.0.0.1:1 { limits }\n", tmp_path)
    assert isinstance(ep.limits, LimitsModule)
    assert ep.limits.rules == []
    (ep,) = build("test.limited tcp://127.0.0.1:1 { }\n", tmp_path)
    assert ep.limits is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ip", "at least two arguments are required"),
        ("bogus", "at least two arguments are required"),
        ("ip rate", "at least burst size is needed"),
        ("ip rate 1 1s 2", "too many arguments"),
        ("ip rate x", "invalid burst size 'x': expected an integer"),
        ("ip rate 1.5", "invalid burst size '1.5': expected an integer"),
        ("ip rate -1", "invalid burst size -1: must not be negative (0 = unlimited)"),
        ("ip rate 1 soon", "invalid rate period: invalid duration 'soon'"),
        ("ip rate 1 0s", "invalid rate period: must be greater than zero"),
        ("ip concurrency", "max concurrency value is needed"),
        ("ip concurrency 1 2", "max concurrency value is needed"),
        ("ip concurrency many", "invalid max concurrency 'many': expected an integer"),
        ("ip bogus 1", "unknown limit kind: bogus"),
        ("bogus rate 1", "unknown limit scope: bogus"),
        ("sender concurrency 1", "unknown limit scope: sender"),
        ("ip rate 1 {\n}", "ip: unexpected block"),
    ],
)
def test_errors_carry_their_line(line: str, message: str, tmp_path: Path) -> None:
    text = error_of(f"    all rate 1\n    {line}\n", tmp_path)
    assert text.startswith(f"t.conf:4: {message}"), text


def test_kind_is_checked_before_scope_as_maddy_does(tmp_path: Path) -> None:
    assert error_of("bogus frobnicate 1\n", tmp_path) == "t.conf:3: unknown limit kind: frobnicate"
    assert error_of("bogus rate\n", tmp_path) == "t.conf:3: at least burst size is needed"


def test_inline_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build("test.limited tcp://127.0.0.1:1 {\n  limits limits extra { }\n}\n", tmp_path)
    assert str(info.value) == ("t.conf:2: limits takes no arguments: write the limits in its block")


def test_unreferenced_top_level_block_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build("limits spare {\n all rate 1\n}\ntest.limited tcp://127.0.0.1:1 { }\n", tmp_path)
    assert str(info.value) == "t.conf:1: unused configuration block spare (limits)"


def test_top_level_errors_carry_their_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build(
            "limits shared {\n all rate 1\n\n endpoint rate\n}\n"
            "test.limited tcp://127.0.0.1:1 { limits &shared }\n",
            tmp_path,
        )
    assert str(info.value) == "t.conf:4: at least burst size is needed"


# -- sharing ----------------------------------------------------------------


async def test_named_block_is_one_set_of_counters(tmp_path: Path) -> None:
    a, b = build(
        "limits shared {\n all concurrency 1\n}\n"
        "test.limited tcp://127.0.0.1:1 { limits &shared }\n"
        "test.limited tcp://127.0.0.1:2 { limits &shared }\n",
        tmp_path,
    )
    assert a.limits is not None and a.limits is b.limits
    ticket = await a.limits.take("192.0.2.1", "example.org")
    with pytest.raises(SMTPError):
        await b.limits.take("192.0.2.2", "example.net", deadline_s=0.05)
    await ticket.release()
    await (await b.limits.take("192.0.2.2", "example.net", deadline_s=0.05)).release()


async def test_inline_blocks_are_private(tmp_path: Path) -> None:
    a, b = build(
        "test.limited tcp://127.0.0.1:1 {\n limits { all concurrency 1 }\n}\n"
        "test.limited tcp://127.0.0.1:2 {\n limits { all concurrency 1 }\n}\n",
        tmp_path,
    )
    assert a.limits is not None and b.limits is not None and a.limits is not b.limits
    ta = await a.limits.take("192.0.2.1", "example.org")
    tb = await b.limits.take("192.0.2.1", "example.org", deadline_s=0.05)
    await ta.release()
    await tb.release()


# -- the store: token bucket --------------------------------------------------


async def test_bucket_starts_full_and_refills_to_full_every_period() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    assert [store.take_token("r", "k", 3, 10.0) for _ in range(3)] == [0.0] * 3
    assert store.take_token("r", "k", 3, 10.0) == pytest.approx(10.0)
    clock.now += 9.5
    assert store.take_token("r", "k", 3, 10.0) == pytest.approx(0.5)
    clock.now += 0.5  # one period after the start: full again, not one token
    assert [store.take_token("r", "k", 3, 10.0) for _ in range(3)] == [0.0] * 3
    assert store.take_token("r", "k", 3, 10.0) > 0


async def test_refills_keep_their_beat() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    assert store.take_token("r", "k", 1, 10.0) == 0.0  # created at 0
    clock.now += 25.0  # beats at 10 and 20: the next one is at 30
    assert store.take_token("r", "k", 1, 10.0) == 0.0
    assert store.take_token("r", "k", 1, 10.0) == pytest.approx(5.0)


async def test_buckets_are_per_key_and_per_rule() -> None:
    store = MemoryStore(clock=FakeClock())
    assert store.take_token("r", "a", 1, 1.0) == 0.0
    assert store.take_token("r", "a", 1, 1.0) > 0
    assert store.take_token("r", "b", 1, 1.0) == 0.0
    assert store.take_token("q", "a", 1, 1.0) == 0.0


async def test_counters_nobody_uses_any_more_are_dropped() -> None:
    """A reload renamed or removed a rule: its counter is never asked again.
    Its entries still expire (at most a minute late) and the counter goes,
    or the supervisor's host store would keep them for the server's life."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for key in ("a", "b"):
        store.take_token("limits/old/ip.rate.0", key, 1, 1.0)
    store.add_failure("auth/old/ip", "192.0.2.1", b"guess", window=10.0, limit=5, lockout=60.0)
    store.remember_key("auth/old/known", "192.0.2.1 user", 30.0)
    assert store.take_slot("limits/old/ip.concurrency.0", "k", 1)
    store.give_slot("limits/old/ip.concurrency.0", "k")
    store.take_token("limits/long/all.rate.0", "", 1, 300.0)  # its period outlives a minute
    clock.now += 61
    store.take_token("limits/new/ip.rate.0", "a", 1, 1.0)  # any use sweeps
    assert store.counters() == ["limits/long/all.rate.0", "limits/new/ip.rate.0"]
    assert store.key_count() == 2
    clock.now += 300
    store.take_token("limits/new/ip.rate.0", "a", 1, 1.0)
    assert store.counters() == ["limits/new/ip.rate.0"]


async def test_idle_buckets_expire_after_a_minute() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for key in ("a", "b", "c"):
        store.take_token("r", key, 1, 1.0)
    clock.now += 30
    store.take_token("r", "c", 1, 1.0)  # c is in use again
    clock.now += 30
    store.take_token("r", "d", 1, 1.0)
    assert store.key_count("r") == 2  # a and b dropped; c and d kept


async def test_a_bucket_is_kept_while_it_is_still_draining() -> None:
    # Dropping a drained 1-hour bucket after a minute would refill it early.
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    assert store.take_token("r", "k", 1, 3600.0) == 0.0
    clock.now += 61
    assert store.take_token("r", "k", 1, 3600.0) == pytest.approx(3539.0)
    clock.now += 3600
    assert store.take_token("r", "other", 1, 3600.0) == 0.0
    assert store.key_count("r") == 1  # k was full again, so it was dropped


async def test_key_cap_forgets_the_least_recently_used_bucket() -> None:
    store = MemoryStore(clock=FakeClock(), max_keys=3)
    for key in ("a", "b", "c"):
        assert store.take_token("r", key, 1, 60.0) == 0.0
    assert store.take_token("r", "a", 1, 60.0) > 0  # a is now the newest
    assert store.take_token("r", "d", 1, 60.0) == 0.0  # b is forgotten
    assert store.key_count("r") == 3
    assert store.evicted == 1
    # A forgotten client starts afresh: more lenient, never refused for it.
    assert store.take_token("r", "b", 1, 60.0) == 0.0
    assert store.take_token("r", "a", 1, 60.0) > 0


# -- the store: concurrency ---------------------------------------------------


async def test_slots_are_counted_and_given_back() -> None:
    store = MemoryStore()
    assert store.take_slot("r", "k", 2)
    assert store.take_slot("r", "k", 2)
    assert not store.take_slot("r", "k", 2)
    assert store.take_slot("r", "other", 2)
    store.give_slot("r", "k")
    assert store.take_slot("r", "k", 2)
    for key in ("k", "k", "other"):
        store.give_slot("r", key)
    assert store.key_count() == 0  # a counter at zero is no state at all
    store.give_slot("r", "never")  # harmless
    store.give_slot("nope", "never")
    assert store.key_count() == 0


async def test_slot_tables_are_capped_without_losing_held_slots() -> None:
    store = MemoryStore(max_keys=2)
    assert store.take_slot("r", "a", 5)
    assert store.take_slot("r", "b", 5)
    assert not store.take_slot("r", "c", 5)  # waits, then 451
    assert store.take_slot("r", "a", 5)  # known keys still work
    store.give_slot("r", "b")
    assert store.take_slot("r", "c", 5)


# -- the policy ---------------------------------------------------------------


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str]] = []

    def take_token(self, counter: str, key: str, burst: int, period: float) -> float:
        self.calls.append(("token", counter, key))
        return super().take_token(counter, key, burst, period)

    def take_slot(self, counter: str, key: str, limit: int) -> bool:
        self.calls.append(("slot", counter, key))
        return super().take_slot(counter, key, limit)

    def give_slot(self, counter: str, key: str) -> None:
        self.calls.append(("release", counter, key))
        super().give_slot(counter, key)


RULES = [
    Rule("source", "concurrency", "s.c", max_slots=5),
    Rule("ip", "rate", "i.r", burst=5, period=1.0),
    Rule("all", "concurrency", "a.c", max_slots=5),
]


@pytest.mark.parametrize(
    ("ip", "source", "ip_key"),
    [
        ("192.0.2.7", "example.org", "192.0.2.7"),
        (None, "example.org", "127.0.0.1"),  # a Unix-socket client
        ("::ffff:192.0.2.7", "", "192.0.2.7"),  # mapped; the null sender
        ("2001:DB8:0::1", "x", "2001:db8::1"),
    ],
)
async def test_order_all_ip_source_and_keys(ip: str | None, source: str, ip_key: str) -> None:
    store = RecordingStore()
    ticket = await Limiter(RULES, store).take(ip, source)
    assert store.calls == [
        ("slot", "a.c", ""),
        ("token", "i.r", ip_key),
        ("slot", "s.c", source),
    ]
    assert ticket.slots == 2
    await ticket.release()
    assert store.calls[3:] == [("release", "s.c", source), ("release", "a.c", "")]


async def test_release_is_idempotent_and_a_context_manager() -> None:
    store = RecordingStore()
    limiter = Limiter([Rule("all", "concurrency", "a.c", max_slots=1)], store)
    ticket = await limiter.take("192.0.2.1", "example.org")
    await ticket.release()
    await ticket.release()
    assert [c for c in store.calls if c[0] == "release"] == [("release", "a.c", "")]
    async with await limiter.take("192.0.2.1", "example.org") as held:
        assert held.slots == 1
    assert held.slots == 0
    await (await limiter.take("192.0.2.1", "example.org", deadline_s=0)).release()


async def test_a_full_slot_waits_until_the_deadline_then_451() -> None:
    limiter = Limiter([Rule("all", "concurrency", "a.c", max_slots=1)])
    held = await limiter.take("192.0.2.1", "example.org")
    started = time.monotonic()
    with pytest.raises(SMTPError) as info:
        await limiter.take("192.0.2.2", "example.net", deadline_s=0.3)
    waited = time.monotonic() - started
    assert (info.value.code, info.value.enhanced) == (451, (4, 4, 5))
    assert info.value.message == "High load, try again later"
    assert info.value.temporary
    assert 0.3 <= waited < 1.0
    await held.release()


async def test_a_release_wakes_the_waiter_at_once() -> None:
    limiter = Limiter([Rule("ip", "concurrency", "i.c", max_slots=1)])
    held = await limiter.take("192.0.2.1", "example.org")
    waiter = asyncio.create_task(limiter.take("192.0.2.1", "example.org", deadline_s=5.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = time.monotonic()
    await held.release()
    ticket = await waiter
    assert time.monotonic() - started < 0.2  # not the 0.25 s poll
    await ticket.release()


async def test_other_ips_are_not_held_up_by_a_full_ip() -> None:
    limiter = Limiter([Rule("ip", "concurrency", "i.c", max_slots=1)])
    held = await limiter.take("127.0.0.1", "example.org")
    other = await limiter.take("127.0.0.2", "example.org", deadline_s=0)
    with pytest.raises(SMTPError):
        await limiter.take("127.0.0.1", "example.org", deadline_s=0.05)
    await held.release()
    await other.release()


async def test_a_rate_limit_waits_for_the_refill() -> None:
    limiter = Limiter([Rule("ip", "rate", "i.r", burst=1, period=0.2)])
    await limiter.take("192.0.2.1", "")
    started = time.monotonic()
    await limiter.take("192.0.2.1", "", deadline_s=2.0)
    assert 0.1 <= time.monotonic() - started < 1.0


async def test_an_exhausted_rate_gives_451_until_the_clock_moves() -> None:
    clock = FakeClock()
    limiter = Limiter(
        [Rule("source", "rate", "s.r", burst=2, period=3600.0)], MemoryStore(clock=clock)
    )
    for _ in range(2):
        await limiter.take("192.0.2.1", "example.org", deadline_s=0)
    with pytest.raises(SMTPError) as info:
        await limiter.take("192.0.2.1", "example.org", deadline_s=0.05)
    assert info.value.code == 451
    await limiter.take("192.0.2.1", "example.net", deadline_s=0)  # another domain
    clock.now += 3600
    await limiter.take("192.0.2.1", "example.org", deadline_s=0)


async def test_a_refusal_gives_back_the_slots_already_taken() -> None:
    store = MemoryStore()
    limiter = Limiter(
        [
            Rule("all", "concurrency", "a.c", max_slots=10),
            Rule("ip", "concurrency", "i.c", max_slots=1),
        ],
        store,
    )
    held = await limiter.take("192.0.2.1", "x")
    with pytest.raises(SMTPError):
        await limiter.take("192.0.2.1", "x", deadline_s=0.05)
    assert store.key_count("a.c") == 1 and held.slots == 2
    await held.release()
    assert store.key_count() == 0


async def test_cancelling_a_waiter_gives_back_its_slots() -> None:
    store = MemoryStore()
    limiter = Limiter(
        [
            Rule("all", "concurrency", "a.c", max_slots=10),
            Rule("source", "concurrency", "s.c", max_slots=1),
        ],
        store,
    )
    held = await limiter.take("192.0.2.1", "example.org")
    waiter = asyncio.create_task(limiter.take("192.0.2.2", "example.org"))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await held.release()
    assert store.key_count() == 0


async def test_no_rules_takes_nothing() -> None:
    ticket = await Limiter([]).take(None, "")
    assert ticket.slots == 0
    await ticket.release()


async def test_module_take_uses_an_injected_store(tmp_path: Path) -> None:
    mod = limits_of("ip rate 1 1h\n", tmp_path)
    clock = FakeClock()
    mod.use_store(MemoryStore(clock=clock))
    await mod.take(None, "")
    with pytest.raises(SMTPError):
        await mod.take("127.0.0.1", "", deadline_s=0.02)  # Unix = 127.0.0.1
    clock.now += 3600
    await mod.take("127.0.0.1", "", deadline_s=0)


# -- memory -------------------------------------------------------------------

FLOOD = 100_000
KiB = 1024


async def _flood(limiter: Limiter, clock: FakeClock, step: float) -> tuple[int, int]:
    """Send FLOOD transactions from distinct sender domains.

    Returns the traced memory after 40% (once the tables have reached their
    steady size, dict growth included) and at the end.
    """
    tracemalloc.start()
    try:
        early = 0
        for i in range(FLOOD):
            clock.now += step
            ticket = await limiter.take("192.0.2.1", f"d{i}.example", deadline_s=0)
            await ticket.release()
            if i == FLOOD * 2 // 5:
                early = tracemalloc.get_traced_memory()[0]
        return early, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def _source_limiter(store: MemoryStore) -> Limiter:
    return Limiter(
        [
            Rule("source", "rate", "s.r", burst=5, period=1.0),
            Rule("source", "concurrency", "s.c", max_slots=2),
        ],
        store,
    )


async def test_memory_is_flat_when_idle_sources_expire() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    # 10 ms apart: 1000 s in all, so a minute's worth (6000 keys) is live.
    early, late = await _flood(_source_limiter(store), clock, 0.01)
    assert store.key_count("s.r") <= 6001
    assert store.key_count("s.c") == 0
    assert late - early < 256 * KiB, (early, late)
    clock.now += 61
    await _source_limiter(store).take("192.0.2.1", "last.example")
    assert store.key_count("s.r") == 1


async def test_memory_is_flat_at_the_key_cap() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    early, late = await _flood(_source_limiter(store), clock, 0.0)  # a frozen clock
    assert store.key_count("s.r") == 20_000
    assert store.evicted == FLOOD - 20_000
    assert late - early < 256 * KiB, (early, late)


# -- counter names and a shared store -------------------------------------------


def test_rule_names_count_lines_of_one_scope_and_kind(tmp_path: Path) -> None:
    """`SCOPE.KIND.N`: stable when lines of other kinds come and go, so
    nodes with slightly different files still share counters."""
    mod = limits_of("    ip rate 5 10s\n    all rate 20\n    ip rate 50 1h\n", tmp_path)
    assert [r.name for r in mod.rules] == ["all.rate.0", "ip.rate.0", "ip.rate.1"]
    assert mod.limiter.prefix == "limits//"  # inline, before its endpoint adopts it
    mod.adopt(None, "smtp/25")
    assert mod.limiter.prefix == "limits/smtp/25/"


def test_a_named_block_names_its_counters_after_itself(tmp_path: Path) -> None:
    (ep,) = build(
        "limits inbound {\n  ip concurrency 1\n}\ntest.limited tcp://127.0.0.1:1 {\n"
        "  limits &inbound\n}\n",
        tmp_path,
    )
    assert isinstance(ep.limits, LimitsModule)
    ep.limits.adopt(MemoryStore(), "smtp/25")  # a named block keeps its own
    assert ep.limits.limiter.prefix == "limits/inbound/"
    assert ep.limits.state is None


class Unreachable(MemoryStore):
    """A shared store that cannot answer, in the given fail mode."""

    shared = True

    def __init__(self, *, fail_open: bool) -> None:
        super().__init__()
        self.fail_open = fail_open

    async def acquire(self, wanted: Sequence[Rate | Slot]) -> Grant:
        raise StoreUnavailable("down")

    async def release(self, held: Sequence[Held]) -> None:
        raise StoreUnavailable("down")


async def test_an_unreachable_store_fails_closed_with_451_at_once() -> None:
    limiter = Limiter([Rule("all", "rate", "a.r", burst=1)], Unreachable(fail_open=False))
    started = time.monotonic()
    with pytest.raises(SMTPError) as info:
        await limiter.take("192.0.2.1", "example.org")
    assert time.monotonic() - started < 0.5  # no waiting for the deadline
    assert (info.value.code, info.value.enhanced) == (451, (4, 4, 5))
    assert info.value.message == "Sending limits cannot be checked now, try again later"


async def test_an_unreachable_store_fails_open() -> None:
    limiter = Limiter([Rule("all", "concurrency", "a.c", max_slots=1)], Unreachable(fail_open=True))
    for _ in range(3):  # over the limit: nothing is counted
        ticket = await limiter.take("192.0.2.1", "example.org")
        assert ticket.slots == 0
    await ticket.release()


async def test_a_failed_release_empties_the_ticket() -> None:
    """The slots are the store's to expire then (leases); the ticket never
    gives them back twice."""
    store = MemoryStore()
    limiter = Limiter([Rule("all", "concurrency", "a.c", max_slots=2)], store)
    ticket = await limiter.take(None, "")
    limiter.store = Unreachable(fail_open=False)
    await ticket.release()
    assert ticket.slots == 0
