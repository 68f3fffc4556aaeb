"""The sans-IO core: dialogues, framing, limits, byte-exact replies."""

from __future__ import annotations

import pytest

from kittiwake.protocol import BodyEnd, ConnectionClosed, Reply, ServerConnection, Settings
from kittiwake.protocol.connection import LocalProtocolError, State

from .helpers import Driver, envelope, run


def test_a_whole_transaction() -> None:
    d = run(envelope(b"Subject: hi\r\n\r\nfoobar\r\n.\r\nQUIT\r\n"))
    assert d.lines == [
        "250-Hello c",
        "250-PIPELINING",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-CHUNKING",
        "250-DSN",
        "250-SMTPUTF8",
        "250-SIZE 33554432",
        "250 LIMITS RCPTMAX=20000",
        "250 2.0.0 Roger, accepting mail from <a@b>",
        "250 2.0.0 I'll make sure <c@d> gets this",
        "354 Go ahead. End your data with <CR><LF>.<CR><LF>",
        "250 2.0.0 OK: queued",
        "221 2.0.0 Bye",
    ]
    (m,) = d.messages
    assert (m.sender, m.rcpts, m.body) == ("a@b", ["c@d"], b"Subject: hi\r\n\r\nfoobar\r\n")


def test_capabilities_follow_tls_auth_and_limits() -> None:
    s = Settings(
        tls_available=True, auth_mechanisms=("PLAIN", "LOGIN"), max_message_size=0, max_recipients=0
    )
    clear = ServerConnection(s)
    assert clear.ehlo_capabilities() == [
        "PIPELINING",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "STARTTLS",
        "SMTPUTF8",
        "SIZE",
    ]
    secure = ServerConnection(s, tls=True)
    assert secure.ehlo_capabilities() == [
        "PIPELINING",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "AUTH PLAIN LOGIN",
        "SMTPUTF8",
        "REQUIRETLS",
        "SIZE",
    ]
    insecure = ServerConnection(Settings(auth_mechanisms=("PLAIN",)))
    assert "AUTH PLAIN" in insecure.ehlo_capabilities()  # no TLS at all: AUTH in clear


def test_empty_message_and_dot_stuffing() -> None:
    assert run(envelope(b".\r\n")).messages[0].body == b""
    body = b"..leading\r\n.\r\n"
    assert run(envelope(body)).messages[0].body == b".leading\r\n"
    body = b"a\r\n..\r\n...x\r\nb.c\r\n.\r\n"
    assert run(envelope(body)).messages[0].body == b"a\r\n.\r\n..x\r\nb.c\r\n"


