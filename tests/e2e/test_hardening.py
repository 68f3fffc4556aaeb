"""What an attacker or a careless operator could do to kittiwake, against the real server.

Each test reproduces one way the server broke under attack and checks the
fixed behaviour end to end; memory cases print the server's measured RSS
(`pytest -s` shows it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kw import LAUNCHER, Dialog, Kittiwake, env, free_port

Start = Callable[..., Kittiwake]
MiB = 1024 * 1024


def config(tmp: Path, *, block: str = "", top: str = "", kind: str = "smtp") -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
{top}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{kind} tcp://127.0.0.1:{free_port()} {{
    tls off
{block}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


def rss_kib(server: Kittiwake) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_data(port: int) -> Dialog:
    """A session inside DATA, after the 354."""
    d = Dialog(port, timeout=20)
    assert d.reply()[0].startswith("220 ")
    d.send(
        b"EHLO client.example\r\nMAIL FROM:<a@example.net>\r\n"
        b"RCPT TO:<user@example.org>\r\nDATA\r\n"
    )
    replies = [d.reply()[-1] for _ in range(4)]
    assert replies[-1].startswith("354 "), replies
    return d


# -- 1. a header of many tiny fields ---------------------------------------------


def message_with_fields(count: int) -> bytes:
    return b"".join(b"X-F%d: v\r\n" % i for i in range(count)) + b"\r\nbody\r\n.\r\n"


@pytest.mark.parametrize(
    ("block", "fields", "reply"),
    [
        ("", 1000, "250 2.0.0 OK: queued"),
        ("", 1001, "552 5.3.4 Too many header fields"),
        ("    max_header_fields 10", 10, "250 2.0.0 OK: queued"),
        ("    max_header_fields 10", 11, "552 5.3.4 Too many header fields"),
    ],
)
def test_header_field_count_at_and_past_the_limit(
    kittiwake: Start, tmp_path: Path, block: str, fields: int, reply: str
) -> None:
    server = kittiwake(config(tmp_path, block=block))
    with open_data(server.port()) as d:
        d.send(message_with_fields(fields))
        assert d.reply()[-1].startswith(reply)
        # The session goes on after a refused message.
        assert d.cmd("NOOP") == "250 2.0.0 I have successfully done nothing"


def test_body_lines_do_not_count_as_header_fields(kittiwake: Start, tmp_path: Path) -> None:
    """A small header and 5,000 body lines arriving together are one message."""
    server = kittiwake(config(tmp_path))
    with open_data(server.port()) as d:
        d.send(b"Subject: x\r\n\r\n" + b"line\r\n" * 5000 + b".\r\n")
        assert d.reply()[-1].startswith("250 2.0.0 OK: queued")


def test_many_tiny_header_fields_cost_no_memory(kittiwake: Start, tmp_path: Path) -> None:
    """100 sessions each send a header of 262,000 empty fields and never the dot.

    Before the fix each cost about 27 MB (one object per field): 100 of
    them took the server past 2.5 GB. The bound: 100 sessions may grow the
    server by at most 64 MiB in all.
    """
    server = kittiwake(config(tmp_path, block="    max_connections_per_ip 0"))
    before = rss_kib(server)
    sessions = [open_data(server.port()) for _ in range(100)]
    try:
        attack = b"a:\r\n" * 262000 + b"\r\nbody\r\n"
        for d in sessions:
            d.send(attack)
        # Every session still answers: the server read it all and is idle.
        time.sleep(1.0)
        with Dialog(server.port(), timeout=10) as d:
            assert d.reply()[0].startswith("220 ")
        after = rss_kib(server)
    finally:
        for d in sessions:
            d.close()
    grown = after - before
    print(f"\nRSS before {before} KiB, after 100 sessions {after} KiB (+{grown} KiB)")
    assert grown < 64 * 1024, grown


def test_a_large_header_costs_a_small_multiple_of_its_size(
    kittiwake: Start, tmp_path: Path
) -> None:
    """20 sessions each hold a 1,000-field header just under 1 MiB (no dot yet).

    The header is kept until the message ends, as its bytes: each session
    may cost a few MiB, never a multiple of its field count.
    """
    server = kittiwake(config(tmp_path, block="    max_connections_per_ip 0"))
    before = rss_kib(server)
    field = b"X-Long: " + b"v" * 1000 + b"\r\n"
    header = field * 1000
    assert len(header) < MiB
    sessions = [open_data(server.port()) for _ in range(20)]
    try:
        for d in sessions:
            d.send(header + b"\r\nbody\r\n")
        time.sleep(1.0)
        after = rss_kib(server)
        for d in sessions:
            assert d.cmd(".").startswith("250 2.0.0 OK: queued")
    finally:
        for d in sessions:
            d.close()
    per_session = (after - before) / 20
    print(f"\nRSS +{after - before} KiB for 20 sessions: {per_session:.0f} KiB each")
    assert per_session < 4 * 1024, per_session


# -- 4. sessions that hold resources without progress ------------------------------


def greeted(server: Kittiwake) -> Dialog:
    d = Dialog(server.port(), timeout=10)
    assert d.reply()[0].startswith("220 ")
    assert d.cmd("EHLO client.example").startswith("250 ")
    return d


JUNK_CLOSE = "421 4.7.0 Too many commands without a message, closing"


def test_noop_flood_at_and_past_the_limit(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path, block="    max_junk_commands 20"))
    with greeted(server) as d:  # the EHLO was the first
        d.send(b"NOOP\r\n" * 19)
        assert [d.reply()[0] for _ in range(19)][-1].startswith("250 ")
        assert d.cmd("NOOP") == JUNK_CLOSE
        assert d.closed()


def test_rset_mail_cycles_are_junk_but_a_message_resets_the_count(
    kittiwake: Start, tmp_path: Path
) -> None:
    server = kittiwake(config(tmp_path, block="    max_junk_commands 20"))
    with greeted(server) as d:
        for _ in range(9):  # EHLO + 9 x (MAIL, RSET) = 19
            assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
            assert d.cmd("RSET").startswith("250 ")
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")  # 20
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        assert d.cmd("DATA").startswith("354 ")
        assert d.cmd("Subject: x\r\n\r\nhi\r\n.").startswith("250 ")
        for _ in range(20):  # counting starts again after a message
            assert d.cmd("NOOP").startswith("250 ")
        assert d.cmd("RSET") == JUNK_CLOSE


def test_empty_bdat_chunks_are_junk(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path, block="    max_junk_commands 5"))
    with greeted(server) as d:
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        for _ in range(3):  # EHLO, MAIL, and three empty chunks = 5
            assert d.cmd("BDAT 0") == "250 2.0.0 Continue"
        assert d.cmd("BDAT 0") == JUNK_CLOSE
        assert d.closed()


def test_content_trickled_below_the_minimum_rate_is_cut(kittiwake: Start, tmp_path: Path) -> None:
    """One byte every 0.3 s re-arms the 2 s read timeout each time, yet the
    message as a whole must keep up 1 KiB/s: after about 2 s it is cut."""
    server = kittiwake(config(tmp_path, block="    read_timeout 2s\n    min_data_rate 1K"))
    with open_data(server.port()) as d:
        started = time.monotonic()
        d.sock.settimeout(0.3)
        reply = None
        while reply is None and time.monotonic() - started < 10:
            try:
                d.send(b"x")
                reply = d.line()
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError, EOFError):
                break
        took = time.monotonic() - started
        assert reply == "421 4.4.2 Message content too slow, bye bye"
    assert 1.5 < took < 4.5, took
    server.wait_log("content too slow, closing")


def test_content_at_the_minimum_rate_gets_through(kittiwake: Start, tmp_path: Path) -> None:
    """4 KiB/s for 4 s against a 1 KiB/s minimum: well inside, delivered."""
    server = kittiwake(config(tmp_path, block="    read_timeout 2s\n    min_data_rate 1K"))
    with open_data(server.port()) as d:
        d.send(b"Subject: slow\r\n\r\n")
        for _ in range(16):
            d.send(b"y" * 1022 + b"\r\n")
            time.sleep(0.25)
        assert d.cmd(".").startswith("250 2.0.0 OK: queued")


# -- 2. a mailbox the server may not read is not an unknown user ----------------------


def make_mailbox(root: Path, user: str, domain: str = "example.org") -> Path:
    for sub in ("new", "cur", "tmp"):
        (root / domain / user / sub).mkdir(parents=True, exist_ok=True)
    return root / domain / user


def test_unreadable_mailbox_is_a_temporary_error(kittiwake: Start, tmp_path: Path) -> None:
    """With `auto_create no`, only a mailbox that is not there is 550 5.1.1."""
    mail = tmp_path / "mail"
    locked = make_mailbox(mail, "locked")
    make_mailbox(mail, "open")
    (mail / "other.example").mkdir(parents=True)
    text = config(tmp_path).replace("auto_create yes", "auto_create no")
    text = text.replace("destination example.org {", "destination example.org other.example {")
    server = kittiwake(text, unprivileged=True)
    locked.chmod(0)
    (mail / "other.example").chmod(0)
    try:
        with greeted(server) as d:
            assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
            assert d.cmd("RCPT TO:<open@example.org>").startswith("250 ")
            assert d.cmd("RCPT TO:<nobody@example.org>").startswith("550 5.1.1 User does not exist")
            assert d.cmd("RCPT TO:<locked@example.org>").startswith(
                "451 4.3.0 Local delivery error"
            )
            assert d.cmd("RCPT TO:<someone@other.example>").startswith(
                "451 4.3.0 Local delivery error"
            )
    finally:
        locked.chmod(0o700)
        (mail / "other.example").chmod(0o700)
    server.wait_log("Permission denied")


# -- 5. one mailbox's failure is that mailbox's only ------------------------------------


def test_lmtp_commit_failure_is_reported_per_recipient(kittiwake: Start, tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    make_mailbox(mail, "one")
    two = make_mailbox(mail, "two")
    text = config(tmp_path, kind="lmtp").replace("auto_create yes", "auto_create no")
    server = kittiwake(text, unprivileged=True)
    (two / "new").chmod(0o555)  # tmp/ takes the copy, new/ refuses the link
    try:
        with Dialog(server.port(), timeout=10) as d:
            assert d.reply()[0].startswith("220 ")
            assert d.cmd("LHLO client.example").startswith("250 ")
            assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
            assert d.cmd("RCPT TO:<one@example.org>").startswith("250 ")
            assert d.cmd("RCPT TO:<two@example.org>").startswith("250 ")
            assert d.cmd("DATA").startswith("354 ")
            d.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
            assert d.reply() == ["250 2.0.0 <one@example.org> OK: queued"]
            assert d.reply()[0].startswith(
                "451 4.3.0 <two@example.org> Local delivery error (msg ID = "
            )
    finally:
        (two / "new").chmod(0o700)
    assert len(list((mail / "example.org" / "one" / "new").iterdir())) == 1
    assert list((two / "new").iterdir()) == []
    assert list((two / "tmp").iterdir()) == []  # the copy that could not go on is gone


def test_smtp_commit_failure_is_451_and_the_retry_may_duplicate(
    kittiwake: Start, tmp_path: Path
) -> None:
    """SMTP has one reply per message: one failed mailbox makes it 451, and
    the client's retry delivers the other copy again (docs/storage-maildir.md)."""
    mail = tmp_path / "mail"
    make_mailbox(mail, "one")
    two = make_mailbox(mail, "two")
    server = kittiwake(config(tmp_path), unprivileged=True)
    (two / "new").chmod(0o555)
    try:
        with greeted(server) as d:
            assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
            assert d.cmd("RCPT TO:<one@example.org>").startswith("250 ")
            assert d.cmd("RCPT TO:<two@example.org>").startswith("250 ")
            assert d.cmd("DATA").startswith("354 ")
            assert d.cmd("Subject: x\r\n\r\nhi\r\n.").startswith("451 4.3.0 Local delivery error")
    finally:
        (two / "new").chmod(0o700)
    assert len(list((mail / "example.org" / "one" / "new").iterdir())) == 1


