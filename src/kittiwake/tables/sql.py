"""`table.sql_query` and `table.sql_table`: tables kept in a SQL database.

Strategy: the database sits behind a small driver class (`SQLDriver`) that
owns one connection and offers async `execute`/`fetch`; today the only one is
`SQLiteDriver`, which runs every call on its own single worker thread, so the
event loop never waits for the disk and the `sqlite3` connection is only
ever used from the thread that opened it. A PostgreSQL driver can be added
behind the same seam later.

Queries are written for maddy, that is for Go's database/sql with the
go-sqlite3 or lib/pq drivers, with placeholders `$1`/`$2`, `?`, or
`:key`/`:value` (named_args). They are rewritten once, at configuration
time, into the driver's numbered placeholders (1 = key, 2 = value), so a
query that refers to an argument it does not get is a configuration error
instead of a failure at the first lookup.

The connection is opened, the `init` queries run and every query is checked
by the database in `start()`; `configure()` only validates the text.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import decimal
import functools
import math
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.config.registry import register
from kittiwake.errors import KittiwakeError
from kittiwake.module import Module

T = TypeVar("T")
Row = tuple[object, ...]


class SQLTableError(KittiwakeError):
    """A lookup or update that the database refused or could not answer."""


class NotMutableError(SQLTableError):
    """The table was not given the query an update needs (add/set/list/del)."""


# -- placeholders -------------------------------------------------------------------

#: The arguments each kind of query gets, in positional order.
KEY_ONLY = ("key",)
KEY_VALUE = ("key", "value")
NO_ARGS: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Param:
    start: int
    end: int
    kind: str  # "anon" (bare ?), "number" (?3, $3), "name" (:key, @key, $key)
    text: str  # the placeholder as written
    name: str = ""  # without its prefix, for "name"; the digits, for "number"


def _is_ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$" or not ch.isascii()


def find_placeholders(sql: str, *, bracket_identifiers: bool = True) -> list[_Param]:
    """Every parameter placeholder in `sql`, outside literals and comments.

    Follows SQLite's tokenizer closely enough: quoted strings and
    identifiers (`'..'`, `".."`, `` `..` `` and, in SQLite, `[..]`),
    comments, and words (so the `$` inside an identifier such as `a$1` is
    not a placeholder).
    """
    params: list[_Param] = []
    i, n = 0, len(sql)
    closers = {"'": "'", '"': '"', "`": "`"}
    if bracket_identifiers:
        closers["["] = "]"
    while i < n:
        c = sql[i]
        if c in closers:
            close = closers[c]
            i += 1
            while i < n:
                if sql[i] == close:
                    # A doubled quote is an escaped quote, not the end.
                    if close != "]" and i + 1 < n and sql[i + 1] == close:
                        i += 2
                        continue
                    break
                i += 1
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c == "?":
            j = i + 1
            while j < n and sql[j].isascii() and sql[j].isdigit():
                j += 1
            digits = sql[i + 1 : j]
            params.append(_Param(i, j, "number" if digits else "anon", sql[i:j], digits))
            i = j
        elif c in ":@$":
            j = i + 1
            while j < n and _is_ident_char(sql[j]):
                j += 1
            name = sql[i + 1 : j]
            if not name:
                i += 2 if sql.startswith("::", i) else 1  # e.g. a PostgreSQL cast
                continue
            kind = "number" if name.isascii() and name.isdigit() else "name"
            params.append(_Param(i, j, kind, sql[i:j], name))
            i = j
        elif _is_ident_char(c):
            # A word or a number literal: skip it whole.
            j = i + 1
            while j < n and (_is_ident_char(sql[j]) or (c.isdigit() and sql[j] == ".")):
                j += 1
            i = j
        else:
            i += 1
    return params


@dataclass(frozen=True, slots=True)
class Query:
    """A query rewritten for the driver, and how many arguments it binds."""

    text: str
    nargs: int  # bind (key, value)[:nargs]


def compile_query(
    sql: str,
    args: tuple[str, ...],
    mode: str,
    placeholder: Callable[[int], str],
    *,
    what: str,
    bracket_identifiers: bool = True,
) -> Query:
    """Rewrite `sql`'s placeholders as `placeholder(1)` (key) / `placeholder(2)` (value).

    `mode` is "named" (`:key`, `@key`, `$key`, `:value`...), "positional"
    (the SQLite numbering: `?` takes the next number, `?N`/`$N` number N, and
    any other named placeholder takes the next number at its first use, as
    go-sqlite3 binds them), or "auto" (named if the query uses a name,
    positional otherwise). Raises ValueError naming the problem.
    """
    params = find_placeholders(sql, bracket_identifiers=bracket_identifiers)
    if mode == "auto":
        mode = "named" if any(p.kind == "name" for p in params) else "positional"
    gets = _describe_args(args)
    numbers: list[int] = []
    if mode == "named":
        for p in params:
            if p.kind != "name":
                raise ValueError(
                    f"{what} query: {p.text} is a positional placeholder, but named_args "
                    f"is on; use {_named_list(args)}"
                )
            if p.name not in args:
                raise ValueError(f"{what} query: unknown parameter {p.text}; it gets {gets}")
            numbers.append(args.index(p.name) + 1)
    else:
        highest = 0
        by_name: dict[str, int] = {}
        for p in params:
            if p.kind == "anon":
                number = highest + 1
            elif p.kind == "number":
                number = int(p.name)
            else:
                number = by_name.setdefault(p.text, highest + 1)
            highest = max(highest, number)
            if not 1 <= number <= len(args):
                raise ValueError(
                    f"{what} query: {p.text} refers to argument {number}, but it gets {gets}"
                )
            numbers.append(number)
    out: list[str] = []
    pos = 0
    for p, number in zip(params, numbers, strict=True):
        out.append(sql[pos : p.start])
        out.append(placeholder(number))
        pos = p.end
    out.append(sql[pos:])
    return Query("".join(out), max(numbers, default=0))


def _describe_args(args: tuple[str, ...]) -> str:
    if not args:
        return "no arguments"
    if args == KEY_ONLY:
        return "only the key ($1 or :key)"
    return "the key ($1 or :key) and the value ($2 or :value)"


def _named_list(args: tuple[str, ...]) -> str:
    return " and ".join(f":{a}" for a in args) or "no placeholders"


# -- drivers ------------------------------------------------------------------------


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
    if not passthrough and not (is_uri and memory):
        target.database = ":memory:" if memory else path
        return target
    target.uri = True
    quoted = ":memory:" if memory else urllib.parse.quote(path, safe="/")
    target.database = f"file:{quoted}" + (
        "?" + urllib.parse.urlencode(passthrough) if passthrough else ""
    )
    return target


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


# -- values -------------------------------------------------------------------------


def _go_float(v: float) -> str:
    """A float as Go's database/sql turns it into a string ('g', shortest)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1, v) < 0 else "0"
    sign, digit_tuple, exp = decimal.Decimal(repr(v)).normalize().as_tuple()
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exp  # digits before the decimal point
    x = point - 1
    prefix = "-" if sign else ""
    if x < -4 or x >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise SQLTableError("the query returned NULL")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _single_column(rows: list[Row], what: str) -> list[str]:
    result = []
    for row in rows:
        if len(row) != 1:
            raise SQLTableError(f"the {what} query returns {len(row)} columns, expected 1")
        result.append(_text(row[0]))
    return result


