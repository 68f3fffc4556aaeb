"""check.dnsbl: query names, list blocks and answers (checks/dnsbl_lists.py),
and the module's replies that SMTP cannot provoke.

The examples of query names are RFC 5782's own (§2.1, §2.3, §2.4). The
end-to-end behaviour is in tests/e2e/test_dnsbl_e2e.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from kittiwake.checks.dnsbl import DNSBL
from kittiwake.checks.dnsbl_lists import (
    MAX_ZONE,
    DNSList,
    ResponseRule,
    client_address,
    domain_query,
    ip_query,
    parse_networks,
    parse_zone,
    read_list,
)
from kittiwake.config.parser import parse_text
from kittiwake.container import Container, DebugFlags
from kittiwake.dns import PermDNSError, TempDNSError
from kittiwake.errors import ConfigError


def test_ipv4_query_name() -> None:
    addr = client_address("192.0.2.99")
    assert addr is not None
    assert ip_query(addr, "bad.example.com") == "99.2.0.192.bad.example.com"


def test_ipv6_query_name_is_32_nibbles() -> None:
    addr = client_address("2001:db8:1:2:3:4:567:89ab")
    assert addr is not None
    assert ip_query(addr, "ugly.example.com") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
    )


def test_client_address_forms() -> None:
    assert client_address("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert client_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert client_address("not an address") is None
    # The probe asks an IPv6 list about the mapped address itself.
    probe = ip_query(ipaddress.IPv6Address("::ffff:7f00:2"), "z.test")
    assert probe == "2.0.0.0.0.0.f.7.f.f.f.f." + "0." * 20 + "z.test"


@pytest.mark.parametrize(
    ("domain", "query"),
    [
        ("mail.example.org", "mail.example.org.dbl.test"),
        ("Mail.Example.ORG.", "mail.example.org.dbl.test"),
        ("bücher.example", "xn--bcher-kva.example.dbl.test"),
        ("_dmarc.example", "_dmarc.example.dbl.test"),
        ("[192.0.2.1]", None),  # an address literal names no domain
        ("a..b", None),
        ("-lead.example", None),
        ("trail-.example", None),
        ("sp ace.example", None),
        ("back\\slash.example", None),
        ('quo"te.example', None),
        ("", None),
        (".", None),
        ("x" * 64 + ".example", None),  # a label past 63 octets
    ],
)
def test_domain_query(domain: str, query: str | None) -> None:
    assert domain_query(domain, "dbl.test") == query


def test_domain_query_length_limit() -> None:
    zone = "dbl.test"  # 9 octets with its dot
    room = 253 - len(zone) - 1
    at = ".".join(["a" * 63] * 3) + "." + "b" * (room - 3 * 64)
    assert len(at) == room
    assert domain_query(at, zone) == f"{at}.{zone}"
    assert domain_query("c" + at, zone) is None


def test_zones() -> None:
    assert parse_zone("Zen.Spamhaus.ORG.") == "zen.spamhaus.org"
    assert parse_zone("bücher.example") == "xn--bcher-kva.example"
    at = ".".join(["a" * 62] * 3)[: MAX_ZONE - 2] + ".z"
    assert len(at) == MAX_ZONE and parse_zone(at) == at
    with pytest.raises(ValueError, match="longer than 189"):
        parse_zone("y" + at)
    for bad in ("", "a..b", "[127.0.0.1]", "x y"):
        with pytest.raises(ValueError, match="not a DNS zone"):
            parse_zone(bad)


def test_networks() -> None:
    assert parse_networks(["127.0.0.1/24", "127.0.1.5", "::1"]) == (
        ipaddress.ip_network("127.0.0.0/24"),
        ipaddress.ip_network("127.0.1.5/32"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValueError, match="invalid IP address or network"):
        parse_networks(["127.0.0.300"])


def test_judging_with_responses() -> None:
    dnsbl = DNSList("bl.test")
    assert dnsbl.judge(["127.0.0.2"]) == (1, "", ["127.0.0.2"])
    assert dnsbl.judge(["127.0.1.2"]) is None  # outside 127.0.0.0/24
    assert dnsbl.judge(["not an address"]) is None
    only4 = DNSList("bl.test", responses=parse_networks(["127.0.0.4"]), score=3)
    assert only4.judge(["127.0.0.2", "127.0.0.4"]) == (3, "", ["127.0.0.4"])
    assert only4.judge(["127.0.0.2"]) is None


def test_judging_with_response_rules() -> None:
    """Each rule counts once; the first matched rule's message is the list's."""
    dnsbl = DNSList(
        "zen.test",
        rules=(
            ResponseRule(parse_networks(["127.0.0.2", "127.0.0.3"]), 10, "SBL"),
            ResponseRule(parse_networks(["127.0.0.10", "127.0.0.11"]), 5, "PBL"),
            ResponseRule(parse_networks(["127.0.0.20/30"]), 0),
        ),
    )
    assert dnsbl.judge(["127.0.0.2"]) == (10, "SBL", ["127.0.0.2"])
    assert dnsbl.judge(["127.0.0.11"]) == (5, "PBL", ["127.0.0.11"])
    # The first rule in the configuration gives the message, whatever the answers' order.
    assert dnsbl.judge(["127.0.0.11", "127.0.0.2"]) == (15, "SBL", ["127.0.0.2", "127.0.0.11"])
    same_rule = dnsbl.judge(["127.0.0.2", "127.0.0.3"])
    assert same_rule is not None and same_rule[:2] == (10, "SBL")
    assert dnsbl.judge(["127.0.0.21"]) == (0, "", ["127.0.0.21"])  # listed, worth nothing
    assert dnsbl.judge(["127.0.0.4"]) is None  # no rule: the answer does not count


def lists(text: str) -> tuple[list[DNSList], list[str]]:
    warnings: list[str] = []
    found: list[DNSList] = []
    for node in parse_text(text, "t.conf"):
        found.extend(read_list(node, warnings))
    return found, warnings


def test_list_blocks() -> None:
    found, warnings = lists(
        "a.test b.test {\n client_ipv6 no\n ehlo\n score 2\n}\nc.test\n"
        "zen.test {\n responses 127.0.0.9\n response 127.0.0.2 { score 7 }\n}\nnodot\n"
    )
    assert [d.zone for d in found] == ["a.test", "b.test", "c.test", "zen.test", "nodot"]
    assert found[0] == DNSList("a.test", client_ipv6=False, ehlo=True, score=2)
    assert found[2] == DNSList("c.test")  # block defaults: both address families
    assert found[3].rules == (ResponseRule(parse_networks(["127.0.0.2"]), 7),)
    assert warnings == [
        "zen.test: 'response' blocks given, 'responses' is ignored",
        "nodot: a list zone without a dot; a misspelt directive?",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("a.test {\n ehlo yes\n score -1\n}", "'ehlo' should not be used with negative score"),
        (
            "a.test {\n mailfrom\n response 127.0.0.2 { score -3 }\n}",
            "'mailfrom' should not be used with negative score",
        ),
        ("a.test {\n response 127.0.0.2 { message hi }\n}", "missing required directive: score"),
        ("a.test {\n response { score 1 }\n}", "expected at least one IP address"),
        ("a.test {\n responses 127.0.0.x\n}", "invalid IP address or network"),
        ("a.test {\n score one\n}", "invalid integer"),
        ("a.test {\n ehlo maybe\n}", "invalid boolean"),
        ("a.test {\n score 1\n score 2\n}", "duplicate directive: score"),
        ("a.test {\n colour red\n}", "unexpected directive: colour"),
        ("a..test", "not a DNS zone"),
    ],
)
def test_list_block_errors(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error) as info:
        lists(text)
    assert info.value.line >= 1


def module(tmp_path: Path, block: str) -> DNSBL:
    """A configured check.dnsbl (inline definitions are how a pipeline makes one)."""
    text = f"check.dnsbl {block}\n"
    (node,) = parse_text(text, "t.conf")
    flags = DebugFlags(dns_override="127.0.0.1:9")  # nothing listens: no DNS here
    container = Container([], config_file="t.conf", cwd=str(tmp_path), debug_flags=flags)
    found = container.module_from_args(node, [node.name, *node.args], node.children, DNSBL, "")
    assert isinstance(found, DNSBL)
    return found


def test_dns_failures(tmp_path: Path) -> None:
    check = module(tmp_path, "bl.test")
    temporary = check.dns_failure(TempDNSError("timeout"))
    permanent = check.dns_failure(PermDNSError("not a name"))
    assert temporary.reject and str(temporary.reason) == "451 4.7.0 DNS error during policy check"
    assert permanent.reject and str(permanent.reason) == "554 5.7.0 DNS error during policy check"


@pytest.mark.parametrize("sender", ["", "postmaster", "a@[192.0.2.1]", "a@-x-", "no-at-sign"])
async def test_senders_without_a_domain_to_ask_about(tmp_path: Path, sender: str) -> None:
    check = module(tmp_path, "{\n dbl.test {\n mailfrom\n }\n}")
    assert await check.sender_hits(sender, "client.example", ()) == ()


def test_the_inline_form(tmp_path: Path) -> None:
    check = module(tmp_path, "a.test B.TEST.")
    assert check.lists == (
        DNSList("a.test", client_ipv6=False),
        DNSList("b.test", client_ipv6=False),
    )
    assert (check.quarantine_threshold, check.reject_threshold, check.early) == (1, 9999, False)