# -- 6. what the embedded default trusts -------------------------------------------


def test_rcpt_alone_creates_no_mailbox(kittiwake: Start, tmp_path: Path) -> None:
    """auto_create makes a mailbox when a message comes for it, never for a RCPT."""
    server = kittiwake(config(tmp_path))
    with greeted(server) as d:
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        for i in range(15):
            assert d.cmd(f"RCPT TO:<probe{i}@example.org>").startswith("250 ")
        assert d.cmd("RSET").startswith("250 ")
        assert not (tmp_path / "mail" / "example.org").exists()
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<fresh@example.org>").startswith("250 ")
        assert d.cmd("DATA").startswith("354 ")
        assert d.cmd("Subject: x\r\n\r\nhi\r\n.").startswith("250 ")
    assert [p.name for p in (tmp_path / "mail" / "example.org").iterdir()] == ["fresh"]
    assert len(list((tmp_path / "mail" / "example.org" / "fresh" / "new").iterdir())) == 1
    server.wait_log("mailbox created")


def test_auto_create_limit_per_session(kittiwake: Start, tmp_path: Path) -> None:
    text = config(tmp_path).replace("auto_create yes", "auto_create yes\n    auto_create_limit 3")
    server = kittiwake(text)
    make_mailbox(tmp_path / "mail", "old")
    with greeted(server) as d:
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        for i in range(3):  # at the limit
            assert d.cmd(f"RCPT TO:<new{i}@example.org>").startswith("250 ")
        got = d.cmd("RCPT TO:<new3@example.org>")  # past it
        assert got.startswith("451 4.2.0 Too many new mailboxes in one session"), got
        assert d.cmd("RCPT TO:<old@example.org>").startswith("250 ")  # exists: no cost
        assert d.cmd("DATA").startswith("354 ")
        assert d.cmd("Subject: x\r\n\r\nhi\r\n.").startswith("250 ")
    with greeted(server) as d:  # a new session has a new budget
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<new3@example.org>").startswith("250 ")
    names = sorted(p.name for p in (tmp_path / "mail" / "example.org").iterdir())
    assert names == ["new0", "new1", "new2", "old"]


