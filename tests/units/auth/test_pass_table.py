"""auth.pass_table over real tables: SQLite (`sql_table`, `sql_query`) and `table.file`.

Modules are built the way `kittiwake creds` builds them: configuration text
-> parser -> container, the named block configured through
`Container.instance`, its table started (the SQL table opens its database
there) and stopped after the test.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from argon2.low_level import Type, hash_secret_raw

from kittiwake.auth import hashing
from kittiwake.auth.base import (
    InvalidCredentials,
    PasswordAuth,
    TemporaryAuthFailure,
    UserDB,
)
from kittiwake.auth.pass_table import PassTable, UserDBError
from kittiwake.config.node import Node
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.tables.base import Table

FAST = hashing.HashOptions(bcrypt_cost=4)


class Builder:
    """Containers for one test, all stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.containers: list[Container] = []

    def _container(self, text: str) -> Container:
        container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(self.dir))
        container.parse_globals()
        return container

    async def _start(self, container: Container) -> None:
        container.prepare_dirs()
        self.containers.append(container)
        await container.start()

    async def named(self, text: str, name: str = "local_authdb") -> Any:
        """Configure and start the named block `name` of `text`."""
        container = self._container(text)
        module = container.instance(name, Node("test", [name]), PasswordAuth)
        await self._start(container)
        return module

    async def inline(self, directive: str) -> Any:
        """An inline definition, as in an endpoint's `auth pass_table ...` line."""
        (node,) = parse_text(directive, "i.conf")
        container = self._container("")
        module = container.module_from_node(node, PasswordAuth, "auth")
        await self._start(container)
        return module

    async def stop(self) -> None:
        while self.containers:
            await self.containers.pop().stop()


@pytest.fixture
async def build(tmp_path: Path) -> AsyncIterator[Builder]:
    builder = Builder(tmp_path)
    yield builder
    await builder.stop()


def sql_block(dsn: str = "credentials.db", name: str = "local_authdb") -> str:
    return (
        f"state_dir data\n"
        f"auth.pass_table {name} {{\n"
        f"    table sql_table {{\n"
        f"        driver sqlite3\n"
        f"        dsn {dsn}\n"
        f"        table_name passwords\n"
        f"    }}\n"
        f"}}\n"
    )


def write_file_table(path: Path, entries: dict[str, str]) -> None:
    path.write_text("".join(f"{k}: {v}\n" for k, v in entries.items()))


# -- authentication over SQLite -----------------------------------------------------------


async def test_sql_table_round_trip(build: Builder, tmp_path: Path) -> None:
    auth = await build.named(sql_block())
    assert isinstance(auth, PassTable)
    assert isinstance(auth, UserDB) and isinstance(auth, Table)
    assert await auth.list_users() == []
    await auth.create_user("Alice@Example.ORG", "s3cret")
    # Stored under the PRECIS UsernameCaseMapped key, as a maddy bcrypt entry.
    db = sqlite3.connect(tmp_path / "data" / "credentials.db")
    rows = db.execute("SELECT key, value FROM passwords").fetchall()
    db.close()
    assert [r[0] for r in rows] == ["alice@example.org"]
    assert rows[0][1].startswith("bcrypt:$2a$10$")
    assert await auth.lookup("ALICE@example.org") == rows[0][1]
    assert await auth.lookup("nobody") is None
    assert await auth.lookup("a b") is None  # cannot be normalised: cannot exist

    await auth.auth_plain("alice@example.org", "s3cret")
    await auth.auth_plain("ALICE@EXAMPLE.ORG", "s3cret")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice@example.org", "S3cret")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("bob@example.org", "s3cret")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("bad name", "s3cret")
    assert await auth.list_users() == ["alice@example.org"]


