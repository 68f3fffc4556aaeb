"""`check.dnsbl`: score a client by DNS-based block lists (docs/checks.md, RFC 5782).

    check.dnsbl {
        check_early no
        quarantine_threshold 1
        reject_threshold 9999
        ZONE [ZONE...] {            # one list per zone, these settings each
            client_ipv4 yes
            client_ipv6 yes
            ehlo no
            mailfrom no
            responses 127.0.0.1/24
            score 1
            response IP|NET... { score N; message TEXT }
        }
    }
    dnsbl ZONE...                   # inline: client_ipv4 yes, client_ipv6 no, score 1

Strategy. Each list that answers "listed" about one of the client's
identities adds its score; the sum decides: at `reject_threshold` the
message fails with `554 5.7.0`, at `quarantine_threshold` it is marked.
A lookup that fails (not "no such name": that is "not listed") fails the
message outright with `451`/`554 DNS error during policy check`, since a
verdict on half the lists would be a guess.

The identities come at two moments, so the check works at any level of
a pipeline: the client's address and its greeting name at the connection
stage, the MAIL FROM domain at the sender stage. Each list counts once:
the first of its identities found listed (address, greeting, sender)
makes its score, as in maddy. The connection-stage lists are asked
concurrently, then the sender-stage ones. Sender lists only add (a
negative score there is refused in the configuration), so the connection
stage may already reject; otherwise the verdict waits for the sender.

The connection-stage result depends only on the client's address and
greeting, so it is remembered for the session (`ConnInfo.module_data`)
and each further message reuses it. With `check_early`, a check at the
root of an endpoint's pipeline works it out when the client greets, and
a client at `reject_threshold` is refused there: its greeting fails and
no message ever starts. Without `check_early` nothing is looked up until
a message starts, so clients that never send cost no lookups.

maddy differs: it scores only at the greeting, only at the root, and never
asks `mailfrom` lists; its inline form makes lists that never count.

At start every list is probed in the background for its RFC 5782 §5 test
entries (127.0.0.2 / ::FFFF:7F00:2 / `test` listed, 127.0.0.1 /
::FFFF:7F00:1 / `invalid` not); what is wrong is only logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace

from kittiwake.address import NormalizationError, split
from kittiwake.background import stop_task
from kittiwake.checks.base import OK, CheckResult, CheckState, CheckStateBase
from kittiwake.checks.dns import same_host
from kittiwake.checks.dnsbl_lists import (
    DNSList,
    Hit,
    addresses,
    client_address,
    domain_query,
    ip_query,
    lookup,
    read_list,
)
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.dns import DNSError
from kittiwake.errors import SMTPError
from kittiwake.message import ConnInfo, MsgMeta
from kittiwake.module import Module, register

__all__ = ["DNSBL"]

LISTED = "Client identity is listed in the used DNSBL"
DNS_ERROR = "DNS error during policy check"


@dataclass(frozen=True, slots=True)
class _ClientHits:
    """What the lists said about one session's client (`ConnInfo.module_data`)."""

    ip: str
    helo: str
    hits: tuple[Hit, ...]


