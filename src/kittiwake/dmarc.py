"""DMARC (RFC 7489) for one pipeline: the policy of the From domain, and the verdict.

Strategy. DMARC is not a check module but a step of the pipeline that
owns SPF and DKIM checks (docs/dmarc.md): it runs only when the
pipeline's `dmarc` directive is on and the pipeline has both an SPF and a
DKIM check. At the first body-stage check call the pipeline hands it the
header; it reads the RFC5322.From domain and starts the record lookup in
the background, so the lookup overlaps with the body checks. After them,
`evaluate` takes every SPF and DKIM result the pipeline's checks produced,
decides alignment, and returns the `dmarc=` A-R entry and the policy to
apply (`reject`, `quarantine` or `none`).

Record discovery (RFC 7489 §6.6.3): TXT at `_dmarc.FROM-DOMAIN`; when that
name has no TXT record at all, TXT at `_dmarc.ORG-DOMAIN`, the
organisational domain from the Public Suffix List (`publicsuffixlist`).
Like maddy, a From domain whose name has TXT records but none of them
DMARC does not fall back. A temporary DNS error fails closed (`450 4.7.1`:
the sender retries); anything else that goes wrong fails open (`permerror`,
no policy applied). Reports (`rua`, `ruf`) are parsed but not sent.

What a busy MX repeats is kept: a discovery per From domain
(`PolicyCache`, as long as every DNS answer it rested on), organisational
domains (the Public Suffix List does not change while the process runs),
and the From field of the usual shape (`Name <local@domain>`) is read by
one regular expression instead of the whole address grammar.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from publicsuffixlist import PublicSuffixList

from kittiwake.address import to_alabel_domain
from kittiwake.checks.base import AuthResult
from kittiwake.dns import DNSError, Resolver
from kittiwake.message import MsgMeta
from kittiwake.message.header import Header
from kittiwake.message.mailaddr import AddressSyntaxError, parse_address_list

__all__ = [
    "DmarcEvaluation",
    "DmarcRecord",
    "DmarcVerdict",
    "PolicyCache",
    "RecordLookup",
    "aligned",
    "find_record",
    "from_domain",
    "organizational_domain",
    "parse_record",
]

Policy = Literal["none", "quarantine", "reject"]
_POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


#: Organisational domains remembered (least recently used dropped first).
ORG_CACHE_SIZE = 10_000


@functools.lru_cache(maxsize=ORG_CACHE_SIZE)
def organizational_domain(domain: str) -> str | None:
    """The registered domain of `domain` (RFC 7489 §3.2), or None for a public suffix."""
    result = _psl().privatesuffix(domain.rstrip(".").lower())
    return str(result) if result else None


# --- The record ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed DMARC record (RFC 7489 §6.3); defaults as the RFC gives them."""

    p: Policy
    sp: Policy | None = None
    adkim: Literal["r", "s"] = "r"
    aspf: Literal["r", "s"] = "r"
    pct: int = 100
    rua: str = ""
    ruf: str = ""


