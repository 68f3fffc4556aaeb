"""`kittiwake sendmail` without a server: the message, the options, the endpoint chosen."""

from __future__ import annotations

import pytest

from kittiwake.cli.sendmail import UsageError, parse
from kittiwake.config.parser import parse_text
from kittiwake.sendmail.endpoint import Target, from_config, from_url
from kittiwake.sendmail.message import read_message


def test_bare_lf_becomes_crlf_and_the_header_is_kept_byte_for_byte() -> None:
    message = read_message(b"Subject:  x \nX-Folded: a\n\tb\n\nbody\r\nmore\n", dot_ends=True)
    assert message.to_bytes() == b"Subject:  x \r\nX-Folded: a\r\n\tb\r\n\r\nbody\r\nmore\r\n"


def test_a_message_without_header_or_separator() -> None:
    assert read_message(b"just text\nline\n", dot_ends=True).to_bytes() == (
        b"\r\njust text\r\nline\r\n"
    )
    # The header ends at the first line that cannot be a field.
    message = read_message(b"Subject: s\nnot a field\n", dot_ends=True)
    assert message.names() == ["subject"]
    assert message.to_bytes() == b"Subject: s\r\n\r\nnot a field\r\n"


def test_an_mbox_from_line_is_dropped() -> None:
    message = read_message(b"From root Mon Dec  7 06:00:00 2026\nSubject: s\n\nx\n", dot_ends=True)
    assert message.names() == ["subject"]


def test_the_lone_dot_rule() -> None:
    data = b"Subject: s\n\none\n.\r\ntwo\n"
    assert read_message(data, dot_ends=True).body == [b"one"]
    assert read_message(data, dot_ends=False).body == [b"one", b".", b"two"]


def test_missing_or_empty_fields_are_added_once() -> None:
    message = read_message(b"Date:\nTo: a@example.org\n\nx\n", dot_ends=True)
    message.complete(sender="me@h.example", full_name="Jörg Ö", hostname="h.example")
    names = message.names()
    assert names[:3] == ["from", "date", "message-id"] and names.count("date") == 1
    assert message.fields[0] == [b"From: =?utf-8?b?SsO2cmcgw5Y=?= <me@h.example>"]
    assert message.fields[2][0].startswith(b"Message-ID: <") and message.fields[2][0].endswith(
        b"@h.example>"
    )
    kept = read_message(
        b"From: x@y\nDate: Mon, 7 Dec 2026 06:00:00 +0000\nMessage-ID: <a@b>\n\n", dot_ends=True
    )
    kept.complete(sender="me@h.example", full_name="", hostname="h.example")
    assert kept.names() == ["from", "date", "message-id"]


def test_header_recipients() -> None:
    message = read_message(
        b"To: A <a@x.example>, b@x.example\nCC: c@x.example,\n d@x.example\n"
        b"bcc: e@x.example\nSubject: s\n\n",
        dot_ends=True,
    )
    assert message.addresses("to", "cc", "bcc") == [
        "a@x.example",
        "b@x.example",
        "c@x.example",
        "d@x.example",
        "e@x.example",
    ]
    message.remove("bcc")
    assert message.names() == ["to", "cc", "subject"]


def test_eight_bit_is_detected() -> None:
    assert read_message("Subject: é\n\n".encode(), dot_ends=True).eight_bit()
    assert not read_message(b"Subject: e\n\n", dot_ends=True).eight_bit()


def test_options_the_sendmail_way() -> None:
    opts = parse(
        ["-oi", "-t", "-fme@x", "-F", "Me", "-odi", "-oem", "-v", "a@x", "-N", "never", "b@x"]
    )
    assert (opts.dot_ends, opts.extract, opts.sender, opts.full_name) == (False, True, "me@x", "Me")
    assert opts.recipients == ["a@x", "b@x"]
    assert parse(["--", "-notanoption"]).recipients == ["-notanoption"]
    assert parse(["-bm", "-i", "a"]).dot_ends is False
    for bad in (["-bp"], ["-q1h"], ["-Y"], ["--auth-password-file", "f"]):
        with pytest.raises(UsageError):
            parse(bad)


def test_endpoints_are_ranked() -> None:
    nodes = parse_text(
        "smtp tcp://0.0.0.0:25 tcp://127.0.0.1:2525 tls://127.0.0.1:465 tcp://127.0.0.1:0 {\n}\n"
        "submission tcp://127.0.0.1:587 {\n}\n"
        "lmtp tcp://[::1]:24 unix://lmtp.sock {\n}\n"
        "smtp unix:///run/k/smtp.sock {\n}\n",
        "t.conf",
    )
    assert from_config(nodes, "/run/k", auth=False) == [
        Target("smtp", path="/run/k/smtp.sock", endpoint="smtp"),
        Target("lmtp", path="/run/k/lmtp.sock", endpoint="lmtp"),
        Target("smtp", "127.0.0.1", 2525, endpoint="smtp"),
        Target("lmtp", "::1", 24, endpoint="lmtp"),
        Target("smtp", "127.0.0.1", 25, endpoint="smtp"),
    ]
    assert from_config(nodes, "/run/k", auth=True) == [
        Target("smtp", "127.0.0.1", 587, endpoint="submission")
    ]


def test_server_urls() -> None:
    assert from_url("lmtp://[::1]:24", "/") == Target("lmtp", "::1", 24, endpoint="--server")
    assert str(from_url("smtp+unix://s.sock", "/run")) == "smtp+unix:///run/s.sock"
    assert from_url("submission://mail.example:587", "/").loopback is False
    assert from_url("smtp://127.0.0.1:25", "/").loopback
    for bad in ("smtp://x", "smtp://x:0", "http://x:1", "127.0.0.1:25"):
        with pytest.raises(ValueError):
            from_url(bad, "/")
