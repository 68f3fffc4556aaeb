"""`config/show.py`: written arguments lex back to themselves; values format back.

`kittiwake config show` depends on both: tests/e2e/test_config_show.py
checks whole configurations, these check the edges one value at a time.
"""

from __future__ import annotations

import pytest

from kittiwake.config import values
from kittiwake.config.lexer import tokenize
from kittiwake.config.node import Node
from kittiwake.config.parser import parse_text
from kittiwake.config.show import quote, render


@pytest.mark.parametrize(
    "arg",
    [
        "plain",
        "",
        "two words",
        'say "hi"',
        "pass#word",
        '"leading',
        'mid"quote',
        "tab\there",
        "new\nline",
        "nbsp\xa0inside",
        "back\\slash",
        "{env:X}y",
        "a{",
        "ends\\",
        'x\\"y',
    ],
)
def test_quoted_argument_lexes_back(arg: str) -> None:
    [name, token] = tokenize(f"name {quote(arg)}")
    assert (name.text, token.text) == ("name", arg)


@pytest.mark.parametrize("arg", ["{", "}", "\\", "two ends\\", 'a b\\"c'])
def test_arguments_without_a_written_form_are_refused(arg: str) -> None:
    with pytest.raises(ValueError, match="cannot be written"):
        quote(arg)


def test_bare_when_possible() -> None:
    assert quote("tcp://127.0.0.1:25") == "tcp://127.0.0.1:25"
    assert quote("two words") == '"two words"'


def test_render_keeps_empty_and_absent_blocks_apart() -> None:
    nodes = [Node("a"), Node("b", ["x y"], []), Node("c", [], [Node("d", ["1"])])]
    text = render(nodes)
    assert text == 'a\n\nb "x y" {\n}\n\nc {\n    d 1\n}\n'
    again = parse_text(text, "t")
    assert [(n.name, n.args, n.children is None) for n in again] == [
        ("a", [], True),
        ("b", ["x y"], False),
        ("c", [], False),
    ]


def test_defaults_go_last_and_marked() -> None:
    block = Node("m", ["x"], [Node("path", ["p"])])
    text = render([block], defaults=lambda n: {"fsync": ["yes"]} if n is block else {})
    assert text == "m x {\n    path p\n    fsync yes  # default\n}\n"


@pytest.mark.parametrize("seconds", [0.0, 0.25, 1.0, 59.0, 90.0, 600.0, 3600.0, 86400.0, 1e-6])
def test_durations_format_back(seconds: float) -> None:
    assert values.parse_duration(values.format_duration(seconds)) == seconds


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 32 * 1024**2, 3 * 1024**3, 1024**2 + 1])
def test_sizes_format_back(size: int) -> None:
    assert values.parse_size(values.format_size(size)) == size
