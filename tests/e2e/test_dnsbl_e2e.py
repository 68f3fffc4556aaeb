"""`check.dnsbl` (docs/checks.md) against the real server, with lists in a fake DNS.

The lists live in one FakeDNS. Clients come from loopback addresses
(Dialog's `source`), so the listed client is 127.0.0.2, the address RFC
5782 §5 has every list carry, and 127.0.0.1 is the one no list may carry;
an IPv6 client comes through a trusted PROXY header. A quarantined message
lands in the mailbox's `.Junk` folder.

Lists:

* `bl.test`: lists 127.0.0.2 (with a TXT explanation), 127.0.0.3,
  2001:db8::7, and the RFC 5782 test entries;
* `two.test`: lists 127.0.0.2 and 127.0.0.3, no TXT;
* `white.test`: lists 127.0.0.3 (a whitelist, with a negative score);
* `zen.test`: answers a different code per client, for `response` rules;
* `dbl.test`: a domain list: `spam.example`, and `test`;
* `fail.test` / `stall.test`: the lookup of 127.0.0.2 SERVFAILs / of
  127.0.0.3 never answers.

The start-up probe asks every list about 127.0.0.2, so the resolver has
that answer cached before any client comes; tests that count lookups use
other clients, and `uncached` (answers with a TTL of 0) where the count
must show what kittiwake remembers itself.
"""

from __future__ import annotations

import ipaddress
import re
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakedns import SERVFAIL, TIMEOUT, FakeDNS, txt
from kw import Dialog, Kittiwake

Start = Callable[..., Kittiwake]
ID = r" \(msg ID = [0-9a-f]{8}\)"
LISTED = "554 5.7.0 Client identity is listed in the used DNSBL"


def ip_name(ip: str, zone: str) -> str:
    """RFC 5782's query name, written out independently of the code under test."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ".".join(reversed(ip.split("."))) + "." + zone
    return ".".join(reversed(addr.exploded.replace(":", ""))) + "." + zone


def listing(zone: str, *ips: str, answer: str = "127.0.0.2") -> dict[tuple[str, str], list[str]]:
    return {(ip_name(ip, zone), "A"): [answer] for ip in ips}


RECORDS: dict[tuple[str, str], list[str] | str] = {
    **listing("bl.test", "127.0.0.2", "127.0.0.3", "::ffff:7f00:2", "2001:db8::7"),
    (ip_name("127.0.0.2", "bl.test"), "TXT"): [txt("Listed, see https://bl.test/q?127.0.0.2")],
    **listing("two.test", "127.0.0.2", "127.0.0.3", "::ffff:7f00:2"),
    **listing("white.test", "127.0.0.2", "127.0.0.3", "::ffff:7f00:2"),
    **listing("zen.test", "127.0.0.2", answer="127.0.0.2"),
    (ip_name("127.0.0.3", "zen.test"), "A"): ["127.0.0.11"],
    (ip_name("127.0.0.4", "zen.test"), "A"): ["127.0.0.11"],
    (ip_name("127.0.0.5", "zen.test"), "A"): ["127.0.0.2", "127.0.0.11"],
    (ip_name("127.0.0.6", "zen.test"), "A"): ["127.0.0.2", "127.0.0.3"],
    (ip_name("127.0.0.7", "zen.test"), "A"): ["127.0.1.2"],  # outside the default responses
    (ip_name("127.0.0.8", "zen.test"), "A"): ["127.0.0.4"],
    ("spam.example.dbl.test", "A"): ["127.0.0.2"],
    ("test.dbl.test", "A"): ["127.0.0.2"],
    (ip_name("127.0.0.2", "fail.test"), "A"): SERVFAIL,
    (ip_name("127.0.0.2", "fail.test"), "AAAA"): SERVFAIL,
    (ip_name("127.0.0.3", "stall.test"), "A"): TIMEOUT,
    (ip_name("127.0.0.3", "stall.test"), "AAAA"): TIMEOUT,
    **listing("sloppy.test", "127.0.0.1"),  # lists what it must not, lacks 127.0.0.2
}


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    server = FakeDNS(RECORDS)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def uncached() -> Iterator[FakeDNS]:
    """The same lists with TTL 0: the resolver keeps nothing, every lookup is a query."""
    server = FakeDNS(RECORDS, ttl=0, negative_ttl=0)
    try:
        yield server
    finally:
        server.close()


def conf(tmp: Path, checks: str, *, extra: str = "") -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    tls off
{extra}
    check {{
{checks}
    }}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


def start(kittiwake: Start, tmp: Path, dns: FakeDNS, checks: str, **kw: str) -> Kittiwake:
    return kittiwake(conf(tmp, checks, **kw), args=("--debug.dnsoverride", dns.address))


def send(
    port: int,
    *,
    source: str = "",
    helo: str = "client.example.test",
    sender: str = "a@example.net",
    proxy: bytes = b"",
) -> str:
    """One message to user@example.org; the first reply that is not 2xx/3xx, or the last."""
    with Dialog(port, source=source) as d:
        if proxy:
            d.send(proxy)
        d.reply()
        d.cmd(f"EHLO {helo}")
        for command in (f"MAIL FROM:<{sender}>", "RCPT TO:<user@example.org>", "DATA"):
            reply = d.cmd(command)
            if reply[0] not in "23":
                return reply
        return d.cmd("Subject: t\r\n\r\nhello\r\n.")


def box(tmp: Path, folder: str = "") -> list[Path]:
    new = tmp / "mail" / "example.org" / "user" / folder / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def queried(dns: FakeDNS, name: str) -> int:
    return sum(1 for n, kind in dns.queries if n == name + "." and kind == "A")


# -- listed or not --------------------------------------------------------------------


def test_inline_list_quarantines_a_listed_client(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = start(kittiwake, tmp_path, dns, "dnsbl bl.test")
    assert send(srv.port(), source="127.0.0.1").startswith("250 ")
    assert send(srv.port(), source="127.0.0.2").startswith("250 ")
    assert len(box(tmp_path)) == 1 and len(box(tmp_path, ".Junk")) == 1
    # The TXT record explains the listing in the log; the client sees none of it.
    srv.wait_log(
        r"quarantined msg_id=\w+ reason=\"check\.dnsbl: 554 5\.7\.0 Client identity is listed "
        r"in the used DNSBL \(127\.0\.0\.2 listed in bl\.test \(score 1: Listed, see "
        r"https://bl\.test/q\?127\.0\.0\.2\)\)\""
    )
    # No Authentication-Results: DNSBLs produce none.
    assert b"Authentication-Results" not in box(tmp_path, ".Junk")[0].read_bytes()


def test_scores_add_up_across_lists(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    checks = """
        dnsbl {
            reject_threshold 2
            bl.test two.test
            white.test {
                score -5
            }
        }
