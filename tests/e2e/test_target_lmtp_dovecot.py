"""target.lmtp delivering into a real Dovecot LMTP server.

A kittiwake `lmtp` endpoint forwards with `deliver_to lmtp unix://...` to
Dovecot's LMTP service (Debian package `dovecot-lmtpd`), run from a
throw-away configuration with its sockets, state and Maildirs under one
temporary directory (no system service is touched). Dovecot knows three
users from a passwd-file; one of them has a quota of 10 bytes.

The original LMTP client then sees Dovecot's answers, recipient by
recipient: the unknown user refused at RCPT, and after the data (sent as
BDAT, which Dovecot offers) `250` for the two who got the message and
Dovecot's `552 5.2.2` quota failure for the full mailbox, in RCPT order.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kw import Dialog, Kittiwake, need_tool

Start = Callable[..., Kittiwake]
NOBODY = 65534  # Dovecot refuses to deliver as root
LMTP_BINARY = "/usr/lib/dovecot/lmtp"
WAIT = 20.0


class Dovecot:
    """`dovecot -F` on its own configuration; LMTP on `base/run/lmtp`."""

    def __init__(self) -> None:
        binary = need_tool("dovecot", "dovecot-core")
        if not os.access(LMTP_BINARY, os.X_OK):
            pytest.fail(
                f"{LMTP_BINARY} is missing: install it: .ci/run installs Debian package "
                "dovecot-lmtpd",
                pytrace=False,
            )
        # Under /tmp, world-searchable: Dovecot writes the mail as `nobody`.
        self.base = Path(tempfile.mkdtemp(prefix="kw-dovecot-", dir="/tmp"))
        self.base.chmod(0o755)
        for sub in ("run", "state", "mail", "home"):
            (self.base / sub).mkdir()
        for sub in ("mail", "home"):
            os.chown(self.base / sub, NOBODY, NOBODY)
        home = self.base / "home"
        (self.base / "passwd").write_text(
            f"one@example.org:{{PLAIN}}x:{NOBODY}:{NOBODY}::{home}/one::\n"
            f"full@example.org:{{PLAIN}}x:{NOBODY}:{NOBODY}::{home}/full::"
            "userdb_quota_rule=*:storage=10B\n"
            f"three@example.org:{{PLAIN}}x:{NOBODY}:{NOBODY}::{home}/three::\n"
        )
        self.conf = self.base / "dovecot.conf"
        self.conf.write_text(
            f"base_dir = {self.base}/run\n"
            f"state_dir = {self.base}/state\n"
            f"log_path = {self.base}/dovecot.log\n"
            "protocols = lmtp\n"
            "listen = 127.0.0.1\n"
            "ssl = no\n"
            f"mail_location = maildir:{self.base}/mail/%d/%n\n"
            "first_valid_uid = 1\nfirst_valid_gid = 1\n"
            "mail_plugins = quota\n"
            f"passdb {{\n  driver = passwd-file\n  args = {self.base}/passwd\n}}\n"
            f"userdb {{\n  driver = passwd-file\n  args = {self.base}/passwd\n}}\n"
            "plugin {\n  quota = maildir:User quota\n}\n"
            "service lmtp {\n  unix_listener lmtp {\n    mode = 0666\n  }\n}\n"
        )
        self.socket = self.base / "run" / "lmtp"
        self.proc = subprocess.Popen(
            [binary, "-F", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + WAIT
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dovecot did not start:\n{self.log}")
            time.sleep(0.05)

    @property
    def log(self) -> str:
        try:
            return (self.base / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def messages(self, user: str) -> list[bytes]:
        new = self.base / "mail" / "example.org" / user / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def close(self) -> None:
        """SIGTERM the master (it stops its children); anything of ours left is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(WAIT)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot()
    try:
        yield server
    finally:
        server.close()


def conf(tmp: Path, socket: Path) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
lmtp tcp://127.0.0.1:0 {{
    deliver_to lmtp unix://{socket} {{
        debug yes
    }}
}}
"""


BODY = b"For three people.\r\n.a dot\r\n"


def test_per_recipient_statuses_from_dovecot(
    dovecot: Dovecot, kittiwake: Start, tmp_path: Path
) -> None:
    server = kittiwake(conf(tmp_path, dovecot.socket))
    with Dialog(server.port()) as d:
        assert d.reply()[-1].startswith("220 ")
        assert d.cmd("LHLO client.example.net").startswith("250 ")
        assert d.cmd("MAIL FROM:<sender@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<one@example.org>").startswith("250 ")
        unknown = d.cmd("RCPT TO:<nobody@example.org>")
        assert d.cmd("RCPT TO:<full@example.org>").startswith("250 ")
        assert d.cmd("RCPT TO:<three@example.org>").startswith("250 ")
        assert d.cmd("DATA").startswith("354 ")
        d.send(
            b"From: sender@example.net\r\nSubject: dovecot\r\n\r\n"
            + BODY.replace(b"\r\n.", b"\r\n..")
            + b".\r\n"
        )
        finals = [d.line() for _ in range(3)]
    # Dovecot's own texts, with kittiwake's message ID after them.
    assert re.fullmatch(
        r"550 5\.1\.1 <nobody@example\.org> User doesn't exist: nobody@example\.org "
        r"\(msg ID = [0-9a-f]{8}\)",
        unknown,
    )
    assert finals[0].startswith("250 2.0.0 <one@example.org> ")
    assert re.fullmatch(
        r"552 5\.2\.2 <full@example\.org> Quota exceeded \(mailbox for user is full\) "
        r"\(msg ID = [0-9a-f]{8}\)",
        finals[1],
    ), finals
    assert finals[2].startswith("250 2.0.0 <three@example.org> ")

    for user in ("one", "three"):
        (stored,) = dovecot.messages(user)
        assert stored.endswith(b"\n\nFor three people.\n.a dot\n")
        assert b"Subject: dovecot\n" in stored
        assert b"with LMTP id" in stored  # kittiwake's Received
    assert dovecot.messages("full") == []
    assert "save failed to INBOX: Quota exceeded" in dovecot.log
    server.wait_log(r'sent remote=unix://\S+ line="BDAT \d+ LAST"')
