"""kittiwake.dsn: delivery status notifications (RFC 3464, RFC 3461, RFC 6533).

Every DSN built here is checked the way a receiver would see it: parsed
with Python's `email` package (policy default) for its structure, its
report part read group by group, and its bytes checked for CRLF line ends,
line lengths and, without SMTPUTF8, 7-bit content. Bodies are real
buffers (`Buffer.ram`, `Buffer.fs`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email
import email.policy
import hashlib
import re
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kittiwake import dsn
from kittiwake.dsn import ACTIONS, DSNMessage, RecipientReport, Report, build
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Field, Header

T0 = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
HEADER = b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: Hello\r\n"
MiB = 1024 * 1024


# --- Helpers ---------------------------------------------------------------------


def recipient(action: str = "failed", **kw: object) -> RecipientReport:
    defaults: dict[str, object] = {
        "recipient": "bob@example.com",
        "status": {"failed": (5, 1, 1), "delayed": (4, 4, 1)}.get(action, (2, 0, 0)),
        "diagnostic": "550 5.1.1 No such user" if action == "failed" else None,
        "last_attempt": T0 + timedelta(minutes=5),
    }
    defaults.update(kw)
    return RecipientReport(action=action, **defaults)  # type: ignore[arg-type]


def report(recipients: Sequence[RecipientReport] | None = None, **kw: object) -> Report:
    defaults: dict[str, object] = {
        "reporting_mta": "mx.example.org",
        "msg_id": "1a2b3c4d",
        "sender": "alice@example.org",
        "arrival": T0,
    }
    defaults.update(kw)
    rcpts = [recipient()] if recipients is None else list(recipients)
    return Report(recipients=rcpts, **defaults)  # type: ignore[arg-type]


async def ram(data: bytes) -> Buffer:
    buf = Buffer.ram()
    await buf.write(data)
    await buf.finish()
    return buf


def render(msg: DSNMessage) -> bytes:
    return msg.header.to_bytes() + b"".join(msg.chunks())


def make(
    rep: Report,
    header: bytes | Header = HEADER,
    body: Buffer | None = None,
    **kw: object,
) -> bytes:
    hdr = header if isinstance(header, Header) else Header.parse(header)
    data = render(build(rep, hdr, body, autogen_domain="mx.example.org", now=NOW, **kw))  # type: ignore[arg-type]
    check_wellformed(data, seven_bit=not rep.smtputf8)
    return data


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def boundary_of(data: bytes) -> bytes:
    m = re.search(rb'boundary="([^"]+)"', data)
    assert m is not None
    return m.group(1)


def raw_parts(data: bytes) -> list[tuple[bytes, bytes]]:
    """(MIME header, content) of each part, cut at the delimiters by hand."""
    _, body = data.split(b"\r\n\r\n", 1)
    pieces = body.split(b"\r\n--" + boundary_of(data))
    assert pieces[-1] == b"--\r\n", "the closing delimiter ends the message"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        head, _, content = piece[2:].partition(b"\r\n\r\n")
        parts.append((head, content))
    return parts


def part_field(head: bytes, name: str) -> str:
    m = re.search(rb"(?im)^" + name.encode() + rb": *(.*)$", head)
    assert m is not None, name
    return m.group(1).decode().strip()


def decoded(head: bytes, content: bytes) -> bytes:
    cte = part_field(head, "Content-Transfer-Encoding").lower()
    if cte == "base64":
        return base64.b64decode(content)
    if cte == "quoted-printable":
        return binascii.a2b_qp(content)
    return content


def groups(data: bytes) -> list[dict[str, str]]:
    """Part 2 read as RFC 3464 groups: field names lower-cased, values unfolded."""
    head, content = raw_parts(data)[1]
    text = decoded(head, content).decode("utf-8")
    result = []
    for block in re.split(r"\r\n\r\n", text.strip("\r\n")):
        fields: dict[str, str] = {}
        for line in re.sub(r"\r\n(?=[ \t])", "", block).split("\r\n"):
            name, colon, value = line.partition(":")
            assert colon, line
            assert name.lower() not in fields, f"repeated field {name}"
            fields[name.lower()] = value.strip()
        result.append(fields)
    return result


def text_part(data: bytes) -> str:
    head, content = raw_parts(data)[0]
    return decoded(head, content).decode("utf-8")


def check_wellformed(data: bytes, *, seven_bit: bool) -> None:
    """Byte rules and the MIME structure every DSN must have."""
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None, "CRLF line ends only"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    head, _, _ = data.partition(b"\r\n\r\n")
    if seven_bit:
        # The one exception: a To: address whose local part is not ASCII
        # (the DSN needs SMTPUTF8 to reach it anyway).
        unfolded = re.sub(rb"\r\n(?=[ \t])", b" ", head).split(b"\r\n")
        assert all(line.isascii() or line.startswith(b"To: ") for line in unfolded)
        assert data[len(head) :].isascii(), "the body of a DSN without SMTPUTF8 is 7-bit"
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg.defects == []
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) == 3
    assert parts[0].get_content_type() == "text/plain"
    assert parts[0].get_content_charset() == "utf-8"
    assert parts[1].get_content_type() in (
        "message/delivery-status",
        "message/global-delivery-status",
    )
    assert parts[2].get_content_type() in (
        "text/rfc822-headers",
        "message/global-headers",
        "message/rfc822",
        "message/global",
    )
    for part in parts[:2]:
        assert part.defects == []
    assert len(raw_parts(data)) == 3
    assert data.endswith(b"--" + boundary_of(data) + b"--\r\n")


# --- The header of the DSN ---------------------------------------------------------


async def test_a_failure_report_field_by_field() -> None:
    data = make(report(envid="env-1", received_from_mta="client.example"))
    msg = parse(data)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert msg["To"] == "alice@example.org"
    assert data.startswith(b"Date: Tue, 5 Mar 2024 11:00:00 +0000\r\n")
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert re.fullmatch(r"<[0-9a-f]{32}@mx\.example\.org>", msg["Message-Id"])
    per_message, per_rcpt = groups(data)
    assert per_message == {
        "original-envelope-id": "env-1",
        "reporting-mta": "dns; mx.example.org",
        "received-from-mta": "dns; client.example",
        "arrival-date": "Tue, 5 Mar 2024 10:00:00 +0000",
        "x-kittiwake-queue-id": "1a2b3c4d",
        "x-kittiwake-sender": "rfc822; alice@example.org",
    }
    assert per_rcpt == {
        "final-recipient": "rfc822; bob@example.com",
        "action": "failed",
        "status": "5.1.1",
        "diagnostic-code": "smtp; 550 5.1.1 No such user",
        "last-attempt-date": "Tue, 5 Mar 2024 10:05:00 +0000",
    }


async def test_report_fields_in_rfc_3464_order() -> None:
    data = make(
        report(
            [recipient(original=("rfc822", "b@example.com"), remote_mta="mx.example.com")],
            envid="e",
            received_from_mta="c.example",
        )
    )
    head, content = raw_parts(data)[1]
    names = re.findall(rb"(?m)^([A-Za-z-]+):", content)
    assert names == [
        b"Original-Envelope-Id",
        b"Reporting-MTA",
        b"Received-From-MTA",
        b"Arrival-Date",
        b"X-Kittiwake-Queue-Id",
        b"X-Kittiwake-Sender",
        b"Original-Recipient",
        b"Final-Recipient",
        b"Action",
        b"Status",
        b"Remote-MTA",
        b"Diagnostic-Code",
        b"Last-Attempt-Date",
    ]
    assert part_field(head, "Content-Description") == "Delivery report"


async def test_the_stdlib_reads_the_report_groups() -> None:
    """message/delivery-status is a known type to `email`: each group is one block."""
    data = make(report([recipient(), recipient("delayed", recipient="c@example.net")]))
    status = parse(data).get_payload()[1]  # type: ignore[index]
    blocks = status.get_payload()
    assert [b["Action"] for b in blocks[1:]] == ["failed", "delayed"]
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.org"


@pytest.mark.parametrize(
    ("action", "subject", "status"),
    [
        ("failed", "Undelivered Mail Returned to Sender", "5.1.1"),
        ("delayed", "Delayed Mail (still being retried)", "4.4.1"),
        ("delivered", "Successful Mail Delivery Report", "2.0.0"),
        ("relayed", "Successful Mail Delivery Report", "2.0.0"),
        ("expanded", "Successful Mail Delivery Report", "2.0.0"),
    ],
)
async def test_every_action(action: str, subject: str, status: str) -> None:
    until = T0 + timedelta(days=5)
    data = make(report([recipient(action, will_retry_until=until)]))
    assert parse(data)["Subject"] == subject
    rcpt = groups(data)[1]
    assert rcpt["action"] == action
    assert rcpt["status"] == status
    if action == "delayed":
        assert rcpt["will-retry-until"] == "Sun, 10 Mar 2024 10:00:00 +0000"
        assert "Still trying until Sun, 10 Mar 2024 10:00:00 +0000." in text_part(data)
    else:
        assert "will-retry-until" not in rcpt


@pytest.mark.parametrize(
    ("actions", "subject"),
    [
        (("delivered", "failed", "delayed"), "Undelivered Mail Returned to Sender"),
        (("delayed", "delivered"), "Delayed Mail (still being retried)"),
        (("relayed", "expanded", "delivered"), "Successful Mail Delivery Report"),
    ],
)
async def test_a_mixed_report_is_named_after_its_worst_action(
    actions: tuple[str, ...], subject: str
) -> None:
    rcpts = [recipient(a, recipient=f"r{i}@example.com") for i, a in enumerate(actions)]
    data = make(report(rcpts))
    assert parse(data)["Subject"] == subject
    assert [g["action"] for g in groups(data)[1:]] == list(actions)
    text = text_part(data)
    for i, action in enumerate(actions):
        assert f"r{i}@example.com: {dsn._OUTCOME[action]}" in text


def test_an_unknown_action_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown DSN action 'bounced'"):
        RecipientReport("a@example.com", "bounced", (5, 0, 0))
    assert set(ACTIONS) == {"failed", "delayed", "delivered", "relayed", "expanded"}


@pytest.mark.parametrize(
    ("action", "status", "written"),
    [
        ("failed", (4, 4, 7), "4.4.7"),  # expired after temporary errors: kept
        ("failed", (7, 1, 1), "5.0.0"),
        ("failed", (5, 1000, 1), "5.0.0"),
        ("delayed", (4, -1, 0), "4.0.0"),
        ("delivered", (3, 0, 0), "2.0.0"),
    ],
)
async def test_a_status_outside_rfc_3463_becomes_the_actions_default(
    action: str, status: tuple[int, int, int], written: str
) -> None:
    data = make(report([recipient(action, status=status)]))
    assert groups(data)[1]["status"] == written


async def test_the_text_part_names_host_message_times_and_reasons() -> None:
    data = make(
        report(
            [recipient(remote_mta="mx.example.com"), recipient("delayed", recipient="c@x.example")],
            envid="env-7",
        )
    )
    head, _ = raw_parts(data)[0]
    assert part_field(head, "Content-Type") == "text/plain; charset=utf-8"
    text = text_part(data)
    for expected in (
        "This is the mail system at mx.example.org.",
        "Queue ID: 1a2b3c4d",
        "Envelope ID: env-7",
        "Arrived: Tue, 5 Mar 2024 10:00:00 +0000",
        "Last attempt: Tue, 5 Mar 2024 10:05:00 +0000",
        "bob@example.com: could not be delivered",
        "550 5.1.1 No such user",
        "server mx.example.com",
        "c@x.example: not delivered yet",
        "keeps trying",
        "then the header of your message.",
    ):
        assert expected in text
    assert max(len(line) for line in text.split("\r\n")) <= 76


async def test_an_empty_report_or_sender_still_makes_a_message() -> None:
    data = make(report([], sender=""))
    msg = parse(data)
    assert msg["To"] == "undisclosed-recipients:;"
    assert groups(data)[0]["x-kittiwake-sender"] == "rfc822; <>"
    assert msg["Subject"] == "Delivery report"
    assert len(groups(data)) == 1


async def test_naive_and_aware_times_mix() -> None:
    naive = datetime(2024, 3, 5, 12, 0)
    other = datetime(2024, 3, 5, 13, 30, tzinfo=timezone(timedelta(hours=2)))
    data = make(
        report(
            [recipient(last_attempt=naive), recipient(last_attempt=other, recipient="c@e.example")],
            arrival=datetime(2024, 3, 5, 9, 0),
        )
    )
    assert groups(data)[0]["arrival-date"] == "Tue, 5 Mar 2024 09:00:00 +0000"
    assert groups(data)[2]["last-attempt-date"] == "Tue, 5 Mar 2024 11:30:00 +0000"
    assert "Last attempt: Tue, 5 Mar 2024 12:00:00 +0000" in text_part(data)


async def test_the_autogen_domain_is_written_in_a_labels() -> None:
    hdr = Header.parse(HEADER)
    msg = build(report(), hdr, None, autogen_domain="bücher.example <x>", now=NOW)
    data = render(msg)
    check_wellformed(data, seven_bit=True)
    assert parse(data)["From"] == "Mail Delivery System <MAILER-DAEMON@xn--bcher-kva.examplex>"
    assert msg.header.get("Date") == "Tue, 5 Mar 2024 11:00:00 +0000"


async def test_the_date_defaults_to_the_clock() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    msg = build(report(), Header.parse(HEADER), None, autogen_domain="mx.example.org")
    date = email.utils.parsedate_to_datetime(msg.header.get("Date") or "")
    assert before <= date <= datetime.now(UTC)


# --- SMTPUTF8 and non-ASCII ----------------------------------------------------------


async def test_without_smtputf8_everything_non_ascii_is_encoded() -> None:
    rcpts = [
        recipient(recipient="jörg@bücher.example", diagnostic="550 5.1.1 Unbekannt: jörg"),
        recipient(recipient="bob@bücher.example", remote_mta="mx.bücher.example"),
    ]
    data = make(report(rcpts, sender="alice@bücher.example", reporting_mta="mx.example.org"))
    assert data.isascii()
    msg = parse(data)
    assert msg["To"] == "alice@xn--bcher-kva.example"
    assert msg.get_payload()[1].get_content_type() == "message/delivery-status"  # type: ignore[index]
    _, first, second = groups(data)
    # RFC 6533 §3: a non-ASCII local part is a utf-8 address, 7-bit form.
    assert first["final-recipient"] == "utf-8; j\\x{F6}rg@xn--bcher-kva.example"
    assert first["diagnostic-code"] == "smtp; 550 5.1.1 Unbekannt: j\\x{F6}rg"
    # An ASCII local part at an IDN domain stays rfc822, with A-labels.
    assert second["final-recipient"] == "rfc822; bob@xn--bcher-kva.example"
    assert second["remote-mta"] == "dns; mx.xn--bcher-kva.example"
    # People read U-labels: the text part is quoted-printable UTF-8.
    head, _ = raw_parts(data)[0]
    assert part_field(head, "Content-Transfer-Encoding") == "quoted-printable"
    assert "jörg@bücher.example: could not be delivered" in text_part(data)


async def test_with_smtputf8_the_global_types_and_utf8() -> None:
    rcpts = [
        recipient(
            recipient="jörg+tag@bücher.example",
            original=("utf-8", "Jörg+tag@Bücher.example"),
            diagnostic="550 5.1.1 Unbekannt: jörg",
        )
    ]
    header = "Subject: Grüße\r\nFrom: jörg@bücher.example\r\n".encode()
    data = make(report(rcpts, sender="ålice@bücher.example", smtputf8=True), header)
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    assert msg["To"] == "ålice@bücher.example"
    parts = raw_parts(data)
    assert part_field(parts[0][0], "Content-Transfer-Encoding") == "8bit"
    assert part_field(parts[1][0], "Content-Type") == "message/global-delivery-status"
    assert part_field(parts[1][0], "Content-Transfer-Encoding") == "8bit"
    assert part_field(parts[2][0], "Content-Type") == "message/global-headers"
    assert part_field(parts[2][0], "Content-Transfer-Encoding") == "8bit"
    assert parts[2][1] == header
    per_message, rcpt = groups(data)
    assert per_message["x-kittiwake-sender"] == "utf-8; ålice@bücher.example"
    # utf-8-addr-unitext: UTF-8 stays, "+" does not (RFC 6533 §3 QUCHAR).
    assert rcpt["final-recipient"] == "utf-8; jörg\\x{2B}tag@bücher.example"
    assert rcpt["original-recipient"] == "utf-8; Jörg\\x{2B}tag@Bücher.example"
    assert rcpt["diagnostic-code"] == "smtp; 550 5.1.1 Unbekannt: jörg"


async def test_with_smtputf8_but_only_ascii_the_parts_stay_7bit() -> None:
    data = make(report(smtputf8=True))
    assert parse(data)["Content-Transfer-Encoding"] == "7bit"
    parts = raw_parts(data)
    assert part_field(parts[1][0], "Content-Type") == "message/global-delivery-status"
    assert part_field(parts[2][0], "Content-Type") == "message/global-headers"
    assert {part_field(h, "Content-Transfer-Encoding") for h, _ in parts} == {"7bit"}


async def test_a_sender_with_a_non_ascii_local_part_without_smtputf8() -> None:
    """The DSN cannot reach that address without SMTPUTF8: only its To: is UTF-8."""
    data = make(report(sender="jörg@bücher.example"))
    assert parse(data)["To"] == "jörg@xn--bcher-kva.example"
    assert groups(data)[0]["x-kittiwake-sender"] == "utf-8; j\\x{F6}rg@xn--bcher-kva.example"


async def test_a_quoted_local_part_is_written_quoted() -> None:
    data = make(report([recipient(recipient="john doe@example.com")], sender="a b@example.org"))
    assert groups(data)[1]["final-recipient"] == 'rfc822; "john doe"@example.com'
    assert parse(data)["To"] == '"a b"@example.org'


# --- ORCPT and ENVID (RFC 3461) ------------------------------------------------------


@pytest.mark.parametrize(
    ("orcpt", "smtputf8", "written"),
    [
        (("rfc822", "Bob+x=y@Example.COM"), False, "rfc822; Bob+x=y@Example.COM"),
        (("rfc822", "bøb@example.com"), False, "utf-8; b\\x{F8}b@example.com"),
        (("utf-8", "bøb@example.com"), False, "utf-8; b\\x{F8}b@example.com"),
        (("utf-8", "bøb@example.com"), True, "utf-8; bøb@example.com"),
        (("utf-8", "a b\\c=d@example.com"), True, "utf-8; a\\x{20}b\\x{5C}c\\x{3D}d@example.com"),
        (("x400", "/G=Bob/S=Ø/"), False, "x400; /G=Bob/S=\\x{D8}/"),
        (("RFC822", "b@example.com"), False, "rfc822; b@example.com"),
        (("rfc822;\r\nAction: x", "b@example.com"), False, "rfc822actionx; b@example.com"),
    ],
)
async def test_original_recipient_is_the_orcpt(
    orcpt: tuple[str, str], smtputf8: bool, written: str
) -> None:
    data = make(report([recipient(original=orcpt)], smtputf8=smtputf8))
    assert groups(data)[1]["original-recipient"] == written


async def test_without_orcpt_there_is_no_original_recipient() -> None:
    """RFC 3461 §6.3 (d): the field appears exactly when ORCPT was given."""
    data = make(report())
    assert "original-recipient" not in groups(data)[1]


@pytest.mark.parametrize(
    ("envid", "written"),
    [
        ("QQ314159", "QQ314159"),
        ("a+b=c d", "a+b=c d"),  # RFC 3461 §4.4: the value before xtext, printable ASCII
        ("envé", "env+C3+A9"),  # not printable ASCII: the xtext the client sent
        ("a\r\nAction: delivered", "a+0D+0AAction:+20delivered"),
        ("\x00", "+00"),
    ],
)
async def test_original_envelope_id(envid: str, written: str) -> None:
    for smtputf8 in (False, True):
        data = make(report(envid=envid, smtputf8=smtputf8))
        assert groups(data)[0]["original-envelope-id"] == written


# --- Hostile input -------------------------------------------------------------------

INJECTION = "550 5.1.1 gone\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822; x@evil\n\r\x00."


async def test_a_hostile_diagnostic_cannot_forge_fields() -> None:
    data = make(report([recipient(diagnostic=INJECTION)]))
    _, rcpt = groups(data)
    assert rcpt["action"] == "failed"
    assert rcpt["final-recipient"] == "rfc822; bob@example.com"
    assert rcpt["diagnostic-code"] == (
        "smtp; 550 5.1.1 gone Action: delivered Final-Recipient: rfc822; x@evil ."
    )
    assert b"\x00" not in data
    assert "gone Action: delivered" in text_part(data)


@pytest.mark.parametrize("smtputf8", [False, True])
async def test_hostile_values_everywhere(smtputf8: bool) -> None:
    evil = "x\r\nAction: delivered\x00\x1b[31m\u2028\u202e\x85\udcff"
    rcpt = recipient(
        recipient=f"{evil}@example.com",
        diagnostic=evil,
        remote_mta=evil,
        original=(evil, evil),
    )
    data = make(
        report(
            [rcpt],
            sender=evil,
            reporting_mta=evil,
            msg_id=evil,
            received_from_mta=evil,
            envid=evil,
            smtputf8=smtputf8,
        )
    )
    for group in groups(data):
        assert group.get("action", "failed") == "failed"
    text = data.decode("utf-8")
    for bad in ("\x00", "\x1b", "\u2028", "\u202e", "\x85", "\udcff"):
        assert bad not in text
    assert "\ufffd" in text_part(data)


async def test_a_10k_diagnostic_is_cut_and_folded() -> None:
    long = "550 5.7.1 " + "blocked because " * 700  # about 11 KB
    data = make(report([recipient(diagnostic=long)]))
    value = groups(data)[1]["diagnostic-code"]
    assert value.startswith("smtp; 550 5.7.1 blocked because")
    assert value.endswith(" [...]")
    assert len(value) <= dsn.MAX_TEXT + len("smtp; ") + len(" [...]")
    _, content = raw_parts(data)[1]
    assert max(len(line) for line in content.split(b"\r\n")) <= 78


@pytest.mark.parametrize("smtputf8", [False, True])
async def test_a_10k_word_without_spaces_still_fits_in_lines(smtputf8: bool) -> None:
    word = "\U0001f600" * 10_000
    rcpt = recipient(recipient=word + "@example.com", diagnostic=word, remote_mta=word)
    data = make(report([rcpt], envid=word, msg_id=word, smtputf8=smtputf8))
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    text = text_part(data)
    assert max(len(line) for line in text.split("\r\n")) <= 76


async def test_a_diagnostic_that_is_no_reply_gets_our_own_type() -> None:
    """RFC 3464 §2.3.6: `smtp` says the text is an SMTP reply."""
    data = make(report([recipient("delayed", diagnostic="connect: connection refused")]))
    assert groups(data)[1]["diagnostic-code"] == "X-Kittiwake; connect: connection refused"


# --- The original: headers -----------------------------------------------------------


async def test_the_header_comes_back_as_text_rfc822_headers() -> None:
    data = make(report())
    head, content = raw_parts(data)[2]
    assert part_field(head, "Content-Type") == "text/rfc822-headers"
    assert part_field(head, "Content-Transfer-Encoding") == "7bit"
    assert content == HEADER


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (Header(), b""),
        (Header.parse(b"Subject: no final line end"), b"Subject: no final line end\r\n"),
        (Header.parse(b"A: 1\nB: 2\n folded\n"), b"A: 1\r\nB: 2\r\n folded\r\n"),
        (Header([Field("A", b"A: 1"), Field("B", b"B: 2\r")]), b"A: 1\r\nB: 2\r\n"),
        (Header([Field("A", b"A: 1\r\n\r\nB: 2\r\n")]), b"A: 1\r\nB: 2\r\n"),
    ],
)
async def test_odd_headers_come_back_clean(header: Header, expected: bytes) -> None:
    data = make(report(), header)
    head, content = raw_parts(data)[2]
    assert part_field(head, "Content-Type") == "text/rfc822-headers"
    assert content == expected


@pytest.mark.parametrize(
    ("raw", "smtputf8", "kind", "cte"),
    [
        # 8-bit header text is UTF-8 header text (RFC 6532), SMTPUTF8 or not.
        ("Subject: Grüße\r\n".encode(), False, "message/global-headers", "quoted-printable"),
        (b"Subject: \xff\xfe latin junk\r\n", False, "message/global-headers", "quoted-printable"),
        ("Subject: Grüße\r\n".encode(), True, "message/global-headers", "8bit"),
        (b"Subject: nul\x00here\r\n", False, "text/rfc822-headers", "quoted-printable"),
        (b"Subject: nul\x00here\r\n", True, "message/global-headers", "quoted-printable"),
        (b"X-Long: " + b"y" * 2000 + b"\r\n", False, "text/rfc822-headers", "quoted-printable"),
    ],
)
async def test_a_header_that_is_not_7bit(raw: bytes, smtputf8: bool, kind: str, cte: str) -> None:
    data = make(report(smtputf8=smtputf8), Header([Field("X", raw)]))
    head, content = raw_parts(data)[2]
    assert part_field(head, "Content-Type") == kind
    assert part_field(head, "Content-Transfer-Encoding") == cte
    assert decoded(head, content) == raw


# --- The original: the whole message -------------------------------------------------


async def test_ret_full_returns_the_message() -> None:
    body = await ram(b"Hello\r\n\r\n.\r\nbye")
    data = make(report(return_full=True), body=body)
    head, content = raw_parts(data)[2]
    assert part_field(head, "Content-Type") == "message/rfc822"
    assert part_field(head, "Content-Transfer-Encoding") == "7bit"
    assert content == HEADER + b"\r\nHello\r\n\r\n.\r\nbye"
    inner = parse(data).get_payload()[2].get_payload()[0]  # type: ignore[index]
    assert inner["Subject"] == "Hello"
    assert "then your message." in text_part(data)


@pytest.mark.parametrize(
    ("rep", "with_body"),
    [
        (report(), True),  # RET=HDRS
        (report(return_full=True), False),  # no body to return
        (report([recipient("delayed")], return_full=True), True),  # RFC 3461 §4.3
        (report([recipient("delivered")], return_full=True), True),
    ],
)
async def test_otherwise_only_the_header_comes_back(rep: Report, with_body: bool) -> None:
    body = await ram(b"secret body\r\n") if with_body else None
    data = make(rep, body=body)
    assert b"secret body" not in data
    assert part_field(raw_parts(data)[2][0], "Content-Type") == "text/rfc822-headers"


async def test_a_message_over_max_full_size_comes_back_as_its_header() -> None:
    body = await ram(b"x" * 500 + b"\r\n")
    data = make(report(return_full=True), body=body, max_full_size=len(HEADER) + 100)
    assert part_field(raw_parts(data)[2][0], "Content-Type") == "text/rfc822-headers"
    assert "too large to be returned in full" in text_part(data)
    data = make(report(return_full=True), body=await ram(b"small\r\n"), max_full_size=10_000)
    assert part_field(raw_parts(data)[2][0], "Content-Type") == "message/rfc822"


async def test_a_body_that_cannot_be_read_gives_the_header() -> None:
    body = await ram(b"gone\r\n")
    body.remove()
    data = make(report(return_full=True), body=body)
    assert part_field(raw_parts(data)[2][0], "Content-Type") == "text/rfc822-headers"


@pytest.mark.parametrize(
    ("content", "smtputf8", "kind", "cte"),
    [
        ("Grüße\r\n".encode(), False, "message/global", "base64"),
        ("Grüße\r\n".encode(), True, "message/global", "8bit"),
        (b"nul\x00\r\n", True, "message/global", "base64"),
        (b"z" * 999 + b"\r\n", False, "message/global", "base64"),
        (b"z" * 998 + b"\r\n", False, "message/rfc822", "7bit"),
        (b"ascii\r\n", True, "message/global", "7bit"),
    ],
)
async def test_the_whole_message_in_the_encoding_it_needs(
    content: bytes, smtputf8: bool, kind: str, cte: str
) -> None:
    data = make(report(return_full=True, smtputf8=smtputf8), body=await ram(content))
    head, raw = raw_parts(data)[2]
    assert part_field(head, "Content-Type") == kind
    assert part_field(head, "Content-Transfer-Encoding") == cte
    assert decoded(head, raw) == HEADER + b"\r\n" + content


async def test_line_ends_in_the_returned_body_become_crlf() -> None:
    # A CRLF split across two read blocks stays one line end.
    prefix = b"bare lf\nbare cr\rmixed\n\r"
    n = dsn._READ - 1 - len(prefix)
    split = (b"b" * 98 + b"\r\n") * (n // 100) + b"c" * (n % 100) + b"\r\n"
    assert (prefix + split)[dsn._READ - 1 : dsn._READ + 1] == b"\r\n"
    body = await ram(prefix + split + b"end\r")
    data = make(report(return_full=True), body=body)
    head, raw = raw_parts(data)[2]
    assert part_field(head, "Content-Transfer-Encoding") == "7bit"
    assert raw == HEADER + b"\r\nbare lf\r\nbare cr\r\nmixed\r\n\r\n" + split + b"end\r\n"


async def test_the_boundary_never_starts_a_line_of_the_content(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body holding the first boundary tried makes `build` draw another."""
    taken = "=_kw_" + "0" * 32
    drawn = iter([taken, taken, "=_kw_" + "1" * 32])
    monkeypatch.setattr(dsn, "_new_boundary", lambda: next(drawn))
    body = await ram(b"before\r\n--" + taken.encode() + b"--\r\nafter\r\n")
    data = make(report(return_full=True), body=body)
    assert boundary_of(data) == b"=_kw_" + b"1" * 32
    assert raw_parts(data)[2][1].endswith(b"--" + taken.encode() + b"--\r\nafter\r\n")


