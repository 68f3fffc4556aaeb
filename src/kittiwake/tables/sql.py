"""`table.sql_query` and `table.sql_table`: tables kept in a SQL database.

Strategy: the database sits behind a driver (`tables/sql_driver.py`) that
owns one connection and offers async `execute`/`fetch`; this file holds what
is the same whatever the database: the two modules, query rewriting and how
result values become text.

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

import decimal
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kittiwake.config import redact
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.module import Module, register
from kittiwake.tables.sql_driver import (
    Row,
    SQLDriver,
    SQLiteDriver,
    SQLTableError,
    parse_sqlite_dsn,
)


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
        cfg.hide("dsn", lambda args: [redact.dsn_argument(a) for a in args])
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
        cfg.hide("dsn", lambda args: [redact.dsn_argument(a) for a in args])
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


__all__ = [
    "KEY_ONLY",
    "KEY_VALUE",
    "NO_ARGS",
    "NotMutableError",
    "Query",
    "SQLQueryTable",
    "SQLTable",
    "SQLTableError",
    "compile_query",
    "find_placeholders",
]
