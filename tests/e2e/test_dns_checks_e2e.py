"""`require_mx_record`, `require_matching_rdns` and `require_tls` (docs/checks.md)
against the real server, with DNS from a fake server.

Each reply of the docs' tables is provoked once, through SMTP, by a DNS
answer or a client address chosen for it: 127.0.0.1 has the PTR name
`client.example.test`, 127.0.0.2 none (NXDOMAIN), 127.0.0.3 a failing
lookup (SERVFAIL). The default actions (quarantine: the message lands in
the mailbox's `.Junk` folder; reject for `require_tls`) are shown with a
Maildir. The one reply no DNS server can provoke (a permanent failure of
the reverse lookup) is pinned by tests/units/checks/test_dns_checks.py.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from fakedns import SERVFAIL, FakeDNS
from kw import Dialog, Kittiwake, maildir_files

Start = Callable[..., Kittiwake]
ID = r" \(msg ID = [0-9a-f]{8}\)"


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    server = FakeDNS(
        {
            ("1.0.0.127.in-addr.arpa", "PTR"): ["client.example.test."],
            ("3.0.0.127.in-addr.arpa", "PTR"): SERVFAIL,
            ("4.0.0.127.in-addr.arpa", "PTR"): ["xn--bcher-kva.example."],
            ("example.net", "MX"): ["10 mx.example.net."],
            ("xn--bcher-kva.example", "MX"): ["10 mx.example.net."],
            ("nomx.example", "A"): ["192.0.2.1"],  # an implicit MX only
            ("nullmx.example", "MX"): ["0 ."],
            ("broken.example", "MX"): SERVFAIL,
        }
    )
    try:
        yield server
    finally:
        server.close()


def conf(
    tmp: Path, checks: str, *, endpoint: str = "smtp tcp://127.0.0.1:0", extra: str = ""
) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{endpoint} {{
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
    port: int, *, sender: str = "a@example.net", helo: str = "client.example.test", source: str = ""
) -> list[str]:
    """One message to user@example.org: the replies to MAIL, RCPT and the data."""
    with Dialog(port, source=source) as d:
        d.reply()
        d.cmd(f"EHLO {helo}")
        replies = [d.cmd(f"MAIL FROM:<{sender}>"), d.cmd("RCPT TO:<user@example.org>")]
        if replies[1].startswith("250"):
            assert d.cmd("DATA").startswith("354")
            replies.append(d.cmd("Subject: t\r\n\r\nhello\r\n."))
        return replies


def inbox(tmp: Path) -> list[Path]:
    return maildir_files(tmp / "mail", "example.org", "user")


def junk(tmp: Path) -> list[Path]:
    folder = tmp / "mail" / "example.org" / "user" / ".Junk" / "new"
    return sorted(folder.iterdir()) if folder.is_dir() else []


# -- require_mx_record ----------------------------------------------------------

MX_REJECT = "require_mx_record {\n fail_action reject\n }"


@pytest.mark.parametrize(
    ("sender", "reply"),
    [
        ("a@nowhere.example", "550 5.7.0 DNS error during policy check"),  # NXDOMAIN
        ("a@nomx.example", "501 5.7.27 Domain in MAIL FROM does not have any MX records"),
        ("a@nullmx.example", "501 5.7.27 Domain in MAIL FROM has null MX record"),
        ("a@broken.example", "450 4.7.0 DNS error during policy check"),  # SERVFAIL
        ("a@[192.0.2.1]", "550 5.7.0 DNS error during policy check"),  # no DNS name
    ],
    ids=["no-such-domain", "no-mx", "null-mx", "servfail", "address-literal"],
)
def test_mx_record_failures(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, sender: str, reply: str
) -> None:
    srv = start(kittiwake, tmp_path, dns, MX_REJECT, extra="    defer_sender_reject no")
    mail, _ = send(srv.port(), sender=sender)
    assert re.fullmatch(re.escape(reply) + ID, mail), mail
    srv.wait_log(r"MAIL FROM error .* check=require_mx_record")


def test_mx_record_passes_with_mx_idn_and_null_sender(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = start(kittiwake, tmp_path, dns, MX_REJECT)
    assert send(srv.port())[-1].startswith("250 ")
    assert send(srv.port(), sender="")[-1].startswith("250 ")  # bounces have no domain
    with Dialog(srv.port()) as d:  # the A-label form is what DNS is asked
        d.reply()
        d.cmd("EHLO client.example.test")
        assert d.cmd("MAIL FROM:<a@bücher.example> SMTPUTF8").startswith("250 ")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
    assert ("xn--bcher-kva.example.", "MX") in dns.queries
    assert ("nowhere.example.", "MX") not in dns.queries
    assert len(inbox(tmp_path)) == 2


def test_mx_record_refusal_is_deferred_to_each_rcpt(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = start(kittiwake, tmp_path, dns, MX_REJECT)
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO client.example.test")
        assert d.cmd("MAIL FROM:<a@nomx.example>").startswith("250 ")
        first = d.cmd("RCPT TO:<user@example.org>")
        assert re.fullmatch(
            r"501 5\.7\.27 Domain in MAIL FROM does not have any MX records" + ID, first
        )
        assert d.cmd("RCPT TO:<other@example.org>") == first


def test_mx_record_default_action_quarantines(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = start(kittiwake, tmp_path, dns, "require_mx_record")
    assert send(srv.port(), sender="a@nomx.example")[-1].startswith("250 ")
    assert send(srv.port())[-1].startswith("250 ")
    assert len(junk(tmp_path)) == 1 and len(inbox(tmp_path)) == 1
    srv.wait_log(r"quarantined .*require_mx_record: 501 5\.7\.27")


def test_mx_record_ignore_and_override(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = start(
        kittiwake,
        tmp_path,
        dns,
        "require_mx_record {\n fail_action ignore\n }",
    )
    assert send(srv.port(), sender="a@nullmx.example")[-1].startswith("250 ")
    assert len(inbox(tmp_path)) == 1 and not junk(tmp_path)
    srv.wait_log(r"no check action .*null MX record")
    srv.kill()
    srv = start(
        kittiwake,
        tmp_path,
        dns,
        'require_mx_record {\n fail_action reject 550 5.7.1 "Get an MX"\n }',
    )
    _, rcpt = send(srv.port(), sender="a@nullmx.example")
    assert re.fullmatch(r"550 5\.7\.1 Get an MX" + ID, rcpt)


# -- require_matching_rdns ----------------------------------------------------------

RDNS_REJECT = "require_matching_rdns {\n fail_action reject\n }"


@pytest.mark.parametrize(
    ("source", "helo", "reply"),
    [
        ("127.0.0.1", "other.example", "550 5.7.25 rDNS name does not match source hostname"),
        ("127.0.0.1", "[127.0.0.1]", "550 5.7.25 rDNS name does not match source hostname"),
        ("127.0.0.2", "client.example.test", "550 5.7.25 No PTR record found"),
        ("127.0.0.3", "client.example.test", "450 4.7.25 DNS error during policy check"),
    ],
    ids=["other-name", "address-literal", "no-ptr", "servfail"],
)
def test_rdns_failures(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, source: str, helo: str, reply: str
) -> None:
    srv = start(kittiwake, tmp_path, dns, RDNS_REJECT)
    mail, rcpt = send(srv.port(), source=source, helo=helo)
    assert mail.startswith("250 ")  # the connection stage waits for the first RCPT
    assert re.fullmatch(re.escape(reply) + ID, rcpt), rcpt


@pytest.mark.parametrize(
    ("source", "helo"),
    [
        ("127.0.0.1", "client.example.test"),
        ("127.0.0.1", "CLIENT.Example.TEST."),  # case and a final dot aside
        ("127.0.0.4", "XN--BCHER-KVA.example"),  # an A-label, in capitals
    ],
)
def test_rdns_match(kittiwake: Start, tmp_path: Path, dns: FakeDNS, source: str, helo: str) -> None:
    srv = start(kittiwake, tmp_path, dns, RDNS_REJECT)
    assert send(srv.port(), source=source, helo=helo)[-1].startswith("250 ")


def test_rdns_uses_the_sessions_one_lookup(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    """Two messages, a check and Received: one PTR query for the session."""
    srv = start(kittiwake, tmp_path, dns, RDNS_REJECT)
    with Dialog(srv.port(), source="127.0.0.4") as d:
        d.reply()
        d.cmd("EHLO xn--bcher-kva.example")
        for _ in range(2):
            assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
            assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
            assert d.cmd("DATA").startswith("354")
            assert d.cmd("Subject: t\r\n\r\nhello\r\n.").startswith("250 ")
    assert dns.queries.count(("4.0.0.127.in-addr.arpa.", "PTR")) == 1
    received = inbox(tmp_path)[0].read_bytes()
    assert b"(xn--bcher-kva.example [127.0.0.4])" in received


def test_rdns_default_action_quarantines(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = start(kittiwake, tmp_path, dns, "require_matching_rdns")
    assert send(srv.port(), helo="liar.example")[-1].startswith("250 ")
    assert len(junk(tmp_path)) == 1 and not inbox(tmp_path)


def test_rdns_unix_socket_client_has_no_name(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = start(kittiwake, tmp_path, dns, RDNS_REJECT, endpoint="lmtp unix://lmtp.sock")
    client = smtplib.LMTP(str(tmp_path / "state" / "run" / "lmtp.sock"), timeout=10)
    try:
        assert client.ehlo("client.example.test")[0] == 250
        assert client.mail("a@example.net")[0] == 250
        code, text = client.rcpt("user@example.org")
        assert (code, text[: len(b"5.7.25 No PTR record found")]) == (
            550,
            b"5.7.25 No PTR record found",
        )
    finally:
        client.close()
    assert not any(kind == "PTR" for _, kind in dns.queries)
    assert srv.addresses


def test_rdns_on_submission_looks_up_only_when_asked(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    """Submission does not look clients up at the greeting; the check asks once."""
    endpoint = "submission tcp://127.0.0.1:0"
    plain = start(kittiwake, tmp_path, dns, "", endpoint=endpoint, extra="    auth dummy")
    checked = start(
        kittiwake, tmp_path, dns, RDNS_REJECT, endpoint=endpoint, extra="    auth dummy"
    )
    login = "AUTH PLAIN AHVzZXIAcGFzcw=="  # user / pass
    with Dialog(plain.port(), source="127.0.0.4") as d:
        d.reply()
        d.cmd("EHLO xn--bcher-kva.example")
        assert d.cmd(login).startswith("235 ")
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
    assert not any(kind == "PTR" for _, kind in dns.queries)
    with Dialog(checked.port(), source="127.0.0.2") as d:
        d.reply()
        d.cmd("EHLO client.example.test")
        assert d.cmd(login).startswith("235 ")
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("550 5.7.25 No PTR record found")
        assert d.cmd("RCPT TO:<other@example.org>").startswith("550 5.7.25 No PTR record found")
    assert dns.queries.count(("2.0.0.127.in-addr.arpa.", "PTR")) == 1


# -- require_tls ------------------------------------------------------------------------


def test_require_tls(
    kittiwake: Start,
    tmp_path: Path,
    dns: FakeDNS,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    text = conf(tmp_path, "require_tls").replace(
        "    tls off", f"    tls file {cert_files[0]} {cert_files[1]}"
    )
    srv = kittiwake(text, args=("--debug.dnsoverride", dns.address))
    mail, rcpt = send(srv.port())
    assert mail.startswith("250 ")
    assert re.fullmatch(r"550 5\.7\.1 TLS conversation required" + ID, rcpt)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO client.example.test")
        assert d.cmd("STARTTLS").startswith("220 ")
        d.starttls(context)
        d.cmd("EHLO client.example.test")
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        assert d.cmd("DATA").startswith("354")
        assert d.cmd("Subject: t\r\n\r\nhello\r\n.").startswith("250 ")
    assert len(inbox(tmp_path)) == 1


def test_require_tls_quarantine(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = start(kittiwake, tmp_path, dns, "require_tls {\n fail_action quarantine\n }")
    assert send(srv.port())[-1].startswith("250 ")
    assert len(junk(tmp_path)) == 1


def test_dns_checks_refuse_arguments_and_unknown_directives(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    for checks, error in [
        ("require_tls yes", r"require_tls: inline arguments are not used"),
        ("require_mx_record {\n score 1\n }", r"unexpected directive: score"),
        ("require_matching_rdns {\n fail_action maybe\n }", r"fail_action: invalid action"),
    ]:
        with pytest.raises(AssertionError, match=error):
            start(kittiwake, tmp_path, dns, checks)
