"""SASL on the endpoints against the real server: every reply path, the
growing delay after failures, the lockout, and submission's rules."""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import trustme
from fakedns import FakeDNS
from kw import Dialog, Kittiwake

Start = Callable[..., Kittiwake]

PASSWORD = "correct horse"
HASH = "bcrypt:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4, b"2a")).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str, password: str, authzid: str = "") -> str:
    return b64(f"{authzid}\0{user}\0{password}")


def conf(tmp: Path, cert: tuple[str, str], *, endpoint: str = "smtp", extra: str = "") -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
tls file {cert[0]} {cert[1]}
auth.pass_table users {{
    table static {{
        entry me@example.org "{HASH}"
    }}
}}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{endpoint} tcp://127.0.0.1:0 {{
    auth &users
{extra}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def secure(port: int, context: ssl.SSLContext) -> Dialog:
    """A session after STARTTLS and a second EHLO that offered AUTH."""
    d = Dialog(port)
    try:
        d.reply()
        d.cmd("EHLO client.example")
        assert d.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        d.starttls(context)
        d.send(b"EHLO client.example\r\n")
        assert any(line.startswith("250-AUTH PLAIN") for line in d.reply())
    except BaseException:
        d.close()
        raise
    return d


@pytest.fixture
def server(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, cert_files: tuple[str, str]
) -> Kittiwake:
    return kittiwake(
        conf(tmp_path, cert_files, extra="    sasl_login yes"),
        args=("--debug.dnsoverride", dns.address),
    )


def test_no_auth_in_clear_when_tls_is_available(server: Kittiwake) -> None:
    with Dialog(server.port()) as d:
        assert d.reply()[0].startswith("220 ")
        assert d.cmd("AUTH PLAIN") == "503 5.5.1 Please introduce yourself first."
        d.send(b"EHLO client.example\r\n")
        assert not any("AUTH" in line for line in d.reply())
        assert d.cmd("AUTH PLAIN " + plain("me@example.org", PASSWORD)) == (
            "538 5.7.11 Encryption required for requested authentication mechanism"
        )


def test_every_reply_path(server: Kittiwake, client_tls: ssl.SSLContext) -> None:
    with secure(server.port(), client_tls) as d:
        assert d.cmd("AUTH") == "501 5.5.4 Missing parameter"
        assert d.cmd("AUTH CRAM-MD5") == "504 5.5.4 Unrecognized authentication type"
        assert d.cmd("AUTH PLAIN !!!") == "501 5.5.2 Invalid base64 data"
        assert d.cmd("AUTH PLAIN =") == "501 5.5.2 Invalid PLAIN response"
        assert d.cmd("AUTH PLAIN " + b64("no-nul-bytes")) == "501 5.5.2 Invalid PLAIN response"
        assert d.cmd("AUTH PLAIN") == "334 "
        assert d.cmd("*") == "501 5.0.0 Negotiation cancelled"
        assert d.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
        assert d.cmd(b64("me@example.org")) == "334 UGFzc3dvcmQ6"
        assert d.cmd("@@@") == "501 5.5.2 Invalid base64 data"
        assert d.cmd("MAIL FROM:<a@example.org>").startswith("250")
        assert d.cmd("AUTH PLAIN =") == "503 5.5.1 AUTH not allowed during a mail transaction"
        assert d.cmd("RSET").startswith("250")
        assert d.cmd("AUTH PLAIN") == "334 "
        assert d.cmd(plain("me@example.org", PASSWORD)) == "235 2.0.0 Authentication succeeded"
        assert d.cmd("AUTH PLAIN =") == "503 5.5.1 Already authenticated"
    server.wait_log(r"authenticated username=me@example\.org")
    assert PASSWORD not in server.log


def test_login_with_initial_response_and_case_folding(
    server: Kittiwake, client_tls: ssl.SSLContext
) -> None:
    with secure(server.port(), client_tls) as d:
        assert d.cmd("AUTH LOGIN " + b64("Me@Example.ORG")) == "334 UGFzc3dvcmQ6"
        assert d.cmd(b64(PASSWORD)) == "235 2.0.0 Authentication succeeded"


@pytest.mark.parametrize(
    "credentials",
    [
        plain("me@example.org", "wrong"),
        plain("nobody@example.org", PASSWORD),
        plain("me@example.org", ""),
        plain("me@example.org", PASSWORD, authzid="boss@example.org"),
    ],
    ids=["wrong-password", "unknown-user", "empty-password", "other-authzid"],
)
def test_failures_are_535_after_a_delay(
    server: Kittiwake, client_tls: ssl.SSLContext, credentials: str
) -> None:
    with secure(server.port(), client_tls) as d:
        started = time.monotonic()
        assert d.cmd("AUTH PLAIN " + credentials) == "535 5.7.8 Invalid credentials"
        assert 0.9 < time.monotonic() - started < 3


