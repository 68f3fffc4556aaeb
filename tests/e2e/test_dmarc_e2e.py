"""DMARC through the real server: `check { spf dkim }` with DMARC on (docs/dmarc.md).

Messages are signed by dkimpy with keys published in FakeDNS; the client
connects from 127.0.0.1, which the SPF records of the "good" envelope
domains allow and those of the "bad" ones refuse. Each case names a From
domain whose DMARC record (or its absence) decides the outcome, and the
test reads the reply and the delivered message's Authentication-Results.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dkimtools import DKIMKey, auth_results, rsa_key, send, sign
from fakedns import SERVFAIL, FakeDNS, txt
from kw import Kittiwake, maildir_files

Start = Callable[..., Kittiwake]
ID = r" \(msg ID = [0-9a-f]{8}\)"


@pytest.fixture(scope="module")
def key() -> DKIMKey:
    return rsa_key()


@pytest.fixture
def dns(key: DKIMKey) -> Iterator[FakeDNS]:
    server = FakeDNS(
        {
            ("1.0.0.127.in-addr.arpa", "PTR"): ["client.example.test."],
            # SPF: `good` domains allow 127.0.0.1, `bad` ones nobody.
            ("good.example", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
            ("mail.relaxed.example", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
            ("bad.example", "TXT"): [txt("v=spf1 -all")],
            # DMARC records of the From domains.
            ("_dmarc.relaxed.example", "TXT"): [txt("v=DMARC1; p=reject")],
            ("_dmarc.strict.example", "TXT"): [txt("v=DMARC1; p=reject; adkim=s; aspf=s")],
            ("_dmarc.quarantine.example", "TXT"): [txt("v=DMARC1; p=quarantine")],
            ("_dmarc.monitor.example", "TXT"): [txt("v=DMARC1; p=none")],
            ("_dmarc.parent.example", "TXT"): [txt("v=DMARC1; p=none; sp=reject")],
            ("_dmarc.broken.example", "TXT"): SERVFAIL,
        }
    )
    for domain in ("relaxed.example", "mail.strict.example", "quarantine.example"):
        key.publish(server, "sel", domain)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def server(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> Kittiwake:
    config = f"""
state_dir {tmp_path}/state
hostname mx.example.com
storage.maildir mail {{
    path {tmp_path}/maildir
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    tls off
    check {{
        spf
        dkim
    }}
    dmarc yes
    deliver_to &mail
}}
"""
    return kittiwake(config, args=("--debug.dnsoverride", dns.address))


def message(from_domain: str) -> bytes:
    return (
        f"From: Ann <ann@{from_domain}>\r\nTo: user@example.com\r\nSubject: hi\r\n"
        f"Date: Tue, 05 Mar 2024 10:00:00 +0000\r\n\r\nhello\r\n"
    ).encode()


def deliver(server: Kittiwake, mail_from: str, body: bytes) -> tuple[int, str]:
    return send(server.port(), body, sender=mail_from)


def stored(tmp: Path, folder: str = "") -> list[bytes]:
    root = tmp / "maildir" / "example.com" / "user"
    new = (root / folder / "new") if folder else (root / "new")
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def dmarc_entry(stored_message: bytes) -> str:
    (entry,) = [e for e in auth_results(stored_message) if e.startswith("dmarc=")]
    return entry


def test_aligned_dkim_passes_relaxed(server: Kittiwake, tmp_path: Path, key: DKIMKey) -> None:
    """d=relaxed.example signs mail From a subdomain... or the domain itself."""
    signed = sign(message("news.relaxed.example"), key, domain="relaxed.example")
    code, _ = deliver(server, "x@bad.example", signed)  # SPF fails, DKIM aligns
    assert code == 250
    (got,) = stored(tmp_path)
    assert dmarc_entry(got) == "dmarc=pass header.from=news.relaxed.example"


def test_aligned_spf_passes_relaxed(server: Kittiwake, tmp_path: Path) -> None:
    code, _ = deliver(server, "x@mail.relaxed.example", message("relaxed.example"))
    assert code == 250
    (got,) = stored(tmp_path)
    assert dmarc_entry(got) == "dmarc=pass header.from=relaxed.example"


def test_nothing_aligned_with_p_reject_is_refused(server: Kittiwake, tmp_path: Path) -> None:
    code, text = deliver(server, "x@good.example", message("relaxed.example"))
    assert code == 550
    assert re.fullmatch(r"5\.7\.1 DMARC check failed" + ID, text), text
    assert stored(tmp_path) == []


def test_strict_alignment_wants_the_exact_domain(
    server: Kittiwake, tmp_path: Path, key: DKIMKey
) -> None:
    signed = sign(message("strict.example"), key, domain="mail.strict.example")
    code, text = deliver(server, "x@bad.example", signed)
    assert code == 550, text  # relaxed would pass; adkim=s does not


def test_quarantine_files_the_message_as_junk(
    server: Kittiwake, tmp_path: Path, key: DKIMKey
) -> None:
    code, _ = deliver(server, "x@good.example", message("quarantine.example"))
    assert code == 250
    assert stored(tmp_path) == []
    (junk,) = stored(tmp_path, ".Junk")
    assert dmarc_entry(junk) == (
        'dmarc=fail reason="No aligned identifiers" header.from=quarantine.example'
    )


def test_p_none_only_records(server: Kittiwake, tmp_path: Path) -> None:
    code, _ = deliver(server, "x@good.example", message("monitor.example"))
    assert code == 250
    (got,) = stored(tmp_path)
    assert dmarc_entry(got).startswith("dmarc=fail ")


def test_sp_applies_to_subdomains(server: Kittiwake, tmp_path: Path) -> None:
    """The organisational domain's record: p=none for itself, sp=reject below it."""
    code, _ = deliver(server, "x@good.example", message("parent.example"))
    assert code == 250
    code, text = deliver(server, "x@good.example", message("mail.parent.example"))
    assert code == 550, text


def test_no_record_is_none(server: Kittiwake, tmp_path: Path) -> None:
    code, _ = deliver(server, "x@good.example", message("unpublished.example"))
    assert code == 250
    (got,) = stored(tmp_path)
    assert dmarc_entry(got) == 'dmarc=none reason="No DMARC policy" header.from=unpublished.example'


def test_a_temporary_lookup_failure_fails_closed(server: Kittiwake, tmp_path: Path) -> None:
    code, text = deliver(server, "x@good.example", message("broken.example"))
    assert code == 450
    assert re.fullmatch(r"4\.7\.1 DMARC check failed" + ID, text), text
    assert maildir_files(tmp_path / "maildir", "example.com", "user") == []
