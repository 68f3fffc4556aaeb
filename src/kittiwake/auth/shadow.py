"""`auth.shadow`: system accounts from /etc/shadow (docs/auth.md, "auth.shadow").

Strategy: nothing is cached. Each attempt re-reads the file in a worker
thread, so a `passwd` or `usermod` takes effect on the next login, and then
applies maddy's rules in order: account expiry, password expiry, null or
locked password, and finally crypt(3). Reading and hashing both happen in
that one thread call; the hash is computed by libxcrypt through ctypes,
which releases the GIL for the (deliberately slow) computation, so a
yescrypt check does not stall the event loop the way a C extension holding
the GIL would (the `crypt-r` package does).

libxcrypt verifies every scheme the system itself accepts: `$y$`
(yescrypt, Debian's default), `$6$`/`$5$` (SHA-crypt, all maddy knows) and
the older ones. A hash it cannot use (`*`, `x`, an unknown prefix) is a
password nobody can log in with.

Outcomes: a wrong password, an unknown user, an expired account or
password, a null or locked password are all "invalid credentials" (the
reason goes to the log, not to the client); an unreadable or malformed
file is a temporary failure.

Helper mode (`use_helper yes`, maddy's setuid `maddy-shadow-helper`) is not
offered: kittiwake ships no such binary. A server that cannot read
/etc/shadow itself can run a helper through `auth.external`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import hmac
import re
import time
from dataclasses import dataclass
from typing import Literal

from kittiwake.auth.base import InvalidCredentials, TemporaryAuthFailure
from kittiwake.config.directives import Directives
from kittiwake.errors import KittiwakeError
from kittiwake.module import Module, register

#: The file read by `auth.shadow`. A module attribute rather than a
#: directive, so configurations cannot point it elsewhere; tests replace it
#: before configuring a module.
SHADOW_FILE = "/etc/shadow"

_SECONDS_PER_DAY = 86400
_NUMBER = re.compile(r"-?[0-9]+")


class ShadowError(KittiwakeError):
    """The shadow file could not be read or understood."""


def today() -> int:
    """Days since 1970-01-01 (UTC), the unit of every shadow date field."""
    return int(time.time() // _SECONDS_PER_DAY)


# -- the file -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShadowEntry:
    """One line of shadow(5). Dates are in days since the epoch; None = unset."""

    name: str
    hash: str
    last_change: int | None
    min_age: int | None
    max_age: int | None
    warn_period: int | None
    inactivity: int | None
    expires: int | None

    def account_valid(self, day: int) -> bool:
        """False once the account's expiry day has been reached."""
        return self.expires is None or day < self.expires

    def password_valid(self, day: int) -> bool:
        """False once max age plus the inactivity period have passed.

        As in maddy, the password only expires when all three of last
        change, maximum age and inactivity period are set.
        """
        if self.last_change is None or self.max_age is None or self.inactivity is None:
            return True
        return day < self.last_change + self.max_age + self.inactivity


def parse_entry(line: str) -> ShadowEntry:
    """Parse one line; raise ShadowError unless it has exactly 9 fields."""
    fields = line.split(":")
    if len(fields) != 9:
        raise ShadowError("malformed entry")
    numbers: list[int | None] = []
    for index, text in enumerate(fields[2:8], start=3):
        if text == "":
            numbers.append(None)
        elif _NUMBER.fullmatch(text):
            numbers.append(int(text))
        else:
            raise ShadowError(f"malformed entry: field {index} is not a number")
    return ShadowEntry(fields[0], fields[1], *numbers)


