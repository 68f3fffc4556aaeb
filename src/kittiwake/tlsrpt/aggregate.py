"""One UTC day of TLS attempts, counted the way an RFC 8460 report lists them.

Strategy: a report (RFC 8460 §4) is per policy domain; inside it each
policy (type, string, domain, MX patterns; §4.3) has a summary of
successful and failed sessions and a list of failure details, each row a
distinct (result-type, sending-mta-ip, receiving-mx-hostname, receiving-ip,
receiving-mx-helo, failure-reason-code) with the number of sessions that
failed that way. `DayCounts` keeps exactly that, keyed by tuples so that
adding an attempt is a few dictionary updates, and converts to and from
the JSON the day file holds, which is the report's `policies` array per
domain (plus our own truncation counters). Merging two `DayCounts` (what
the server counted since it started, and what an earlier run of the same
day wrote) adds the counters.

Memory is bounded, because the peers decide what we count (every host name
and error text comes from the network): at most `MAX_DOMAINS` policy
domains per day, `MAX_POLICIES` distinct policies per domain (a policy
string changes when a domain edits its MTA-STS policy), `MAX_DETAILS`
failure-detail rows per domain (across its policies), and every string is
cut to a fixed length. A failure past the row cap is still counted in its
policy's summary; only its detail row is missing, and the domain's
`failure-details-truncated` says how many were not itemised. An attempt
past the domain or policy cap is not counted at all, and `attempts-dropped`
(per day or per domain) says how many. docs/tls-report.md has the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kittiwake.mx_auth.base import PolicyReport
from kittiwake.tlsrpt import RESULT_TYPES, TLSAttempt

__all__ = [
    "MAX_DETAILS",
    "MAX_DOMAINS",
    "MAX_POLICIES",
    "DayCounts",
    "DomainCounts",
    "PolicyCounts",
]

#: Policy domains counted per UTC day.
MAX_DOMAINS = 20_000
#: Distinct policies (type, string, MX patterns) per domain per day.
MAX_POLICIES = 16
#: Failure-detail rows per domain per day, across its policies.
MAX_DETAILS = 100
#: Longest host name, address or HELO text kept (RFC 5321 §4.5.3.1.2: 255 for a domain).
MAX_NAME = 255
#: Longest failure-reason-code kept.
MAX_REASON = 500
#: Lines of a policy string kept, and the longest line (an MTA-STS policy is small).
MAX_POLICY_LINES = 64
MAX_POLICY_LINE = 500

#: The policy type of attempts no policy applied to (RFC 8460 §4.3).
NO_POLICY = "no-policy-found"
#: What an unknown result type is recorded as: the generic negotiation failure.
GENERIC_FAILURE = "validation-failure"

#: (policy-type, policy-domain, policy-string, mx-host)
PolicyKey = tuple[str, str, tuple[str, ...], tuple[str, ...]]
#: (result-type, sending-mta-ip, receiving-mx-hostname, receiving-ip,
#: receiving-mx-helo, failure-reason-code)
DetailKey = tuple[str, str, str, str, str, str]

#: The JSON names of a failure-detail row's fields, in `DetailKey` order (RFC 8460 §4.3).
DETAIL_FIELDS = (
    "result-type",
    "sending-mta-ip",
    "receiving-mx-hostname",
    "receiving-ip",
    "receiving-mx-helo",
    "failure-reason-code",
)


def _cut(text: str, limit: int = MAX_NAME) -> str:
    return text[:limit]


def _domain(name: str) -> str:
    """Policy domains compare without case and without a final dot."""
    return _cut(name.strip().rstrip(".").lower())


def policy_key(report: PolicyReport | None, domain: str) -> PolicyKey:
    """The key of `report`, or of "no policy" for destination `domain`."""
    if report is None:
        return (NO_POLICY, _domain(domain), (), ())
    lines = tuple(_cut(s, MAX_POLICY_LINE) for s in report.policy_string[:MAX_POLICY_LINES])
    hosts = tuple(_cut(h) for h in report.mx_host[:MAX_POLICY_LINES])
    return (_cut(report.policy_type, 64), _domain(report.policy_domain), lines, hosts)


def detail_key(attempt: TLSAttempt) -> DetailKey:
    """The failure-detail row `attempt` belongs to."""
    result = attempt.result
    reason = attempt.detail
    if result not in RESULT_TYPES or result == "success":
        # A result type this version does not know is still a failure; keep
        # what it was called where a reader will see it.
        reason = reason or result
        result = GENERIC_FAILURE
    return (
        result,
        _cut(attempt.sending_ip),
        _cut(attempt.receiving_mx.rstrip(".").lower()),
        _cut(attempt.receiving_ip),
        _cut(attempt.helo),
        _cut(reason, MAX_REASON),
    )


@dataclass(slots=True)
class PolicyCounts:
    """One policy's summary and failure details (RFC 8460 §4.3)."""

    success: int = 0
    failure: int = 0
    details: dict[DetailKey, int] = field(default_factory=dict)

    def to_json(self, key: PolicyKey) -> dict[str, Any]:
        """The `policies[]` element of a report for this policy."""
        kind, domain, strings, hosts = key
        policy: dict[str, Any] = {"policy-type": kind}
        if strings:
            policy["policy-string"] = list(strings)
        policy["policy-domain"] = domain
        if hosts:
            policy["mx-host"] = list(hosts)
        rows = []
        # Most frequent failures first, ties in a stable order.
        for dkey, count in sorted(self.details.items(), key=lambda kv: (-kv[1], kv[0])):
            row: dict[str, Any] = {"result-type": dkey[0]}
            for name, value in zip(DETAIL_FIELDS[1:], dkey[1:], strict=True):
                if value:  # optional fields are left out rather than empty
                    row[name] = value
            row["failed-session-count"] = count
            rows.append(row)
        return {
            "policy": policy,
            "summary": {
                "total-successful-session-count": self.success,
                "total-failure-session-count": self.failure,
            },
            "failure-details": rows,
        }