def test_secret_files_are_private_whatever_the_umask(kittiwake: Start, tmp_path: Path) -> None:
    """The SQLite credentials database is created 0600 even in a 0755 folder."""
    top = """
auth.pass_table users {
    table sql_table {
        driver sqlite3
        dsn users.db
        table_name passwords
    }
}
"""
    (tmp_path / "state").mkdir(mode=0o755)
    server = kittiwake(config(tmp_path, top=top, block="    auth &users"))
    database = tmp_path / "state" / "users.db"
    assert database.exists()
    assert database.stat().st_mode & 0o777 == 0o600
    server.stop()


# -- 7. what a crash leaves behind ----------------------------------------------------


def test_buffer_files_of_a_killed_server_are_removed_at_start(
    kittiwake: Start, tmp_path: Path
) -> None:
    """Messages in progress at a kill -9 leave their buffer files; the next start removes them."""
    text = config(tmp_path, block="    buffer fs")
    buffers = tmp_path / "state" / "buffer"
    for _round in range(2):
        server = kittiwake(text)
        sessions = [open_data(server.port()) for _ in range(3)]
        for d in sessions:
            d.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200)
        deadline = time.monotonic() + 10
        while len(list(buffers.iterdir())) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # SIGKILL
        for d in sessions:
            d.close()
        assert len(list(buffers.iterdir())) == 3
    server = kittiwake(text)
    server.wait_log("removed buffer files of a process that died count=3")
    assert list(buffers.iterdir()) == []
    with open_data(server.port()) as d:  # and the server works as ever
        assert d.cmd("Subject: x\r\n\r\nhi\r\n.").startswith("250 ")


