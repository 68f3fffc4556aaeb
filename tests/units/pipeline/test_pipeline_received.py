"""The Received field: exact text and folding (docs/server.md, "Received"),
with the cases of maddy's own tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pipefakes import FAKES, deliver, meta, pipe

from kittiwake.message import ConnInfo, MsgMeta, SMTPOptions
from kittiwake.pipeline.received import format_date, received_field, received_value

NOW = dt.datetime(2024, 3, 5, 10, 0, 0, tzinfo=dt.UTC)
HOST = "mx.example.com"


def _meta(
    *,
    helo: str = "mx.example.org",
    rdns: str | None = "mx.example.org",
    ip: str | None = "127.0.0.1",
    proto: str = "ESMTP",
    utf8: bool = False,
    sender: str = "sender@example.org",
    submission: bool = False,
) -> MsgMeta:
    return MsgMeta(
        id="0f3a91c2",
        conn=ConnInfo(remote_ip=ip, helo=helo, rdns=rdns, proto=proto),
        smtp=SMTPOptions(smtputf8=utf8),
        original_from=sender,
        dont_trace_sender=submission,
    )


def test_edge_case_1_full_value() -> None:
    assert received_value(_meta(), HOST, NOW) == (
        "from mx.example.org (mx.example.org [127.0.0.1]) by mx.example.com "
        "(envelope-sender <sender@example.org>) with ESMTP id 0f3a91c2; "
        "Tue, 05 Mar 2024 10:00:00 +0000"
    )


def test_edge_case_2_no_ptr_name() -> None:
    value = received_value(_meta(rdns=None), HOST, NOW)
    assert value is not None and value.startswith("from mx.example.org ([127.0.0.1]) by ")


def test_edge_case_12_submission_does_not_trace_the_client() -> None:
    value = received_value(_meta(submission=True), HOST, NOW)
    assert value is not None
    assert value.startswith(
        "by mx.example.com (envelope-sender <sender@example.org>) with ESMTP id 0f3a91c2"
    )


def test_edge_case_19_idn_helo_without_smtputf8() -> None:
    value = received_value(_meta(helo="\u51f1\u51f1.invalid"), HOST, NOW)
    assert value is not None and value.startswith("from xn--y9qa.invalid (")


def test_edge_case_20_idn_ptr_without_smtputf8() -> None:
    value = received_value(_meta(rdns="\u51f1\u51f1.invalid."), HOST, NOW)
    assert value is not None and "(xn--y9qa.invalid [127.0.0.1])" in value


def test_edge_case_21_idn_ptr_with_smtputf8() -> None:
    value = received_value(_meta(rdns="\u51f1\u51f1.invalid.", utf8=True), HOST, NOW)
    assert value is not None
    assert "(\u51f1\u51f1.invalid [127.0.0.1])" in value and "with UTF8ESMTP " in value


def test_edge_case_22_idn_helo_with_smtputf8() -> None:
    value = received_value(_meta(helo="\u51f1\u51f1.invalid", utf8=True), HOST, NOW)
    assert value is not None
    assert value.startswith("from \u51f1\u51f1.invalid (") and "with UTF8ESMTP " in value


def test_a_label_helo_shown_as_u_label_with_smtputf8() -> None:
    value = received_value(_meta(helo="xn--y9qa.invalid", utf8=True), HOST, NOW)
    assert value is not None and value.startswith("from \u51f1\u51f1.invalid (")


def test_hostname_and_sender_follow_the_idna_rule() -> None:
    ascii_value = received_value(_meta(sender="u@\u00e9.example"), "mx.\u00e9.example", NOW)
    assert ascii_value is not None
    assert "by mx.xn--9ca.example (envelope-sender <u@xn--9ca.example>)" in ascii_value
    utf8_value = received_value(
        _meta(sender="\u00fc@xn--9ca.example", utf8=True), "mx.xn--9ca.example", NOW
    )
    assert utf8_value is not None
    assert "by mx.\u00e9.example (envelope-sender <\u00fc@\u00e9.example>)" in utf8_value


def test_undecodable_names_are_left_out() -> None:
    value = received_value(_meta(helo="xn--zz-.invalid", utf8=True), HOST, NOW)
    assert value is not None and value.startswith("(mx.example.org [127.0.0.1]) by ")


def test_null_sender_has_no_envelope_sender() -> None:
    value = received_value(_meta(sender=""), HOST, NOW)
    assert value is not None and "envelope-sender" not in value
    assert "by mx.example.com with ESMTP id" in value


@pytest.mark.parametrize(
    ("proto", "utf8", "text"),
    [
        ("ESMTP", False, "with ESMTP id"),
        ("ESMTPS", False, "with ESMTPS id"),
        ("ESMTPS", True, "with UTF8ESMTPS id"),
        ("LMTP", False, "with LMTP id"),
    ],
)
def test_protocol(proto: str, utf8: bool, text: str) -> None:
    value = received_value(_meta(proto=proto, utf8=utf8), HOST, NOW)
    assert value is not None and text in value


def test_unix_socket_client_has_no_address_part() -> None:
    value = received_value(_meta(ip=None), HOST, NOW)
    assert value is not None and value.startswith("from mx.example.org by mx.example.com ")


@pytest.mark.parametrize(
    ("ip", "shown"),
    [("::1", "[::1]"), ("::ffff:127.0.0.2", "[127.0.0.2]"), ("2001:DB8::1", "[2001:db8::1]")],
)
def test_ip_text(ip: str, shown: str) -> None:
    value = received_value(_meta(ip=ip, rdns=None), HOST, NOW)
    assert value is not None and f"({shown})" in value


def test_newlines_are_stripped() -> None:
    value = received_value(_meta(helo="evil\r\nX-Injected: 1"), HOST, NOW)
    assert value is not None and "\n" not in value and "\r" not in value


def test_locally_generated_message_has_none() -> None:
    assert received_value(MsgMeta(id="0f3a91c2"), HOST, NOW) is None
    assert received_field(MsgMeta(id="0f3a91c2"), HOST, NOW) is None


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (dt.datetime(2024, 3, 5, 10, 0, 0, tzinfo=dt.UTC), "Tue, 05 Mar 2024 10:00:00 +0000"),
        (
            dt.datetime(2024, 12, 1, 23, 59, 7, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "Sun, 01 Dec 2024 23:59:07 +0100",
        ),
        (
            dt.datetime(
                2001, 7, 9, 1, 2, 3, tzinfo=dt.timezone(-dt.timedelta(hours=3, minutes=30))
            ),
            "Mon, 09 Jul 2001 01:02:03 -0330",
        ),
    ],
)
def test_date_format(when: dt.datetime, text: str) -> None:
    assert format_date(when) == text


def test_folding_of_the_spec_example() -> None:
    m = _meta(helo="localhost", rdns="client.maddy.test", sender="sender@maddy.test")
    field = received_field(m, "maddy.test", NOW)
    assert field == (
        b"Received: from localhost (client.maddy.test [127.0.0.1]) by maddy.test\r\n"
        b" (envelope-sender <sender@maddy.test>) with ESMTP id 0f3a91c2; Tue, 05 Mar\r\n"
        b" 2024 10:00:00 +0000\r\n"
    )


def test_edge_case_41_default_field_folds_over_three_lines() -> None:
    m = _meta(helo="localhost", rdns=None, sender="testing@maddy.test")
    field = received_field(m, "mx.maddy.test", NOW)
    assert field is not None
    lines = field.split(b"\r\n")[:-1]
    assert len(lines) == 3
    assert len(lines[0]) <= len(b"Received: ") + 66
    assert all(len(line) <= 76 and line.startswith(b" ") for line in lines[1:])


def test_long_word_uses_the_hard_limit() -> None:
    m = _meta(helo="h" * 90 + ".example", rdns=None)
    field = received_field(m, HOST, NOW)
    assert field is not None
    lines = field.split(b"\r\n")
    # The break goes before the last space within the limit, however early...
    assert lines[0] == b"Received: from"
    # ...and when no space keeps a line within 76, the limit 998 is tried the
    # same way: the break goes before the last space within 998 characters.
    assert lines[1].startswith(b" " + b"h" * 90 + b".example ([127.0.0.1]) by ")
    assert lines[1].endswith(b" 10:00:00")
    assert lines[2:] == [b" +0000", b""]


async def test_pipeline_adds_it_once_on_top(tmp_path: Path) -> None:
    pipeline = pipe("  hostname mx.example.com\n  deliver_to test t\n", tmp_path)
    await deliver(pipeline, "sender@example.org", ["a@x.org", "b@x.org"], m=meta())
    got = FAKES["t"].committed[0].header
    assert got.startswith(
        b"Received: from mx.example.org (mx.example.org [127.0.0.1]) by mx.example.com\r\n"
        b" (envelope-sender <sender@example.org>) with ESMTP id 0f3a91c2; Tue, 05 Mar\r\n"
        b" 2024 10:00:00 +0000\r\nFrom: a@example.org\r\n"
    )
    assert FAKES["t"].committed[0].rcpts == ["a@x.org", "b@x.org"]
    assert FAKES["t"].committed[0].data == b"foobar\r\n"


def test_the_kept_clauses_are_bounded_and_each_client_gets_its_own() -> None:
    """The clauses before `id` are kept per client (256 at most): at the
    bound all are kept, past it the oldest go, and each value is the one
    its own client's inputs give."""
    from kittiwake.pipeline import received

    received._head.cache_clear()
    bound = received._head.cache_info().maxsize
    assert bound == 256
    for i in range(bound):
        value = received_value(_meta(helo=f"h{i}.example.org"), HOST, NOW)
        assert value is not None and value.startswith(f"from h{i}.example.org (")
    assert received._head.cache_info().currsize == bound
    late = received_value(_meta(helo="late.example.org", sender="other@example.org"), HOST, NOW)
    assert late is not None and "(envelope-sender <other@example.org>)" in late
    assert received._head.cache_info().currsize == bound
    first = received_value(_meta(helo="h0.example.org"), HOST, NOW)  # gone: made afresh
    assert first is not None and first.startswith(
        "from h0.example.org (mx.example.org [127.0.0.1])"
    )
