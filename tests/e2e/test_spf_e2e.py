"""check.spf (docs/checks.md, "`spf`") against the real server process.

Every client connects from 127.0.0.1, which the endpoint trusts to send a
PROXY header, and claims in it the address SPF should see (192.0.2.1,
2001:db8::25, ...): `ConnInfo.remote_ip` is that address, and it is the
one SPF checks. DNS is `FakeDNS` (`--debug.dnsoverride`), with one domain
per SPF result. Where DMARC has to run, `test.dkim` (tests/e2e/fakes.py)
stands in for a DKIM check.
"""

from __future__ import annotations

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
CLIENT = "192.0.2.1"


@pytest.fixture
def spf_dns() -> Iterator[FakeDNS]:
    server = FakeDNS(
        {
            ("pass.test", "TXT"): [txt("v=spf1 ip4:192.0.2.1 ip6:2001:db8::/32 -all")],
            ("fail.test", "TXT"): [txt("v=spf1 -all")],
            ("fail2.test", "TXT"): [txt("v=spf1 -all")],
            ("softfail.test", "TXT"): [txt("v=spf1 ~all")],
            ("neutral.test", "TXT"): [txt("v=spf1 ?all")],
            ("none.test", "A"): ["192.0.2.9"],
            ("servfail.test", "TXT"): SERVFAIL,
            ("stall.test", "TXT"): TIMEOUT,
            ("permerror.test", "TXT"): [txt("v=spf1 ip4:192.0.2.1/99 -all")],
            ("helo.test", "TXT"): [txt("v=spf1 a -all")],
            ("helo.test", "A"): [CLIENT],
            ("edge.test", "TXT"): [txt("v=spf1 ip4:127.0.0.17 -all")],
            ("_dmarc.fail.test", "TXT"): [txt("v=DMARC1; p=reject")],
            ("_dmarc.fail2.test", "TXT"): [txt("v=DMARC1; p=reject")],
        }
    )
    try:
        yield server
    finally:
        server.close()