def test_stale_maildir_tmp_files_are_removed_at_start(kittiwake: Start, tmp_path: Path) -> None:
    """tmp/ files older than 36 hours (the Maildir convention) go; younger ones stay."""
    box = make_mailbox(tmp_path / "mail", "user")
    junk = box / ".Junk"
    for sub in ("new", "cur", "tmp"):
        (junk / sub).mkdir(parents=True)
    old = time.time() - 37 * 3600
    stale = [box / "tmp" / "1.M1P1.host", junk / "tmp" / "2.M2P2.host"]
    for path in stale:
        path.write_bytes(b"half a message")
        os.utime(path, (old, old))
    fresh = box / "tmp" / "3.M3P3.host"
    fresh.write_bytes(b"being written right now")
    delivered = box / "new" / "4.M4P4.host"
    delivered.write_bytes(b"a message")
    os.utime(delivered, (old, old))
    server = kittiwake(config(tmp_path))
    server.wait_log("removed stale tmp/ files count=2")
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and delivered.exists()


# -- 10. small things an attacker or a careful operator notices ---------------------


def test_requiretls_needs_a_tls_session(kittiwake: Start, tmp_path: Path) -> None:
    """RFC 8689 §4.1: REQUIRETLS on a clear-text session is refused, not taken."""
    server = kittiwake(config(tmp_path))
    with greeted(server) as d:
        assert d.cmd("MAIL FROM:<a@example.net> REQUIRETLS") == (
            "530 5.7.10 REQUIRETLS needs TLS: use STARTTLS first"
        )
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")


