"""Hostile SPF records: each gives its RFC 7208 result, in bounded time, and nothing else.

Records are served by `FakeDNS` and asked through `kittiwake.dns.Resolver`,
as in the server, and evaluated by `spf_eval.evaluate`. For each attack:
the result RFC 7208 gives (permerror for a broken or over-limit policy,
temperror for DNS that fails), within the time bound, no exception, and
the event loop free meanwhile. Each limit is tested at the limit and one
past it. The end-to-end proof that other sessions go on while one waits
is in test_spf_e2e.py.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
from collections.abc import Iterator

import dns.resolver
import pytest
import spf
from fakedns import TIMEOUT, FakeDNS, txt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kittiwake.checks.spf_eval import MAX_RECORD, MAX_TERM, MAX_TEXT, RESULTS, evaluate
from kittiwake.dns import Resolver

CLIENT = "192.0.2.1"
Records = dict[tuple[str, str], list[str] | str]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeDNS]:
    fake = FakeDNS({})
    try:
        yield fake
    finally:
        fake.close()


async def check(
    server: FakeDNS,
    records: Records,
    sender: str = "a@victim.test",
    *,
    bound: float = 3.0,
    time_limit: float = 20.0,
    ip: str = CLIENT,
) -> tuple[str, str, str]:
    """(result, problem, explanation) for `sender`, checking the time and the loop.

    A stall of the event loop is measured by a ticker beside the
    evaluation. On a loaded machine the whole process may also wait for a
    core for a moment, which looks the same, so a stall is only a failure
    when it happens on three fresh evaluations (fresh resolver, empty
    cache) in a row: evaluation code that blocks the loop stalls it every
    time.
    """
    server.records.clear()
    for (name, rtype), value in records.items():
        server.set(name, rtype, value)
    for _ in range(3):
        resolver = Resolver(server.address, timeout=0.5)
        lag = 0.0

        async def ticker() -> None:
            nonlocal lag
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.005)
                lag = max(lag, time.monotonic() - before)

        watch = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            outcome = await evaluate(resolver, ip, sender, "helo.test", time_limit=time_limit)
        finally:
            watch.cancel()
        assert time.monotonic() - started < bound
        if lag < 0.25:
            break
    assert lag < 0.25, f"the event loop stalled for {lag:.2f} s, three times"
    assert outcome.result in RESULTS
    return outcome.result, outcome.problem, outcome.explanation


def policy(text: str) -> Records:
    return {("victim.test", "TXT"): [txt(text)]}


def hosts(count: int, prefix: str = "h") -> Records:
    """`count` names with an A record each (non-void lookups)."""
    return {(f"{prefix}{i}.test", "A"): ["198.51.100.1"] for i in range(count)}


def sized(size: int) -> str:
    """An SPF record of exactly `size` bytes that fails 192.0.2.1, terms at most 100 long."""
    head, tail = "v=spf1", "-all"
    terms: list[str] = []
    room = size - len(head) - len(tail) - 2  # the spaces around the filling
    while room > 101:
        terms.append(f"x{len(terms):03d}" + "a" * 94 + "=1")  # unknown modifiers: ignored
        room -= 101
    terms.append("y=" + "b" * (room - 2))
    record = " ".join([head, *terms, tail])
    assert len(record) == size
    return record


# -- loops and the lookup limits (RFC 7208 §4.6.4) -----------------------------------


async def test_include_loop(server: FakeDNS) -> None:
    records: Records = {
        ("victim.test", "TXT"): [txt("v=spf1 include:other.test -all")],
        ("other.test", "TXT"): [txt("v=spf1 include:victim.test -all")],
    }
    result, problem, _ = await check(server, records)
    assert (result, problem) == ("permerror", "Too many DNS lookups")


async def test_redirect_loop(server: FakeDNS) -> None:
    records: Records = {
        ("victim.test", "TXT"): [txt("v=spf1 redirect=other.test")],
        ("other.test", "TXT"): [txt("v=spf1 redirect=victim.test")],
    }
    result, problem, _ = await check(server, records)
    assert (result, problem) == ("permerror", "Too many DNS lookups")


async def test_a_hundred_mechanisms_without_dns_are_fine(server: FakeDNS) -> None:
    terms = " ".join(f"ip4:10.0.{i}.0/24" for i in range(100))
    assert (await check(server, policy(f"v=spf1 {terms} ip4:{CLIENT} -all")))[0] == "pass"


@pytest.mark.parametrize(("count", "result"), [(10, "fail"), (11, "permerror")])
async def test_ten_dns_mechanisms_and_one_more(server: FakeDNS, count: int, result: str) -> None:
    terms = " ".join(f"a:h{i}.test" for i in range(count))
    records = policy(f"v=spf1 {terms} -all") | hosts(count)
    assert (await check(server, records))[0] == result


async def test_a_hundred_dns_mechanisms(server: FakeDNS) -> None:
    terms = " ".join(f"a:h{i}.test" for i in range(100))
    records = policy(f"v=spf1 {terms} -all") | hosts(100)
    assert (await check(server, records))[:2] == ("permerror", "Too many DNS lookups")


@pytest.mark.parametrize(("count", "result"), [(2, "fail"), (3, "permerror")])
async def test_two_void_lookups_and_one_more(server: FakeDNS, count: int, result: str) -> None:
    terms = " ".join(f"a:void{i}.test" for i in range(count))
    assert (await check(server, policy(f"v=spf1 {terms} -all")))[0] == result


@pytest.mark.parametrize(("count", "result"), [(10, "fail"), (11, "permerror")])
async def test_ten_mx_names_and_one_more(server: FakeDNS, count: int, result: str) -> None:
    records = policy("v=spf1 mx -all") | hosts(count, "mx")
    records[("victim.test", "MX")] = [f"{i} mx{i}.test." for i in range(count)]
    assert (await check(server, records))[0] == result


# -- DNS that misbehaves -------------------------------------------------------------


async def test_cname_loop_is_a_temperror(server: FakeDNS) -> None:
    records: Records = {
        ("victim.test", "CNAME"): ["loop.test."],
        ("loop.test", "CNAME"): ["victim.test."],
    }
    assert (await check(server, records))[0] == "temperror"


async def test_cname_loop_in_a_mechanism_is_a_temperror(server: FakeDNS) -> None:
    records = policy("v=spf1 a:loop1.test -all") | {
        ("loop1.test", "CNAME"): ["loop2.test."],
        ("loop2.test", "CNAME"): ["loop1.test."],
    }
    assert (await check(server, records))[0] == "temperror"


async def test_a_lookup_that_never_ends_is_cut_at_the_time_limit(server: FakeDNS) -> None:
    # The resolver would wait its 0.5 s; the evaluation's own limit is shorter.
    records = policy("v=spf1 a:slow.test -all") | {("slow.test", "A"): TIMEOUT}
    started = time.monotonic()
    result, problem, _ = await check(server, records, time_limit=0.2, bound=1.0)
    assert (result, problem) == ("temperror", "SPF evaluation took too long")
    assert time.monotonic() - started < 0.45


async def test_stalling_includes_end_in_temperror(server: FakeDNS) -> None:
    terms = " ".join(f"include:s{i}.test" for i in range(10))
    records = policy(f"v=spf1 {terms} -all") | {(f"s{i}.test", "TXT"): TIMEOUT for i in range(10)}
    result, problem, _ = await check(server, records)
    assert result == "temperror" and "timeout" in problem


# -- oversized and malformed records ----------------------------------------------------


@pytest.mark.parametrize(("size", "result"), [(MAX_RECORD, "fail"), (MAX_RECORD + 1, "permerror")])
async def test_record_size_at_the_limit_and_past_it(
    server: FakeDNS, size: int, result: str
) -> None:
    outcome = await check(server, policy(sized(size)))  # 4 kB: over TCP
    assert outcome[0] == result


@pytest.mark.parametrize(("length", "result"), [(MAX_TERM, "fail"), (MAX_TERM + 1, "permerror")])
async def test_term_length_at_the_limit_and_past_it(
    server: FakeDNS, length: int, result: str
) -> None:
    term = "p=" + "a" * (length - 2)
    assert (await check(server, policy(f"v=spf1 {term} -all")))[0] == result


@pytest.mark.parametrize(("length", "shown"), [(MAX_TEXT, True), (MAX_TEXT + 1, False)])
async def test_explanation_length_at_the_limit_and_past_it(
    server: FakeDNS, length: int, shown: bool
) -> None:
    text = "x" * length
    records = policy("v=spf1 -all exp=why.test") | {("why.test", "TXT"): [txt(text)]}
    # Explanations are kept for the log, cut to 200 characters.
    assert (await check(server, records))[::2] == ("fail", text[:200] if shown else "")


async def test_a_huge_unrelated_txt_record_does_not_matter(server: FakeDNS) -> None:
    records: Records = {("victim.test", "TXT"): [txt("v=spf1 +all"), txt("z" * 30000)]}
    assert (await check(server, records))[0] == "pass"


async def test_a_huge_spf_record_costs_no_time(server: FakeDNS) -> None:
    # pyspf alone spends a minute of CPU on this (a 60 kB term).
    term = "a:" + ".aaaa" * 10 + "a" * 60000 + "!"
    result, problem, _ = await check(server, policy(f"v=spf1 {term} -all"), bound=1.0)
    assert result == "permerror" and "bytes (at most" in problem


async def test_the_worst_records_within_the_limits(server: FakeDNS) -> None:
    # Eleven records (the top one and ten includes) of the largest size, all
    # valid, every term as long as allowed and full of macros: the slowest
    # work pyspf can be made to do within the limits.
    def heavy(tag: str) -> str:
        room = MAX_RECORD - 200
        terms = []
        while room > MAX_TERM:
            name = f"{tag}{len(terms):03d}="
            terms.append(name + "%{i}." * ((MAX_TERM - len(name) - 4) // 5) + "test")
            room -= MAX_TERM + 1
        return " ".join(terms)

    includes = " ".join(f"include:i{i}.test" for i in range(10))
    top = f"v=spf1 {includes} {heavy('t')} -all exp=why.test"
    records: Records = {
        ("victim.test", "TXT"): [txt(top)],
        ("why.test", "TXT"): [txt("%{i} " * (MAX_TEXT // 5))],
    }
    for i in range(10):
        records[(f"i{i}.test", "TXT")] = [txt(f"v=spf1 {heavy('m')} -all")]
    assert len(top) <= MAX_RECORD
    started = time.process_time()
    result, problem, explanation = await check(server, records, bound=5.0)
    assert (result, problem) == ("fail", "")
    assert "192.0.2.1 192.0.2.1" in explanation
    assert time.process_time() - started < 2.0


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 ip4:192.0.2.1/33 -all",
        "v=spf1 a/" + "9" * 290 + " -all",
        "v=spf1 ip6:" + ":" * 200 + " -all",
        "v=spf1 ip4: -all",
        "v=spf1 a:%{ -all",
        "v=spf1 exists:%{z}.test -all",
        "v=spf1 a:foo\x00.test -all",
        "v=spf1 \x96all",
        "v=spf1 redirect=",
        "v=spf1 include:",
        "v=spf1 -all redirect=a.test redirect=b.test",
    ],
)
async def test_malformed_records_are_permerrors(server: FakeDNS, record: str) -> None:
    assert (await check(server, policy(record)))[0] == "permerror"


async def test_two_spf_records_are_a_permerror(server: FakeDNS) -> None:
    records: Records = {("victim.test", "TXT"): [txt("v=spf1 +all"), txt("v=spf1 -all")]}
    assert (await check(server, records))[0] == "permerror"


async def test_invalid_utf8_and_control_characters_in_a_record(server: FakeDNS) -> None:
    records: Records = {("victim.test", "TXT"): [txt(b"v=spf1 a:\xff\xfe\r\n.test -all")]}
    result, problem, _ = await check(server, records)
    assert result == "permerror"
    assert problem.isprintable() and problem.isascii()


# -- macro expansion abuse ------------------------------------------------------------


async def test_macros_expanding_past_a_domain_name_are_cut_on_the_left(server: FakeDNS) -> None:
    # RFC 7208 §7.3: the left side is cut to 253 characters.
    term = "exists:" + "%{d}." * 40 + "end.test"
    records = policy(f"v=spf1 {term} -all")
    fit = "test." + "victim.test." * 20 + "end.test"
    assert len(fit) == 253
    records[(fit, "A")] = ["127.0.0.2"]
    assert (await check(server, records))[0] == "pass"


@pytest.mark.parametrize(
    "term",
    [
        "exists:%{l1r-}.%{l2r+}.%{o9999999999999999999}.%{d0}.test",
        "exists:%{ir}.%{v}.%{h}.%{s}.%{l}.%{o}.%{d}.test",
        "exists:" + "%{p}." * 40 + "test",
        "exists:" + "%%%_%-" * 40 + ".test",
    ],
)
async def test_macro_abuse_stays_within_the_limits(server: FakeDNS, term: str) -> None:
    records = policy(f"v=spf1 {term} -all")
    result, _, _ = await check(server, records, "a-b+c.d@victim.test")
    assert result in ("fail", "permerror")


# -- many at once, and nothing left behind ----------------------------------------------


async def test_concurrent_evaluations_each_see_their_own_answers(server: FakeDNS) -> None:
    server.records.clear()
    for i in range(40):
        server.set(f"d{i}.test", "TXT", [txt("v=spf1 +all" if i % 2 else "v=spf1 -all")])
    resolver = Resolver(server.address, timeout=1.0)
    outcomes = await asyncio.gather(
        *(evaluate(resolver, CLIENT, f"a@d{i}.test", "helo.test") for i in range(40))
    )
    assert [o.result for o in outcomes] == ["fail", "pass"] * 20


def test_the_hook_answers_nothing_outside_an_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pyspf's dnspython glue ran")

    monkeypatch.setattr(dns.resolver, "query", forbidden)
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            spf.DNSLookup("example.org", "TXT", True, 20)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join(5)
    (failure,) = failures
    assert isinstance(failure, spf.TempError)


async def test_no_memory_growth(server: FakeDNS) -> None:
    records = policy("v=spf1 include:other.test -all") | {
        ("other.test", "TXT"): [txt("v=spf1 include:victim.test " + "a:v%{i}.test " * 3)],
    }
    server.records.clear()
    for (name, rtype), value in records.items():
        server.set(name, rtype, value)
    resolver = Resolver(server.address, timeout=0.5)

    async def run(count: int) -> None:
        for _ in range(count):
            assert (await evaluate(resolver, CLIENT, "a@victim.test", "h.test")).result

    await run(20)  # warm: caches, threads
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await run(200)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes kept after 200 evaluations"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                ["a", "mx", "ptr", "exists:", "include:", "redirect=", "exp=", "ip4:", "ip6:"]
            ),
            st.text(alphabet="%{}.:/-_=+?~ailmnoprstvxyz0123456789", max_size=30),
        ),
        max_size=12,
    )
)
async def test_any_record_gives_a_result(server: FakeDNS, terms: list[str]) -> None:
    records = policy("v=spf1 " + " ".join(terms)) | {("x.test", "TXT"): [txt("v=spf1 ?all")]}
    await check(server, records)
