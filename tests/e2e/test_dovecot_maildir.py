"""Dovecot reads what storage.maildir writes.

kittiwake's `storage.maildir` delivers messages (plain text, bare CR and
CR CR LF, 8-bit UTF-8, a 1 MiB body, a sub-address, a quarantined message);
then the real `doveadm` (Debian package `dovecot-core`) lists and fetches
them from a throw-away configuration. No Dovecot service runs: without `-u`,
doveadm opens the mailbox of `$USER` itself, with no auth process.

Dovecot trusts the `S=`/`W=` sizes in a file name; a wrong `S=` makes it log
"Cached message size smaller than expected" and rebuild its cache. So the
test also fetches a copy of the Maildir whose file names carry no sizes,
where Dovecot must compute both sizes itself, and checks they are the ones
kittiwake wrote into the names. Any `Error:` or `Warning:` from doveadm
fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kw import need_tool

from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.targets.base import DeliveryTarget

USER = "user@example.org"
NOBODY = 65534  # Dovecot refuses to open mail as root

MESSAGES: dict[str, bytes] = {
    "plain": b"Just text.\r\nTwo lines.\r\n",
    "cr": "8-bit: Grüße, 日本語\r\nbare\rCR, then CR CR LF\r\r\nlast line\r\n".encode(),
    "big": (b"0123456789abcdef" * 4)[:62] + b"\r\n",
    "tagged": b"to a sub-address\r\n",
}
MESSAGES["big"] *= 16 * 1024  # 64-byte lines: exactly 1 MiB


def head(subject: str) -> Header:
    h = Header()
    h.add("From", "Sender <sender@example.net>", folded=False)
    h.add("Subject", subject, folded=False)  # added last: on top
    return h


def expected_file(subject: str, body: bytes) -> bytes:
    """What the Maildir file must hold: trace lines, header, body, all with LF."""
    delivered_to = "user+tag@example.org" if subject == "tagged" else USER
    return (
        f"Return-Path: <sender@example.net>\nDelivered-To: {delivered_to}\n"
        f"Subject: {subject}\nFrom: Sender <sender@example.net>\n\n"
    ).encode() + body.replace(b"\r\n", b"\n")


async def deliver_all(root: Path) -> None:
    text = f"storage.maildir local_mailboxes {{\n path {root}\n auto_create yes\n}}\n"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(root.parent))
    container.parse_globals()
    (node,) = parse_text("deliver_to &local_mailboxes\n", "t.conf")
    target = container.module_from_node(node, DeliveryTarget, "target")
    await container.start()
    try:
        cases = [(s, b, False) for s, b in MESSAGES.items()] + [("junk", b"spam\r\n", True)]
        for subject, body, quarantine in cases:
            buf = Buffer.ram()
            await buf.write(body)
            await buf.finish()
            delivery = await target.start_delivery(
                MsgMeta(id=subject, quarantine=quarantine), "sender@example.net"
            )
            await delivery.add_rcpt("user+tag@example.org" if subject == "tagged" else USER)
            await delivery.body(head(subject), buf)
            await delivery.commit()
            buf.remove()
    finally:
        await container.stop()


class Doveadm:
    def __init__(self, base: Path, mail: Path, uid: int, gid: int) -> None:
        self.base = base
        self.conf = base / f"dovecot-{mail.name}.conf"
        self.conf.write_text(
            f"base_dir = {base}/run\n"
            f"state_dir = {base}/state\n"
            "log_path = /dev/stderr\n"
            f"mail_location = maildir:{mail}/%d/%n\n"
            f"mail_uid = {uid}\nmail_gid = {gid}\n"
            "first_valid_uid = 1\nfirst_valid_gid = 1\n"
            "ssl = no\nprotocols =\n"
        )

    def run(self, *args: str) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "USER": USER}
        env["HOME"] = str(self.base / "home")
        result = subprocess.run(
            [need_tool("doveadm", "dovecot-core"), "-c", str(self.conf), *args],
            env=env,
            capture_output=True,
            check=False,
            timeout=60,
        )
        stderr = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 0, stderr
        assert not re.search(r"(Error|Warning|Panic|Fatal):", stderr), stderr
        return result.stdout.decode("utf-8")

    def fetch(self, fields: str, mailbox: str = "INBOX") -> list[dict[str, Any]]:
        out = self.run("-f", "json", "fetch", fields, "mailbox", mailbox, "all")
        result: list[dict[str, Any]] = json.loads(out)
        return result


@pytest.fixture
def base() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are 0700, and doveadm drops to
    # an unprivileged user who must be able to walk down to the Maildir.
    need_tool("doveadm", "dovecot-core")  # before any work
    path = Path(tempfile.mkdtemp(prefix="kw-dovecot-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _hand_over(tree: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chown(dirpath, uid, gid)
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _sizes_in_name(name: str) -> tuple[int, int]:
    m = re.search(r",S=(\d+),W=(\d+)$", name)
    assert m is not None, name
    return int(m[1]), int(m[2])


async def test_dovecot_lists_and_reads_what_was_delivered(base: Path) -> None:
    mail = base / "mail"
    await deliver_all(mail)
    uid, gid = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    box = mail / "example.org" / "user"
    names = {p.read_bytes(): p.name for p in (box / "new").iterdir()}

    # A copy whose names carry no sizes: Dovecot must compute them itself.
    copy = base / "copy"
    for folder in ("", ".Junk"):
        for sub in ("tmp", "new", "cur"):
            (copy / "example.org" / "user" / folder / sub).mkdir(parents=True, exist_ok=True)
    for p in (box / "new").iterdir():
        shutil.copyfile(p, copy / "example.org" / "user" / "new" / p.name.split(",")[0])
    if os.geteuid() == 0:
        _hand_over(mail, uid, gid)
        _hand_over(copy, uid, gid)
    dove = Doveadm(base, mail, uid, gid)

    listed = dove.run("search", "mailbox", "INBOX", "ALL").split("\n")
    assert len([line for line in listed if line.strip()]) == len(MESSAGES)

    fetched = dove.fetch("uid hdr body size.physical size.virtual")
    assert len(fetched) == len(MESSAGES)
    by_subject: dict[str, dict[str, Any]] = {}
    for msg in fetched:
        subject = re.search(r"^Subject: (.*)$", msg["hdr"], re.M)
        assert subject is not None
        by_subject[subject[1]] = msg
    assert set(by_subject) == set(MESSAGES)
    for subject, body in MESSAGES.items():
        msg = by_subject[subject]
        want = expected_file(subject, body)
        assert (msg["hdr"] + msg["body"]).encode() == want, subject
        s, w = _sizes_in_name(names[want])
        assert (int(msg["size.physical"]), int(msg["size.virtual"])) == (s, w), subject

    computed = Doveadm(base, copy, uid, gid).fetch("hdr size.physical size.virtual")
    assert len(computed) == len(MESSAGES)
    for msg in computed:
        subject = re.search(r"^Subject: (.*)$", msg["hdr"], re.M)
        assert subject is not None
        s, w = _sizes_in_name(names[expected_file(subject[1], MESSAGES[subject[1]])])
        assert (int(msg["size.physical"]), int(msg["size.virtual"])) == (s, w), subject[1]

    # Quarantined mail is in the Junk folder, as a Dovecot folder.
    junk = dove.fetch("hdr body", "Junk")
    assert len(junk) == 1
    assert (junk[0]["hdr"] + junk[0]["body"]).encode() == expected_file("junk", b"spam\r\n")
    assert "Junk" in dove.run("mailbox", "list").split()
