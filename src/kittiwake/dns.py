"""DNS lookups without blocking the event loop.

One resolver per process, built from the system configuration or, for tests
and local experiments, pointed at a fixed server by `--debug.dnsoverride`.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename

#: Reverse names are cached: an MTA opens many sessions from one address,
#: and each session's Received field waits for its lookup.
PTR_TTL = 300.0
PTR_NEGATIVE_TTL = 60.0
PTR_CACHE_SIZE = 10000


class Resolver:
    """The lookups kittiwake needs, each bounded by a timeout."""

    def __init__(self, override: str | None = None, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._ptr_cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        if override is None:
            self._resolver = dns.asyncresolver.Resolver()
        else:
            host, _, port = override.rpartition(":")
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [host.strip("[]")]
            self._resolver.port = int(port)
        self._resolver.lifetime = timeout

    def cached_reverse(self, ip: str) -> tuple[bool, str | None]:
        """(True, name) when a fresh answer for `ip` is cached, else (False, None)."""
        cached = self._ptr_cache.get(ip)
        if cached is not None and cached[0] > time.monotonic():
            return True, cached[1]
        return False, None

    async def reverse(self, ip: str) -> str | None:
        """The first PTR name of `ip` without its trailing dot, or None.

        Any failure (no PTR, SERVFAIL, timeout) is None: a missing reverse
        name is common and must never fail a message (docs/server.md,
        "Received"). Answers are kept for a few minutes (a failure for one),
        at most `PTR_CACHE_SIZE` of them, least recently used dropped first.
        """
        now = time.monotonic()
        cached = self._ptr_cache.get(ip)
        if cached is not None and cached[0] > now:
            self._ptr_cache.move_to_end(ip)
            return cached[1]
        name = await self._reverse(ip)
        ttl = PTR_TTL if name is not None else PTR_NEGATIVE_TTL
        self._ptr_cache[ip] = (now + ttl, name)
        self._ptr_cache.move_to_end(ip)
        while len(self._ptr_cache) > PTR_CACHE_SIZE:
            self._ptr_cache.popitem(last=False)
        return name

    async def _reverse(self, ip: str) -> str | None:
        try:
            addr = ipaddress.ip_address(ip)
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
                addr = addr.ipv4_mapped
            name = dns.reversename.from_address(str(addr))
            answer = await self._resolver.resolve(name, "PTR", raise_on_no_answer=False)
        except (ValueError, dns.exception.DNSException):
            return None
        for record in answer.rrset or ():
            text = str(record.to_text()).rstrip(".")
            if text:
                return text
        return None