# -- the modules ----------------------------------------------------------------------

_DRIVERS = ("sqlite3", "sqlite", "postgres")


@dataclass(frozen=True, slots=True)
class _Source:
    """A query as configured, and where, for messages positioned at it."""

    text: str
    node: Node
    args: tuple[str, ...]


class _SQLBase(Module):
    """What sql_query and sql_table share: the driver and the operations."""

    def _setup(
        self,
        cfg: Directives,
        driver_node: Node,
        driver_name: str,
        dsn: str,
        mode: str,
        init: list[str],
        sources: Mapping[str, _Source | None],
    ) -> None:
        self._block = cfg.node
        if driver_name == "postgres":
            raise driver_node.error("driver postgres is not available yet")
        if driver_name not in ("sqlite3", "sqlite"):
            raise driver_node.error(
                f"unknown driver {driver_name!r} (supported: {', '.join(_DRIVERS)})"
            )
        try:
            target = parse_sqlite_dsn(dsn, self.container.state_path)
        except ValueError as exc:
            raise cfg.node.error(f"{self.module_name}: {exc}") from None
        self.driver: SQLDriver = SQLiteDriver(target)
        self._init = init
        self._queries: dict[str, Query | None] = {}
        self._sources = sources
        for what, source in sources.items():
            if source is None:
                self._queries[what] = None
                continue
            try:
                self._queries[what] = compile_query(
                    source.text,
                    source.args,
                    mode,
                    self.driver.placeholder,
                    what=what,
                    bracket_identifiers=self.driver.bracket_identifiers,
                )
            except ValueError as exc:
                raise source.node.error(f"{self.module_name}: {exc}") from None

    async def start(self) -> None:
        try:
            await self.driver.open()
        except SQLTableError as exc:
            raise self._block.error(
                f"{self.module_name}: cannot open the database: {exc}"
            ) from None
        try:
            for text in self._init:
                try:
                    await self.driver.script(text)
                except SQLTableError as exc:
                    raise self._block.error(
                        f"{self.module_name}: init query failed: {exc}"
                    ) from None
            for what, query in self._queries.items():
                source = self._sources[what]
                if query is None or source is None:
                    continue
                try:
                    await self.driver.check(query.text, query.nargs)
                except SQLTableError as exc:
                    raise source.node.error(
                        f"{self.module_name}: invalid {what} query: {exc}"
                    ) from None
        except BaseException:
            await self.driver.close()
            raise

    async def stop(self) -> None:
        await self.driver.close()

    def _query(self, what: str) -> Query:
        query = self._queries.get(what)
        if query is None:
            raise NotMutableError(f"{self.module_name}: table is not mutable (no '{what}' query)")
        return query

    async def _fetch(
        self, what: str, args: tuple[str, ...], *, limit: int | None = None
    ) -> list[str]:
        query = self._query(what)
        try:
            rows = await self.driver.fetch(query.text, args[: query.nargs], limit=limit)
            return _single_column(rows, what)
        except SQLTableError as exc:
            key = f" {args[0]}" if args else ""
            raise SQLTableError(f"{self.module_name}: {what}{key}: {exc}") from exc

    async def _execute(self, what: str, args: tuple[str, ...]) -> None:
        query = self._query(what)
        await self.driver.execute(query.text, args[: query.nargs])

    async def lookup(self, key: str) -> str | None:
        values = await self._fetch("lookup", (key,), limit=1)
        return values[0] if values else None

    async def lookup_multi(self, key: str) -> list[str]:
        return await self._fetch("lookup", (key,))

    async def keys(self) -> list[str]:
        return await self._fetch("list", ())

    async def set_key(self, key: str, value: str) -> None:
        """Add the key, or replace its value if adding fails (it exists)."""
        self._query("set")
        self._query("add")
        try:
            await self._execute("add", (key, value))
        except SQLTableError as add_error:
            try:
                await self._execute("set", (key, value))
            except SQLTableError as exc:
                raise SQLTableError(
                    f"{self.module_name}: set {key}: add failed ({add_error}), "
                    f"then set failed ({exc})"
                ) from exc

    async def remove_key(self, key: str) -> None:
        try:
            await self._execute("del", (key,))
        except NotMutableError:
            raise
        except SQLTableError as exc:
            raise SQLTableError(f"{self.module_name}: del {key}: {exc}") from exc


