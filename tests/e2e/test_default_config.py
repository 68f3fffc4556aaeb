"""The embedded default configuration, run exactly as the README says.

The first test receives and stores mail as the README shows. The second
sends: with `--debug.dnsoverride` and `--debug.smtpport` (docs/cli.md) the
default's `target.remote` finds receiving servers on 127.0.0.x, so what a
user submits for another domain is signed, queued and delivered over TLS,
a server without TLS is refused by the default's `local_policy` (the
message stays queued, with the reason in `kittiwake queue list`), a
refused recipient comes back to the sender as a DSN in their mailbox, and
`kittiwake sendmail` reaches the same queue through the default's socket.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from fakedns import FakeDNS
from kw import LAUNCHER, Dialog, env, free_port, need_tool
from mxsink import MXSink
from queuetools import wait_for


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the server does: a connection in TIME_WAIT does not hold the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _swaks(*extra: str, port: int = 2525) -> str:
    swaks = need_tool("swaks", "swaks")
    result = subprocess.run(
        [swaks, "--to", "user@localhost", "--server", f"127.0.0.1:{port}", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_swaks_delivers_with_the_default(tmp_path: Path) -> None:
    need_tool("swaks", "swaks")
    if not (_port_free(2525) and _port_free(5870)):
        # The embedded default listens on these fixed ports; another server
        # holding one is a fact of this machine, not a kittiwake fault.
        pytest.skip("port 2525 or 5870 is in use on this machine")
    created = subprocess.run(
        [sys.executable, str(LAUNCHER), "creds", "create", "me@localhost", "-p", "s3cret"],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    # No -c, no $KITTIWAKE_CONFIG, no ./kittiwake.conf: the embedded default.
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "run"],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = [proc.stdout.readline().strip() for _ in range(4)]
        assert ready == [
            "kittiwake: listening on tcp://127.0.0.1:2525",
            "kittiwake: listening on tcp://127.0.0.1:5870",
            f"kittiwake: listening on unix://{tmp_path}/kittiwake-data/run/lmtp.sock",
            f"kittiwake: listening on unix://{tmp_path}/kittiwake-data/run/sendmail.sock",
        ]
        assert "250 2.0.0 OK: queued" in _swaks()
        assert "250 2.0.0 OK: queued" in _swaks("-tls")  # the self-signed certificate
        # Submission: STARTTLS, then the user made with `kittiwake creds`.
        auth = ("-tls", "-a", "PLAIN", "-au", "me@localhost", "-ap", "s3cret")
        assert "250 2.0.0 OK: queued" in _swaks("--from", "me@localhost", *auth, port=5870)
        # ... and only as themselves (check.authorize_sender in the default).
        swaks = need_tool("swaks", "swaks")
        forgery = ("--from", "ceo@bank.example")
        forged = subprocess.run(
            [swaks, "--to", "user@localhost", "--server", "127.0.0.1:5870", *forgery, *auth],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "553 5.7.0 Unauthorized use of sender address" in forged.stdout, forged.stdout
        # The credentials database holds password hashes: nobody else reads it.
        database = tmp_path / "kittiwake-data" / "credentials.db"
        assert database.stat().st_mode & 0o777 == 0o600
        new = tmp_path / "kittiwake-data" / "maildir" / "localhost" / "user" / "new"
        traces = sorted(f.read_bytes().replace(b"\n ", b" ") for f in new.iterdir())
        assert len(traces) == 3
        assert sum(b"with ESMTPS id" in t for t in traces) == 1  # swaks -tls
        assert sum(b"with ESMTPSA id" in t for t in traces) == 1  # submission (RFC 3848)
        assert sum(b"Received: by " in t for t in traces) == 1  # submission: not traced
        assert list((tmp_path / "kittiwake-data" / "tls").glob("self_signed-*.pem"))
        with Dialog(2525) as d:  # not an open relay
            assert d.reply()[0].startswith("220 ")
            d.send(b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<x@example.com>\r\n")
            replies = [d.reply()[-1] for _ in range(3)]
            assert replies[2].startswith("550 5.7.1 Relaying denied")
            # ... but <postmaster> without a domain is taken (RFC 5321 §4.5.1).
            assert d.cmd("RSET").startswith("250")
            assert d.cmd("MAIL FROM:<a@example.net>").startswith("250")
            assert d.cmd("RCPT TO:<Postmaster>").startswith("250")
            assert d.cmd("DATA").startswith("354")
            assert d.cmd("Subject: hi\r\n\r\nfor the postmaster\r\n.").startswith("250")
        maildir = tmp_path / "kittiwake-data" / "maildir"
        (postmaster,) = maildir.glob("*/postmaster/new/*")
        assert b"for the postmaster" in postmaster.read_bytes()
        assert postmaster.parts[-4] != "localhost"  # this machine's name
    finally:
        proc.terminate()
        code = proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


#: Recipients an open-relay scanner tries (nmap's smtp-open-relay list,
#: RFC 5321 §3.6.1 and §4.1.1.3): each names remote.test in some disguise.
RELAY_PROBES = (
    "u%remote.test@localhost",
    '"u@remote.test"',
    "u@remote.test@localhost",
    "@localhost:u@remote.test",
    "remote.test!u@localhost",
    "u@[127.0.0.2]",
    "u@remote.test.",
)


def _default_server(tmp_path: Path, *flags: str) -> subprocess.Popen[str]:
    """The embedded default in `tmp_path`, once its four listeners are up."""
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "run", *flags],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(4):
        assert proc.stdout.readline().startswith("kittiwake: listening on ")
    return proc


def _cli(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        cwd=tmp_path,
        env=env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_default_sends_to_other_domains(tmp_path: Path, ca: trustme.CA) -> None:
    swaks = need_tool("swaks", "swaks")
    if not (_port_free(2525) and _port_free(5870)):
        pytest.skip("port 2525 or 5870 is in use on this machine")
    port = free_port()
    # The receiving servers' certificate is of a CA nobody trusts: the
    # connection is encrypted, not authenticated, which the default's
    # local_policy (min_tls_level encrypted) accepts.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.remote.test").configure_cert(context)
    secure = MXSink("127.0.0.2", port, tls=context, name="mx.remote.test")
    plain = MXSink("127.0.0.3", port, name="mx.plain.test")
    dns = FakeDNS(
        {
            ("remote.test", "MX"): ["10 mx.remote.test."],
            ("mx.remote.test", "A"): ["127.0.0.2"],
            ("plain.test", "MX"): ["10 mx.plain.test."],
            ("mx.plain.test", "A"): ["127.0.0.3"],
        }
    )
    secure.rcpt_replies = {"nobody@remote.test": "550 5.1.1 No such user here"}
    assert _cli(tmp_path, "creds", "create", "me@localhost", "-p", "s3cret").returncode == 0
    flags = ("--debug.dnsoverride", dns.address, "--debug.smtpport", str(port))
    proc = _default_server(tmp_path, *flags)
    try:
        auth = ("-tls", "-a", "PLAIN", "-au", "me@localhost", "-ap", "s3cret")
        for rcpt in ("friend@remote.test", "nobody@remote.test", "someone@plain.test"):
            sent = subprocess.run(
                [
                    swaks,
                    "--to",
                    rcpt,
                    "--from",
                    "me@localhost",
                    "--server",
                    "127.0.0.1:5870",
                    *auth,
                    "--header",
                    f"Subject: to {rcpt}",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert "250 2.0.0 OK: queued" in sent.stdout, sent.stdout
        # Delivered over TLS, signed with the key the default made for localhost.
        (message,) = secure.wait_messages(1)
        assert message.tls
        assert message.rcpts == ["friend@remote.test"]
        assert b"DKIM-Signature:" in message.data
        assert b"d=localhost;" in message.data.replace(b"\r\n\t", b"").replace(b" ", b"")
        # The refused recipient: a DSN in the sender's own mailbox.
        inbox = tmp_path / "kittiwake-data" / "maildir" / "localhost" / "me" / "new"
        wait_for(lambda: inbox.is_dir() and any(inbox.iterdir()), message="the DSN")
        (notice,) = [f.read_bytes() for f in inbox.iterdir()]
        assert b"nobody@remote.test" in notice
        assert b"550 5.1.1" in notice
        assert b"Remote-MTA: dns; mx.remote.test" in notice  # the MX by name

        # No TLS at plain.test: refused by local_policy, kept in the queue.
        def waiting() -> list[dict[str, object]]:
            listed = _cli(tmp_path, "queue", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            entries = json.loads(listed.stdout)["entries"]
            return [e for e in entries if "TLS" in json.dumps(e)]

        (entry,) = wait_for(waiting, message="the queued message's error")
        assert "someone@plain.test" in json.dumps(entry)
        assert (
            "TLS is not available or unauthenticated but required: STARTTLS not offered"
            in (entry["last_error"])
        )
        assert str(entry["last_error"]).startswith("451 ")
        assert plain.messages == []
        # A program on the host: kittiwake sendmail through the default's socket.
        piped = _cli(
            tmp_path,
            "sendmail",
            "-f",
            "me@localhost",
            "friend@remote.test",
            stdin="Subject: from cron\n\nbackup done\n",
        )
        assert piped.returncode == 0, piped.stderr
        second = secure.wait_messages(2)[1]
        assert b"backup done" in second.data
        assert b"DKIM-Signature:" in second.data
        # Inbound stays local-only: the relay probes of an open-relay scanner
        # (nmap's list) are refused and nothing more is queued or sent.
        with Dialog(2525) as d:
            assert d.reply()[0].startswith("220 ")
            assert d.cmd("EHLO scanner.example").startswith("250")
            stored = []
            for probe in RELAY_PROBES:
                assert d.cmd("MAIL FROM:<scan@example.net>").startswith("250")
                reply = d.cmd(f"RCPT TO:<{probe}>")
                if reply.startswith("250"):  # allowed only for a literal local mailbox
                    assert probe.endswith("@localhost"), (probe, reply)
                    assert d.cmd("DATA").startswith("354")
                    assert d.cmd("Subject: probe\r\n\r\nprobe\r\n.").startswith("250")
                    stored.append(probe.rpartition("@")[0])
                    continue
                assert reply.startswith(("550 5.7.1", "554 5.7.1", "501 ")), (probe, reply)
                assert d.cmd("RSET").startswith("250")
        local = tmp_path / "kittiwake-data" / "maildir" / "localhost"
        for mailbox in stored:
            assert list((local / mailbox / "new").iterdir()), mailbox
        listed = json.loads(_cli(tmp_path, "queue", "list", "--json").stdout)["entries"]
        assert [e["id"] for e in listed] == [entry["id"]]
        assert len(secure.messages) == 2 and plain.messages == []
    finally:
        proc.terminate()
        code = proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
        secure.close()
        plain.close()
        dns.close()
    assert code == 0
