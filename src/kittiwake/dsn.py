"""PLACEHOLDER on the `queue` branch until the real RFC 3464 builder lands on main.

Same API as the module being written on the `dsn` branch; replaced by it
when main is merged. Not for review.
"""

from __future__ import annotations

import datetime as _dt
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import format_datetime

from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header


@dataclass
class RecipientReport:
    recipient: str
    action: str
    status: tuple[int, int, int]
    diagnostic: str | None = None
    original: tuple[str, str] | None = None
    remote_mta: str | None = None
    last_attempt: _dt.datetime | None = None
    will_retry_until: _dt.datetime | None = None


@dataclass
class Report:
    reporting_mta: str
    msg_id: str
    sender: str
    arrival: _dt.datetime
    recipients: list[RecipientReport] = field(default_factory=list)
    envid: str | None = None
    received_from_mta: str | None = None
    smtputf8: bool = False
    return_full: bool = False


@dataclass
class DSNMessage:
    header: Header
    _parts: list[bytes]
    _body: Buffer | None

    def chunks(self) -> Iterator[bytes]:
        yield from self._parts[:-1]
        if self._body is not None:
            with self._body.open() as f:
                while chunk := f.read(65536):
                    yield chunk
        yield self._parts[-1]


def build(
    report: Report,
    original_header: Header,
    original_body: Buffer | None,
    *,
    autogen_domain: str,
    now: _dt.datetime | None = None,
) -> DSNMessage:
    now = now or _dt.datetime.now(_dt.UTC)
    boundary = secrets.token_hex(12)
    header = Header()
    for name, value in reversed(
        [
            ("Date", format_datetime(now)),
            ("Message-Id", f"<{secrets.token_hex(8)}@{autogen_domain}>"),
            ("From", f"MAILER-DAEMON@{autogen_domain}"),
            ("To", report.sender),
            ("Subject", "Delivery Status Notification"),
            ("Auto-Submitted", "auto-replied"),
            ("MIME-Version", "1.0"),
            (
                "Content-Type",
                f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
            ),
        ]
    ):
        header.add(name, value, folded=False)
    text = "".join(f"{r.recipient}: {r.action} {r.diagnostic or ''}\r\n" for r in report.recipients)
    fields = [f"Reporting-MTA: dns; {report.reporting_mta}", ""]
    if report.envid:
        fields.insert(0, f"Original-Envelope-Id: {report.envid}")
    for r in report.recipients:
        if r.original:
            fields.append(f"Original-Recipient: {r.original[0]}; {r.original[1]}")
        fields += [
            f"Final-Recipient: rfc822; {r.recipient}",
            f"Action: {r.action}",
            "Status: " + ".".join(map(str, r.status)),
        ]
        if r.diagnostic:
            fields.append(f"Diagnostic-Code: smtp; {r.diagnostic}")
        fields.append("")
    kind = "message/rfc822" if report.return_full else "text/rfc822-headers"
    head = (
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        + "\r\n".join(fields)
        + f"\r\n--{boundary}\r\nContent-Type: {kind}\r\n\r\n"
    ).encode()
    head += original_header.to_bytes()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return DSNMessage(header, [head, tail], original_body if report.return_full else None)