def parse_record(text: str) -> DmarcRecord:
    """Parse `v=DMARC1; p=...`; raises ValueError for any invalid tag value.

    Unknown tags are ignored (RFC 7489 §6.3: for future extensions); `fo`,
    `rf` and `ri` are checked for validity only.
    """
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"malformed tag {part.strip()!r}")
        tags.setdefault(name.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1":
        raise ValueError("v=DMARC1 must come first")
    if "p" not in tags:
        raise ValueError("the p= tag is required")
    p = _policy(tags["p"], "p")
    sp = _policy(tags["sp"], "sp") if "sp" in tags else None
    adkim = _mode(tags.get("adkim", "r"), "adkim")
    aspf = _mode(tags.get("aspf", "r"), "aspf")
    pct = 100
    if "pct" in tags:
        if not tags["pct"].isdigit() or not 0 <= int(tags["pct"]) <= 100:
            raise ValueError(f"invalid pct={tags['pct']!r}")
        pct = int(tags["pct"])
    if "fo" in tags and not all(o.strip() in ("0", "1", "d", "s") for o in tags["fo"].split(":")):
        raise ValueError(f"invalid fo={tags['fo']!r}")
    if "rf" in tags and tags["rf"].lower() != "afrf":
        raise ValueError(f"invalid rf={tags['rf']!r}")
    if "ri" in tags and (not tags["ri"].isdigit() or int(tags["ri"]) <= 0):
        raise ValueError(f"invalid ri={tags['ri']!r}")
    return DmarcRecord(p, sp, adkim, aspf, pct, tags.get("rua", ""), tags.get("ruf", ""))


def _policy(value: str, tag: str) -> Policy:
    for policy in _POLICIES:
        if value.lower() == policy:
            return policy
    raise ValueError(f"invalid {tag}={value!r}")


def _mode(value: str, tag: str) -> Literal["r", "s"]:
    if value.lower() == "r":
        return "r"
    if value.lower() == "s":
        return "s"
    raise ValueError(f"invalid {tag}={value!r}")


# --- Finding it ----------------------------------------------------------------------


# The usual From field: an optional display name of plain words or
# quoted strings, then `<local@domain>`, or a bare `local@domain`, all
# ASCII, no comments. The address grammar reads every such value as one
# mailbox with this domain (tests/e2e/test_dmarc.py checks that); anything
# else takes the whole grammar.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_WORD = r"""(?:[A-Za-z0-9!#$%&'*+/^_`{|}~.-]+|"[ !#-\[\]-~]+")"""
_SIMPLE_FROM = re.compile(
    rf"[ \t]*(?:{_DOT_ATOM}@(?P<bare>{_DOT_ATOM})"
    rf"|(?:{_WORD}(?:[ \t]+{_WORD})*[ \t]*)?<{_DOT_ATOM}@(?P<angle>{_DOT_ATOM})>)[ \t]*"
)


def from_domain(header: Header) -> str:
    """The RFC5322.From domain (RFC 7489 §6.6.1), as written; ValueError with why not."""
    values = header.get_all("From")
    if not values:
        raise ValueError("missing From header field")
    if len(values) > 1:
        raise ValueError("multiple From header fields are not allowed")
    simple = _SIMPLE_FROM.fullmatch(values[0])
    if simple is not None:
        return simple.group("bare") or simple.group("angle")
    try:
        mailboxes = parse_address_list(values[0])
    except AddressSyntaxError as exc:
        raise ValueError(f"malformed From header field: {exc}") from None
    if len(mailboxes) != 1:
        raise ValueError("multiple addresses in From field are not allowed")
    _, at, domain = mailboxes[0].address.rpartition("@")
    if not at or not domain or domain.startswith("["):
        raise ValueError("malformed From header field: no domain")
    return domain


@dataclass(frozen=True, slots=True)
class RecordLookup:
    """The result of record discovery for one From domain."""

    record: DmarcRecord | None
    #: Where the record was found (A-labels): the From domain or its
    #: organisational domain.
    policy_domain: str = ""
    #: Whether that is the organisational domain (`sp=` then applies).
    at_org: bool = False
    #: Why there is no record, when discovery failed (None: simply no record).
    error: str | None = None
    temporary: bool = False
    #: Until when (`time.monotonic()`) every DNS answer it rests on holds;
    #: 0 when it rests on none (a lookup that failed, a From domain that is
    #: no DNS name), so it must not be kept.
    fresh_until: float = 0.0

    def effective(self) -> Policy:
        """`sp` when the record came from the organisational domain and has one, else `p`."""
        assert self.record is not None
        if self.at_org and self.record.sp is not None:
            return self.record.sp
        return self.record.p


#: Discoveries a `PolicyCache` keeps at most.
POLICY_CACHE_SIZE = 10_000


class PolicyCache:
    """Record discoveries by From domain, kept while their DNS answers hold.

    A discovery depends only on the domain and on DNS, so while every
    answer it rested on is fresh, discovering again would give it again;
    the resolver would answer from its cache too, but each message would
    still pay the lookups, the record's parse and a task. Only discoveries
    that DNS answered are kept (a failed lookup is asked again next
    time), at most `size`, least recently used dropped first.
    """

    def __init__(
        self, size: int = POLICY_CACHE_SIZE, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._size = size
        self._clock = clock
        self._found: OrderedDict[str, RecordLookup] = OrderedDict()

    def __len__(self) -> int:
        return len(self._found)

    def get(self, domain: str) -> RecordLookup | None:
        """The fresh discovery for `domain` (as given to `find_record`), or None."""
        known = self._found.get(domain)
        if known is None:
            return None
        if known.fresh_until <= self._clock():
            del self._found[domain]
            return None
        self._found.move_to_end(domain)
        return known

    def put(self, domain: str, lookup: RecordLookup) -> None:
        if lookup.fresh_until <= self._clock():
            return
        self._found[domain] = lookup
        self._found.move_to_end(domain)
        while len(self._found) > self._size:
            self._found.popitem(last=False)


async def find_record(
    resolver: Resolver, domain: str, cache: PolicyCache | None = None
) -> RecordLookup:
    """RFC 7489 §6.6.3 discovery for `domain` (any IDN form): the record and its domain.

    With `cache`, a fresh discovery kept there is the answer, and a new
    one is kept there.
    """
    if cache is not None:
        known = cache.get(domain)
        if known is not None:
            return known
    lookup = await _discover(resolver, domain)
    if cache is not None:
        cache.put(domain, lookup)
    return lookup


async def _discover(resolver: Resolver, domain: str) -> RecordLookup:
    try:
        ascii_domain = to_alabel_domain(domain).rstrip(".").lower()
    except (ValueError, UnicodeError) as exc:
        return RecordLookup(None, error=f"invalid From domain: {exc}")
    try:
        answer = await resolver.query(f"_dmarc.{ascii_domain}", "TXT")
        fresh_until = answer.expires
        where, at_org = ascii_domain, False
        texts = [t for t in answer.records if isinstance(t, bytes)]
        if not texts:
            org = organizational_domain(ascii_domain)
            if org is None or org == ascii_domain:
                return RecordLookup(None, fresh_until=fresh_until)
            answer = await resolver.query(f"_dmarc.{org}", "TXT")
            fresh_until = min(fresh_until, answer.expires)
            texts = [t for t in answer.records if isinstance(t, bytes)]
            where, at_org = org, True
    except DNSError as exc:
        return RecordLookup(None, error=str(exc), temporary=exc.temporary)
    records = [t for t in texts if t.startswith(b"v=DMARC1")]
    if len(records) != 1:
        return RecordLookup(None, fresh_until=fresh_until)
    try:
        record = parse_record(records[0].decode("utf-8", "replace"))
    except ValueError as exc:
        error = f"malformed record: {exc}"
        return RecordLookup(None, where, at_org, error=error, fresh_until=fresh_until)
    return RecordLookup(record, where, at_org, fresh_until=fresh_until)


def aligned(domain: str, from_dom: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict is equality, relaxed equal organisational domains.

    Both are compared in A-labels, lowercase, so `bücher.example` and
    `xn--bcher-kva.example` are the same domain. Relaxed: when the From
    domain is itself a public suffix, only equality aligns; when either
    organisational domain is unknown, nothing does.
    """
    a = _ascii(domain)
    b = a if domain == from_dom else _ascii(from_dom)
    if not a or not b:
        return False
    if a == b:
        return True
    if mode == "s":
        return False
    org_b = organizational_domain(b)
    if org_b is None:
        return False
    org_a = organizational_domain(a)
    return org_a is not None and org_a == org_b


def _ascii(domain: str) -> str:
    try:
        return to_alabel_domain(domain.rstrip(".")).lower()
    except (ValueError, UnicodeError):
        return ""


# --- One message ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcVerdict:
    """The DMARC evaluation of one message: its A-R entry and the policy to apply."""

    auth_result: AuthResult
    policy: Literal["none", "quarantine", "reject"] = "none"


class DmarcEvaluation:
    """The DMARC step of one message (the pipeline's `DmarcVerifier`)."""

    def __init__(
        self,
        resolver: Resolver,
        meta: MsgMeta,
        *,
        draw: Callable[[], float] = random.random,
        policies: PolicyCache | None = None,
    ) -> None:
        """`draw`: a number in [0, 1) for `pct` sampling (tests inject their own).

        `policies`: discoveries shared by the messages of a pipeline.
        """
        self._resolver = resolver
        self._meta = meta
        self._draw = draw
        self._policies = policies
        self._from: str | None = None
        self._from_error: str | None = None
        self._found: RecordLookup | None = None
        self._lookup: asyncio.Task[RecordLookup] | None = None

    def fetch_record(self, header: Header) -> None:
        """Read the From domain and start the record lookup (without waiting).

        A discovery the cache holds needs no lookup, hence no task.
        """
        try:
            self._from = from_domain(header)
        except ValueError as exc:
            self._from_error = str(exc)
            return
        if self._policies is not None:
            self._found = self._policies.get(self._from)
            if self._found is not None:
                return
        self._lookup = asyncio.get_running_loop().create_task(
            find_record(self._resolver, self._from, self._policies)
        )

    async def evaluate(self, results: Sequence[AuthResult]) -> DmarcVerdict:
        """RFC 7489 §6.6: the dmarc= entry for A-R, and the policy to apply."""
        lookup = self._found
        if self._from is None or (lookup is None and self._lookup is None):
            reason = f"Policy lookup failed: {self._from_error or 'no From header field'}"
            return _verdict("permerror", "", reason)
        from_dom = self._from
        if lookup is None:
            assert self._lookup is not None
            lookup = await self._lookup
        if lookup.error is not None:
            result = "temperror" if lookup.temporary else "permerror"
            verdict = _verdict(result, from_dom, f"Policy lookup failed: {lookup.error}")
            # A temporary failure fails closed: the sender will try again.
            return verdict if not lookup.temporary else _with_policy(verdict, "reject")
        if lookup.record is None:
            return _verdict("none", from_dom, "No DMARC policy")
        record = lookup.record
        result, reason = _alignment(results, from_dom, record)
        verdict = _verdict(result, from_dom, reason)
        if result in ("pass", "none"):
            return verdict
        if record.pct < 100 and self._draw() * 100 >= record.pct:
            return verdict  # sampled out (RFC 7489 §6.6.4)
        return _with_policy(verdict, lookup.effective())

    async def close(self) -> None:
        task, self._lookup = self._lookup, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _alignment(
    results: Sequence[AuthResult], from_dom: str, record: DmarcRecord
) -> tuple[str, str]:
    """The DMARC result from this pipeline's SPF and DKIM entries, and its reason."""
    dkim = [r for r in results if r.method == "dkim"]
    spf = next((r for r in results if r.method == "spf"), None)
    if not dkim or spf is None:
        return "none", "Not enough information (required checks are disabled)"
    dkim_aligned = False
    dkim_temp = False
    for entry in dkim:
        if not aligned(entry.params.get("header.d", ""), from_dom, record.adkim):
            continue
        if entry.result == "pass":
            dkim_aligned = True
        elif entry.result == "temperror":
            dkim_temp = True
    spf_domain = spf.params.get("smtp.mailfrom") or spf.params.get("smtp.helo", "")
    spf_aligned = spf.result == "pass" and aligned(spf_domain, from_dom, record.aspf)
    if dkim_aligned or spf_aligned:
        return "pass", ""
    if dkim_temp:
        return "temperror", "DKIM authentication temp error"
    if spf.result == "temperror":
        return "temperror", "SPF authentication temp error"
    return "fail", "No aligned identifiers"


def _verdict(result: str, from_dom: str, reason: str) -> DmarcVerdict:
    params = {"header.from": from_dom} if from_dom else {}
    return DmarcVerdict(AuthResult("dmarc", result, params, reason))


def _with_policy(verdict: DmarcVerdict, policy: Policy) -> DmarcVerdict:
    return DmarcVerdict(verdict.auth_result, policy)


async def published_policy(resolver: Resolver, header: Header) -> Policy | None:
    """The policy the From domain asks for, or None when it has none to ask.

    For `check.spf`, which leaves its own action to DMARC when the domain
    publishes a policy other than `none` (docs/checks.md). A missing or
    unreadable From, a lookup failure and no record all give None.
    """
    try:
        domain = from_domain(header)
    except ValueError:
        return None
    lookup = await find_record(resolver, domain)
    if lookup.record is None:
        return None
    return lookup.effective()