"""
    srv = start(kittiwake, tmp_path, dns, checks.replace("white.test", "other.test"))
    refused = send(srv.port(), source="127.0.0.2")  # bl.test + two.test = 2
    assert re.fullmatch(LISTED + ID, refused), refused
    srv.wait_log(r"MAIL FROM error .* check=check\.dnsbl detail=\"127\.0\.0\.2 listed in bl\.test")
    srv.kill()
    srv = start(kittiwake, tmp_path, dns, checks)  # 1 + 1 - 5: a whitelist wins
    assert send(srv.port(), source="127.0.0.2").startswith("250 ")
    assert len(box(tmp_path)) == 1 and not box(tmp_path, ".Junk")


def test_thresholds_quarantine_then_reject(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    checks = """
        dnsbl {
            quarantine_threshold 2
            reject_threshold 3
            bl.test two.test {
                client_ipv6 no
            }
            zen.test {
                response 127.0.0.11 {
                    score 1
                }
            }
        }
"""
    srv = start(kittiwake, tmp_path, dns, checks)
    assert send(srv.port(), source="127.0.0.4").startswith("250 ")  # zen only: 1
    assert send(srv.port(), source="127.0.0.2").startswith("250 ")  # bl + two: 2 (.2: no rule)
    assert len(box(tmp_path)) == 1 and len(box(tmp_path, ".Junk")) == 1
    refused = send(srv.port(), source="127.0.0.3")  # bl + two + zen: 3
    assert re.fullmatch(LISTED + ID, refused), refused


def test_response_rules_and_messages(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    checks = """
        dnsbl {
            quarantine_threshold 6
            reject_threshold 15
            zen.test {
                response 127.0.0.2 127.0.0.3 {
                    score 10
                    message "Listed in the SBL"
                }
                response 127.0.0.10/31 {
                    score 5
                    message "Listed in the PBL"
                }
            }
        }
