"""The DNS checks: `require_mx_record` and `require_matching_rdns` (docs/checks.md).

Both are stateless checks (`checks/stateless.py`) with `fail_action`
defaulting to `quarantine`, registered under maddy's bare names so they
are written as `require_mx_record` inside `check { }`.

`require_mx_record` (sender stage): can the sender's domain receive mail?
Its MX records are looked up; none at all, or a null MX (RFC 7505: the
single host `.`), fails. The implicit MX of RFC 5321 §5.1 (an A or AAAA
record standing in for a missing MX) is deliberately not accepted: the
check is about domains that declare mail service. A domain that does not
exist is reported as a (permanent) DNS error, as maddy does.

`require_matching_rdns` (connection stage): does the client's reverse
name equal the name it greeted with? It uses the session's own PTR lookup
through `ConnInfo.reverse`, never a second one, and keeps "there is no
name" apart from "DNS failed" (`ReverseName.error`). The reverse name is
not forward-confirmed.

Temporary DNS errors answer in class 4 (`450 4.7.0`, `450 4.7.25`); maddy
keeps class 5 in the enhanced code, which RFC 3463 §2 does not allow.
"""

from __future__ import annotations

from kittiwake.address import NormalizationError, normalize_domain, split, to_alabel_domain
from kittiwake.checks.base import OK, CheckResult
from kittiwake.checks.stateless import StatelessCheck
from kittiwake.dns import DNSError
from kittiwake.message import MsgMeta
from kittiwake.module import register

__all__ = ["RequireMXRecord", "RequireMatchingRDNS", "same_host"]

DNS_ERROR = "DNS error during policy check"


@register("require_mx_record")
class RequireMXRecord(StatelessCheck):
    """The sender's domain must have MX records, and not a null MX."""

    async def sender(self, meta: MsgMeta, mail_from: str) -> CheckResult:
        if not mail_from:
            return OK  # the null sender of bounces
        try:
            _, domain = split(mail_from)
        except NormalizationError as exc:
            return self.failure(501, (5, 1, 8), "Malformed sender address", str(exc))
        if not domain:
            return self.failure(501, (5, 1, 8), "No domain part in address")
        if domain.startswith("["):
            # An address literal names no DNS domain: what maddy's resolver
            # reports as "no such host".
            return self.failure(550, (5, 7, 0), DNS_ERROR, "an address literal has no MX records")
        try:
            answer = await self.container.resolver.query(to_alabel_domain(domain), "MX")
        except DNSError as exc:
            if exc.temporary:
                return self.failure(450, (4, 7, 0), DNS_ERROR, str(exc))
            return self.failure(550, (5, 7, 0), DNS_ERROR, str(exc))
        if answer.nxdomain:
            return self.failure(550, (5, 7, 0), DNS_ERROR, f"no such domain: {domain}")
        hosts = [r[1] for r in answer.records if isinstance(r, tuple)]
        self.log.debug("MX records", msg_id=meta.id, domain=domain, mx=hosts)
        if not hosts:
            return self.failure(501, (5, 7, 27), "Domain in MAIL FROM does not have any MX records")
        if "." in hosts:
            return self.failure(501, (5, 7, 27), "Domain in MAIL FROM has null MX record")
        return OK


@register("require_matching_rdns")
class RequireMatchingRDNS(StatelessCheck):
    """The client's PTR name must be the name it greeted with."""

    async def connection(self, meta: MsgMeta) -> CheckResult:
        conn = meta.conn
        if conn is None:
            self.log.debug("locally generated message, skipping", msg_id=meta.id)
            return OK
        if conn.reverse is None:
            self.log.debug("no reverse lookup for this client, skipping", msg_id=meta.id)
            return OK
        found = await conn.reverse()
        if found.error:
            code, cls = (450, 4) if found.temporary else (550, 5)
            return self.failure(code, (cls, 7, 25), DNS_ERROR, found.error)
        if found.name is None:
            return self.failure(550, (5, 7, 25), "No PTR record found")
        if not same_host(found.name, conn.helo):
            return self.failure(
                550,
                (5, 7, 25),
                "rDNS name does not match source hostname",
                f"PTR {found.name}, greeting {conn.helo}",
            )
        self.log.debug("PTR name matches the greeting", msg_id=meta.id, rdns=found.name)
        return OK


def same_host(a: str, b: str) -> bool:
    """Whether two host names are one: case, IDN spelling and a final dot aside."""
    return normalize_domain(a, strict=False) == normalize_domain(b, strict=False)