@register("check.dnsbl")
class DNSBL(Module):
    """The module: its lists, thresholds, and the evaluation of one client."""

    def configure(self, cfg: Directives) -> None:
        self.log.debug_enabled = cfg.boolean("debug", default=self.log.debug_enabled, inherit=True)
        self.early = cfg.boolean("check_early", default=False)
        self.quarantine_threshold = cfg.integer("quarantine_threshold", 1)
        self.reject_threshold = cfg.integer("reject_threshold", 9999)
        warnings: list[str] = []
        lists: list[DNSList] = []
        for zone in self.inline_args:
            # The inline form is the block form for IPv4 clients only.
            node = Node(zone, [], None, cfg.node.file, cfg.node.line)
            lists.extend(replace(d, client_ipv6=False) for d in read_list(node, warnings))
        for node in cfg.finish(allow_unknown=True):
            lists.extend(read_list(node, warnings))
        self.lists = tuple(lists)
        self.sender_lists = any(dnsbl.mailfrom for dnsbl in self.lists)
        for warning in warnings:
            self.log.warn(warning)
        if not self.lists:
            self.log.warn("no lists configured: the check does nothing")
        self._probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Not awaited: DNS may be slow, and the probe only logs.
        self._probe = asyncio.get_running_loop().create_task(self._probe_all())

    async def stop(self) -> None:
        await stop_task(self._probe)
        self._probe = None

    async def check_state(self, meta: MsgMeta) -> CheckState:
        return _State(self, meta)

    async def check_early(self, conn: ConnInfo) -> CheckResult:
        """At the greeting (root level only): refuse a client at `reject_threshold`."""
        if not self.early or conn.remote_ip is None:
            return OK
        try:
            hits = await self.client_hits(conn)
        except DNSError as exc:
            return self.dns_failure(exc)
        if _score(hits) < self.reject_threshold:
            return OK
        result = self.verdict(hits)
        self.log.info("client refused at greeting", src_ip=conn.remote_ip, reason=_why(hits))
        return result

    # -- evaluation ---------------------------------------------------------------

    async def client_hits(self, conn: ConnInfo) -> tuple[Hit, ...]:
        """The lists that list the client's address or greeting; once per session."""
        ip = conn.remote_ip or ""
        known = conn.module_data.get(self)
        if isinstance(known, _ClientHits) and (known.ip, known.helo) == (ip, conn.helo):
            return known.hits
        addr = client_address(ip)
        asks: list[Awaitable[Hit | None]] = []
        for list_no, dnsbl in enumerate(self.lists):
            queries: list[tuple[str, str]] = []
            if addr is not None and (dnsbl.client_ipv4 if addr.version == 4 else dnsbl.client_ipv6):
                queries.append((str(addr), ip_query(addr, dnsbl.zone)))
            if dnsbl.ehlo:
                name = domain_query(conn.helo, dnsbl.zone)
                if name is not None:
                    queries.append((conn.helo, name))
            if queries:
                asks.append(self._first_hit(list_no, dnsbl, queries))
        hits = await _gather(asks)
        conn.module_data[self] = _ClientHits(ip, conn.helo, hits)
        self._log_hits(hits, src_ip=ip)
        return hits

    async def sender_hits(
        self, mail_from: str, helo: str, earlier: Sequence[Hit]
    ) -> tuple[Hit, ...]:
        """The `mailfrom` lists that list the sender's domain, and did not count yet."""
        try:
            _, domain = split(mail_from) if mail_from else ("", "")
        except NormalizationError:
            return ()  # no domain to ask about
        counted = {hit.list_no for hit in earlier}
        asks: list[Awaitable[Hit | None]] = []
        for list_no, dnsbl in enumerate(self.lists):
            if not dnsbl.mailfrom or list_no in counted:
                continue
            if dnsbl.ehlo and same_host(domain, helo):
                continue  # asked at the connection stage already
            name = domain_query(domain, dnsbl.zone)
            if name is not None:
                asks.append(self._first_hit(list_no, dnsbl, [(domain, name)]))
        hits = await _gather(asks)
        self._log_hits(hits, sender=mail_from)
        return hits

    async def _first_hit(
        self, list_no: int, dnsbl: DNSList, queries: Sequence[tuple[str, str]]
    ) -> Hit | None:
        """Ask one list about each identity at once; the first listed one counts.

        An error about an identity counts only if none before it was
        listed, so the outcome is the one asking in order would give.
        """
        outcomes = await asyncio.gather(
            *(lookup(self.container.resolver, list_no, dnsbl, who, name) for who, name in queries),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is not None:
                return outcome
        return None

    def verdict(self, hits: Sequence[Hit]) -> CheckResult:
        """The sum of the scores against the thresholds."""
        score = _score(hits)
        if score < self.quarantine_threshold and score < self.reject_threshold:
            return OK
        message = "; ".join(hit.message for hit in hits if hit.message) or LISTED
        reason = SMTPError(554, (5, 7, 0), message, check_name=self.module_name, reason=_why(hits))
        if score >= self.reject_threshold:
            return CheckResult(reject=True, reason=reason)
        return CheckResult(quarantine=True, reason=reason)

    def dns_failure(self, exc: DNSError) -> CheckResult:
        """A lookup failed: the message fails, whatever the scores (maddy does too)."""
        code, cls = (451, 4) if exc.temporary else (554, 5)
        error = SMTPError(
            code, (cls, 7, 0), DNS_ERROR, check_name=self.module_name, reason=str(exc)
        )
        return CheckResult(reject=True, reason=error)

    def _log_hits(self, hits: Sequence[Hit], **fields: str) -> None:
        for hit in hits:
            self.log.debug(
                "listed",
                list=hit.zone,
                identity=hit.identity,
                score=hit.score,
                reason=hit.explanation,
                **fields,
            )

    # -- RFC 5782 §5 probe ----------------------------------------------------------

    async def _probe_all(self) -> None:
        outcomes = await asyncio.gather(
            *(self._probe_list(dnsbl) for dnsbl in self.lists), return_exceptions=True
        )
        for dnsbl, outcome in zip(self.lists, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self.log.error("DNSBL probe failed", err=outcome, list=dnsbl.zone)

    async def _probe_list(self, dnsbl: DNSList) -> None:
        """Log what is wrong with one list's test entries; stop at a lookup error."""
        entries: list[tuple[str, str, bool]] = []
        if dnsbl.client_ipv4:
            for ip, listed in (("127.0.0.2", True), ("127.0.0.1", False)):
                entries.append((ip, ip_query(ipaddress.ip_address(ip), dnsbl.zone), listed))
        if dnsbl.client_ipv6:
            # The nibbles of the IPv6 address itself, as an IPv6 list is asked.
            for ip, listed in (("::ffff:7f00:2", True), ("::ffff:7f00:1", False)):
                entries.append((ip, ip_query(ipaddress.IPv6Address(ip), dnsbl.zone), listed))
        if dnsbl.ehlo or dnsbl.mailfrom:
            entries.append(("test", f"test.{dnsbl.zone}", True))
            entries.append(("invalid", f"invalid.{dnsbl.zone}", False))
        for entry, name, listed in entries:
            try:
                found = bool(await addresses(self.container.resolver, name))
            except DNSError as exc:
                self.log.error("DNSBL probe lookup failed", err=exc, list=dnsbl.zone, entry=entry)
                return
            if listed and not found:
                self.log.warn("DNSBL lacks the RFC 5782 test entry", list=dnsbl.zone, entry=entry)
            elif found and not listed:
                self.log.warn(
                    "DNSBL lists an entry RFC 5782 says it must not",
                    list=dnsbl.zone,
                    entry=entry,
                )
        self.log.debug("DNSBL probed", list=dnsbl.zone)


class _State(CheckStateBase):
    """One message: the client at the connection stage, the sender after it."""

    __slots__ = ("check", "hits", "meta")

    def __init__(self, check: DNSBL, meta: MsgMeta) -> None:
        self.check = check
        self.meta = meta
        self.hits: tuple[Hit, ...] = ()

    def _client(self) -> ConnInfo | None:
        """The connection to judge; None for local messages and Unix-socket clients."""
        conn = self.meta.conn
        if conn is None or conn.remote_ip is None:
            self.check.log.debug("no client address, skipping", msg_id=self.meta.id)
            return None
        return conn

    async def check_connection(self) -> CheckResult:
        conn = self._client()
        if conn is None:
            return OK
        check = self.check
        try:
            self.hits = await check.client_hits(conn)
        except DNSError as exc:
            return check.dns_failure(exc)
        if check.sender_lists and _score(self.hits) < check.reject_threshold:
            return OK  # the sender may still add to the score
        return check.verdict(self.hits)

    async def check_sender(self, mail_from: str) -> CheckResult:
        check = self.check
        conn = self._client() if check.sender_lists else None
        if conn is None:
            return OK
        try:
            more = await check.sender_hits(mail_from, conn.helo, self.hits)
        except DNSError as exc:
            return check.dns_failure(exc)
        return check.verdict((*self.hits, *more))


async def _gather(asks: Sequence[Awaitable[Hit | None]]) -> tuple[Hit, ...]:
    """Run the lookups at once; the hits in list order, or the first error in list order."""
    outcomes = await asyncio.gather(*asks, return_exceptions=True)
    hits: list[Hit] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            hits.append(outcome)
    return tuple(hits)


def _score(hits: Sequence[Hit]) -> int:
    return sum(hit.score for hit in hits)


def _why(hits: Sequence[Hit]) -> str:
    return "; ".join(hit.describe() for hit in hits) or "score reached without a listing"
