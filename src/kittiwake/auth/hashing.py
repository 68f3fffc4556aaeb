"""Password hashes in the form maddy's `auth.pass_table` stores them.

The formats, for operators, are in docs/auth.md, "Stored entries".

A stored entry is `ALGO:REST`:

* `bcrypt:$2a$10$<22-char salt><31-char hash>`: a standard bcrypt string.
  maddy writes `$2a$`; `$2b$` and `$2y$` (same algorithm, other
  implementations) are read too.
* `argon2:TIME:MEMORY:THREADS:SALT:HASH`: Argon2id version 0x13; TIME
  iterations, MEMORY in KiB, THREADS lanes (at most 255), SALT and HASH in
  standard base64 with padding; the salt is 16 random bytes and the output 64
  bytes.

`sha256:` entries exist in maddy's code but only in its test builds; a
production maddy refuses them as an unknown hash, and so do we.

Strategy: the same credentials table must work unchanged in maddy and here,
so the format is pinned to what maddy's Go code writes and parses (decimal
parameters without sign, strict padded base64), and the bcrypt comparison
follows Go's: only the first 72 bytes of a password count. Creating a bcrypt
hash of a longer password is refused, as Go does, rather than silently
storing a hash that ignores the tail.

Everything here is synchronous and CPU-heavy (tens of milliseconds per call
by design): callers on the event loop go through `asyncio.to_thread`. Both
libraries release the GIL while they hash.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from dataclasses import dataclass

import bcrypt
from argon2.exceptions import HashingError
from argon2.low_level import ARGON2_VERSION, Type, hash_secret_raw

BCRYPT = "bcrypt"
ARGON2 = "argon2"
#: What `hash_password` can produce, in the order the CLI lists them.
SCHEMES = (BCRYPT, ARGON2)
DEFAULT_SCHEME = BCRYPT

#: Go's bcrypt works on at most this many bytes of the password.
BCRYPT_MAX_PASSWORD = 72
BCRYPT_MIN_COST = 4
BCRYPT_MAX_COST = 31
ARGON2_SALT_LEN = 16
ARGON2_HASH_LEN = 64
ARGON2_MAX_THREADS = 255  # maddy parses THREADS as an 8-bit number

_BCRYPT_RE = re.compile(r"\$(2[aby])\$(\d\d)\$[./A-Za-z0-9]{53}\Z")
_DECIMAL = re.compile(r"[0-9]+\Z")


class HashFormatError(ValueError):
    """A stored entry that cannot be verified: no tag, unknown hash, malformed."""


@dataclass(frozen=True, slots=True)
class HashOptions:
    """Cost parameters for new hashes.

    The defaults are what maddy's `hash` command effectively uses (its help
    text says time 3, its code uses 2) and what `creds create` writes.
    """

    bcrypt_cost: int = 10
    argon2_time: int = 2
    argon2_memory: int = 1024  # KiB
    argon2_threads: int = 1

    def check(self) -> None:
        """Raise ValueError for parameters the algorithms cannot use."""
        if not BCRYPT_MIN_COST <= self.bcrypt_cost <= BCRYPT_MAX_COST:
            raise ValueError(f"bcrypt cost must be between {BCRYPT_MIN_COST} and {BCRYPT_MAX_COST}")
        _check_argon2_params(self.argon2_time, self.argon2_memory, self.argon2_threads)


def _check_argon2_params(time_cost: int, memory: int, threads: int) -> None:
    # Go's argon2 panics on time 0 or threads 0; libargon2 refuses less than
    # 8 KiB per lane (Go would round it up, but maddy never writes such values).
    if time_cost < 1 or time_cost > 0xFFFFFFFF:
        raise ValueError("argon2 time must be at least 1")
    if not 1 <= threads <= ARGON2_MAX_THREADS:
        raise ValueError(f"argon2 threads must be between 1 and {ARGON2_MAX_THREADS}")
    if memory < 8 * threads or memory > 0xFFFFFFFF:
        raise ValueError("argon2 memory must be at least 8 KiB per thread")


def _password_bytes(password: str) -> bytes:
    # Go hashes the bytes the client sent. A SASL payload that was not UTF-8
    # reaches us with surrogate escapes; this gives the original bytes back.
    try:
        return password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no decoder produced
        return password.encode("utf-8", "surrogatepass")


# -- creating -------------------------------------------------------------------------


def hash_password(
    password: str, scheme: str = DEFAULT_SCHEME, options: HashOptions | None = None
) -> str:
    """A new `ALGO:REST` entry for `password`, with a fresh random salt.

    Raises ValueError for an unknown scheme, bad options, or a password
    bcrypt cannot hold (over 72 bytes).
    """
    opts = options or HashOptions()
    opts.check()
    secret = _password_bytes(password)
    if scheme == BCRYPT:
        if len(secret) > BCRYPT_MAX_PASSWORD:
            # Go's GenerateFromPassword refuses these (ErrPasswordTooLong).
            raise ValueError(
                f"bcrypt: password length exceeds {BCRYPT_MAX_PASSWORD} bytes (use argon2)"
            )
        salt = bcrypt.gensalt(rounds=opts.bcrypt_cost, prefix=b"2a")
        return f"{BCRYPT}:{bcrypt.hashpw(secret, salt).decode('ascii')}"
    if scheme == ARGON2:
        salt = os.urandom(ARGON2_SALT_LEN)
        digest = _argon2id(secret, salt, opts.argon2_time, opts.argon2_memory, opts.argon2_threads)
        return format_argon2(
            opts.argon2_time, opts.argon2_memory, opts.argon2_threads, salt, digest
        )
    raise ValueError(f"unknown hash function: {scheme} (available: {', '.join(SCHEMES)})")


def format_argon2(time_cost: int, memory: int, threads: int, salt: bytes, digest: bytes) -> str:
    """The stored form of an Argon2id hash, exactly as maddy writes it."""
    b64 = base64.standard_b64encode
    return (
        f"{ARGON2}:{time_cost}:{memory}:{threads}:"
        f"{b64(salt).decode('ascii')}:{b64(digest).decode('ascii')}"
    )


def _argon2id(secret: bytes, salt: bytes, time_cost: int, memory: int, threads: int) -> bytes:
    return hash_secret_raw(
        secret,
        salt,
        time_cost=time_cost,
        memory_cost=memory,
        parallelism=threads,
        hash_len=ARGON2_HASH_LEN,
        type=Type.ID,
        version=ARGON2_VERSION,  # 0x13, the only version Go's package has
    )


# -- verifying ------------------------------------------------------------------------


def split_entry(stored: str) -> tuple[str, str]:
    """(ALGO, REST) of a stored entry; raise HashFormatError if it has no tag."""
    algo, sep, rest = stored.partition(":")
    if not sep:
        raise HashFormatError("no hash tag")
    return algo, rest


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored `ALGO:REST` entry.

    Returns False for a wrong password; raises HashFormatError when the
    entry itself is unusable, which is the operator's problem, not the
    user's, and deserves a log line of its own.
    """
    algo, rest = split_entry(stored)
    secret = _password_bytes(password)
    if algo == BCRYPT:
        return _verify_bcrypt(secret, rest)
    if algo == ARGON2:
        return _verify_argon2(secret, rest)
    raise HashFormatError(f"unknown hash: {algo}")