def _driver(cfg: Directives) -> tuple[Node, str]:
    node = cfg.get("driver")
    if node is None:
        raise cfg.node.error("missing required directive: driver")
    if node.children is not None or len(node.args) != 1:
        raise node.error("driver: expected exactly one driver name")
    return node, node.args[0]


def _query_source(cfg: Directives, name: str, args: tuple[str, ...]) -> _Source | None:
    node = cfg.get(name)
    if node is None:
        return None
    if node.children is not None:
        raise node.error(f"{name}: unexpected block")
    if len(node.args) != 1:
        raise node.error(f"{name}: expected exactly one query (quote it)")
    return _Source(node.args[0], node, args)


@register("table.sql_query")
class SQLQueryTable(_SQLBase):
    """`sql_query { driver; dsn; lookup; init; named_args; add; list; set; del }`."""

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(f"{self.module_name} takes no arguments")
        driver_node, driver = _driver(cfg)
        dsn = " ".join(cfg.string_list("dsn"))
        init = cfg.string_list("init", [])
        named: bool | None = cfg.boolean("named_args") if cfg.has("named_args") else None
        lookup = _query_source(cfg, "lookup", KEY_ONLY)
        if lookup is None:
            raise cfg.node.error("missing required directive: lookup")
        sources = {
            "lookup": lookup,
            "add": _query_source(cfg, "add", KEY_VALUE),
            "list": _query_source(cfg, "list", NO_ARGS),
            "set": _query_source(cfg, "set", KEY_VALUE),
            "del": _query_source(cfg, "del", KEY_ONLY),
        }
        cfg.finish()
        if named and driver == "postgres":
            raise cfg.node.error("PostgreSQL driver does not support named_args")
        # maddy's code defaults to positional, its documentation to named;
        # "auto" gives every query the style it is written in.
        mode = "auto" if named is None else ("named" if named else "positional")
        self._setup(cfg, driver_node, driver, dsn, mode, init, sources)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?\Z")


