"""`target.queue` when storage fails: full disk, read-only directory, fsync order.

R57 (ENOSPC during DATA), R59 (a location without permission) and R52
(fsync of the files, then the rename, then the directory fsync, then the
250) through the real server process.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kw import Dialog, Kittiwake, need_tool
from queuetools import config, entries, mailbox, send, wait_for

Start = Callable[..., Kittiwake]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root; the suite runs as root in CI", pytrace=False)
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _data(port: int, size: int, rcpt: str = "a@ok.example") -> str:
    """One message of about `size` bytes by raw SMTP; the final reply."""
    with Dialog(port) as d:
        d.reply()
        d.cmd("EHLO client.example")
        assert d.cmd("MAIL FROM:<me@sender.example>").startswith("250")
        assert d.cmd(f"RCPT TO:<{rcpt}>").startswith("250")
        assert d.cmd("DATA").startswith("354")
        line = b"x" * 998 + b"\r\n"
        d.send(b"Subject: big\r\n\r\n" + line * (size // 1000) + b".\r\n")
        return d.reply()[-1]


def test_full_disk_is_a_temporary_error_and_leaves_nothing(
    kittiwake: Start, tmp_path: Path, small_disk: Path
) -> None:
    """R57: a message bigger than the disk gets 452 4.3.1; then a small one goes through."""
    server = kittiwake(config(tmp_path, location=str(small_disk / "queue")))
    reply = _data(server.port(), 400_000)
    assert reply.startswith("452 4.3.1"), reply
    location = small_disk / "queue"
    assert sorted(p.name for p in location.iterdir()) == ["lock"]  # no partial files
    assert _data(server.port(), 20_000).startswith("250")
    wait_for(lambda: mailbox(tmp_path, "a@ok.example"), message="small one delivered")
    assert server.proc.poll() is None


def test_a_full_disk_never_loses_what_was_accepted(
    kittiwake: Start, tmp_path: Path, small_disk: Path
) -> None:
    """Fill the disk with accepted entries; later ones are refused, none is lost."""
    server = kittiwake(
        config(tmp_path, location=str(small_disk / "queue"), queue="    initial_retry_time 1h"),
    )
    accepted = refused = 0
    for _ in range(12):
        reply = _data(server.port(), 30_000, "u@temp.example")
        assert reply[:1] in ("2", "4"), reply  # never 5xx
        if reply.startswith("250"):
            accepted += 1
        else:
            refused += 1
    assert accepted and refused
    assert not [p for p in (small_disk / "queue").iterdir() if p.name.endswith(".tmp")]
    # What was accepted is on disk and complete (a restart finds every entry).
    assert server.stop() == 0
    location = str(small_disk / "queue")
    server = kittiwake(config(tmp_path, location=location, temp="deliver_to &mb"))
    wait_for(
        lambda: len(mailbox(tmp_path, "u@temp.example")) == accepted,
        timeout=30,
        message="every accepted message delivered",
    )
    assert "quarantined" not in server.log


def test_a_location_without_permission_is_451(kittiwake: Start, tmp_path: Path) -> None:
    """R59: the server cannot write its queue: 451 4.3.0, never 5xx, and it recovers."""
    server = kittiwake(config(tmp_path), unprivileged=True)
    location = tmp_path / "queue"
    location.chmod(0o500)
    try:
        with pytest.raises(smtplib.SMTPDataError) as failed:
            send(server.port(), "me@sender.example", ["a@ok.example"])
        assert failed.value.smtp_code == 451
        assert failed.value.smtp_error.startswith(b"4.3.0")
    finally:
        location.chmod(0o700)
    assert sorted(p.name for p in location.iterdir()) == ["lock"]
    send(server.port(), "me@sender.example", ["a@ok.example"])
    wait_for(lambda: mailbox(tmp_path, "a@ok.example"), message="delivered after the fix")


def test_a_location_that_cannot_be_used_at_start_is_a_config_error(
    kittiwake: Start, tmp_path: Path
) -> None:
    (tmp_path / "queue").write_text("not a directory")
    server = Kittiwake(tmp_path, config(tmp_path))
    assert server.wait() == 2
    server.kill()
    assert re.search(r"kittiwake.conf:\d+: target.queue: cannot use location", server.log)


def test_two_servers_never_share_a_queue(kittiwake: Start, tmp_path: Path) -> None:
    kittiwake(config(tmp_path))
    other = Kittiwake(tmp_path, config(tmp_path))
    assert other.wait() == 2
    other.kill()
    assert "is used by another running kittiwake" in other.log


def test_files_are_synced_before_the_rename_and_the_250(kittiwake: Start, tmp_path: Path) -> None:
    """R52: fsync(entry files) < rename(meta) < fsync(directory) < the 250."""
    strace = need_tool("strace", "strace")
    trace = tmp_path / "trace"
    server = kittiwake(config(tmp_path, queue="    initial_retry_time 1h"))
    pid = server.proc.pid
    tracer = subprocess.Popen(
        [strace, "-f", "-qq", "-y", "-o", str(trace), "-p", str(pid), "-e",
         "trace=openat,fsync,fdatasync,rename,renameat,renameat2,write,sendto"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def traced() -> bool:  # a greeting shows in the trace once strace is attached
            with Dialog(server.port()) as d:
                d.reply()
            return trace.exists() and '"220 ' in trace.read_text()

        wait_for(traced, message="strace attached")
        send(server.port(), "me@sender.example", ["u@temp.example"])
        wait_for(lambda: entries(tmp_path / "queue"), message="entry")
    finally:
        tracer.terminate()
        tracer.wait(10)
    lines = trace.read_text().splitlines()
    (entry_id,) = entries(tmp_path / "queue")
    location = str(tmp_path / "queue")

    def first(pattern: str, after: int = -1) -> int:
        for i, line in enumerate(lines):
            if i > after and re.search(pattern, line):
                return i
        raise AssertionError(f"{pattern!r} not traced:\n" + "\n".join(lines[-80:]))

    body_sync = first(rf"fsync\(\d+<[^>]*{entry_id}\.body\.tmp>")
    header_sync = first(rf"fsync\(\d+<[^>]*{entry_id}\.header\.tmp>")
    meta_sync = first(rf"fsync\(\d+<[^>]*{entry_id}\.meta\.tmp>")
    commit = first(rf"rename(at2?)?\(.*{entry_id}\.meta\.tmp\".*{entry_id}\.meta\"")
    dir_syncs = [
        i for i, line in enumerate(lines) if re.search(rf"fsync\(\d+<{re.escape(location)}>", line)
    ]
    go_ahead = first(r"(write|sendto)\(\d+<(TCP|socket).*\"354 ")
    reply = first(r"(write|sendto)\(\d+<(TCP|socket).*\"250 ", after=go_ahead)
    assert max(body_sync, header_sync, meta_sync) < commit
    assert any(commit < i < reply for i in dir_syncs), (commit, dir_syncs, reply)
    # The header and body names were synced before the metadata could point at them.
    assert any(max(body_sync, header_sync) < i < commit for i in dir_syncs)
