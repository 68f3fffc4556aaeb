"""SASL as a client: PLAIN, LOGIN and EXTERNAL (RFC 4616, RFC 4422 App. A, RFC 4954).

Pure steps, no I/O: `Mechanism.initial()` is what goes on the AUTH line,
`respond(challenge)` the answer to each `334`. Credentials live in memory
only: they are never part of a repr, a log line or an error.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

__all__ = ["MAX_CHALLENGES", "Mechanism"]

#: More `334` challenges than any of these mechanisms needs means a
#: confused or hostile server: the exchange is cancelled.
MAX_CHALLENGES = 3


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


@dataclass(frozen=True)
class Mechanism:
    """One mechanism with its credentials."""

    name: str  # PLAIN, LOGIN or EXTERNAL
    username: str = ""
    password: str = field(default="", repr=False)

    def initial(self) -> str | None:
        """The initial response on the AUTH line (RFC 4954 §4), if the mechanism has one."""
        if self.name == "PLAIN":
            # RFC 4616: empty authzid (act as the authentication identity).
            return _b64(f"\0{self.username}\0{self.password}")
        if self.name == "EXTERNAL":
            return "="  # an empty response: use the identity of the TLS certificate
        return None

    def respond(self, round_: int) -> str:
        """The answer to the `round_`-th challenge (from 0); `*` cancels.

        LOGIN servers prompt for the user name, then the password; their
        prompts are not read, as clients in the field do not read them
        either. PLAIN and EXTERNAL said everything on the AUTH line, so a
        challenge to them is answered by cancelling.
        """
        if self.name == "LOGIN" and round_ == 0:
            return _b64(self.username)
        if self.name == "LOGIN" and round_ == 1:
            return _b64(self.password)
        return "*"
