"""The Dovecot half of docs/from-maddy.md, run: users moved from maddy, mail read back.

The page's Dovecot configuration is taken from the page itself (the
`text` fence that starts `# /etc/dovecot/local.conf`), with only what a
test machine needs changed: its paths go into a temporary folder, the
certificate is a trustme one, the mail tree belongs to `nobody` (kittiwake
runs as root here, and Dovecot will not open mail as root), `protocols`
is emptied (serving IMAP is Dovecot's own business, and needs package
`dovecot-imapd`; no port is taken), and Dovecot's own folders
(`base_dir`, `state_dir`, the log) are private.

The users file is made with the page's own `sqlite3` query, run on a
credentials table in maddy's format (`bcrypt:$2a$...` entries). Then:

- kittiwake's `submission` endpoint, with the page's `auth.dovecot_sasl
  local_authdb` block, accepts the migrated password and refuses a wrong
  one, through Dovecot's `auth-kittiwake` socket;
- a message kittiwake's `smtp` endpoint delivers into `storage.maildir`
  (the mailbox made as the page says: `cur`, `new`, `tmp`) is what
  `doveadm fetch` reads from that Dovecot.

Needs root (Dovecot's master switches users) and Debian's `dovecot-core`.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
import trustme
from kw import Kittiwake, need_tool
from test_system_auth import IS_ROOT, Dovecot

PAGE = Path(__file__).resolve().parents[2] / "docs" / "from-maddy.md"
NOBODY = 65534
USERS = {"alice@example.org": "correct horse", "bob@example.org": "battery staple"}

Start = Callable[..., Kittiwake]


def page_fence(start: str, kind: str) -> str:
    """The body of the first `kind` fence of the page whose text begins with `start`."""
    for body in re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S):
        if body.startswith(start):
            return str(body)
    raise AssertionError(f"docs/from-maddy.md has no {kind} fence starting {start!r}")


def once(text: str, old: str, new: str, count: int = 1) -> str:
    assert text.count(old) == count, (old, text.count(old))
    return text.replace(old, new)


def users_file(root: Path) -> Path:
    """maddy's credentials table, then the page's query turning it into Dovecot's users."""
    db = root / "credentials.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE passwords (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
        for user, password in USERS.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10, prefix=b"2a"))
            conn.execute("INSERT INTO passwords VALUES (?, ?)", (user, "bcrypt:" + hashed.decode()))
        conn.execute("INSERT INTO passwords VALUES ('carol@example.org', 'argon2:2:1024:1:x:y')")
    command = page_fence("sqlite3 /var/lib/maddy/credentials.db", "sh")
    query = re.search(r'"(SELECT .*?)"', command, re.S)
    assert query is not None
    with sqlite3.connect(db) as conn:
        rows = [row[0] for row in conn.execute(query.group(1))]
    users = root / "users"
    users.write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    users.chmod(0o644)
    return users


class PageDovecot(Dovecot):
    """`dovecot -F` on the page's configuration (see the module docstring)."""

    def __init__(self, root: Path, cert: Path, key: Path) -> None:
        self.root = root
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir()
        self.socket = root / "run" / "auth-kittiwake"
        text = page_fence("# /etc/dovecot/local.conf", "text")
        text = once(text, "/var/lib/kittiwake/mail", f"{root}/mail", count=2)
        text = once(text, "/etc/dovecot/users", str(users_file(root)))
        text = once(text, "</etc/kittiwake/certs/example.org/fullchain.pem", f"<{cert}")
        text = once(text, "</etc/kittiwake/certs/example.org/privkey.pem", f"<{key}")
        text = once(text, "mail_uid = kittiwake", f"mail_uid = {NOBODY}")
        text = once(text, "mail_gid = kittiwake", f"mail_gid = {NOBODY}")
        # The test's kittiwake runs as root: the socket is root's.
        text = once(
            text, "user = kittiwake\n    group = kittiwake", "user = root\n    group = root"
        )
        # Serving IMAP is Dovecot's own business, and its binary another package.
        text = once(text, "protocols = imap\n", "protocols =\n")
        self.conf = root / "dovecot.conf"
        self.conf.write_text(
            f"base_dir = {root}/run\nstate_dir = {root}/state\nlog_path = {root}/dovecot.log\n"
            + text,
            encoding="utf-8",
        )
        self.proc = None

    def doveadm(self, *args: str) -> str:
        result = subprocess.run(
            [need_tool("doveadm", "dovecot-core"), "-c", str(self.conf), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr + self.logs()
        return result.stdout


@pytest.fixture
def dovecot() -> Iterator[PageDovecot]:
    need_tool("dovecot", "dovecot-core")
    if not IS_ROOT:
        pytest.fail("this test runs Dovecot's master process, which needs root", pytrace=False)
    # A short path (Unix socket names are limited), traversable by nobody.
    root = Path(tempfile.mkdtemp(prefix="kwmd", dir="/tmp"))
    root.chmod(0o755)
    leaf = trustme.CA().issue_cert("example.org")
    cert, key = root / "cert.pem", root / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    server = PageDovecot(root, cert, key)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def kittiwake_conf(tmp: Path, dovecot: PageDovecot) -> str:
    auth = page_fence("auth.dovecot_sasl local_authdb {", "conf global")
    auth = once(auth, "unix:///run/dovecot/auth-kittiwake", f"unix://{dovecot.socket}")
    return f"""\
state_dir {tmp}/state
hostname mx.example.org
tls off

{auth}
storage.maildir local_mailboxes {{
    path {dovecot.root}/mail
}}

smtp tcp://127.0.0.1:0 {{
    destination example.org {{
        deliver_to &local_mailboxes
    }}
    default_destination {{
        reject 550 5.1.1 "User doesn't exist"
    }}
}}

submission tcp://127.0.0.1:0 {{
    auth &local_authdb
    deliver_to dummy
}}
"""


def test_migrated_users_log_in_and_dovecot_reads_the_mail(
    dovecot: PageDovecot, kittiwake: Start, tmp_path: Path
) -> None:
    assert (dovecot.root / "users").read_text().count("{BLF-CRYPT}$2a$10$") == 2
    server = kittiwake(kittiwake_conf(tmp_path, dovecot), ready=2)

    with smtplib.SMTP("127.0.0.1", server.port(1), timeout=30) as client:
        client.ehlo("client.example.net")
        assert client.login("alice@example.org", USERS["alice@example.org"])[0] == 235
    with smtplib.SMTP("127.0.0.1", server.port(1), timeout=30) as client:
        client.ehlo("client.example.net")
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice@example.org", "wrong")
        assert refused.value.smtp_code == 535

    # The mailbox as the page says to make it, then one message into it.
    for sub in ("cur", "new", "tmp"):
        (dovecot.root / "mail" / "example.org" / "alice" / sub).mkdir(parents=True)
    with smtplib.SMTP("127.0.0.1", server.port(0), timeout=30) as client:
        client.sendmail(
            "someone@example.net",
            ["alice@example.org"],
            b"From: someone@example.net\r\nSubject: moved from maddy\r\n\r\nHello Alice.\r\n",
        )
    tree = dovecot.root / "mail"
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chown(dirpath, NOBODY, NOBODY)
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)

    fetched = dovecot.doveadm(
        "fetch", "-u", "alice@example.org", "hdr.subject body", "mailbox", "INBOX", "all"
    )
    assert "moved from maddy" in fetched
    assert "Hello Alice." in fetched
