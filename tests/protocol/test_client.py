"""The sans-IO client core: replies, capabilities, pipelining, hostile servers."""

from __future__ import annotations

import pytest

from kittiwake.protocol import NEED_DATA, Reply
from kittiwake.protocol.client import (
    Capabilities,
    ClientConnection,
    ClientState,
    Command,
    ConnectionClosed,
    Limits,
    RemoteProtocolError,
    ReplyReceived,
)
from kittiwake.protocol.connection import LocalProtocolError

EHLO_REPLY = (
    b"250-mx.example.org Hello\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-8BITMIME\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-CHUNKING\r\n"
    b"250-SMTPUTF8\r\n"
    b"250-DSN\r\n"
    b"250 STARTTLS\r\n"
)


def replies(conn: ClientConnection) -> list[ReplyReceived]:
    out = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        assert isinstance(event, ReplyReceived)
        out.append(event)


def one(conn: ClientConnection, data: bytes) -> ReplyReceived:
    conn.receive_data(data)
    (event,) = replies(conn)
    return event


def greeted(*, lmtp: bool = False, ehlo: bytes = EHLO_REPLY) -> ClientConnection:
    conn = ClientConnection(lmtp=lmtp)
    assert one(conn, b"220 mx.example.org ESMTP\r\n").command is Command.GREETING
    conn.ehlo("client.example.net")
    assert one(conn, ehlo).ok
    return conn


def in_transaction(rcpts: int = 1, *, lmtp: bool = False) -> ClientConnection:
    conn = greeted(lmtp=lmtp)
    conn.mail("a@example.org")
    for i in range(rcpts):
        conn.rcpt(f"r{i}@example.org")
    conn.receive_data(b"250 2.1.0 ok\r\n" + b"250 2.1.5 ok\r\n" * rcpts)
    assert [e.command for e in replies(conn)] == [Command.MAIL] + [Command.RCPT] * rcpts
    return conn


# -- replies ----------------------------------------------------------------------


def test_greeting_and_ehlo_capabilities() -> None:
    conn = ClientConnection()
    assert conn.state is ClientState.GREETING
    assert conn.replies_owed == 1
    event = one(conn, b"220 mx.example.org ESMTP ready\r\n")
    assert event.reply == Reply(220, None, ("mx.example.org ESMTP ready",))
    assert conn.state is ClientState.READY
    assert conn.ehlo("client.example.net") == b"EHLO client.example.net\r\n"
    event = one(conn, EHLO_REPLY)
    assert event.command is Command.EHLO
    assert event.reply.enhanced is None
    caps = conn.capabilities
    assert caps.size == 10240000
    assert caps.pipelining and caps.eightbitmime and caps.chunking and caps.smtputf8
    assert caps.dsn and caps.starttls
    assert caps.auth == {"PLAIN", "LOGIN"}
    assert not caps.requiretls


def test_lmtp_sends_lhlo() -> None:
    conn = ClientConnection(lmtp=True)
    one(conn, b"220 lmtp\r\n")
    assert conn.ehlo("me.example") == b"LHLO me.example\r\n"
    assert one(conn, b"250 lmtp\r\n").command is Command.LHLO
    with pytest.raises(LocalProtocolError):
        conn.helo("me.example")


@pytest.mark.parametrize(
    ("lines", "size", "auth"),
    [
        (["SIZE"], 0, set()),
        (["SIZE 0"], 0, set()),
        (["size 12345"], 12345, set()),
        (["SIZE junk"], 0, set()),
        (["SIZE " + "9" * 30], 0, set()),
        ([], None, set()),
        (["AUTH=LOGIN PLAIN"], None, {"LOGIN", "PLAIN"}),
        (["auth plain", "AUTH LOGIN"], None, {"PLAIN"}),  # the first AUTH line wins
        (["", "  ", "-BAD", "X_Y 1", "AUTH cram-md5"], None, {"CRAM-MD5"}),
    ],
)
def test_capability_parsing(lines: list[str], size: int | None, auth: set[str]) -> None:
    caps = Capabilities.parse(lines)
    assert caps.size == size
    assert caps.auth == auth
    assert not caps.has("X_Y") and not caps.has("-BAD")


