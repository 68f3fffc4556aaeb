"""How check results reach the client, with a test-only check module
(`test.check`, tests/e2e/fakes.py). The `edgeN` tests are maddy's own cases:
an early check (docs/checks.md, "When checks run"), a sender check at MAIL
or deferred to every RCPT (docs/server.md, "Transactions"), non-ASCII reply
text with and without SMTPUTF8 (docs/server.md), a check passing TLS
clients only."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path

import trustme
from fakedns import FakeDNS
from kw import Dialog, Kittiwake

Start = Callable[..., Kittiwake]
ID = r" \(msg ID = [0-9a-f]{8}\)"


def conf(tmp: Path, check: str, *, extra: str = "", tls: str = "tls off") -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
smtp tcp://127.0.0.1:0 {{
    {tls}
{extra}
    check {{
        test.check {{
{check}
        }}
    }}
    deliver_to dummy
}}
"""


def start(kittiwake: Start, tmp: Path, dns: FakeDNS, check: str, **kw: str) -> Kittiwake:
    return kittiwake(conf(tmp, check, **kw), args=("--debug.dnsoverride", dns.address))


def test_edge3_early_check_fails_the_greeting(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = start(kittiwake, tmp_path, dns, "stage early\ncode 523\nenhanced 5.0.0\nmessage Hey")
    with Dialog(srv.port()) as d:
        d.reply()
        assert d.cmd("EHLO client.example") == "523 5.0.0 Hey"  # no msg ID
        assert d.cmd("MAIL FROM:<a@example.org>") == "503 5.5.1 Please introduce yourself first."


def test_edge4_sender_check_at_mail(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = start(
        kittiwake,
        tmp_path,
        dns,
        "code 523\nenhanced 5.0.0\nmessage Hey",
        extra="    defer_sender_reject no",
    )
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO client.example")
        assert re.fullmatch(r"523 5\.0\.0 Hey" + ID, d.cmd("MAIL FROM:<a@example.org>"))


def test_edge5_deferred_sender_check_repeats_on_every_rcpt(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = start(kittiwake, tmp_path, dns, "code 523\nenhanced 5.0.0\nmessage Hey")
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO client.example")
        assert d.cmd("MAIL FROM:<a@example.org>").startswith("250 ")
        replies = [d.cmd(f"RCPT TO:<{r}@example.org>") for r in ("x", "y", "x")]
        assert re.fullmatch(r"523 5\.0\.0 Hey" + ID, replies[0])
        assert replies == [replies[0]] * 3  # the same reply, the same msg ID


def test_edge13_14_non_ascii_reply_text(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = start(
        kittiwake,
        tmp_path,
        dns,
        'code 523\nenhanced 5.0.0\nmessage "Hey 凱凱"',
        extra="    defer_sender_reject no",
    )
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO client.example")
        assert d.cmd("MAIL FROM:<a@example.org>").startswith("523 5.0.0 Hey ?? (msg ID")
        assert d.cmd("MAIL FROM:<a@example.org> SMTPUTF8").startswith("523 5.0.0 Hey 凱凱 (msg ID")


def test_edge33_check_requiring_tls(
    kittiwake: Start,
    tmp_path: Path,
    dns: FakeDNS,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    srv = start(
        kittiwake,
        tmp_path,
        dns,
        "unless_tls yes",
        extra="    defer_sender_reject no",
        tls=f"tls file {cert_files[0]} {cert_files[1]}",
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO client.example")
        assert re.fullmatch(
            r"550 5\.7\.1 Rejected by the test check" + ID, d.cmd("MAIL FROM:<a@example.org>")
        )
        assert d.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        d.starttls(context)
        d.cmd("EHLO client.example")
        assert d.cmd("MAIL FROM:<a@example.org>").startswith("250 ")