@register("table.sql_table")
class SQLTable(_SQLBase):
    """`sql_table { driver; dsn; table_name; key_column; value_column }`.

    A key-value table whose schema and queries are generated, as used by
    the default credentials store.
    """

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(f"{self.module_name} takes no arguments")
        driver_node, driver = _driver(cfg)
        dsn = " ".join(cfg.string_list("dsn"))
        names: dict[str, str] = {}
        for directive, default in (
            ("table_name", None),
            ("key_column", "key"),
            ("value_column", "value"),
        ):
            node = cfg.get(directive)
            if node is None:
                if default is None:
                    raise cfg.node.error(f"missing required directive: {directive}")
                names[directive] = default
                continue
            if node.children is not None or len(node.args) != 1:
                raise node.error(f"{directive}: expected exactly one name")
            # The names are pasted into SQL text: only plain identifiers.
            if not _IDENTIFIER.match(node.args[0]):
                raise node.error(f"{directive}: not a plain SQL identifier: {node.args[0]!r}")
            names[directive] = node.args[0]
        cfg.finish()
        t, k, v = names["table_name"], names["key_column"], names["value_column"]
        block = cfg.node

        def source(text: str, args: tuple[str, ...]) -> _Source:
            return _Source(text, block, args)

        sources = {
            "lookup": source(f"SELECT {v} FROM {t} WHERE {k} = $1", KEY_ONLY),
            "add": source(f"INSERT INTO {t}({k}, {v}) VALUES($1, $2)", KEY_VALUE),
            "list": source(f"SELECT {k} FROM {t}", NO_ARGS),
            "set": source(f"UPDATE {t} SET {v} = $2 WHERE {k} = $1", KEY_VALUE),
            "del": source(f"DELETE FROM {t} WHERE {k} = $1", KEY_ONLY),
        }
        init = [
            f"CREATE TABLE IF NOT EXISTS {t} ({k} TEXT PRIMARY KEY NOT NULL, {v} TEXT NOT NULL)"
        ]
        self._setup(cfg, driver_node, driver, dsn, "positional", init, sources)
