"""The replies the server writes for addresses and commands, pinned end to end.

Every entry of the address reply table (`kittiwake.address.REPLIES`) and the
replies `server/transaction.py` writes are asserted here word for word
against the real server process, so changing one of them fails a test
(docs/address.md, "Errors and replies"; docs/server.md, "Errors"). The last
part feeds arbitrary bytes as commands, pipelined after valid ones, and
checks that the valid ones are always answered and nothing is logged at
error level.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kw import Dialog, Kittiwake, free_port

Start = Callable[..., Kittiwake]


def config(tmp: Path, *, block: str = "", kind: str = "smtp") -> str:
    listen = f"tcp://127.0.0.1:{free_port()}"
    return f"""
state_dir {tmp}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{kind} {listen} {{
    tls off
{block}
    destination postmaster {{
        deliver_to dummy
    }}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


@pytest.fixture
def server(kittiwake: Start, tmp_path: Path) -> Kittiwake:
    return kittiwake(config(tmp_path))


def dialog(server: Kittiwake) -> Dialog:
    d = Dialog(server.port(), timeout=10)
    assert d.reply()[0].startswith("220 ")
    assert d.cmd("EHLO client.example").startswith("250 ")
    return d


# -- the address reply table, at MAIL and at RCPT ----------------------------------

MAIL_REPLIES = [
    ("MAIL FROM:<a@b", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
    ("MAIL FROM:a@b c@d", "500 5.5.4 Unknown MAIL FROM argument"),
    ("MAIL FROM:<u@[300.1.1.1]>", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<u@remote@example.net>", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<" + "a" * 600 + "@example.net>", "501 5.5.2 Path too long"),
    ("MAIL FROM:<postmaster>", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"),
]

RCPT_REPLIES = [
    ("RCPT TO:<>", "501 5.5.2 Was expecting RCPT arg syntax of TO:<address>"),
    ("RCPT TO:<u@[300.1.1.1]>", "501 5.1.3 Bad recipient address syntax"),
    # Never the local mailbox `u@remote`: a second unquoted `@` is a syntax error.
    ("RCPT TO:<u@remote@example.org>", "501 5.1.3 Bad recipient address syntax"),
    ("RCPT TO:<" + "a" * 600 + "@example.org>", "501 5.5.2 Path too long"),
    ("RCPT TO:<ѣ@example.org>", "553 5.6.7 SMTPUTF8 is required for non-ASCII recipients"),
    ("RCPT TO:<u@xn--zz.example.org>", "501 5.1.2 Unable to normalize the recipient address"),
]


@pytest.mark.parametrize(("command", "reply"), MAIL_REPLIES)
def test_mail_address_replies(server: Kittiwake, command: str, reply: str) -> None:
    with dialog(server) as d:
        assert d.cmd(command) == reply


@pytest.mark.parametrize(("command", "reply"), RCPT_REPLIES)
def test_rcpt_address_replies(server: Kittiwake, command: str, reply: str) -> None:
    with dialog(server) as d:
        assert d.cmd("MAIL FROM:<s@example.net>") == (
            "250 2.0.0 Roger, accepting mail from <s@example.net>"
        )
        got = d.cmd(command)
        assert got.startswith(reply), got
        # The pipeline's replies carry the message ID; the syntax ones do not.
        assert ("msg ID" in got) == reply.startswith(("553", "501 5.1.2")), got


def test_sender_replies_after_the_syntax(kittiwake: Start, tmp_path: Path) -> None:
    """The SMTPUTF8 rule and normalisation of the sender, at MAIL (no msg ID)."""
    server = kittiwake(config(tmp_path, block="    defer_sender_reject no"))
    with dialog(server) as d:
        assert d.cmd("MAIL FROM:<ѣ@example.net>") == (
            "550 5.6.7 SMTPUTF8 is required for non-ASCII senders"
        )
        assert d.cmd("MAIL FROM:<s@xn--zz.example>") == (
            "553 5.1.7 Unable to normalize the sender address"
        )
        assert d.cmd("MAIL FROM:<ѣ@example.net> SMTPUTF8") == (
            "250 2.0.0 Roger, accepting mail from <ѣ@example.net>"
        )


def test_deferred_sender_reply_repeats_at_every_rcpt(server: Kittiwake) -> None:
    with dialog(server) as d:
        assert d.cmd("MAIL FROM:<ѣ@example.net>").startswith("250 2.0.0 Roger")
        first = d.cmd("RCPT TO:<user@example.org>")
        assert first == "550 5.6.7 SMTPUTF8 is required for non-ASCII senders"
        assert d.cmd("RCPT TO:<other@example.org>") == first


def test_quoted_local_part_and_postmaster_are_valid(server: Kittiwake, tmp_path: Path) -> None:
    """RFC 5321 §4.1.2 quoted strings and §4.5.1 `<postmaster>` in any case."""
    with dialog(server) as d:
        assert d.cmd("MAIL FROM:<s@example.net>").startswith("250 ")
        assert d.cmd('RCPT TO:<"john doe"@example.org>') == (
            "250 2.0.0 I'll make sure <john doe@example.org> gets this"
        )
    with dialog(server) as d:
        assert d.cmd("MAIL FROM:<s@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<PostMaster>").startswith("250 2.0.0 I'll make sure <PostMaster>")
        assert d.cmd("RCPT TO:<postmaster>").startswith("250 2.0.0 I'll make sure <postmaster>")


# -- the rest of what server/transaction.py answers ---------------------------------


def test_transaction_replies(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path, block="    max_received 2\n    max_message_size 100B"))
    with dialog(server) as d:
        assert d.cmd("MAIL FROM:<s@example.net>") == (
            "250 2.0.0 Roger, accepting mail from <s@example.net>"
        )
        assert d.cmd("RCPT TO:<user@example.org>") == (
            "250 2.0.0 I'll make sure <user@example.org> gets this"
        )
        assert d.cmd("DATA") == "354 Go ahead. End your data with <CR><LF>.<CR><LF>"
        assert d.cmd("Subject: ok\r\n\r\nhi\r\n.") == "250 2.0.0 OK: queued"
        # Too many Received fields: a loop.
        d.cmd("MAIL FROM:<s@example.net>")
        d.cmd("RCPT TO:<user@example.org>")
        d.cmd("DATA")
        loop = "Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nx\r\n."
        got = d.cmd(loop)
        assert got.startswith(
            "554 5.4.6 Too many Received header fields (3), possible forwarding loop (msg ID = "
        ), got
        # Past max_message_size: the 552 comes after the final dot.
        d.cmd("MAIL FROM:<s@example.net>")
        d.cmd("RCPT TO:<user@example.org>")
        d.cmd("DATA")
        got = d.cmd("Subject: big\r\n\r\n" + "x" * 200 + "\r\n.")
        assert got.startswith("552 5.3.4 Maximum message size exceeded (msg ID = "), got


def test_submission_wants_authentication(kittiwake: Start, tmp_path: Path) -> None:
    block = "    auth pass_table static {\n        entry me@example.org nothing\n    }"
    server = kittiwake(config(tmp_path, block=block, kind="submission"))
    with dialog(server) as d:
        assert d.cmd("MAIL FROM:<s@example.org>") == "530 5.7.0 Authentication required"


def test_lmtp_replies_per_recipient(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path, kind="lmtp"))
    with Dialog(server.port(), timeout=10) as d:
        assert d.reply()[0].startswith("220 ")
        assert d.cmd("LHLO client.example").startswith("250 ")
        d.cmd("MAIL FROM:<s@example.net>")
        d.cmd("RCPT TO:<a@example.org>")
        d.cmd("RCPT TO:<b@example.org>")
        d.cmd("DATA")
        d.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        assert d.reply() == ["250 2.0.0 <a@example.org> OK: queued"]
        assert d.reply() == ["250 2.0.0 <b@example.org> OK: queued"]


# -- the greeting argument ------------------------------------------------------------


@pytest.mark.parametrize("arg", [b"a\x00b", b"a\x0bb", b"a\x0cb", b"\xffhost", b"h\xc3\xa9.org"])
def test_bad_greeting_arguments_are_refused_and_never_echoed(
    server: Kittiwake, tmp_path: Path, arg: bytes
) -> None:
    with Dialog(server.port(), timeout=10) as d:
        assert d.reply()[0].startswith("220 ")
        d.send(b"EHLO " + arg + b"\r\n")
        assert d.reply() == ["501 5.5.2 Invalid domain/address argument"]
        d.send(b"EHLO client.example\r\nMAIL FROM:<s@example.net>\r\n")
        assert d.reply()[-1].startswith("250 ")
        assert d.reply()[-1].startswith("250 ")
        d.send(b"RCPT TO:<user@example.org>\r\nDATA\r\n")
        assert d.reply()[-1].startswith("250 ")
        assert d.reply()[-1].startswith("354 ")
        d.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        assert d.reply()[-1].startswith("250 ")
    (stored,) = (tmp_path / "mail" / "example.org" / "user" / "new").iterdir()
    received = stored.read_bytes().split(b"\nSubject:")[0]
    assert b"from client.example " in received
    assert not any(c < 0x20 and c not in (9, 10) for c in received), received


# -- no command's fault costs the replies of those before it --------------------------

VALID_PREFIX = (
    b"EHLO client.example\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\n",
    ["250 LIMITS RCPTMAX=20000", "250 2.0.0 Roger, accepting mail from <a@b.example>"],
)


def test_undecodable_verb_after_smtputf8_mail_keeps_pending_replies(server: Kittiwake) -> None:
    with Dialog(server.port(), timeout=10) as d:
        assert d.reply()[0].startswith("220 ")
        d.send(VALID_PREFIX[0] + b"\xffABC\r\nNOOP\r\n")
        assert d.reply()[-1] == VALID_PREFIX[1][0]
        assert d.reply()[-1] == VALID_PREFIX[1][1]
        assert d.reply() == ["500 5.5.2 Syntax errors, ?ABC command unrecognized"]
        assert d.reply() == ["250 2.0.0 I have successfully done nothing"]
    assert "error " not in server.log


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kittiwake]:
    tmp = tmp_path_factory.mktemp("fuzz")
    server = Kittiwake(tmp, config(tmp))
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def _replies(sock: socket.socket) -> list[str]:
    """Every reply line the server sends until it closes or goes quiet."""
    data = b""
    sock.settimeout(2.0)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").split("\r\n")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.binary(min_size=0, max_size=60), min_size=1, max_size=4))
def test_arbitrary_commands_never_cost_earlier_replies(
    fuzz_server: Kittiwake, junk: list[bytes]
) -> None:
    lines = b"".join(j.replace(b"\n", b" ") + b"\r\n" for j in junk)
    with socket.create_connection(("127.0.0.1", fuzz_server.port()), timeout=10) as sock:
        sock.sendall(VALID_PREFIX[0] + lines + b"QUIT\r\n")
        got = _replies(sock)
    assert got[0].startswith("220 "), got
    ehlo_end = next(i for i, line in enumerate(got) if line.startswith("250 "))
    assert got[ehlo_end] == VALID_PREFIX[1][0], got
    assert got[ehlo_end + 1] == VALID_PREFIX[1][1], got
    # Each junk line got an answer of its own (or the connection ended cleanly).
    assert all(line[:3].isdigit() for line in got[ehlo_end + 1 :] if line), got
    errors = [line for line in fuzz_server.log.splitlines() if line.startswith("error ")]
    assert not errors, errors