def config(
    tmp: Path,
    spf: str = "",
    *,
    extra: str = "",
    checks: str = "",
    listen: str = "smtp tcp://127.0.0.1:0",
    trust: str = "127.0.0.1",
) -> str:
    endpoint = (
        ""
        if listen.startswith("lmtp")
        else f"    tls off\n    proxy_protocol {{\n        trust {trust}\n    }}\n"
    )
    return f"""
state_dir {tmp}/state
runtime_dir {tmp}/run
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{listen} {{
{endpoint}{extra}
    check {{
        spf {{
{spf}
        }}
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


def start(kittiwake: Start, dns: FakeDNS, conf: str) -> Kittiwake:
    return kittiwake(conf, args=("--debug.dnsoverride", dns.address))


def proxy(client: str) -> bytes:
    """A PROXY v1 header naming `client` (docs/proxy.md)."""
    family, server = ("TCP6", "::1") if ":" in client else ("TCP4", "127.0.0.1")
    return f"PROXY {family} {client} {server} 40000 25\r\n".encode()


def session(port: int, client: str = CLIENT, helo: str = "client.example") -> Dialog:
    d = Dialog(port, timeout=30)
    d.send(proxy(client))
    assert d.reply()[0].startswith("220 mx.example.com ESMTP")
    assert d.cmd(f"EHLO {helo}").startswith("250")
    return d


def send(d: Dialog, sender: str, from_header: str = "") -> str:
    """MAIL, RCPT, DATA of one message; the last reply (of whatever step failed)."""
    for command in (f"MAIL FROM:<{sender}>", "RCPT TO:<user@example.org>", "DATA"):
        reply = d.cmd(command)
        if not reply.startswith(("250", "354")):
            d.cmd("RSET")
            return reply
    author = from_header or sender or "postmaster@client.example"
    return d.cmd(f"From: <{author}>\r\nSubject: spf\r\n\r\nhello\r\n.")


def stored(tmp: Path, folder: str = "new") -> list[str]:
    """The header of each message stored for user@example.org (`folder`: new or .Junk/new)."""
    box = tmp / "mail" / "example.org" / "user"
    path = box / folder if folder == "new" else box / folder / "new"
    files = sorted(path.iterdir()) if path.is_dir() else []
    headers = [f.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0] for f in files]
    return [re.sub(r"\n[ \t]+", " ", h.decode()) for h in headers]


def auth_results(header: str) -> str:
    found = re.search(r"^Authentication-Results: (.*)$", header, re.M)
    assert found, header
    return found.group(1)


# -- every result, at MAIL ---------------------------------------------------------


def test_every_result_and_its_reply(kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS) -> None:
    actions = "\n".join(
        f"{name}_action reject" for name in ("none", "neutral", "fail", "softfail", "permerr")
    )
    conf = config(
        tmp_path,
        f"enforce_early yes\n{actions}\ntemperr_action reject",
        extra="    defer_sender_reject no",
    )
    srv = start(kittiwake, spf_dns, conf)
    expected = {
        "pass.test": "250 2.0.0 Roger, accepting mail from <a@pass.test>",
        "fail.test": "550 5.7.23 SPF authentication failed",
        "softfail.test": "550 5.7.23 SPF authentication soft-failed",
        "neutral.test": "550 5.7.23 Neutral SPF result is not permitted",
        "none.test": "550 5.7.23 No SPF policy",
        "servfail.test": "451 4.7.23 SPF authentication failed with a temporary error",
        "permerror.test": "550 5.7.23 SPF authentication failed with a permanent error",
    }
    with session(srv.port()) as d:
        for domain, reply in expected.items():
            got = d.cmd(f"MAIL FROM:<a@{domain}>")
            assert re.fullmatch(re.escape(reply) + ("" if domain == "pass.test" else ID), got)
            d.cmd("RSET")


# -- actions, the A-R field, the identities ----------------------------------------------


def test_default_actions_and_the_stored_field(
    kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS
) -> None:
    srv = start(kittiwake, spf_dns, config(tmp_path))
    with session(srv.port()) as d:
        assert send(d, "a@pass.test").startswith("250 2.0.0 OK: queued")
        assert send(d, "a@softfail.test").startswith("250 ")  # ignore
        assert send(d, "a@fail.test").startswith("250 ")  # quarantine: into Junk
    with session(srv.port(), helo="helo.test") as d:
        assert send(d, "").startswith("250 ")  # the null sender: postmaster@HELO
    with session(srv.port(), client="2001:db8::25") as d:
        assert send(d, "b@pass.test").startswith("250 ")
    results = sorted(auth_results(h) for h in stored(tmp_path))
    assert results == [
        "mx.example.com; spf=pass smtp.helo=client.example smtp.mailfrom=pass.test",
        "mx.example.com; spf=pass smtp.helo=client.example smtp.mailfrom=pass.test",
        "mx.example.com; spf=pass smtp.helo=helo.test",
        "mx.example.com; spf=softfail smtp.helo=client.example smtp.mailfrom=softfail.test",
    ]
    (junk,) = stored(tmp_path, ".Junk")
    assert auth_results(junk) == (
        "mx.example.com; spf=fail smtp.helo=client.example smtp.mailfrom=fail.test"
    )


def test_enforce_early_rejects_the_first_rcpt(
    kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS
) -> None:
    # defer_sender_reject (the default): the sender stage runs at the first RCPT.
    srv = start(kittiwake, spf_dns, config(tmp_path, "enforce_early yes\nfail_action reject"))
    with session(srv.port()) as d:
        assert d.cmd("MAIL FROM:<a@fail.test>").startswith("250 ")
        reply = d.cmd("RCPT TO:<user@example.org>")
        assert re.fullmatch(r"550 5\.7\.23 SPF authentication failed" + ID, reply)


# -- DMARC ----------------------------------------------------------------------------


def test_spf_leaves_its_action_to_dmarc(kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS) -> None:
    # fail.test and fail2.test publish p=reject; DMARC runs (SPF and a DKIM
    # check): SPF's own reject is not used, DMARC decides.
    conf = config(
        tmp_path,
        'fail_action reject 550 5.7.23 "SPF failed"',
        checks="        test.dkim {\n            pass fail.test\n        }",
    )
    srv = start(kittiwake, spf_dns, conf)
    with session(srv.port()) as d:
        assert send(d, "a@fail.test").startswith("250 2.0.0 OK: queued")  # DKIM aligned
        reply = send(d, "a@fail2.test")  # nothing aligned
        assert re.fullmatch(r"550 5\.7\.1 DMARC check failed" + ID, reply)
    (header,) = stored(tmp_path)
    assert auth_results(header) == (
        "mx.example.com; spf=fail smtp.helo=client.example smtp.mailfrom=fail.test;"
        " dkim=pass header.d=fail.test; dmarc=pass header.from=fail.test"
    )
    srv.wait_log(r"action left to DMARC msg_id=[0-9a-f]{8} result=fail policy=reject")


def test_without_dmarc_spf_acts_with_its_own_reply(
    kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS
) -> None:
    conf = config(
        tmp_path,
        'fail_action reject 550 5.7.23 "SPF failed"',
        extra="    dmarc no",
        checks="        test.dkim {\n            pass fail.test\n        }",
    )
    srv = start(kittiwake, spf_dns, conf)
    with session(srv.port()) as d:
        assert re.fullmatch(r"550 5\.7\.23 SPF failed" + ID, send(d, "a@fail.test"))
    assert stored(tmp_path) == []


# -- who is not checked ------------------------------------------------------------------


def test_lmtp_on_a_unix_socket_gets_no_spf(
    kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS
) -> None:
    conf = config(tmp_path, "fail_action reject", listen="lmtp unix://lmtp.sock")
    start(kittiwake, spf_dns, conf)
    with smtplib.LMTP(str(tmp_path / "run" / "lmtp.sock"), timeout=10) as client:
        message = b"From: <a@fail.test>\r\nSubject: spf\r\n\r\nhello\r\n"
        assert client.sendmail("a@fail.test", ["user@example.org"], message) == {}
    (header,) = stored(tmp_path)
    assert "Authentication-Results" not in header
    assert not any(name.startswith("fail.test") for name, _ in spf_dns.queries)


# -- the PROXY address is the one SPF sees (maddy's edge cases) --------------------------


def test_edge34_a_trusted_proxy_names_the_client(
    kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS
) -> None:
    conf = config(
        tmp_path,
        "enforce_early yes\nfail_action reject",
        extra="    defer_sender_reject no",
        trust="127.0.0.1 ::1/128",
    )
    srv = start(kittiwake, spf_dns, conf)
    with session(srv.port(), client="127.0.0.17") as d:
        assert d.cmd("MAIL FROM:<a@edge.test>").startswith("250 ")


def test_edge35_an_untrusted_header_is_ignored(
    kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS
) -> None:
    conf = config(
        tmp_path,
        "enforce_early yes\nfail_action reject",
        extra="    defer_sender_reject no",
        trust="fe80::bad/128",
    )
    srv = start(kittiwake, spf_dns, conf)
    with Dialog(srv.port(), timeout=10) as d:
        d.send(proxy("127.0.0.17"))
        assert d.reply()[0].startswith("220 ")
        assert d.reply() == ["501 5.5.2 Bad command"]
        assert d.cmd("EHLO client.example").startswith("250")
        reply = d.cmd("MAIL FROM:<a@edge.test>")  # SPF sees 127.0.0.1
        assert re.fullmatch(r"550 5\.7\.23 SPF authentication failed" + ID, reply)


# -- a stalled DNS stalls nobody else ----------------------------------------------------


def test_stalled_dns_is_a_temperror_and_other_sessions_go_on(
    kittiwake: Start, tmp_path: Path, spf_dns: FakeDNS
) -> None:
    conf = config(
        tmp_path,
        "enforce_early yes\ntemperr_action reject",
        extra="    defer_sender_reject no",
    )
    srv = start(kittiwake, spf_dns, conf)
    with session(srv.port()) as stalled:
        started = time.monotonic()
        stalled.send(b"MAIL FROM:<a@stall.test>\r\n")
        time.sleep(0.3)  # the evaluation is waiting for DNS now
        for _ in range(3):
            with session(srv.port()) as other:
                asked = time.monotonic()
                assert other.cmd("MAIL FROM:<a@pass.test>").startswith("250 ")
                assert time.monotonic() - asked < 2.0
        reply = stalled.reply()[-1]
        took = time.monotonic() - started
    assert re.fullmatch(
        r"451 4\.7\.23 SPF authentication failed with a temporary error" + ID, reply
    )
    assert 4.0 < took < 21.0  # the resolver's 5 s, well inside SPF's 20 s