def test_received_says_esmtpsa_after_auth(
    kittiwake: Start, tmp_path: Path, cert_files: tuple[str, str], ca: object
) -> None:
    """RFC 3848: ESMTPSA for an authenticated client over TLS."""
    import ssl

    import bcrypt
    import trustme

    assert isinstance(ca, trustme.CA)
    digest = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    top = (
        "auth.pass_table users {\n    table static {\n"
        f'        entry me@example.org "bcrypt:{digest}"\n    }}\n}}'
    )
    text = config(tmp_path, top=top, block="    auth &users").replace(
        "    tls off\n", f"    tls file {cert_files[0]} {cert_files[1]}\n"
    )
    server = kittiwake(text)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with Dialog(server.port(), timeout=10) as d:
        assert d.reply()[0].startswith("220 ")
        assert d.cmd("EHLO client.example").startswith("250 ")
        assert d.cmd("STARTTLS").startswith("220 ")
        d.starttls(context)
        assert d.cmd("EHLO client.example").startswith("250 ")
        assert d.cmd("AUTH PLAIN AG1lQGV4YW1wbGUub3JnAHMzY3JldA==").startswith("235 ")
        assert d.cmd("MAIL FROM:<me@example.org>").startswith("250 ")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        assert d.cmd("DATA").startswith("354 ")
        assert d.cmd("Subject: x\r\n\r\nhi\r\n.").startswith("250 ")
    (stored,) = (tmp_path / "mail" / "example.org" / "user" / "new").iterdir()
    assert b" with ESMTPSA id " in stored.read_bytes().replace(b"\n ", b" ")


@pytest.mark.parametrize(
    ("exempt", "refused"), [("", False), ("    max_connections_per_ip_exempt none", True)]
)
def test_loopback_is_exempt_from_the_per_ip_cap(
    kittiwake: Start, tmp_path: Path, exempt: str, refused: bool
) -> None:
    """A local relay may open many sessions: loopback is exempt unless configured."""
    server = kittiwake(config(tmp_path, block=f"    max_connections_per_ip 2\n{exempt}"))
    sessions = [Dialog(server.port(), timeout=10) for _ in range(3)]
    try:
        banners = [d.reply()[0] for d in sessions]
    finally:
        for d in sessions:
            d.close()
    assert banners[:2] == [banners[0]] * 2 and banners[0].startswith("220 ")
    if refused:
        assert banners[2] == "421 4.7.0 Too many connections, try again later"
    else:
        assert banners[2].startswith("220 ")


def test_banner_names_the_machine_when_its_fqdn_is_localhost(tmp_path: Path) -> None:
    """getfqdn() answers `localhost` on many machines; the host's own name is better."""
    code = (
        "import socket, sys\n"
        "socket.getfqdn = lambda name='': 'localhost'\n"
        "socket.gethostname = lambda: 'vm'\n"
        "from kittiwake.cli import main\n"
        "sys.exit(main(['config', 'default']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "$(hostname) = vm\n" in result.stdout


def _config_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.conf"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, str(LAUNCHER), "config", "check", "-c", str(path)],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_config_check_refuses_two_listeners_on_one_address(tmp_path: Path) -> None:
    port = free_port()
    text = f"""hostname mx.example.com
tls off
smtp tcp://0.0.0.0:{port} {{
    reject
}}
lmtp tcp://127.0.0.1:{port} {{
    reject
}}
"""
    result = _config_check(tmp_path, text)
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines()[-1] + "\n" == (
        f"{tmp_path}/check.conf:6: lmtp: 127.0.0.1:{port} is already a listen address "
        f"of smtp at {tmp_path}/check.conf:3\n"
    )
    same = "hostname mx.example.com\ntls off\nlmtp unix://a.sock unix://a.sock {\n    reject\n}\n"
    assert _config_check(tmp_path, same).returncode == 2
    fine = text.replace(f"tcp://127.0.0.1:{port}", f"tcp://[::1]:{port}")
    assert _config_check(tmp_path, fine).returncode == 0, fine


def test_config_check_refuses_a_log_file_it_cannot_write(tmp_path: Path) -> None:
    text = (
        "hostname mx.example.com\ntls off\nlog {log}\nsmtp tcp://127.0.0.1:0 {{\n    reject\n}}\n"
    )
    result = _config_check(tmp_path, text.format(log="/nonexistent/dir/k.log"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{tmp_path}/check.conf:3: log: cannot open /nonexistent/")
    assert _config_check(tmp_path, text.format(log=str(tmp_path / "k.log"))).returncode == 0
    assert not (tmp_path / "k.log").exists()  # config check creates nothing
