"""Endpoint directives and LMTP against the real server process."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakedns import FakeDNS
from kw import Dialog, Kittiwake, maildir_files

Start = Callable[..., Kittiwake]


def conf(tmp: Path, block: str = "", *, endpoint: str = "smtp tcp://127.0.0.1:0") -> str:
    tls = "" if endpoint.startswith("lmtp") else "    tls off\n"
    return f"""
state_dir {tmp}/state
runtime_dir {tmp}/run
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{endpoint} {{
{tls}{block}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


def send(port: int, body: bytes, rcpts: tuple[str, ...] = ("user@example.org",)) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.net", list(rcpts), body)


def bodies(tmp: Path, user: str = "user") -> list[bytes]:
    return [
        p.read_bytes().split(b"\n\n", 1)[1]
        for p in maildir_files(tmp / "mail", "example.org", user)
    ]


@pytest.mark.parametrize("buffer", ["ram", "fs", "auto 5b", "auto 1M spool"])
def test_every_buffer_kind_stores_intact(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, buffer: str
) -> None:
    # maddy's own cases: bodies of 13, 0 and 5 bytes in every kind of buffer
    # (docs/buffer.md, "Where the line is for `auto`").
    srv = kittiwake(
        conf(tmp_path, f"    buffer {buffer}"), args=("--debug.dnsoverride", dns.address)
    )
    for body in (b"thirteen byte", b"", b"fives"):
        send(srv.port(), b"Subject: b\r\n\r\n" + body)
    stored = sorted(bodies(tmp_path))
    assert stored == sorted([b"thirteen byte\n", b"", b"fives\n"])
    buffer_dir = tmp_path / "state" / ("spool" if "spool" in buffer else "buffer")
    if buffer != "ram":
        assert buffer_dir.is_dir() and not list(buffer_dir.iterdir())  # all removed


def test_bad_buffer_directory_fails_at_start(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(AssertionError, match=r"kittiwake\.conf:11: buffer directory .* not usable"):
        kittiwake(
            conf(tmp_path, f"    buffer fs {tmp_path}/file/sub"),
            args=("--debug.dnsoverride", dns.address),
        )


def test_io_debug_logs_the_dialogue(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = kittiwake(conf(tmp_path, "    io_debug yes"), args=("--debug.dnsoverride", dns.address))
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("NOOP")
    srv.wait_log(r"smtp/io: read .*NOOP")
    srv.wait_log(r"smtp/io: write .*250 2\.0\.0 I have successfully done nothing")
    assert "io_debug is on" in srv.log


def test_a_crash_leaves_the_python_stacks_on_stderr(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    """faulthandler (cli/run.py): a fatal signal in C code names where Python was."""
    srv = kittiwake(conf(tmp_path), args=("--debug.dnsoverride", dns.address))
    srv.send(signal.SIGSEGV)
    assert srv.wait() == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in srv.log
    assert re.search(r"(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\)", srv.log)


def test_debug_adds_detail(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    quiet = kittiwake(conf(tmp_path), args=("--debug.dnsoverride", dns.address))
    send(quiet.port(), b"Subject: q\r\n\r\nq\r\n")
    quiet.wait_log(r"accepted msg_id=")
    assert "debug smtp: RCPT ok" not in quiet.log
    quiet.kill()
    loud = kittiwake(conf(tmp_path, "    debug yes"), args=("--debug.dnsoverride", dns.address))
    send(loud.port(), b"Subject: l\r\n\r\nl\r\n")
    loud.wait_log(r"debug smtp: RCPT ok msg_id=[0-9a-f]{8} rcpt=user@example\.org")


def test_max_logged_rcpt_errors(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = kittiwake(
        conf(tmp_path, "    max_logged_rcpt_errors 2"), args=("--debug.dnsoverride", dns.address)
    )
    with Dialog(srv.port()) as d:
        d.reply()
        d.cmd("EHLO c")
        d.cmd("MAIL FROM:<a@example.net>")
        for i in range(5):
            assert d.cmd(f"RCPT TO:<u{i}@elsewhere.example>").startswith("550 ")
        d.cmd("QUIT")
    srv.wait_log("possible dictionary attack")
    time.sleep(0.2)
    assert len(re.findall(r"smtp: RCPT error", srv.log)) == 2
    assert srv.log.count("possible dictionary attack") == 1


def test_write_timeout_drops_a_client_that_never_reads(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    srv = kittiwake(
        conf(tmp_path, "    write_timeout 1s\n    max_junk_commands 0"),
        args=("--debug.dnsoverride", dns.address),
    )
    sock = socket.create_connection(("127.0.0.1", srv.port()), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        # Pipelined NOOPs whose replies we never read fill the server's
        # send buffer; after write_timeout it must give up on us.
        started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(2000):
                sock.sendall(b"NOOP\r\n" * 1000)
        assert time.monotonic() - started < 25
    finally:
        sock.close()
    srv.wait_log("write timeout, closing")


def test_lmtp_over_a_unix_socket(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    config = conf(tmp_path, "", endpoint="lmtp unix://lmtp.sock")
    config = config.replace("auto_create yes", "auto_create no")
    srv = kittiwake(config, args=("--debug.dnsoverride", dns.address))
    path = tmp_path / "run" / "lmtp.sock"
    assert srv.addresses == [f"unix://{path}"]
    assert (path.stat().st_mode & 0o777) == 0o660
    for user in ("one", "two"):
        for sub in ("new", "cur", "tmp"):
            (tmp_path / "mail" / "example.org" / user / sub).mkdir(parents=True)
    client = smtplib.LMTP(str(path), timeout=10)
    try:
        code, _ = client.ehlo("client.example")  # smtplib's LMTP sends LHLO
        assert code == 250
        assert client.mail("a@example.net")[0] == 250
        assert client.rcpt("one@example.org")[0] == 250
        code, text = client.rcpt("missing@example.org")
        assert code == 550
        assert re.fullmatch(rb"5\.1\.1 User does not exist \(msg ID = [0-9a-f]{8}\)", text), text
        assert client.rcpt("two@example.org")[0] == 250
        assert client.rcpt("one@example.org")[0] == 250  # a duplicate: one reply each
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(b"Subject: l\r\n\r\nlmtp\r\n.\r\n")
        replies = [client.getreply() for _ in range(3)]
        assert [(c, t) for c, t in replies] == [
            (250, b"2.0.0 <one@example.org> OK: queued"),
            (250, b"2.0.0 <two@example.org> OK: queued"),
            (250, b"2.0.0 <one@example.org> OK: queued"),
        ]
        client.quit()
    finally:
        client.close()
    assert bodies(tmp_path, "one") == [b"lmtp\n"]
    assert bodies(tmp_path, "two") == [b"lmtp\n"]
    (message,) = maildir_files(tmp_path / "mail", "example.org", "one")
    assert b"with LMTP id" in message.read_bytes().replace(b"\n ", b" ")
    assert srv.stop() == 0
    assert not path.exists()  # the socket is removed on shutdown


def test_lmtp_refuses_port_25(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    with pytest.raises(
        AssertionError,
        match=r"kittiwake\.conf:\d+: tcp://127\.0\.0\.1:25: LMTP must not listen on port 25",
    ):
        kittiwake(conf(tmp_path, endpoint="lmtp tcp://127.0.0.1:25"))


def _connect(port: int, source: str) -> Dialog:
    return Dialog(port, timeout=10, source=source)


def test_per_ip_connection_cap(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = kittiwake(
        conf(tmp_path, "    max_connections_per_ip 2\n    max_connections_per_ip_exempt none"),
        args=("--debug.dnsoverride", dns.address),
    )
    first = _connect(srv.port(), "127.0.0.1")
    second = _connect(srv.port(), "127.0.0.1")
    for d in (first, second):
        assert d.reply()[0].startswith("220 ")  # at the cap: served
    third = _connect(srv.port(), "127.0.0.1")
    assert third.reply() == ["421 4.7.0 Too many connections, try again later"]
    assert third.closed()
    other = _connect(srv.port(), "127.0.0.2")  # another client is still served
    assert other.reply()[0].startswith("220 ")
    first.cmd("QUIT")
    first.close()
    srv.wait_log(r"per-IP connection limit reached src_ip=127\.0\.0\.1")
    time.sleep(0.3)
    again = _connect(srv.port(), "127.0.0.1")  # a slot was freed
    assert again.reply()[0].startswith("220 ")
    for d in (second, third, other, again):
        d.close()


def test_total_connection_cap(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> None:
    srv = kittiwake(
        conf(tmp_path, "    max_connections 3"), args=("--debug.dnsoverride", dns.address)
    )
    open_ = [_connect(srv.port(), f"127.0.0.{i}") for i in (1, 2, 3)]
    for d in open_:
        assert d.reply()[0].startswith("220 ")
    fourth = _connect(srv.port(), "127.0.0.4")
    assert fourth.reply() == ["421 4.7.0 Too many connections, try again later"]
    assert fourth.closed()
    for d in [*open_, fourth]:
        d.close()


def test_lmtp_full_disk_fails_only_that_recipient(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS
) -> None:
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("running as non-root: a full disk is made by mounting a small tmpfs")
    config = conf(tmp_path, "", endpoint="lmtp unix://lmtp.sock").replace(
        "auto_create yes", "auto_create no"
    )
    full = tmp_path / "mail" / "example.org" / "full"
    full.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        # A container without the right to mount cannot fake a full disk.
        pytest.skip(f"mount -t tmpfs was refused here: {mounted.stderr.strip()}")
    try:
        for user in ("ok", "full"):
            for sub in ("new", "cur", "tmp"):
                (tmp_path / "mail" / "example.org" / user / sub).mkdir(parents=True, exist_ok=True)
        (full / "filler").write_bytes(b"\0" * 60 * 1024)  # leave almost nothing free
        srv = kittiwake(config, args=("--debug.dnsoverride", dns.address))
        client = smtplib.LMTP(str(tmp_path / "run" / "lmtp.sock"), timeout=10)
        try:
            client.ehlo("client.example")
            assert client.mail("a@example.net")[0] == 250
            assert client.rcpt("full@example.org")[0] == 250
            assert client.rcpt("ok@example.org")[0] == 250
            client.putcmd("data")
            assert client.getreply()[0] == 354
            client.send(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 200 + b".\r\n")
            try:
                replies = [client.getreply() for _ in range(2)]
            except smtplib.SMTPServerDisconnected:
                raise AssertionError(srv.log) from None
            client.quit()
        finally:
            client.close()
        assert replies[0][0] == 452
        assert re.fullmatch(
            rb"4\.3\.1 <full@example\.org> Insufficient system storage \(msg ID = [0-9a-f]{8}\)",
            replies[0][1],
        ), replies[0]
        assert replies[1] == (250, b"2.0.0 <ok@example.org> OK: queued")
        assert len(bodies(tmp_path, "ok")) == 1
        assert not list((full / "new").iterdir()) and not list((full / "tmp").iterdir())
        srv.wait_log(r"delivery failed msg_id=[0-9a-f]{8} rcpt=full@example\.org")
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)


@pytest.mark.parametrize(("timeout", "low", "high"), [("1s", 0.8, 4.0), ("5s", 4.5, 9.0)])
def test_shutdown_timeout_bounds_how_long_a_transaction_may_finish(
    kittiwake: Start, tmp_path: Path, dns: FakeDNS, timeout: str, low: float, high: float
) -> None:
    """On SIGTERM an idle session hears 421 at once; one inside a transaction
    gets `shutdown_timeout` to finish, then the same 421 (docs/server.md)."""
    srv = kittiwake(
        conf(tmp_path, f"    shutdown_timeout {timeout}"), args=("--debug.dnsoverride", dns.address)
    )
    with Dialog(srv.port(), timeout=20) as busy, Dialog(srv.port(), timeout=20) as idle:
        for d in (busy, idle):
            assert d.reply()[0].startswith("220 ")
            assert d.cmd("EHLO client.example").startswith("250 ")
        assert busy.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        started = time.monotonic()
        srv.send(signal.SIGTERM)
        assert idle.reply() == ["421 4.3.2 Service shutting down, try again later"]
        assert time.monotonic() - started < low
        assert busy.reply() == ["421 4.3.2 Service shutting down, try again later"]
        took = time.monotonic() - started
    assert low <= took <= high, took
    assert srv.wait() == 0
