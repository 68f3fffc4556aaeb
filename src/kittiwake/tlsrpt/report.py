"""An RFC 8460 §4 report of one policy domain for one UTC day, from the day file's counts.

The day file already holds each domain's `policies` array in the report's
shape (kittiwake/tlsrpt/aggregate.py); a report adds who made it
(organization-name, contact-info), the period it covers (date-range: the
whole UTC day, §4.4) and an identifier (report-id). The identifier is made
from the day and the domain, so printing the same report twice gives the
same id and a receiver can tell a resend from a new report.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kittiwake.tlsrpt.aggregate import DomainCounts

__all__ = ["build_report", "date_range", "report_id"]


def date_range(day: dt.date) -> dict[str, str]:
    """The report's period: the UTC day, first to last second (RFC 8460 §4.4's example)."""
    iso = day.isoformat()
    return {"start-datetime": f"{iso}T00:00:00Z", "end-datetime": f"{iso}T23:59:59Z"}


def report_id(day: dt.date, domain: str, organization: str) -> str:
    """A stable unique id: the same report printed again has the same one."""
    return f"{day.isoformat()}T00:00:00Z_{domain}@{organization}"


def build_report(
    day: dt.date, domain: str, counts: DomainCounts, *, organization: str, contact: str
) -> dict[str, Any]:
    """The JSON object of the report (RFC 8460 §4.3 field names and order)."""
    return {
        "organization-name": organization,
        "date-range": date_range(day),
        "contact-info": contact,
        "report-id": report_id(day, domain, organization),
        "policies": counts.to_json()["policies"],
    }
