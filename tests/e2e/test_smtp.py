"""The `smtp` endpoint against the real server process, with real clients.

Each test starts `kittiwake run` on its own configuration (free ports,
storage under tmp_path, a fake DNS server for reverse lookups) and talks to
it with smtplib, raw sockets or swaks.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from fakedns import SERVFAIL, FakeDNS
from kw import Dialog, Kittiwake, maildir_files, need_tool

Start = Callable[..., Kittiwake]

EHLO_PLAIN = [
    "250-Hello client.example",
    "250-PIPELINING",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-CHUNKING",
    "250-SMTPUTF8",
    "250-SIZE 33554432",
    "250 LIMITS RCPTMAX=20000",
]


def config(
    tmp: Path,
    *,
    block: str = "",
    top: str = "",
    listen: str = "tcp://127.0.0.1:0",
    tls: str = "tls off",
) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
{top}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
smtp {listen} {{
    {tls}
{block}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


@pytest.fixture
def server(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> Kittiwake:
    return kittiwake(config(tmp_path), args=("--debug.dnsoverride", dns.address))


def stored(tmp: Path, user: str = "user", domain: str = "example.org") -> list[bytes]:
    return [p.read_bytes() for p in maildir_files(tmp / "mail", domain, user)]


def body_of(message: bytes) -> bytes:
    """What follows the header (Maildir files have LF line ends)."""
    return message.split(b"\n\n", 1)[1]


def greet(d: Dialog) -> None:
    assert d.reply()[0].startswith("220 ")
    d.send(b"EHLO client.example\r\n")
    assert d.reply()[-1].startswith("250 ")


# -- a whole delivery -----------------------------------------------------------


def test_smtplib_delivers_into_maildir(server: Kittiwake, tmp_path: Path) -> None:
    with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as client:
        client.ehlo("client.example")
        refused = client.sendmail(
            "sender@example.net",
            ["user@example.org"],
            b"From: sender@example.net\r\nSubject: hi\r\n\r\nhello\r\nworld\r\n",
        )
    assert refused == {}
    (message,) = stored(tmp_path)
    lines = message.split(b"\n")
    assert lines[0] == b"Return-Path: <sender@example.net>"
    assert lines[1] == b"Delivered-To: user@example.org"
    received = message.split(b"\nFrom:", 1)[0].split(b"\n", 2)[2].decode()
    folded = received.split("\n")
    # Folding (docs/server.md, "Received"): `Received: ` + 66 characters, then
    # lines of <= 76.
    assert len(folded[0]) <= len("Received: ") + 66
    assert all(len(line) <= 76 and line.startswith(" ") for line in folded[1:])
    assert re.fullmatch(
        r"Received: from client\.example \(client\.example\.test \[127\.0\.0\.1\]\) by"
        r" mx\.example\.com \(envelope-sender <sender@example\.net>\) with ESMTP id"
        r" [0-9a-f]{8}; [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}",
        received.replace("\n ", " "),
    ), received
    assert body_of(message) == b"hello\nworld\n"


def test_the_accepted_line_counts_recipients_and_the_whole_message(
    server: Kittiwake, tmp_path: Path
) -> None:
    with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as client:
        client.sendmail(
            "sender@example.net",
            ["user@example.org", "other@example.org"],
            b"Subject: two\r\n\r\nbody\r\n",
        )
    line = server.wait_log(r"accepted msg_id=\S+ rcpts=\d+ size=\d+")
    assert line.endswith(" rcpts=2 size=22")  # the message as the client sent it
    assert len(stored(tmp_path)) == 1 and len(stored(tmp_path, "other")) == 1


def test_dsn_parameters_are_taken_and_checked(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    """RFC 3461: DSN is offered where every path ends in a queue, its parameters
    accepted there and a bad one refused; a pipeline without a queue does not offer it."""
    conf = config(tmp_path).replace("deliver_to &mb", "deliver_to queue inbound {\n target &mb\n }")
    srv = kittiwake(conf, args=("--debug.dnsoverride", dns.address))
    with smtplib.SMTP("127.0.0.1", srv.port(), timeout=10) as client:
        client.ehlo("client.example")
        assert client.has_extn("dsn")
        refused = client.sendmail(
            "sender@example.net",
            ["user@example.org"],
            b"Subject: dsn\r\n\r\nbody\r\n",
            mail_options=["RET=HDRS", "ENVID=QQ314159"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;user+2Bx@example.org"],
        )
        assert refused == {}
        assert client.mail("sender@example.net", ["RET=EVERYTHING"]) == (
            501,
            b"5.5.4 Malformed RET parameter value",
        )
    deadline = time.monotonic() + 10
    while not stored(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(stored(tmp_path)) == 1


def test_without_a_queue_dsn_is_not_offered(server: Kittiwake) -> None:
    with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as client:
        client.ehlo("client.example")
        assert not client.has_extn("dsn")
        assert client.mail("sender@example.net", ["RET=HDRS"]) == (
            504,
            b"5.5.4 RET is not implemented",
        )


def test_banner_and_capabilities(server: Kittiwake) -> None:
    with Dialog(server.port()) as d:
        assert d.reply() == ["220 mx.example.com ESMTP Service Ready"]
        d.send(b"EHLO client.example\r\n")
        assert d.reply() == EHLO_PLAIN
        assert d.cmd("HELO client.example") == "250 2.0.0 Hello client.example"
        assert d.cmd("QUIT") == "221 2.0.0 Bye"
        assert d.closed()


def test_relaying_is_refused_per_recipient(server: Kittiwake, tmp_path: Path) -> None:
    with Dialog(server.port()) as d:
        greet(d)
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        reply = d.cmd("RCPT TO:<victim@elsewhere.example>")
        assert re.fullmatch(r"550 5\.7\.1 Relaying denied \(msg ID = [0-9a-f]{8}\)", reply)
        assert d.cmd("RCPT TO:<user@example.org>") == (
            "250 2.0.0 I'll make sure <user@example.org> gets this"
        )


def test_reverse_dns_failure_leaves_the_name_out(kittiwake: Start, tmp_path: Path) -> None:
    failing = FakeDNS({("1.0.0.127.in-addr.arpa", "PTR"): SERVFAIL})
    try:
        srv = kittiwake(config(tmp_path), args=("--debug.dnsoverride", failing.address))
        with smtplib.SMTP("127.0.0.1", srv.port(), timeout=10) as client:
            client.sendmail("a@example.net", ["user@example.org"], b"Subject: x\r\n\r\nx\r\n")
    finally:
        failing.close()
    (message,) = stored(tmp_path)
    assert b"Received: from " in message
    assert b"([127.0.0.1]) by" in message.replace(b"\n ", b" ")


def test_pipelined_transactions_in_one_write(server: Kittiwake, tmp_path: Path) -> None:
    with Dialog(server.port()) as d:
        assert d.reply()[0].startswith("220")
        d.send(
            b"EHLO client.example\r\n"
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n"
            b"Subject: one\r\n\r\nfirst\r\n.\r\n"
            b"MAIL FROM:<b@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n"
            b"Subject: two\r\n\r\nsecond\r\n.\r\n"
            b"QUIT\r\n"
        )
        replies = [d.reply()[-1][:3] for _ in range(10)]
        assert replies == ["250", "250", "250", "354", "250", "250", "250", "354", "250", "221"]
    bodies = sorted(body_of(m) for m in stored(tmp_path))
    assert bodies == [b"first\n", b"second\n"]
    ids = set(re.findall(rb"id ([0-9a-f]{8});", b"".join(stored(tmp_path)).replace(b"\n ", b" ")))
    assert len(ids) == 2


@pytest.mark.parametrize(
    ("content", "stored_body"),
    [
        (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\n"),
        (b"a\n.\r\nb\r\n.\r\n", b"a\n.\nb\n"),
        (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\n"),
        (b"a\r\n.\rb\r\n.\r\n", b"a\n\rb\n"),
        (b"a\r\n.\nb\r\n.\r\n", b"a\n\nb\n"),
    ],
)
def test_smuggling_never_ends_data_early(
    server: Kittiwake, tmp_path: Path, content: bytes, stored_body: bytes
) -> None:
    with Dialog(server.port()) as d:
        greet(d)
        d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
        d.send(b"Subject: s\r\n\r\n" + content)
        assert d.reply()[-1] == "250 2.0.0 OK: queued"
        # Had the data ended early, "b..." would have been a command.
        assert d.cmd("NOOP") == "250 2.0.0 I have successfully done nothing"
    (message,) = stored(tmp_path)
    assert body_of(message) == stored_body


def test_client_vanishing_mid_data_leaves_nothing(server: Kittiwake, tmp_path: Path) -> None:
    with Dialog(server.port()) as d:
        greet(d)
        d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
        d.send(b"Subject: s\r\n\r\n" + b"x" * 100_000)
    server.wait_log(r"aborted msg_id=")
    time.sleep(0.3)
    mail = tmp_path / "mail" / "example.org" / "user"
    for sub in ("new", "tmp"):
        folder = mail / sub
        assert not folder.exists() or not list(folder.iterdir())
    assert not list((tmp_path / "state" / "buffer").iterdir())


def test_bdat_with_binary_data(server: Kittiwake, tmp_path: Path) -> None:
    payload = b"Subject: bin\r\n\r\n\x00\x01\r\n.\r\n\xff"
    with Dialog(server.port()) as d:
        greet(d)
        d.send(
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\n"
            + b"BDAT %d\r\n" % len(payload)
            + payload
            + b"BDAT 4 LAST\r\nend\n"
        )
        assert [d.reply()[-1] for _ in range(4)][2:] == [
            "250 2.0.0 Continue",
            "250 2.0.0 OK: queued",
        ]
    (message,) = stored(tmp_path)
    assert body_of(message) == b"\x00\x01\n.\n\xffend\n"


# -- limits ---------------------------------------------------------------------


def test_message_size_at_and_past_the_limit(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = kittiwake(
        config(tmp_path, block="    max_message_size 100b"),
        args=("--debug.dnsoverride", dns.address),
    )
    head = b"Subject: s\r\n\r\n"
    with Dialog(srv.port()) as d:
        greet(d)
        assert d.cmd("MAIL FROM:<a@example.net> SIZE=101") == "552 5.3.4 Max message size exceeded"
        for size, expect in ((100, "250 2.0.0 OK: queued"), (101, "552 5.3.4 Maximum message")):
            d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
            assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
            body = b"x" * (size - len(head) - 2) + b"\r\n"
            d.send(head + body + b".\r\n")
            assert d.reply()[-1].startswith(expect)
        assert d.cmd("NOOP").startswith("250")
    assert len(stored(tmp_path)) == 1


def test_header_size_limit(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = kittiwake(
        config(tmp_path, block="    max_header_size 1K"),
        args=("--debug.dnsoverride", dns.address),
    )
    with Dialog(srv.port()) as d:
        greet(d)
        # At the limit: a header section (with its empty line) of exactly 1 KiB.
        d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
        subject = b"Subject: " + b"x" * (1024 - len(b"Subject: ") - 4) + b"\r\n\r\n"
        assert len(subject) == 1024
        d.send(subject + b"body\r\n.\r\n")
        assert d.reply()[-1] == "250 2.0.0 OK: queued"
        # Past it:
        d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
        d.send(b"Subject: " + b"x" * 2048 + b"\r\n\r\nbody\r\n.\r\n")
        assert re.fullmatch(
            r"552 5\.3\.4 Message header size exceeds limit \(msg ID = [0-9a-f]{8}\)",
            d.reply()[-1],
        )
        assert d.cmd("QUIT") == "221 2.0.0 Bye"
    assert len(stored(tmp_path)) == 1  # only the one at the limit


@pytest.mark.parametrize(("count", "accepted"), [(3, True), (4, False)])
def test_max_received(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, count: int, accepted: bool
) -> None:
    srv = kittiwake(
        config(tmp_path, block="    max_received 3"), args=("--debug.dnsoverride", dns.address)
    )
    header = b"Received: from x by y; Tue, 05 Mar 2024 10:00:00 +0000\r\n" * count
    with Dialog(srv.port()) as d:
        greet(d)
        d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
        d.send(header + b"Subject: s\r\n\r\nb\r\n.\r\n")
        reply = d.reply()[-1]
    if accepted:
        assert reply == "250 2.0.0 OK: queued"
    else:
        assert re.fullmatch(
            r"554 5\.4\.6 Too many Received header fields \(4\), possible forwarding loop"
            r" \(msg ID = [0-9a-f]{8}\)",
            reply,
        )


def test_malformed_header(server: Kittiwake, tmp_path: Path) -> None:
    with Dialog(server.port()) as d:
        greet(d)
        d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
        d.send(b"foobar\r\n\r\nbody\r\n.\r\n")
        assert re.fullmatch(
            r"554 5\.6\.0 Malformed message header \(msg ID = [0-9a-f]{8}\)", d.reply()[-1]
        )


def test_line_length_limit(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = kittiwake(
        config(tmp_path, block="    smtp_max_line_length 2000"),
        args=("--debug.dnsoverride", dns.address),
    )
    with Dialog(srv.port()) as d:
        greet(d)
        # 5 + 1989 = 1994 bytes (+ CR LF): within the limit. (A path that
        # long would be refused for its own length, docs/address.md.)
        assert d.cmd("NOOP " + "a" * 1989).startswith("250")
        assert d.cmd("MAIL FROM:<" + "a" * 2000 + ">") == (
            "500 5.4.0 Too long line, closing connection"
        )
        assert d.closed()


def test_read_timeout_is_a_deadline_per_command(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = kittiwake(
        config(tmp_path, block="    read_timeout 1s"), args=("--debug.dnsoverride", dns.address)
    )
    with Dialog(srv.port()) as d:
        greet(d)
        started = time.monotonic()
        # Trickling bytes does not extend the deadline (docs/server.md, "Timeouts").
        for c in b"NOOP":
            d.send(bytes([c]))
            time.sleep(0.3)
        assert d.reply() == ["421 4.4.2 Idle timeout, bye bye"]
        assert 0.9 < time.monotonic() - started < 3
        assert d.closed()


def test_defer_sender_reject(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = kittiwake(config(tmp_path), args=("--debug.dnsoverride", dns.address))
    with Dialog(srv.port()) as d:
        greet(d)
        assert d.cmd("MAIL FROM:<ѣ@example.org>").startswith("250 ")
        first = d.cmd("RCPT TO:<user@example.org>")
        assert first == "550 5.6.7 SMTPUTF8 is required for non-ASCII senders"
        assert d.cmd("RCPT TO:<user@example.org>") == first
        assert d.cmd("RSET").startswith("250")
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")  # cleared per transaction
    srv2 = kittiwake(
        config(tmp_path, block="    defer_sender_reject no"),
        args=("--debug.dnsoverride", dns.address),
    )
    with Dialog(srv2.port(-1 if len(srv2.addresses) > 1 else 0)) as d:
        greet(d)
        assert d.cmd("MAIL FROM:<ѣ@example.org>") == (
            "550 5.6.7 SMTPUTF8 is required for non-ASCII senders"
        )


def test_utf8_addresses_with_smtputf8(server: Kittiwake, tmp_path: Path) -> None:
    with Dialog(server.port()) as d:
        greet(d)
        assert d.cmd("MAIL FROM:<ѣ@example.net> SMTPUTF8").startswith("250 ")
        assert d.cmd("RCPT TO:<user@EXAMPLE.org>").startswith("250 ")
        d.send(b"DATA\r\n")
        assert d.reply()[-1].startswith("354")
        d.send("Subject: ü\r\n\r\nü\r\n.\r\n".encode())
        assert d.reply()[-1] == "250 2.0.0 OK: queued"
    (message,) = stored(tmp_path)
    assert b"with UTF8ESMTP id" in message.replace(b"\n ", b" ")


def test_two_hundred_concurrent_sessions(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    # All 200 come from 127.0.0.1: above the default per-IP cap of 100.
    server = kittiwake(
        config(tmp_path, block="    max_connections_per_ip 250"),
        args=("--debug.dnsoverride", dns.address),
    )
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", server.port(), timeout=60) as c:
                c.sendmail(
                    f"s{i}@example.net", ["user@example.org"], f"Subject: {i}\r\n\r\n{i}\r\n"
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    bodies = {body_of(m) for m in stored(tmp_path)}
    assert bodies == {f"{i}\n".encode() for i in range(200)}


# -- TLS ------------------------------------------------------------------------


def test_starttls(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, ca: trustme.CA, cert_files: tuple[str, str]
) -> None:
    cert, key = cert_files
    srv = kittiwake(
        config(tmp_path, tls=f"tls file {cert} {key}"), args=("--debug.dnsoverride", dns.address)
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", srv.port(), timeout=10) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo("client.example")
        assert not client.has_extn("starttls")
        assert client.has_extn("requiretls")
        client.sendmail("a@example.net", ["user@example.org"], b"Subject: t\r\n\r\ntls\r\n")
    (message,) = stored(tmp_path)
    assert b"with ESMTPS id" in message.replace(b"\n ", b" ")


def test_commands_pipelined_after_starttls_are_never_run(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, cert_files: tuple[str, str]
) -> None:
    cert, key = cert_files
    srv = kittiwake(
        config(tmp_path, tls=f"tls file {cert} {key}"), args=("--debug.dnsoverride", dns.address)
    )
    with Dialog(srv.port()) as d:
        greet(d)
        d.send(b"STARTTLS\r\nMAIL FROM:<a@example.net>\r\n")
        assert not d.reply()[-1].startswith("250")
        assert d.closed()


def test_implicit_tls_listener(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, ca: trustme.CA, cert_files: tuple[str, str]
) -> None:
    cert, key = cert_files
    srv = kittiwake(
        config(tmp_path, tls=f"tls file {cert} {key}", listen="tls://127.0.0.1:0"),
        args=("--debug.dnsoverride", dns.address),
    )
    assert srv.addresses[0].startswith("tls://127.0.0.1:")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP_SSL("127.0.0.1", srv.port(), timeout=10, context=context) as client:
        client.ehlo("client.example")
        assert not client.has_extn("starttls")
        client.sendmail("a@example.net", ["user@example.org"], b"Subject: t\r\n\r\nimplicit\r\n")
    (message,) = stored(tmp_path)
    assert body_of(message) == b"implicit\n"


# -- real clients and operations --------------------------------------------------


def test_swaks(server: Kittiwake, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            need_tool("swaks", "swaks"),
            "--to",
            "user@example.org",
            "--from",
            "s@example.net",
            "--server",
            f"127.0.0.1:{server.port()}",
            "--helo",
            "client.example",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 OK: queued" in result.stdout
    assert len(stored(tmp_path)) == 1


def test_sigterm_tells_idle_sessions_and_lets_transactions_finish(
    server: Kittiwake, tmp_path: Path
) -> None:
    idle = Dialog(server.port())
    greet(idle)
    busy = Dialog(server.port())
    greet(busy)
    busy.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
    assert [busy.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
    server.proc.send_signal(15)
    assert idle.reply() == ["421 4.3.2 Service shutting down, try again later"]
    busy.send(b"Subject: late\r\n\r\nfinished\r\n.\r\n")
    assert busy.reply()[-1] == "250 2.0.0 OK: queued"
    assert busy.reply() == ["421 4.3.2 Service shutting down, try again later"]
    assert server.proc.wait(15) == 0
    idle.close()
    busy.close()
    assert [body_of(m) for m in stored(tmp_path)] == [b"finished\n"]


def test_unexpected_errors_are_temporary(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    crash = "    destination crash.example {\n        deliver_to test.crash\n    }"
    srv = kittiwake(config(tmp_path, block=crash), args=("--debug.dnsoverride", dns.address))
    with Dialog(srv.port()) as d:
        greet(d)
        d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@crash.example>\r\nDATA\r\n")
        assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
        d.send(b"Subject: s\r\n\r\nb\r\n.\r\n")
        reply = d.reply()[-1]
    assert re.fullmatch(r"451 4\.3\.0 Internal server error \(msg ID = [0-9a-f]{8}\)", reply)
    assert "Traceback" not in reply
    # The log names the bug's place on the error's one line (docs/logging.md).
    srv.wait_log(r"crash target.*where=\S*fakes\.py:\d+ body")
    assert "traceback=" not in srv.log  # only with debug on


def test_debug_logs_carry_the_traceback_of_a_bug(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    crash = "    destination crash.example {\n        deliver_to test.crash\n    }"
    conf = "debug yes\n" + config(tmp_path, block=crash)
    srv = kittiwake(conf, args=("--debug.dnsoverride", dns.address))
    with (
        smtplib.SMTP("127.0.0.1", srv.port(), timeout=10) as client,
        pytest.raises(smtplib.SMTPDataError),
    ):
        client.sendmail("a@example.net", ["user@crash.example"], b"Subject: s\r\n\r\nb\r\n")
    line = srv.wait_log(r"crash target.*traceback=.*")
    assert "Traceback (most recent call last)" in line and "\\n" in line


def test_socket_left_open_after_quit_is_closed_by_server(server: Kittiwake) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port()), timeout=10)
    sock.sendall(b"QUIT\r\n")
    data = b""
    while True:
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.endswith(b"221 2.0.0 Bye\r\n")