@pytest.mark.parametrize("eight_bit", [False, True])
async def test_a_large_fs_body_streams_in_small_chunks(tmp_path: Path, eight_bit: bool) -> None:
    line = (b"\xc3\xa9" if eight_bit else b"e") * 70 + b"\r\n"
    body = Buffer.fs(str(tmp_path))
    size = 0
    for _ in range(40):  # 40 x 150 KB: about 6 MB
        block = line * (150_000 // len(line))
        await body.write(block)
        size += len(block)
    await body.finish()
    assert size > 5 * MiB
    rep = report(return_full=True)
    hdr = Header.parse(HEADER)
    tracemalloc.start()
    try:
        msg = build(rep, hdr, body, autogen_domain="mx.example.org", now=NOW)
        digest, longest, total = hashlib.sha256(), 0, 0
        for chunk in msg.chunks():
            digest.update(chunk)
            longest = max(longest, len(chunk))
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 5 * MiB
    assert longest <= 256 * 1024
    assert peak < MiB, f"peak {peak} bytes"
    data = render(msg)  # a second pass reads the file again
    assert hashlib.sha256(data[len(msg.header.to_bytes()) :]).digest() == digest.digest()
    check_wellformed(data, seven_bit=True)
    head, raw = raw_parts(data)[2]
    assert part_field(head, "Content-Transfer-Encoding") == ("base64" if eight_bit else "7bit")
    returned = decoded(head, raw)
    assert len(returned) == len(HEADER) + 2 + size
    body.remove()


# --- Any input at all ----------------------------------------------------------------

_text = st.text(
    st.characters(codec="utf-8") | st.sampled_from("\r\n\x00\t +=\\@\udcff"), max_size=80
)
_when = st.datetimes(
    timezones=st.none()
    | st.builds(timezone, st.timedeltas(timedelta(hours=-23), timedelta(hours=23)))
)
_recipients = st.builds(
    RecipientReport,
    recipient=_text,
    action=st.sampled_from(ACTIONS),
    status=st.tuples(st.integers(-2, 1002), st.integers(-2, 1002), st.integers(-2, 1002)),
    diagnostic=st.none() | _text | st.text(min_size=900, max_size=3000),
    original=st.none() | st.tuples(_text, _text),
    remote_mta=st.none() | _text,
    last_attempt=st.none() | _when,
    will_retry_until=st.none() | _when,
)
_header = st.lists(st.binary(max_size=200).map(lambda b: Field("X", b)), max_size=5).map(Header)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recipients=st.lists(_recipients, max_size=4),
    sender=_text,
    envid=st.none() | _text,
    helo=st.none() | _text,
    smtputf8=st.booleans(),
    return_full=st.booleans(),
    header=_header,
    body=st.none() | st.binary(max_size=3000),
    arrival=_when,
)
def test_any_report_makes_a_well_formed_message(
    recipients: list[RecipientReport],
    sender: str,
    envid: str | None,
    helo: str | None,
    smtputf8: bool,
    return_full: bool,
    header: Header,
    body: bytes | None,
    arrival: datetime,
) -> None:
    rep = Report(
        reporting_mta="mx.example.org",
        msg_id="1a2b3c4d",
        sender=sender,
        arrival=arrival,
        recipients=recipients,
        envid=envid,
        received_from_mta=helo,
        smtputf8=smtputf8,
        return_full=return_full,
    )
    buf = asyncio.run(ram(body)) if body is not None else None
    data = make(rep, header, buf)
    found = groups(data)
    assert len(found) == 1 + len(recipients)
    for group, rcpt in zip(found[1:], recipients, strict=True):
        assert group["action"] == rcpt.action
        assert re.fullmatch(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", group["status"])
        assert re.fullmatch(r"(rfc822|utf-8); .+", group["final-recipient"])
    full = return_full and body is not None and any(r.action == "failed" for r in recipients)
    head, raw = raw_parts(data)[2]
    if full:
        assert decoded(head, raw) == dsn._original_header_bytes(header) + b"\r\n" + re.sub(
            rb"\r\n|\r|\n", b"\r\n", body or b""
        )
    else:
        assert decoded(head, raw) == dsn._original_header_bytes(header)
