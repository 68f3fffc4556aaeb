"""Helpers for the DKIM end-to-end tests: keys published in FakeDNS, dkimpy signing,
delivered messages and their Authentication-Results entries."""

from __future__ import annotations

import base64
import re
import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fakedns import FakeDNS, txt
from kw import maildir_files

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: user@example.com\r\n"
    b"Subject: Hello\r\n"
    b"Date: Tue, 05 Mar 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hello  there, \r\n"
    b"\r\n"
    b"a second  paragraph.\r\n"
)


@dataclass
class DKIMKey:
    """A key pair: what dkimpy signs with, and the TXT record text to publish."""

    private: bytes  # PEM (RSA) or base64 seed (Ed25519), as dkimpy.sign wants
    record: str
    algorithm: bytes  # rsa-sha256 or ed25519-sha256

    def publish(self, dns: FakeDNS, selector: str, domain: str) -> None:
        dns.set(f"{selector}._domainkey.{domain}", "TXT", [txt(self.record)])


def rsa_key(bits: int = 2048, pem: bytes | None = None) -> DKIMKey:
    key = (
        serialization.load_pem_private_key(pem, None)
        if pem is not None
        else rsa.generate_private_key(public_exponent=65537, key_size=bits)
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DKIMKey(private, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}", b"rsa-sha256")


def ed25519_key() -> DKIMKey:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return DKIMKey(
        base64.b64encode(seed),
        f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}",
        b"ed25519-sha256",
    )


def sign(
    message: bytes,
    key: DKIMKey,
    *,
    selector: str = "sel",
    domain: str = "example.org",
    canon: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
    fields: tuple[bytes, ...] = (b"from", b"to", b"subject"),
    length: bool = False,
    algorithm: bytes | None = None,
) -> bytes:
    """`message` with a dkimpy signature on top."""
    field = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.private,
        signature_algorithm=algorithm or key.algorithm,
        canonicalize=canon,
        include_headers=list(fields),
        length=length,
    )
    return bytes(field) + message


def send(
    port: int, message: bytes, rcpt: str = "user@example.com", *, sender: str = "sender@example.org"
) -> tuple[int, str]:
    """Deliver over SMTP: (code, text) of the final reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.example.net")
        try:
            client.sendmail(sender, [rcpt], message)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[rcpt]
            return code, text.decode()
    return 250, ""


def delivered(root: Path, user: str = "user", domain: str = "example.com") -> list[bytes]:
    """The messages in a mailbox's `new/`, oldest first."""
    files = sorted(maildir_files(root, domain, user), key=lambda p: p.stat().st_mtime_ns)
    return [p.read_bytes() for p in files]


def delivered_by(
    action: Callable[[], object], root: Path, user: str = "user", domain: str = "example.com"
) -> bytes:
    """The one message `action` delivers into the mailbox.

    Found by its name, not by time: files written within one clock tick
    share an mtime, and the microseconds in a Maildir name are not
    zero-padded, so "the newest" can be the one before.
    """
    before = set(maildir_files(root, domain, user))
    action()
    new = [p for p in maildir_files(root, domain, user) if p not in before]
    assert len(new) == 1, new
    return new[0].read_bytes()


def header_fields(message: bytes, name: str) -> list[str]:
    """The unfolded values of every field called `name`."""
    text = message.replace(b"\r\n", b"\n")  # Maildir files have LF line ends
    head = text.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\n[ \t]", " ", head)
    prefix = name.lower() + ":"
    return [
        line.split(":", 1)[1].strip()
        for line in unfolded.split("\n")
        if line.lower().startswith(prefix)
    ]


def auth_results(message: bytes) -> list[str]:
    """The entries of the top Authentication-Results field, without the authserv-id."""
    values = header_fields(message, "Authentication-Results")
    assert values, "no Authentication-Results field"
    parts = [p.strip() for p in values[0].split(";")]
    assert parts[0] == "mx.example.com", parts
    return [" ".join(p.split()) for p in parts[1:]]