@pytest.mark.parametrize(
    ("content", "stored"),
    [
        # Smuggling attempts: none of these ends the data.
        (b"a\n.\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\n.\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n"),
        (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n"),
        (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),  # CR LF . LF: data
        (b"a\r.\r\nb\r\n.\r\n", b"a\r.\r\nb\r\n"),
        # Bare LFs are stored as CR LF; a bare CR is kept.
        (b"x\ny\r\n.\r\n", b"x\r\ny\r\n"),
        (b"x\ry\r\n.\r\n", b"x\ry\r\n"),
        (b"\n.\r\nx\r\n.\r\n", b"\r\n.\r\nx\r\n"),
    ],
)
def test_only_crlf_dot_crlf_ends_data(content: bytes, stored: bytes) -> None:
    d = run(envelope(content + b"QUIT\r\n"))
    assert [m.body for m in d.messages] == [stored]
    assert d.lines[-1] == "221 2.0.0 Bye"


def test_bytes_after_end_of_data_are_commands() -> None:
    d = run(envelope(b"one\r\n.\r\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\ntwo\r\n.\r\n"))
    assert [(m.sender, m.body) for m in d.messages] == [("a@b", b"one\r\n"), ("e@f", b"two\r\n")]


SCRIPTS = [
    envelope(b"Subject: x\r\n\r\n" + b"line\r\n" * 50 + b"..dot\r\n.\r\nQUIT\r\n"),
    envelope(b"a\n.\nb\r\n.\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"),
    envelope(b"\r\r\n\r\n.\r\r\n.\r\n"),
    b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5\r\n\r\n.\r\nBDAT 3 LAST\r\nxyzQUIT\r\n",
    b"XXXX\r\nHELO\r\nMAIL FROM:<a@b>\r\n\r\nEHLO a b\r\nVRFY x\r\nHELP\r\nQUIT\r\n",
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
def test_feeding_in_pieces_gives_the_same_result(script: bytes, step: int) -> None:
    whole = run(script)
    pieces = run(script, step=step)
    assert pieces.out == whole.out
    assert pieces.messages == whole.messages


def test_pipelined_group_is_answered_in_order() -> None:
    d = run(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\nhi\r\n.\r\n")
    assert [line[:3] for line in d.lines if not line.startswith("250-")] == [
        "250",
        "250",
        "250",
        "250",
        "354",
        "250",
    ]
    assert d.messages[0].rcpts == ["c@d", "e@f"]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"", "500 5.5.2 Error: bad syntax"),
        (b"NOO", "501 5.5.2 Bad command"),
        (b"NOOPX", "501 5.5.2 Bad command"),
        (b"XCLIENT x", "501 5.5.2 Bad command"),
        (b"EHLO\tx", "501 5.5.2 Bad command"),
        (b"xyzw", "500 5.5.2 Syntax errors, XYZW command unrecognized"),
        (b"EXPN x", "502 5.5.1 EXPN command not implemented"),
        (b"HELP", "502 5.5.1 HELP command not implemented"),
        (b"TURN", "502 5.5.1 TURN command not implemented"),
        (b"VRFY postmaster", "252 2.5.0 Cannot VRFY user, but will accept message"),
        (b"noop", "250 2.0.0 I have successfully done nothing"),
        (b"RSET", "250 2.0.0 Session reset"),
        (b"STARTTLS", "502 5.5.1 TLS not supported"),
        (b"starttls now", "502 5.5.1 TLS not supported"),
        (b"HELO", "501 5.5.2 Domain/address argument required for HELO"),
        (b"HELO  ", "501 5.5.2 Domain/address argument required for HELO"),
        (b"HELO x y", "250 2.0.0 Hello x"),
        (b"HELO [192.0.2.1]", "250 2.0.0 Hello [192.0.2.1]"),
        (b"EHLO a\x00b", "501 5.5.2 Invalid domain/address argument"),
        (b"EHLO a\x0bb", "501 5.5.2 Invalid domain/address argument"),
        (b"EHLO a\x0cb", "501 5.5.2 Invalid domain/address argument"),
        (b"EHLO a\tb", "501 5.5.2 Invalid domain/address argument"),
        (b"HELO a\x7f", "501 5.5.2 Invalid domain/address argument"),
        (b"HELO \xffhost", "501 5.5.2 Invalid domain/address argument"),
        (b"EHLO h\xc3\xa9.example", "501 5.5.2 Invalid domain/address argument"),
        (b"\xffABC", "500 5.5.2 Syntax errors, ?ABC command unrecognized"),
        (b"X\x00\x1bZ", "500 5.5.2 Syntax errors, X??Z command unrecognized"),
        (b"LHLO x", "500 5.5.1 This is not a LMTP server"),
        (b"MAIL FROM:<a@b>", "503 5.5.1 Please introduce yourself first."),
        (b"AUTH PLAIN", "503 5.5.1 Please introduce yourself first."),
        (b"RCPT TO:<a@b>", "503 5.5.1 Missing MAIL FROM command."),
        (b"DATA", "503 5.5.1 Missing RCPT TO command."),
        (b"DATA x", "501 5.5.4 DATA command should not have any arguments"),
    ],
)
def test_single_command_replies(line: bytes, reply: str) -> None:
    d = run(line + b"\r\n")
    assert d.lines[0] == reply


