"""DNS for every part of kittiwake: one resolver, one cache, honest errors.

Strategy. Checks (SPF, DKIM, DMARC, DNSBL, the DNS checks), reverse lookups
and later MX delivery all ask through one `Resolver` per process, built from
the system configuration or pointed at one server by `--debug.dnsoverride`
(docs/dns.md). It runs dnspython's asyncio resolver, so no lookup blocks
the event loop, and it keeps one cache for everybody:

* a positive answer is kept for its TTL (at most a day), a negative one
  (the name does not exist, or has no record of the type) for the TTL its
  zone's SOA asks for (RFC 2308 §5; at most an hour, a minute without SOA);
* a failure to get an answer is never kept: the next lookup tries again;
* at most `CACHE_SIZE` answers, least recently used dropped first, so an
  attacker who makes the server look up endless names costs bounded memory.

Errors say whether asking again later may help, because a check has to
tell "temperror" from "permerror" truthfully (RFC 7208 §2.6, RFC 6376
§6.1.2, RFC 7489 §6.6.3): a timeout, SERVFAIL or REFUSED, or a network
error is `TempDNSError`; a name that cannot be a DNS name is
`PermDNSError`. "No such name" and "no such record" are not errors but
answers (`Answer.nxdomain`, an empty `Answer.records`).

Libraries that are synchronous (pyspf, dkimpy) run in worker threads and
reach the same resolver through `Resolver.blocking()`, which hands each
lookup to the event loop and waits for it in the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

__all__ = [
    "CACHE_SIZE",
    "Answer",
    "BlockingResolver",
    "DNSError",
    "PermDNSError",
    "Resolver",
    "ReverseName",
    "TempDNSError",
]

#: Answers kept at most, of every type together.
CACHE_SIZE = 50_000
MAX_TTL = 86_400.0
MAX_NEGATIVE_TTL = 3_600.0
#: Negative answers without an SOA to say how long (RFC 2308 §5 wants one).
DEFAULT_NEGATIVE_TTL = 60.0
#: EDNS0 payload: the size the DNS flag day 2020 settled on; larger answers
#: (a 16 kbit DKIM key) come over TCP.
EDNS_PAYLOAD = 1232

#: The record types kittiwake asks for, and how each record is given back.
_TYPES = frozenset({"A", "AAAA", "MX", "TXT", "PTR", "CNAME", "TLSA", "NS", "SOA"})


class DNSError(Exception):
    """A lookup that got no answer; `temporary` tells whether to try again later."""

    temporary = False

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class TempDNSError(DNSError):
    """Timeout, SERVFAIL, REFUSED, no server reachable: asking later may work."""

    temporary = True


class PermDNSError(DNSError):
    """The question itself is wrong (not a DNS name): asking again will not help."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What DNS said about one (name, type).

    `records` by type: A and AAAA the address as text; MX `(preference,
    host)`; TXT the record's strings joined, as bytes (RFC 7208 §3.3, RFC
    6376 §3.6.2.2); PTR, CNAME and NS the host name; others the record's
    text. Host names are lowercase without the final dot. `nxdomain`: the
    name does not exist at all (RFC 8020: nothing below it either).
    `secure`: the resolver set the AD bit, so it validated the answer with
    DNSSEC (only meaningful from a validating resolver one trusts).
    `expires`: when it goes stale (`time.monotonic()`), so that whoever
    keeps a conclusion drawn from answers keeps it no longer than them.
    """

    name: str
    rdtype: str
    records: tuple[object, ...] = ()
    nxdomain: bool = False
    secure: bool = False
    expires: float = 0.0

    @property
    def void(self) -> bool:
        """No record: the name does not exist or has none of this type."""
        return not self.records


@dataclass(frozen=True, slots=True)
class ReverseName:
    """What the reverse lookup of one client address found.

    `name` is the first PTR name (None: no name). `error` says why there
    is no answer at all ("" when DNS answered, even with "no such name"),
    and `temporary` whether asking later may help. Text, not the exception
    itself, because results are cached and an exception keeps its
    traceback's frames alive.
    """

    name: str | None = None
    error: str = ""
    temporary: bool = False


def _host(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _records(rdtype: str, rrset: object) -> tuple[object, ...]:
    out: list[object] = []
    for rdata in rrset or ():  # type: ignore[attr-defined]
        if rdtype in ("A", "AAAA"):
            out.append(str(rdata.address))
        elif rdtype == "MX":
            out.append((int(rdata.preference), _host(rdata.exchange)))
        elif rdtype == "TXT":
            out.append(b"".join(rdata.strings))
        elif rdtype in ("PTR", "CNAME", "NS"):
            out.append(_host(rdata.target))
        else:
            out.append(rdata.to_text())
    return tuple(out)


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 §5: the SOA's minimum, bounded by the SOA record's own TTL."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                minimum = min(float(rrset.ttl), float(rrset[0].minimum))
                return max(0.0, min(minimum, MAX_NEGATIVE_TTL))
    return DEFAULT_NEGATIVE_TTL


class Resolver:
    """The one resolver of the process: lookups, each bounded by `timeout`."""

    def __init__(self, override: str | None = None, *, timeout: float = 5.0) -> None:
        """`override`: `HOST:PORT` of the only server to ask (`--debug.dnsoverride`)."""
        self.timeout = timeout
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[Answer]] = {}
        if override is None:
            self._resolver = dns.asyncresolver.Resolver()
        else:
            host, _, port = override.rpartition(":")
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [host.strip("[]")]
            self._resolver.port = int(port)
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 2.0)
        self._resolver.use_edns(0, 0, EDNS_PAYLOAD)
        # RFC 6840 §5.7: ask a validating resolver to say whether it validated.
        self._resolver.flags = dns.flags.RD | dns.flags.AD
        self._ptr_first: OrderedDict[str, tuple[float, ReverseName]] = OrderedDict()

    @property
    def ad_trusted(self) -> bool:
        """Whether the AD bit of this resolver's answers can be believed.

        The bit says the server validated the answer with DNSSEC, but it
        travels unprotected: only a validating resolver on this host
        (loopback) can be trusted to have set it (RFC 6698 §4.1, RFC 7672
        §2.2; docs/mx-auth.md). `--debug.dnsoverride` to a loopback
        address counts as such a resolver, which is how tests use it.
        """
        servers = [str(s) for s in self._resolver.nameservers]
        return bool(servers) and all(_loopback(s) for s in servers)

    # -- the cache ------------------------------------------------------------

    def cached(self, name: str, rdtype: str) -> Answer | None:
        """A fresh cached answer, or None (no lookup is made)."""
        key = (_key_name(name), rdtype.upper())
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry[1]

    def _keep(self, key: tuple[str, str], answer: Answer, ttl: float) -> None:
        if ttl <= 0:
            return
        self._cache[key] = (time.monotonic() + ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    # -- lookups ----------------------------------------------------------------

    async def query(self, name: str, rdtype: str) -> Answer:
        """The records of type `rdtype` at `name`; raises `DNSError` only for failures.

        Concurrent lookups of one (name, type) share one query.
        """
        rdtype = rdtype.upper()
        if rdtype not in _TYPES:
            raise ValueError(f"record type {rdtype} is not looked up by kittiwake")
        key = (_key_name(name), rdtype)
        hit = self.cached(*key)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            # The query runs in a task of its own, which every asker awaits
            # shielded: one asker giving up (a check's time bound) cancels
            # nothing for the others.
            task = asyncio.get_running_loop().create_task(self._ask(key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        return await asyncio.shield(task)

    def _settled(self, key: tuple[str, str], task: asyncio.Task[Answer]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # seen here too: every asker may have given up

    async def _ask(self, key: tuple[str, str]) -> Answer:
        name, rdtype = key
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
            raise PermDNSError(f"not a DNS name: {exc}", name) from None
        try:
            result = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[dns.name.Name, dns.message.Message] = exc.responses()  # type: ignore[no-untyped-call]
            response = responses.get(qname)
            ttl = _negative_ttl(response)
            answer = Answer(name, rdtype, nxdomain=True, expires=time.monotonic() + ttl)
            self._keep(key, answer, ttl)
            return answer
        except dns.resolver.YXDOMAIN:
            raise PermDNSError("the name is too long after DNAME substitution", name) from None
        except dns.exception.Timeout:
            raise TempDNSError(f"DNS timeout looking up {rdtype} {name}", name) from None
        except dns.resolver.NoNameservers as exc:
            raise TempDNSError(f"DNS servers failed for {rdtype} {name}: {exc}", name) from None
        except dns.exception.DNSException as exc:
            raise TempDNSError(f"DNS error for {rdtype} {name}: {exc}", name) from None
        secure = bool(result.response.flags & dns.flags.AD)
        records = _records(rdtype, result.rrset)
        if records:
            ttl = min(max(0.0, result.expiration - time.time()), MAX_TTL)
        else:
            ttl = _negative_ttl(result.response)
        answer = Answer(name, rdtype, records, secure=secure, expires=time.monotonic() + ttl)
        self._keep(key, answer, ttl)
        return answer

    async def txt(self, name: str) -> list[bytes]:
        """Every TXT record at `name`, each one's strings joined."""
        return [r for r in (await self.query(name, "TXT")).records if isinstance(r, bytes)]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """MX records at `name` as (preference, host), lowest preference first."""
        records = (await self.query(name, "MX")).records
        return sorted(r for r in records if isinstance(r, tuple))

    async def addresses(self, name: str) -> list[str]:
        """The A and AAAA addresses of `name` (both asked at once)."""
        a, aaaa = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"))
        return [str(r) for r in (*a.records, *aaaa.records)]

    async def ptr(self, ip: str) -> Answer:
        """The PTR records of an address (IPv4-mapped IPv6 as IPv4)."""
        try:
            addr = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            raise PermDNSError(f"not an IP address: {ip!r}", ip) from None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        name = dns.reversename.from_address(str(addr)).to_text(omit_final_dot=True)
        return await self.query(name, "PTR")

    # -- reverse names of clients ---------------------------------------------------

    def cached_reverse(self, ip: str) -> ReverseName | None:
        """The fresh cached result of `reverse_lookup(ip)`, or None (no lookup is made)."""
        entry = self._ptr_first.get(ip)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        return None

    async def reverse_lookup(self, ip: str) -> ReverseName:
        """The first PTR name of `ip`, or why there is none; never raises a DNSError.

        A missing reverse name is common and must never fail a message by
        itself (docs/dns.md, "Reverse names"), but `require_matching_rdns`
        must tell "no name" from "DNS failed", so the failure is kept as
        data. The result is remembered (a name for five minutes, anything
        else for one), so a slow resolver does not stall every session of
        one client.
        """
        cached = self.cached_reverse(ip)
        if cached is not None:
            return cached
        try:
            answer = await self.ptr(ip)
            first: str | None = next((str(r) for r in answer.records if r), None)
            result = ReverseName(first)
        except DNSError as exc:
            result = ReverseName(None, str(exc) or type(exc).__name__, exc.temporary)
        ttl = 300.0 if result.name is not None else 60.0
        self._ptr_first[ip] = (time.monotonic() + ttl, result)
        self._ptr_first.move_to_end(ip)
        while len(self._ptr_first) > CACHE_SIZE:
            self._ptr_first.popitem(last=False)
        return result

    async def reverse(self, ip: str) -> str | None:
        """The first PTR name of `ip`, or None whatever went wrong (Received, logs)."""
        return (await self.reverse_lookup(ip)).name

    # -- for worker threads -----------------------------------------------------------

    def blocking(self, loop: asyncio.AbstractEventLoop | None = None) -> BlockingResolver:
        """A view of this resolver for code running in a worker thread."""
        return BlockingResolver(self, loop or asyncio.get_running_loop())


class BlockingResolver:
    """Lookups from a worker thread: each runs on the event loop; the thread waits.

    Never call it on the event loop's own thread: it would wait for itself.
    """

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop) -> None:
        self.resolver = resolver
        self.loop = loop

    def query(self, name: str, rdtype: str) -> Answer:
        future = asyncio.run_coroutine_threadsafe(self.resolver.query(name, rdtype), self.loop)
        try:
            # The resolver bounds each lookup itself; this only guards a
            # loop that stopped answering (shutdown).
            return future.result(self.resolver.timeout + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TempDNSError(f"DNS lookup of {rdtype} {name} did not finish", name) from None

    def txt(self, name: str) -> Sequence[bytes]:
        return [r for r in self.query(name, "TXT").records if isinstance(r, bytes)]


def _key_name(name: str) -> str:
    return name.rstrip(".").lower()


def _loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.strip("[]").partition("%")[0]).is_loopback
    except ValueError:
        return False  # a DNS-over-HTTPS URL or a name: not a local validator
