"""Delivery status notifications: the report a sender gets about its message.

`build` turns a `Report` (what happened to which recipients of one message)
into a DSN: a `multipart/report` message (RFC 6522) with a short text for
people, a `message/delivery-status` part for programs (RFC 3464) and the
original header or, when the sender asked with RET=FULL, the whole original
message (RFC 3461 §4.3). A sender that used SMTPUTF8 gets the RFC 6533
forms instead: `message/global-delivery-status`, `message/global-headers`,
`message/global`. docs/dsn.md describes the result field by field.

The envelope of the DSN (`MAIL FROM:<>`, `RCPT TO` the original sender)
and whether a DSN is due at all (NOTIFY, a null sender) are the caller's
business; this module only writes the message.

Strategy. Everything the report says comes from places an attacker can
reach - the downstream server's reply, the client's HELO, ORCPT and ENVID,
the addresses - so every value is cleaned before it is written: control
characters (CR, LF, NUL, C1, Unicode line breaks and bidi overrides) become
spaces, runs of white space become one, undecodable bytes become U+FFFD,
and a value is cut at `MAX_TEXT` characters. Without SMTPUTF8 the report
part must stay 7-bit, so what is not ASCII is written the RFC 6533 way
(`\\x{HEX}`; addresses as `utf-8;` with the utf-8-addr-xtext form), and
ENVID falls back to its xtext form. Header-like lines are folded at spaces,
and a word longer than a line is split, so no line passes 998 octets.

The original message can be large and stays where it is: `build` reads the
body once, in blocks, to learn what it holds (8-bit bytes, NUL, long lines,
our boundary), and `DSNMessage.chunks` reads it again, in blocks, while the
DSN is written out. Content that cannot travel as it is (8-bit without
SMTPUTF8, NUL, lines over 998 octets) is base64 in `message/global`, or
quoted-printable for header blocks, which RFC 6532 §3.7 and RFC 6533 §6
allow for the global types and forbid for `message/rfc822`. Line ends are
made CRLF throughout, and the MIME boundary is random, starts with `=_`
(which quoted-printable and base64 never produce) and is checked against
every line we send unencoded. Reading a file blocks: call `build` and
iterate `chunks` in a worker thread when the body is on disk.
"""

from __future__ import annotations

import re
import secrets
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kittiwake.address.domain import to_alabel_domain
from kittiwake.address.path import quote_local_part
from kittiwake.errors import SMTPError
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Field, Header
from kittiwake.message.maildate import format_date
from kittiwake.message.mime import (
    LineScanner,
    Shape,
    base64_lines,
    crlf,
    crlf_blocks,
    fold_field,
    quoted_printable,
    shape_of,
)
from kittiwake.message.xtext import clean_line, encode_unitext, encode_xtext, escape_non_ascii

__all__ = ["ACTIONS", "MAX_TEXT", "DSNMessage", "RecipientReport", "Report", "build"]

