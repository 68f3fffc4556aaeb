"""The resolver wrapper against a real (fake, loopback) DNS server."""

from __future__ import annotations

import time

import pytest
from fakedns import SERVFAIL, FakeDNS

from kittiwake import dns as kdns
from kittiwake.dns import Resolver


async def test_reverse_names_and_their_cache() -> None:
    server = FakeDNS(
        {
            ("1.0.0.127.in-addr.arpa", "PTR"): ["client.example.test."],
            ("2.0.0.127.in-addr.arpa", "PTR"): SERVFAIL,
        }
    )
    try:
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
    finally:
        server.close()


async def test_the_cache_is_bounded_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeDNS({})
    monkeypatch.setattr(kdns, "PTR_CACHE_SIZE", 5)
    try:
        resolver = Resolver(server.address, timeout=1.0)
        for i in range(20):
            await resolver.reverse(f"127.0.1.{i}")
        assert len(resolver._ptr_cache) == 5
        clock = time.monotonic() + kdns.PTR_NEGATIVE_TTL + 1
        monkeypatch.setattr(kdns.time, "monotonic", lambda: clock)
        asked = len(server.queries)
        await resolver.reverse("127.0.1.19")  # expired: asked again
        assert len(server.queries) == asked + 1
    finally:
        server.close()
