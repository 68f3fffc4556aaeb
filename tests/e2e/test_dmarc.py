"""DMARC (RFC 7489): records, discovery, alignment and the verdict, against a DNS server.

The pipeline runs DMARC only with an SPF and a DKIM check; end-to-end tests
of whole messages are with those checks (test_spf_e2e, test_dkim_e2e). Here
the evaluation is fed the SPF and DKIM results directly, so every branch of
the algorithm has its own case.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fakedns import SERVFAIL, FakeDNS, txt
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake import dmarc as dmarc_module
from kittiwake.checks.base import AuthResult
from kittiwake.dmarc import (
    ORG_CACHE_SIZE,
    DmarcEvaluation,
    PolicyCache,
    aligned,
    find_record,
    from_domain,
    organizational_domain,
    parse_record,
    published_policy,
)
from kittiwake.dns import Resolver
from kittiwake.message import MsgMeta
from kittiwake.message.header import Field, Header
from kittiwake.message.mailaddr import AddressSyntaxError, parse_address_list


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    server = FakeDNS(
        {
            ("_dmarc.example.org", "TXT"): [txt("v=DMARC1; p=reject; sp=quarantine")],
            ("_dmarc.strict.example", "TXT"): [txt("v=DMARC1; p=reject; adkim=s; aspf=s")],
            ("_dmarc.none.example", "TXT"): [txt("v=DMARC1; p=none")],
            ("_dmarc.half.example", "TXT"): [txt("v=DMARC1; p=reject; pct=50")],
            ("_dmarc.garbage.example", "TXT"): [txt("v=DMARC1; p=maybe")],
            ("_dmarc.two.example", "TXT"): [txt("v=DMARC1; p=none"), txt("v=DMARC1; p=reject")],
            ("_dmarc.other.example", "TXT"): [txt("some other record")],
            ("_dmarc.broken.example", "TXT"): SERVFAIL,
            ("_dmarc.xn--bcher-kva.example", "TXT"): [txt("v=DMARC1; p=quarantine")],
        }
    )
    try:
        yield server
    finally:
        server.close()


def header(from_value: str | None) -> Header:
    fields = [] if from_value is None else [Field("From", f"From: {from_value}\r\n".encode())]
    return Header([*fields, Field("Subject", b"Subject: x\r\n")])


def spf(result: str, mailfrom: str = "example.org", helo: str = "mx.sender.example") -> AuthResult:
    return AuthResult("spf", result, {"smtp.mailfrom": mailfrom, "smtp.helo": helo})


def dkim(result: str, d: str) -> AuthResult:
    return AuthResult("dkim", result, {"header.d": d, "header.i": "@" + d})


async def evaluate(
    dns: FakeDNS, from_value: str | None, results: list[AuthResult], draw: float = 0.0
) -> tuple[str, str, str, str]:
    resolver = Resolver(dns.address, timeout=1.0)
    evaluation = DmarcEvaluation(resolver, MsgMeta(id="t"), draw=lambda: draw)
    evaluation.fetch_record(header(from_value))
    verdict = await evaluation.evaluate(results)
    await evaluation.close()
    entry = verdict.auth_result
    return entry.result, entry.params.get("header.from", ""), entry.reason, verdict.policy


# -- the record -------------------------------------------------------------------------


def test_parse_record_defaults_and_tags() -> None:
    record = parse_record("v=DMARC1; p=quarantine; sp=reject; adkim=s; pct=20; rua=mailto:a@b")
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct) == (
        "quarantine",
        "reject",
        "s",
        "r",
        20,
    )
    assert parse_record("v=DMARC1;p=none;x-future=1").p == "none"  # unknown tags ignored


@pytest.mark.parametrize(
    "text",
    [
        "p=reject",  # no version
        "v=DMARC2; p=reject",
        "v=DMARC1",  # no p
        "v=DMARC1; p=maybe",
        "v=DMARC1; p=none; adkim=x",
        "v=DMARC1; p=none; pct=101",
        "v=DMARC1; p=none; pct=-1",
        "v=DMARC1; p=none; rf=iodef",
        "v=DMARC1; p=none; ri=0",
        "v=DMARC1; p=none; fo=2",
        "v=DMARC1; p=none; garbage",
    ],
)
def test_invalid_records(text: str) -> None:
    with pytest.raises(ValueError):
        parse_record(text)


# -- discovery and alignment -----------------------------------------------------------


async def test_discovery_falls_back_to_the_organisational_domain(dns: FakeDNS) -> None:
    resolver = Resolver(dns.address, timeout=1.0)
    direct = await find_record(resolver, "example.org")
    assert direct.record is not None and not direct.at_org
    inherited = await find_record(resolver, "mail.sub.example.org")
    assert inherited.record is not None and inherited.at_org
    assert inherited.policy_domain == "example.org"
    assert inherited.effective() == "quarantine"  # sp= for subdomains
    assert direct.effective() == "reject"
    idn = await find_record(resolver, "Bücher.example")
    assert idn.record is not None and idn.record.p == "quarantine"


async def test_discovery_edge_cases(dns: FakeDNS) -> None:
    resolver = Resolver(dns.address, timeout=1.0)
    assert (await find_record(resolver, "nowhere.example")).record is None
    assert (await find_record(resolver, "two.example")).record is None  # two records: none
    other = await find_record(resolver, "other.example")
    assert other.record is None and other.error is None  # TXT but no DMARC: no fallback
    garbage = await find_record(resolver, "garbage.example")
    assert garbage.record is None and "malformed record" in (garbage.error or "")
    broken = await find_record(resolver, "broken.example")
    assert broken.temporary and broken.error


def test_alignment() -> None:
    assert aligned("example.org", "EXAMPLE.org", "s")
    assert not aligned("mail.example.org", "example.org", "s")
    assert aligned("mail.example.org", "news.example.org", "r")
    assert not aligned("example.net", "example.org", "r")
    assert not aligned("a.co.uk", "b.co.uk", "r")  # different registered domains
    assert not aligned("x.co.uk", "co.uk", "r")  # From is a public suffix: equality only
    assert aligned("co.uk", "co.uk", "r")
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"


# -- the verdict ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_value", "results", "expected"),
    [
        # Either identifier aligned is a pass.
        ("a@example.org", [spf("pass"), dkim("none", "")], ("pass", "none")),
        ("a@example.org", [spf("fail"), dkim("pass", "mail.example.org")], ("pass", "none")),
        # Nothing aligned: the policy applies (p= here, sp= for a subdomain).
        ("a@example.org", [spf("fail"), dkim("fail", "example.org")], ("fail", "reject")),
        ("a@example.org", [spf("pass", "other.example"), dkim("pass", "other.example")],
         ("fail", "reject")),
        ("a@news.example.org", [spf("fail"), dkim("none", "")], ("fail", "quarantine")),
        # Strict alignment wants the exact domain.
        ("a@strict.example", [spf("pass", "mail.strict.example"), dkim("pass", "x.strict.example")],
         ("fail", "reject")),
        ("a@strict.example", [spf("pass", "strict.example"), dkim("none", "")], ("pass", "none")),
        # Temporary errors of the checks make DMARC temporary.
        ("a@example.org", [spf("fail"), dkim("temperror", "example.org")],
         ("temperror", "reject")),
        ("a@example.org", [spf("temperror"), dkim("fail", "example.net")],
         ("temperror", "reject")),
        # p=none: evaluated, nothing applied.
        ("a@none.example", [spf("fail"), dkim("fail", "none.example")], ("fail", "none")),
        # No record, a bad record, no From.
        ("a@nowhere.example", [spf("fail"), dkim("fail", "x")], ("none", "none")),
        ("a@garbage.example", [spf("fail"), dkim("fail", "x")], ("permerror", "none")),
        (None, [spf("fail"), dkim("fail", "x")], ("permerror", "none")),
        ("a@example.org, b@example.org", [spf("fail"), dkim("fail", "x")], ("permerror", "none")),
        # A lookup that failed for now fails closed.
        ("a@broken.example", [spf("pass", "broken.example"), dkim("none", "")],
         ("temperror", "reject")),
        # Without both SPF and DKIM results there is not enough to decide.
        ("a@example.org", [spf("fail")], ("none", "none")),
    ],
)  # fmt: skip
async def test_verdicts(
    dns: FakeDNS,
    from_value: str | None,
    results: list[AuthResult],
    expected: tuple[str, str],
) -> None:
    result, _, _, policy = await evaluate(dns, from_value, results)
    assert (result, policy) == expected


async def test_entry_names_the_from_domain_and_reason(dns: FakeDNS) -> None:
    result, from_dom, reason, _ = await evaluate(
        dns, "Ann <ann@example.org>", [spf("fail"), dkim("fail", "example.org")]
    )
    assert (result, from_dom, reason) == ("fail", "example.org", "No aligned identifiers")


async def test_pct_samples_which_messages_the_policy_applies_to(dns: FakeDNS) -> None:
    """pct=50: a draw below one half applies the policy, one above does not."""
    failing = [spf("fail"), dkim("fail", "half.example")]
    assert (await evaluate(dns, "a@half.example", failing, draw=0.49))[3] == "reject"
    assert (await evaluate(dns, "a@half.example", failing, draw=0.5))[3] == "none"


async def test_published_policy_for_spf(dns: FakeDNS) -> None:
    resolver = Resolver(dns.address, timeout=1.0)
    assert await published_policy(resolver, header("a@example.org")) == "reject"
    assert await published_policy(resolver, header("a@sub.example.org")) == "quarantine"
    assert await published_policy(resolver, header("a@none.example")) == "none"
    assert await published_policy(resolver, header("a@nowhere.example")) is None
    assert await published_policy(resolver, header(None)) is None


async def test_evaluation_with_a_policy_cache_asks_dns_once(dns: FakeDNS) -> None:
    policies = PolicyCache()
    failing = [spf("fail"), dkim("fail", "example.org")]
    for _ in range(3):
        resolver = Resolver(dns.address, timeout=1.0)  # no DNS cache between messages
        evaluation = DmarcEvaluation(resolver, MsgMeta(id="t"), policies=policies)
        evaluation.fetch_record(header("Ann <ann@example.org>"))
        verdict = await evaluation.evaluate(failing)
        await evaluation.close()
        assert (verdict.auth_result.result, verdict.policy) == ("fail", "reject")
    assert dns.queries == [("_dmarc.example.org.", "TXT")]
    assert len(policies) == 1


# -- what is kept between messages ----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


async def test_policy_cache_keeps_a_discovery_while_its_answers_hold() -> None:
    server = FakeDNS({("_dmarc.example.org", "TXT"): [txt("v=DMARC1; p=reject")]}, ttl=300)
    try:
        clock = Clock()
        cache = PolicyCache(clock=clock)
        first = await find_record(Resolver(server.address, timeout=1.0), "example.org", cache)
        assert first.record is not None and first.record.p == "reject"
        # Kept as long as the TXT answer's TTL, no longer.
        assert clock.now + 290 < first.fresh_until <= time.monotonic() + 300
        server.set("_dmarc.example.org", "TXT", [txt("v=DMARC1; p=none")])
        # A fresh resolver (no DNS cache): the discovery comes from the policy cache.
        again = await find_record(Resolver(server.address, timeout=1.0), "example.org", cache)
        assert again is first and len(server.queries) == 1
        clock.now = first.fresh_until  # the answer has expired
        later = await find_record(Resolver(server.address, timeout=1.0), "example.org", cache)
        assert later.record is not None and later.record.p == "none"
        assert len(server.queries) == 2
    finally:
        server.close()


async def test_policy_cache_takes_the_shortest_ttl_of_a_fallback() -> None:
    """No record at the From domain (negative TTL 60), one at the organisational domain."""
    server = FakeDNS(
        {("_dmarc.example.org", "TXT"): [txt("v=DMARC1; p=reject")]}, ttl=300, negative_ttl=60
    )
    try:
        cache = PolicyCache()
        found = await find_record(Resolver(server.address, timeout=1.0), "mail.example.org", cache)
        assert found.at_org and found.record is not None
        assert found.fresh_until <= time.monotonic() + 60
        assert cache.get("mail.example.org") is found
        none = await find_record(Resolver(server.address, timeout=1.0), "nowhere.example", cache)
        assert none.record is None and none.error is None and none.fresh_until > 0
        assert cache.get("nowhere.example") is none  # "no record" is an answer too
    finally:
        server.close()


async def test_policy_cache_keeps_no_failure(dns: FakeDNS) -> None:
    cache = PolicyCache()
    for _ in range(2):
        broken = await find_record(Resolver(dns.address, timeout=1.0), "broken.example", cache)
        assert broken.temporary and broken.fresh_until == 0
    assert dns.queries.count(("_dmarc.broken.example.", "TXT")) == 2
    invalid = await find_record(Resolver(dns.address, timeout=1.0), "a..b", cache)
    assert invalid.error is not None
    assert len(cache) == 0


async def test_policy_cache_is_bounded(dns: FakeDNS) -> None:
    resolver = Resolver(dns.address, timeout=1.0)
    cache = PolicyCache(size=2)
    for domain in ("example.org", "none.example", "strict.example"):
        await find_record(resolver, domain, cache)
    assert len(cache) == 2
    assert cache.get("example.org") is None  # the least recently used went first
    assert cache.get("strict.example") is not None


def test_organizational_domains_are_kept_bounded() -> None:
    organizational_domain.cache_clear()
    for i in range(ORG_CACHE_SIZE + 10):
        organizational_domain(f"host{i}.example.co.uk")
    info = organizational_domain.cache_info()
    assert info.currsize == ORG_CACHE_SIZE == info.maxsize
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"


# -- the usual From field without the whole grammar -------------------------------------


def _slow_domain(value: str) -> str | None:
    try:
        boxes = parse_address_list(value)
    except AddressSyntaxError:
        return None
    if len(boxes) != 1:
        return None
    return boxes[0].address.rpartition("@")[2]


# Display names and addresses near the edge of the fast path, in every order.
_words = st.sampled_from(
    ["Ann", "J.", ".x", "a..b", '"A B"', '"a\\"b"', '""', "=?utf-8?q?A?=", "=?x-bogus?q?a?=",
     "(c)", "ü", "a@b", "a,b", "x=y", "q?", "<", ">", ""]
)  # fmt: skip
_addresses = st.sampled_from(
    ["<a@b.c>", "< a@b.c>", "<a@b.c >", "a@b.c", "<a.@b.c>", "<a@b..c>", '<"q"@b.c>',
     "<a@[192.0.2.1]>", "a@ b.c", "<a@b.c>,", "<a@b.c> (c)", "<a@b.c", "<@b.c>", "<a@>", ""]
)  # fmt: skip
_gaps = st.sampled_from(["", " ", "\t", "  "])
from_values = st.tuples(
    _gaps, st.lists(st.tuples(_words, _gaps), max_size=3), _addresses, _gaps
).map(lambda t: t[0] + "".join(w + g for w, g in t[1]) + t[2] + t[3])


@settings(max_examples=5000, deadline=None)
@given(from_values)
def test_simple_from_agrees_with_the_address_grammar(value: str) -> None:
    simple = dmarc_module._SIMPLE_FROM.fullmatch(value)
    if simple is not None:
        assert _slow_domain(value) == (simple.group("bare") or simple.group("angle"))


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        ("Bench <sender@bench.test>", "bench.test"),
        ('"Doe, John" <j.doe@example.org>', "example.org"),
        ("J. R. Doe <jrd@example.org>", "example.org"),
        ("  plain@example.org  ", "example.org"),
        ("<only@example.org>", "example.org"),
        ("Ann <ann@Example.ORG>", "Example.ORG"),  # as written
        ("=?utf-8?q?Ann?= <ann@example.org>", "example.org"),  # the grammar's path
        ("=?x-bogus?q?Ann?= <ann@example.org>", None),  # a charset nobody knows
        ("ann@example.org (Ann)", "example.org"),
        ("Ann <ann@[192.0.2.1]>", None),  # no domain name
        ("a@example.org, b@example.org", None),
        ("Ann <ann@example.org >", None),  # the grammar refuses a space before >
    ],
)
def test_from_domain(value: str, domain: str | None) -> None:
    if domain is None:
        with pytest.raises(ValueError):
            from_domain(header(value))
    else:
        assert from_domain(header(value)) == domain
