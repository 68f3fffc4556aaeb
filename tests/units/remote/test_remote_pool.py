"""The idle connection pool's bookkeeping, with a clock the test moves."""

from __future__ import annotations

from kittiwake.remote.pool import Pool, PoolSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(clock: Clock, **settings: float) -> Pool[str]:
    return Pool(PoolSettings(**settings), clock=clock)  # type: ignore[arg-type]


def test_take_gives_the_newest_idle_connection_of_the_domain() -> None:
    clock = Clock()
    p = pool(clock)
    assert p.give("a.example", "old", 1) == []
    clock.now += 1
    assert p.give("a.example", "new", 1) == []
    assert p.give("b.example", "other", 1) == []
    assert p.take("a.example") == ("new", [])
    assert p.take("a.example") == ("old", [])
    assert p.take("a.example") == (None, [])
    assert p.idle("b.example") == 1 and len(p) == 1


def test_reuse_limit_closes_instead_of_pooling() -> None:
    p = pool(Clock(), reuse_limit=3)
    assert p.give("a.example", "c", 2) == []
    assert p.give("a.example", "d", 3) == ["d"]  # carried its 3 transactions
    assert p.idle("a.example") == 1


def test_at_most_max_idle_per_domain() -> None:
    p = pool(Clock(), max_idle=2)
    assert p.give("a.example", "1", 1) == []
    assert p.give("a.example", "2", 1) == []
    assert p.give("a.example", "3", 1) == ["3"]
    assert p.give("b.example", "4", 1) == []  # another domain has its own room
    assert pool(Clock(), max_idle=0).give("a.example", "x", 1) == ["x"]  # no pool at all


def test_idle_time() -> None:
    clock = Clock()
    p = pool(clock, idle_time=150.0)
    p.give("a.example", "first", 1)
    clock.now += 100
    p.give("a.example", "second", 1)
    clock.now += 50  # first: 150 s idle, second: 50 s
    assert p.expired() == ["first"]
    assert p.expired() == []
    clock.now += 100
    assert p.take("a.example") == (None, ["second"])  # stale ones found on the way
    assert len(p) == 0


def test_take_skips_stale_to_a_fresh_one() -> None:
    clock = Clock()
    p = pool(clock, idle_time=10.0)
    p.give("a.example", "stale", 1)
    clock.now += 20
    p.give("a.example", "fresh", 1)
    # newest first: the fresh one, the stale one stays for the sweeper
    assert p.take("a.example") == ("fresh", [])
    assert p.expired() == ["stale"]


def test_drain_closes_the_pool() -> None:
    p = pool(Clock())
    p.give("a.example", "x", 1)
    p.give("b.example", "y", 1)
    assert sorted(p.drain()) == ["x", "y"]
    assert p.closed and len(p) == 0
    assert p.give("a.example", "z", 1) == ["z"]
