"""Password hashes in maddy's stored format (docs/auth.md, "Stored entries").

Expected values are computed here with the `bcrypt` and `argon2` libraries
directly, or taken from outside kittiwake (OpenBSD's bcrypt test vectors,
the entries in maddy's own pass_table test), so the tests pin the format
rather than restating the code.
"""

from __future__ import annotations

import base64
import re

import bcrypt
import pytest
from argon2.low_level import Type, hash_secret_raw

from kittiwake.auth import hashing
from kittiwake.auth.hashing import HashFormatError, HashOptions, hash_password, verify_password

FAST = HashOptions(bcrypt_cost=4)

# OpenBSD's bcrypt test vectors (also used by the Python bcrypt project).
OPENBSD_VECTORS = [
    ("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
    ("U*U*", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"),
    ("", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.7uG0VCzI2bS7j6ymqJi9CdcdxiRTWNy"),
]
LONG_PASSWORD = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "chars after 72 are ignored"
)
LONG_HASH = "$2a$05$abcdefghijklmnopqrstuu5s2v8.iXieOjg/.AySBTTZIIVFJeBui"

# The entries of maddy's internal/auth/pass_table/table_test.go (password "password").
MADDY_BCRYPT = "bcrypt:$2y$10$4tEJtJ6dApmhETg8tJ4WHOeMtmYXQwmHDKIyfg09Bw1F/smhLjlaa"
MADDY_ARGON2 = (
    "argon2:1:8:1:U0FBQUFBTFQ=:"
    "KHUshl3DcpHR3AoVd28ZeBGmZ1Fj1gwJgNn98Ia8DAvGHqI0BvFOMJPxtaAfO8F+qomm2O3h0P0yV50QGwXI/Q=="
)
MADDY_SHA256 = "sha256:U0FMVA==:8PDRAgaUqaLSk34WpYniXjaBgGM93Lc6iF4pw2slthw="


def b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


def independent_argon2(password: str, salt: bytes, t: int = 2, m: int = 1024, p: int = 1) -> str:
    """The maddy-format entry, computed straight from argon2-cffi."""
    digest = hash_secret_raw(
        password.encode(), salt, time_cost=t, memory_cost=m, parallelism=p,
        hash_len=64, type=Type.ID, version=0x13,
    )  # fmt: skip
    return f"argon2:{t}:{m}:{p}:{b64(salt)}:{b64(digest)}"


# -- bcrypt ---------------------------------------------------------------------------


def test_bcrypt_entry_is_what_maddy_writes() -> None:
    entry = hash_password("hunter2")  # the default: bcrypt, cost 10
    assert re.fullmatch(r"bcrypt:\$2a\$10\$[./A-Za-z0-9]{53}", entry)
    raw = entry.removeprefix("bcrypt:").encode()
    assert bcrypt.checkpw(b"hunter2", raw)  # the library agrees
    assert verify_password("hunter2", entry)
    assert not verify_password("hunter3", entry)


def test_bcrypt_cost_option() -> None:
    entry = hash_password("x", "bcrypt", FAST)
    assert entry.startswith("bcrypt:$2a$04$")
    assert verify_password("x", entry)


@pytest.mark.parametrize(("password", "raw"), OPENBSD_VECTORS)
def test_bcrypt_openbsd_vectors(password: str, raw: str) -> None:
    assert verify_password(password, f"bcrypt:{raw}")
    assert not verify_password(password + "x", f"bcrypt:{raw}")


def test_bcrypt_uses_only_72_bytes_like_go() -> None:
    entry = f"bcrypt:{LONG_HASH}"
    # The library alone refuses the long password; Go compares its first 72 bytes.
    with pytest.raises(ValueError):
        bcrypt.checkpw(LONG_PASSWORD.encode(), LONG_HASH.encode())
    assert verify_password(LONG_PASSWORD, entry)
    assert verify_password(LONG_PASSWORD[:72], entry)
    assert verify_password(LONG_PASSWORD[:72] + "anything else", entry)
    assert not verify_password(LONG_PASSWORD[:71], entry)


def test_bcrypt_refuses_to_hash_over_72_bytes() -> None:
    with pytest.raises(ValueError, match="exceeds 72 bytes"):
        hash_password("é" * 37, "bcrypt", FAST)  # 74 bytes in UTF-8
    assert verify_password("a" * 72, hash_password("a" * 72, "bcrypt", FAST))
    assert verify_password("x" * 100, hash_password("x" * 100, "argon2"))


@pytest.mark.parametrize("prefix", ["2a", "2b", "2y"])
def test_bcrypt_prefixes(prefix: str) -> None:
    raw = bcrypt.hashpw(b"pw", bcrypt.gensalt(4, prefix=b"2b")).decode()
    entry = "bcrypt:$" + prefix + raw[3:]
    assert verify_password("pw", entry)
    assert not verify_password("pW", entry)


def test_maddy_bcrypt_entry() -> None:
    assert verify_password("password", MADDY_BCRYPT)
    assert not verify_password("different-password", MADDY_BCRYPT)


def test_password_bytes_are_utf8_and_surrogate_escapes() -> None:
    raw = bcrypt.hashpw("pässwörd".encode(), bcrypt.gensalt(4, prefix=b"2a")).decode()
    assert verify_password("pässwörd", f"bcrypt:{raw}")
    assert not verify_password("passwort", f"bcrypt:{raw}")
    # A SASL payload that was not UTF-8 arrives with surrogate escapes.
    raw = bcrypt.hashpw(b"\xffpw", bcrypt.gensalt(4, prefix=b"2a")).decode()
    assert verify_password("\udcffpw", f"bcrypt:{raw}")
    assert not verify_password("\ud800pw", f"bcrypt:{raw}")  # no crash either


# -- argon2 ---------------------------------------------------------------------------


def test_argon2_entry_is_exactly_maddys_format(monkeypatch: pytest.MonkeyPatch) -> None:
    salt = bytes(range(16))
    monkeypatch.setattr(hashing.os, "urandom", lambda n: salt[:n])
    expected = independent_argon2("correct horse", salt)
    assert hash_password("correct horse", "argon2") == expected
    assert expected.startswith("argon2:2:1024:1:AAECAwQFBgcICQoLDA0ODw==:")
    assert verify_password("correct horse", expected)
    assert not verify_password("correct horse ", expected)


def test_argon2_entry_shape() -> None:
    entry = hash_password("pw", "argon2")
    algo, t, m, p, salt, digest = entry.split(":")
    assert (algo, t, m, p) == ("argon2", "2", "1024", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(digest, validate=True)) == 64
    assert salt.endswith("==") and digest.endswith("==")  # padded, as Go's StdEncoding


def test_argon2_options() -> None:
    entry = hash_password(
        "pw", "argon2", HashOptions(argon2_time=3, argon2_memory=64, argon2_threads=2)
    )
    assert entry.startswith("argon2:3:64:2:")
    assert verify_password("pw", entry)


def test_argon2_independent_entries_with_other_parameters() -> None:
    entry = independent_argon2("s3cret", b"saltsaltsaltsalt", t=1, m=16, p=2)
    assert verify_password("s3cret", entry)
    assert not verify_password("S3cret", entry)


def test_maddy_argon2_entry() -> None:
    assert verify_password("password", MADDY_ARGON2)
    assert not verify_password("passwor", MADDY_ARGON2)


def test_argon2_digest_of_other_length_never_matches() -> None:
    entry = independent_argon2("pw", b"0123456789abcdef")
    short = entry.rsplit(":", 1)[0] + ":" + b64(base64.b64decode(entry.rsplit(":", 1)[1])[:32])
    assert not verify_password("pw", short)


# -- unusable entries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("plaintext", "no hash tag"),
        ("", "no hash tag"),
        (MADDY_SHA256, "unknown hash: sha256"),
        ("md5:abc", "unknown hash: md5"),
        ("BCRYPT:$2a$04$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "unknown hash"),
        ("bcrypt:garbage", "malformed bcrypt"),
        ("bcrypt:$2x$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "malformed"),
        ("argon2:2:1024:1:AAAA", "malformed argon2"),
        ("argon2:+2:1024:1:AAAAAAAAAAA=:AAAA", "decimal"),
        ("argon2:2: 1024:1:AAAAAAAAAAA=:AAAA", "decimal"),
        ("argon2:0:1024:1:AAAAAAAAAAA=:AAAA", "time"),
        ("argon2:2:1024:0:AAAAAAAAAAA=:AAAA", "threads"),
        ("argon2:2:1024:256:AAAAAAAAAAA=:AAAA", "threads"),
        ("argon2:2:7:1:AAAAAAAAAAA=:AAAA", "memory"),
        ("argon2:2:1024:1:AAAAAAAAAAA:AAAA", "base64"),  # padding missing
        ("argon2:2:1024:1:AAAA*AAAAAA=:AAAA", "base64"),
        ("argon2:1:8:1:AAAA:AAAA", "malformed argon2"),  # salt too short for libargon2
    ],
)
def test_unusable_entries(entry: str, message: str) -> None:
    with pytest.raises(HashFormatError, match=re.escape(message)):
        verify_password("password", entry)


def test_cannot_create_unknown_or_badly_tuned_hashes() -> None:
    with pytest.raises(ValueError, match="unknown hash function: sha256"):
        hash_password("pw", "sha256")
    for options in (
        HashOptions(bcrypt_cost=3),
        HashOptions(bcrypt_cost=32),
        HashOptions(argon2_time=0),
        HashOptions(argon2_threads=0),
        HashOptions(argon2_threads=256),
        HashOptions(argon2_memory=4),
    ):
        with pytest.raises(ValueError):
            hash_password("pw", "argon2", options)


# -- dummy entries for unknown users -------------------------------------------------------


def test_cost_classes() -> None:
    assert hashing.cost_class(MADDY_BCRYPT) == "bcrypt:2y:10"
    assert hashing.cost_class(MADDY_ARGON2) == "argon2:1:8:1"
    assert hashing.cost_class(f"bcrypt:{LONG_HASH}") == "bcrypt:2a:5"
    assert hashing.cost_class(MADDY_SHA256) is None
    assert hashing.DEFAULT_COST_CLASS == "bcrypt:2a:10"


@pytest.mark.parametrize("cost", ["bcrypt:2a:4", "bcrypt:2y:5", "argon2:1:8:1", "argon2:3:64:2"])
def test_dummy_entries_have_the_same_cost(cost: str) -> None:
    dummy = hashing.dummy_entry(cost)
    assert hashing.cost_class(dummy) == cost.replace("2y", "2b")
    assert not verify_password("password", dummy)
    assert hashing.dummy_entry(cost) != dummy  # fresh randomness each time