def _verify_bcrypt(secret: bytes, rest: str) -> bool:
    if not _BCRYPT_RE.match(rest):
        raise HashFormatError("malformed bcrypt hash")
    try:
        # Go compares only the first 72 bytes; the Python library refuses
        # longer input instead of truncating it.
        return bcrypt.checkpw(secret[:BCRYPT_MAX_PASSWORD], rest.encode("ascii"))
    except ValueError as exc:  # e.g. a salt with non-canonical trailing bits
        raise HashFormatError(f"malformed bcrypt hash: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Argon2Entry:
    time_cost: int
    memory: int
    threads: int
    salt: bytes
    digest: bytes


def _parse_argon2(rest: str) -> _Argon2Entry:
    parts = rest.split(":", 4)
    if len(parts) != 5:
        raise HashFormatError("malformed argon2 hash: expected TIME:MEMORY:THREADS:SALT:HASH")
    numbers = parts[:3]
    # strconv.ParseUint: plain decimal digits, no sign, no spaces.
    if not all(_DECIMAL.match(n) for n in numbers):
        raise HashFormatError("malformed argon2 hash: parameters must be decimal numbers")
    time_cost, memory, threads = (int(n) for n in numbers)
    try:
        _check_argon2_params(time_cost, memory, threads)
    except ValueError as exc:
        raise HashFormatError(f"malformed argon2 hash: {exc}") from None
    try:
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except (binascii.Error, ValueError):
        raise HashFormatError("malformed argon2 hash: invalid base64") from None
    return _Argon2Entry(time_cost, memory, threads, salt, digest)


def _verify_argon2(secret: bytes, rest: str) -> bool:
    entry = _parse_argon2(rest)
    try:
        computed = _argon2id(secret, entry.salt, entry.time_cost, entry.memory, entry.threads)
    except HashingError as exc:  # e.g. a salt shorter than libargon2 accepts
        raise HashFormatError(f"malformed argon2 hash: {exc}") from None
    return hmac.compare_digest(computed, entry.digest)


# -- equal timing for unknown users ---------------------------------------------------------


def cost_class(stored: str) -> str | None:
    """The algorithm and cost parameters of an entry (`bcrypt:2a:10`, `argon2:2:1024:1`).

    Two entries of the same class take the same time to verify. None when
    the entry is unusable (it then fails fast anyway).
    """
    try:
        algo, rest = split_entry(stored)
        if algo == BCRYPT:
            m = _BCRYPT_RE.match(rest)
            if m is None:
                return None
            return f"{BCRYPT}:{m.group(1)}:{int(m.group(2))}"
        if algo == ARGON2:
            e = _parse_argon2(rest)
            return f"{ARGON2}:{e.time_cost}:{e.memory}:{e.threads}"
    except HashFormatError:
        return None
    return None


DEFAULT_COST_CLASS = f"{BCRYPT}:2a:{HashOptions().bcrypt_cost}"


def dummy_entry(cost: str) -> str:
    """An entry of cost class `cost` that no password matches in practice.

    Verifying a password against it takes as long as against a real entry of
    that class, which is what an unknown user must cost. Building a bcrypt
    one costs one hash; an argon2 one is free (random salt and output).
    """
    fields = cost.split(":")
    if fields[0] == BCRYPT and len(fields) == 3:
        # gensalt knows only 2a/2b; 2y is the same computation.
        prefix = b"2a" if fields[1] == "2a" else b"2b"
        salt = bcrypt.gensalt(rounds=int(fields[2]), prefix=prefix)
        return f"{BCRYPT}:{bcrypt.hashpw(os.urandom(32), salt).decode('ascii')}"
    if fields[0] == ARGON2 and len(fields) == 4:
        time_cost, memory, threads = (int(f) for f in fields[1:])
        return format_argon2(
            time_cost,
            memory,
            threads,
            os.urandom(ARGON2_SALT_LEN),
            os.urandom(ARGON2_HASH_LEN),
        )
    raise ValueError(f"unknown cost class: {cost}")


__all__ = [
    "ARGON2",
    "BCRYPT",
    "DEFAULT_COST_CLASS",
    "DEFAULT_SCHEME",
    "SCHEMES",
    "HashFormatError",
    "HashOptions",
    "cost_class",
    "dummy_entry",
    "format_argon2",
    "hash_password",
    "split_entry",
    "verify_password",
]
