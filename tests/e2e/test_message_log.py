"""The log lines of one message and its connection (docs/logging.md).

A message to three recipients, one refused at RCPT, sent over STARTTLS:
the server's log must answer "did alice get it?" from one line, and the
connection must have its opening and closing lines with the counts.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import trustme
from kw import Dialog, Kittiwake


def config(tmp: Path, cert: tuple[str, str], fmt: str = "text") -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.org
log_format {fmt}
tls file {cert[0]} {cert[1]}
storage.maildir local_mailboxes {{
    path {tmp}/mail
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    destination example.org {{
        deliver_to &local_mailboxes
    }}
    default_destination {{
        reject 550 5.7.1 "We do not relay"
    }}
}}
"""


def send(server: Kittiwake, ca: trustme.CA) -> str:
    """Three recipients, one refused; the message ID from the log."""
    port = int(server.addresses[0].rpartition(":")[2])
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls(context=context)
        s.ehlo("client.example.net")
        refused = s.sendmail(
            "news@example.net",
            ["alice@example.org", "bob@example.org", "carol@elsewhere.example"],
            b"Subject: three\r\n\r\nfor three\r\n",
        )
    assert list(refused) == ["carol@elsewhere.example"]
    return server.wait_log(r"accepted msg_id=\S+").partition("=")[2]


def test_one_line_answers_did_alice_get_it(
    kittiwake: Callable[..., Kittiwake],
    tmp_path: Path,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    server = kittiwake(config(tmp_path, cert_files))
    msg_id = send(server, ca)
    line = server.wait_log(r"info smtp: accepted msg_id=\S+ .*conn_id=\S+")
    expected = [
        "rcpts=2 ",
        "src_ip=127.0.0.1 ",
        "src_host=client.example.net ",
        'tls="TLSv1.',
        "sender=news@example.net ",
        'to="alice@example.org: 250 2.0.0; bob@example.org: 250 2.0.0" ',
        'refused="carol@elsewhere.example: 550 5.7.1" ',
    ]
    for part in expected:
        assert part in line, (part, line)
    size = int(line.split(" size=")[1].split()[0])
    assert size == len(b"Subject: three\r\n\r\nfor three\r\n")
    assert float(line.split(" delay=")[1].split()[0]) < 30
    conn_id = line.rpartition("conn_id=")[2].strip()
    # The target's line: who it stored the message for.
    server.wait_log(
        rf"storage.maildir/local_mailboxes: delivered msg_id={msg_id} "
        r"rcpts=alice@example\.org,bob@example\.org"
    )
    # The connection: opened, then closed with its counts.
    server.wait_log(rf"connection opened conn_id={conn_id} src_ip=127\.0\.0\.1 src_port=\d+")
    closed = server.wait_log(rf"connection closed conn_id={conn_id} .*")
    assert " accepted=1 not_accepted=0 " in closed
    assert 'tls="TLSv1.' in closed


def test_the_message_line_in_json(
    kittiwake: Callable[..., Kittiwake],
    tmp_path: Path,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    server = kittiwake(config(tmp_path, cert_files, "json"))
    port = int(server.addresses[0].rpartition(":")[2])
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls(context=context)
        s.sendmail("news@example.net", ["alice@example.org"], b"Subject: j\r\n\r\nj\r\n")
    line = server.wait_log(r'\{[^\n]*"msg": "accepted"[^\n]*\}')
    record = json.loads(line)
    assert record["rcpts"] == 1
    assert record["to"] == "alice@example.org: 250 2.0.0"
    assert record["refused"] == ""
    assert record["sender"] == "news@example.net"


def test_a_refused_message_line_says_how_much_came(
    kittiwake: Callable[..., Kittiwake], tmp_path: Path, cert_files: tuple[str, str]
) -> None:
    """A message over `max_message_size` (DATA, BDAT LAST, a BDAT chunk before
    the last) is `not accepted`, and its line gives the bytes the client
    sent, those past the limit too."""
    text = config(tmp_path, cert_files).replace(
        "smtp tcp://127.0.0.1:0 {", "smtp tcp://127.0.0.1:0 {\n    max_message_size 1000B"
    )
    server = kittiwake(text)
    port = int(server.addresses[0].rpartition(":")[2])
    body = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
    content = body * 40  # 3,520 bytes, over 1,000
    with Dialog(port) as d:
        assert d.reply()[-1].startswith("220 ")
        assert d.cmd("EHLO client.example.net").startswith("250 ")
        assert d.cmd("MAIL FROM:<news@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<alice@example.org>").startswith("250 ")
        assert d.cmd("DATA").startswith("354 ")
        d.send(content + b".\r\n")
        assert d.reply()[-1].startswith("552 5.3.4 ")
        assert d.cmd("MAIL FROM:<news@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<alice@example.org>").startswith("250 ")
        d.send(b"BDAT %d LAST\r\n" % len(content) + content)
        assert d.reply()[-1].startswith("552 5.3.4 ")
        assert d.cmd("MAIL FROM:<news@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<alice@example.org>").startswith("250 ")
        d.send(b"BDAT %d\r\n" % len(content) + content)  # not the last chunk
        assert d.reply()[-1].startswith("552 5.3.4 ")
    server.wait_log(r"connection closed .*not_accepted=3 ")
    assert len(re.findall(r"not accepted .*size=3520 ", server.log)) == 3