def test_multiline_reply_and_enhanced_codes() -> None:
    conn = greeted()
    conn.mail("a@example.org")
    event = one(conn, b"550-5.7.1 first line\r\n550-5.7.1 second\r\n550 5.7.1 last\r\n")
    assert event.reply == Reply(550, (5, 7, 1), ("first line", "second", "last"))
    assert not conn.mail_accepted


@pytest.mark.parametrize(
    ("line", "enhanced", "text"),
    [
        (b"451 4.3.0 Try later", (4, 3, 0), "Try later"),
        (b"451 Try later", None, "Try later"),
        (b"451 5.3.0 class mismatch", None, "5.3.0 class mismatch"),  # not an enhanced code
        (b"250 2.1.5", (2, 1, 5), ""),
        (b"250", None, ""),
        (b"250 2.1.500 ok", (2, 1, 500), "ok"),
        (b"250 2.1.5000 ok", None, "2.1.5000 ok"),
        (b"554 \xff\xfe invalid utf-8", None, "\ufffd\ufffd invalid utf-8"),
    ],
)
def test_reply_line_forms(line: bytes, enhanced: tuple[int, int, int] | None, text: str) -> None:
    conn = greeted()
    conn.noop()
    event = one(conn, line + b"\r\n")
    assert event.reply.enhanced == enhanced
    assert event.reply.text == (text,)


def test_bare_lf_line_ends_are_read() -> None:
    conn = ClientConnection()
    assert one(conn, b"220 hi\n").reply.code == 220


def test_byte_by_byte_gives_the_same_events() -> None:
    greeting = b"220 mx\r\n"
    rest = EHLO_REPLY + b"250 2.1.0 ok\r\n250-2.1.5 a\r\n250 2.1.5 b\r\n"

    def run(step: int) -> list[ReplyReceived]:
        conn = ClientConnection()
        events: list[ReplyReceived] = []
        for i in range(0, len(greeting), step):
            conn.receive_data(greeting[i : i + step])
            events += replies(conn)
        conn.ehlo("me.example")
        conn.mail("a@b.example")
        conn.rcpt("c@d.example")
        for i in range(0, len(rest), step):
            conn.receive_data(rest[i : i + step])
            events += replies(conn)
        return events

    whole = run(len(rest))
    commands = [e.command for e in whole]
    assert commands == [Command.GREETING, Command.EHLO, Command.MAIL, Command.RCPT]
    assert whole[-1].reply.text == ("a", "b")
    assert run(1) == whole
    assert run(7) == whole


# -- pipelining -------------------------------------------------------------------


def test_pipelined_replies_are_matched_in_order() -> None:
    conn = greeted()
    out = conn.mail("a@example.org", ["SIZE=100", "BODY=8BITMIME"])
    out += conn.rcpt("one@example.org")
    out += conn.rcpt("two@example.org", ["NOTIFY=NEVER"])
    out += conn.rcpt("three@example.org")
    assert out == (
        b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n"
        b"RCPT TO:<one@example.org>\r\n"
        b"RCPT TO:<two@example.org> NOTIFY=NEVER\r\n"
        b"RCPT TO:<three@example.org>\r\n"
    )
    assert conn.replies_owed == 4
    conn.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n")
    events = replies(conn)
    assert [(e.command, e.reply.code) for e in events] == [
        (Command.MAIL, 250),
        (Command.RCPT, 250),
        (Command.RCPT, 550),
        (Command.RCPT, 250),
    ]
    assert conn.accepted_rcpts == 2
    assert conn.replies_owed == 0


