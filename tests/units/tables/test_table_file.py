"""table.file: the aliases file format, startup, and reloading."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from table_harness import Harness

from kittiwake.tables.file import FileTable, TableFileError, parse_table_text

Wait = Callable[[Callable[[], Awaitable[bool]]], Awaitable[None]]


def age(path: Path, seconds: float = 60.0) -> None:
    """Backdate a file, so the reloader sees it as settled."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_format_rules() -> None:
    text = (
        "# a comment\n"
        "\n"
        "   \t \n"
        "aaa: bbb\n"
        "\tccc :  ddd  \n"
        "  # indented: not a comment\n"
        "novalue\n"
        "colon:\n"
        "multi: one, two ,,three\n"
        "multi: four\n"
        "crlf: x\r\n"
        "url: http://example.org:8080\n"
        "last: no newline at the end"
    )
    assert parse_table_text(text, "f") == {
        "aaa": ["bbb"],
        "ccc": ["ddd"],
        "# indented": ["not a comment"],
        "novalue": [""],
        "colon": [""],
        "multi": ["one", "two", "", "three", "four"],
        "crlf": ["x"],
        "url": ["http://example.org:8080"],
        "last": ["no newline at the end"],
    }


def test_only_newline_ends_a_line_and_go_white_space() -> None:
    # A form feed does not end a line (Python's splitlines would split),
    # and U+001C is not white space for Go's TrimSpace.
    assert parse_table_text("a\fb: c\n\x1ck: v\n", "f") == {"a\fb": ["c"], "\x1ck": ["v"]}


def test_empty_key_is_a_parse_error_with_line() -> None:
    with pytest.raises(TableFileError) as info:
        parse_table_text("a: b\n# c\n  : x\n", "/etc/aliases")
    assert str(info.value) == "/etc/aliases:3: empty address before colon"


async def test_lookup_first_and_all(kw: Harness, tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: x, y\nb\n")
    t = await kw.table(f"file {path}")
    assert await t.lookup("a") == "x"
    assert await t.lookup_multi("a") == ["x", "y"]
    assert await t.lookup("b") == ""
    assert await t.lookup("c") is None
    assert await t.lookup_multi("c") == []


async def test_path_in_the_block(kw: Harness, tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: x\n")
    t = await kw.table(f'file {{\n  file "{path}"\n  debug yes\n }}')
    assert await t.lookup("a") == "x"


async def test_relative_path_is_in_the_state_directory(kw: Harness, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "aliases").write_text("a: x\n")
    probe = await kw.start("state_dir state\nkw_probe {\n table file aliases\n}\n")
    assert await probe.tables[0].lookup("a") == "x"


def test_argument_errors(kw: Harness, tmp_path: Path) -> None:
    assert kw.error("kw_probe {\n table file a b\n}\n") == (
        "t.conf:2: table.file: expected one file path, got 2 arguments; "
        "use several table.file tables (e.g. in a chain) for several files"
    )
    assert kw.error("kw_probe {\n table file a {\n  file b\n }\n}\n") == (
        "t.conf:3: table.file: the file path is given both as an argument and in the block; "
        "give it once"
    )
    assert (
        kw.error("kw_probe {\n table file\n}\n") == "t.conf:2: table.file: a file path is required"
    )
    assert kw.error("kw_probe {\n table file {\n  file a b\n }\n}\n") == (
        "t.conf:3: file: expected exactly one path"
    )
    assert kw.error("kw_probe {\n table file {\n  file a\n  file b\n }\n}\n") == (
        "t.conf:4: duplicate directive: file"
    )


def test_parse_error_at_startup_points_into_the_table_file(kw: Harness, tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("ok: fine\n\n: nothing\n")
    assert kw.error(f"kw_probe {{\n table file {path}\n}}\n") == (
        f"{path}:3: empty address before colon"
    )


def test_unreadable_file_is_an_error(kw: Harness, tmp_path: Path) -> None:
    assert kw.error(f"kw_probe {{\n table file {tmp_path}\n}}\n") == (
        f"t.conf:2: table.file: cannot read {tmp_path}: Is a directory"
    )


async def test_missing_file_warns_and_is_empty(
    kw: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = await kw.table(f"file {tmp_path / 'nope'}")
    assert await t.lookup("a") is None
    err = capsys.readouterr().err
    assert "warn table.file: ignoring non-existent file" in err
    assert str(tmp_path / "nope") in err


async def test_reload_picks_up_a_settled_change(kw: Harness, tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: old\n")
    t = await kw.table(f"file {path}")
    path.write_text("a: new\nb: added\n")
    age(path)
    await t.reload()
    assert await t.lookup("a") == "new"
    assert await t.lookup("b") == "added"


async def test_reload_waits_until_the_file_settles(kw: Harness, tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: old\n")
    age(path)
    t = await kw.table(f"file {path}")
    assert isinstance(t, FileTable)
    assert t.settle_time == 7.5 and t.poll_interval == 15.0  # maddy's timings
    path.write_text("a: being written\n")  # mtime: just now
    await t.reload()
    assert await t.lookup("a") == "old"
    t.settle_time = 0.0
    await t.reload()
    assert await t.lookup("a") == "being written"


async def test_replacement_with_an_older_mtime_is_seen(kw: Harness, tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: old\n")
    age(path, 60)
    t = await kw.table(f"file {path}")
    other = tmp_path / "aliases.new"
    other.write_text("a: replaced\n")
    age(other, 3600)  # older than what was loaded, as `cp -p` would leave it
    other.replace(path)
    await t.reload()
    assert await t.lookup("a") == "replaced"


async def test_parse_error_keeps_previous_content(
    kw: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: old\n")
    t = await kw.table(f"file {path}")
    path.write_text("a: new\n: broken\n")
    age(path)
    await t.reload()
    assert await t.lookup("a") == "old"
    err = capsys.readouterr().err
    assert "cannot reload, keeping the previous content" in err
    assert "empty address before colon" in err
    await t.reload()  # the same broken version is not parsed and logged again
    assert "cannot reload" not in capsys.readouterr().err
    path.write_text("a: fixed\n")
    age(path, 30)
    await t.reload()
    assert await t.lookup("a") == "fixed"


async def test_deleted_file_empties_the_table_and_comes_back(kw: Harness, tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: x\n")
    t = await kw.table(f"file {path}")
    path.unlink()
    await t.reload()
    assert await t.lookup("a") is None
    path.write_text("a: back\n")
    age(path)
    await t.reload()
    assert await t.lookup("a") == "back"


async def test_background_reloader(kw: Harness, tmp_path: Path, wait_for: Wait) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: one\n")
    probe = kw.configure(f"kw_probe {{\n table file {path}\n}}\n")
    (t,) = probe.tables
    assert isinstance(t, FileTable)
    t.poll_interval = 0.02
    t.settle_time = 0.1
    await kw.containers[-1].start()

    async def value_is(expected: str | None) -> bool:
        return await t.lookup("a") == expected

    path.write_text("a: two\n")
    await wait_for(lambda: value_is("two"))
    path.write_text("a: three\n: oops\n")
    await asyncio.sleep(0.3)  # settled, polled several times, refused
    assert await t.lookup("a") == "two"
    path.unlink()
    await wait_for(lambda: value_is(None))
    path.write_text("a: four\n")
    await wait_for(lambda: value_is("four"))
    task = t._task
    assert task is not None and not task.done()
    await kw.stop_all()
    assert task.cancelled()
    assert t._task is None
