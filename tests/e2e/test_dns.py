"""The resolver every check uses, against a real (fake, loopback) DNS server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fakedns import SERVFAIL, TIMEOUT, FakeDNS, txt

from kittiwake import dns as kdns
from kittiwake.dns import PermDNSError, Resolver, TempDNSError


@pytest.fixture
def server() -> Iterator[FakeDNS]:
    fake = FakeDNS(
        {
            ("1.0.0.127.in-addr.arpa", "PTR"): ["client.example.test."],
            ("2.0.0.127.in-addr.arpa", "PTR"): SERVFAIL,
            ("example.org", "MX"): ["20 mx2.example.org.", "10 mx1.example.org."],
            ("example.org", "TXT"): [txt("v=spf1 -all"), txt("other")],
            ("mx1.example.org", "A"): ["192.0.2.1"],
            ("mx1.example.org", "AAAA"): ["2001:db8::1"],
            ("alias.example.org", "CNAME"): ["mx1.example.org."],
            ("loop1.example.org", "CNAME"): ["loop2.example.org."],
            ("loop2.example.org", "CNAME"): ["loop1.example.org."],
            ("broken.example.org", "TXT"): SERVFAIL,
            ("stall.example.org", "TXT"): TIMEOUT,
            ("big.example.org", "TXT"): [txt("k=rsa; p=" + "A" * 3000)],
        },
        ttl=300,
        negative_ttl=30,
    )
    try:
        yield fake
    finally:
        fake.close()


async def test_records_by_type(server: FakeDNS) -> None:
    resolver = Resolver(server.address, timeout=1.0)
    assert await resolver.mx("example.org") == [(10, "mx1.example.org"), (20, "mx2.example.org")]
    assert sorted(await resolver.txt("Example.ORG.")) == [b"other", b"v=spf1 -all"]
    assert await resolver.addresses("mx1.example.org") == ["192.0.2.1", "2001:db8::1"]
    answer = await resolver.query("alias.example.org", "A")  # a CNAME is followed
    assert answer.records == ("192.0.2.1",)


async def test_no_name_and_no_data_are_answers_not_errors(server: FakeDNS) -> None:
    resolver = Resolver(server.address, timeout=1.0)
    missing = await resolver.query("nothing.example.org", "TXT")
    assert missing.nxdomain and missing.void
    nodata = await resolver.query("mx1.example.org", "TXT")  # the name has other records
    assert not nodata.nxdomain and nodata.void


async def test_failures_are_temporary_and_never_cached(server: FakeDNS) -> None:
    resolver = Resolver(server.address, timeout=0.5)
    for name in ("broken.example.org", "loop1.example.org"):
        with pytest.raises(TempDNSError):
            await resolver.query(name, "TXT")
    started = time.monotonic()
    with pytest.raises(TempDNSError, match="timeout"):
        await resolver.query("stall.example.org", "TXT")
    assert time.monotonic() - started < 2.0  # bounded by the resolver's timeout
    asked = len(server.queries)
    with pytest.raises(TempDNSError):
        await resolver.query("broken.example.org", "TXT")
    assert len(server.queries) > asked  # asked again: failures are not kept
    with pytest.raises(PermDNSError):
        await resolver.query("a" * 70 + ".example.org", "TXT")  # a label over 63 octets


async def test_answers_are_cached_for_their_ttl(
    server: FakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = Resolver(server.address, timeout=1.0)
    await resolver.txt("example.org")
    await resolver.query("nothing.example.org", "TXT")
    asked = len(server.queries)
    for _ in range(10):
        await resolver.txt("example.org")
        await resolver.query("nothing.example.org", "TXT")
    assert len(server.queries) == asked
    now = time.monotonic()
    monkeypatch.setattr(kdns.time, "monotonic", lambda: now + 31)  # past the SOA's 30 s
    await resolver.query("nothing.example.org", "TXT")
    assert len(server.queries) == asked + 1
    await resolver.txt("example.org")  # 300 s: still fresh
    assert len(server.queries) == asked + 1


async def test_concurrent_lookups_share_one_query(server: FakeDNS) -> None:
    resolver = Resolver(server.address, timeout=1.0)
    results = await asyncio.gather(*(resolver.txt("example.org") for _ in range(50)))
    assert all(sorted(r) == [b"other", b"v=spf1 -all"] for r in results)
    assert server.queries.count(("example.org.", "TXT")) == 1


async def test_a_large_answer_comes_over_tcp(server: FakeDNS) -> None:
    resolver = Resolver(server.address, timeout=1.0)
    (record,) = await resolver.txt("big.example.org")
    assert record == b"k=rsa; p=" + b"A" * 3000


async def test_the_cache_is_bounded(server: FakeDNS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kdns, "CACHE_SIZE", 5)
    resolver = Resolver(server.address, timeout=1.0)
    for i in range(20):
        await resolver.query(f"n{i}.example.org", "A")
    assert len(resolver._cache) == 5


async def test_worker_threads_ask_through_the_loop(server: FakeDNS) -> None:
    resolver = Resolver(server.address, timeout=1.0)
    blocking = resolver.blocking()
    found = await asyncio.to_thread(blocking.txt, "example.org")
    assert sorted(found) == [b"other", b"v=spf1 -all"]
    with pytest.raises(TempDNSError):
        await asyncio.to_thread(blocking.query, "broken.example.org", "TXT")


async def test_reverse_names_and_their_cache(server: FakeDNS) -> None:
    resolver = Resolver(server.address, timeout=1.0)
    assert await resolver.reverse("127.0.0.1") == "client.example.test"
    assert await resolver.reverse("::ffff:127.0.0.1") == "client.example.test"
    assert await resolver.reverse("127.0.0.2") is None  # SERVFAIL: no name, no error
    assert await resolver.reverse("127.0.0.3") is None  # NXDOMAIN
    assert await resolver.reverse("not an ip") is None
    asked = len(server.queries)
    for _ in range(20):  # answered from the cache: no more queries
        assert await resolver.reverse("127.0.0.1") == "client.example.test"
        assert await resolver.reverse("127.0.0.3") is None
    assert len(server.queries) == asked


async def test_reverse_lookup_tells_no_name_from_a_failure(server: FakeDNS) -> None:
    """`require_matching_rdns` needs the difference; Received only wants the name."""
    resolver = Resolver(server.address, timeout=1.0)
    found = await resolver.reverse_lookup("127.0.0.1")
    assert found == kdns.ReverseName("client.example.test")
    missing = await resolver.reverse_lookup("127.0.0.3")  # NXDOMAIN: an answer
    assert missing == kdns.ReverseName(None)
    failed = await resolver.reverse_lookup("127.0.0.2")  # SERVFAIL
    assert failed.name is None and failed.temporary and "SERVFAIL" in failed.error
    bad = await resolver.reverse_lookup("not an ip")
    assert bad.name is None and not bad.temporary and bad.error
    asked = len(server.queries)
    assert resolver.cached_reverse("127.0.0.2") == failed  # kept, error and all
    assert await resolver.reverse_lookup("127.0.0.2") == failed
    assert len(server.queries) == asked


async def test_one_asker_giving_up_does_not_fail_the_others(server: FakeDNS) -> None:
    """A shared lookup goes on for the others when its first asker is cancelled."""
    server.set("slow.example.org", "TXT", [txt("answer")])
    resolver = Resolver(server.address, timeout=1.0)
    first = asyncio.ensure_future(resolver.txt("slow.example.org"))
    second = asyncio.ensure_future(resolver.txt("slow.example.org"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == [b"answer"]
    with pytest.raises(asyncio.CancelledError):
        await first
