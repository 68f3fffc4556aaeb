"""Submission header preprocessing (docs/submission.md), with maddy's own cases.

The step table drives whole headers through `prepare_submission_header`;
the grammar tables drive the address and date parsers on their own; the
property tests check that nothing but the documented errors ever escapes.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.errors import SMTPError
from kittiwake.message.header import Header
from kittiwake.message.mailaddr import (
    AddressSyntaxError,
    Mailbox,
    field_value,
    parse_address,
    parse_address_list,
)
from kittiwake.message.maildate import DateSyntaxError, MailDate, format_date, parse_date
from kittiwake.server import submission
from kittiwake.server.submission import prepare_submission_header

HOST = "mx.example.com"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UUID_ID = re.compile(
    rb"Message-Id: <([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})"
    rb"@mx\.example\.com>\r\n"
)
COMPLETE = [
    "From: <hello@example.org>",
    "Date: Thu, 1 Jan 1970 00:00:00 +0000",
    "Message-ID: <a@example.org>",
]


def make(*lines: str) -> Header:
    return Header.parse(b"".join(line.encode() + b"\r\n" for line in lines))


def prepare(header: Header, now: datetime = EPOCH) -> None:
    prepare_submission_header(header, HOST, now=now)


def reply(*lines: str) -> str | None:
    """The reply `prepare` fails with (code, enhanced code, text), or None."""
    try:
        prepare(make(*lines))
    except SMTPError as exc:
        return str(exc)
    return None


# --- Every step and reply -------------------------------------------------------

STEPS = [
    # step 2: From required; empty counts as absent
    (
        ["To: a@b", "Date: 1 Jan 2024 10:00 +0000"],
        "554 5.6.0 Message does not contains a From header field",
    ),
    (["From:", "To: a@b"], "554 5.6.0 Message does not contains a From header field"),
    (["From:   ", "Message-ID: <x@y>"], "554 5.6.0 Message does not contains a From header field"),
    # step 3: Sender is one address
    (["From: a@b", "Sender: <x@y> junk"], "554 5.6.0 Invalid address in Sender"),
    (["From: a@b", "Sender: x@y, z@w"], "554 5.6.0 Invalid address in Sender"),
    (["From: a@b", "Sender: g:;"], "554 5.6.0 Invalid address in Sender"),
    (["From: a@b", "Sender: g: x@y, z@w;"], "554 5.6.0 Invalid address in Sender"),
    (["From: a@b", "Sender: g: x@y;"], None),  # a group of one is one address (Go)
    # step 4: To, Cc, Bcc, Reply-To are lists, in that order after Sender
    (["From: a@b", "To: nobody"], "554 5.6.0 Invalid address in To"),
    (["From: a@b", 'Cc: <x@y>,""'], "554 5.6.0 Invalid address in Cc"),
    (["From: a@b", "Bcc: x@"], "554 5.6.0 Invalid address in Bcc"),
    (["From: a@b", "Reply-To: <x@y"], "554 5.6.0 Invalid address in Reply-To"),
    (["From: a@b", "Reply-To: bad", "To: bad"], "554 5.6.0 Invalid address in To"),
    (["From: a@b", "To: bad", "Sender: bad"], "554 5.6.0 Invalid address in Sender"),
    (["From: bad", "To: bad"], "554 5.6.0 Invalid address in To"),
    (["From: a@b", "To:", "Cc:  ", "Bcc: undisclosed-recipients:;"], None),
    # step 5: From is a list
    (["From: bad"], "554 5.6.0 Invalid address in From"),
    (["From: undisclosed:;"], None),  # an empty list is a list (maddy too)
    # step 6: several authors need a Sender
    (["From: a@b, c@d"], "554 5.6.0 Missing Sender header field"),
    (["From: a@b, c@d", "Sender:"], "554 5.6.0 Missing Sender header field"),
    (["From: g: a@b, c@d;"], "554 5.6.0 Missing Sender header field"),
    (["From: a@b, c@d", "Sender: a@b"], None),
    (["From: a@b, c@d", "Sender: bad"], "554 5.6.0 Invalid address in Sender"),
    # step 7: Date must parse if present
    (["From: a@b", "Date: not a date"], "554 5.6.0 Malformed Date header"),
    (["From: a@b", "Date: 31 Feb 2024 10:00 +0000"], "554 5.6.0 Malformed Date header"),
    (["From: a@b", "Date: Thu, 1 Jan 1970 00:00:00 +0000 (UTC)"], None),
    (["From: a@b", "Date:"], None),  # empty: a Date is added
    # order: the earlier step wins
    (["To: bad"], "554 5.6.0 Message does not contains a From header field"),
    (["From: a@b, c@d", "Date: bad"], "554 5.6.0 Missing Sender header field"),
    (["From: bad", "Date: bad"], "554 5.6.0 Invalid address in From"),
]


@pytest.mark.parametrize(("lines", "expected"), STEPS)
def test_steps_and_replies(lines: list[str], expected: str | None) -> None:
    assert reply(*lines) == expected


def test_only_the_first_field_of_a_name_counts() -> None:
    assert reply("From: bad", "From: a@b") == "554 5.6.0 Invalid address in From"
    assert reply("From: a@b", "From: bad") is None
    assert reply("From:", "From: a@b") == "554 5.6.0 Message does not contains a From header field"
    assert reply("From: a@b", "Date: bad date", "Date: 1 Jan 2024 10:00 GMT") == (
        "554 5.6.0 Malformed Date header"
    )


def test_field_names_match_in_any_case() -> None:
    h = make("FROM: a@b", "message-id: <m@x>", "dAtE: 1 Jan 2024 10:00 +0000")
    before = h.to_bytes()
    prepare(h)
    assert h.to_bytes() == before
    assert reply("from: a@b", "to: bad") == "554 5.6.0 Invalid address in To"


def test_failure_leaves_the_header_untouched() -> None:
    h = make("From: a@b", "To: bad")
    before = h.to_bytes()
    with pytest.raises(SMTPError):
        prepare(h)
    assert h.to_bytes() == before  # no Message-Id or Date left behind


def test_errors_carry_log_details_not_shown_to_the_client() -> None:
    with pytest.raises(SMTPError) as info:
        prepare(make("From: a@b", "Cc: <x@y> trailing"))
    err = info.value
    assert (err.code, err.enhanced, err.message) == (554, (5, 6, 0), "Invalid address in Cc")
    assert err.reason == "expected comma"
    assert err.misc == {"modifier": "submission_prepare", "addr": "<x@y> trailing"}


def test_message_id_generation_failure_is_an_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> uuid.UUID:
        raise OSError("no entropy")

    monkeypatch.setattr(submission.uuid, "uuid4", broken)
    assert reply("From: a@b") == "554 5.0.0 Internal server error"
    assert reply(*COMPLETE) is None  # not needed, not generated


# --- maddy's own test cases, verbatim ----------------------------------------------


def test_edge_23_no_from_fails() -> None:
    assert reply("To: a@example.org", "Subject: hi") is not None


def test_edge_24_from_with_empty_quoted_member_fails() -> None:
    assert reply('From: <hello@example.org>, ""') == "554 5.6.0 Invalid address in From"


def test_edge_25_from_bare_word_fails() -> None:
    assert reply("From:  adasda") == "554 5.6.0 Invalid address in From"


@pytest.mark.parametrize("field", ["Reply-To", "Cc"])
def test_edge_26_reply_to_or_cc_with_empty_member_fails(field: str) -> None:
    assert reply("From: <hello@example.org>", f'{field}: <hello@example.org>, ""') == (
        f"554 5.6.0 Invalid address in {field}"
    )


def test_edge_27_sender_with_trailing_text_fails() -> None:
    assert reply("From: <a@example.org>", "Sender: <hello@example.org> asd") == (
        "554 5.6.0 Invalid address in Sender"
    )


def test_edge_28_two_authors_need_sender_else_header_unchanged() -> None:
    assert (
        reply("From: <a@example.org>, <b@example.org>") == "554 5.6.0 Missing Sender header field"
    )
    h = make(
        "From: <a@example.org>, <b@example.org>",
        "Sender: <a@example.org>",
        "Date: Tue, 5 Mar 2024 10:00:00 +0100",
        "Message-Id: <1@example.org>",
        "Subject: =?utf-8?q?caf=C3=A9?=",
    )
    before = h.to_bytes()
    prepare(h)
    assert h.to_bytes() == before


def test_edge_29_missing_message_id_is_added_and_nothing_else_changes() -> None:
    h = make("From: <a@example.org>", "Date: Tue, 5 Mar 2024 10:00:00 +0100", "Subject: x")
    before = h.to_bytes()
    prepare(h)
    out = h.to_bytes()
    m = UUID_ID.match(out)
    assert m is not None
    assert uuid.UUID(m.group(1).decode()).version == 4
    assert out[m.end() :] == before
    assert h.fields[0].name == "Message-Id"


def test_edge_30_unparsable_date_fails() -> None:
    assert reply("From: <a@example.org>", "Date: not a date") == "554 5.6.0 Malformed Date header"


def test_edge_31_date_added_from_the_clock() -> None:
    h = make("From: <a@example.org>", "Message-ID: <1@example.org>")
    before = h.to_bytes()
    prepare(h, EPOCH)
    assert h.to_bytes() == b"Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n" + before


def test_both_added_date_above_message_id() -> None:
    h = make("From: a@b", "Subject: s")
    prepare(h, datetime(2024, 3, 5, 9, 7, 3, tzinfo=UTC))
    out = h.to_bytes()
    first, rest = out.split(b"\r\n", 1)
    assert first == b"Date: Tue, 5 Mar 2024 09:07:03 +0000"
    m = UUID_ID.match(rest)
    assert m is not None
    assert rest[m.end() :] == b"From: a@b\r\nSubject: s\r\n\r\n"
    assert [f.name for f in h] == ["Date", "Message-Id", "From", "Subject"]


def test_empty_fields_are_replaced_not_duplicated() -> None:
    # maddy's Header.Set: every field of that name goes, the new one is on top.
    h = make("Message-ID:", "From: a@b", "Date:  ", "Subject: s", "Date: 2 Jan 2024 10:00 +0000")
    prepare(h, EPOCH)
    assert [f.name for f in h] == ["Date", "Message-Id", "From", "Subject"]
    assert h.fields[0].raw == b"Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n"
    assert UUID_ID.match(h.fields[1].raw)


def test_hostname_is_used_as_given() -> None:
    h = make("From: a@b", "Date: 1 Jan 2024 10:00 +0000")
    prepare_submission_header(h, "xn--y9qa.example", now=EPOCH)
    assert re.fullmatch(rb"Message-Id: <[0-9a-f-]{36}@xn--y9qa\.example>\r\n", h.fields[0].raw)


def test_message_ids_differ() -> None:
    ids = set()
    for _ in range(20):
        h = make("From: a@b", "Date: 1 Jan 2024 10:00 +0000")
        prepare(h)
        ids.add(h.fields[0].raw)
    assert len(ids) == 20


def test_default_clock_is_now() -> None:
    h = make("From: a@b", "Message-ID: <x@y>")
    prepare_submission_header(h, HOST)
    value = h.fields[0].value
    parsed = parse_date(value)
    now = datetime.now(UTC)
    assert abs(datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC) - now) < timedelta(2)


def test_folded_fields_are_read_unfolded() -> None:
    h = Header.parse(
        b"From: John\r\n\t<a@b>,\r\n  c@d\r\nSender: a@b\r\n"
        b"Date: Thu, 1 Jan 1970\r\n\t00:00:00 +0000\r\nMessage-ID: <m@x>\r\n"
    )
    assert field_value(h, "date") == "Thu, 1 Jan 1970 00:00:00 +0000"
    assert field_value(h, "From") == "John <a@b>, c@d"
    before = h.to_bytes()
    prepare(h)
    assert h.to_bytes() == before


def test_invalid_utf8_is_invalid() -> None:
    h = Header.parse(b"From: J\xff <a@b>\r\n")
    with pytest.raises(SMTPError) as info:
        prepare(h)
    assert info.value.message == "Invalid address in From"
    h = Header.parse(b"From: \xc3\xa9l\xc3\xa8ve@\xc3\xa9cole.example\r\n")  # valid UTF-8
    prepare(h)


# --- The address grammar -----------------------------------------------------------

VALID_LISTS = [
    ("a@b", [("", "a@b")]),
    ("  a@b  ", [("", "a@b")]),
    ("<a@b>", [("", "a@b")]),
    ("< a@b>", [("", "a@b")]),
    ("a@ b", [("", "a@b")]),
    ("John <a@b>", [("John", "a@b")]),
    ("John<a@b>", [("John", "a@b")]),
    (
        "John Q. Public <john.q.public@example.com>",
        [("John Q. Public", "john.q.public@example.com")],
    ),
    ('"John Doe" <a@b>', [("John Doe", "a@b")]),
    ('"John \\"Q\\" Doe" <a@b>', [('John "Q" Doe', "a@b")]),
    ('"" <a@b>', [("", "a@b")]),
    ('"quoted local"@example.org', [("", "quoted local@example.org")]),
    ('"a..b"@c', [("", "a..b@c")]),
    ("a@b (Comment Name)", [("Comment Name", "a@b")]),
    ("a@b (x) , c@d (y)", [("x", "a@b"), ("y", "c@d")]),
    ("John (middle) Doe <a@b>", [("John Doe", "a@b")]),
    ("<a@b> (trailing comment)", [("", "a@b")]),
    ("a@b, c@d", [("", "a@b"), ("", "c@d")]),
    (",a@b,,c@d,", [("", "a@b"), ("", "c@d")]),
    ("a@b, , ,", [("", "a@b")]),
    ("group: a@b, John <c@d>;", [("", "a@b"), ("John", "c@d")]),
    ("group:;", []),
    ("undisclosed-recipients: ;", []),
    ("g1: a@b;, g2: c@d; (c)", [("", "a@b"), ("", "c@d")]),
    ("=?utf-8?q?J=C3=B6rg?= <j@x>", [("Jörg", "j@x")]),
    ("=?UTF-8?B?SsO2cmc=?= <j@x>", [("Jörg", "j@x")]),
    ("=?utf-8?q?a?= =?utf-8?q?b?= <j@x>", [("ab", "j@x")]),
    ("=?iso-8859-1?q?J=F6rg?= Doe <j@x>", [("Jörg Doe", "j@x")]),
    ("=?windows-1252?q?=80uro?= <j@x>", [("€uro", "j@x")]),  # [deviation] Go refuses
    ("=?utf-8?q?bad=ZZ?= <j@x>", [("=?utf-8?q?bad=ZZ?=", "j@x")]),  # not decodable: a word
    ("John =?x-unknown?q?a?= <j@x>", [("John", "j@x")]),  # Go drops the word
    ("a@b (=?utf-8?q?J=C3=B6rg?=)", [("Jörg", "a@b")]),
    ("jörg@bücher.example", [("", "jörg@bücher.example")]),
    ("Jörg <j@x>", [("Jörg", "j@x")]),
    ("a@[192.0.2.1]", [("", "a@[192.0.2.1]")]),
    ("a@[IPv6:2001:db8::1]", [("", "a@[IPv6:2001:db8::1]")]),
    ("a@[::ffff:192.0.2.1]", [("", "a@[::ffff:192.0.2.1]")]),
    ("!#$%&'*+-/=?^_`{|}~@x", [("", "!#$%&'*+-/=?^_`{|}~@x")]),
    ("a.b.c@d.e.f", [("", "a.b.c@d.e.f")]),
    ("a@-", [("", "a@-")]),
    ("Mr. Smith <a@b>", [("Mr. Smith", "a@b")]),
]


@pytest.mark.parametrize(("text", "expected"), VALID_LISTS)
def test_valid_address_lists(text: str, expected: list[tuple[str, str]]) -> None:
    assert parse_address_list(text) == [Mailbox(n, a) for n, a in expected]


INVALID_LISTS = [
    "",
    ",",
    '""',
    '<hello@example.org>, ""',
    "adasda",
    " adasda",
    "John Doe",
    "<hello@example.org> asd",
    "a@b c@d",
    "a@b <c@d>",
    "<a@b",
    "<a@b >",
    "<>",
    "<@b>",
    "a@",
    "@b",
    "a @b",
    "a@b.",
    ".a@b",
    "a..b@c",
    "a@b..c",
    'a"b"@c',
    '"unclosed@b',
    '"a\x01"@b',
    "a@b (unclosed",
    "a@b, (unclosed",
    "g: a@b",
    "g: a@b,,c@d;",
    "g: h: a@b;;",
    "g: a@b; junk",
    "John (unclosed <a@b>",
    "=?x-unknown?q?a?= <a@b>",
    "=?base64?q?a?= <a@b>",
    "a@b (=?x-unknown?q?a?=)",
    "a@[1.2.3]",
    "a@[::1]",
    "a@[ipv6:::1]",
    "a@[IPv6:fe80::1%eth0]",
    "a@[1.2.3.4",
    "a@[1.2.3.4 ]",
    "a@[01.2.3.4]",
    "a\tb@c",
    "a@b\x7f",
    "a@b;",
    "a@b,c",
    "J\udcff <a@b>",
    "a@b\udcff",
]


@pytest.mark.parametrize("text", INVALID_LISTS)
def test_invalid_address_lists(text: str) -> None:
    with pytest.raises(AddressSyntaxError):
        parse_address_list(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a@b", Mailbox("", "a@b")),
        ("Name <a@b> (c)", Mailbox("Name", "a@b")),
        ("g: a@b;", Mailbox("", "a@b")),
    ],
)
def test_single_address(text: str, expected: Mailbox) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["a@b, c@d", "g:;", "g: a@b, c@d;", "<a@b> x", ",a@b", "a@b,", ""])
def test_not_a_single_address(text: str) -> None:
    with pytest.raises(AddressSyntaxError):
        parse_address(text)


def test_error_text_names_the_problem() -> None:
    with pytest.raises(AddressSyntaxError, match="missing '@' or angle-addr"):
        parse_address_list("adasda")
    with pytest.raises(AddressSyntaxError, match="no angle-addr"):
        parse_address_list('"Full Name"')
    with pytest.raises(AddressSyntaxError, match="expected comma"):
        parse_address_list("<a@b> asd")
    with pytest.raises(AddressSyntaxError, match="charset not supported"):
        parse_address_list("=?x-unknown?q?a?= <a@b>")


# --- The date grammar -------------------------------------------------------------

VALID_DATES = [
    ("Thu, 1 Jan 1970 00:00:00 +0000", MailDate(1970, 1, 1, 0, 0, 0, "+0000")),
    ("Tue, 05 Mar 2024 10:00:00 +0100", MailDate(2024, 3, 5, 10, 0, 0, "+0100")),
    ("5 Mar 2024 10:00 -0700", MailDate(2024, 3, 5, 10, 0, 0, "-0700")),
    (" 5 Mar 2024 10:00 -0700", MailDate(2024, 3, 5, 10, 0, 0, "-0700")),
    ("Tue,  5 Mar 2024 10:00 -0700", MailDate(2024, 3, 5, 10, 0, 0, "-0700")),
    ("5   Mar  2024   10:00:59    GMT", MailDate(2024, 3, 5, 10, 0, 59, "GMT")),
    ("tue, 5 MAR 2024 10:00 UTC", MailDate(2024, 3, 5, 10, 0, 0, "UTC")),
    ("5 Mar 24 10:00 EST", MailDate(2024, 3, 5, 10, 0, 0, "EST")),
    ("5 Mar 68 10:00 EST", MailDate(2068, 3, 5, 10, 0, 0, "EST")),
    ("5 Mar 69 10:00 EST", MailDate(1969, 3, 5, 10, 0, 0, "EST")),
    ("5 Mar 99 1:02:03 PDT", MailDate(1999, 3, 5, 1, 2, 3, "PDT")),
    ("29 Feb 2000 23:59:59 +2460", MailDate(2000, 2, 29, 23, 59, 59, "+2460")),
    ("29 Feb 00 10:00 CEST", MailDate(2000, 2, 29, 10, 0, 0, "CEST")),
    ("1 Jan 2024 10:00:00.123456 +0000", MailDate(2024, 1, 1, 10, 0, 0, "+0000")),
    ("1 Jan 2024 10:00:00,5 +0000", MailDate(2024, 1, 1, 10, 0, 0, "+0000")),
    ("Thu, 1 Jan 1970 00:00:00 +0000 (UTC)", MailDate(1970, 1, 1, 0, 0, 0, "+0000")),
    (
        "Thu, 1 Jan 1970 00:00:00 +0000\t(a comment (nested))",
        MailDate(1970, 1, 1, 0, 0, 0, "+0000"),
    ),
    ("1 Jan 2024 10:00 GMT+5", MailDate(2024, 1, 1, 10, 0, 0, "GMT+5")),
    ("1 Jan 2024 10:00 GMT-23", MailDate(2024, 1, 1, 10, 0, 0, "GMT-23")),
    ("1 Jan 2024 10:00 +05", MailDate(2024, 1, 1, 10, 0, 0, "+05")),
    ("1 Jan 2024 10:00 ChST", MailDate(2024, 1, 1, 10, 0, 0, "ChST")),
    ("1 Jan 2024 10:00 WITA", MailDate(2024, 1, 1, 10, 0, 0, "WITA")),
    ("1 Jan 2024 10:00 ACWST", MailDate(2024, 1, 1, 10, 0, 0, "ACWST")),
    ("1 Jan 0000 10:00 +0000", MailDate(0, 1, 1, 10, 0, 0, "+0000")),
    ("1 Jan -5 10:00 +0000", MailDate(1995, 1, 1, 10, 0, 0, "+0000")),  # Go's atoi takes a sign
    ("31 Dec 9999 23:59 +0000", MailDate(9999, 12, 31, 23, 59, 0, "+0000")),
]


@pytest.mark.parametrize(("text", "expected"), VALID_DATES)
def test_valid_dates(text: str, expected: MailDate) -> None:
    assert parse_date(text) == expected


INVALID_DATES = [
    "",
    "not a date",
    "2024-03-05T10:00:00Z",
    "Tue, 5 Mar 2024",
    "Tue, 5 Mar 2024 10:00",
    "Tue 5 Mar 2024 10:00 +0000",
    "Tue,5 Mar 2024 10:00 +0000",
    "Tuesday, 5 Mar 2024 10:00 +0000",
    "Tux, 5 Mar 2024 10:00 +0000",
    "5 March 2024 10:00 +0000",
    "5 Mrz 2024 10:00 +0000",
    "5\tMar 2024 10:00 +0000",
    "  5 Mar 2024 10:00 +0000",
    "123 Mar 2024 10:00 +0000",
    "0 Mar 2024 10:00 +0000",
    "32 Mar 2024 10:00 +0000",
    "31 Apr 2024 10:00 +0000",
    "29 Feb 2023 10:00 +0000",
    "29 Feb 1900 10:00 +0000",
    "5 Mar 202 10:00 +0000",
    "5 Mar 20245 10:00 +0000",
    "5 Mar +024 10:00 +0000",
    "5 Mar 2024 24:00 +0000",
    "5 Mar 2024 10:60 +0000",
    "5 Mar 2024 10:00:60 +0000",
    "5 Mar 2024 10:0 +0000",
    "5 Mar 2024 100:00 +0000",
    "5 Mar 2024 10:00:5 +0000",
    "5 Mar 2024 10:00. +0000",
    "5 Mar 2024 10:00 +2500",
    "5 Mar 2024 10:00 +2461",
    "5 Mar 2024 10:00 +05:30",
    "5 Mar 2024 10:00 +5",
    "5 Mar 2024 10:00 +24",
    "5 Mar 2024 10:00 0000",
    "5 Mar 2024 10:00 UT",
    "5 Mar 2024 10:00 Z",
    "5 Mar 2024 10:00 est",
    "5 Mar 2024 10:00 ABCD",
    "5 Mar 2024 10:00 ABCDEF",
    "5 Mar 2024 10:00 UTCX",
    "5 Mar 2024 10:00 GMT+24",
    "5 Mar 2024 10:00 GMT+",
    "5 Mar 2024 10:00 GMTT",
    "5 Mar 2024 10:00 +0000 extra",
    "5 Mar 2024 10:00 +0000 (unclosed",
    "5 Mar 2024 10:00 +0000(no space)",
    "5 Mar 2024 10:00 +0000 (a) b",
    "(only a comment)",
    "\u0665 Mar 2024 10:00 +0000",  # ARABIC-INDIC DIGIT FIVE is no digit to Go
    "5 Mar 2024 10:00 +\u0660\u0660\u0660\u0660",
]


@pytest.mark.parametrize("text", INVALID_DATES)
def test_invalid_dates(text: str) -> None:
    with pytest.raises(DateSyntaxError):
        parse_date(text)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (EPOCH, "Thu, 1 Jan 1970 00:00:00 +0000"),
        (datetime(2024, 3, 5, 9, 7, 3, tzinfo=UTC), "Tue, 5 Mar 2024 09:07:03 +0000"),
        (datetime(2024, 12, 31, 23, 59, 59), "Tue, 31 Dec 2024 23:59:59 +0000"),  # naive = UTC
        (
            datetime(2024, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))),
            "Sun, 31 Dec 2023 22:30:00 +0000",
        ),
        (datetime(999, 5, 6, 7, 8, 9, tzinfo=UTC), "Mon, 6 May 0999 07:08:09 +0000"),
    ],
)
def test_format_date(moment: datetime, expected: str) -> None:
    assert format_date(moment) == expected
    parse_date(expected)  # what we write, we accept


# --- Properties ---------------------------------------------------------------------

_HEADERISH = st.text(
    alphabet=st.sampled_from(list('abAZ09@.,;:<>()"\\[] \t=?_-+é\x00\x7f\udcff')), max_size=60
)


@settings(max_examples=400, deadline=None)
@given(_HEADERISH)
def test_address_parsers_raise_only_their_error(text: str) -> None:
    for parse in (parse_address_list, parse_address):
        try:
            parse(text)
        except AddressSyntaxError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_address_parsers_on_any_text(text: str) -> None:
    try:
        parse_address_list(text)
    except AddressSyntaxError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("MonJaFebTuGMTESTZ+-0123456789:,.() \t")), max_size=45)
)
def test_date_parser_raises_only_its_error(text: str) -> None:
    try:
        parse_date(text)
    except DateSyntaxError:
        pass


_ATOM = st.text(
    alphabet=st.sampled_from(list("abcXYZ019!#$%&'*+-/=?^_`{|}~é")), min_size=1, max_size=8
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_ATOM, _ATOM, st.booleans()), min_size=1, max_size=4))
def test_generated_valid_lists_parse(parts: list[tuple[str, str, bool]]) -> None:
    text = ", ".join(
        f'"{local}" <{local}@{domain}>' if named else f"{local}@{domain}"
        for local, domain, named in parts
    )
    got = parse_address_list(text)
    assert [m.address for m in got] == [f"{local}@{domain}" for local, domain, _ in parts]


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)))
def test_every_formatted_date_parses(moment: datetime) -> None:
    got = parse_date(format_date(moment))
    assert (got.year, got.month, got.day) == (moment.year, moment.month, moment.day)
    assert (got.hour, got.minute, got.second) == (moment.hour, moment.minute, moment.second)


_VALUES = st.one_of(
    _HEADERISH,
    st.sampled_from(["a@b", "A <a@b>", "a@b, c@d", "", " ", "1 Jan 2024 10:00 +0000", "<m@x>"]),
)
_NAMES = st.sampled_from(["From", "Sender", "To", "Cc", "Bcc", "Reply-To", "Date", "Message-ID"])


def _kept(header: Header) -> list[bytes]:
    return [f.raw for f in header if f.name.lower() not in ("date", "message-id")]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
def test_prepare_raises_only_smtp_errors(fields: list[tuple[str, str]]) -> None:
    raw = b"".join(
        f"{name}: {value}".encode("utf-8", "surrogateescape") + b"\r\n" for name, value in fields
    )
    header = Header.parse(raw.replace(b"\x00", b""))
    before = header.to_bytes()
    original = Header.parse(raw.replace(b"\x00", b""))
    try:
        prepare(header)
    except SMTPError as exc:
        assert exc.code == 554
        assert header.to_bytes() == before
    else:
        # Every other field is kept as it was; a Date or Message-Id we add is
        # the only one of its name.
        assert _kept(header) == _kept(original)
        for name in ("Date", "Message-ID"):
            added = not field_value(original, name)
            assert header.count(name) == (1 if added else original.count(name))
            assert field_value(header, name)