def test_unknown_8bit_verb_in_an_smtputf8_transaction_is_answered() -> None:
    """An undecodable verb after MAIL ... SMTPUTF8 is a 500, not a crash."""
    d = run(b"EHLO x\r\nMAIL FROM:<a@b> SMTPUTF8\r\n\xffABC\r\nNOOP\r\n")
    assert d.lines[-3:] == [
        "250 2.0.0 Roger, accepting mail from <a@b>",
        "500 5.5.2 Syntax errors, ?ABC command unrecognized",
        "250 2.0.0 I have successfully done nothing",
    ]


def test_lmtp_rejects_smtp_greetings() -> None:
    d = run(b"EHLO x\r\nHELO x\r\n", Settings(lmtp=True))
    assert d.lines == ["500 5.5.1 This is a LMTP server, use LHLO"] * 2


def test_fourth_protocol_error_closes() -> None:
    d = run(b"XXXX\r\nXXXX\r\nXXXX\r\nXXXX\r\nNOOP\r\n")
    assert d.lines == ["500 5.5.2 Syntax errors, XXXX command unrecognized"] * 4 + [
        "500 5.5.1 Too many errors. Quiting now"
    ]
    assert d.closed


def test_http_requests_are_hung_up_on() -> None:
    d = run(b"POST / HTTP/1.1\r\nHost: x\r\n\r\nQUIT\r\n")
    assert d.lines == ["501 5.5.2 Bad command"]
    assert d.conn.state is State.CLOSED


OK_MAIL = "250 2.0.0 Roger, accepting mail from <a@b>"
OK_RCPT = "250 2.0.0 I'll make sure <c@d> gets this"


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"MAIL FROM:<a@b>", "250 2.0.0 Roger, accepting mail from <a@b>"),
        (b"MAIL from: <a@b>", "250 2.0.0 Roger, accepting mail from <a@b>"),
        (b"MAIL FROM:a@b", "250 2.0.0 Roger, accepting mail from <a@b>"),
        (b"MAIL FROM:<>", "250 2.0.0 Roger, accepting mail from <>"),
        (b"MAIL FROM:<@relay,@r2:a@b>", "250 2.0.0 Roger, accepting mail from <a@b>"),
        (b'MAIL FROM:<"john doe"@x>', "250 2.0.0 Roger, accepting mail from <john doe@x>"),
        (b'MAIL FROM:<"a\\"b"@x>', '250 2.0.0 Roger, accepting mail from <a"b@x>'),
        (
            b"MAIL FROM:<a@b> SIZE=100 BODY=8BITMIME SMTPUTF8",
            "250 2.0.0 Roger, accepting mail from <a@b>",
        ),
        (b"MAIL FROM:<a@b> AUTH=<>", "250 2.0.0 Roger, accepting mail from <a@b>"),
        (b"MAIL FROM:<a@b> AUTH=x+2By@z", "250 2.0.0 Roger, accepting mail from <a@b>"),
        (b"MAIL FROM <a@b>", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<a@b", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<a>", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<@b>", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<a(b@c>", "501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<u@remote@local>", "501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<u@[300.1.1.1]>", "501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<" + b"a" * 600 + b"@b>", "501 5.5.2 Path too long"),
        (b"MAIL FROM:<\xffa@b>", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<a@b\x01c>", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<a@b\x7f>", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<postmaster>", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
        (b"MAIL FROM:<a@b>junk", "500 5.5.4 Unknown MAIL FROM argument"),
        (b"MAIL FROM:<a@b> SIZE=x", "501 5.5.4 Unable to parse SIZE as an integer"),
        (b"MAIL FROM:<a@b> SIZE=4294967296", "501 5.5.4 Unable to parse SIZE as an integer"),
        (b"MAIL FROM:<a@b> SIZE=33554433", "552 5.3.4 Max message size exceeded"),
        (b"MAIL FROM:<a@b> SIZE=33554432", "250 2.0.0 Roger, accepting mail from <a@b>"),
        (b"MAIL FROM:<a@b> BODY=BINARYMIME", "504 5.5.4 BINARYMIME is not implemented"),
        (b"MAIL FROM:<a@b> BODY=9BIT", "501 5.5.4 Unknown BODY value"),
        (b"MAIL FROM:<a@b> RET=HDRS", OK_MAIL),
        (b"MAIL FROM:<a@b> ret=full", OK_MAIL),
        (b"MAIL FROM:<a@b> RET=ALL", "501 5.5.4 Malformed RET parameter value"),
        (b"MAIL FROM:<a@b> RET", "501 5.5.4 Malformed RET parameter value"),
        (b"MAIL FROM:<a@b> RET=FULL RET=HDRS", "501 5.5.4 Duplicate RET parameter in MAIL"),
        (b"MAIL FROM:<a@b> ENVID=x", OK_MAIL),
        (b"MAIL FROM:<a@b> ENVID=a+2Bb+20c", OK_MAIL),
        (b"MAIL FROM:<a@b> ENVID=" + b"e" * 100, OK_MAIL),
        (b"MAIL FROM:<a@b> ENVID=" + b"e" * 101, "501 5.5.4 Malformed ENVID parameter value"),
        (b"MAIL FROM:<a@b> ENVID=", "501 5.5.4 Malformed ENVID parameter value"),
        (b"MAIL FROM:<a@b> ENVID=a+0Db", "501 5.5.4 Malformed ENVID parameter value"),
        (b"MAIL FROM:<a@b> ENVID=a+zz", "501 5.5.4 Malformed ENVID parameter value"),
        (b"MAIL FROM:<a@b> ENVID=x ENVID=y", "501 5.5.4 Duplicate ENVID parameter in MAIL"),
        (b"MAIL FROM:<a@b> A=b=c", "501 5.5.4 Unable to parse MAIL ESMTP parameters"),
        (b"MAIL FROM:<a@b> AUTH=", "500 5.5.4 Malformed AUTH parameter value"),
        (b"MAIL FROM:<a@b> AUTH=a+zz", "500 5.5.4 Malformed AUTH parameter value"),
        (b"MAIL FROM:<a@b> AUTH=nobody", "500 5.5.4 Malformed AUTH parameter mailbox"),
        (b"MAIL FROM:<a@b> FOO", "500 5.5.4 Unknown MAIL FROM argument"),
    ],
)
def test_mail_from(command: bytes, reply: str) -> None:
    assert run(b"EHLO x\r\n" + command + b"\r\n").lines[-1] == reply


