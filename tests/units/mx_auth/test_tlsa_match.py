"""TLSA records and DANE matching (RFC 6698 §2, RFC 7672 §3) on real certificates."""

from __future__ import annotations

import datetime
import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kittiwake.mx_auth.tlsa import TLSARecord, match_chain, parse_tlsa

MX = "mx.example.test"


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def spki(cert_der: bytes) -> bytes:
    key = x509.load_der_x509_certificate(cert_der).public_key()
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def chain() -> tuple[bytes, ...]:
    root = trustme.CA()
    cert = root.create_child_ca().issue_cert(MX)
    return tuple(der(p.bytes()) for p in cert.cert_chain_pems)


def test_parse() -> None:
    record = parse_tlsa("3 1 1 0A0B 0C0D")  # the resolver may split long data
    assert record == TLSARecord(3, 1, 1, bytes.fromhex("0a0b0c0d"))
    assert str(record) == "3 1 1 0a0b0c0d"
    for bad in ("3 1 1", "3 1 x 00", "256 1 1 00", "3 1 1 zz"):
        with pytest.raises(ValueError):
            parse_tlsa(bad)


@pytest.mark.parametrize(
    ("record", "usable"),
    [
        (TLSARecord(3, 1, 1, b"\0" * 32), True),
        (TLSARecord(2, 0, 2, b"\0" * 64), True),
        (TLSARecord(3, 0, 0, b"\1"), True),
        (TLSARecord(3, 0, 0, b""), False),
        (TLSARecord(3, 1, 1, b"\0" * 31), False),  # wrong digest length
        (TLSARecord(0, 0, 1, b"\0" * 32), False),  # PKIX-TA: not for SMTP
        (TLSARecord(1, 0, 1, b"\0" * 32), False),  # PKIX-EE: not for SMTP
        (TLSARecord(3, 2, 1, b"\0" * 32), False),
        (TLSARecord(3, 1, 3, b"\0" * 32), False),
    ],
)
def test_usable(record: TLSARecord, usable: bool) -> None:
    assert record.usable is usable


def test_dane_ee_every_selector_and_type(chain: tuple[bytes, ...]) -> None:
    leaf = chain[0]
    for selector, data in ((0, leaf), (1, spki(leaf))):
        for mtype, digest in (
            (0, data),
            (1, hashlib.sha256(data).digest()),
            (2, hashlib.sha512(data).digest()),
        ):
            record = TLSARecord(3, selector, mtype, digest)
            assert match_chain([record], chain, MX) == record
            # DANE-EE ignores names (RFC 7672 §3.1.1).
            assert match_chain([record], chain, "any.other.name") == record
    other = TLSARecord(3, 1, 1, hashlib.sha256(spki(chain[1])).digest())
    assert match_chain([other], chain, MX) is None  # the issuer's key is not the leaf's


def test_dane_ee_ignores_expiry() -> None:
    root = trustme.CA()
    old = root.issue_cert(
        MX,
        not_before=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2002, 1, 1, tzinfo=datetime.UTC),
    )
    leaf = der(old.cert_chain_pems[0].bytes())
    record = TLSARecord(3, 1, 1, hashlib.sha256(spki(leaf)).digest())
    assert match_chain([record], (leaf,), MX) == record


def test_dane_ta_needs_chain_name_and_dates(chain: tuple[bytes, ...]) -> None:
    issuer = chain[1]
    record = TLSARecord(2, 0, 1, hashlib.sha256(issuer).digest())
    assert match_chain([record], chain, MX) == record
    assert match_chain([record], chain, "other.example.test") is None
    assert match_chain([record], chain[:1], MX) is None  # the anchor was not sent
    by_key = TLSARecord(2, 1, 1, hashlib.sha256(spki(issuer)).digest())
    assert match_chain([by_key], chain, MX) == by_key
    # Unlike DANE-EE, DANE-TA validates the path, dates included.
    after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=366 * 1000)
    assert match_chain([record], chain, MX, now=after) is None
    intermediate = trustme.CA().create_child_ca()
    expired = intermediate.issue_cert(
        MX,
        not_before=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2002, 1, 1, tzinfo=datetime.UTC),
    )
    old = tuple(der(p.bytes()) for p in expired.cert_chain_pems)
    old_anchor = TLSARecord(2, 0, 1, hashlib.sha256(old[1]).digest())
    assert match_chain([old_anchor], old, MX) is None
    # The leaf itself named with usage 2 is not a trust anchor for itself.
    self_anchor = TLSARecord(2, 0, 1, hashlib.sha256(chain[0]).digest())
    assert match_chain([self_anchor], chain, MX) is None


def test_first_matching_usable_record_wins(chain: tuple[bytes, ...]) -> None:
    unusable = TLSARecord(1, 1, 1, hashlib.sha256(spki(chain[0])).digest())
    wrong = TLSARecord(3, 1, 1, b"\0" * 32)
    right = TLSARecord(3, 1, 1, hashlib.sha256(spki(chain[0])).digest())
    assert match_chain([unusable, wrong, right], chain, MX) == right
    assert match_chain([right], (), MX) is None
    assert match_chain([right], (b"not a certificate",), MX) is None