def test_refused_mail_counts_no_recipient() -> None:
    conn = greeted()
    conn.mail("a@example.org")
    conn.rcpt("b@example.org")
    conn.receive_data(b"451 4.7.1 later\r\n503 5.5.1 need MAIL\r\n")
    assert [e.reply.code for e in replies(conn)] == [451, 503]
    assert not conn.mail_accepted and conn.accepted_rcpts == 0
    with pytest.raises(LocalProtocolError):
        conn.data()


def test_data_waits_for_every_envelope_reply() -> None:
    conn = greeted()
    conn.mail("a@example.org")
    conn.rcpt("b@example.org")
    with pytest.raises(LocalProtocolError):
        conn.data()


def test_data_and_end_of_data() -> None:
    conn = in_transaction()
    assert conn.data() == b"DATA\r\n"
    with pytest.raises(LocalProtocolError):
        conn.content(b"too early")
    assert one(conn, b"354 go ahead\r\n").command is Command.DATA
    assert conn.state is ClientState.CONTENT
    with pytest.raises(LocalProtocolError):
        conn.noop()  # no command in the middle of the content
    wire = conn.content(b"Subject: x\r\n\r\n.hidden\n") + conn.content(b"last")
    wire += conn.end_of_data()
    assert wire == b"Subject: x\r\n\r\n..hidden\r\nlast\r\n.\r\n"
    event = one(conn, b"250 2.0.0 queued\r\n")
    assert event.command is Command.END_OF_DATA
    assert not conn.mail_accepted and conn.accepted_rcpts == 0
    assert conn.state is ClientState.READY


def test_data_refused() -> None:
    conn = in_transaction()
    conn.data()
    assert one(conn, b"554 5.5.1 no\r\n").reply.code == 554
    assert conn.state is ClientState.READY
    with pytest.raises(LocalProtocolError):
        conn.end_of_data()


