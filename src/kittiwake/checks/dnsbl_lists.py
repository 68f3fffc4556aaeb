"""One DNS list of `check.dnsbl`: what to ask it, and what its answers mean.

A DNSBL (RFC 5782) publishes an A record for every address or domain it
lists, under its own zone: `2.0.0.127.zen.example` for 127.0.0.2,
`example.com.dbl.example` for a domain. No such name means "not listed".
The address it answers (usually 127.0.0.x) says why, and a TXT record at
the same name may explain it in words.

This module is the pure half of the check: building query names
(`ip_query`, `domain_query`), reading a list's configuration block
(`read_list`) and judging answers (`DNSList.judge`), plus the one lookup
(`lookup`) that asks the resolver. `checks/dnsbl.py` decides which lists
to ask when, and adds up the scores.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kittiwake.address import to_alabel_domain
from kittiwake.config.node import Node
from kittiwake.config.values import parse_bool, parse_int
from kittiwake.dns import DNSError, Resolver
from kittiwake.networks import Address, Network

__all__ = [
    "DEFAULT_RESPONSES",
    "MAX_ZONE",
    "DNSList",
    "Hit",
    "ResponseRule",
    "client_address",
    "domain_query",
    "ip_query",
    "lookup",
    "parse_networks",
    "parse_zone",
]


#: Answers that count when a list does not say (`responses`): RFC 5782 §2.1
#: has lists answer in 127.0.0.0/8; maddy's default takes 127.0.0.0/24.
DEFAULT_RESPONSES: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/24"),)

# RFC 1035 §2.3.1 as resolvers apply it (letters, digits, hyphens inside a
# label), plus the underscore that real names carry; 63 octets a label,
# 253 a name without its final dot (RFC 1035 §2.3.4).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
MAX_NAME = 253
#: A zone leaves room for the longest query under it: the 32 nibbles of an
#: IPv6 address and their dots, 64 octets.
MAX_ZONE = MAX_NAME - 64


@dataclass(frozen=True, slots=True)
class ResponseRule:
    """`response NET... { score N; message TEXT }`: what some answers are worth."""

    networks: tuple[Network, ...]
    score: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class DNSList:
    """One list (zone) and what to ask it; the defaults are the block form's."""

    zone: str
    client_ipv4: bool = True
    client_ipv6: bool = True
    ehlo: bool = False
    mailfrom: bool = False
    responses: tuple[Network, ...] = DEFAULT_RESPONSES
    score: int = 1
    rules: tuple[ResponseRule, ...] = ()

    def judge(self, answers: Sequence[str]) -> tuple[int, str, list[str]] | None:
        """(score, message, answers that counted) if `answers` mean "listed", else None.

        With `response` rules, every rule that some answer falls in adds
        its score once, and the first such rule (in configuration order:
        DNS gives records in no particular order) with a message gives the
        message; answers no rule covers are ignored. Without rules, an
        answer inside `responses` makes the list's `score`.
        """
        addresses = [_address(a) for a in answers]
        found = [
            (text, addr) for text, addr in zip(answers, addresses, strict=True) if addr is not None
        ]
        if self.rules:
            score, message, hit = 0, "", False
            matched: list[str] = []
            for rule in self.rules:
                inside = [text for text, addr in found if _inside(addr, rule.networks)]
                if not inside:
                    continue
                hit = True
                score += rule.score
                message = message or rule.message
                matched.extend(text for text in inside if text not in matched)
            return (score, message, matched) if hit else None
        matched = [text for text, addr in found if _inside(addr, self.responses)]
        return (self.score, "", matched) if matched else None


@dataclass(frozen=True, slots=True)
class Hit:
    """A list that said "listed" about one identity of the client."""

    list_no: int  # the list's place in the configuration
    zone: str
    identity: str  # the address or domain that was looked up
    score: int
    message: str  # from a `response` rule, or ""
    explanation: str  # the list's TXT record, or the answers

    def describe(self) -> str:
        return f"{self.identity} listed in {self.zone} (score {self.score}: {self.explanation})"


# --- Query names ----------------------------------------------------------------------