"""
    srv = start(kittiwake, tmp_path, dns, checks)
    both = send(srv.port(), source="127.0.0.5")  # .2 and .11: 10 + 5
    assert re.fullmatch(r"554 5\.7\.0 Listed in the SBL" + ID, both), both
    assert send(srv.port(), source="127.0.0.6").startswith("250 ")  # .2 and .3: one rule, 10
    assert send(srv.port(), source="127.0.0.4").startswith("250 ")  # .11: 5, under 6
    assert send(srv.port(), source="127.0.0.8").startswith("250 ")  # .4: no rule
    assert len(box(tmp_path, ".Junk")) == 1 and len(box(tmp_path)) == 2
    srv.kill()
    # The messages of several lists are joined.
    joined_checks = checks.replace("reject_threshold 15", "reject_threshold 11").replace(
        "            zen.test {",
        """            bl.test {
                response 127.0.0.2 {
                    score 1
                    message "And in bl"
                }
            }
            zen.test {""",
    )
    srv = start(kittiwake, tmp_path, dns, joined_checks)
    joined = send(srv.port(), source="127.0.0.2")  # bl first in the configuration
    assert re.fullmatch(r"554 5\.7\.0 And in bl; Listed in the SBL" + ID, joined), joined


def test_responses_filter(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = start(
        kittiwake,
        tmp_path,
        dns,
        "dnsbl {\n reject_threshold 1\n zen.test {\n responses 127.0.0.4 127.0.1.0/24\n }\n }",
    )
    assert send(srv.port(), source="127.0.0.2").startswith("250 ")  # .2 is filtered out
    assert re.fullmatch(LISTED + ID, send(srv.port(), source="127.0.0.8"))  # .4
    assert re.fullmatch(LISTED + ID, send(srv.port(), source="127.0.0.7"))  # 127.0.1.2
    srv.kill()
    srv = start(kittiwake, tmp_path, dns, "dnsbl {\n reject_threshold 1\n zen.test\n }")
    assert send(srv.port(), source="127.0.0.7").startswith("250 ")  # outside 127.0.0.0/24


def test_ipv6_client(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    proxy = b"PROXY TCP6 2001:db8::7 ::1 40000 25\r\n"
    trust = "    proxy_protocol {\n        trust 127.0.0.1\n    }"
    block = "dnsbl {\n reject_threshold 1\n bl.test\n }"
    srv = start(kittiwake, tmp_path, dns, block, extra=trust)
    assert re.fullmatch(LISTED + ID, send(srv.port(), proxy=proxy))
    assert queried(dns, ip_name("2001:db8::7", "bl.test")) == 1
    srv.kill()
    dns.queries.clear()
    # The inline form asks about IPv4 clients only.
    srv = start(kittiwake, tmp_path, dns, "dnsbl bl.test", extra=trust)
    assert send(srv.port(), proxy=proxy).startswith("250 ")
    assert queried(dns, ip_name("2001:db8::7", "bl.test")) == 0
    assert not box(tmp_path, ".Junk")


# -- domain lists -------------------------------------------------------------------------

DOMAINS = """
        dnsbl {
            reject_threshold 1
            dbl.test {
                client_ipv4 no
                client_ipv6 no
                ehlo yes
                mailfrom yes
            }
        }
"""


def test_ehlo_and_mailfrom_lists(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = start(kittiwake, tmp_path, dns, DOMAINS)
    assert re.fullmatch(LISTED + ID, send(srv.port(), helo="spam.example"))
    assert re.fullmatch(LISTED + ID, send(srv.port(), sender="a@Spam.Example"))
    assert send(srv.port()).startswith("250 ")
    assert send(srv.port(), sender="").startswith("250 ")  # <> has no domain


def test_a_name_is_asked_once_per_list(kittiwake: Start, tmp_path: Path, uncached: FakeDNS) -> None:
    """The sender's domain is not asked again when it is the greeting's name,
    nor on a list that already counted at the greeting."""
    srv = start(
        kittiwake, tmp_path, uncached, DOMAINS.replace("reject_threshold 1", "reject_threshold 2")
    )
    assert send(srv.port(), helo="clean.example", sender="a@clean.example").startswith("250 ")
    assert queried(uncached, "clean.example.dbl.test") == 1
    assert send(srv.port(), helo="spam.example", sender="b@spam.example").startswith("250 ")
    assert queried(uncached, "spam.example.dbl.test") == 1
    assert len(box(tmp_path, ".Junk")) == 1  # score 1: quarantined, not refused


def test_mailfrom_list_at_the_sender_stage(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    """A sender listed on a `mailfrom` list is refused, also with deferral off (at MAIL)."""
    srv = start(kittiwake, tmp_path, dns, DOMAINS, extra="    defer_sender_reject no")
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO client.example.test")
        assert re.fullmatch(LISTED + ID, d.cmd("MAIL FROM:<a@spam.example>"))
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")


@pytest.mark.parametrize(
    "helo",
    ["[127.0.0.1]", "[IPv6:::1]", "a..b", "-x-", "x" * 300, "#$%&", "xn--", "a.b." * 80],
)
def test_hostile_greetings_are_not_looked_up(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, helo: str
) -> None:
    srv = start(kittiwake, tmp_path, dns, DOMAINS)
    assert send(srv.port(), helo=helo).startswith("250 ")
    expected = {"example.net.dbl.test.", "test.dbl.test.", "invalid.dbl.test."}  # sender, probe
    assert {name for name, _ in dns.queries if name.endswith(".dbl.test.")} <= expected


def test_dnsbl_in_a_source_block(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    """Not only at the root: the check runs wherever the message's route lists it."""
    text = f"""
state_dir {tmp_path}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp_path}/mail
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    tls off
    source example.net {{
        check {{
            dnsbl bl.test
        }}
        deliver_to &mb
    }}
    default_source {{
        deliver_to &mb
    }}
}}
"""
    srv = kittiwake(text, args=("--debug.dnsoverride", dns.address))
    assert send(srv.port(), source="127.0.0.2").startswith("250 ")  # through the source block
    assert send(srv.port(), source="127.0.0.2", sender="a@example.com").startswith("250 ")
    assert len(box(tmp_path, ".Junk")) == 1 and len(box(tmp_path)) == 1


# -- at the greeting ------------------------------------------------------------------------


def test_check_early_refuses_the_greeting(
    kittiwake: Start, tmp_path: Path, uncached: FakeDNS
) -> None:
    checks = "dnsbl {\n check_early yes\n reject_threshold 1\n bl.test\n }"
    srv = start(kittiwake, tmp_path, uncached, checks)
    with Dialog(srv.port(), source="127.0.0.3") as d:
        d.reply()
        assert d.cmd("EHLO client.example.test") == LISTED  # no message, no ID
        assert d.cmd("MAIL FROM:<a@example.net>") == "503 5.5.1 Please introduce yourself first."
        assert d.cmd("HELO client.example.test") == LISTED  # the verdict is remembered
    assert queried(uncached, ip_name("127.0.0.3", "bl.test")) == 1
    srv.wait_log(r"client refused at greeting src_ip=127\.0\.0\.3 reason=\"127\.0\.0\.3 listed")
    assert send(srv.port(), source="127.0.0.1").startswith("250 ")


def test_check_early_dns_failure_refuses_the_greeting(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    checks = "dnsbl {\n check_early yes\n fail.test\n }"
    srv = start(kittiwake, tmp_path, dns, checks)
    with Dialog(srv.port(), source="127.0.0.2") as d:
        d.reply()
        assert d.cmd("EHLO client.example.test") == "451 4.7.0 DNS error during policy check"
        assert d.cmd("MAIL FROM:<a@example.net>") == "503 5.5.1 Please introduce yourself first."


@pytest.mark.parametrize("early", ["yes", "no"])
def test_one_lookup_per_session_and_quarantine_per_message(
    kittiwake: Start, tmp_path: Path, uncached: FakeDNS, early: str
) -> None:
    """Below `reject_threshold` the greeting passes and every message is marked;
    the client is looked up once for the session, at the greeting or at the
    first message."""
    checks = f"dnsbl {{\n check_early {early}\n reject_threshold 5\n bl.test two.test\n }}"
    srv = start(kittiwake, tmp_path, uncached, checks)
    with Dialog(srv.port(), source="127.0.0.3") as d:
        d.reply()
        assert d.cmd("EHLO client.example.test").startswith("250 ")
        assert queried(uncached, ip_name("127.0.0.3", "two.test")) == int(early == "yes")
        for _ in range(3):
            assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
            assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
            assert d.cmd("DATA").startswith("354")
            assert d.cmd("Subject: t\r\n\r\nhello\r\n.").startswith("250 ")
    assert len(box(tmp_path, ".Junk")) == 3
    assert queried(uncached, ip_name("127.0.0.3", "two.test")) == 1


def test_unix_socket_clients_are_not_checked(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    text = conf(tmp_path, "dnsbl {\n reject_threshold 1\n bl.test\n dbl.test {\n ehlo\n }\n }")
    text = text.replace("smtp tcp://127.0.0.1:0", "lmtp unix://lmtp.sock")
    kittiwake(text, args=("--debug.dnsoverride", dns.address))
    client = smtplib.LMTP(str(tmp_path / "state" / "run" / "lmtp.sock"), timeout=10)
    try:
        assert client.ehlo("spam.example")[0] == 250  # listed on dbl.test, yet not asked
        assert client.mail("a@example.net")[0] == 250
        assert client.rcpt("user@example.org")[0] == 250
        assert client.data(b"Subject: t\r\n\r\nhello\r\n")[0] == 250
    finally:
        client.close()
    assert ("spam.example.dbl.test.", "A") not in dns.queries
    assert len(box(tmp_path)) == 1


# -- failures --------------------------------------------------------------------------------


def test_servfail_is_a_temporary_refusal(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = start(kittiwake, tmp_path, dns, "dnsbl bl.test fail.test")
    refused = send(srv.port(), source="127.0.0.2")
    assert re.fullmatch(r"451 4\.7\.0 DNS error during policy check" + ID, refused), refused
    assert send(srv.port(), source="127.0.0.1").startswith("250 ")  # NXDOMAIN: not listed


def test_a_stalling_list_is_a_bounded_temporary_refusal(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    """The resolver gives up after 5 s; the start is not held up by the probe either."""
    began = time.monotonic()
    srv = start(kittiwake, tmp_path, dns, "dnsbl stall.test")
    assert time.monotonic() - began < 4
    began = time.monotonic()
    refused = send(srv.port(), source="127.0.0.3")
    assert re.fullmatch(r"451 4\.7\.0 DNS error during policy check" + ID, refused), refused
    assert 4 < time.monotonic() - began < 12


def test_start_probe_logs_broken_lists(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    checks = "dnsbl {\n sloppy.test\n dbl.test {\n ehlo\n }\n fail.test\n bl.test\n }"
    srv = start(kittiwake, tmp_path, dns, checks)
    srv.wait_log(r"DNSBL lacks the RFC 5782 test entry list=sloppy\.test entry=127\.0\.0\.2")
    srv.wait_log(
        r"DNSBL lists an entry RFC 5782 says it must not list=sloppy\.test entry=127\.0\.0\.1"
    )
    srv.wait_log(r"DNSBL lacks the RFC 5782 test entry list=sloppy\.test entry=::ffff:7f00:2")
    srv.wait_log(r"DNSBL lacks the RFC 5782 test entry list=dbl\.test entry=127\.0\.0\.2")
    srv.wait_log(r"DNSBL probe lookup failed .*list=fail\.test entry=127\.0\.0\.2")
    time.sleep(0.3)
    log = srv.log
    assert "list=bl.test" not in log  # a list with proper test entries is not mentioned
    assert "entry=test" not in log  # dbl.test carries `test`
    assert "list=dbl.test entry=invalid" not in log


def test_many_lists(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    """Lists are asked at once: 100 lists cost one round of lookups, not 100."""
    zones = [f"z{i}.many.test" for i in range(100)]
    for zone in zones:
        dns.set(ip_name("127.0.0.3", zone), "A", ["127.0.0.2"])
    checks = "dnsbl " + " ".join(zones) + " {\n reject_threshold 100\n }"
    srv = start(kittiwake, tmp_path, dns, checks)
    began = time.monotonic()
    assert re.fullmatch(LISTED + ID, send(srv.port(), source="127.0.0.3"))
    assert send(srv.port(), source="127.0.0.9").startswith("250 ")
    assert time.monotonic() - began < 10
    assert queried(dns, ip_name("127.0.0.9", "z99.many.test")) == 1


@pytest.mark.parametrize(
    ("checks", "error"),
    [
        ("dnsbl {\n dbl.test {\n ehlo\n score -1\n }\n }", "'ehlo' should not be used"),
        ("dnsbl {\n zen.test {\n response 127.0.0.2\n }\n }", "missing required directive: score"),
        ("dnsbl bad..zone", "not a DNS zone"),
        ("dnsbl {\n reject_threshold many\n }", "invalid integer"),
    ],
)
def test_configuration_errors(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, checks: str, error: str
) -> None:
    with pytest.raises(AssertionError, match=error):
        start(kittiwake, tmp_path, dns, checks)
