"""Key files of `modify.dkim` and `kittiwake dkim keygen` (docs/modify.md, "Keys")."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kittiwake.dkim import keys


@pytest.mark.parametrize("algorithm", keys.ALGORITHMS)
def test_created_files_modes_and_record(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "dkim_keys" / "example.org_default.key"
    key = keys.generate(algorithm)
    old = os.umask(0)  # the widest umask: the key must still be 0600
    try:
        assert keys.create_key_file(str(path), key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    loaded, exposed = keys.load(str(path))
    assert not exposed and loaded.describe() == algorithm
    record = (tmp_path / "dkim_keys" / "example.org_default.dns").read_text()
    assert record == key.dns_record() == loaded.dns_record()
    assert not record.endswith("\n")
    tags = dict(part.split("=", 1) for part in record.split("; "))
    public = base64.b64decode(tags["p"])
    if algorithm == "ed25519":
        assert tags["k"] == "ed25519" and len(public) == 32
        raw = loaded.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert public == raw
    else:
        assert tags["k"] == "rsa"
        spki = serialization.load_der_public_key(public)
        assert isinstance(spki, rsa.RSAPublicKey) and spki.key_size == int(algorithm[3:])
    assert sorted(os.listdir(path.parent)) == ["example.org_default.dns", "example.org_default.key"]


def test_creation_is_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    first, second = keys.generate("ed25519"), keys.generate("ed25519")
    assert keys.create_key_file(str(path), first)
    assert not keys.create_key_file(str(path), second)  # never replaced
    assert keys.load(str(path))[0].pem() == first.pem()
    assert (tmp_path / "k.dns").read_text() == first.dns_record()
    assert sorted(os.listdir(tmp_path)) == ["k.dns", "k.key"]  # no temporary file left


def test_paths() -> None:
    assert keys.key_path(keys.DEFAULT_KEY_PATH, "example.org", "s1", "/var/lib/kw") == (
        "/var/lib/kw/dkim_keys/example.org_s1.key"
    )
    assert keys.key_path("/etc/{selector}/{domain}.pem", "a.example", "x", "/st") == (
        "/etc/x/a.example.pem"
    )
    assert keys.dns_path("/k/a.key") == "/k/a.dns"
    assert keys.dns_path("/k/a.pem") == "/k/a.pem.dns"


def _write(path: Path, data: bytes, mode: int = 0o600) -> str:
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def test_pkcs1_is_read_and_exposure_reported(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    loaded, exposed = keys.load(_write(tmp_path / "a.key", pkcs1, 0o644))
    assert exposed and loaded.describe() == "rsa2048"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
            "ECDSA keys are not supported",
        ),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "ECDSA keys are not supported",
        ),
        (
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted keys are not supported",
        ),
        (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "cannot read"),
        (b"hello", "not a PEM private key"),
        (b"-----BEGIN PUBLIC KEY-----\nMAo=\n-----END PUBLIC KEY-----\n", "not a PEM private key"),
    ],
    # Fixed names: the keys are generated anew in each process that
    # collects the tests (pytest-xdist's workers must see the same names).
    ids=["ec-traditional", "ec-pkcs8", "ed25519-encrypted", "bad-base64", "not-pem", "public-key"],
)
def test_unusable_files(tmp_path: Path, data: bytes, message: str) -> None:
    path = _write(tmp_path / "bad.key", data)
    with pytest.raises(keys.KeyFileError, match=message) as info:
        keys.load(path)
    assert str(info.value).startswith(path)


def test_smallest_rsa_key_accepted(tmp_path: Path) -> None:
    """RFC 8301 §3.2: at least 1024 bits; `cryptography` cannot even make a shorter one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert keys.load(_write(tmp_path / "1024.key", pem))[0].describe() == "rsa1024"


def _prime(bits: int) -> int:
    while True:
        n = secrets.randbits(bits) | (3 << (bits - 2)) | 1  # two top bits: p * q has 2 * bits
        if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13)):
            return n


def test_rsa_key_under_1024_bits_refused(tmp_path: Path) -> None:
    """A key `cryptography` would not make, put together by hand."""
    e = 65537
    while True:
        p, q = _prime(384), _prime(384)
        if p != q and (p - 1) % e and (q - 1) % e:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
    )
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(keys.KeyFileError, match="RSA keys of 768 bits are too short"):
        keys.load(_write(tmp_path / "short.key", pem))


def test_zone_strings() -> None:
    assert keys.zone_strings("") == [""]
    assert keys.zone_strings("a" * 255) == ["a" * 255]
    assert keys.zone_strings("a" * 256) == ["a" * 255, "a"]
    record = keys.generate("rsa2048").dns_record()
    parts = keys.zone_strings(record)
    assert len(parts) == 2 and "".join(parts) == record
