"""What the pipeline and targets know about a message besides its content.

`MsgMeta` travels with one message from the endpoint through the pipeline to
every target; `ConnInfo` describes where it came from (absent for messages
kittiwake generates itself, such as bounces).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kittiwake.dns import ReverseName


@dataclass(slots=True)
class ConnInfo:
    """Facts about the client connection, fixed when the message starts."""

    remote_ip: str | None = None  # None for Unix-socket clients
    remote_port: int = 0
    helo: str = ""
    tls: bool = False
    proto: str = "ESMTP"  # ESMTP, ESMTPS, LMTP; "UTF8" prefix added per message
    #: PTR name without trailing dot, filled in at the end of the data
    #: (Received); checks that need it earlier await `reverse`.
    rdns: str | None = None
    auth_user: str | None = None
    #: The password the client authenticated with, for `target.smtp`'s
    #: `auth forward` (docs/target-smtp.md). Memory only: never in a repr,
    #: a log line, or anything written to disk.
    auth_password: str | None = field(default=None, repr=False)
    endpoint: str = ""  # module name of the endpoint (smtp, submission, lmtp)
    #: Waits for the session's own reverse lookup of the client (started at
    #: the greeting) and gives what it found, the error included; None where
    #: there is no session to ask. Checks use it instead of a second lookup.
    reverse: Callable[[], Awaitable[ReverseName]] | None = None
    #: What modules remember about the client session, keyed by the module
    #: object (`check.dnsbl` keeps its verdict on the client's address
    #: here, `storage.maildir` how many mailboxes the session made it
    #: create); the same dict for every message of the session, gone with it.
    module_data: dict[object, object] = field(default_factory=dict)


@dataclass(slots=True)
class SMTPOptions:
    """ESMTP parameters of MAIL FROM that later hops care about."""

    size: int | None = None
    body: str = ""
    smtputf8: bool = False
    requiretls: bool = False
    auth: str | None = None
    #: RFC 3461 RET: "FULL" or "HDRS" (what a DSN returns), None if not given.
    dsn_ret: str | None = None
    #: RFC 3461 ENVID, xtext-decoded; echoed as Original-Envelope-Id in DSNs.
    dsn_envid: str | None = None


@dataclass(frozen=True, slots=True)
class RcptDSN:
    """RFC 3461 parameters of one RCPT TO.

    `notify` is empty when the client gave no NOTIFY (the default then is
    FAILURE and DELAY, RFC 3461 §4.1), `("NEVER",)`, or a subset of
    SUCCESS, FAILURE, DELAY. `orcpt` is `(addr-type, address)` with the
    address xtext-decoded, None when not given.
    """

    notify: tuple[str, ...] = ()
    orcpt: tuple[str, str] | None = None

    def wants(self, kind: str) -> bool:
        """Whether a DSN of `kind` (SUCCESS, FAILURE, DELAY) is asked for."""
        if not self.notify:
            return kind in ("FAILURE", "DELAY")
        return kind in self.notify


@dataclass(slots=True)
class MsgMeta:
    id: str
    conn: ConnInfo | None = None
    smtp: SMTPOptions = field(default_factory=SMTPOptions)
    #: The envelope sender exactly as the client gave it.
    original_from: str = ""
    #: final (rewritten) recipient -> the address the client gave.
    original_rcpts: dict[str, str] = field(default_factory=dict)
    #: Set at body time by checks (spam, DMARC quarantine).
    quarantine: bool = False
    #: Submission: the Received field does not name the client.
    dont_trace_sender: bool = False
    #: `TLS-Required: No` (RFC 8689) was present.
    tls_not_required: bool = False
    #: DMARC will evaluate this message (its pipeline has it on, with SPF and
    #: DKIM checks): `check.spf` then leaves its action to DMARC.
    dmarc_runs: bool = False
    #: RFC 3461 parameters per recipient, keyed by the recipient in clean
    #: form as the client gave it (the values of `original_rcpts`); a
    #: recipient without NOTIFY/ORCPT has no entry.
    rcpt_dsn: dict[str, RcptDSN] = field(default_factory=dict)

    def dsn_for(self, rcpt: str) -> RcptDSN:
        """The DSN parameters of a final (rewritten) recipient."""
        return self.rcpt_dsn.get(self.original_rcpts.get(rcpt, rcpt), _NO_DSN)


_NO_DSN = RcptDSN()


def new_msg_id() -> str:
    """8 lowercase hex digits: short enough to read out on a phone call.

    An ID names a message in logs and replies; it needs to be unlikely to
    repeat, not unpredictable, so it costs no system call.
    """
    return f"{random.getrandbits(32):08x}"