async def test_management(build: Builder) -> None:
    auth = await build.named(sql_block())
    await auth.create_user("bob", "one", scheme="argon2")
    assert (await auth.lookup("bob")).startswith("argon2:2:1024:1:")
    await auth.auth_plain("bob", "one")
    with pytest.raises(UserDBError, match="credentials for bob already exist"):
        await auth.create_user("BOB", "two")
    await auth.auth_plain("bob", "one")  # unchanged

    await auth.set_user_password("Bob", "two")  # always bcrypt, cost 10
    assert (await auth.lookup("bob")).startswith("bcrypt:$2a$10$")
    await auth.auth_plain("bob", "two")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("bob", "one")

    await auth.create_user("carol", "c")
    assert sorted(await auth.list_users()) == ["bob", "carol"]
    await auth.delete_user("BOB")
    assert await auth.list_users() == ["carol"]
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("bob", "two")


async def test_management_errors(build: Builder) -> None:
    auth = await build.named(sql_block())
    with pytest.raises(UserDBError, match="no credentials for ghost"):
        await auth.set_user_password("ghost", "pw")
    with pytest.raises(UserDBError, match="no credentials for ghost"):
        await auth.delete_user("Ghost")
    with pytest.raises(UserDBError, match="unknown hash function: sha256"):
        await auth.create_user("dave", "pw", scheme="sha256")
    with pytest.raises(UserDBError, match=r"create user a b \(raw\)"):
        await auth.create_user("a b", "pw")
    with pytest.raises(UserDBError, match="exceeds 72 bytes"):
        await auth.create_user("erin", "x" * 73)
    assert await auth.list_users() == []


async def test_entries_written_elsewhere_are_read(build: Builder, tmp_path: Path) -> None:
    """Entries as maddy's `hash` command or another tool would put them in the table."""
    auth = await build.named(sql_block())
    salt = b"0123456789abcdef"
    digest = hash_secret_raw(b"pw1", salt, 2, 1024, 1, 64, Type.ID)
    argon = hashing.format_argon2(2, 1024, 1, salt, digest)
    crypt = "bcrypt:" + bcrypt.hashpw(b"pw2", bcrypt.gensalt(4, prefix=b"2b")).decode()
    db = sqlite3.connect(tmp_path / "data" / "credentials.db")
    with db:
        db.executemany(
            "INSERT INTO passwords VALUES (?, ?)",
            [
                ("a", argon),
                ("b", crypt),
                ("c", "sha256:U0FMVA==:8PDRAgaUqaLSk34WpYniXjaBgGM93Lc6iF4pw2slthw="),
                ("d", "no-tag-at-all"),
            ],
        )
    db.close()
    await auth.auth_plain("a", "pw1")
    await auth.auth_plain("B", "pw2")
    for user in ("c", "d"):  # unusable entries fail, they do not crash or defer
        with pytest.raises(InvalidCredentials):
            await auth.auth_plain(user, "password")


# -- table.file, inline forms, configuration -------------------------------------------------


