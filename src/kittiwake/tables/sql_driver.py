"""The database seam of the SQL tables: drivers and their connection strings.

Strategy: a driver (`SQLDriver`) owns one connection and offers async
`execute`/`fetch`, so `tables/sql.py` never touches a database library
itself. Today the only driver is `SQLiteDriver`, which runs every call on
its own single worker thread: the event loop never waits for the disk, and
the `sqlite3` connection is only ever used from the thread that opened it.
A PostgreSQL driver goes here later, behind the same abstract class.

Connection strings are written for maddy, i.e. go-sqlite3 DSNs
(`file:c.db?_journal_mode=WAL&_busy_timeout=10000`); `parse_sqlite_dsn`
turns one into `sqlite3.connect` arguments plus PRAGMAs, refusing what it
does not understand at configuration time.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from kittiwake.errors import KittiwakeError

T = TypeVar("T")
#: One result row, as the driver returns it (values not yet turned to text).
Row = tuple[object, ...]


class SQLTableError(KittiwakeError):
    """A lookup or update that the database refused or could not answer."""


class SQLDriver(abc.ABC):
    """One database connection, used only through coroutines.

    Implementations raise `SQLTableError` for anything the database reports.
    """

    #: Whether `[name]` quotes an identifier (SQLite) for placeholder scanning.
    bracket_identifiers: ClassVar[bool] = False

    @abc.abstractmethod
    def placeholder(self, number: int) -> str:
        """The driver's spelling of the `number`th argument (1-based)."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def execute(self, query: str, args: Sequence[str] = ()) -> None: ...

    @abc.abstractmethod
    async def fetch(
        self, query: str, args: Sequence[str] = (), *, limit: int | None = None
    ) -> list[Row]: ...

    @abc.abstractmethod
    async def script(self, text: str) -> None:
        """Run `init` text, which may hold several statements."""

    @abc.abstractmethod
    async def check(self, query: str, nargs: int) -> None:
        """Have the database compile `query` without running it."""


@dataclass
class SQLiteTarget:
    """Where and how to open a SQLite database, from a go-sqlite3 DSN."""

    database: str
    #: The database file ("" in memory), created 0600 when it does not exist.
    path: str = ""
    uri: bool = False
    timeout: float = 5.0  # go-sqlite3's default busy timeout
    pragmas: list[str] = field(default_factory=list)


# go-sqlite3 DSN options that are PRAGMAs (both spellings it accepts).
_MATTN_PRAGMAS = {
    "_auto_vacuum": "auto_vacuum",
    "_vacuum": "auto_vacuum",
    "_case_sensitive_like": "case_sensitive_like",
    "_cslike": "case_sensitive_like",
    "_defer_foreign_keys": "defer_foreign_keys",
    "_defer_fk": "defer_foreign_keys",
    "_foreign_keys": "foreign_keys",
    "_fk": "foreign_keys",
    "_ignore_check_constraints": "ignore_check_constraints",
    "_journal_mode": "journal_mode",
    "_journal": "journal_mode",
    "_locking_mode": "locking_mode",
    "_locking": "locking_mode",
    "_query_only": "query_only",
    "_recursive_triggers": "recursive_triggers",
    "_rt": "recursive_triggers",
    "_secure_delete": "secure_delete",
    "_synchronous": "synchronous",
    "_sync": "synchronous",
    "_cache_size": "cache_size",
}
# Options that only matter to go-sqlite3 itself: accepted, nothing to do.
_MATTN_IGNORED = {"_txlock", "_mutex", "_loc"}
_PRAGMA_VALUE = re.compile(r"-?[A-Za-z0-9_]+\Z")