@dataclass(slots=True)
class DomainCounts:
    """Everything counted for one policy domain on one day."""

    policies: dict[PolicyKey, PolicyCounts] = field(default_factory=dict)
    rows: int = 0  # failure-detail rows across the policies, for MAX_DETAILS
    truncated: int = 0  # failures counted in a summary but not itemised
    dropped: int = 0  # attempts not counted: past MAX_POLICIES

    def counts_for(self, key: PolicyKey) -> PolicyCounts | None:
        """The policy's counters, new if there is room; None past the cap."""
        counts = self.policies.get(key)
        if counts is None:
            if len(self.policies) >= MAX_POLICIES:
                return None
            counts = self.policies[key] = PolicyCounts()
        return counts

    def add_failures(self, counts: PolicyCounts, row: DetailKey, n: int) -> None:
        """Count `n` failed sessions of `row` in `counts`, itemised if there is room."""
        counts.failure += n
        if row in counts.details:
            counts.details[row] += n
        elif self.rows < MAX_DETAILS:
            counts.details[row] = n
            self.rows += 1
        else:
            self.truncated += n

    def to_json(self) -> dict[str, Any]:
        return {
            "policies": [c.to_json(k) for k, c in sorted(self.policies.items())],
            "failure-details-truncated": self.truncated,
            "attempts-dropped": self.dropped,
        }


@dataclass(slots=True)
class DayCounts:
    """The counts of one UTC day, per policy domain."""

    domains: dict[str, DomainCounts] = field(default_factory=dict)
    dropped: int = 0  # attempts not counted: past MAX_DOMAINS

    def _domain(self, name: str) -> DomainCounts | None:
        counts = self.domains.get(name)
        if counts is None:
            if len(self.domains) >= MAX_DOMAINS:
                return None
            counts = self.domains[name] = DomainCounts()
        return counts

    def add(self, attempt: TLSAttempt) -> None:
        """Count one attempt under every policy it reports (or under "no policy")."""
        reports: tuple[PolicyReport | None, ...] = attempt.policies or (None,)
        # Every key first: an attempt that cannot be read changes nothing.
        keys = [policy_key(report, attempt.domain) for report in reports]
        row = None if attempt.result == "success" else detail_key(attempt)
        for key in keys:
            domain = self._domain(key[1])
            if domain is None:
                self.dropped += 1
                continue
            counts = domain.counts_for(key)
            if counts is None:
                domain.dropped += 1
            elif row is None:
                counts.success += 1
            else:
                domain.add_failures(counts, row, 1)

    def merge(self, other: DayCounts) -> None:
        """Add every counter of `other` to this day (same caps apply)."""
        self.dropped += other.dropped
        for name, theirs in other.domains.items():
            domain = self._domain(name)
            if domain is None:
                self.dropped += sum(c.success + c.failure for c in theirs.policies.values())
                continue
            domain.truncated += theirs.truncated
            domain.dropped += theirs.dropped
            for key, counts in theirs.policies.items():
                mine = domain.counts_for(key)
                if mine is None:
                    domain.dropped += counts.success + counts.failure
                    continue
                mine.success += counts.success
                itemised = sum(counts.details.values())
                mine.failure += counts.failure - itemised
                for row, n in counts.details.items():
                    domain.add_failures(mine, row, n)

    def to_json(self, day: str) -> dict[str, Any]:
        """The day file's content (docs/tls-report.md, "Files")."""
        return {
            "format": FORMAT,
            "day": day,
            "attempts-dropped": self.dropped,
            "domains": {name: d.to_json() for name, d in sorted(self.domains.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> DayCounts:
        """Read a day file's content back; `ValueError` when it is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a kittiwake TLS report day file")
        day = cls(dropped=_count(data.get("attempts-dropped", 0)))
        domains = data.get("domains")
        if not isinstance(domains, dict):
            raise ValueError("domains: expected an object")
        for name, item in domains.items():
            if not isinstance(item, dict) or not isinstance(item.get("policies"), list):
                raise ValueError(f"domain {name!r}: expected an object with policies")
            domain = day.domains[str(name)] = DomainCounts(
                truncated=_count(item.get("failure-details-truncated", 0)),
                dropped=_count(item.get("attempts-dropped", 0)),
            )
            for entry in item["policies"]:
                key, counts = _policy_from_json(entry)
                domain.policies[key] = counts
                domain.rows += len(counts.details)
        return day


#: Written into every day file, so a later version can tell old files apart.
FORMAT = "kittiwake-tlsrpt-1"


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _policy_from_json(entry: Any) -> tuple[PolicyKey, PolicyCounts]:
    try:
        policy, summary = entry["policy"], entry["summary"]
        key: PolicyKey = (
            str(policy["policy-type"]),
            str(policy["policy-domain"]),
            _strings(policy.get("policy-string", [])),
            _strings(policy.get("mx-host", [])),
        )
        counts = PolicyCounts(
            success=_count(summary["total-successful-session-count"]),
            failure=_count(summary["total-failure-session-count"]),
        )
        for row in entry["failure-details"]:
            v = [str(row.get(name, "")) for name in DETAIL_FIELDS]
            dkey: DetailKey = (v[0], v[1], v[2], v[3], v[4], v[5])
            counts.details[dkey] = _count(row["failed-session-count"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed policy entry: {exc}") from None
    return key, counts
