"""Property tests: any input parses or raises ConfigError, quickly.

Three generators: arbitrary bytes; streams of the tokens that drive the
parser's decisions (braces, quotes, backslashes, newlines, comments, macro
and env syntax, imports of real files); and random valid trees, printed and
parsed back, which must come back unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kittiwake.config.node import Node
from kittiwake.config.parser import parse_file, parse_text
from kittiwake.errors import ConfigError

FUZZ = settings(
    max_examples=400,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAME_RE = re.compile(r"[^\W_]?[\w.\-]*")
ENVIRON = {"E": "env value", "EMPTY": "", "BRACE": "}", "DOLLAR": "$"}


@pytest.fixture(scope="module")
def import_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of files the random imports can reach."""
    root = tmp_path_factory.mktemp("fuzz_imports")
    (root / "inc.conf").write_text("inc_directive x\n(from_inc) {\n    y\n}\n")
    (root / "self.conf").write_text("import self\n")
    (root / "bad.conf").write_text('unterminated "\n')
    (root / "nested.conf").write_text("n {\n    import inc\n}\n")
    (root / "dir").mkdir()
    return root


def walk(nodes: list[Node]) -> Iterator[Node]:
    stack = [nodes]
    while stack:
        for node in stack.pop():
            yield node
            if node.children:
                stack.append(node.children)


def check_tree(nodes: list[Node]) -> None:
    """What must hold for any successfully parsed tree."""
    for node in walk(nodes):
        assert node.line >= 1 and node.file
        assert node.name != "import"
        assert isinstance(node.args, list)
        assert all(isinstance(a, str) for a in node.args)
        # Names are validated before env substitution, and a valid name
        # cannot contain a placeholder, so they are still valid here.
        assert node.name and not node.name[0].isdecimal(), node.name
        assert all(c.isalpha() or c.isdecimal() or c in "._-" for c in node.name), node.name


def parse_or_error(text: str, base_dir: Path) -> None:
    try:
        nodes = parse_text(text, "fuzz.conf", base_dir=str(base_dir), environ=ENVIRON)
    except ConfigError as exc:
        assert exc.file and exc.message
        assert exc.line >= 0
        assert str(exc)
    else:
        check_tree(nodes)


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes(import_dir: Path, data: bytes) -> None:
    parse_or_error(data.decode("utf-8", errors="replace"), import_dir)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_from_file(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("raw") / "raw.conf"
    path.write_bytes(data)
    try:
        check_tree(parse_file(str(path), environ=ENVIRON))
    except ConfigError as exc:
        assert exc.file == str(path)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text(import_dir: Path, text: str) -> None:
    parse_or_error(text, import_dir)


FRAGMENTS = [
    "a",
    "b1",
    "deliver_to",
    "1w",
    "x.y-z_",
    "{",
    "}",
    "{}",
    '"',
    '""',
    '"{"',
    '"}"',
    '"a b"',
    '"q\\"',
    "\\",
    "\\\n",
    "x\\",
    "\n",
    "\n",
    "\n",
    "\r\n",
    " ",
    " ",
    "\t",
    "#",
    "# comment\n",
    "a#b",
    "$(",
    ")",
    "=",
    "$(m)",
    "$(m) = v w\n",
    "$(n) = $(m)\n",
    "x$(m)y",
    "$(m",
    "(s)",
    "(s) {",
    "(",
    "{env:",
    "{env:E}",
    "{env:U}",
    "{env:BRACE}",
    "{env:DOLLAR}",
    "import s\n",
    "import inc\n",
    "import from_inc\n",
    "import self\n",
    "import bad\n",
    "import nested\n",
    "import dir\n",
    "import nope\n",
    "import\n",
    "import a b\n",
    "\u2028",
    "\x1c",
    "\ufeff",
]


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=80))
def test_token_streams(import_dir: Path, parts: list[str]) -> None:
    parse_or_error(" ".join(parts), import_dir)


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=80))
def test_token_streams_without_separators(import_dir: Path, parts: list[str]) -> None:
    parse_or_error("".join(parts), import_dir)


# ------------------------------------------------------------- round trip

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,8}", fullmatch=True).filter(
    lambda n: n != "import"
)
# Argument text any layout can carry: no value a printed form would turn
# into syntax (braces, a lone backslash, macro or env references), nothing
# that ends in a backslash or holds `\"` (quoted values cannot).
plain_args = st.text(
    alphabet=st.sampled_from(list("ab1 #{}\n\t\\;&é\"'")), min_size=0, max_size=8
).filter(lambda a: a not in ("{", "}", "\\") and not a.endswith("\\") and '\\"' not in a)


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> list[Node]:
    out = []
    for _ in range(draw(st.integers(0, 4 if depth < 4 else 0))):
        node = Node(draw(names), draw(st.lists(plain_args, max_size=3)))
        if draw(st.booleans()):
            node.children = draw(trees(depth + 1))
        out.append(node)
    return out


def quote(arg: str) -> str:
    return '"' + arg.replace('"', '\\"') + '"'


@st.composite
def printed(draw: st.DrawFn, nodes: list[Node], indent: str = "") -> str:
    """Print a tree, choosing among the layouts the grammar allows."""
    lines = []
    for node in nodes:
        if draw(st.integers(0, 4)) == 0:
            lines.append(indent + "# a comment line\n\n")
        words = [node.name, *(quote(a) for a in node.args)]
        if len(words) > 1 and draw(st.booleans()):
            cut = draw(st.integers(1, len(words) - 1))
            head = " ".join(words[:cut]) + " \\\n" + indent + "    " + " ".join(words[cut:])
        else:
            head = " ".join(words)
        if node.children is None:
            lines.append(indent + head + "\n")
        elif not node.children:
            lines.append(indent + head + draw(st.sampled_from([" { }\n", " {\n" + indent + "}\n"])))
        else:
            inner = draw(printed(node.children, indent + "    "))
            if draw(st.booleans()) and node.children[-1].children is None:
                # `child x }`: the last child's line closes the block.
                inner = inner.rstrip("\n") + " }\n"
                lines.append(indent + head + " {\n" + inner)
            else:
                lines.append(indent + head + " {  # c\n" + inner + indent + "}\n")
    return "".join(lines)


def strip(nodes: list[Node] | None) -> object:
    if nodes is None:
        return None
    return [(n.name, n.args, strip(n.children)) for n in nodes]


@settings(max_examples=300, deadline=timedelta(seconds=2), database=None)
@given(st.data())
def test_printed_tree_parses_back(data: st.DataObject) -> None:
    tree = data.draw(trees())
    text = data.draw(printed(tree))
    assert strip(parse_text(text, environ={})) == strip(tree), text
