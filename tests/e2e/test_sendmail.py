"""`kittiwake sendmail` as cron jobs run it: a real process, a real server, a Maildir.

Each test starts the server on a configuration whose `smtp` endpoint
listens on a loopback port (or an `lmtp` one on a Unix socket, or a
`submission` one that wants AUTH), runs `python -m kittiwake sendmail`
with the message on stdin and the same configuration file, and reads what
arrived in the Maildir, or the exit status and stderr when it did not.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import bcrypt
from kw import Kittiwake, env, free_port, maildir_files

Start = Callable[..., Kittiwake]

TEMP = 'destination temp.example { reject 451 4.3.0 "Try again later" }'
LOCAL = "destination test.example mx.test.example { deliver_to &mb }"
REFUSE = 'default_destination { reject 550 5.1.1 "No such user here" }'


def conf(tmp: Path, *, port: int = 0, endpoints: str = "") -> str:
    smtp = (
        f"smtp tcp://127.0.0.1:{port or free_port()} {{\n    tls off\n"
        f"    {TEMP}\n    {LOCAL}\n    {REFUSE}\n}}\n"
    )
    return (
        f"hostname mx.test.example\nstate_dir {tmp}/state\n"
        f"storage.maildir mb {{\n    path {tmp}/mail\n    auto_create yes\n}}\n"
        f"{endpoints or smtp}"
    )


def sendmail(
    tmp: Path, message: bytes, *args: str, conf_name: str = "kittiwake.conf"
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kittiwake", "sendmail", "-c", str(tmp / conf_name), *args],
        check=False,
        cwd=tmp,
        env=env(),
        input=message,
        capture_output=True,
        timeout=60,
    )


def delivered(tmp: Path, user: str, domain: str = "test.example") -> list[email.message.Message]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.compat32)
        for p in maildir_files(tmp / "mail", domain, user)
    ]


def test_plain_recipients_and_the_fields_a_submission_server_adds(
    kittiwake: Start, tmp_path: Path
) -> None:
    kittiwake(conf(tmp_path))
    done = sendmail(
        tmp_path, b"Subject: disk report\n\nAll fine.\n", "alice@test.example", "bob@test.example"
    )
    assert (done.returncode, done.stderr) == (0, b"")
    for user in ("alice", "bob"):
        [msg] = delivered(tmp_path, user)
        assert msg["Subject"] == "disk report"
        assert msg["Return-Path"] == "<root@mx.test.example>"
        assert msg["From"].endswith("<root@mx.test.example>")
        assert msg["Date"] and email.utils.parsedate_to_datetime(msg["Date"])
        assert msg["Message-ID"].endswith("@mx.test.example>")
        assert msg.get_payload() == "All fine.\n"
    # A bare user name is a user of this host, several recipients in one
    # argument are separated by commas.
    done = sendmail(tmp_path, b"Subject: two\n\nx\n", "root, carol@test.example")
    assert done.returncode == 0, done.stderr
    assert [m["Subject"] for m in delivered(tmp_path, "root", "mx.test.example")] == ["two"]
    assert len(delivered(tmp_path, "carol")) == 1


def test_t_reads_recipients_from_the_header_and_removes_bcc(
    kittiwake: Start, tmp_path: Path
) -> None:
    kittiwake(conf(tmp_path))
    message = (
        b"From: Cron <cron@test.example>\n"
        b"To: Alice <alice@test.example>\n"
        b"Cc: bob@test.example,\n"
        b"  dave@test.example\n"
        b"Bcc: carol@test.example\n"
        b"Subject: backup\n"
        b"\n"
        b"done\n"
    )
    done = sendmail(tmp_path, message, "-t", "-oi")
    assert done.returncode == 0, done.stderr
    for user in ("alice", "bob", "carol", "dave"):
        [msg] = delivered(tmp_path, user)
        assert msg["Subject"] == "backup"
        assert msg["Bcc"] is None
        assert msg["From"] == "Cron <cron@test.example>"  # left as it was
    none = sendmail(tmp_path, b"Subject: nobody\n\nx\n", "-t")
    assert none.returncode == 64
    assert b"no recipients on the command line or in To, Cc, Bcc" in none.stderr


def test_f_and_F_set_the_sender(kittiwake: Start, tmp_path: Path) -> None:
    kittiwake(conf(tmp_path))
    done = sendmail(
        tmp_path,
        b"Subject: s\n\nx\n",
        "-f",
        "robot@test.example",
        "-FNightly Job",
        "alice@test.example",
    )
    assert done.returncode == 0, done.stderr
    [msg] = delivered(tmp_path, "alice")
    assert msg["Return-Path"] == "<robot@test.example>"
    assert msg["From"] == "Nightly Job <robot@test.example>"
    bounce = sendmail(tmp_path, b"Subject: b\n\nx\n", "-f", "<>", "bob@test.example")
    assert bounce.returncode == 0, bounce.stderr
    [msg] = delivered(tmp_path, "bob")
    assert msg["Return-Path"] == "<>"


def test_a_lone_dot_ends_the_message_unless_i(kittiwake: Start, tmp_path: Path) -> None:
    kittiwake(conf(tmp_path))
    text = b"Subject: dots\n\nline one\n.\nline two\n..two dots\n"
    assert sendmail(tmp_path, text, "alice@test.example").returncode == 0
    assert sendmail(tmp_path, text, "-i", "bob@test.example").returncode == 0
    assert sendmail(tmp_path, text, "-oi", "carol@test.example").returncode == 0
    [cut] = delivered(tmp_path, "alice")
    assert cut.get_payload() == "line one\n"
    for user in ("bob", "carol"):
        [whole] = delivered(tmp_path, user)
        assert whole.get_payload() == "line one\n.\nline two\n..two dots\n"


def test_a_refused_recipient_is_67_and_the_others_get_it(kittiwake: Start, tmp_path: Path) -> None:
    kittiwake(conf(tmp_path))
    done = sendmail(tmp_path, b"Subject: r\n\nx\n", "nobody@else.example", "alice@test.example")
    assert done.returncode == 67
    assert re.fullmatch(
        rb"kittiwake sendmail: <nobody@else.example>: 550 5.1.1 No such user here"
        rb" \(msg ID = \w+\)\n",
        done.stderr,
    )
    assert len(delivered(tmp_path, "alice")) == 1
    alone = sendmail(tmp_path, b"Subject: r\n\nx\n", "nobody@else.example")
    assert alone.returncode == 67


def test_a_temporary_refusal_is_75_and_nothing_is_sent(kittiwake: Start, tmp_path: Path) -> None:
    kittiwake(conf(tmp_path))
    done = sendmail(tmp_path, b"Subject: t\n\nx\n", "alice@test.example", "x@temp.example")
    assert done.returncode == 75
    assert re.fullmatch(
        rb"kittiwake sendmail: <x@temp.example>: 451 4.3.0 Try again later \(msg ID = \w+\)\n",
        done.stderr,
    )
    assert delivered(tmp_path, "alice") == []  # so that trying again sends it once


def test_no_server_is_69(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "kittiwake.conf").write_text(conf(tmp_path, port=port))
    done = sendmail(tmp_path, b"Subject: t\n\nx\n", "alice@test.example")
    assert done.returncode == 69
    assert done.stderr.startswith(
        f"kittiwake sendmail: cannot reach the mail server: smtp://127.0.0.1:{port}: ".encode()
    )
    assert b"Connection refused" in done.stderr


def test_an_lmtp_unix_socket_is_preferred(kittiwake: Start, tmp_path: Path) -> None:
    endpoints = (
        f"runtime_dir {tmp_path}/run\n"
        f"smtp tcp://127.0.0.1:{free_port()} {{\n    tls off\n    reject\n}}\n"
        f"lmtp unix://lmtp.sock {{\n    {LOCAL}\n    {REFUSE}\n}}\n"
    )
    kittiwake(conf(tmp_path, endpoints=endpoints), ready=2)
    done = sendmail(
        tmp_path,
        b"Subject: l\n\nx\n",
        "alice@test.example",
        "nobody@else.example",
        "bob@test.example",
    )
    assert done.returncode == 67
    assert b"<nobody@else.example>: 550 5.1.1" in done.stderr
    for user in ("alice", "bob"):  # one reply each after the content (RFC 2033)
        [msg] = delivered(tmp_path, user)
        assert "with LMTP" in " ".join(msg["Received"].split())


PASSWORD = "cron's password"


def test_submission_with_auth(
    kittiwake: Start, tmp_path: Path, cert_files: tuple[str, str]
) -> None:
    hashed = "bcrypt:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4, b"2a")).decode()
    port = free_port()
    endpoints = (
        f"tls file {cert_files[0]} {cert_files[1]}\n"
        "auth.pass_table users {\n    table static {\n"
        f'        entry cron@test.example "{hashed}"\n    }}\n}}\n'
        f"submission tcp://127.0.0.1:{port} {{\n    auth &users\n    {LOCAL}\n    {REFUSE}\n}}\n"
    )
    kittiwake(conf(tmp_path, endpoints=endpoints))
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    args = ("--auth-user", "cron@test.example", "--auth-password-file", str(secret))
    done = sendmail(
        tmp_path, b"Subject: a\n\nx\n", *args, "-f", "cron@test.example", "alice@test.example"
    )
    assert done.returncode == 0, done.stderr
    [msg] = delivered(tmp_path, "alice")
    assert "with ESMTPSA" in " ".join(msg["Received"].split())  # after STARTTLS, authenticated
    # Without -f, the login is the sender (not the Unix user running it).
    bare = sendmail(tmp_path, b"Subject: b\n\ny\n", *args, "alice@test.example")
    assert bare.returncode == 0, bare.stderr
    second = [m for m in delivered(tmp_path, "alice") if m["Subject"] == "b"]
    assert second[0]["Return-Path"] == "<cron@test.example>"
    secret.write_text("wrong\n")
    refused = sendmail(tmp_path, b"Subject: a\n\nx\n", *args, "alice@test.example")
    assert refused.returncode == 69
    assert b"535 5.7.8" in refused.stderr
    # Without --auth-user there is no endpoint that takes mail unauthenticated.
    unauth = sendmail(tmp_path, b"Subject: a\n\nx\n", "alice@test.example")
    assert unauth.returncode == 78
    assert b"no smtp or lmtp endpoint on a Unix socket or a loopback address" in unauth.stderr


def test_usage_errors_are_64(tmp_path: Path) -> None:
    (tmp_path / "kittiwake.conf").write_text(conf(tmp_path))
    for args, expected in [
        (("-bs",), b"-bs: only -bm (deliver a message) is supported"),
        (("-q",), b"-q: there is no queue to run here"),
        (("-q15m",), b"-q15m: there is no queue to run here"),
        (("-Z",), b"option -Z not recognized"),
        (("--auth-user", "x", "a@b"), b"--auth-user and --auth-password-file go together"),
        ((), b"no recipients on the command line"),
        (("--server", "ftp://x"), b"invalid server 'ftp://x'"),
    ]:
        done = sendmail(tmp_path, b"x\n", *args)
        assert done.returncode == 64, (args, done.stderr)
        assert expected in done.stderr
