"""One file's directive tree, built from its tokens (docs/config-language.md).

Its own module because this is the intricate part of parsing and it works
on one file's tokens alone (charging macro output to the parse's budget):
maddy's cursor rules (logical lines, continuation with `\\`, where a block
closes), directive names, snippet and macro declarations, and macro
references, expanded as each directive is read. What happens over whole
trees afterwards - `import` resolution and `{env:NAME}` substitution - is
in `config/parser.py` and `config/env.py`.

Like the import expander, the builder is written as generators that yield
the sub-task they would otherwise call, driven by `parser._run`: the shape
of a recursive descent parser without Python recursion (see `parser.py`).
"""

from __future__ import annotations

import enum
import itertools
import json
import re
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from kittiwake.config.lexer import Token
from kittiwake.config.node import Node
from kittiwake.errors import ConfigError

if TYPE_CHECKING:
    from kittiwake.config.parser import _Session

__all__ = ["MAX_NESTING"]

# maddy: more than 256 nested blocks is an error (cfgparser/parse.go).
MAX_NESTING = 256
_ARG_CHARGE = 16

_T = TypeVar("_T")
# A step of a trampolined computation: it yields the sub-steps it needs and
# receives their results back.
_Task: TypeAlias = Generator["_Task", Any, Any]
_Step: TypeAlias = Generator[_Task, Any, _T]

_SIMPLE_NAME = re.compile(r"[A-Za-z_.\-][A-Za-z0-9_.\-]*")
# maddy's regexp for a macro reference inside an argument; the greedy
# `[^$]+` is part of the behaviour (it can swallow a `)`).
_MACRO_REF = re.compile(r"\$\(([^$]+)\)")


@dataclass(slots=True)
class _Macro:
    values: list[str]
    cost: int  # what one whole-argument reference adds to the output budget


@dataclass(slots=True)
class _FileContext:
    """What one file knows while it is parsed on its own (docs/config-language.md, "import")."""

    file: str
    base_dir: str
    snippets: dict[str, list[Node]] = field(default_factory=dict)
    macros: dict[str, _Macro] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Tree building


class _Kind(enum.Enum):
    DIRECTIVE = "directive"
    SNIPPET = "snippet"
    MACRO = "macro"


