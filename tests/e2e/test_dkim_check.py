"""`check.dkim` through the real server: messages signed by dkimpy with keys
published in FakeDNS, verdicts read from the delivered message's
Authentication-Results field (docs/checks.md, "dkim")."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dkimtools import (
    MESSAGE,
    DKIMKey,
    auth_results,
    delivered,
    delivered_by,
    ed25519_key,
    rsa_key,
    send,
    sign,
)
from fakedns import SERVFAIL, FakeDNS, txt
from kw import Kittiwake

Start = Callable[..., Kittiwake]
ID = r" \(msg ID = [0-9a-f]{8}\)"
PASS = "dkim=pass header.d=example.org header.i=@example.org"


@pytest.fixture(scope="module")
def rsa() -> DKIMKey:
    return rsa_key()


@pytest.fixture(scope="module")
def ed() -> DKIMKey:
    return ed25519_key()


def start(
    kittiwake: Start, tmp: Path, dns: FakeDNS, directives: str = "", endpoint: str = ""
) -> Kittiwake:
    config = f"""
state_dir {tmp}/state
hostname mx.example.com
storage.maildir mail {{
    path {tmp}/maildir
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    tls off
{endpoint}
    check {{
        dkim {{
{directives}
        }}
    }}
    deliver_to &mail
}}
"""
    return kittiwake(config, args=("--debug.dnsoverride", dns.address))


def verdict(srv: Kittiwake, tmp: Path, message: bytes) -> list[str]:
    """Send `message`; the A-R entries of the delivered copy."""

    def deliver() -> None:
        code, text = send(srv.port(), message)
        assert code == 250, text

    return auth_results(delivered_by(deliver, tmp / "maildir"))


def resign(message: bytes, old: bytes, new: bytes) -> bytes:
    assert old in message, old
    return message.replace(old, new, 1)


def test_verdicts(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey, ed: DKIMKey
) -> None:
    """One server, the default directives, a message per RFC result."""
    rsa.publish(dns, "sel", "example.org")
    ed.publish(dns, "ed", "example.org")
    dns.set("revoked._domainkey.example.org", "TXT", [txt("v=DKIM1; k=rsa; p=")])
    dns.set("junk._domainkey.example.org", "TXT", [txt("v=DKIM1; k=rsa; p=!!notbase64")])
    dns.set("notags._domainkey.example.org", "TXT", [txt("this is no key record")])
    dns.set("two._domainkey.example.org", "TXT", [txt(rsa.record), txt(ed.record)])
    dns.set("wrongtype._domainkey.example.org", "TXT", [txt(ed.record)])
    srv = start(kittiwake, tmp_path, dns)
    port_ok = sign(MESSAGE, rsa)

    cases: list[tuple[str, bytes, list[str]]] = [
        ("relaxed", port_ok, [PASS]),
        ("simple", sign(MESSAGE, rsa, canon=(b"simple", b"simple")), [PASS]),
        ("relaxed/simple", sign(MESSAGE, rsa, canon=(b"relaxed", b"simple")), [PASS]),
        ("ed25519", sign(MESSAGE, ed, selector="ed"), [PASS]),
        (
            "body altered",
            port_ok + b"P.S. added\r\n",
            [
                'dkim=fail reason="body hash did not verify" header.d=example.org '
                "header.i=@example.org"
            ],
        ),
        (
            "header altered",
            resign(port_ok, b"Subject: Hello", b"Subject: Hullo"),
            [
                'dkim=fail reason="signature did not verify" header.d=example.org '
                "header.i=@example.org"
            ],
        ),
        (
            "tag missing",
            re.sub(rb"bh=[^;]+;", b"", port_ok, count=1),
            ['dkim=permerror reason="missing tag bh=" header.d=example.org header.i=@example.org'],
        ),
        (
            "rsa-sha1",
            sign(MESSAGE, rsa, algorithm=b"rsa-sha1"),
            [
                'dkim=permerror reason="rsa-sha1 is not accepted" header.d=example.org '
                "header.i=@example.org"
            ],
        ),
        (
            "key revoked",
            sign(MESSAGE, rsa, selector="revoked"),
            ['dkim=permerror reason="key revoked" header.d=example.org header.i=@example.org'],
        ),
        (
            "no key",
            sign(MESSAGE, rsa, selector="missing"),
            [
                'dkim=permerror reason="no key for signature" header.d=example.org '
                "header.i=@example.org"
            ],
        ),
        (
            "two key records",
            sign(MESSAGE, rsa, selector="two"),
            [
                'dkim=permerror reason="more than one key record" header.d=example.org '
                "header.i=@example.org"
            ],
        ),
        (
            "key of the wrong type",
            sign(MESSAGE, rsa, selector="wrongtype"),
            [
                'dkim=permerror reason="key type does not match the signature algorithm" '
                "header.d=example.org header.i=@example.org"
            ],
        ),
        (
            "From not signed",
            resign(port_ok, b"h=from : to : subject", b"h=to : subject"),
            [
                'dkim=permerror reason="From field not signed" header.d=example.org '
                "header.i=@example.org"
            ],
        ),
        (
            "Subject not signed (required_fields)",
            sign(MESSAGE, rsa, fields=(b"from", b"to")),
            [
                'dkim=permerror reason="some header fields are not signed" '
                "header.d=example.org header.i=@example.org"
            ],
        ),
        (
            "l= refused",
            sign(MESSAGE, rsa, length=True),
            [
                'dkim=fail reason="l= tag not accepted (allow_body_subset no)" '
                "header.d=example.org header.i=@example.org"
            ],
        ),
        ("no signature", MESSAGE, ["dkim=none"]),
        (
            "two signatures",
            sign(sign(MESSAGE, rsa), ed, selector="ed", domain="example.net"),
            ["dkim=pass header.d=example.net header.i=@example.net", PASS],
        ),
        (
            "a good and a bad signature",
            sign(sign(MESSAGE, rsa, selector="revoked"), ed, selector="ed"),
            [
                PASS,
                'dkim=permerror reason="key revoked" header.d=example.org header.i=@example.org',
            ],
        ),
    ]
    ed.publish(dns, "ed", "example.net")
    for name, message, expected in cases:
        got = verdict(srv, tmp_path, message)
        assert got == expected, name
    for selector in ("junk", "notags"):
        got = verdict(srv, tmp_path, sign(MESSAGE, rsa, selector=selector))
        assert len(got) == 1 and got[0].startswith('dkim=permerror reason="key syntax error'), got


def test_body_subset_allowed(kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey) -> None:
    """`allow_body_subset yes`: text after the signed length is allowed (RFC 6376 §3.5)."""
    rsa.publish(dns, "sel", "example.org")
    srv = start(kittiwake, tmp_path, dns, "allow_body_subset yes")
    signed = sign(MESSAGE, rsa, length=True)
    assert verdict(srv, tmp_path, signed) == [PASS]
    assert verdict(srv, tmp_path, signed + b"-- \r\nappended by a list\r\n") == [PASS]
    longer = re.sub(rb"l=(\d+)", lambda m: b"l=%d" % (int(m[1]) + 50), signed, count=1)
    assert verdict(srv, tmp_path, longer) == [
        'dkim=permerror reason="l= is larger than the body" header.d=example.org '
        "header.i=@example.org"
    ]


def test_temporary_key_failure(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey
) -> None:
    """`fail_open no`: 421 4.7.20 for the whole message, whatever the other signatures."""
    rsa.publish(dns, "sel", "example.org")
    dns.set("broken._domainkey.example.org", "TXT", SERVFAIL)
    srv = start(kittiwake, tmp_path, dns)
    message = sign(sign(MESSAGE, rsa), rsa, selector="broken")
    code, text = send(srv.port(), message)
    assert code == 421
    assert re.fullmatch(r"4\.7\.20 Temporary error during DKIM verification" + ID, text)
    assert delivered(tmp_path / "maildir") == []


def test_fail_open(kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey) -> None:
    rsa.publish(dns, "sel", "example.org")
    dns.set("broken._domainkey.example.org", "TXT", SERVFAIL)
    srv = start(kittiwake, tmp_path, dns, "fail_open yes")
    got = verdict(srv, tmp_path, sign(sign(MESSAGE, rsa), rsa, selector="broken"))
    assert len(got) == 2 and got[1] == PASS
    assert got[0].startswith('dkim=temperror reason="key lookup failed: DNS servers failed'), got


def test_actions_and_custom_replies(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey
) -> None:
    rsa.publish(dns, "sel", "example.org")
    srv = start(
        kittiwake,
        tmp_path,
        dns,
        'broken_sig_action reject 550 5.7.1 "Bad DKIM"\nno_sig_action reject\nrequired_fields From',
    )
    assert verdict(srv, tmp_path, sign(MESSAGE, rsa, fields=(b"from",))) == [PASS]
    code, text = send(srv.port(), sign(MESSAGE, rsa) + b"altered\r\n")
    assert code == 550 and re.fullmatch(r"5\.7\.1 Bad DKIM" + ID, text), text
    code, text = send(srv.port(), MESSAGE)
    assert code == 550 and re.fullmatch(r"5\.7\.20 No DKIM signatures" + ID, text), text
    srv.wait_log(r"No passing DKIM signatures")  # the check's own reason stays in the log
    assert len(delivered(tmp_path / "maildir")) == 1


def test_quarantine(kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey) -> None:
    srv = start(kittiwake, tmp_path, dns, "no_sig_action quarantine")
    assert send(srv.port(), MESSAGE)[0] == 250
    junk = tmp_path / "maildir" / "example.com" / "user" / ".Junk" / "new"
    (copy,) = list(junk.iterdir())
    assert auth_results(copy.read_bytes()) == ["dkim=none"]


def test_verification_time_is_bounded_per_message(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey
) -> None:
    """Many signatures verify in well under a second each (a smoke test of the costs)."""
    rsa.publish(dns, "sel", "example.org")
    srv = start(kittiwake, tmp_path, dns)
    message = MESSAGE
    for _ in range(10):
        message = sign(message, rsa)
    started = time.monotonic()
    assert verdict(srv, tmp_path, message) == [PASS] * 10
    assert time.monotonic() - started < 10