def test_failures_grow_slower_then_close(server: Kittiwake, client_tls: ssl.SSLContext) -> None:
    with secure(server.port(), client_tls) as d:
        waits = []
        for _ in range(4):
            started = time.monotonic()
            assert d.cmd("AUTH PLAIN " + plain("me@example.org", "x")) == (
                "535 5.7.8 Invalid credentials"
            )
            waits.append(time.monotonic() - started)
        assert [round(w) for w in waits] == [1, 2, 4, 8]
        assert d.cmd("AUTH PLAIN " + plain("me@example.org", "x")) == (
            "421 4.7.0 Too many authentication failures"
        )
        assert d.closed()


def test_brute_force_is_slow_and_others_are_served_meanwhile(
    server: Kittiwake, client_tls: ssl.SSLContext
) -> None:
    """Issue 5: 50 wrong passwords from one client take >= 10 s in all and end
    in a closed connection; the right password from another client is
    answered at once meanwhile."""
    attempts = 0
    closed = 0
    lock = threading.Lock()
    started = time.monotonic()

    def attacker() -> None:
        nonlocal attempts, closed
        with secure(server.port(), client_tls) as d:
            for i in range(5):
                with lock:
                    attempts += 1
                reply = d.cmd("AUTH PLAIN " + plain("me@example.org", f"guess{i}"))
                if reply.startswith("421"):
                    with lock:
                        closed += int(d.closed())
                    return

    threads = [threading.Thread(target=attacker) for _ in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    with secure(server.port(), client_tls) as good:
        before = time.monotonic()
        assert good.cmd("AUTH PLAIN " + plain("me@example.org", PASSWORD)) == (
            "235 2.0.0 Authentication succeeded"
        )
        assert time.monotonic() - before < 1
    for t in threads:
        t.join(60)
    assert attempts == 50
    assert closed == 10
    assert time.monotonic() - started >= 10


def test_submission_requires_auth_and_delivers(
    kittiwake: Start,
    tmp_path: Path,
    dns: FakeDNS,
    cert_files: tuple[str, str],
    client_tls: ssl.SSLContext,
) -> None:
    srv = kittiwake(conf(tmp_path, cert_files, endpoint="submission"))
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO client.example")
        assert d.cmd("MAIL FROM:<me@example.org>") == "530 5.7.0 Authentication required"
    with smtplib.SMTP("127.0.0.1", srv.port(), timeout=10) as client:
        client.starttls(context=client_tls)
        client.login("me@example.org", PASSWORD)
        client.sendmail(
            "me@example.org", ["user@example.org"], b"From: me@example.org\r\n\r\nsubmitted\r\n"
        )
    (message,) = list((tmp_path / "mail" / "example.org" / "user" / "new").iterdir())
    data = message.read_bytes().replace(b"\n ", b" ")
    # Submission does not trace the client: Received starts with "by".
    assert b"Received: by mx.example.com (envelope-sender <me@example.org>) with ESMTPSA id" in data


def test_submission_without_auth_is_a_config_error(
    kittiwake: Start, tmp_path: Path, cert_files: tuple[str, str]
) -> None:
    text = conf(tmp_path, cert_files, endpoint="submission").replace("    auth &users\n", "")
    text = text.replace("auth.pass_table users", "auth.pass_table unused")
    expected = r"auth\. provider must be set for submission endpoint"
    with pytest.raises(AssertionError, match=expected):
        kittiwake(text)


def test_auth_is_offered_in_clear_without_tls(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, cert_files: tuple[str, str]
) -> None:
    text = conf(tmp_path, cert_files).replace(
        f"tls file {cert_files[0]} {cert_files[1]}", "tls off"
    )
    srv = kittiwake(text, args=("--debug.dnsoverride", dns.address))
    with Dialog(srv.port()) as d:
        d.reply()
        d.send(b"EHLO client.example\r\n")
        assert "250-AUTH PLAIN" in d.reply()
        assert d.cmd("AUTH PLAIN " + plain("me@example.org", PASSWORD)) == (
            "235 2.0.0 Authentication succeeded"
        )


@pytest.fixture
def submission(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, cert_files: tuple[str, str]
) -> Kittiwake:
    return kittiwake(conf(tmp_path, cert_files, endpoint="submission"))


def submit(port: int, context: ssl.SSLContext, header: bytes) -> str:
    """Send one message with `header`; the final reply's text."""
    with secure(port, context) as d:
        assert d.cmd("AUTH PLAIN " + plain("me@example.org", PASSWORD)).startswith("235")
        d.send(b"MAIL FROM:<me@example.org>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        assert [d.reply()[-1][:3] for _ in range(3)] == ["250", "250", "354"]
        d.send(header + b"\r\nbody\r\n.\r\n")
        return d.reply()[-1]


@pytest.mark.parametrize(
    ("header", "reply"),
    [
        (b"Subject: no from\r\n", "554 5.6.0 Message does not contains a From header field"),
        (b'From: <hello@example.org>, ""\r\n', "554 5.6.0 Invalid address in From"),
        (b"From:  adasda\r\n", "554 5.6.0 Invalid address in From"),
        (
            b'From: a@example.org\r\nReply-To: <hello@example.org>, ""\r\n',
            "554 5.6.0 Invalid address in Reply-To",
        ),
        (b'From: a@example.org\r\nCc: <h@example.org>, ""\r\n', "554 5.6.0 Invalid address in Cc"),
        (
            b"From: a@example.org\r\nSender: <hello@example.org> asd\r\n",
            "554 5.6.0 Invalid address in Sender",
        ),
        (b"From: a@example.org, b@example.org\r\n", "554 5.6.0 Missing Sender header field"),
        (b"From: a@example.org\r\nDate: not a date\r\n", "554 5.6.0 Malformed Date header"),
    ],
)
def test_submission_header_rules(
    submission: Kittiwake, client_tls: ssl.SSLContext, header: bytes, reply: str
) -> None:
    got = submit(submission.port(), client_tls, header)
    assert got.startswith(reply + " (msg ID = "), got


def test_submission_adds_message_id_and_date_only_when_missing(
    submission: Kittiwake, client_tls: ssl.SSLContext, tmp_path: Path
) -> None:
    assert submit(submission.port(), client_tls, b"From: me@example.org\r\n").startswith("250")
    complete = (
        b"From: a@example.org, b@example.org\r\nSender: a@example.org\r\n"
        b"Date: Tue, 05 Mar 2024 10:00:00 +0000\r\nMessage-ID: <x@example.org>\r\n"
    )
    assert submit(submission.port(), client_tls, complete).startswith("250")
    new = tmp_path / "mail" / "example.org" / "user" / "new"
    files = [f.read_bytes() for f in new.iterdir()]
    added = next(f for f in files if b"From: me@example.org" in f)
    head = added.split(b"\n\n", 1)[0].split(b"\n")
    fields = [line.split(b":", 1)[0] for line in head if not line.startswith((b" ", b"\t"))]
    assert fields[3:6] == [b"Date", b"Message-Id", b"From"]  # after trace fields
    assert re.search(rb"Message-Id: <[0-9a-f-]{36}@mx\.example\.com>", added)
    kept = next(f for f in files if b"Sender: a@example.org" in f)
    assert kept.count(b"Message-Id") + kept.count(b"Message-ID") == 1
    assert kept.count(b"\nDate:") == 1


def test_authorize_sender_on_submission(
    kittiwake: Start, tmp_path: Path, cert_files: tuple[str, str], client_tls: ssl.SSLContext
) -> None:
    """A logged-in user may send only as the addresses the configuration allows."""
    block = """    check {
        authorize_sender {
            user_to_email static {
                entry me@example.org me@example.org alias@example.org
            }
        }
    }"""
    srv = kittiwake(conf(tmp_path, cert_files, endpoint="submission", extra=block))

    def send(mail_from: str, header_from: str) -> tuple[str, str]:
        with secure(srv.port(), client_tls) as d:
            assert d.cmd("AUTH PLAIN " + plain("me@example.org", PASSWORD)).startswith("235")
            mail = d.cmd(f"MAIL FROM:<{mail_from}>")
            if not mail.startswith("250"):
                return mail, ""
            rcpt = d.cmd("RCPT TO:<user@example.org>")
            if not rcpt.startswith("250"):
                return rcpt, ""
            d.send(b"DATA\r\n")
            assert d.reply()[-1].startswith("354")
            d.send(f"From: {header_from}\r\n\r\nhi\r\n.\r\n".encode())
            return rcpt, d.reply()[-1]

    assert send("me@example.org", "me@example.org")[1] == "250 2.0.0 OK: queued"
    assert send("alias@example.org", "Me <alias@example.org>")[1] == "250 2.0.0 OK: queued"
    refused, _ = send("boss@example.org", "me@example.org")
    assert re.fullmatch(
        r"553 5\.7\.0 Unauthorized use of sender address \(msg ID = [0-9a-f]{8}\)", refused
    ), refused
    _, body = send("me@example.org", "boss@example.org")  # envelope fine, header not
    assert re.fullmatch(
        r"553 5\.7\.0 Unauthorized use of sender address \(msg ID = [0-9a-f]{8}\)", body
    ), body
    delivered = list((tmp_path / "mail" / "example.org" / "user" / "new").iterdir())
    assert len(delivered) == 2