#: RFC 3464 §2.3.3 action values.
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
#: Characters kept of any one value (a diagnostic, an address, a host name);
#: twice what one SMTP reply line may hold (RFC 5321 §4.5.3.1.5).
MAX_TEXT = 1000

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}
_DEFAULT_STATUS = {"failed": (5, 0, 0), "delayed": (4, 0, 0)}
_READ = 64 * 1024  # bytes read from the original body at a time


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What happened to one recipient (one per-recipient group, RFC 3464 §2.3).

    `recipient` is the address we tried, in kittiwake's internal form
    (U-labels allowed); `original` the ORCPT (address type, decoded address);
    `diagnostic` the one-line reply that decided it, e.g.
    `550 5.1.1 No such user`. All text may come from the network: `build`
    cleans it. An unknown `action` is a programming error and raises
    `ValueError` here, at the caller, rather than in a DSN nobody reads.
    """

    recipient: str
    action: str
    status: tuple[int, int, int]
    diagnostic: str | None = None
    original: tuple[str, str] | None = None
    remote_mta: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {self.action!r}: one of {', '.join(ACTIONS)}")


@dataclass(frozen=True, slots=True)
class Report:
    """One DSN's worth of facts: the message (RFC 3464 §2.2) and its recipients.

    `sender` is the original envelope sender, the DSN's recipient;
    `reporting_mta` our host name; `msg_id` our queue ID of the message.
    `smtputf8`: the original used SMTPUTF8, so the DSN may use UTF-8 and the
    RFC 6533 global types. `return_full`: the sender asked for RET=FULL.
    """

    reporting_mta: str
    msg_id: str
    sender: str
    arrival: datetime
    recipients: Sequence[RecipientReport]
    envid: str | None = None
    received_from_mta: str | None = None
    smtputf8: bool = False
    return_full: bool = False


# --- Values -----------------------------------------------------------------------


def _clean(text: str) -> str:
    return clean_line(text, MAX_TEXT)


def _alabels(domain: str) -> str:
    """`domain` with A-labels; as it is when it will not encode (it is shown, not used)."""
    try:
        return to_alabel_domain(domain)
    except (UnicodeError, ValueError):
        return domain


def _mailbox(addr: str, *, utf8: bool) -> str:
    """An internal-form address as RFC 5321 writes it: local part quoted if need be.

    The domain gets A-labels unless `utf8`, so a plain recipient at an IDN
    domain stays an `rfc822` address in a 7-bit report.
    """
    local, at, domain = addr.rpartition("@")
    if not at or not local:
        return addr
    try:
        local = quote_local_part(local)
    except ValueError:
        pass
    return f"{local}@{domain if utf8 else _alabels(domain)}"


def _typed_address(addr: str, *, utf8: bool) -> str:
    """`rfc822; ADDR` for an ASCII address, else `utf-8; ADDR` (RFC 6533 §3)."""
    shown = _mailbox(_clean(addr), utf8=utf8) or "<>"
    if shown.isascii():
        return f"rfc822; {shown}"
    return f"utf-8; {encode_unitext(shown, seven_bit=not utf8)}"


def _original_recipient(orcpt: tuple[str, str], *, utf8: bool) -> str:
    """The ORCPT as given (RFC 3461 §6.3 (d)), decoded, re-encoded only where it must be.

    A non-ASCII address cannot be an `rfc822` one (RFC 3461 §4.2), so it
    is written as `utf-8` (RFC 6533 §3); other address types are kept.
    """
    addr_type, addr = orcpt
    kind = re.sub(r"[^A-Za-z0-9-]", "", addr_type).lower() or "rfc822"
    text = _clean(addr)
    if kind == "utf-8" or (kind == "rfc822" and not text.isascii()):
        return f"utf-8; {encode_unitext(text, seven_bit=not utf8)}"
    return f"{kind}; {text if utf8 else escape_non_ascii(text)}"


def _envelope_id(envid: str) -> str:
    """The ENVID as the sender gave it, before xtext (RFC 3461 §4.4, §6.3 (a)).

    RFC 3461 lets ENVID hold printable ASCII only. Anything else cannot be
    written as it is, so then the value is the xtext the client sent.
    """
    if envid and all(" " <= c <= "~" for c in envid) and envid.strip():
        return envid.strip()
    return encode_xtext(envid[:MAX_TEXT])


def _host(name: str, *, utf8: bool) -> str:
    """`dns; NAME` with A-labels; a name that is no domain is still cleaned."""
    text = _alabels(_clean(name))
    return f"dns; {text if utf8 else escape_non_ascii(text)}"


_REPLY = re.compile(r"[245][0-9][0-9](?:[ -]|\Z)")


def _diagnostic(text: str, *, utf8: bool) -> str:
    """`smtp; REPLY`, or `X-Kittiwake; TEXT` for a reason that is no SMTP reply.

    RFC 3464 §2.3.6: the type says what the text is; a local reason
    ("connection refused") in the `smtp` type would look like a reply.
    """
    clean = _clean(text)
    kind = "smtp" if _REPLY.match(clean) else "X-Kittiwake"
    return f"{kind}; {clean if utf8 else escape_non_ascii(clean)}"


def _status(status: tuple[int, int, int], action: str) -> str:
    """`X.Y.Z` (RFC 3463 §2): class 2, 4 or 5, then 0-999 twice; else the action's default."""
    try:
        klass, subject, detail = (int(p) for p in status)
    except (TypeError, ValueError):
        klass, subject, detail = -1, -1, -1
    if klass not in (2, 4, 5) or not (0 <= subject <= 999 and 0 <= detail <= 999):
        klass, subject, detail = _DEFAULT_STATUS.get(action, (2, 0, 0))
    return f"{klass}.{subject}.{detail}"


