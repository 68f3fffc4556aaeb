"""Where mail for a domain goes: its MX hosts in order, and their addresses.

Strategy: one MX query through the shared resolver (kittiwake/dns.py), then
pure ordering (`order_mx`), so the order can be tested without DNS:

* lowest preference first; hosts of equal preference in random order
  (RFC 5321 §5.1: "the sender-SMTP MUST randomize them to spread the load");
* no MX records at all: the domain itself is the one MX, of preference 0
  (the "implicit MX", RFC 5321 §5.1), reached at its A/AAAA addresses;
* a single MX whose host is the root (`.`) is a null MX (RFC 7505 §3): the
  domain takes no mail, `556 5.1.10`; a root host among others is ignored;
* the domain does not exist (NXDOMAIN): permanent, `550 5.1.2`;
* no answer (SERVFAIL, timeout): temporary, `451 4.4.4`, so the queue tries
  again later; a name that cannot be looked up at all: `554 5.4.4`.

`MXCandidate.dnssec` is the MX answer's AD bit, believed only from a
trusted resolver (`Resolver.ad_trusted`); for an implicit MX the domain's
address records must carry it too, since they are what the MX then is
(docs/mx-auth.md, `dnssec` and `dane`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from kittiwake.dns import DNSError, Resolver
from kittiwake.errors import SMTPError
from kittiwake.mx_auth.base import MXCandidate

__all__ = ["NULL_MX", "host_addresses", "lookup_mx", "order_mx"]

NULL_MX = SMTPError(556, (5, 1, 10), "Domain does not accept email (null MX)")


def _is_root(host: str) -> bool:
    return host in ("", ".", "@")


def order_mx(
    records: Iterable[tuple[int, str]], rng: random.Random | None = None
) -> list[tuple[int, str]]:
    """MX records in the order to try them: by preference, ties shuffled.

    Root hosts (null MX) are left out; duplicates of a host keep their best
    preference only.
    """
    shuffle = (rng or random).random
    best: dict[str, int] = {}
    for preference, written in records:
        if _is_root(written):
            continue
        host = written.rstrip(".").lower()
        if host not in best or preference < best[host]:
            best[host] = preference
    keyed = [(pref, shuffle(), host) for host, pref in best.items()]
    keyed.sort()
    return [(pref, host) for pref, _, host in keyed]


def is_null_mx(records: Sequence[tuple[int, str]]) -> bool:
    """RFC 7505 §3: exactly one MX record, whose host is the root."""
    return len(records) == 1 and _is_root(records[0][1])


async def lookup_mx(resolver: Resolver, domain: str) -> list[MXCandidate]:
    """The MX hosts of `domain` (lowercase A-labels) in the order to try them.

    Raises `SMTPError` when there is nowhere to go: a null MX, a domain
    that does not exist, a lookup that failed.
    """
    try:
        answer = await resolver.query(domain, "MX")
    except DNSError as exc:
        if exc.temporary:
            raise SMTPError(451, (4, 4, 4), "MX lookup error", reason=str(exc)) from None
        raise SMTPError(554, (5, 4, 4), "MX lookup error", reason=str(exc)) from None
    if answer.nxdomain:
        raise SMTPError(
            550, (5, 1, 2), "Destination domain does not exist", reason=f"NXDOMAIN for {domain}"
        )
    records = [r for r in answer.records if isinstance(r, tuple)]
    if is_null_mx(records):
        raise SMTPError(NULL_MX.code, NULL_MX.enhanced, NULL_MX.message, reason=domain)
    # The AD bit counts only from a resolver that can be trusted to set it
    # (docs/mx-auth.md, "Trusting the AD bit").
    validated = answer.secure and resolver.ad_trusted
    if not records:
        if validated:
            validated = await _addresses_validated(resolver, domain)
        return [MXCandidate(domain, domain, 0, dnssec=validated, implicit=True)]
    ordered = order_mx(records)
    if not ordered:  # only root hosts, but more than one record: nothing usable
        raise SMTPError(NULL_MX.code, NULL_MX.enhanced, NULL_MX.message, reason=domain)
    return [MXCandidate(domain, host, pref, dnssec=validated) for pref, host in ordered]


async def _addresses_validated(resolver: Resolver, domain: str) -> bool:
    """An implicit MX is the domain's address records: they must be validated too.

    Both lookups are the ones `host_addresses` makes next (the resolver
    caches them); one that fails, or any unvalidated answer with records,
    makes the MX unvalidated.
    """
    found = False
    for kind in ("AAAA", "A"):
        try:
            answer = await resolver.query(domain, kind)
        except DNSError:
            return False
        if answer.records:
            if not answer.secure:
                return False
            found = True
    return found


async def host_addresses(resolver: Resolver, host: str, *, force_ipv4: bool) -> list[str]:
    """The addresses to dial for an MX host: IPv6 first, then IPv4 (RFC 6724's
    usual preference); only IPv4 with `force_ipv4`.

    Raises `SMTPError`: the host has no address (permanent for this MX, a
    misconfigured domain), or the lookup failed (temporary).
    """
    kinds = ("A",) if force_ipv4 else ("AAAA", "A")
    found: list[str] = []
    errors: list[DNSError] = []
    for kind in kinds:
        try:
            answer = await resolver.query(host, kind)
        except DNSError as exc:
            errors.append(exc)
            continue
        found.extend(str(r) for r in answer.records)
    if found:
        return found
    if errors:
        temporary = any(e.temporary for e in errors)
        raise SMTPError(
            451 if temporary else 554,
            (4 if temporary else 5, 4, 4),
            "DNS error",
            reason=f"addresses of MX {host}: {errors[0]}",
        )
    raise SMTPError(550, (5, 4, 4), "MX host has no address", reason=f"no A/AAAA for {host}")