def parse_sqlite_dsn(dsn: str, resolve: Callable[[str], str]) -> SQLiteTarget:
    """Turn a go-sqlite3 DSN into `sqlite3.connect` arguments.

    A relative path goes through `resolve` (the state directory). go-sqlite3
    options (`_journal_mode=WAL`, `_busy_timeout=10000`, ...) become PRAGMAs
    or the timeout; other query parameters are SQLite URI parameters
    (`mode=ro`, `cache=shared`). Raises ValueError for an unknown option.
    """
    if dsn in ("", ":memory:"):
        return SQLiteTarget(":memory:")
    is_uri = dsn.startswith("file:")
    body = dsn[len("file:") :] if is_uri else dsn
    path, _, query = body.partition("?")
    if is_uri:
        path = urllib.parse.unquote(path)
        if path.startswith("//"):
            # file://host/path: only an empty host or localhost is local.
            host, _, rest = path[2:].partition("/")
            if host not in ("", "localhost"):
                raise ValueError(f"remote file URI in dsn: {dsn}")
            path = "/" + rest
    target = SQLiteTarget("")
    passthrough: list[tuple[str, str]] = []
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name in ("_busy_timeout", "_timeout"):
            if not value.isdigit():
                raise ValueError(f"dsn: {name} wants milliseconds, got {value!r}")
            target.timeout = int(value) / 1000
        elif name in _MATTN_PRAGMAS:
            if not _PRAGMA_VALUE.match(value):
                raise ValueError(f"dsn: invalid value for {name}: {value!r}")
            target.pragmas.append(f"PRAGMA {_MATTN_PRAGMAS[name]} = {value}")
        elif name in _MATTN_IGNORED:
            continue
        elif name.startswith("_"):
            raise ValueError(f"dsn: unsupported go-sqlite3 option {name}")
        else:
            passthrough.append((name, value))
    memory = path in ("", ":memory:")
    if not memory:
        path = resolve(path)
        target.path = path
    if not passthrough and not (is_uri and memory):
        target.database = ":memory:" if memory else path
        return target
    target.uri = True
    quoted = ":memory:" if memory else urllib.parse.quote(path, safe="/")
    target.database = f"file:{quoted}" + (
        "?" + urllib.parse.urlencode(passthrough) if passthrough else ""
    )
    return target


def _create_private(path: str) -> None:
    """Create a missing database file with mode 0600, whatever the umask.

    A database kittiwake creates is its own state and may hold secrets
    (`auth.pass_table`'s password hashes): nobody else needs to read it.
    SQLite gives its journal and WAL files the mode of the database file.
    An existing file is left as the operator made it.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # a read-only place or a missing folder: sqlite3 says why
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode passed through the umask
    finally:
        os.close(fd)


class SQLiteDriver(SQLDriver):
    """SQLite through the stdlib module, on one dedicated worker thread."""

    bracket_identifiers = True

    def __init__(self, target: SQLiteTarget) -> None:
        self.target = target
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def placeholder(self, number: int) -> str:
        return f"?{number}"

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            raise SQLTableError("the database is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise SQLTableError(str(exc)) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SQLTableError("the database is closed")
        return self._conn

    async def open(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kittiwake-sqlite"
        )
        await self._call(self._open_sync)

    def _open_sync(self) -> None:
        t = self.target
        if t.path:
            _create_private(t.path)
        # isolation_level=None: every statement commits on its own, as with
        # Go's database/sql; there is no transaction to forget to commit.
        conn = sqlite3.connect(t.database, timeout=t.timeout, uri=t.uri, isolation_level=None)
        try:
            for pragma in t.pragmas:
                conn.execute(pragma).fetchall()
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        pool, conn = self._pool, self._conn
        if pool is None:
            return
        try:
            if conn is not None:
                await self._call(self._close_sync)
        finally:
            self._pool = None
            pool.shutdown(wait=False)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def execute(self, query: str, args: Sequence[str] = ()) -> None:
        await self._call(self._execute_sync, query, tuple(args))

    def _execute_sync(self, query: str, args: tuple[str, ...]) -> None:
        self._connection().execute(query, args).close()

    async def fetch(
        self, query: str, args: Sequence[str] = (), *, limit: int | None = None
    ) -> list[Row]:
        return await self._call(self._fetch_sync, query, tuple(args), limit)

    def _fetch_sync(self, query: str, args: tuple[str, ...], limit: int | None) -> list[Row]:
        cur = self._connection().execute(query, args)
        try:
            rows = cur.fetchall() if limit is None else cur.fetchmany(limit)
        finally:
            cur.close()
        return [tuple(r) for r in rows]

    async def script(self, text: str) -> None:
        await self._call(self._script_sync, text)

    def _script_sync(self, text: str) -> None:
        self._connection().executescript(text).close()

    async def check(self, query: str, nargs: int) -> None:
        await self._call(self._check_sync, query, nargs)

    def _check_sync(self, query: str, nargs: int) -> None:
        # EXPLAIN compiles the statement (syntax, tables, columns) and
        # returns its program instead of running it.
        self._connection().execute("EXPLAIN " + query, (None,) * nargs).close()


__all__ = [
    "Row",
    "SQLDriver",
    "SQLTableError",
    "SQLiteDriver",
    "SQLiteTarget",
    "parse_sqlite_dsn",
]