def test_lmtp_owes_one_reply_per_accepted_recipient() -> None:
    conn = greeted(lmtp=True)
    conn.mail("a@example.org")
    for rcpt in ("one", "two", "three", "four"):
        conn.rcpt(f"{rcpt}@example.org")
    conn.receive_data(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n250 ok\r\n")
    replies(conn)
    assert conn.accepted_rcpts == 3
    conn.data()
    one(conn, b"354 go\r\n")
    conn.content(b"body\r\n")
    conn.end_of_data()
    assert conn.replies_owed == 3
    conn.receive_data(b"250 2.0.0 <one> ok\r\n452 4.2.2 <two> full\r\n250 2.0.0 <four> ok\r\n")
    events = replies(conn)
    assert [(e.command, e.index, e.reply.code) for e in events] == [
        (Command.END_OF_DATA, 0, 250),
        (Command.END_OF_DATA, 1, 452),
        (Command.END_OF_DATA, 2, 250),
    ]
    assert not conn.mail_accepted


def test_bdat_chunks() -> None:
    conn = in_transaction(2, lmtp=True)
    assert conn.bdat(b"line one\nline two\r") == b"BDAT 18\r\nline one\r\nline two"
    assert one(conn, b"250 2.0.0 continue\r\n").command is Command.BDAT
    # A chunk that is only the held-back CR's partner sends nothing yet.
    assert conn.bdat(b"") == b""
    assert conn.replies_owed == 0
    assert conn.bdat(b"\nend", last=True) == b"BDAT 7 LAST\r\n\r\nend\r\n"
    assert conn.replies_owed == 2  # LMTP: one per recipient
    conn.receive_data(b"250 2.0.0 one\r\n250 2.0.0 two\r\n")
    assert [(e.command, e.index) for e in replies(conn)] == [
        (Command.BDAT_LAST, 0),
        (Command.BDAT_LAST, 1),
    ]
    assert not conn.mail_accepted


def test_empty_bdat_last() -> None:
    conn = in_transaction()
    assert conn.bdat(b"", last=True) == b"BDAT 0 LAST\r\n"
    assert one(conn, b"250 ok\r\n").command is Command.BDAT_LAST


def test_refused_bdat_chunk_ends_the_transaction() -> None:
    conn = in_transaction()
    conn.bdat(b"x" * 10)
    assert one(conn, b"552 5.3.4 too big\r\n").reply.code == 552
    assert not conn.mail_accepted
    with pytest.raises(LocalProtocolError):
        conn.bdat(b"more")


def test_rset_ends_the_transaction() -> None:
    conn = in_transaction()
    conn.rset()
    one(conn, b"250 2.0.0 ok\r\n")
    assert not conn.mail_accepted and conn.accepted_rcpts == 0


# -- STARTTLS and AUTH --------------------------------------------------------------


def test_starttls_then_ehlo_again() -> None:
    conn = greeted()
    assert conn.starttls() == b"STARTTLS\r\n"
    one(conn, b"220 2.0.0 ready\r\n")
    assert conn.state is ClientState.TLS
    with pytest.raises(LocalProtocolError):
        conn.ehlo("me.example")
    conn.tls_started()
    assert conn.tls and conn.state is ClientState.READY
    assert not conn.capabilities.keywords  # forgotten: RFC 3207 §4.2
    conn.ehlo("me.example")
    one(conn, b"250-mx\r\n250 AUTH PLAIN\r\n")
    assert conn.capabilities.auth == {"PLAIN"}
    with pytest.raises(LocalProtocolError):
        conn.starttls()


def test_data_after_the_starttls_reply_is_refused() -> None:
    """Plain text pipelined after the 220 must never be read as if from inside TLS."""
    conn = greeted()
    conn.starttls()
    conn.receive_data(b"220 2.0.0 ready\r\n250 injected\r\n")
    with pytest.raises(RemoteProtocolError, match="after its STARTTLS reply"):
        conn.next_event()
    assert conn.state is ClientState.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_refused_starttls_stays_in_clear() -> None:
    conn = greeted()
    conn.starttls()
    assert one(conn, b"454 4.7.0 not now\r\n").reply.code == 454
    assert conn.state is ClientState.READY and not conn.tls
    with pytest.raises(LocalProtocolError):
        conn.tls_started()


def test_auth_exchange() -> None:
    conn = greeted()
    assert conn.auth("LOGIN") == b"AUTH LOGIN\r\n"
    one(conn, b"334 VXNlcm5hbWU6\r\n")
    assert conn.state is ClientState.AUTH
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.org")
    assert conn.auth_response("dXNlcg==") == b"dXNlcg==\r\n"
    event = one(conn, b"334 UGFzc3dvcmQ6\r\n")
    assert event.reply.enhanced is None and event.reply.text == ("UGFzc3dvcmQ6",)
    conn.auth_response("cGFzcw==")
    one(conn, b"235 2.7.0 ok\r\n")
    assert conn.authenticated and conn.state is ClientState.READY
    with pytest.raises(LocalProtocolError):
        conn.auth_response("x")


def test_auth_initial_response() -> None:
    conn = greeted()
    assert conn.auth("PLAIN", "AHUAcA==") == b"AUTH PLAIN AHUAcA==\r\n"
    one(conn, b"535 5.7.8 no\r\n")
    assert not conn.authenticated


# -- the server going away ------------------------------------------------------------


def test_server_close_reports_missing_replies() -> None:
    conn = in_transaction()
    conn.data()
    one(conn, b"354 go\r\n")
    conn.content(b"x")
    conn.end_of_data()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(owed=1)
    assert conn.state is ClientState.CLOSED
    assert conn.next_event() is NEED_DATA


def test_replies_before_close_are_still_read() -> None:
    conn = greeted()
    conn.quit()
    conn.receive_data(b"221 2.0.0 bye\r\n")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ReplyReceived)
    assert conn.next_event() == ConnectionClosed(owed=0)


