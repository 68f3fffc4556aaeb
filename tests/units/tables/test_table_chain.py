"""table.chain: step / optional_step, fan-out, references and errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from table_harness import Harness

from kittiwake.module import Module, register, unregister


class Boom(Module):
    """A table whose lookups fail, like a database that is down."""

    async def lookup(self, key: str) -> str | None:
        raise OSError(f"lookup of {key} failed")


class NotATable(Module):
    """No lookup method at all."""


@pytest.fixture(autouse=True)
def _test_modules() -> Iterator[None]:
    register("chaintest.boom")(Boom)
    register("chaintest.plain")(NotATable)
    yield
    unregister("chaintest.boom")
    unregister("chaintest.plain")


async def test_local_rewrites_example(kw: Harness, tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("info@example.org: alice@example.org, bob@example.org\n")
    t = await kw.table(
        "chain {\n"
        r'  optional_step regexp "(.+)\+(.+)@(.+)" "$1@$3"'
        "\n"
        "  optional_step static { entry postmaster postmaster@example.org }\n"
        f"  optional_step file {aliases}\n"
        "}"
    )
    assert await t.lookup("info+news@example.org") == "alice@example.org"
    assert await t.lookup_multi("info+news@example.org") == [
        "alice@example.org",
        "bob@example.org",
    ]
    assert await t.lookup("postmaster") == "postmaster@example.org"
    assert await t.lookup("carol+x@example.org") == "carol@example.org"
    assert await t.lookup("dave@example.org") == "dave@example.org"


async def test_step_not_found_ends_the_chain(kw: Harness) -> None:
    t = await kw.table("chain {\n  step static { entry a b }\n  step static { entry b c }\n}")
    assert await t.lookup("a") == "c"
    assert await t.lookup("b") is None  # first step does not know b
    assert await t.lookup_multi("b") == []


async def test_multi_values_fan_out_through_later_steps(kw: Harness) -> None:
    t = await kw.table(
        "chain {\n"
        "  step email_localpart\n"
        "  step email_with_domain example.org example.com\n"
        "  step static {\n"
        "    entry u@example.org U1 U2\n"
        "    entry u@example.com U3\n"
        "  }\n"
        "}"
    )
    assert await t.lookup_multi("u@anything.net") == ["U1", "U2", "U3"]
    assert await t.lookup("u@anything.net") == "U1"


async def test_step_fails_if_any_value_is_missing(kw: Harness) -> None:
    t = await kw.table(
        "chain {\n"
        "  step email_with_domain example.org example.com\n"
        "  step static { entry u@example.org known }\n"
        "}"
    )
    assert await t.lookup_multi("u") == []


async def test_optional_step_is_all_or_nothing(kw: Harness) -> None:
    # u@example.org has a mapping, u@example.com has none: the whole step is
    # skipped, and both values pass through unchanged.
    t = await kw.table(
        "chain {\n"
        "  step email_with_domain example.org example.com\n"
        "  optional_step static { entry u@example.org mapped }\n"
        "}"
    )
    assert await t.lookup_multi("u") == ["u@example.org", "u@example.com"]
    t2 = await kw.table(
        "chain {\n"
        "  step email_with_domain example.org example.com\n"
        "  optional_step static {\n    entry u@example.org m1\n    entry u@example.com m2 m3\n  }\n"
        "}"
    )
    assert await t2.lookup_multi("u") == ["m1", "m2", "m3"]


async def test_steps_run_in_file_order(kw: Harness) -> None:
    t = await kw.table(
        "chain {\n"
        "  step static { entry a b }\n"
        "  optional_step static { entry x y }\n"
        "  step static { entry b c }\n"
        "}"
    )
    assert await t.lookup("a") == "c"


async def test_empty_value_is_a_found_value(kw: Harness) -> None:
    t = await kw.table('chain {\n  step static { entry a "" }\n  step static { entry "" e }\n}')
    assert await t.lookup("a") == "e"


async def test_empty_chain_returns_the_key(kw: Harness) -> None:
    t = await kw.table("chain { }")
    assert await t.lookup("k") == "k"


async def test_steps_by_reference(kw: Harness) -> None:
    probe = await kw.start(
        "table.static first { entry a b }\n"
        "table.chain both {\n  step &first\n  step &second\n}\n"
        "table.static second { entry b c }\n"
        "kw_probe {\n  table &both\n}\n"
    )
    assert await probe.tables[0].lookup("a") == "c"


async def test_lookup_errors_abort(kw: Harness) -> None:
    t = await kw.table(
        "chain {\n  optional_step static { entry a b }\n  optional_step chaintest.boom\n}"
    )
    with pytest.raises(OSError, match="lookup of b failed"):
        await t.lookup("a")


def test_step_errors_with_lines(kw: Harness) -> None:
    assert kw.error("kw_probe {\n table chain {\n  step\n }\n}\n") == (
        "t.conf:3: step: expected a module name or an &reference"
    )
    assert kw.error("kw_probe {\n table chain {\n  step nosuch\n }\n}\n") == (
        "t.conf:3: unknown module: nosuch (namespace: table)"
    )
    assert kw.error("kw_probe {\n table chain {\n\n  optional_step chaintest.plain\n }\n}\n") == (
        "t.conf:4: optional_step: module chaintest.plain (chaintest.plain) cannot be used "
        "here: it is not a table"
    )
    assert kw.error("kw_probe {\n table chain {\n  step &nope\n }\n}\n") == (
        "t.conf:3: unknown configuration block: nope"
    )
    assert kw.error("kw_probe {\n table chain {\n  step static {\n   entry a\n  }\n }\n}\n") == (
        "t.conf:4: entry: expected a key and at least one value"
    )
    assert kw.error("kw_probe {\n table chain x\n}\n") == (
        "t.conf:2: table.chain takes no arguments: list its steps in its block"
    )


def test_reference_cycle_is_an_error(kw: Harness) -> None:
    err = kw.error(
        "table.chain a {\n  step &b\n}\ntable.chain b {\n  step &a\n}\nkw_probe { table &a }\n"
    )
    assert err == "t.conf:5: reference cycle: a refers back to itself"
