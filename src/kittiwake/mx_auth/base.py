"""The contract between `target.remote` and its `mx_auth` policies (docs/mx-auth.md).

Strategy: delivery to a domain has two security questions, asked of every
policy in turn, each policy able to raise the answer or refuse:

1. *Is this MX host really the domain's?* (`MXLevel`) Without policies an
   MX from plain DNS is `NONE`; a DNSSEC-validated MX RRset makes it
   `DNSSEC`; an MX listed by the domain's MTA-STS policy makes it `MTASTS`.
2. *Is the connection to it private and to the right peer?* (`TLSLevel`)
   Plain text is `NONE`; TLS whose certificate was not checked (or failed
   the check) is `ENCRYPTED`; a certificate valid for the MX name (WebPKI)
   or matching the domain's DANE TLSA records is `AUTHENTICATED`.

A `Policy` is one configured `mx_auth` entry (`mtasts`, `dane`, `dnssec`,
`local_policy`). For each message and destination domain `target.remote`
asks `Policy.for_domain` once, which may look things up (the MTA-STS policy
fetch, TLSA records are per MX and asked in `check_conn`), and then, per MX
tried, `DomainPolicy.check_mx` before dialling and `DomainPolicy.check_conn`
after the TLS attempt. Each returns the level it vouches for (the target
keeps the highest any policy gave) or raises `SMTPError` to refuse this MX
(the target then tries the next one and reports the last refusal if none
is usable). `local_policy` runs last and checks the levels the others
reached against its minimums.

`DomainPolicy.report` says what the policy was, in the terms TLS reports
use (RFC 8460 §4.3), so every attempt can be recorded per policy domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, runtime_checkable

from kittiwake.module import capability

__all__ = [
    "RESULT_TYPE",
    "DomainPolicy",
    "MXCandidate",
    "MXLevel",
    "Policy",
    "PolicyReport",
    "TLSLevel",
    "TLSState",
]


#: The `SMTPError.misc` key under which a policy's refusal names its RFC 8460
#: §4.3 result type ("sts-webpki-invalid", "tlsa-invalid", ...), so the
#: target can record the TLS attempt without parsing reply texts.
RESULT_TYPE = "tlsrpt_result"


class TLSLevel(IntEnum):
    """How well the connection to an MX is protected."""

    NONE = 0
    ENCRYPTED = 1
    AUTHENTICATED = 2


class MXLevel(IntEnum):
    """How sure we are that an MX host belongs to the destination domain."""

    NONE = 0
    MTASTS = 1
    DNSSEC = 2


@dataclass(frozen=True, slots=True)
class MXCandidate:
    """One MX host of a destination domain, as DNS gave it."""

    domain: str  # the destination domain, lowercase A-labels
    host: str  # the MX host name, lowercase, no final dot
    preference: int
    #: The MX RRset came with the AD bit from a trusted validating resolver
    #: (implicit MX: the address records of the domain did).
    dnssec: bool = False
    implicit: bool = False  # no MX records: the domain itself (RFC 5321 §5.1)


@dataclass(frozen=True, slots=True)
class TLSState:
    """What the connection to one MX ended with, for `check_conn`."""

    address: str  # the IP address dialled
    tls: bool  # STARTTLS completed
    #: The certificate chain verified against the system's (or tls_client's)
    #: roots and the MX host name (RFC 6125); False also when not tried.
    verified: bool = False
    #: Why verification failed or TLS was not used, for logs and TLS reports.
    error: str = ""
    #: The peer's certificate (DER) and, where the ssl module can give it,
    #: the chain it sent, leaf first.
    peer_cert: bytes | None = None
    peer_chain: tuple[bytes, ...] = ()
    version: str = ""  # TLSv1.3 ...
    cipher: str = ""


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """A policy as RFC 8460 §4.3 describes it in a report."""

    policy_type: str  # "sts", "tlsa" or "no-policy-found"
    policy_domain: str
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()  # MTA-STS mx patterns
    #: A failure found before any connection, as an RFC 8460 §4.3 result
    #: type ("sts-policy-fetch-error", "sts-policy-invalid", "tlsa-invalid",
    #: "dnssec-invalid"), or what an MTA-STS policy in `testing` mode let
    #: through for the MX being tried ("validation-failure"); empty when the
    #: policy was found and usable.
    failure: str = ""


@runtime_checkable
class DomainPolicy(Protocol):
    """One policy's view of one destination domain, for one delivery."""

    @property
    def report(self) -> PolicyReport | None: ...

    async def check_mx(self, mx: MXCandidate, level: MXLevel) -> MXLevel:
        """The MX level this policy vouches for; raise `SMTPError` to skip the MX."""
        ...

    async def check_conn(
        self, mx: MXCandidate, mx_level: MXLevel, tls: TLSState, level: TLSLevel
    ) -> TLSLevel:
        """The TLS level this policy vouches for; raise `SMTPError` to refuse the connection."""
        ...


@capability("mx_auth policy")
@runtime_checkable
class Policy(Protocol):
    """A configured `mx_auth` entry."""

    async def for_domain(self, domain: str) -> DomainPolicy:
        """Prepare for a destination domain; raise `SMTPError` when nothing can go there now."""
        ...