def _utc(moment: datetime) -> datetime:
    """An aware UTC time, so naive and aware times compare (a naive one is UTC)."""
    if moment.tzinfo is not None:
        try:
            return moment.astimezone(UTC)
        except OverflowError:  # within hours of year 1 or 9999: keep the wall time
            pass
    return moment.replace(tzinfo=UTC)


# --- Fields ---------------------------------------------------------------------


def _group(fields: Iterable[tuple[str, str | None]]) -> bytes:
    return b"".join(fold_field(n, v) for n, v in fields if v is not None)


# --- Part 2: message/delivery-status --------------------------------------------


def _per_message(report: Report) -> bytes:
    """RFC 3464 §2.2, in its order; our own fields last, as extension fields."""
    utf8 = report.smtputf8
    return _group(
        [
            ("Original-Envelope-Id", _envelope_id(report.envid) if report.envid else None),
            ("Reporting-MTA", _host(report.reporting_mta, utf8=utf8)),
            (
                "Received-From-MTA",
                _host(report.received_from_mta, utf8=utf8) if report.received_from_mta else None,
            ),
            ("Arrival-Date", format_date(_utc(report.arrival))),
            ("X-Kittiwake-Queue-Id", escape_non_ascii(_clean(report.msg_id))),
            ("X-Kittiwake-Sender", _typed_address(report.sender, utf8=utf8)),
        ]
    )


def _per_recipient(r: RecipientReport, *, utf8: bool) -> bytes:
    """RFC 3464 §2.3, in its order."""
    retry = r.will_retry_until if r.action == "delayed" else None
    return _group(
        [
            (
                "Original-Recipient",
                _original_recipient(r.original, utf8=utf8) if r.original else None,
            ),
            ("Final-Recipient", _typed_address(r.recipient, utf8=utf8)),
            ("Action", r.action),
            ("Status", _status(r.status, r.action)),
            ("Remote-MTA", _host(r.remote_mta, utf8=utf8) if r.remote_mta else None),
            ("Diagnostic-Code", _diagnostic(r.diagnostic, utf8=utf8) if r.diagnostic else None),
            ("Last-Attempt-Date", format_date(_utc(r.last_attempt)) if r.last_attempt else None),
            ("Will-Retry-Until", format_date(_utc(retry)) if retry else None),
        ]
    )


def _status_content(report: Report) -> bytes:
    """The per-message group, then one group per recipient, a blank line between."""
    groups = [_per_message(report)]
    groups += [_per_recipient(r, utf8=report.smtputf8) for r in report.recipients]
    return b"\r\n".join(groups)


# --- Part 1: text for people -----------------------------------------------------

_INTRO = {
    "failed": "Your message could not be delivered to one or more of its recipients. "
    "The mail system has given up on them; details are below.",
    "delayed": "Your message has not been delivered to one or more of its recipients yet. "
    "The mail system keeps trying: you need not send it again, and you will be told "
    "if it gives up.",
    "success": "Your message has been delivered to the recipients below; you asked to be told.",
}
_OUTCOME = {
    "failed": "could not be delivered",
    "delayed": "not delivered yet",
    "delivered": "delivered",
    "relayed": "passed on to a system that sends no delivery reports",
    "expanded": "delivered, and passed on to the addresses it stands for",
}


def _kind(action: str) -> str:
    return action if action in ("failed", "delayed") else "success"


def _worst(recipients: Sequence[RecipientReport]) -> str:
    """failed > delayed > success: what the Subject and the first words are about."""
    kinds = {_kind(r.action) for r in recipients}
    return next((k for k in ("failed", "delayed") if k in kinds), "success")


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text,
        width=76,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=True,
        break_on_hyphens=False,
    )


def _recipient_lines(r: RecipientReport) -> list[str]:
    """`  ADDRESS: outcome`, then indented: the reply, where and when, until when."""
    lines = _wrap(f"{_clean(r.recipient)}: {_OUTCOME[r.action]}", "  ")
    details = [_clean(r.diagnostic)] if r.diagnostic else []
    facts = []
    if r.remote_mta:
        facts.append(f"server {_clean(r.remote_mta)}")
    if r.last_attempt:
        facts.append(f"last attempt {format_date(_utc(r.last_attempt))}")
    if facts:
        details.append("(" + ", ".join(facts) + ")")
    if r.action == "delayed" and r.will_retry_until:
        details.append(f"Still trying until {format_date(_utc(r.will_retry_until))}.")
    for detail in details:
        lines += _wrap(detail, "      ")
    return lines