def client_address(ip: str) -> Address | None:
    """The address a list is asked about: IPv4-mapped IPv6 is IPv4, no zone index."""
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def ip_query(addr: Address, zone: str) -> str:
    """RFC 5782 §2.1 and §2.4: octets (IPv4) or the 32 nibbles (IPv6), reversed."""
    if isinstance(addr, ipaddress.IPv4Address):
        labels = str(addr).split(".")
    else:
        labels = list(addr.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone


def domain_query(domain: str, zone: str) -> str | None:
    """RFC 5782 §2.3: `DOMAIN.ZONE`, or None when `domain` cannot be a DNS name.

    The domain comes from the client (its greeting, its MAIL FROM), so it
    may be anything: an address literal, garbage, a name too long to ask
    about once the zone is appended. None of those can be listed, so there
    is nothing to look up.
    """
    name = domain[:-1] if domain.endswith(".") else domain
    if not name or name.startswith("["):
        return None
    try:
        name = to_alabel_domain(name).lower()
    except (UnicodeError, ValueError):
        return None
    if not _is_name(name):
        return None
    full = f"{name}.{zone}"
    return full if len(full) <= MAX_NAME else None


def parse_zone(text: str) -> str:
    """A list's zone as configured -> its lookup form; ValueError if it is no DNS name."""
    name = text[:-1] if text.endswith(".") else text
    try:
        name = to_alabel_domain(name).lower()
    except (UnicodeError, ValueError):
        raise ValueError(f"not a DNS zone: {text!r}") from None
    if not name or not _is_name(name):
        raise ValueError(f"not a DNS zone: {text!r}")
    if len(name) > MAX_ZONE:
        raise ValueError(f"zone longer than {MAX_ZONE} octets: {text!r}")
    return name


def _is_name(name: str) -> bool:
    return all(_LABEL.fullmatch(label) for label in name.split("."))


# --- Configuration --------------------------------------------------------------------


def parse_networks(args: Sequence[str]) -> tuple[Network, ...]:
    """`IP` or `IP/PREFIX` words -> networks; a bare address is one host."""
    if not args:
        raise ValueError("expected at least one IP address or network")
    networks: list[Network] = []
    for arg in args:
        try:
            networks.append(ipaddress.ip_network(arg, strict=False))
        except ValueError:
            raise ValueError(f"invalid IP address or network: {arg!r}") from None
    return tuple(networks)


def _read_rule(node: Node) -> ResponseRule:
    try:
        networks = parse_networks(node.args)
    except ValueError as exc:
        raise node.error(f"response: {exc}") from None
    score: int | None = None
    message = ""
    for child in node.block:
        try:
            if child.name == "score" and score is None:
                score = parse_int(child.args)
            elif child.name == "message" and not message and len(child.args) == 1:
                message = child.args[0]
            elif child.name in ("score", "message"):
                raise ValueError("expected exactly one value, once")
            else:
                raise child.error(f"unexpected directive: {child.name}")
        except ValueError as exc:
            raise child.error(f"{child.name}: {exc}") from None
    if score is None:
        raise node.error("response: missing required directive: score")
    return ResponseRule(networks, score, message)


def read_list(node: Node, warn: list[str]) -> list[DNSList]:
    """`ZONE [ZONE...] [{ ... }]` -> one `DNSList` per zone (docs/checks.md).

    Problems that do not stop the list from working are appended to
    `warn`, for the module to log.
    """
    values: dict[str, bool | int] = {}
    responses: tuple[Network, ...] | None = None
    rules: list[ResponseRule] = []
    for child in node.block:
        try:
            if child.name in ("client_ipv4", "client_ipv6", "ehlo", "mailfrom", "score"):
                if child.name in values:
                    raise child.error(f"duplicate directive: {child.name}")
                if child.children is not None:
                    raise child.error(f"{child.name}: unexpected block")
                parse = parse_int if child.name == "score" else parse_bool
                values[child.name] = parse(child.args)
            elif child.name == "responses":
                if responses is not None:
                    raise child.error("duplicate directive: responses")
                responses = parse_networks(child.args)
            elif child.name == "response":
                rules.append(_read_rule(child))
            else:
                raise child.error(f"unexpected directive: {child.name}")
        except ValueError as exc:
            raise child.error(f"{child.name}: {exc}") from None
    template = DNSList(
        zone="",
        client_ipv4=bool(values.get("client_ipv4", True)),
        client_ipv6=bool(values.get("client_ipv6", True)),
        ehlo=bool(values.get("ehlo", False)),
        mailfrom=bool(values.get("mailfrom", False)),
        responses=responses if responses is not None else DEFAULT_RESPONSES,
        score=int(values.get("score", 1)),
        rules=tuple(rules),
    )
    if rules and responses is not None:
        warn.append(f"{node.name}: 'response' blocks given, 'responses' is ignored")
    negative = template.score < 0 or any(rule.score < 0 for rule in rules)
    if negative and (template.ehlo or template.mailfrom):
        # The client chooses these names: a negative score there would be a
        # whitelist anyone can claim.
        which = "ehlo" if template.ehlo else "mailfrom"
        raise node.error(f"dnsbl: '{which}' should not be used with negative score")
    lists = []
    for zone in (node.name, *node.args):
        try:
            parsed = parse_zone(zone)
        except ValueError as exc:
            raise node.error(f"dnsbl: {exc}") from None
        if "." not in parsed:
            warn.append(f"{zone}: a list zone without a dot; a misspelt directive?")
        lists.append(replace(template, zone=parsed))
    return lists


# --- Asking -----------------------------------------------------------------------------


async def addresses(resolver: Resolver, name: str) -> list[str]:
    """The A and AAAA records at `name` (asked at once); [] when there are none.

    An error counts only when no record came back at all: one type that
    fails while the other answers does not hide a listing (what maddy's Go
    resolver does too).
    """
    outcomes = await asyncio.gather(
        resolver.query(name, "A"), resolver.query(name, "AAAA"), return_exceptions=True
    )
    found: list[str] = []
    error: BaseException | None = None
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            error = error or outcome
        else:
            found.extend(str(r) for r in outcome.records)
    if not found and error is not None:
        raise error
    return found


async def lookup(
    resolver: Resolver, list_no: int, dnsbl: DNSList, identity: str, name: str
) -> Hit | None:
    """Ask one list about one identity (its query `name`); raises `DNSError`."""
    judged = dnsbl.judge(await addresses(resolver, name))
    if judged is None:
        return None
    score, message, matched = judged
    try:
        texts = await resolver.txt(name)
    except DNSError:
        texts = []  # the explanation is a courtesy; its absence fails nothing
    explanation = "; ".join(t.decode("utf-8", "replace") for t in texts) or "; ".join(matched)
    return Hit(list_no, dnsbl.zone, identity, score, message, explanation)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _inside(addr: Address, networks: Sequence[Network]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)
