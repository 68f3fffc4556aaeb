"""Every `mx_auth` directive in docs/mx-auth.md's configuration examples builds.

`tests/e2e/test_config_examples.py` runs `kittiwake config check` on the
page's examples as wholes; this test, in-process and quick, checks the
part this page is about: each `mx_auth` directive in each `conf` fence,
nested or top-level, is built by the real parser with the fence's own
named `mx_auth` blocks available for `&NAME`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from kittiwake.config.node import Node
from kittiwake.config.parser import parse_text
from kittiwake.container import Container, DebugFlags
from kittiwake.mx_auth.config import parse_mx_auth

PAGE = Path(__file__).resolve().parents[3] / "docs" / "mx-auth.md"
_FENCE = re.compile(r"^```conf[^\n]*\n(.*?)^```", re.M | re.S)


def walk(nodes: list[Node]) -> Iterator[Node]:
    for node in nodes:
        yield node
        yield from walk(node.block)


def test_every_mx_auth_example_builds(tmp_path: Path) -> None:
    fences = _FENCE.findall(PAGE.read_text(encoding="utf-8"))
    assert len(fences) >= 5
    built = 0
    for text in fences:
        nodes = parse_text(text, "mx-auth.md")
        named = [n for n in nodes if n.name == "mx_auth" and n.args and n.children is not None]
        top = parse_text(f"state_dir {tmp_path}/state\n", "top.conf") + named
        container = Container(top, cwd=str(tmp_path), debug_flags=DebugFlags("127.0.0.1:53"))
        container.parse_globals()
        uses = [n for n in walk(nodes) if n.name == "mx_auth" and n not in named]
        assert uses or named, text
        for node in uses:
            assert parse_mx_auth(node, container), text
            built += 1
        for node in named:
            (ref,) = parse_text(f"mx_auth &{node.args[0]}\n", "ref.conf")
            assert parse_mx_auth(ref, container), text
            built += 1
    assert built >= 6