def _human_text(report: Report, *, full: bool, too_big: bool) -> str:
    """Part 1: who reports, about which message, what happened, what comes next."""
    lines = [*_wrap(f"This is the mail system at {_clean(report.reporting_mta)}."), ""]
    kinds = {_kind(r.action) for r in report.recipients}
    for kind in ("failed", "delayed", "success"):
        if kind in kinds:
            lines += [*_wrap(_INTRO[kind]), ""]
    lines += _wrap(f"Queue ID: {_clean(report.msg_id)}")
    if report.envid:
        lines += _wrap(f"Envelope ID: {_clean(report.envid)}")
    lines += [f"Arrived: {format_date(_utc(report.arrival))}"]
    attempts = [_utc(r.last_attempt) for r in report.recipients if r.last_attempt]
    if attempts:
        lines += [f"Last attempt: {format_date(max(attempts))}"]
    lines += [""]
    for r in report.recipients:
        lines += [*_recipient_lines(r), ""]
    what = "your message" if full else "the header of your message"
    lines += _wrap(f"A report for programs follows, then {what}.")
    if too_big:
        lines += _wrap("Your message was too large to be returned in full.")
    return "\r\n".join(lines) + "\r\n"


# --- Part 3: the original ---------------------------------------------------------


def _original_header_bytes(header: Header) -> bytes:
    """The original header section, CRLF throughout, without empty lines.

    A field without its line end gets one; an empty line inside (not
    something `Header.parse` makes, but a `Header` is only a list) would end
    the header section early, so it goes.
    """
    raw = b"".join(f.raw if f.raw.endswith((b"\n", b"\r")) else f.raw + b"\r\n" for f in header)
    return b"".join(line + b"\r\n" for line in crlf(raw).split(b"\r\n") if line)


def _read_blocks(body: Buffer) -> Iterator[bytes]:
    """The body in blocks of `_READ` bytes: never the whole of it in memory."""
    with body.open() as reader:
        while block := reader.read(_READ):
            yield block


@dataclass(slots=True)
class _Returned:
    """The whole original message, streamed from its buffer when the DSN is written.

    `marker` and `hit`: the last boundary line looked for, and whether a
    line starts with it, so the scan that learns the shape also answers
    the boundary check for the first boundary tried.
    """

    header: bytes
    body: Buffer
    encoding: str = "7bit"  # 7bit, 8bit or base64
    marker: bytes = b""
    hit: bool = False

    def raw(self) -> Iterator[bytes]:
        """The message: header, empty line, body, CRLF line ends, not one byte added."""
        yield self.header + b"\r\n"
        yield from crlf_blocks(_read_blocks(self.body))

    def encoded(self) -> Iterator[bytes]:
        """The message in this part's transfer encoding."""
        if self.encoding == "base64":
            return base64_lines(self.raw())
        return self.raw()

    def scan(self, marker: bytes) -> Shape:
        """Read the message once: its shape, and whether a line starts with `marker`."""
        scanner = LineScanner(marker)
        for block in self.raw():
            scanner.feed(block)
        shape = scanner.finish()
        self.marker, self.hit = marker, scanner.hit
        return shape

    def has_line(self, marker: bytes) -> bool:
        if marker != self.marker:
            self.scan(marker)
        return self.hit


@dataclass(frozen=True, slots=True)
class _Part:
    """One body part: its MIME fields and its content (encoded), or a stream.

    The delimiter before a part is CRLF `--boundary` (RFC 2046 §5.1.1):
    that CRLF belongs to the delimiter, so a content's own last line end
    stays part of the content.
    """

    content_type: str
    description: str
    encoding: str
    content: bytes = b""
    returned: _Returned | None = None

    def head(self, boundary: str) -> bytes:
        return (
            f"\r\n--{boundary}\r\n"
            + f"Content-Type: {self.content_type}\r\n"
            + f"Content-Description: {self.description}\r\n"
            + f"Content-Transfer-Encoding: {self.encoding}\r\n\r\n"
        ).encode("ascii")

    def has_line(self, marker: bytes) -> bool:
        """Whether a line we send unencoded starts with `marker` (a boundary)."""
        if self.returned is not None:
            return self.encoding != "base64" and self.returned.has_line(marker)
        return self.content.startswith(marker) or b"\r\n" + marker in self.content