class _TreeBuilder:
    """maddy's readNode/readNodes over a token list (docs/config-language.md:
    "Directives and blocks", "Snippets", "Macros").

    The cursor methods mirror maddy's dispenser: `_next` takes any token,
    `_next_arg` only one that starts on the line where the current one ends,
    `_next_line` only one that starts on a later line. Everything about
    logical lines, continuation and where blocks close follows from them.
    """

    def __init__(self, tokens: list[Token], ctx: _FileContext, session: _Session) -> None:
        self.tokens = tokens
        self.ctx = ctx
        self.session = session
        self.pos = -1
        self.depth = 0  # open blocks
        self.created = 0
        # same_line[i]: token i starts on the line where token i-1 ends.
        self.same_line = [False] + [b.line == a.end_line for a, b in itertools.pairwise(tokens)]

    def _next(self) -> bool:
        if self.pos + 1 < len(self.tokens):
            self.pos += 1
            return True
        return False

    def _next_arg(self) -> bool:
        if self.pos + 1 < len(self.tokens) and self.same_line[self.pos + 1]:
            self.pos += 1
            return True
        return False

    def _next_line(self) -> bool:
        if self.pos + 1 < len(self.tokens) and not self.same_line[self.pos + 1]:
            self.pos += 1
            return True
        return False

    def read_block(self, opener: Token | None) -> _Step[list[Node]]:
        """Read directives up to the `}` matching `opener` (None: the file).

        On return the cursor is on the token that closed the block: a `}`
        starting a line, or a `}` ending the last child's line.
        """
        if opener is not None:
            if self.depth >= MAX_NESTING:
                raise ConfigError(
                    f"too many nested blocks (the limit is {MAX_NESTING})", opener.file, opener.line
                )
            self.depth += 1
        tokens = self.tokens
        ctx = self.ctx
        result: list[Node] = []
        after_directive = False
        while True:
            if after_directive:
                # A directive ends with its line, so the next token must start
                # a new one. Tokens left on the line only happen after a `}`
                # that started its line (everything else became arguments).
                if self._next_line():
                    at_eof = False
                elif self._next():
                    tok = tokens[self.pos]
                    raise ConfigError(
                        f"unexpected {_show(tok.text)} after '}}': "
                        "a closing brace must be followed by a newline",
                        tok.file,
                        tok.line,
                    )
                else:
                    at_eof = True
            else:
                at_eof = not self._next()
            if at_eof:
                if opener is None:
                    return result
                last = tokens[-1]
                raise ConfigError(
                    f"unexpected end of file: missing '}}' for block opened at line {opener.line}",
                    last.file,
                    last.end_line,
                )
            tok = tokens[self.pos]
            if tok.text == "}":
                if opener is None:
                    raise ConfigError("unexpected '}': no block is open", tok.file, tok.line)
                self.depth -= 1
                return result

            node, kind, last_line = yield self.read_directive()
            after_directive = True
            closes = False
            # `child x }`: a `}` ending a child's line closes the block.
            if node.args and node.args[-1] == "}":
                if opener is None:
                    raise ConfigError("unexpected '}': no block is open", node.file, last_line)
                node.args.pop()
                closes = True

            if kind == _Kind.MACRO:
                values = self.expand_macros(node.args[1:], node)
                cost = sum(len(v) for v in values) + _ARG_CHARGE * len(values)
                ctx.macros[node.name] = _Macro(values, cost)
                continue
            if kind == _Kind.SNIPPET:
                if node.args:
                    raise node.error(
                        f"snippet declaration ({node.name}) can't have arguments, only a block"
                    )
                ctx.snippets[node.name] = node.children if node.children is not None else []
                continue

            if node.args:
                node.args = self.expand_macros(node.args, node)
            result.append(node)
            if closes:
                self.depth -= 1
                return result

    def read_directive(self) -> _Step[tuple[Node, _Kind, int]]:
        """Read one directive: name, arguments, continuations and block.

        Returns the node, its kind, and the line of its last argument (where
        a trailing `}` would be).
        """
        head = self.tokens[self.pos]
        name = head.text
        if name == "{":
            raise ConfigError(
                "unexpected '{': a block must follow a directive name on the same line",
                head.file,
                head.line,
            )
        kind = _Kind.DIRECTIVE
        if len(name) >= 2 and name[0] == "(" and name[-1] == ")":
            kind = _Kind.SNIPPET
            name = name[1:-1]
        if name.startswith("$("):
            if not name.endswith(")"):
                raise ConfigError(
                    f"invalid macro name {_show(name)}: it must end with ')'", head.file, head.line
                )
            kind = _Kind.MACRO
            name = name[2:-1]
        if kind == _Kind.DIRECTIVE:
            _check_name(name, head)
        elif self.depth:
            raise ConfigError(
                f"{kind.value} declaration is only allowed at top level", head.file, head.line
            )

        args: list[str] = []
        children: list[Node] | None = None
        last_line = head.line
        tokens = self.tokens
        continued = False
        while True:
            while self._next_arg() or (continued and self._next_line()):
                continued = False
                tok = tokens[self.pos]
                if tok.text == "{":
                    children = yield self.read_block(tok)
                    break
                args.append(tok.text)
                last_line = tok.line
            # A standalone `\` as the last argument continues the directive
            # on the next line (even after a block, as in maddy).
            if args and args[-1] == "\\":
                args.pop()
                continued = True
                continue
            break

        node = Node(name, args, children, head.file, head.line)
        self.created += 1
        if kind == _Kind.MACRO:
            if len(args) < 2:
                raise node.error(f"macro declaration $({name}) needs '=' and at least one value")
            if args[0] != "=":
                raise node.error(f"macro declaration $({name}) is missing '=' after the name")
        return node, kind, last_line

    def expand_macros(self, args: list[str], node: Node) -> list[str]:
        """Substitute macro references in arguments (docs/config-language.md, "Macros")."""
        macros = self.ctx.macros
        out: list[str] = []
        for arg in args:
            if "$(" not in arg:
                out.append(arg)
            elif arg.startswith("$(") and arg.endswith(")"):
                # A whole-argument reference becomes all of the values; an
                # unknown one vanishes. maddy decides "whole" by prefix and
                # suffix alone, so `$(a)$(b)` is one (unknown) name `a)$(b`.
                macro = macros.get(arg[2:-1])
                if macro is not None and macro.values:
                    self.session.charge_macro(macro.cost, 0, node)
                    out.extend(macro.values)
            elif ")" in arg:
                out.append(self.expand_inline(arg, node))
            else:
                out.append(arg)
        return out

    def expand_inline(self, arg: str, node: Node) -> str:
        """Substring references, replaced one after the other like maddy.

        The names come from the original argument; each replacement then
        applies to the text as already modified (strings.ReplaceAll), which
        is visible only in odd cases but costs nothing to keep.
        """
        macros = self.ctx.macros
        session = self.session
        original = arg
        for name in _MACRO_REF.findall(original):
            macro = macros.get(name)
            if macro is not None and len(macro.values) > 1:
                raise node.error(
                    f"can't expand macro $({name}) with multiple values inside "
                    f"the argument {_show(original)}"
                )
            if "$(" not in arg:
                continue  # nothing left to replace; only the check above matters
            value = macro.values[0] if macro is not None and macro.values else ""
            ref = f"$({name})"
            hits = arg.count(ref)
            session.charge_macro(hits * max(0, len(value) - len(ref)), 2 * len(arg), node)
            if hits:
                arg = arg.replace(ref, value)
        session.charge_macro(len(arg) + _ARG_CHARGE, 0, node)
        return arg


def _check_name(name: str, at: Token) -> None:
    """Directive names: letters, digits, `.`, `-`, `_`; no leading digit."""
    if _SIMPLE_NAME.fullmatch(name):
        return
    problem = ""
    if not name:
        problem = "a name cannot be empty"
    elif name[0].isdecimal():
        problem = "a name cannot start with a digit"
    else:
        for ch in name:
            if not (ch.isalpha() or ch.isdecimal() or ch in "._-"):
                problem = (
                    f"character {_show(ch)} is not allowed (use letters, digits, '.', '-' and '_')"
                )
                break
    if problem:
        raise ConfigError(f"invalid directive name {_show(name)}: {problem}", at.file, at.line)


def _show(text: str, limit: int = 60) -> str:
    """Quote user text for an error message, escaping control characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text, ensure_ascii=False)