async def test_file_table_is_read_only(build: Builder, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    write_file_table(
        passwd,
        {
            "alice@example.org": hashing.hash_password("wonderland", "bcrypt", FAST),
            "bob": hashing.hash_password("builder", "argon2"),
        },
    )
    auth = await build.named(
        f"auth.pass_table files {{\n    table file {passwd}\n}}\n", name="files"
    )
    await auth.auth_plain("Alice@example.org", "wonderland")
    await auth.auth_plain("bob", "builder")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("bob", "wonderland")
    message = "table is not mutable, no management functionality available"
    with pytest.raises(UserDBError, match=message):
        await auth.list_users()
    with pytest.raises(UserDBError, match=message):
        await auth.create_user("carol", "pw")
    with pytest.raises(UserDBError, match=message):
        await auth.set_user_password("bob", "pw")
    with pytest.raises(UserDBError, match=message):
        await auth.delete_user("bob")


async def test_inline_forms(build: Builder, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    write_file_table(passwd, {"u": hashing.hash_password("p", "bcrypt", FAST)})
    auth = await build.inline(f"auth pass_table file {passwd}\n")
    assert isinstance(auth, PassTable)
    await auth.auth_plain("U", "p")

    db = tmp_path / "inline.db"
    auth = await build.inline(
        f"auth pass_table sql_table {{\n driver sqlite3\n dsn {db}\n table_name t\n}}\n"
    )
    await auth.create_user("v", "q")
    await auth.auth_plain("v", "q")


async def test_sql_query_without_update_queries_is_not_mutable(
    build: Builder, tmp_path: Path
) -> None:
    db = tmp_path / "q.db"
    text = (
        "auth.pass_table q {\n  table sql_query {\n    driver sqlite3\n"
        f"    dsn {db}\n"
        '    init "CREATE TABLE IF NOT EXISTS u (k TEXT, v TEXT)"\n'
        '    lookup "SELECT v FROM u WHERE k = $1"\n  }\n}\n'
    )
    auth = await build.named(text, name="q")
    with pytest.raises(UserDBError, match="not mutable"):
        await auth.create_user("x", "y")
    with pytest.raises(UserDBError, match="not mutable"):
        await auth.list_users()


def test_configuration_errors(tmp_path: Path) -> None:
    def error(text: str, name: str = "a") -> str:
        container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
        container.parse_globals()
        with pytest.raises(ConfigError) as info:
            container.instance(name, Node("test", [name]), PasswordAuth)
        return str(info.value)

    assert error("auth.pass_table a {\n}\n") == "t.conf:1: missing required directive: table"
    assert "unexpected directive: hash" in error(
        "auth.pass_table a {\n table identity\n hash bcrypt\n}\n"
    )
    assert "unknown module: nosuch" in error("auth.pass_table a {\n table nosuch\n}\n")


# -- failures of the table: 454, not 535 --------------------------------------------------


async def test_locked_database_is_a_temporary_failure(build: Builder, tmp_path: Path) -> None:
    auth = await build.named(sql_block("file:credentials.db?_busy_timeout=50"))
    await auth.create_user("alice", "pw")
    other = sqlite3.connect(tmp_path / "data" / "credentials.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(TemporaryAuthFailure):
            await auth.auth_plain("alice", "pw")
        with pytest.raises(TemporaryAuthFailure):
            await auth.auth_plain("alice", "wrong")
        other.execute("ROLLBACK")
        await auth.auth_plain("alice", "pw")
        other.execute("DROP TABLE passwords")  # a broken database, not a wrong password
        with pytest.raises(TemporaryAuthFailure):
            await auth.auth_plain("alice", "pw")
        with pytest.raises(UserDBError):
            await auth.create_user("bob", "pw")
    finally:
        other.close()


# -- timing --------------------------------------------------------------------------------


async def _duration(auth: PassTable, user: str, password: str) -> float:
    start = time.perf_counter()
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain(user, password)
    return time.perf_counter() - start


async def test_unknown_user_takes_as_long_as_wrong_password(build: Builder) -> None:
    auth = await build.named(sql_block())
    await auth.create_user("alice", "right")  # bcrypt cost 10, tens of milliseconds
    await _duration(auth, "nobody", "x")  # the first unknown user also builds the dummy
    wrong, unknown = [], []
    for _ in range(5):
        wrong.append(await _duration(auth, "alice", "wrong"))
        unknown.append(await _duration(auth, "nobody", "wrong"))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2.0, (wrong, unknown)


async def test_dummy_follows_the_cost_of_real_entries(
    build: Builder, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = await build.named(sql_block())
    await auth.create_user("alice", "pw", scheme="argon2")
    seen: list[str] = []
    real_verify = hashing.verify_password

    def spy(password: str, stored: str) -> bool:
        seen.append(stored)
        return real_verify(password, stored)

    monkeypatch.setattr(hashing, "verify_password", spy)
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("nobody", "pw")  # nothing seen yet: the bcrypt default
    assert hashing.cost_class(seen[-1]) == hashing.DEFAULT_COST_CLASS
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice", "wrong")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("nobody", "pw")
    assert hashing.cost_class(seen[-1]) == "argon2:2:1024:1"
    assert seen[-1] != await auth.lookup("alice")  # a dummy, not alice's entry
    assert len(seen) == 3  # one verification per attempt


async def test_hashing_does_not_block_the_event_loop(build: Builder) -> None:
    auth = await build.named(sql_block())
    await auth.create_user("alice", "pw")  # bcrypt cost 10
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await auth.auth_plain("alice", "pw")
    done.set()
    await task
    assert ticks >= 5
