"""TLS reporting data (RFC 8460): what every TLS attempt of `target.remote` ended with.

`target.remote` hands one `TLSAttempt` per connection attempt to an MX
(success or failure, with the policies that applied) to a `Recorder`; the
store (docs/tls-report.md) keeps the counts per policy domain per day, in
the shape an RFC 8460 report needs, and `kittiwake tls-report` prints the
JSON report for a day.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kittiwake.mx_auth.base import PolicyReport

__all__ = ["RESULT_TYPES", "Recorder", "TLSAttempt"]

#: RFC 8460 §4.3 result types kittiwake can record; "success" is not one of
#: them there (successes are counted, not listed) but names the outcome here.
RESULT_TYPES = frozenset(
    {
        "success",
        # negotiation failures
        "starttls-not-supported",
        "certificate-host-mismatch",
        "certificate-expired",
        "certificate-not-trusted",
        "validation-failure",
        # policy failures
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    }
)


@dataclass(frozen=True, slots=True)
class TLSAttempt:
    """One connection attempt to one MX of a destination domain."""

    domain: str  # the destination (policy) domain
    result: str  # one of RESULT_TYPES
    policies: tuple[PolicyReport, ...]  # empty: no policy found
    sending_ip: str = ""
    receiving_mx: str = ""  # the MX host name
    receiving_ip: str = ""
    helo: str = ""  # what the MX said in its EHLO reply (receiving-mx-helo)
    detail: str = ""  # additional-information / failure-reason-code


class Recorder(Protocol):
    """Where `target.remote` puts each attempt (never raises, never blocks)."""

    def record(self, attempt: TLSAttempt) -> None: ...
