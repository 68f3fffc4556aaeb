"""DKIM signing keys on disk: maddy's layout, made once, read at every start.

A key lives at `dkim_keys/{domain}_{selector}.key` under the state
directory unless `key_path` says otherwise, as an unencrypted PKCS#8 PEM
file readable by its owner only; beside it, `{domain}_{selector}.dns`
holds the TXT record to publish at `SELECTOR._domainkey.DOMAIN`
(docs/modify.md, "Keys").

Creating a key is exclusive: the PEM text is written to a private
temporary file (mode 0600 set with `fchmod`, so the umask cannot widen
it), synced, then hard-linked to its name. A link never replaces a file,
so two processes starting at once cannot overwrite each other's key, and
nobody ever reads a half-written one; the loser reads the winner's key.

Reading accepts PKCS#8 (`PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`)
PEM files holding an RSA key of at least 1024 bits (RFC 8301 §3.2) or an
Ed25519 key (RFC 8463); an ECDSA key (`EC PRIVATE KEY`) is refused, as
DKIM defines no ECDSA algorithm. `cryptography` checks RSA keys as it
loads them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from kittiwake.address import AddressError, normalize_domain, to_alabel_domain

__all__ = [
    "ALGORITHMS",
    "DEFAULT_KEY_PATH",
    "KeyFileError",
    "SigningKey",
    "create_key_file",
    "dns_path",
    "generate",
    "key_path",
    "load",
    "record_name",
    "zone_strings",
]

#: `newkey_algo` values and `kittiwake dkim keygen --algo`.
ALGORITHMS = ("rsa2048", "rsa4096", "ed25519")
NewKeyAlgo = Literal["rsa2048", "rsa4096", "ed25519"]
DEFAULT_KEY_PATH = "dkim_keys/{domain}_{selector}.key"
#: RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits.
MIN_RSA_BITS = 1024
#: PEM blocks `load` reads: PKCS#8 and PKCS#1.
_PEM_KINDS = ("PRIVATE KEY", "RSA PRIVATE KEY")


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and why."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key and what DKIM calls it."""

    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def key_type(self) -> str:
        """The `k=` value of its DNS record."""
        return "ed25519" if isinstance(self.key, ed25519.Ed25519PrivateKey) else "rsa"

    @property
    def algorithm(self) -> str:
        """The `a=` value of its signatures."""
        return "ed25519-sha256" if self.key_type == "ed25519" else "rsa-sha256"

    def describe(self) -> str:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return f"rsa{self.key.key_size}"
        return "ed25519"

    def sign(self, data: bytes) -> bytes:
        """The `b=` signature of canonicalized header data (RFC 6376 §3.7, RFC 8463 §3)."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # RFC 8463: Ed25519 signs the SHA-256 hash of the data, not the data.
        return self.key.sign(hashlib.sha256(data).digest())

    def dns_record(self) -> str:
        """`v=DKIM1; k=...; p=...` (RFC 6376 §3.6.1; RFC 8463 §4 for the raw Ed25519 key)."""
        public = self.key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            blob = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            blob = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return f"v=DKIM1; k={self.key_type}; p={base64.b64encode(blob).decode('ascii')}"

    def pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, the form kittiwake writes."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def record_name(domain: str, selector: str) -> str:
    """`SELECTOR._domainkey.DOMAIN` in A-labels; ValueError for names DNS cannot hold.

    Checked before a domain or selector becomes part of a file name too,
    so neither can climb out of the key folder.
    """
    try:
        labels = to_alabel_domain(normalize_domain(selector)).split(".")
        labels += ["_domainkey", *to_alabel_domain(normalize_domain(domain)).split(".")]
    except (AddressError, UnicodeError, ValueError) as exc:
        raise ValueError(f"not a DNS name: {exc}") from None
    if not all(_LABEL.fullmatch(label) for label in labels) or len(".".join(labels)) > 253:
        raise ValueError(f"not a DNS name: {selector}._domainkey.{domain}")
    return ".".join(labels)


def key_path(template: str, domain: str, selector: str, state_dir: str) -> str:
    """`template` with `{domain}` and `{selector}` filled in, relative to `state_dir`."""
    path = template.replace("{domain}", domain).replace("{selector}", selector)
    return os.path.join(state_dir, path)


def dns_path(path: str) -> str:
    """Where the DNS record of the key at `path` goes: `.key` becomes `.dns`."""
    return path[:-4] + ".dns" if path.endswith(".key") else path + ".dns"


def generate(algorithm: str) -> SigningKey:
    """A new key: `rsa2048`, `rsa4096` or `ed25519` (slow for RSA: run in a thread)."""
    if algorithm == "ed25519":
        return SigningKey(ed25519.Ed25519PrivateKey.generate())
    if algorithm in ("rsa2048", "rsa4096"):
        bits = int(algorithm[3:])
        return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=bits))
    raise ValueError(
        f"unknown key algorithm: {algorithm} (expected one of {', '.join(ALGORITHMS)})"
    )


def load(path: str) -> tuple[SigningKey, bool]:
    """The key at `path`, and whether its file is readable by others than its owner.

    Raises `FileNotFoundError` when there is no file, `KeyFileError` when
    the file cannot be used, other `OSError`s when it cannot be read.
    """
    with open(path, "rb") as f:
        exposed = bool(os.fstat(f.fileno()).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
        data = f.read(1 << 20)
    if b"-----BEGIN EC PRIVATE KEY-----" in data:
        raise KeyFileError(f"{path}: ECDSA keys are not supported by DKIM")
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
        raise KeyFileError(f"{path}: encrypted keys are not supported")
    if (
        b"-----BEGIN PRIVATE KEY-----" not in data
        and b"-----BEGIN RSA PRIVATE KEY-----" not in data
    ):
        raise KeyFileError(f"{path}: not a PEM private key (PKCS#8 or PKCS#1)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot read the key: {exc}") from None
    except Exception as exc:  # cryptography's own errors (unsupported algorithm)
        raise KeyFileError(f"{path}: cannot read the key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: ECDSA keys are not supported by DKIM")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(
                f"{path}: RSA keys of {key.key_size} bits are too short (at least {MIN_RSA_BITS})"
            )
        return SigningKey(key), exposed
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SigningKey(key), exposed
    raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}")


def create_key_file(path: str, key: SigningKey) -> bool:
    """Write `key` to `path` and its record beside it; False if `path` already existed.

    The folder is made (mode 0700) if missing. The `.dns` file is replaced
    whatever it held: a record next to a key this call did not create
    would describe another key.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            data = key.pem()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    _write_public(dns_path(path), key.dns_record())
    _sync_dir(directory)
    return True


def _write_public(path: str, text: str) -> None:
    """Replace `path` with `text` atomically, mode 0644 (a public record)."""
    tmp = f"{path}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def zone_strings(record: str) -> list[str]:
    """The record cut into the strings of one TXT record (255 bytes each at most).

    RFC 1035 §3.3.14: a TXT record is a list of strings of up to 255
    octets; DKIM joins them without a separator (RFC 6376 §3.6.2.2), so a
    2048-bit key's record, about 400 bytes, must be published as two.
    """
    raw = record.encode("ascii")
    return [raw[i : i + 255].decode("ascii") for i in range(0, len(raw), 255)] or [""]
