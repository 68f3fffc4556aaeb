"""Writing a configuration tree back as text (`kittiwake config show`, docs/cli.md).

The tree is the parser's final one: imports and snippets spliced in, macros
and `{env:...}` already substituted, so the text needs none of them and
reads back into the same tree (docs/config-language.md). Arguments are
written bare when the lexer would read them back unchanged, else quoted.
With defaults, each directive a module left out and filled with its own
default is added at the end of that block, marked `# default`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kittiwake.config.lexer import WHITESPACE
from kittiwake.config.node import Node

__all__ = ["quote", "render"]

#: The defaults used in a node's block, by directive name.
Defaults = Callable[[Node], dict[str, list[str]]]
#: What to print for a node's arguments when they hold a secret (else None).
Shown = Callable[[Node], list[str] | None]

INDENT = "    "
MARK = "  # default"


def quote(arg: str) -> str:
    """`arg` as the lexer will read it back (docs/config-language.md, "Quoting").

    Inside quotes only `\\"` is an escape, so a value with a backslash right
    before a quote, or ending in a backslash, has no written form; braces
    never have one (quoted or not they open and close blocks).
    """
    bare = (
        arg
        and arg[0] != '"'
        and "#" not in arg
        and not any(c in WHITESPACE for c in arg)
        and arg not in ("{", "}", "\\")
    )
    if bare:
        return arg
    if arg in ("{", "}") or arg.endswith("\\") or '\\"' in arg:
        raise ValueError(f"the value {arg!r} cannot be written in the configuration language")
    return '"' + arg.replace('"', '\\"') + '"'


def _line(name: str, args: Iterable[str]) -> str:
    return " ".join([name, *(quote(a) for a in args)])


def _node(
    node: Node, depth: int, defaults: Defaults | None, shown: Shown | None, out: list[str]
) -> None:
    pad = INDENT * depth
    args = shown(node) if shown is not None else None
    head = pad + _line(node.name, node.args if args is None else args)
    extra = defaults(node) if defaults is not None else {}
    if node.children is None and not extra:
        out.append(head)
        return
    out.append(head + " {")
    for child in node.block:
        _node(child, depth + 1, defaults, shown, out)
    for name, args in extra.items():
        out.append(INDENT * (depth + 1) + _line(name, args) + MARK)
    out.append(pad + "}")


def render(
    nodes: list[Node],
    *,
    defaults: Defaults | None = None,
    global_defaults: dict[str, list[str]] | None = None,
    shown: Shown | None = None,
) -> str:
    """The text of `nodes`: globals first as written, a blank line between blocks.

    `shown` gives the arguments to print for a directive that holds a
    secret (kittiwake/config/redact.py); without it, every value as it is.
    """
    out: list[str] = []
    for name, args in (global_defaults or {}).items():
        out.append(_line(name, args) + MARK)
    for node in nodes:
        if out and (node.children is not None or out[-1].endswith("}")):
            out.append("")
        _node(node, 0, defaults, shown, out)
    return "\n".join(out) + "\n"