def test_requiretls_only_over_tls() -> None:
    """RFC 8689 §4.1: REQUIRETLS is offered and taken on a TLS session only."""
    clear = run(b"EHLO x\r\nMAIL FROM:<a@b> REQUIRETLS\r\n")
    assert clear.lines[-1] == "530 5.7.10 REQUIRETLS needs TLS: use STARTTLS first"
    secure = Driver(Settings(), tls=True)
    secure.feed(b"EHLO x\r\nMAIL FROM:<a@b> REQUIRETLS\r\n")
    assert secure.lines[-1] == "250 2.0.0 Roger, accepting mail from <a@b>"


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"RCPT TO:<c@d>", "250 2.0.0 I'll make sure <c@d> gets this"),
        (b"RCPT TO:<Postmaster>", "250 2.0.0 I'll make sure <Postmaster> gets this"),
        (b"RCPT TO:<postmaster@d>", "250 2.0.0 I'll make sure <postmaster@d> gets this"),
        (b"RCPT TO:<POSTMASTER>", "250 2.0.0 I'll make sure <POSTMASTER> gets this"),
        (b'RCPT TO:<"john doe"@d>', "250 2.0.0 I'll make sure <john doe@d> gets this"),
        (b'RCPT TO:<"a>b"@d>', "250 2.0.0 I'll make sure <a>b@d> gets this"),
        (b"RCPT TO:<u@remote@local>", "501 5.1.3 Bad recipient address syntax"),
        (b"RCPT TO:<u@[300.1.1.1]>", "501 5.1.3 Bad recipient address syntax"),
        (b"RCPT TO:<u@[192.0.2.1]>", "250 2.0.0 I'll make sure <u@[192.0.2.1]> gets this"),
        (b"RCPT TO:<" + b"a" * 600 + b"@d>", "501 5.5.2 Path too long"),
        (b"RCPT TO:<>", "501 5.5.2 Was expecting RCPT arg syntax of TO:<address>"),
        (b"RCPT TO:<postmaster", "501 5.5.2 Was expecting RCPT arg syntax of TO:<address>"),
        (b"RCPT FROM:<c@d>", "501 5.5.2 Was expecting RCPT arg syntax of TO:<address>"),
        (b"RCPT TO:<c@d> NOTIFY=NEVER", OK_RCPT),
        (b"RCPT TO:<c@d> NOTIFY=success,FAILURE,Delay", OK_RCPT),
        (b"RCPT TO:<c@d> NOTIFY=NEVER,SUCCESS", "501 5.5.4 Malformed NOTIFY parameter value"),
        (b"RCPT TO:<c@d> NOTIFY=FAILURE,FAILURE", "501 5.5.4 Malformed NOTIFY parameter value"),
        (b"RCPT TO:<c@d> NOTIFY=", "501 5.5.4 Malformed NOTIFY parameter value"),
        (b"RCPT TO:<c@d> NOTIFY=SOMETIMES", "501 5.5.4 Malformed NOTIFY parameter value"),
        (
            b"RCPT TO:<c@d> NOTIFY=NEVER NOTIFY=NEVER",
            "501 5.5.4 Duplicate NOTIFY parameter in RCPT",
        ),
        (b"RCPT TO:<c@d> ORCPT=rfc822;c@d", OK_RCPT),
        (b"RCPT TO:<c@d> ORCPT=rfc822;c+2Bx@d NOTIFY=NEVER", OK_RCPT),
        (b"RCPT TO:<c@d> ORCPT=utf-8;\\x{E9}@d", OK_RCPT),
        (b"RCPT TO:<c@d> ORCPT=rfc822;" + b"o" * 493, OK_RCPT),
        (b"RCPT TO:<c@d> ORCPT=rfc822;" + b"o" * 494, "501 5.5.4 Malformed ORCPT parameter value"),
        (b"RCPT TO:<c@d> ORCPT=c@d", "501 5.5.4 Malformed ORCPT parameter value"),
        (b"RCPT TO:<c@d> ORCPT=rfc822;", "501 5.5.4 Malformed ORCPT parameter value"),
        (b"RCPT TO:<c@d> ORCPT=rfc822;a+00b", "501 5.5.4 Malformed ORCPT parameter value"),
        (b"RCPT TO:<c@d> ORCPT=rfc 822;a", "501 5.5.4 Malformed ORCPT parameter value"),
        (b"RCPT TO:<c@d> X=1", "500 5.5.4 Unknown RCPT TO argument"),
        (b"RCPT TO:<c@d> X=1=2", "501 5.5.4 Unable to parse RCPT ESMTP parameters"),
    ],
)
def test_rcpt_to(command: bytes, reply: str) -> None:
    assert run(b"EHLO x\r\nMAIL FROM:<a@b>\r\n" + command + b"\r\n").lines[-1] == reply


