"""`check.dkim` against hostile messages and hostile DNS: each case ends with
its RFC 6376 result within a bounded time, and other sessions go on meanwhile
(docs/checks.md, "dkim": "Limits")."""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dkimtools import (
    MESSAGE,
    DKIMKey,
    auth_results,
    delivered_by,
    rsa_key,
    send,
    sign,
)
from fakedns import TIMEOUT, FakeDNS, txt
from kw import Dialog, Kittiwake

Start = Callable[..., Kittiwake]
ID = r" \(msg ID = [0-9a-f]{8}\)"
PASS = "dkim=pass header.d=example.org header.i=@example.org"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def rsa() -> DKIMKey:
    return rsa_key()


def start(kittiwake: Start, tmp: Path, dns: FakeDNS, endpoint: str = "") -> Kittiwake:
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
        dkim
    }}
    deliver_to &mail
}}
"""
    return kittiwake(config, args=("--debug.dnsoverride", dns.address))


def verdict(srv: Kittiwake, tmp: Path, message: bytes, bound: float = 10.0) -> list[str]:

    def deliver() -> None:
        started = time.monotonic()
        code, text = send(srv.port(), message)
        assert time.monotonic() - started < bound
        assert code == 250, text

    return auth_results(delivered_by(deliver, tmp / "maildir"))


def _der(tag: int, body: bytes) -> bytes:
    if len(body) < 128:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def rsa_record(modulus: int, exponent: int) -> str:
    """A key record for any (n, e), also ones no library would make."""
    algorithm = _der(0x30, bytes.fromhex("06092a864886f70d0101010500"))
    key = _der(0x30, _int(modulus) + _int(exponent))
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + key))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def test_malformed_and_duplicated_fields(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey
) -> None:
    rsa.publish(dns, "sel", "example.org")
    srv = start(kittiwake, tmp_path, dns)
    good = sign(MESSAGE, rsa)
    field, rest = good.split(b"From:", 1)
    assert verdict(srv, tmp_path, field + field + b"From:" + rest) == [PASS, PASS]
    garbage = b"DKIM-Signature: ;;; = ;x\r\n" + good
    got = verdict(srv, tmp_path, garbage)
    assert got[1] == PASS and got[0].startswith('dkim=permerror reason="malformed signature')
    twice = b"DKIM-Signature: v=1; v=1; d=example.org\r\n" + good
    got = verdict(srv, tmp_path, twice)
    assert got[0].startswith('dkim=permerror reason="malformed signature: DuplicateTag'), got
    # Control characters and a long value from the field never reach the A-R field raw.
    nasty = b"DKIM-Signature: v=1; a=rsa-sha256; d=ex\x01ample.org; s=x\r\n" + good
    got = verdict(srv, tmp_path, nasty)
    assert got[0] == 'dkim=permerror reason="missing tag b=" header.d="ex ample.org" ' + (
        'header.i="@ex ample.org"'
    )
    long_d = (
        b"DKIM-Signature: v=1; d=" + b"a" * 900 + b".org; x=" + b"\r\n y" * 5 * 900 + b"\r\n" + good
    )
    got = verdict(srv, tmp_path, long_d)
    assert len(got[0]) < 700 and got[1] == PASS


def test_sixteen_kilobit_key_over_tcp(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    """RFC 6376 §3.3.3 lets verifiers take keys larger than 2048 bits: its TXT
    record does not fit in UDP, so the resolver asks again over TCP.

    The message was signed once by dkimpy (`dkimtools.sign`, selector `big`)
    and kept with its public key: loading the private key alone takes
    `cryptography` half a minute.
    """
    record = (FIXTURES / "dkim-rsa16384.txt").read_text()
    dns.set("big._domainkey.example.org", "TXT", [txt(record)])
    srv = start(kittiwake, tmp_path, dns)
    signed = (FIXTURES / "dkim-rsa16384.eml").read_bytes()
    assert verdict(srv, tmp_path, signed, bound=5) == [PASS]
    assert ("big._domainkey.example.org.", "TXT") in dns.queries


def test_keys_past_the_limits(kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey) -> None:
    """A modulus over 16384 bits or an exponent over 64 bits is refused before any
    arithmetic; a short key is refused (RFC 8301 §3.2)."""
    odd = (1 << 16399) | 1
    dns.set("huge._domainkey.example.org", "TXT", [txt(rsa_record(odd, 65537))])
    dns.set("exp._domainkey.example.org", "TXT", [txt(rsa_record((1 << 2047) | 1, (1 << 65) | 1))])
    dns.set("limit._domainkey.example.org", "TXT", [txt(rsa_record((1 << 16383) | 1, 65537))])
    dns.set("short._domainkey.example.org", "TXT", [txt(rsa_record((1 << 511) | 1, 65537))])
    srv = start(kittiwake, tmp_path, dns)
    for selector, reason in [
        ("huge", "key too large (16400 bits)"),
        ("exp", "key exponent too large"),
        ("short", "key too small (512 bits)"),
    ]:
        got = verdict(srv, tmp_path, sign(MESSAGE, rsa, selector=selector), bound=5)
        assert got == [
            f'dkim=permerror reason="{reason}" header.d=example.org header.i=@example.org'
        ]
    # At the limits: verified (and, with a made-up modulus, simply wrong).
    smallest = rsa_key(1024)
    smallest.publish(dns, "small", "example.org")
    assert verdict(srv, tmp_path, sign(MESSAGE, smallest, selector="small")) == [PASS]
    got = verdict(srv, tmp_path, sign(MESSAGE, rsa, selector="limit"), bound=5)
    assert got == [
        'dkim=fail reason="signature did not verify" header.d=example.org header.i=@example.org'
    ]


def test_oversized_and_malformed_txt_answers(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey
) -> None:
    dns.set("fat._domainkey.example.org", "TXT", [txt("v=DKIM1; k=rsa; p=" + "A" * 60000)])
    dns.set("bin._domainkey.example.org", "TXT", ['"\\000\\255\\010; p=\\255"'])
    dns.set("odd._domainkey.example.org", "TXT", [txt("v=DKIM1; p=" + rsa.record[18:] + "; k=zz")])
    srv = start(kittiwake, tmp_path, dns)
    for selector in ("fat", "bin", "odd"):
        (got,) = verdict(srv, tmp_path, sign(MESSAGE, rsa, selector=selector), bound=10)
        assert got.startswith('dkim=permerror reason="key syntax error'), (selector, got)
        assert got.endswith("header.d=example.org header.i=@example.org")


def test_ten_thousand_signatures(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey
) -> None:
    """`max_header_fields` raised so the header gets through: the check verifies
    `max_signatures` of them and says so for the rest, in bounded time, while
    another session is answered at once."""
    rsa.publish(dns, "sel", "example.org")
    srv = start(
        kittiwake,
        tmp_path,
        dns,
        "    max_header_fields 20000\n    max_header_size 16M",
    )
    field, rest = sign(MESSAGE, rsa).split(b"From:", 1)
    message = field * 10_000 + b"From:" + rest
    result: list[list[str]] = []
    sender = threading.Thread(target=lambda: result.append(verdict(srv, tmp_path, message, 60)))
    sender.start()
    try:
        while sender.is_alive():
            started = time.monotonic()
            with Dialog(srv.port()) as d:
                d.reply()
                assert d.cmd("EHLO other.example").startswith("250")
            assert time.monotonic() - started < 2
            time.sleep(0.2)
    finally:
        sender.join(60)
    (got,) = result
    assert got == [PASS] * 10 + [
        'dkim=neutral reason="9990 more signatures not verified (max_signatures 10)"'
    ]


def test_ten_thousand_signatures_past_the_default_field_limit(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey
) -> None:
    """With the default `max_header_fields` (1000) such a message never reaches the check."""
    srv = start(kittiwake, tmp_path, dns)
    field, rest = sign(MESSAGE, rsa).split(b"From:", 1)
    code, text = send(srv.port(), field * 10_000 + b"From:" + rest)
    assert code == 552 and re.fullmatch(r"5\.3\.4 Too many header fields" + ID, text), text


def test_stalling_dns(kittiwake: Start, tmp_path: Path, dns: FakeDNS, rsa: DKIMKey) -> None:
    """A key server that never answers: 421 4.7.20 once the resolver gives up
    (5 seconds), and meanwhile other sessions are verified and delivered."""
    rsa.publish(dns, "sel", "example.org")
    dns.set("stall._domainkey.example.org", "TXT", TIMEOUT)
    srv = start(kittiwake, tmp_path, dns)
    result: list[tuple[int, str]] = []
    stalled = sign(MESSAGE, rsa, selector="stall")
    started = time.monotonic()
    sender = threading.Thread(target=lambda: result.append(send(srv.port(), stalled)))
    sender.start()
    try:
        time.sleep(0.5)
        assert verdict(srv, tmp_path, sign(MESSAGE, rsa), bound=3) == [PASS]
    finally:
        sender.join(30)
    elapsed = time.monotonic() - started
    ((code, text),) = result
    assert code == 421 and text.startswith("4.7.20 Temporary error during DKIM verification")
    assert 4 < elapsed < 15
