"""`modify.replace_rcpt` / `modify.replace_sender` (docs/modify.md) and `dummy`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipefakes import FAKES, deliver, meta, pipe

from kittiwake.errors import ConfigError
from kittiwake.modify.replace_addr import ReplaceError, ReplaceRecipient, ReplaceSender

ALIASES = """table.static aliases {
  entry whole@example.org one@other.org two@other.org
  entry \u00e9l\u00e8ve@\u00e9cole.example student@school.example
  entry info rcpt
  entry team alice bob@elsewhere.org
  entry postmaster admin@example.org
  entry "" bounces@example.org
  entry bad@example.org not-an-address
  entry badlocal x@@y
  entry first@example.org a@x.org b@x.org
}
"""


def _modifier(tmp_path: Path, text: str) -> ReplaceRecipient | ReplaceSender:
    pipeline = pipe(f"  modify {{\n    {text}\n  }}\n  reject\n", tmp_path, before=ALIASES)
    (modifier,) = pipeline.routing.modifiers
    assert isinstance(modifier, ReplaceRecipient | ReplaceSender)
    return modifier


@pytest.mark.parametrize(
    ("rcpt", "result"),
    [
        ("whole@example.org", ["one@other.org", "two@other.org"]),
        ("WHOLE@Example.ORG", ["one@other.org", "two@other.org"]),  # lookup form
        ("E\u0301le\u0300ve@xn--cole-9oa.example", ["student@school.example"]),
        ("info@any.example", ["rcpt@any.example"]),  # local part only: domain kept
        ("INFO@Any.Example", ["rcpt@any.example"]),  # ... in its normalised form
        ("team@d.example", ["alice@d.example", "bob@elsewhere.org"]),
        ("postmaster", ["admin@example.org"]),
        ("Postmaster", ["admin@example.org"]),
        ("nobody@example.org", ["nobody@example.org"]),  # unchanged, as given
        ("Nobody@Example.org", ["Nobody@Example.org"]),
    ],
)
async def test_replace_rcpt(rcpt: str, result: list[str], tmp_path: Path) -> None:
    modifier = _modifier(tmp_path, "replace_rcpt &aliases")
    assert await modifier.rewrite_rcpt(rcpt) == result
    assert await modifier.rewrite_sender(rcpt) == rcpt  # only recipients change


@pytest.mark.parametrize(
    ("sender", "result"),
    [
        ("first@example.org", "a@x.org"),  # first value only
        ("team@d.example", "alice@d.example"),
        ("", "bounces@example.org"),  # the null sender's key is ""
        ("x@y.org", "x@y.org"),
    ],
)
async def test_replace_sender(sender: str, result: str, tmp_path: Path) -> None:
    modifier = _modifier(tmp_path, "replace_sender &aliases")
    assert await modifier.rewrite_sender(sender) == result
    assert await modifier.rewrite_rcpt("first@example.org") == ["first@example.org"]


async def test_null_sender_unchanged_without_empty_key(tmp_path: Path) -> None:
    pipeline = pipe(
        "  modify {\n    replace_sender static {\n      entry a b@c.org\n    }\n  }\n  reject\n",
        tmp_path,
    )
    (modifier,) = pipeline.routing.modifiers
    assert isinstance(modifier, ReplaceSender)
    assert await modifier.rewrite_sender("") == ""


REFUSING = "refusing to replace recipient with the invalid address"


@pytest.mark.parametrize(
    ("rcpt", "message"),
    [
        ("bad@example.org", f"{REFUSING} not-an-address"),
        ("badlocal@x.org", f"{REFUSING} x@@y"),
        ("no-at-sign", "malformed address: no '@' in 'no-at-sign'"),
    ],
)
async def test_replace_errors(rcpt: str, message: str, tmp_path: Path) -> None:
    modifier = _modifier(tmp_path, "replace_rcpt &aliases")
    with pytest.raises(ReplaceError) as info:
        await modifier.rewrite_rcpt(rcpt)
    assert str(info.value) == message


async def test_not_recursive_and_end_to_end(tmp_path: Path) -> None:
    pipeline = pipe(
        "  modify {\n    replace_rcpt static {\n      entry a@x.org b@x.org\n"
        "      entry b@x.org c@x.org\n    }\n  }\n  deliver_to test t\n",
        tmp_path,
    )
    m = meta()
    await deliver(pipeline, "s@example.org", ["a@x.org"], m=m)
    assert FAKES["t"].committed[0].rcpts == ["b@x.org"]
    assert m.original_rcpts == {"b@x.org": "a@x.org"}


def test_replace_needs_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        pipe("  modify {\n    replace_rcpt\n  }\n  reject\n", tmp_path)
    assert "expected a table" in str(info.value)


async def test_dummy_target_accepts_everything(tmp_path: Path) -> None:
    pipeline = pipe("  deliver_to dummy\n", tmp_path)
    delivery = await deliver(pipeline, "s@example.org", ["a@x.org", "b@y.org"])
    assert delivery.source_addr == "s@example.org"


def test_dummy_takes_no_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        pipe("  deliver_to dummy x\n", tmp_path)
    assert str(info.value).endswith("dummy takes no arguments")
