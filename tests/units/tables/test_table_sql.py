"""table.sql_query and table.sql_table over real SQLite databases."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from table_harness import Harness

from kittiwake.tables.base import MutableTable
from kittiwake.tables.sql import (
    KEY_ONLY,
    KEY_VALUE,
    NO_ARGS,
    NotMutableError,
    SQLTableError,
    _go_float,
    compile_query,
    find_placeholders,
    parse_sqlite_dsn,
)

INIT = (
    '  init "CREATE TABLE IF NOT EXISTS aliases (k TEXT, v TEXT)" \\\n'
    "       \"INSERT INTO aliases VALUES ('a', 'x'), ('a', 'y'), ('n', NULL)\"\n"
)


def sql_query(db: Path, lookup: str, extra: str = "", init: str = INIT) -> str:
    return f'sql_query {{\n  driver sqlite3\n  dsn {db}\n{init}  lookup "{lookup}"\n{extra}}}'


async def test_lookup_first_row_and_all_rows(kw: Harness, tmp_path: Path) -> None:
    t = await kw.table(sql_query(tmp_path / "t.db", "SELECT v FROM aliases WHERE k = $1"))
    assert await t.lookup("a") == "x"
    assert await t.lookup_multi("a") == ["x", "y"]
    assert await t.lookup("b") is None
    assert await t.lookup_multi("b") == []


async def test_null_and_extra_columns_are_errors(kw: Harness, tmp_path: Path) -> None:
    t = await kw.table(sql_query(tmp_path / "t.db", "SELECT v FROM aliases WHERE k = ?"))
    with pytest.raises(SQLTableError, match="lookup n: the query returned NULL"):
        await t.lookup("n")
    t2 = await kw.table(sql_query(tmp_path / "t2.db", "SELECT v, k FROM aliases WHERE k = :key"))
    with pytest.raises(SQLTableError, match="the lookup query returns 2 columns, expected 1"):
        await t2.lookup("a")
    assert await t2.lookup("zzz") is None  # no rows: nothing to complain about


async def test_values_are_text_like_go_scans_them(kw: Harness, tmp_path: Path) -> None:
    t = await kw.table(
        sql_query(
            tmp_path / "t.db",
            "SELECT x FROM (SELECT 42 AS x UNION ALL SELECT 1.5 "
            "UNION ALL SELECT 1e21 UNION ALL SELECT X'6869') WHERE ?1 = ?1",
            init="",
        )
    )
    assert await t.lookup_multi("any") == ["42", "1.5", "1e+21", "hi"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.5, "1.5"),
        (100.0, "100"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5, "-2.5"),
        (0.0, "0"),
        (1e100, "1e+100"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_go_float_format(value: float, text: str) -> None:
    assert _go_float(value) == text


@pytest.mark.parametrize(
    "lookup",
    [
        "SELECT v FROM aliases WHERE k = $1",
        "SELECT v FROM aliases WHERE k = ?",
        "SELECT v FROM aliases WHERE k = ?1",
        "SELECT v FROM aliases WHERE k = :key",
        "SELECT v FROM aliases WHERE k = @key",
        "SELECT v FROM aliases WHERE k = $key",
        "SELECT v FROM aliases WHERE k = $1 AND k = $1",
    ],
)
async def test_placeholder_styles(kw: Harness, tmp_path: Path, lookup: str) -> None:
    t = await kw.table(sql_query(tmp_path / "t.db", lookup))
    assert await t.lookup("a") == "x"


async def test_named_args_no_binds_names_by_first_use(kw: Harness, tmp_path: Path) -> None:
    # go-sqlite3 with positional arguments numbers named placeholders in the
    # order they appear, whatever their names: so does named_args no.
    t = await kw.table(
        sql_query(
            tmp_path / "t.db", "SELECT v FROM aliases WHERE k = :whatever", "  named_args no\n"
        )
    )
    assert await t.lookup("a") == "x"


async def test_mutable_queries_value_before_key(kw: Harness, tmp_path: Path) -> None:
    extra = (
        '  add "INSERT INTO kv(v, k) VALUES(:value, :key)"\n'
        '  set "UPDATE kv SET v = :value WHERE k = :key"\n'
        '  del "DELETE FROM kv WHERE k = :key"\n'
        '  list "SELECT k FROM kv ORDER BY k"\n'
        "  named_args yes\n"
    )
    init = '  init "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"\n'
    probe = await kw.start(
        "kw_probe {\n  mutable "
        + sql_query(tmp_path / "t.db", "SELECT v FROM kv WHERE k = :key", extra, init)
        + "\n}\n"
    )
    (t,) = probe.mutable
    assert isinstance(t, MutableTable)
    await t.set_key("b", "2")
    await t.set_key("a", "1")
    await t.set_key("a", "one")  # add fails (primary key), set replaces
    assert await t.keys() == ["a", "b"]
    assert await t.lookup("a") == "one"
    await t.remove_key("a")
    assert await t.keys() == ["b"]
    assert await t.lookup("a") is None


async def test_positional_mutable_queries(kw: Harness, tmp_path: Path) -> None:
    extra = '  add "INSERT INTO kv(k, v) VALUES(?, ?)"\n  set "UPDATE kv SET v = $2 WHERE k = $1"\n'
    init = '  init "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"\n'
    t = await kw.table(sql_query(tmp_path / "t.db", "SELECT v FROM kv WHERE k = $1", extra, init))
    await t.set_key("a", "1")
    await t.set_key("a", "2")
    assert await t.lookup("a") == "2"
    with pytest.raises(NotMutableError, match=r"table is not mutable \(no 'list' query\)"):
        await t.keys()
    with pytest.raises(NotMutableError, match=r"no 'del' query"):
        await t.remove_key("a")


async def test_set_key_needs_add_and_set(kw: Harness, tmp_path: Path) -> None:
    init = '  init "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"\n'
    t = await kw.table(
        sql_query(
            tmp_path / "t.db",
            "SELECT v FROM kv WHERE k = $1",
            '  add "INSERT INTO kv VALUES($1, $2)"\n',
            init,
        )
    )
    with pytest.raises(NotMutableError, match="no 'set' query"):
        await t.set_key("a", "1")
    assert await t.lookup("a") is None  # nothing was run


def test_placeholder_errors_are_config_errors(kw: Harness, tmp_path: Path) -> None:
    def error(body: str) -> str:
        return kw.error(
            f"kw_probe {{\n table sql_query {{\n  driver sqlite3\n"
            f"  dsn {tmp_path}/t.db\n{body} }}\n}}\n"
        )

    assert error('  lookup "SELECT 1 WHERE $2 = 1"\n') == (
        "t.conf:5: table.sql_query: lookup query: $2 refers to argument 2, "
        "but it gets only the key ($1 or :key)"
    )
    assert error('  named_args yes\n  lookup "SELECT v FROM t WHERE k = ?"\n') == (
        "t.conf:6: table.sql_query: lookup query: ? is a positional placeholder, "
        "but named_args is on; use :key"
    )
    assert error('  lookup "SELECT v FROM t WHERE k = :user"\n') == (
        "t.conf:5: table.sql_query: lookup query: unknown parameter :user; "
        "it gets only the key ($1 or :key)"
    )
    assert error('  lookup "SELECT 1"\n  list "SELECT k FROM t WHERE k = ?"\n') == (
        "t.conf:6: table.sql_query: list query: ? refers to argument 1, but it gets no arguments"
    )
    assert error('  lookup "SELECT 1"\n  del "DELETE FROM t WHERE k = :key AND v = :value"\n') == (
        "t.conf:6: table.sql_query: del query: unknown parameter :value; "
        "it gets only the key ($1 or :key)"
    )


def test_configuration_errors(kw: Harness, tmp_path: Path) -> None:
    def error(body: str) -> str:
        return kw.error(f"kw_probe {{\n table sql_query {{\n{body} }}\n}}\n")

    assert error("  driver postgres\n  dsn x\n  lookup q\n") == (
        "t.conf:3: driver postgres is not available yet"
    )
    assert error("  driver postgres\n  dsn x\n  lookup q\n  named_args yes\n") == (
        "t.conf:2: PostgreSQL driver does not support named_args"
    )
    assert error("  driver mysql\n  dsn x\n  lookup q\n") == (
        "t.conf:3: unknown driver 'mysql' (supported: sqlite3, sqlite, postgres)"
    )
    assert error("  dsn x\n  lookup q\n") == "t.conf:2: missing required directive: driver"
    assert error("  driver sqlite3\n  lookup q\n") == "t.conf:2: missing required directive: dsn"
    assert error("  driver sqlite3\n  dsn x\n") == "t.conf:2: missing required directive: lookup"
    assert error("  driver sqlite3\n  dsn x\n  lookup a b\n") == (
        "t.conf:5: lookup: expected exactly one query (quote it)"
    )
    assert error("  driver sqlite3\n  dsn x?_bogus=1\n  lookup q\n") == (
        "t.conf:2: table.sql_query: dsn: unsupported go-sqlite3 option _bogus"
    )
    assert error("  driver sqlite3\n  dsn x\n  lookup q\n  query q\n") == (
        "t.conf:6: unexpected directive: query"
    )


async def test_configure_does_not_touch_the_database(kw: Harness, tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    probe = kw.configure(
        f"kw_probe {{\n table {sql_query(db, 'SELECT v FROM aliases WHERE k = ?')}\n}}\n"
    )
    assert not db.exists()
    await kw.containers[-1].start()
    assert db.exists()
    assert await probe.tables[0].lookup("a") == "x"
    await kw.stop_all()
    with pytest.raises(SQLTableError, match="not open"):
        await probe.tables[0].lookup("a")


async def test_bad_queries_are_reported_at_start(kw: Harness, tmp_path: Path) -> None:
    err = await kw.start_error(
        f"kw_probe {{\n table sql_query {{\n  driver sqlite3\n  dsn {tmp_path}/t.db\n"
        '  init "CREATE TABLE t (k, v)"\n'
        '  lookup "SELECT v FROM t WHERE k = ?"\n'
        '  list "SELEC k FROM t"\n }\n}\n'
    )
    assert err == 't.conf:7: table.sql_query: invalid list query: near "SELEC": syntax error'
    err = await kw.start_error(
        f"kw_probe {{\n table sql_query {{\n  driver sqlite3\n  dsn {tmp_path}/t2.db\n"
        '  lookup "SELECT v FROM missing WHERE k = ?"\n }\n}\n'
    )
    assert err == "t.conf:5: table.sql_query: invalid lookup query: no such table: missing"
    err = await kw.start_error(
        f"kw_probe {{\n table sql_query {{\n  driver sqlite3\n  dsn {tmp_path}/t3.db\n"
        '  init "CREATE TABLE t (k)" "CREATE TABLE t (k)"\n'
        '  lookup "SELECT 1"\n }\n}\n'
    )
    assert err == "t.conf:2: table.sql_query: init query failed: table t already exists"
    err = await kw.start_error(
        f"kw_probe {{\n table sql_query {{\n  driver sqlite3\n  dsn {tmp_path}/no/such/dir/t.db\n"
        '  lookup "SELECT 1"\n }\n}\n'
    )
    assert (
        err == "t.conf:2: table.sql_query: cannot open the database: unable to open database file"
    )


async def test_init_may_hold_several_statements(kw: Harness, tmp_path: Path) -> None:
    t = await kw.table(
        sql_query(
            tmp_path / "t.db",
            "SELECT v FROM t WHERE k = ?",
            init="  init \"CREATE TABLE t (k, v); INSERT INTO t VALUES ('a', 'b')\"\n",
        )
    )
    assert await t.lookup("a") == "b"


async def test_sql_table_lifecycle(kw: Harness, tmp_path: Path) -> None:
    conf = (
        "table.sql_table creds {\n  driver sqlite3\n  dsn credentials.db\n"
        "  table_name passwords\n}\n"
        "kw_probe {\n  mutable &creds\n}\n"
    )
    probe = await kw.start(conf)
    (t,) = probe.mutable
    assert await t.keys() == []
    await t.set_key("alice@example.org", "hash1")
    await t.set_key("bob@example.org", "hash2")
    await t.set_key("alice@example.org", "hash3")
    assert sorted(await t.keys()) == ["alice@example.org", "bob@example.org"]
    assert await t.lookup("alice@example.org") == "hash3"
    assert await t.lookup_multi("bob@example.org") == ["hash2"]
    await t.remove_key("bob@example.org")
    await t.remove_key("nobody")  # deleting a missing key is not an error
    assert await t.keys() == ["alice@example.org"]
    await kw.stop_all()

    # A relative dsn lives in the state directory, with the generated schema.
    db = tmp_path / "kittiwake-data" / "credentials.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, value FROM passwords").fetchall()
        schema = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'passwords'").fetchone()
    conn.close()
    assert rows == [("alice@example.org", "hash3")]
    assert "key TEXT PRIMARY KEY NOT NULL" in schema[0]
    assert "value TEXT NOT NULL" in schema[0]

    probe = await kw.start(conf)  # reopening an existing database
    assert await probe.mutable[0].lookup("alice@example.org") == "hash3"


async def test_sql_table_custom_columns(kw: Harness, tmp_path: Path) -> None:
    t = await kw.table(
        f"sql_table {{\n  driver sqlite\n  dsn {tmp_path}/a.db\n  table_name aliases\n"
        "  key_column address\n  value_column target\n}"
    )
    await t.set_key("a@x", "b@y")
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT address, target FROM aliases").fetchall() == [("a@x", "b@y")]
    conn.close()


def test_sql_table_errors(kw: Harness, tmp_path: Path) -> None:
    def error(body: str) -> str:
        return kw.error(
            f"kw_probe {{\n table sql_table {{\n  driver sqlite3\n  dsn x\n{body} }}\n}}\n"
        )

    assert error("") == "t.conf:2: missing required directive: table_name"
    assert error('  table_name "passwords; DROP TABLE x"\n') == (
        "t.conf:5: table_name: not a plain SQL identifier: 'passwords; DROP TABLE x'"
    )
    assert error("  table_name main.passwords\n  key_column 1k\n") == (
        "t.conf:6: key_column: not a plain SQL identifier: '1k'"
    )
    assert (
        error('  table_name "a b"\n') == "t.conf:5: table_name: not a plain SQL identifier: 'a b'"
    )
    assert (
        error("  table_name t\n  key_column a b\n")
        == "t.conf:6: key_column: expected exactly one name"
    )
    assert error("  table_name t\n  init x\n") == "t.conf:6: unexpected directive: init"


async def test_go_sqlite3_dsn_options(kw: Harness, tmp_path: Path) -> None:
    t = await kw.table(
        sql_query(
            tmp_path / "t.db?_journal_mode=WAL&_busy_timeout=2500&_fk=1&cache=private",
            "SELECT journal_mode || ',' || (SELECT foreign_keys FROM pragma_foreign_keys) "
            "FROM pragma_journal_mode WHERE ?1 = ?1",
            init="",
        )
    )
    assert await t.lookup("x") == "wal,1"
    assert (tmp_path / "t.db").exists()


def test_dsn_parsing() -> None:
    def resolve(p: str) -> str:
        return p if p.startswith("/") else "/state/" + p

    assert parse_sqlite_dsn("credentials.db", resolve).database == "/state/credentials.db"
    assert parse_sqlite_dsn("/abs/c.db", resolve).database == "/abs/c.db"
    assert parse_sqlite_dsn(":memory:", resolve).database == ":memory:"
    t = parse_sqlite_dsn("file:c.db?mode=ro&_timeout=100", resolve)
    assert (t.database, t.uri, t.timeout) == ("file:/state/c.db?mode=ro", True, 0.1)
    t = parse_sqlite_dsn("file:///abs/my%20db.db", resolve)
    assert (t.database, t.uri) == ("/abs/my db.db", False)
    t = parse_sqlite_dsn("a b.db?_sync=NORMAL&_txlock=immediate", resolve)
    assert (t.database, t.pragmas) == ("/state/a b.db", ["PRAGMA synchronous = NORMAL"])
    with pytest.raises(ValueError, match="invalid value"):
        parse_sqlite_dsn("x.db?_journal=WAL;DROP", resolve)
    with pytest.raises(ValueError, match="remote"):
        parse_sqlite_dsn("file://host/x.db", resolve)


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("SELECT ? , ?2, :key, @key, $key, $1", ["?", "?2", ":key", "@key", "$key", "$1"]),
        ("SELECT '?', \"$1\", `:key`, [@key], 'it''s ?' WHERE k = ?", ["?"]),
        ("SELECT 1 -- ? comment\n, 2 /* :key */ WHERE k = :key", [":key"]),
        ("SELECT a$1, x::text, 1.5e3 FROM t WHERE k = $1", ["$1"]),
        ("SELECT ':' || k, 'a' || :value FROM t", [":value"]),
    ],
)
def test_find_placeholders(sql: str, found: list[str]) -> None:
    assert [p.text for p in find_placeholders(sql)] == found


def test_compile_query_numbering() -> None:
    def q(sql: str, args: tuple[str, ...] = KEY_VALUE, mode: str = "auto") -> tuple[str, int]:
        query = compile_query(sql, args, mode, lambda n: f"?{n}", what="test")
        return query.text, query.nargs

    assert q("UPDATE t SET v = $2 WHERE k = $1") == ("UPDATE t SET v = ?2 WHERE k = ?1", 2)
    assert q("UPDATE t SET v = :value WHERE k = :key") == ("UPDATE t SET v = ?2 WHERE k = ?1", 2)
    assert q("INSERT INTO t VALUES(?, ?)") == ("INSERT INTO t VALUES(?1, ?2)", 2)
    # SQLite numbering: a bare ? takes the number after the highest so far.
    with pytest.raises(ValueError, match="refers to argument 3"):
        q("SELECT ?2, ?")
    # Positional mode numbers names by first use, as go-sqlite3 does.
    assert q("SELECT :b, :a, :b", mode="positional") == ("SELECT ?1, ?2, ?1", 2)
    assert q("SELECT v FROM t WHERE k = :key", KEY_ONLY) == ("SELECT v FROM t WHERE k = ?1", 1)
    assert q("SELECT k FROM t", NO_ARGS) == ("SELECT k FROM t", 0)
    assert q("UPDATE t SET v = :value", KEY_VALUE) == ("UPDATE t SET v = ?2", 2)


async def test_a_slow_query_does_not_block_the_event_loop(kw: Harness, tmp_path: Path) -> None:
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
        "SELECT ?1 || ':' || count(*) FROM c"
    )
    probe = await kw.start(
        "kw_probe {\n"
        f"  table {sql_query(tmp_path / 't.db', slow, init='')}\n"
        "  table static { entry a b }\n"
        "}\n"
    )
    sql, static = probe.tables
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    lookup = asyncio.create_task(sql.lookup("k"))
    await asyncio.sleep(0.02)
    assert not lookup.done()
    assert await static.lookup("a") == "b"  # answered while the query runs
    result = await lookup
    elapsed = time.monotonic() - started
    stop.set()
    await ticking
    assert result == "k:2000000"
    # The loop kept turning during the query: roughly one tick per 5 ms.
    assert ticks >= max(3, int(elapsed / 0.005) // 4)
