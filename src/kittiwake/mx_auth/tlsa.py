"""TLSA records and certificate matching for DANE (RFC 6698 §2, RFC 7218, RFC 7672 §3).

Nothing here does I/O: records come as the resolver's text, certificates
as DER. Only the two usages RFC 7672 §3.1 keeps for SMTP are usable:
DANE-TA(2) and DANE-EE(3); PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP,
as are unknown selectors and matching types (RFC 7672 §3.1.3).

Strategy for DANE-TA(2). Python's `ssl` verifies a chain only inside a
handshake and only against a trust store fixed before it, and exposes the
chain the server sent only through the private
`SSLObject._sslobj.get_unverified_chain()` (public from Python 3.13). With
that chain, the certificate the record names is looked for among the ones
the server sent (RFC 7672 §3.1.2 requires servers to send it), and the leaf
is then verified up to it with `cryptography`'s path builder: that
certificate as the only trust anchor, the rest of the chain as
intermediates, the MX host name as the reference identifier, validity
dates checked. A record that only names a key (selector 1) which the
server does not send as a certificate cannot be used this way.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = ["DANE_EE", "DANE_TA", "TLSARecord", "match_chain", "parse_tlsa"]

DANE_TA = 2
DANE_EE = 3
_DIGEST_SIZES = {1: 32, 2: 64}


@dataclass(frozen=True, slots=True)
class TLSARecord:
    """One TLSA record (RFC 6698 §2.1)."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """RFC 7672 §3.1: DANE-TA or DANE-EE, full certificate or key, exact or SHA-2."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (0, 1):
            return False
        if self.mtype == 0:
            return bool(self.data)
        return _DIGEST_SIZES.get(self.mtype) == len(self.data)

    def matches(self, der: bytes) -> bool:
        """Whether the certificate (DER) is the one this record names."""
        try:
            selected = der if self.selector == 0 else _spki(der)
        except ValueError:
            return False
        if self.mtype == 1:
            selected = hashlib.sha256(selected).digest()
        elif self.mtype == 2:
            selected = hashlib.sha512(selected).digest()
        return selected == self.data

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def parse_tlsa(text: str) -> TLSARecord:
    """A record from its presentation form (`3 1 1 ABCD...`); ValueError if malformed."""
    parts = text.split()
    if len(parts) < 4:
        raise ValueError(f"TLSA record {text!r}: expected usage, selector, type and data")
    numbers = [int(p) for p in parts[:3]]
    if any(not 0 <= n <= 255 for n in numbers):
        raise ValueError(f"TLSA record {text!r}: fields are 0-255")
    return TLSARecord(numbers[0], numbers[1], numbers[2], bytes.fromhex("".join(parts[3:])))


def _spki(der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(der)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def match_chain(
    records: Sequence[TLSARecord],
    chain: Sequence[bytes],
    host: str,
    now: datetime.datetime | None = None,
) -> TLSARecord | None:
    """The first usable record the server's chain (DER, leaf first) satisfies, or None.

    DANE-EE(3): the leaf is the certificate (or key) named; its names and
    dates do not matter (RFC 7672 §3.1.1). DANE-TA(2): the named
    certificate is in the chain and the leaf chains up to it with a name
    valid for `host` (RFC 7672 §3.1.2, §3.2.2).
    """
    if not chain:
        return None
    for record in records:
        if not record.usable:
            continue
        if record.usage == DANE_EE:
            if record.matches(chain[0]):
                return record
        elif _ta_matches(record, chain, host, now):
            return record
    return None


def _ta_matches(
    record: TLSARecord, chain: Sequence[bytes], host: str, now: datetime.datetime | None
) -> bool:
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
        others = [x509.load_der_x509_certificate(der) for der in chain[1:]]
    except ValueError:
        return False
    for i, der in enumerate(chain[1:]):
        if not record.matches(der):
            continue
        anchor = others[i]
        try:
            name: x509.GeneralName = x509.DNSName(host)
            verifier = (
                PolicyBuilder()
                .store(Store([anchor]))
                .time(now or datetime.datetime.now(datetime.UTC))
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_server_verifier(name)  # type: ignore[arg-type]
            )
            verifier.verify(leaf, [c for j, c in enumerate(others) if j != i])
        except (VerificationError, ValueError):
            continue
        return True
    return False


# The Web PKI profile cryptography applies by default is stricter than what
# mail servers present (a critical subjectAltName is refused, for one);
# DANE-TA needs a chain to the named anchor with a matching name, not the
# CA/Browser Forum's profile, so end-entity extensions are not judged
# beyond the subjectAltName the name check needs.
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()
_EE_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)