def find_entry(path: str, name: str) -> ShadowEntry | None:
    """The entry for `name`, or None. Blocking: call it from a thread.

    Every line is checked, as maddy does: a damaged file is reported as
    such rather than half used. Blank lines are skipped.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        raise ShadowError(f"cannot read {path}: {exc.strerror or exc}") from None
    found: ShadowEntry | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        try:
            entry = parse_entry(line)
        except ShadowError as exc:
            raise ShadowError(f"{path}:{number}: {exc}") from None
        if found is None and entry.name == name:
            found = entry
    return found


# -- crypt(3) through libxcrypt -----------------------------------------------

# sizeof(struct crypt_data) in libxcrypt; crypt_rn checks it (ERANGE if short).
_CRYPT_DATA_SIZE = 32768
_GENSALT_OUTPUT_SIZE = 192


class _LibCrypt:
    """The reentrant libxcrypt entry points, loaded once."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
        lib = ctypes.CDLL(name, use_errno=True)
        self._crypt_rn = lib.crypt_rn
        self._crypt_rn.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        self._crypt_rn.restype = ctypes.c_char_p
        self._gensalt_rn = lib.crypt_gensalt_rn
        self._gensalt_rn.argtypes = [
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self._gensalt_rn.restype = ctypes.c_char_p

    def crypt(self, phrase: bytes, setting: bytes) -> bytes | None:
        # A fresh zeroed work area per call: crypt_rn is then thread-safe.
        data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
        result: bytes | None = self._crypt_rn(phrase, setting, data, len(data))
        return result

    def gensalt(self, prefix: bytes) -> bytes | None:
        # No random bytes given: libxcrypt takes them from the kernel.
        out = ctypes.create_string_buffer(_GENSALT_OUTPUT_SIZE)
        result: bytes | None = self._gensalt_rn(prefix, 0, None, 0, out, len(out))
        return result


@functools.cache
def libcrypt() -> _LibCrypt:
    """The loaded library; raises OSError or AttributeError if unusable."""
    return _LibCrypt()


def crypt(password: str, setting: str) -> str | None:
    """crypt(3): hash `password` with the scheme and salt in `setting`.

    None when libxcrypt refuses the setting (unknown or disabled scheme,
    malformed hash). Blocking and CPU-bound: call it from a thread.
    """
    phrase = password.encode("utf-8", "surrogateescape")
    if b"\0" in phrase:
        return None
    result = libcrypt().crypt(phrase, setting.encode("utf-8", "surrogateescape"))
    # libxcrypt's failure token starts with '*', which no real hash does.
    if result is None or result.startswith(b"*"):
        return None
    return result.decode("utf-8", "surrogateescape")


def hash_password(password: str, prefix: str = "$y$") -> str:
    """A new crypt(3) hash with a random salt (`$y$`, `$6$`, `$5$`, ...)."""
    setting = libcrypt().gensalt(prefix.encode())
    if setting is None:
        raise ValueError(f"libxcrypt cannot make {prefix} hashes")
    hashed = crypt(password, setting.decode())
    if hashed is None:
        raise ValueError(f"libxcrypt cannot make {prefix} hashes")
    return hashed


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches the crypt(3) hash `hashed`."""
    result = crypt(password, hashed)
    return result is not None and _same(result, hashed)


def _same(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    )


# -- the decision -----------------------------------------------------------------

Verdict = Literal["ok", "invalid", "temporary"]


def check(path: str, username: str, password: str, day: int) -> tuple[Verdict, str]:
    """The whole decision for one attempt, with the reason for the log.

    Blocking (file and hash): runs in a worker thread.
    """
    try:
        entry = find_entry(path, username)
    except ShadowError as exc:
        return "temporary", str(exc)
    if entry is None:
        return "invalid", "no such user"
    if not entry.account_valid(day):
        return "invalid", "account is expired"
    if not entry.password_valid(day):
        return "invalid", "password is expired"
    if entry.hash == "":
        return "invalid", "null password"
    if entry.hash.startswith("!"):
        return "invalid", "locked password"
    if "\0" in password:
        return "invalid", "NUL in the password"
    result = crypt(password, entry.hash)
    if result is None:
        return "invalid", "password hash not usable by crypt(3)"
    if not _same(result, entry.hash):
        return "invalid", "wrong password"
    return "ok", ""


@register("auth.shadow")
class ShadowAuth(Module):
    """`auth.shadow { debug no; use_helper no }`; also a table of valid accounts."""

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        use_helper = cfg.boolean("use_helper", False)
        cfg.finish()
        if use_helper:
            raise cfg.node.error(
                f"{self.module_name}: use_helper is not supported: kittiwake reads the "
                "shadow file itself and ships no maddy-shadow-helper; run kittiwake with "
                "permission to read it, or use auth.external { helper PATH } to run a helper"
            )
        self.path = SHADOW_FILE
        try:
            libcrypt()
        except (OSError, AttributeError) as exc:
            raise cfg.node.error(
                f"{self.module_name}: libxcrypt (crypt_rn) is not available: {exc}"
            ) from None
        try:
            with open(self.path, "rb"):
                pass
        except PermissionError:
            raise cfg.node.error(
                f"{self.module_name}: cannot read {self.path}: permission denied; run "
                "kittiwake as a user that may read it, or use auth.external with a helper"
            ) from None
        except OSError as exc:
            raise cfg.node.error(
                f"{self.module_name}: cannot read {self.path}: {exc.strerror or exc}"
            ) from None

    async def auth_plain(self, username: str, password: str) -> None:
        verdict, reason = await asyncio.to_thread(check, self.path, username, password, today())
        if verdict == "ok":
            self.log.debug("authenticated", username=username)
            return
        if verdict == "temporary":
            self.log.error("cannot check the password", reason=reason, username=username)
            raise TemporaryAuthFailure("shadow file unusable")
        # Routine failures stay at debug; policy refusals (expired, locked,
        # unusable hash) are what an operator looks for.
        quiet = reason in ("wrong password", "no such user")
        log = self.log.debug if quiet else self.log.info
        log("authentication failed", reason=reason, username=username)
        raise InvalidCredentials(reason)

    async def lookup(self, key: str) -> str | None:
        """Found ("") when the account exists and has not expired.

        A file that cannot be read raises ShadowError: the caller decides.
        """
        entry = await asyncio.to_thread(find_entry, self.path, key)
        if entry is None or not entry.account_valid(today()):
            return None
        return ""
