"""`mx_auth { dane }`: DANE for SMTP (RFC 7672; docs/mx-auth.md).

Strategy. DANE is only as strong as the DNSSEC under it, so the TLSA
records of an MX count only when (RFC 7672 §2.2):

* the resolver's AD bit can be trusted (`Resolver.ad_trusted`: a
  validating resolver on loopback), otherwise the policy is off and says
  so once, at configuration time;
* the MX host name itself came from a validated answer (`MXCandidate.dnssec`):
  an attacker who can forge the MX can point it at a host with his own
  TLSA records;
* the TLSA answer at `_25._tcp.MXHOST` carries the AD bit.

The lookup starts in `check_mx`, before the target dials, and is awaited in
`check_conn`. Then: secure TLSA records exist → TLS is mandatory; a
usable record the server's certificate satisfies → TLS level
`authenticated`, whatever the Web PKI says; usable records but no match,
or no TLS at all → the MX is refused with a temporary error; records that
are all unusable → TLS still mandatory but unauthenticated (RFC 7672
§2.2, §3.1.3). A failed TLSA lookup (SERVFAIL, timeout) cannot be told
from an attack that suppresses the records, so it refuses the MX
temporarily too.

Why temporary (451; 4.7.5 for a mismatch or a failed lookup, 4.7.1 for
no TLS): RFC 7672 §2.2 says delivery through that server must not
proceed, not that the mail is undeliverable; mismatches are nearly always
a receiver's key rollover gone wrong, fixed within hours, and a retry
later delivers the message instead of bouncing it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kittiwake import log
from kittiwake.config.node import Node
from kittiwake.dns import DNSError, Resolver
from kittiwake.errors import SMTPError
from kittiwake.mx_auth.base import (
    RESULT_TYPE,
    MXCandidate,
    MXLevel,
    PolicyReport,
    TLSLevel,
    TLSState,
)
from kittiwake.mx_auth.config import policy
from kittiwake.mx_auth.tlsa import TLSARecord, match_chain, parse_tlsa

if TYPE_CHECKING:
    from kittiwake.container import Container

__all__ = ["DANE", "DANEDomain", "build_dane"]

_log = log.get("mx_auth/dane")

NO_TLS = "TLS is required but unavailable or failed (DANE)"
NO_MATCH = "No TLSA record matches the server certificate (DANE)"
LOOKUP_FAILED = "Cannot look up the TLSA records of the MX (DANE)"


@dataclass(frozen=True, slots=True)
class _TLSA:
    """What the TLSA lookup of one MX found."""

    records: tuple[TLSARecord, ...] = ()
    texts: tuple[str, ...] = ()
    error: str = ""  # the lookup failed: DANE can neither apply nor be ruled out


class DANE:
    """The configured `dane` policy."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    @property
    def active(self) -> bool:
        return self.resolver.ad_trusted

    async def for_domain(self, domain: str) -> DANEDomain:
        return DANEDomain(self)

    async def tlsa(self, host: str) -> _TLSA:
        """The DNSSEC-validated TLSA records of `host` port 25 (never raises)."""
        name = f"_25._tcp.{host}"
        try:
            answer = await self.resolver.query(name, "TLSA")
        except DNSError as exc:
            return _TLSA(error=str(exc) or type(exc).__name__)
        if not answer.secure or not answer.records:
            # Not validated: as good as absent (RFC 7672 §2.2).
            return _TLSA()
        records: list[TLSARecord] = []
        texts: list[str] = []
        for text in answer.records:
            texts.append(str(text))
            try:
                records.append(parse_tlsa(str(text)))
            except ValueError as exc:
                _log.warn("malformed TLSA record ignored", name=name, reason=str(exc))
        return _TLSA(tuple(records), tuple(texts))


class DANEDomain:
    """DANE for the MXs of one destination domain, for one delivery."""

    def __init__(self, dane: DANE) -> None:
        self.dane = dane
        self._lookups: dict[str, asyncio.Task[_TLSA]] = {}
        self._report: PolicyReport | None = None

    @property
    def report(self) -> PolicyReport | None:
        """The TLSA records of the last MX judged (RFC 8460 policy type `tlsa`)."""
        return self._report

    def _applies(self, mx: MXCandidate) -> bool:
        return self.dane.active and mx.dnssec

    async def check_mx(self, mx: MXCandidate, level: MXLevel) -> MXLevel:
        if self._applies(mx) and mx.host not in self._lookups:
            # Start the lookup now: it runs while the target dials.
            self._lookups[mx.host] = asyncio.ensure_future(self.dane.tlsa(mx.host))
        return level

    async def check_conn(
        self, mx: MXCandidate, mx_level: MXLevel, tls: TLSState, level: TLSLevel
    ) -> TLSLevel:
        if not self._applies(mx):
            self._report = None  # no TLSA records count for this MX
            return level
        task = self._lookups.get(mx.host)
        found = await (task if task is not None else self.dane.tlsa(mx.host))
        if found.error:
            self._report = PolicyReport("tlsa", mx.domain, failure="dnssec-invalid")
            raise SMTPError(
                451,
                (4, 7, 5),
                LOOKUP_FAILED,
                reason=found.error,
                misc={RESULT_TYPE: "dnssec-invalid"},
            )
        if not found.texts:
            self._report = None
            return level
        self._report = PolicyReport("tlsa", mx.domain, found.texts)
        if not tls.tls:
            raise SMTPError(
                451,
                (4, 7, 1),
                NO_TLS,
                reason=tls.error or "no TLS",
                misc={RESULT_TYPE: "starttls-not-supported"},
            )
        usable = [r for r in found.records if r.usable]
        if not usable:
            _log.info(
                "TLSA records present but none usable: TLS without authentication", mx=mx.host
            )
            return level
        chain = tls.peer_chain or ((tls.peer_cert,) if tls.peer_cert else ())
        matched = match_chain(usable, chain, mx.host)
        if matched is None:
            raise SMTPError(
                451,
                (4, 7, 5),
                NO_MATCH,
                reason=f"{len(usable)} usable TLSA record(s), none matched",
                misc={RESULT_TYPE: "tlsa-invalid"},
            )
        _log.debug("DANE authenticated the MX", mx=mx.host, record=str(matched))
        return max(level, TLSLevel.AUTHENTICATED)


@policy("dane")
def build_dane(node: Node, container: Container) -> DANE:
    """`dane` or `dane { }`: no settings."""
    if node.args or node.block:
        raise node.error("dane: the policy offers no settings")
    dane = DANE(container.resolver)
    if not dane.active and container.serving:
        _log.warn(
            "dane: the DNS resolver is not on this host, so its DNSSEC answers cannot be "
            "trusted; DANE will not apply (docs/mx-auth.md)",
            file=node.file,
            line=node.line,
        )
    return dane