def test_recipient_limit_at_and_past() -> None:
    s = Settings(max_recipients=2)
    d = run(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<3@d>\r\n", s)
    assert d.lines[-2] == "250 2.0.0 I'll make sure <2@d> gets this"
    assert d.lines[-1] == "452 4.5.3 Maximum limit of 2 recipients reached"


def test_rejected_recipients_do_not_count_for_data() -> None:
    from .helpers import Driver

    d = Driver(Settings())
    d.reject_rcpt = {"c@d"}
    d.feed(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    assert d.lines[-1] == "503 5.5.1 Missing RCPT TO command."


def test_command_line_length_at_and_past_the_limit() -> None:
    s = Settings(max_line_length=100)
    ok = b"NOOP " + b"x" * (100 - 5 - 1)  # 99 bytes + CR = 100 - 1 ... within
    assert run(ok[:-1] + b"\r\n", s).lines == ["250 2.0.0 I have successfully done nothing"]
    d = run(b"NOOP " + b"x" * 200 + b"\r\nNOOP\r\n", s)
    assert d.lines == ["500 5.4.0 Too long line, closing connection"]
    # Without any line end at all, the limit still holds (no unbounded buffering).
    d = run(b"NOOP " + b"x" * 200, s)
    assert d.lines == ["500 5.4.0 Too long line, closing connection"]


def test_data_line_length_closes_without_delivering() -> None:
    s = Settings(max_line_length=1000)
    d = run(envelope(b"a" * 997 + b"\r\n.\r\n"), s)
    assert len(d.messages) == 1
    d = run(envelope(b"short\r\n" + b"a" * 1000 + b"\r\n.\r\nQUIT\r\n"), s)
    assert d.messages == []
    assert d.lines[-1] == "500 5.4.0 Too long line, closing connection"


def test_data_line_length_across_feeds() -> None:
    s = Settings(max_line_length=1000)
    d = run(envelope(b"a" * 1200 + b"\r\n.\r\n"), s, step=100)
    assert d.messages == []
    assert d.lines[-1] == "500 5.4.0 Too long line, closing connection"


def test_message_size_at_and_past_the_limit() -> None:
    s = Settings(max_message_size=20)
    at = run(envelope(b"x" * 18 + b"\r\n.\r\nQUIT\r\n"), s)
    assert [len(m.body) for m in at.messages] == [20]
    past = run(envelope(b"x" * 19 + b"\r\n.\r\nNOOP\r\nQUIT\r\n"), s)
    assert past.messages == []
    assert past.lines[-3:] == [
        "552 5.3.4 Maximum message size exceeded",
        "250 2.0.0 I have successfully done nothing",
        "221 2.0.0 Bye",
    ]
    assert BodyEnd(last=True, too_large=True) in past.events


def test_bdat_binary_chunks() -> None:
    payload = b"\x00\r\n.\r\n\xff\n.\n"
    d = run(
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
        + b"BDAT %d\r\n" % len(payload)
        + payload
        + b"BDAT 3 LAST\r\nend"
        + b"QUIT\r\n"
    )
    assert d.messages[0].body == payload + b"end"
    assert "250 2.0.0 Continue" in d.lines
    assert d.lines[-1] == "221 2.0.0 Bye"


def test_bdat_zero_last() -> None:
    d = run(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 0 LAST\r\n")
    assert d.messages[0].body == b""


@pytest.mark.parametrize(
    ("command", "reply", "discarded"),
    [
        (b"BDAT", "501 5.5.4 Missing chunk size argument", False),
        (b"BDAT 4 LAST x", "501 5.5.4 Too many arguments", True),
        (b"BDAT 4 FIRST", "501 5.5.4 Unknown BDAT argument", True),
        (b"BDAT -4", "501 5.5.4 Malformed size argument", False),
        (b"BDAT 4294967296", "501 5.5.4 Malformed size argument", False),
    ],
)
def test_bdat_errors_discard_the_chunk(command: bytes, reply: str, discarded: bool) -> None:
    # The 4 payload bytes are dropped whenever the size could be read
    # (docs/protocol.md, "Message content"); otherwise they can only be read
    # as a command.
    d = run(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n" + command + b"\r\nXXXXNOOP\r\n")
    assert d.lines[-2] == reply
    if discarded:
        assert d.lines[-1] == "250 2.0.0 I have successfully done nothing"
    else:
        assert d.lines[-1] == "501 5.5.2 Bad command"


def test_bdat_without_recipients_discards_its_payload() -> None:
    d = run(b"EHLO x\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert d.lines[-2:] == [
        "503 5.5.1 Missing RCPT TO command.",
        "250 2.0.0 I have successfully done nothing",
    ]


def test_bdat_past_the_size_limit() -> None:
    s = Settings(max_message_size=10)
    d = run(
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
        b"BDAT 6\r\n123456BDAT 5 LAST\r\n12345NOOP\r\n",
        s,
    )
    assert d.messages == []
    assert d.lines[-3:] == [
        "250 2.0.0 Continue",
        "552 5.3.4 Maximum message size exceeded",
        "250 2.0.0 I have successfully done nothing",
    ]


def test_commands_refused_during_bdat() -> None:
    d = run(
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2\r\nabMAIL FROM:<a@b>\r\n"
        b"RCPT TO:<e@f>\r\nDATA\r\nBDAT 1 LAST\r\nc"
    )
    assert d.lines[-4:] == [
        "503 5.5.1 MAIL not allowed during message transfer",
        "503 5.5.1 RCPT not allowed during message transfer",
        "503 5.5.1 DATA not allowed during message transfer",
        "250 2.0.0 OK: queued",
    ]
    assert d.messages[0].body == b"abc"


def test_lmtp_owes_one_reply_per_accepted_recipient() -> None:
    s = Settings(lmtp=True)
    d = run(
        b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<1@d>\r\n"
        b"DATA\r\nhi\r\n.\r\nNOOP\r\n",
        s,
    )
    assert d.lines[-4:] == ["250 2.0.0 OK: queued"] * 3 + [
        "250 2.0.0 I have successfully done nothing"
    ]


def test_lmtp_wrong_reply_count_is_a_local_error() -> None:
    conn = ServerConnection(Settings(lmtp=True))
    conn.receive_data(b"LHLO x\r\n")
    conn.next_event()
    conn.send(Reply(250, None, "hi"))
    conn.receive_data(b"MAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nDATA\r\n.\r\n")
    for _ in range(3):
        conn.next_event()
        conn.send(Reply(250, (2, 0, 0), "ok"))
    conn.next_event()
    conn.send(Reply(354, None, "go"))
    assert isinstance(conn.next_event(), BodyEnd)
    conn.send(Reply(250, (2, 0, 0), "one"))
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.send(Reply(250, (2, 0, 0), "two"))
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, (2, 0, 0), "three"))


def test_starttls_resets_and_reports_pipelined_bytes() -> None:
    conn = ServerConnection(Settings(tls_available=True))
    conn.receive_data(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\n")
    conn.next_event()
    conn.send(Reply(250, None, "hi"))
    conn.next_event()
    conn.send(Reply(220, (2, 0, 0), "Ready to start TLS"))
    assert conn.state is State.TLS
    assert conn.pending_input > 0  # the server must close: RFC 3207 §4.2
    from kittiwake.protocol.connection import NEED_DATA

    assert conn.next_event() is NEED_DATA
    conn.tls_started()
    assert (conn.tls, conn.greeting, conn.pending_input) == (True, None, 0)
    assert "STARTTLS" not in conn.ehlo_capabilities()
    conn.receive_data(b"STARTTLS\r\n")
    conn.next_event()
    assert conn.send(Reply(503, (5, 5, 1), "x")) == b"503 5.5.1 x\r\n"
    assert run(b"STARTTLS\r\n", Settings(tls_available=True)).lines == [
        "220 2.0.0 Ready to start TLS"
    ]


@pytest.mark.parametrize(
    ("settings", "tls", "command", "reply"),
    [
        (
            Settings(tls_available=True, auth_mechanisms=("PLAIN",)),
            False,
            b"AUTH PLAIN",
            "538 5.7.11 Encryption required for requested authentication mechanism",
        ),
        (Settings(auth_mechanisms=("PLAIN",)), False, b"AUTH", "501 5.5.4 Missing parameter"),
        (
            Settings(auth_mechanisms=("PLAIN",)),
            False,
            b"AUTH CRAM-MD5",
            "504 5.5.4 Unrecognized authentication type",
        ),
        (
            Settings(auth_mechanisms=("PLAIN",)),
            False,
            b"AUTH PLAIN !!!",
            "501 5.5.2 Invalid base64 data",
        ),
        (
            Settings(auth_mechanisms=("PLAIN",)),
            False,
            b"AUTH plain =",
            "235 2.0.0 Authentication succeeded",
        ),
        (
            Settings(tls_available=True, auth_mechanisms=("PLAIN",)),
            True,
            b"AUTH PLAIN AGEAYg==",
            "235 2.0.0 Authentication succeeded",
        ),
    ],
)
def test_auth_framing(settings: Settings, tls: bool, command: bytes, reply: str) -> None:
    from .helpers import Driver

    d = Driver(settings, tls=tls)
    d.feed(b"EHLO x\r\n" + command + b"\r\n")
    assert d.lines[-1] == reply


def test_auth_after_success_and_during_transaction() -> None:
    from .helpers import Driver

    d = Driver(Settings(auth_mechanisms=("PLAIN",)))
    d.feed(b"EHLO x\r\nAUTH PLAIN =\r\nAUTH PLAIN =\r\n")
    assert d.lines[-1] == "503 5.5.1 Already authenticated"
    d = Driver(Settings(auth_mechanisms=("PLAIN",)))
    d.feed(b"EHLO x\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN =\r\n")
    assert d.lines[-1] == "503 5.5.1 AUTH not allowed during a mail transaction"


def test_auth_exchange_lines() -> None:
    conn = ServerConnection(Settings(auth_mechanisms=("LOGIN",)))
    conn.receive_data(b"EHLO x\r\nAUTH LOGIN\r\ndXNlcg==\r\n*\r\n")
    conn.next_event()
    conn.send(Reply(250, None, "hi"))
    conn.next_event()
    conn.send(Reply(334, None, "VXNlcm5hbWU6"))
    ev = conn.next_event()
    assert ev.__class__.__name__ == "AuthLine" and ev.line == "dXNlcg=="  # type: ignore[union-attr]
    conn.send(Reply(334, None, "UGFzc3dvcmQ6"))
    ev = conn.next_event()
    assert ev.line == "*"  # type: ignore[union-attr]
    conn.send(Reply(501, (5, 0, 0), "Negotiation cancelled"))
    assert conn.state is State.COMMAND and not conn.authenticated


def test_greeting_resets_the_transaction() -> None:
    d = run(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nEHLO y\r\nDATA\r\n")
    assert d.lines[-1] == "503 5.5.1 Missing RCPT TO command."


def test_reply_rendering() -> None:
    assert Reply(550, (5, 1, 1), "No such user").render() == b"550 5.1.1 No such user\r\n"
    assert Reply(250, None, ("Hello x", "SIZE")).render() == b"250-Hello x\r\n250 SIZE\r\n"
    assert Reply(554, (5, 7, 0), "Hey 凱凱").render() == b"554 5.7.0 Hey ??\r\n"
    assert Reply(554, (5, 7, 0), "Hey 凱凱").render(utf8=True) == "554 5.7.0 Hey 凱凱\r\n".encode()
    # A reply text can never inject another reply line.
    assert Reply(550, (5, 0, 0), "a\r\n250 ok").render() == b"550 5.0.0 a  250 ok\r\n"


def test_utf8_reply_follows_the_mail_parameter() -> None:
    conn = ServerConnection(Settings())
    conn.receive_data(b"EHLO x\r\nMAIL FROM:<a@b> SMTPUTF8\r\n")
    conn.next_event()
    conn.send(Reply(250, None, "hi"))
    conn.next_event()
    assert conn.send(Reply(523, (5, 7, 0), "Hey 凱凱")) == "523 5.7.0 Hey 凱凱\r\n".encode()


def test_eof_mid_data_is_reported_and_nothing_delivered() -> None:
    d = run(envelope(b"partial\r\nmessage"))
    assert d.messages == []
    assert isinstance(d.events[-1], ConnectionClosed)


def test_half_close_processes_everything_before_eof() -> None:
    d = run(b"NOOP\r\nNOOP\r\n")
    assert d.lines == ["250 2.0.0 I have successfully done nothing"] * 2
    assert isinstance(d.events[-1], ConnectionClosed)


def test_protocol_package_does_no_io() -> None:
    import ast
    import pathlib

    import kittiwake.protocol as proto

    banned = {"socket", "asyncio", "ssl", "selectors", "time", "os", "threading"}
    for path in pathlib.Path(proto.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not banned & set(names), f"{path.name} imports {names}"
