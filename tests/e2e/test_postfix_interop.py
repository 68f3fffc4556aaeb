"""Interoperability with a real MTA: Postfix delivering into kittiwake.

1. Postfix's `lmtp` client delivers into kittiwake's `lmtp unix://...`
   socket; kittiwake's per-recipient replies (550 at RCPT for a missing
   mailbox, then one reply per accepted recipient after DATA, here a 250
   and a 451) decide what Postfix bounces, marks sent and keeps queued.
2. Postfix's `smtp` client relays through kittiwake's submission port with
   STARTTLS and SASL PLAIN (Cyrus SASL client, `libsasl2-modules`); a wrong
   password leaves the message deferred in Postfix's queue.

Every message is injected complete (From, To, Date, Message-ID, ...) so
Postfix adds nothing but its Received field; what lands in the Maildir must
be the injected bytes (CR LF turned into LF, the Maildir convention) below
the trace fields (Return-Path, Delivered-To, Received).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
import trustme
from fakedns import FakeDNS
from kw import Kittiwake, maildir_files
from postfix import Postfix, instance_pids, masters, need_postfix, need_sasl_plain, not_root

Start = Callable[..., Kittiwake]
NewPostfix = Callable[[dict[str, str]], Postfix]

TRACE = (b"return-path", b"delivered-to", b"received")
USER = "me@example.org"
PASSWORD = "correct-horse-battery"  # no blanks: it sits in a static: map
HASH = "bcrypt:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4, b"2a")).decode()


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    server = FakeDNS({})
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[NewPostfix]:
    """Private Postfix instances (not yet started: settings may still change);
    all are stopped, and checked gone, after the test."""
    need_postfix()
    reason = not_root()
    if reason:
        pytest.skip(reason)
    made: list[Postfix] = []

    def make(settings: dict[str, str]) -> Postfix:
        instance = Postfix(settings, keep_log=tmp_path / f"maillog-{len(made)}")
        made.append(instance)
        return instance

    try:
        yield make
    finally:
        for instance in made:
            instance.close()
        for instance in made:
            assert masters(instance.config_dir) == [], "a Postfix master is still running"
            assert instance_pids(instance.config_dir) == [], "a Postfix process is left"


def message(tag: str, to: str, body: bytes, *, extra: bytes = b"") -> bytes:
    """A complete message (nothing for Postfix to add), CR LF lines."""
    return (
        b"From: Sender <sender@example.org>\r\n"
        + f"To: {to}\r\n".encode()
        + f"Subject: interop {tag}\r\n".encode()
        + b"Date: Tue, 05 Mar 2024 10:00:00 +0000\r\n"
        + f"Message-ID: <{tag}@client.example.net>\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def split_trace(stored: bytes) -> tuple[list[bytes], bytes]:
    """The trace fields on top of a stored message, and the rest."""
    fields: list[bytes] = []
    while True:
        field = re.match(rb"([A-Za-z-]+):[^\n]*\n(?:[ \t][^\n]*\n)*", stored)
        if not field or field.group(1).lower() not in TRACE:
            return fields, stored
        fields.append(field.group(0))
        stored = stored[field.end() :]


def stored_by_id(mail: Path, user: str) -> dict[bytes, bytes]:
    out = {}
    for path in maildir_files(mail, "example.org", user):
        data = path.read_bytes()
        found = re.search(rb"(?im)^message-id:\s*(<[^>]*>)", data)
        assert found, data
        out[found.group(1)] = data
    return out


def assert_intact(stored: bytes, injected: bytes, *, received: int = 2) -> list[bytes]:
    """`stored` is `injected` below Return-Path, Delivered-To and `received`
    Received fields (Postfix's, then kittiwake's on top)."""
    trace, rest = split_trace(stored)
    names = [f.split(b":", 1)[0].lower() for f in trace]
    assert names == [b"return-path", b"delivered-to"] + [b"received"] * received, trace
    assert rest == injected.replace(b"\r\n", b"\n")
    return trace


def make_mailboxes(mail: Path, *users: str) -> None:
    for user in users:
        for sub in ("new", "cur", "tmp"):
            (mail / "example.org" / user / sub).mkdir(parents=True)


# -- 1. Postfix -> kittiwake over LMTP ----------------------------------------


def lmtp_conf(tmp: Path, run: Path) -> str:
    return f"""
state_dir {tmp}/state
runtime_dir {run}
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create no
}}
lmtp unix://lmtp.sock {{
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


# 998 characters before CR LF: RFC 5322's limit, and Postfix's own
# (smtp_line_length_limit/lmtp_line_length_limit fold anything longer).
LONG_LINE = (b"0123456789" * 100)[:998]