def _text_part(text: str, *, utf8: bool) -> _Part:
    """Part 1, `text/plain; charset=utf-8`: 8-bit only when SMTPUTF8 carries the DSN."""
    data = text.encode("utf-8")
    if data.isascii():
        encoding = "7bit"
    elif utf8:
        encoding = "8bit"
    else:
        encoding, data = "quoted-printable", quoted_printable(data)
    return _Part("text/plain; charset=utf-8", "Notification", encoding, data)


def _status_part(report: Report) -> _Part:
    data = _status_content(report)
    kind = "global-delivery-status" if report.smtputf8 else "delivery-status"
    encoding = "7bit" if data.isascii() else "8bit"
    return _Part(f"message/{kind}", "Delivery report", encoding, data)


def _headers_part(header: bytes, *, utf8: bool) -> _Part:
    """The original header: `text/rfc822-headers` (RFC 6522) or `message/global-headers`.

    8-bit bytes in a header are UTF-8 headers (RFC 6532) whether or not the
    client said SMTPUTF8, so they make it `message/global-headers`; without
    SMTPUTF8 that is quoted-printable (RFC 6533 §6.3 allows it), to keep
    the DSN 7-bit. NUL or over-long lines need quoted-printable too.
    """
    shape = shape_of(header)
    kind = "message/global-headers" if utf8 or shape.eight_bit else "text/rfc822-headers"
    if shape.seven_bit:
        encoding = "7bit"
    elif utf8 and shape.eight_bit_ok:
        encoding = "8bit"
    else:
        encoding, header = "quoted-printable", quoted_printable(header)
    return _Part(kind, "Original message header", encoding, header)


def _full_part(header: bytes, body: Buffer, *, utf8: bool, marker: bytes) -> _Part:
    """The whole original: `message/rfc822` when it is clean 7-bit, else `message/global`.

    RFC 2046 §5.2.1 allows `message/rfc822` only 7bit, 8bit or binary.
    `message/global` (RFC 6532 §3.7) allows any encoding, so 8-bit content
    without SMTPUTF8, and content no encoding but base64 can carry (NUL,
    lines over 998 octets), goes as base64 `message/global`.
    """
    returned = _Returned(header, body)
    shape = returned.scan(marker)
    if shape.seven_bit:
        kind, encoding = ("message/global" if utf8 else "message/rfc822"), "7bit"
    elif utf8 and shape.eight_bit_ok:
        kind, encoding = "message/global", "8bit"
    else:
        kind, encoding = "message/global", "base64"
    returned.encoding = encoding
    return _Part(kind, "Original message", encoding, returned=returned)


def _original_part(
    report: Report, header: Header, body: Buffer | None, max_full_size: int | None, marker: bytes
) -> tuple[_Part, bool]:
    """Part 3 and whether the message was too large to return in full.

    The whole message only for RET=FULL and a report with a failure: RFC
    3461 §4.3 makes RET about failed DSNs, and a delay or success notice
    has no reason to carry the message back.
    """
    head = _original_header_bytes(header)
    utf8 = report.smtputf8
    wanted = report.return_full and body is not None and _worst(report.recipients) == "failed"
    if not wanted or body is None:
        return _headers_part(head, utf8=utf8), False
    if max_full_size is not None and len(head) + len(body) > max_full_size:
        return _headers_part(head, utf8=utf8), True
    try:
        return _full_part(head, body, utf8=utf8, marker=marker), False
    except (OSError, RuntimeError, SMTPError):
        # The body cannot be read (gone, failed): the sender still hears
        # about the failure, with the header at least.
        return _headers_part(head, utf8=utf8), False


# --- The DSN ----------------------------------------------------------------------


def _new_boundary() -> str:
    """`=_kw_` and 128 random bits: 37 characters, within RFC 2046's 70.

    `=_` cannot appear in quoted-printable or base64 text (an `=` there is
    followed by two hex digits or ends the line), so only the parts sent
    as they are can hold it.
    """
    return f"=_kw_{secrets.token_hex(16)}"


def _marker(boundary: str) -> bytes:
    return f"--{boundary}".encode("ascii")


