"""SASL PLAIN and LOGIN exchanges, without I/O (RFC 4616, draft-murchison-sasl-login).

An exchange turns the AUTH command and the client's continuation lines into
one of three steps: a challenge to send (`334 ...`), the credentials to
verify, or a reply that ends the exchange (bad base64, a malformed PLAIN
message, a cancelled exchange). Checking the credentials is the server's
job; this module never sees a user database.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from kittiwake.protocol.replies import Reply

USERNAME_PROMPT = "VXNlcm5hbWU6"  # base64("Username:")
PASSWORD_PROMPT = "UGFzc3dvcmQ6"  # base64("Password:")

BAD_BASE64 = Reply(501, (5, 5, 2), "Invalid base64 data")
BAD_PLAIN = Reply(501, (5, 5, 2), "Invalid PLAIN response")
CANCELLED = Reply(501, (5, 0, 0), "Negotiation cancelled")
INVALID = Reply(535, (5, 7, 8), "Invalid credentials")


@dataclass(frozen=True, slots=True)
class Challenge:
    text: str


@dataclass(frozen=True, slots=True)
class Credentials:
    """What to verify. `authzid_mismatch`: PLAIN asked to act as someone else."""

    username: str
    password: str
    authzid_mismatch: bool = False


@dataclass(frozen=True, slots=True)
class Done:
    """The exchange ended without credentials to check."""

    reply: Reply


Step = Challenge | Credentials | Done


def _decode(text: str) -> bytes | None:
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Exchange:
    """One AUTH exchange for PLAIN or LOGIN."""

    def __init__(self, mechanism: str, initial: str | None) -> None:
        self.mechanism = mechanism
        self._initial = initial
        self._username: str | None = None

    def start(self) -> Step:
        if self.mechanism == "PLAIN":
            if self._initial is None:
                return Challenge("")
            return self._plain(self._initial)
        if self._initial is None:
            return Challenge(USERNAME_PROMPT)
        return self._login(self._initial)

    def respond(self, line: str) -> Step:
        if line == "*":
            return Done(CANCELLED)
        if self.mechanism == "PLAIN":
            return self._plain(line)
        return self._login(line)

    def _plain(self, text: str) -> Step:
        raw = _decode(text)
        if raw is None:
            return Done(BAD_BASE64)
        parts = raw.split(b"\0")
        if len(parts) != 3:
            return Done(BAD_PLAIN)
        authzid, authcid, password = parts
        # RFC 4616 §2: authorizing as another identity is not supported; an
        # empty authzid means "the same as authcid" (exact bytes).
        mismatch = bool(authzid) and authzid != authcid
        return Credentials(_text(authcid), _text(password), mismatch)

    def _login(self, text: str) -> Step:
        raw = _decode(text)
        if raw is None:
            return Done(BAD_BASE64)
        if self._username is None:
            self._username = _text(raw)
            return Challenge(PASSWORD_PROMPT)
        return Credentials(self._username, _text(raw))
