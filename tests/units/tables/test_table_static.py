"""table.static: entries in the configuration, last entry for a key wins."""

from __future__ import annotations

from table_harness import Harness


async def test_lookup_first_value_and_multi(kw: Harness) -> None:
    t = await kw.table('static {\n entry a b c\n entry empty ""\n}')
    assert await t.lookup("a") == "b"
    assert await t.lookup_multi("a") == ["b", "c"]
    assert await t.lookup("empty") == ""  # an empty value is still found
    assert await t.lookup("missing") is None
    assert await t.lookup_multi("missing") == []


async def test_keys_are_exact(kw: Harness) -> None:
    t = await kw.table("static { entry User@Example.org x }")
    assert await t.lookup("user@example.org") is None
    assert await t.lookup("User@Example.org") == "x"


async def test_repeated_key_replaces_not_accumulates(kw: Harness) -> None:
    t = await kw.table("static {\n entry a 1 2\n entry a 3\n}")
    assert await t.lookup_multi("a") == ["3"]


async def test_empty_block_and_no_block(kw: Harness) -> None:
    assert await (await kw.table("static { }")).lookup("a") is None
    assert await (await kw.table("static")).lookup("a") is None


def test_entry_needs_key_and_value(kw: Harness) -> None:
    text = "kw_probe {\n table static {\n  entry a b\n  entry lonely\n }\n}\n"
    assert kw.error(text) == "t.conf:4: entry: expected a key and at least one value"


def test_entry_with_block_and_unknown_directive(kw: Harness) -> None:
    assert kw.error("kw_probe {\n table static {\n  entry a b { }\n }\n}\n") == (
        "t.conf:3: entry: unexpected block"
    )
    assert kw.error("kw_probe {\n table static {\n  entyr a b\n }\n}\n") == (
        "t.conf:3: unexpected directive: entyr"
    )


def test_inline_arguments_are_refused(kw: Harness) -> None:
    assert kw.error("kw_probe {\n\n table static a b\n}\n") == (
        "t.conf:3: table.static takes no arguments: list the entries in its block"
    )


async def test_named_block_shared_by_reference(kw: Harness) -> None:
    probe = await kw.start(
        "table.static aliases { entry a b }\nkw_probe {\n table &aliases\n table &aliases\n}\n"
    )
    first, second = probe.tables
    assert first is second
    assert await first.lookup("a") == "b"


def test_unused_named_block_is_an_error(kw: Harness) -> None:
    assert kw.error("table.static aliases { entry a b }\nkw_probe { }\n") == (
        "t.conf:1: unused configuration block aliases (table.static)"
    )


def test_static_is_not_mutable(kw: Harness) -> None:
    assert kw.error("kw_probe {\n mutable static { entry a b }\n}\n") == (
        "t.conf:2: mutable: module table.static (static) cannot be used here: "
        "it is not a mutable table"
    )