def _boundary(parts: Sequence[_Part], first: str) -> str:
    """`first`, or another random boundary, that no line of `parts` starts with.

    RFC 2046 §5.1.1: the boundary must not occur in the content. Random
    bits make a second round practically never happen, and a sender cannot
    aim at a boundary it does not know.
    """
    boundary = first
    while any(part.has_line(_marker(boundary)) for part in parts):
        boundary = _new_boundary()
    return boundary


def _domain(name: str) -> str:
    """A domain fit for a Message-Id and a From: A-labels, no stray characters."""
    text = re.sub(r"[^A-Za-z0-9.\-\[\]:]", "", _alabels(_clean(name)))
    return text or "localhost"


def _to(sender: str, *, utf8: bool) -> str:
    """The original sender as an address field.

    Without SMTPUTF8 the domain is written in A-labels; a non-ASCII local
    part stays UTF-8 (RFC 6532): the DSN cannot reach such an address
    without SMTPUTF8 anyway. An empty sender (the caller should not send a
    DSN to `<>`, RFC 3461 §6.2) still gives a valid field.
    """
    addr = _mailbox(_clean(sender), utf8=utf8)
    return addr or "undisclosed-recipients:;"


def _dsn_header(
    report: Report, *, boundary: str, domain: str, now: datetime, eight_bit: bool
) -> Header:
    subject = _SUBJECTS[_worst(report.recipients)] if report.recipients else "Delivery report"
    content_type = f'multipart/report; report-type=delivery-status; boundary="{boundary}"'
    fields = [
        ("Date", format_date(_utc(now))),
        ("Message-Id", f"<{secrets.token_hex(16)}@{domain}>"),
        ("From", f"Mail Delivery System <MAILER-DAEMON@{domain}>"),
        ("To", _to(report.sender, utf8=report.smtputf8)),
        ("Subject", subject),
        ("MIME-Version", "1.0"),
        ("Content-Type", content_type),
        ("Content-Transfer-Encoding", "8bit" if eight_bit else "7bit"),
        ("Auto-Submitted", "auto-replied"),
    ]
    return Header([Field(name, fold_field(name, value)) for name, value in fields])


@dataclass(slots=True)
class DSNMessage:
    """A built DSN: its header, and its body as a stream (`chunks`).

    `header.to_bytes()` followed by every chunk is the whole message, with
    CRLF line ends and no line over 998 octets.
    """

    header: Header
    _parts: tuple[_Part, ...] = field(default=(), repr=False)
    _boundary: str = field(default="", repr=False)

    def chunks(self) -> Iterator[bytes]:
        """The body: a preamble, the parts, the closing boundary.

        The returned message is read from its buffer block by block, so no
        chunk is much larger than `_READ` and memory stays bounded whatever
        the message's size. Each call starts again from the beginning.
        """
        yield b"This is a MIME-encapsulated delivery status notification."
        for part in self._parts:
            yield part.head(self._boundary)
            if part.returned is not None:
                yield from part.returned.encoded()
            else:
                yield part.content
        yield f"\r\n--{self._boundary}--\r\n".encode("ascii")


def build(
    report: Report,
    original_header: Header,
    original_body: Buffer | None,
    *,
    autogen_domain: str,
    now: datetime | None = None,
    max_full_size: int | None = None,
) -> DSNMessage:
    """The DSN for `report` about the message with this header and body.

    `autogen_domain` names the Message-Id's and MAILER-DAEMON's domain;
    `now` the Date (default: the clock). With RET=FULL and a failure the
    body is returned unless it is over `max_full_size` bytes (None: no
    limit). Never raises on odd input; reads a file-backed body once here
    and again in `chunks`.
    """
    utf8 = report.smtputf8
    first = _new_boundary()
    original, too_big = _original_part(
        report, original_header, original_body, max_full_size, _marker(first)
    )
    text = _human_text(report, full=original.returned is not None, too_big=too_big)
    parts = (_text_part(text, utf8=utf8), _status_part(report), original)
    boundary = _boundary(parts, first)
    header = _dsn_header(
        report,
        boundary=boundary,
        domain=_domain(autogen_domain),
        now=now if now is not None else datetime.now(UTC),
        eight_bit=any(p.encoding == "8bit" for p in parts),
    )
    return DSNMessage(header, parts, boundary)