def test_421_closes() -> None:
    conn = greeted()
    conn.mail("a@example.org")
    assert one(conn, b"421 4.4.2 idle timeout\r\n").reply.code == 421
    assert conn.state is ClientState.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.noop()


def test_quit() -> None:
    conn = greeted()
    assert conn.quit() == b"QUIT\r\n"
    one(conn, b"221 2.0.0 bye\r\n")
    assert conn.state is ClientState.CLOSED


# -- what we must never send ------------------------------------------------------------


def test_commands_before_the_greeting_are_refused() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.ehlo("me.example")


@pytest.mark.parametrize("path", ["a@b\r\nRSET", "a\n@b", "a\0@b"])
def test_line_breaks_cannot_be_injected(path: str) -> None:
    conn = greeted()
    with pytest.raises(LocalProtocolError):
        conn.mail(path)
    with pytest.raises(LocalProtocolError):
        conn.rcpt(path)
    assert conn.replies_owed == 0


@pytest.mark.parametrize("name", ["", "two words", "tab\there", "bücher.example", "x\r\n"])
def test_bad_ehlo_names_are_refused(name: str) -> None:
    conn = ClientConnection()
    one(conn, b"220 mx\r\n")
    with pytest.raises(LocalProtocolError):
        conn.ehlo(name)


# -- hostile servers ------------------------------------------------------------------


def test_reply_line_at_the_limit_and_past_it() -> None:
    limits = Limits(max_line_length=100, max_reply_lines=5)
    conn = ClientConnection(limits=limits)
    line = b"220 " + b"x" * 96  # exactly 100 bytes without CR LF
    assert one(conn, line + b"\r\n").reply.code == 220
    conn.noop()
    conn.receive_data(b"250 " + b"x" * 97 + b"\r\n")
    with pytest.raises(RemoteProtocolError, match="longer than 100"):
        conn.next_event()


def test_endless_line_is_refused_before_it_ends() -> None:
    conn = ClientConnection(limits=Limits(max_line_length=100))
    conn.receive_data(b"220 " + b"x" * 96 + b"\r")  # still possibly a valid line
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"x")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.pending_input == 0  # nothing more is kept


def test_endless_line_in_pieces_stays_bounded() -> None:
    conn = ClientConnection()
    with pytest.raises(RemoteProtocolError):
        for _ in range(10_000):
            conn.receive_data(b"A" * 1000)
            conn.next_event()
    assert conn.pending_input == 0


def test_reply_of_max_lines_and_one_more() -> None:
    limits = Limits(max_reply_lines=5)
    conn = ClientConnection(limits=limits)
    assert len(one(conn, b"220-a\r\n" * 4 + b"220 end\r\n").reply.text) == 5
    conn.noop()
    conn.receive_data(b"250-a\r\n" * 5)
    with pytest.raises(RemoteProtocolError, match="longer than 5 lines"):
        conn.next_event()


def test_endless_multiline_reply_is_refused() -> None:
    conn = ClientConnection()
    with pytest.raises(RemoteProtocolError):
        for _ in range(1000):
            conn.receive_data(b"220-more\r\n")
            conn.next_event()


@pytest.mark.parametrize(
    "line",
    [b"hello", b"22", b"099 x", b"600 x", b"2500 x", b"250x", b"25O ok", b"-250 x", b" 250 x", b""],
)
def test_garbage_reply_lines(line: bytes) -> None:
    conn = ClientConnection()
    conn.receive_data(line + b"\r\n")
    with pytest.raises(RemoteProtocolError, match="malformed"):
        conn.next_event()


def test_code_changing_within_a_reply() -> None:
    conn = ClientConnection()
    conn.receive_data(b"220-first\r\n250 second\r\n")
    with pytest.raises(RemoteProtocolError, match="changed"):
        conn.next_event()


def test_reply_to_no_command() -> None:
    conn = greeted()
    conn.receive_data(b"250 who asked\r\n")
    with pytest.raises(RemoteProtocolError, match="no command"):
        conn.next_event()
