"""`kittiwake creds` and `kittiwake hash` as an operator runs them: real processes.

Each command is `python -m kittiwake ...` in a temporary directory; the
credentials database it writes is then checked with the provider itself
(`auth.pass_table` built from the same configuration), so what the command
stores is proven to authenticate.
"""

from __future__ import annotations

import os
import re
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kittiwake.auth import hashing
from kittiwake.auth.base import InvalidCredentials, PasswordAuth
from kittiwake.config.node import Node
from kittiwake.config.parser import parse_file
from kittiwake.container import Container

SRC = Path(__file__).resolve().parent.parent.parent / "src"
CONF = """\
state_dir data
auth.pass_table local_authdb {
    table sql_table {
        driver sqlite3
        dsn credentials.db
        table_name passwords
    }
}
auth.pass_table other_db {
    table sql_table {
        driver sqlite3
        dsn other.db
        table_name passwords
    }
}
auth.pass_table from_file {
    table file passwd
}
table.static not_auth {
    entry a b
}
"""


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "KITTIWAKE_CONFIG"}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), e.get("PYTHONPATH")) if p)
    e.update(extra)
    return e


def kw(
    *args: str, cwd: Path, stdin: str | None = None, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one `python -m kittiwake` command to completion (stdin is never a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "kittiwake", *args],
        check=False,
        cwd=cwd,
        env=environ or env(),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "kittiwake.conf"
    path.write_text(CONF)
    return path


class Provider:
    """The configured `local_authdb` block, started, to check stored entries."""

    def __init__(self, conf: Path, block: str) -> None:
        self.container = Container(
            parse_file(str(conf)), config_file=str(conf), cwd=str(conf.parent)
        )
        self.container.parse_globals()
        self.auth = self.container.instance(block, Node("test", [block]), PasswordAuth)

    async def __aenter__(self) -> PasswordAuth:
        await self.container.start()
        return self.auth

    async def __aexit__(self, *exc: object) -> None:
        await self.container.stop()


def users(conf: Path, db: str = "credentials.db") -> dict[str, str]:
    connection = sqlite3.connect(conf.parent / "data" / db)
    try:
        return dict(connection.execute("SELECT key, value FROM passwords").fetchall())
    finally:
        connection.close()


# -- creds ------------------------------------------------------------------------------


async def test_round_trip(conf: Path, tmp_path: Path) -> None:
    c = str(conf)
    r = kw("creds", "list", "-c", c, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "No users.\n")

    r = kw("creds", "create", "-c", c, "-p", "s3cret", "Alice@Example.ORG", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # From stdin: one line, the CRLF is not part of the password.
    r = kw("creds", "create", "-c", c, "bob", stdin="b0b pass\r\nignored\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = kw("creds", "create", "-c", c, "--hash", "argon2", "carol", stdin="c4rol", cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    r = kw("creds", "list", "-c", c, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "alice@example.org\nbob\ncarol\n")
    stored = users(conf)
    assert stored["alice@example.org"].startswith("bcrypt:$2a$10$")
    assert stored["carol"].startswith("argon2:2:1024:1:")

    r = kw("creds", "create", "-c", c, "-p", "x", "ALICE@example.org", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == ("Error: auth.pass_table: credentials for alice@example.org already exist\n")

    async with Provider(conf, "local_authdb") as auth:
        await auth.auth_plain("alice@example.org", "s3cret")
        await auth.auth_plain("bob", "b0b pass")
        await auth.auth_plain("carol", "c4rol")
        with pytest.raises(InvalidCredentials):
            await auth.auth_plain("bob", "b0b pass\r")

    r = kw("creds", "password", "-c", c, "carol", stdin="n3w\n", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    assert users(conf)["carol"].startswith("bcrypt:$2a$10$")  # always bcrypt

    # stdin is not a terminal: no question asked.
    r = kw("creds", "remove", "-c", c, "bob", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = kw("creds", "list", "-c", c, cwd=tmp_path)
    assert r.stdout == "alice@example.org\ncarol\n"

    async with Provider(conf, "local_authdb") as auth:
        await auth.auth_plain("carol", "n3w")
        for user, password in (("carol", "c4rol"), ("bob", "b0b pass")):
            with pytest.raises(InvalidCredentials):
                await auth.auth_plain(user, password)


def test_cfg_block_and_environment(conf: Path, tmp_path: Path) -> None:
    r = kw("creds", "create", "--cfg-block", "other_db", "-p", "pw", "dave", cwd=tmp_path,
           environ=env(KITTIWAKE_CONFIG=str(conf)))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert list(users(conf, "other.db")) == ["dave"]
    assert not (tmp_path / "data" / "credentials.db").exists()  # only that block was used
    # ./kittiwake.conf is found without -c too.
    r = kw("creds", "list", "--cfg-block", "other_db", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "dave\n")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("create",), "pw", "Error: USERNAME is required\n"),
        (("password",), "pw", "Error: USERNAME is required\n"),
        (("remove",), "", "Error: USERNAME is required\n"),
        (("list", "--cfg-block", "nope"), "", "Error: unknown configuration block: nope\n"),
        (
            ("create", "--cfg-block", "nope", "u"),
            "pw",
            "Error: unknown configuration block: nope\n",
        ),
        (("create", "u"), "", "Error: the password is empty\n"),
        (("create", "u"), "\n", "Error: the password is empty\n"),
        (("create", "--hash", "sha256", "u"), "pw", "unknown hash function 'sha256'"),
        (
            ("create", "--hash", "argon2", "--cfg-block", "not_auth", "u"),
            "pw",
            "not a local credentials store",
        ),
        (
            ("list", "--cfg-block", "not_auth"),
            "",
            "Error: configuration block not_auth is not a local credentials store\n",
        ),
    ],
)
def test_usage_errors_exit_2(
    conf: Path, tmp_path: Path, args: tuple[str, ...], stdin: str, message: str
) -> None:
    r = kw("creds", *args, "-c", str(conf), stdin=stdin, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "data" / "credentials.db").exists() or not users(conf)


def test_configuration_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("state_dir data\nauth.pass_table local_authdb {\n  tabel x\n}\n")
    r = kw("creds", "list", "-c", str(bad), cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, f"{bad}:2: missing required directive: table\n")
    r = kw("creds", "list", "-c", str(tmp_path / "missing.conf"), cwd=tmp_path)
    assert r.returncode == 2
    assert "no such file" in r.stderr


def test_operational_errors_exit_1(conf: Path, tmp_path: Path) -> None:
    c = str(conf)
    r = kw("creds", "password", "-c", c, "-p", "pw", "ghost", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "Error: auth.pass_table: no credentials for ghost\n")
    r = kw("creds", "remove", "-c", c, "ghost", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "Error: auth.pass_table: no credentials for ghost\n")
    r = kw("creds", "create", "-c", c, "-p", "x" * 73, "long", cwd=tmp_path)
    assert r.returncode == 1
    assert "exceeds 72 bytes" in r.stderr
    r = kw("creds", "create", "-c", c, "--cfg-block", "from_file", "-p", "pw", "u", cwd=tmp_path)
    assert r.returncode == 1
    assert "table is not mutable, no management functionality available" in r.stderr


def test_the_embedded_default_configuration(tmp_path: Path) -> None:
    default = kw("config", "default", cwd=tmp_path)
    assert "auth.pass_table local_authdb" in default.stdout, default.stdout
    r = kw("creds", "create", "me@localhost", "-p", "x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    db = tmp_path / "kittiwake-data" / "credentials.db"
    assert db.exists()
    r = kw("creds", "list", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "me@localhost\n")


# -- on a terminal ------------------------------------------------------------------------


class Terminal:
    """A process whose stdin is a pseudo-terminal and which has no controlling tty.

    Without a controlling terminal, getpass turns echo off on stdin itself,
    which is exactly the pty: what the process echoes is readable on the
    master side, so the tests can prove a password is not echoed.
    """

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kittiwake", *args],
            cwd=cwd,
            env=env(),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        os.close(slave)
        self.stderr = b""
        self.echo = b""

    def wait_for(self, text: str) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 20
        while text.encode() not in self.stderr:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} on stderr: {self.stderr!r}"
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                assert chunk, f"stderr closed: {self.stderr!r}"
                self.stderr += chunk

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=30)
        while True:
            ready, _, _ = select.select([self.master], [], [], 0)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.echo += chunk
        os.close(self.master)
        return self.proc.returncode, out.decode(), (self.stderr + err).decode()


needs_pty = pytest.mark.skipif(
    not hasattr(os, "openpty"), reason="this platform has no pseudo-terminals (os.openpty)"
)


@needs_pty
async def test_password_prompt_hides_input_and_asks_twice(conf: Path, tmp_path: Path) -> None:
    t = Terminal(["creds", "create", "-c", str(conf), "erin"], tmp_path)
    t.wait_for("Enter password for new user: ")
    t.type("hidden pw")
    t.wait_for("Repeat password: ")
    t.type("hidden pw")
    status, _, err = t.finish()
    assert status == 0, err
    assert b"hidden pw" not in t.echo
    async with Provider(conf, "local_authdb") as auth:
        await auth.auth_plain("erin", "hidden pw")

    t = Terminal(["creds", "password", "-c", str(conf), "erin"], tmp_path)
    t.wait_for("Enter new password: ")
    t.type("one")
    t.wait_for("Repeat password: ")
    t.type("two")
    status, _, err = t.finish()
    assert status == 2
    assert "Error: the passwords do not match" in err


@needs_pty
def test_remove_asks_on_a_terminal(conf: Path, tmp_path: Path) -> None:
    assert kw("creds", "create", "-c", str(conf), "-p", "pw", "frank", cwd=tmp_path).returncode == 0
    question = "Are you sure you want to delete this user account? [y/N]"
    t = Terminal(["creds", "remove", "-c", str(conf), "frank"], tmp_path)
    t.wait_for(question)
    t.type("")  # the default is no
    status, _, err = t.finish()
    assert status == 1
    assert "Cancelled." in err
    assert "frank" in users(conf)

    t = Terminal(["creds", "remove", "-c", str(conf), "frank"], tmp_path)
    t.wait_for(question)
    t.type("y")
    assert t.finish()[0] == 0
    assert b"y" in t.echo  # the terminal echoes a normal answer (and the check sees it)
    assert "frank" not in users(conf)

    assert kw("creds", "create", "-c", str(conf), "-p", "pw", "gina", cwd=tmp_path).returncode == 0
    t = Terminal(["creds", "remove", "-y", "-c", str(conf), "gina"], tmp_path)
    status, _, err = t.finish()  # -y: no question at all
    assert (status, err) == (0, "")
    assert "gina" not in users(conf)


# -- hash ---------------------------------------------------------------------------------


def test_hash_bcrypt(tmp_path: Path) -> None:
    r = kw("hash", "-p", "hunter2", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    entry = r.stdout.rstrip("\n")
    assert re.fullmatch(r"bcrypt:\$2a\$10\$[./A-Za-z0-9]{53}", entry)
    assert hashing.verify_password("hunter2", entry)

    r = kw("hash", "--bcrypt-cost", "4", cwd=tmp_path, stdin="from stdin\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("bcrypt:$2a$04$")
    assert hashing.verify_password("from stdin", r.stdout.strip())


def test_hash_argon2(tmp_path: Path) -> None:
    r = kw("hash", "--hash", "argon2", "-p", "pw", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    entry = r.stdout.strip()
    assert re.fullmatch(r"argon2:2:1024:1:[A-Za-z0-9+/]{22}==:[A-Za-z0-9+/]{86}==", entry)
    assert hashing.verify_password("pw", entry)
    r = kw("hash", "--hash", "argon2", "--argon2-time", "3", "--argon2-memory", "64",
           "--argon2-threads", "2", "-p", "pw", cwd=tmp_path)  # fmt: skip
    assert r.stdout.startswith("argon2:3:64:2:")
    assert hashing.verify_password("pw", r.stdout.strip())


async def test_hash_usable_in_a_static_table(tmp_path: Path) -> None:
    entry = kw("hash", "--bcrypt-cost", "4", "-p", "pw", cwd=tmp_path).stdout.strip()
    conf = tmp_path / "static.conf"
    conf.write_text(f'auth.pass_table s {{\n  table static {{\n    entry u "{entry}"\n  }}\n}}\n')
    async with Provider(conf, "s") as auth:
        await auth.auth_plain("U", "pw")


def test_hash_warnings_and_errors(tmp_path: Path) -> None:
    r = kw("hash", "--bcrypt-cost", "4", cwd=tmp_path, stdin="")
    assert r.returncode == 0
    assert r.stderr == "WARNING: This is the hash of an empty string\n"
    assert hashing.verify_password("", r.stdout.strip())
    r = kw("hash", "--bcrypt-cost", "4", "-p", " pw", cwd=tmp_path)
    assert r.stderr == "WARNING: There is leading/trailing whitespace in the string\n"

    r = kw("hash", "--hash", "sha256", "-p", "pw", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "Error: unknown hash function 'sha256', available: bcrypt, argon2\n"
    for flags in (("--bcrypt-cost", "3"), ("--bcrypt-cost", "32"), ("--argon2-threads", "0")):
        r = kw("hash", *flags, "-p", "pw", cwd=tmp_path)
        assert r.returncode == 2, flags
        assert r.stderr.startswith("Error: ")
    r = kw("hash", "-p", "x" * 73, cwd=tmp_path)
    assert r.returncode == 1
    assert "exceeds 72 bytes" in r.stderr