def test_postfix_delivers_over_lmtp(
    postfix: NewPostfix, kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    pf = postfix({})
    # kittiwake's socket is 0660; its directory is setgid, group postfix,
    # so the socket gets group postfix and Postfix's lmtp client (user
    # postfix) may connect, as a deployment would arrange it.
    run = pf.shared_dir("run", setgid=True)
    mail = tmp_path / "mail"
    make_mailboxes(mail, "one", "two", "sender")
    # `broken` passes the RCPT check (its three folders are there) but its
    # tmp/ cannot take files: it fails after DATA, in LMTP's per-recipient
    # replies, with a temporary error.
    make_mailboxes(mail, "broken")
    broken_tmp = mail / "example.org" / "broken" / "tmp"
    broken_tmp.rmdir()
    broken_tmp.symlink_to("/proc")
    srv = kittiwake(lmtp_conf(tmp_path, run), args=("--debug.dnsoverride", dns.address))
    sock = run / "lmtp.sock"
    assert srv.addresses == [f"unix://{sock}"]
    assert sock.stat().st_gid == run.stat().st_gid
    pf.settings["transport_maps"] = f"inline:{{ example.org=lmtp:unix:{sock} }}"
    pf.start()
    assert len(masters(pf.config_dir)) == 1  # so the check after the test means something

    utf8 = "Grüße aus Köln — ½ € ✓\r\n".encode()
    cases: dict[str, tuple[list[str], bytes, tuple[str, ...]]] = {
        "plain": (
            ["one@example.org"],
            message(
                "plain",
                "<one@example.org>",
                b"Hello.\r\n.leading dot\r\n..two dots\r\n.\r\n\r\n \tblank-ish\r\nlast\r\n",
            ),
            (),
        ),
        "eightbit": (
            ["one@example.org"],
            message(
                "eightbit",
                "<one@example.org>",
                utf8 * 3,
                extra=b"MIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n",
            ),
            ("BODY=8BITMIME",),
        ),
        "utf8header": (
            ["one@example.org"],
            message(
                "utf8header",
                "<one@example.org>",
                utf8,
                extra=b"Comments: " + utf8 + b"MIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n",
            ),
            ("SMTPUTF8", "BODY=8BITMIME"),
        ),
        "long": (
            ["one@example.org"],
            message("long", "<one@example.org>", b"before\r\n" + LONG_LINE + b"\r\nafter\r\n"),
            (),
        ),
        "threercpts": (
            ["two@example.org", "missing@example.org", "broken@example.org"],
            message(
                "threercpts",
                "<two@example.org>, <missing@example.org>, <broken@example.org>",
                b"Three of us.\r\n",
            ),
            (),
        ),
    }
    for rcpts, data, options in cases.values():
        pf.send("sender@example.org", rcpts, data, options=options)

    # One reply per recipient, honoured one by one: the unknown mailbox is
    # refused at RCPT (auto_create no) and bounced; after DATA, `two` gets
    # 250 and `broken` 451, which Postfix keeps queued for a retry.
    via = r"relay=[^ ]*\[[^]]*/lmtp\.sock\], "
    pf.wait_log(rf"to=<two@example\.org>, {via}.*status=sent \(250 2\.0\.0 <two@example\.org> ")
    bounced = pf.wait_log(
        rf"to=<missing@example\.org>, {via}.*status=bounced "
        r"\(host [^ ]*lmtp\.sock\] said: 550 5\.1\.1 [^\n]*"
    )
    assert "User does not exist" in bounced
    assert "(in reply to RCPT TO command)" in bounced
    deferred = pf.wait_log(
        rf"to=<broken@example\.org>, {via}.*status=deferred "
        r"\(host [^ ]*lmtp\.sock\] said: 451 4\.3\.0 [^\n]*"
    )
    assert "(in reply to end of DATA command)" in deferred
    # kittiwake says in its own log which recipient failed, and why.
    srv.wait_log(
        r"lmtp: delivery failed msg_id=[0-9a-f]{8} rcpt=broken@example\.org"
        r' reason="451 4\.3\.0 Local delivery error" detail='
    )
    srv.wait_log(r"lmtp: accepted msg_id=[0-9a-f]{8} rcpts=1 ")
    (left,) = pf.wait_queue(lambda q: len(q) == 1 and q[0]["queue_name"] == "deferred")
    assert [r["address"] for r in left["recipients"]] == ["broken@example.org"]

    # Repaired, the retry delivers to `broken` alone (no second copy for `two`).
    broken_tmp.unlink()
    broken_tmp.mkdir()
    pf.flush()
    pf.wait_queue_empty()
    pf.wait_log(rf"to=<broken@example\.org>, {via}.*status=sent ")
    assert not (mail / "example.org" / "missing").exists()

    one = stored_by_id(mail, "one")
    for tag in ("plain", "eightbit", "utf8header", "long"):
        trace = assert_intact(one[f"<{tag}@client.example.net>".encode()], cases[tag][1])
        assert trace[1] == b"Delivered-To: one@example.org\n"
        assert re.search(rb"with (UTF8)?LMTP id [0-9a-f]{8};", b" ".join(trace[2].split()))
        assert b"(Postfix)" in trace[3]  # Postfix's own Received, below kittiwake's
    assert len(one) == 4
    for user in ("two", "broken"):
        (copy,) = stored_by_id(mail, user).values()
        assert_intact(copy, cases["threercpts"][1])

    # Postfix's bounce (MAIL FROM:<>) came back through the same socket.
    (bounce,) = (p.read_bytes() for p in maildir_files(mail, "example.org", "sender"))
    assert b"Return-Path: <>\n" in bounce
    assert b"<missing@example.org>: host" in bounce
    assert b"550 5.1.1" in bounce
    assert b"<broken@example.org>: host" not in bounce  # deferred, never bounced


# -- 2. Postfix -> kittiwake's submission port, STARTTLS + SASL ---------------


def submission_conf(tmp: Path, cert: tuple[str, str]) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
tls file {cert[0]} {cert[1]}
auth.pass_table users {{
    table static {{
        entry {USER} "{HASH}"
    }}
}}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
submission tcp://127.0.0.1:0 {{
    auth &users
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


def relay_through(pf: Postfix, port: int, password: str, ca: trustme.CA) -> None:
    """Postfix relays everything via kittiwake's submission port."""
    ca_file = pf.write_file("ca.pem", ca.cert_pem.bytes())
    pf.settings.update(
        {
            "default_transport": "smtp",
            "relayhost": f"[127.0.0.1]:{port}",
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": f"static:{USER}:{password}",
            "smtp_sasl_security_options": "noanonymous",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": str(ca_file),
            "smtp_tls_loglevel": "1",
        }
    )


@pytest.fixture
def submission(
    postfix: NewPostfix,  # first: fails or skips before kittiwake starts
    kittiwake: Start,
    tmp_path: Path,
    dns: FakeDNS,
    cert_files: tuple[str, str],
) -> Kittiwake:
    need_sasl_plain()
    return kittiwake(
        submission_conf(tmp_path, cert_files), args=("--debug.dnsoverride", dns.address)
    )


def test_postfix_relays_through_submission_with_sasl(
    postfix: NewPostfix, submission: Kittiwake, tmp_path: Path, ca: trustme.CA
) -> None:
    pf = postfix({})
    relay_through(pf, submission.port(), PASSWORD, ca)
    pf.start()
    injected = message(
        "submission",
        "<one@example.org>",
        "Grüße, 8 bits through submission.\r\n.dot\r\n".encode() + LONG_LINE + b"\r\n",
        extra=b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n",
    )
    pf.send("sender@example.org", ["one@example.org"], injected, options=("BODY=8BITMIME",))
    pf.wait_queue_empty()
    port = submission.port()
    pf.wait_log(
        rf"to=<one@example\.org>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{port}, .*status=sent "
    )
    # Trusted: the chain checked against smtp_tls_CAfile (the encrypt level
    # does not require it, but a wrong CA file would show as Untrusted).
    pf.wait_log(rf"Trusted TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:{port}")
    submission.wait_log(r"authenticated username=me@example\.org")
    (stored,) = stored_by_id(tmp_path / "mail", "one").values()
    trace = assert_intact(stored, injected)
    assert b" ".join(trace[2].split()).startswith(b"Received: by mx.example.com")
    assert b"with ESMTPS" in b" ".join(trace[2].split())


def test_postfix_defers_on_a_wrong_password(
    postfix: NewPostfix, submission: Kittiwake, tmp_path: Path, ca: trustme.CA
) -> None:
    pf = postfix({})
    relay_through(pf, submission.port(), "not-the-password", ca)
    pf.start()
    queue_id = pf.send(
        "sender@example.org", ["one@example.org"], message("wrong", "<one@example.org>", b"x\r\n")
    )
    pf.wait_log(
        rf"{queue_id}: to=<one@example\.org>, .*status=deferred \(SASL authentication failed; "
        r"server 127\.0\.0\.1\[127\.0\.0\.1\] said: 535 5\.7\.8 "
    )
    submission.wait_log(r"authentication failed username=me@example\.org")
    (queued,) = pf.queue()
    assert queued["queue_id"] == queue_id
    assert queued["queue_name"] in ("deferred", "active")
    assert maildir_files(tmp_path / "mail", "example.org", "one") == []
    assert "authenticated username=" not in submission.log
