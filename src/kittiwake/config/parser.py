"""Turn configuration text into a tree of `Node`s (config.md §1-§7).

The pipeline is maddy's: lex, build the directive tree (removing snippet and
macro declarations and expanding macro references as each directive is
read), replace `import` directives until none is left, then substitute
`{env:NAME}` placeholders over the final tree.

Two structural choices keep every input, however hostile, to "parses or
raises ConfigError" in roughly linear time:

* No Python recursion. The tree builder and the import expander are written
  as generators that *yield* the sub-task they would otherwise call; `_run`
  drives them with an explicit stack. The code keeps the shape of a
  recursive descent parser (which makes maddy's cursor rules easy to
  follow) while the depth of the configuration never touches the
  interpreter's recursion limit.
* Bounded expansion. Snippets and macros can double their size at every
  level ("billion laughs"); maddy would run out of memory. We count what
  imports and macros produce and stop at generous limits that no real
  configuration approaches.
"""

from __future__ import annotations

import enum
import itertools
import json
import os
import re
import stat
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from kittiwake.config.lexer import Token, tokenize
from kittiwake.config.node import Node
from kittiwake.errors import ConfigError

__all__ = [
    "MAX_EXPANDED_DIRECTIVES",
    "MAX_FILE_SIZE",
    "MAX_IMPORT_DEPTH",
    "MAX_MACRO_OUTPUT",
    "MAX_NESTING",
    "parse_file",
    "parse_text",
    "substitute_env",
]

# maddy: more than 256 nested blocks is an error (cfgparser/parse.go).
MAX_NESTING = 256
# maddy: an import found at expansion depth 256 or more is an error. The
# depth counts nesting, passes over a block and nested files alike.
MAX_IMPORT_DEPTH = 256
# kittiwake: directives produced by imports (snippet copies and imported
# files) over a whole parse. Real configurations stay below a few thousand.
MAX_EXPANDED_DIRECTIVES = 100_000
# kittiwake: characters (plus a small charge per argument) produced by macro
# references over a whole parse, and the text scanned while substituting.
MAX_MACRO_OUTPUT = 4_000_000
_MACRO_WORK = 64_000_000
# kittiwake: a configuration file larger than this is refused rather than
# read (an `import` of a huge or endless file would otherwise never finish).
MAX_FILE_SIZE = 64 * 1024 * 1024
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
_ENV_OPEN = "{env:"


def parse_text(
    text: str,
    file: str = "<string>",
    *,
    base_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Node]:
    """Parse a configuration held in memory.

    `file` only labels positions in errors and nodes; relative imports
    resolve against `base_dir`, or the directory part of `file` when
    `base_dir` is not given (the current directory for `<string>`).
    """
    session = _Session()
    ctx = _FileContext(file, os.path.dirname(file) if base_dir is None else base_dir)
    nodes = _run(session.read_file_tree(tokenize(text, file), ctx, 0))
    substitute_env(nodes, os.environ if environ is None else environ)
    return nodes


def parse_file(path: str, *, environ: Mapping[str, str] | None = None) -> list[Node]:
    """Read and parse a configuration file and everything it imports."""
    try:
        data = _read(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read configuration file: {_why(exc)}", path) from None
    session = _Session()
    session.active.append(os.path.realpath(path))
    ctx = _FileContext(path, os.path.dirname(path))
    nodes = _run(session.read_file_tree(tokenize(_decode(data), path), ctx, 0))
    substitute_env(nodes, os.environ if environ is None else environ)
    return nodes


def substitute_env(nodes: list[Node], environ: Mapping[str, str]) -> None:
    """Replace `{env:NAME}` in every name and argument of a tree, in place.

    This is the last step of parsing (config.md §7), exposed so callers that
    build trees another way get the same treatment.
    """
    stack = [nodes]
    while stack:
        for node in stack.pop():
            if _ENV_OPEN in node.name:
                node.name = _expand_env(node.name, environ)
            args = node.args
            for i, arg in enumerate(args):
                if _ENV_OPEN in arg:
                    args[i] = _expand_env(arg, environ)
            if node.children:
                stack.append(node.children)


# --------------------------------------------------------------------------
# Trampoline


def _run(task: _Step[_T]) -> _T:
    """Drive a generator-based "recursive" computation without recursion."""
    stack: list[_Task] = [task]
    value: Any = None
    while True:
        try:
            sub = stack[-1].send(value)
        except StopIteration as done:
            stack.pop()
            if not stack:
                result: _T = done.value
                return result
            value = done.value
        else:
            stack.append(sub)
            value = None


# --------------------------------------------------------------------------
# Shared state


@dataclass(slots=True)
class _Macro:
    values: list[str]
    cost: int  # what one whole-argument reference adds to the output budget


@dataclass(slots=True)
class _FileContext:
    """What one file knows while it is parsed on its own (config.md §5)."""

    file: str
    base_dir: str
    snippets: dict[str, list[Node]] = field(default_factory=dict)
    macros: dict[str, _Macro] = field(default_factory=dict)


@dataclass(slots=True)
class _Session:
    """Budgets and caches shared by a parse and every file it imports."""

    expanded: int = 0
    macro_output: int = 0
    macro_work: int = 0
    # Real paths of the files being parsed, outermost first: importing one of
    # them again can only recurse until the depth limit, so we stop early.
    active: list[str] = field(default_factory=list)
    tokens: dict[str, list[Token]] = field(default_factory=dict)  # by import path

    def read_file_tree(
        self, tokens: list[Token], ctx: _FileContext, depth: int, via: Node | None = None
    ) -> _Step[list[Node]]:
        """maddy's readTree: build one file's tree, then resolve its imports.

        `via` is the import directive that brought the file in, if any: an
        imported file's directives count against the expansion budget.
        """
        builder = _TreeBuilder(tokens, ctx, self)
        nodes: list[Node] = yield builder.read_block(None)
        if via is not None:
            self.charge_nodes(builder.created + 1, via)
        expanded: list[Node] = yield self.expand_imports(nodes, ctx, depth)
        return expanded

    def charge_nodes(self, count: int, at: Node) -> None:
        self.expanded += count
        if self.expanded > MAX_EXPANDED_DIRECTIVES:
            raise at.error(
                f"imports expand to more than {MAX_EXPANDED_DIRECTIVES} directives "
                "(is a snippet imported in a loop?)",
            )

    # ---------------------------------------------------------------- imports

    def expand_imports(self, nodes: list[Node], ctx: _FileContext, depth: int) -> _Step[list[Node]]:
        """Replace every `import` in `nodes` (and below) by what it names.

        This follows the order of maddy's expandImports, which matters for
        which snippets exist when: the children of a block are handled in
        passes; a pass resolves the imports present at its start, in order,
        descending into other directives' blocks as it meets them, and
        content brought in by a snippet is handled in the next pass, one
        depth level further. Content read from a file comes back fully
        expanded. Instead of re-walking the whole block each pass as maddy
        does, only the newly inserted content is visited.
        """
        spliced: dict[int, list[Node]] = {}
        fresh = [nodes]
        level = depth
        while fresh:
            later: list[list[Node]] = []
            for group in fresh:
                for node in group:
                    if node.name == "import":
                        content, from_snippet = yield self.resolve_import(node, ctx, level)
                        spliced[id(node)] = content
                        if from_snippet:
                            later.append(content)
                    elif node.children:
                        node.children = yield self.expand_imports(node.children, ctx, level + 1)
            fresh = later
            level += 1
        return _splice(nodes, spliced) if spliced else nodes

    def resolve_import(
        self, node: Node, ctx: _FileContext, depth: int
    ) -> _Step[tuple[list[Node], bool]]:
        if depth >= MAX_IMPORT_DEPTH:
            raise node.error(
                f"hit import expansion limit ({MAX_IMPORT_DEPTH} levels; "
                "does a snippet import itself?)"
            )
        if len(node.args) != 1:
            raise node.error(
                f"import needs exactly one argument (a snippet or file name), got {len(node.args)}"
            )
        name = node.args[0]
        snippet = ctx.snippets.get(name)
        if snippet is not None:
            return self.copy_nodes(snippet, node), True

        path = self.find_import(node, name, ctx)
        real = os.path.realpath(path)
        if real in self.active:
            raise node.error(f"hit import expansion limit: {path} imports itself")
        tokens = self.tokens.get(path)
        if tokens is None:
            try:
                data = _read(path)
            except (OSError, ValueError) as exc:
                raise node.error(f"cannot import {_show(name)}: {_why(exc)}") from None
            tokens = tokenize(_decode(data), path)
            self.tokens[path] = tokens
        sub = _FileContext(path, os.path.dirname(path))
        self.active.append(real)
        nodes: list[Node] = yield self.read_file_tree(tokens, sub, depth + 1, node)
        self.active.pop()
        # The imported file's snippets become usable by later imports of the
        # importer (overriding its own of the same name, as in maddy). Its
        # macros would merge too, but arguments are expanded at read time,
        # so they could never be used: they are simply dropped.
        ctx.snippets.update(sub.snippets)
        return nodes, False

    def find_import(self, node: Node, name: str, ctx: _FileContext) -> str:
        """NAME, then NAME.conf, relative to the importing file's directory."""
        path = name if os.path.isabs(name) else os.path.normpath(os.path.join(ctx.base_dir, name))
        for candidate in (path, path + ".conf"):
            try:
                st = os.stat(candidate)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise node.error(f"cannot import {_show(name)}: {_why(exc)}") from None
            if stat.S_ISDIR(st.st_mode):
                raise node.error(
                    f"cannot import {_show(name)}: {candidate} is a directory "
                    "(import each file by name)"
                )
            if not stat.S_ISREG(st.st_mode):
                raise node.error(f"cannot import {_show(name)}: {candidate} is not a regular file")
            return candidate
        raise node.error(
            f"unknown import: {name} (no snippet of that name, and neither {path} "
            f"nor {path}.conf exists)"
        )

    def copy_nodes(self, nodes: list[Node], at: Node) -> list[Node]:
        """A deep copy, so each place a snippet lands can be changed alone."""
        out: list[Node] = []
        stack = [(nodes, out)]
        count = 0
        while stack:
            src, dst = stack.pop()
            count += len(src)
            for n in src:
                copy = Node(n.name, list(n.args), None, n.file, n.line)
                if n.children is not None:
                    copy.children = []
                    stack.append((n.children, copy.children))
                dst.append(copy)
        self.charge_nodes(count, at)
        return out

    # ----------------------------------------------------------------- macros

    def charge_macro(self, output: int, work: int, at: Node) -> None:
        self.macro_output += output
        self.macro_work += work
        if self.macro_output > MAX_MACRO_OUTPUT or self.macro_work > _MACRO_WORK:
            raise at.error(
                f"macro expansion produces too much text (limit {MAX_MACRO_OUTPUT} "
                "characters; does a macro double itself?)"
            )


def _splice(nodes: list[Node], spliced: dict[int, list[Node]]) -> list[Node]:
    """Flatten a block whose imports were replaced, however deeply chained."""
    out: list[Node] = []
    stack = [iter(nodes)]
    while stack:
        for node in stack[-1]:
            content = spliced.get(id(node)) if node.name == "import" else None
            if content is not None:
                stack.append(iter(content))
                break
            out.append(node)
        else:
            stack.pop()
    return out


# --------------------------------------------------------------------------
# Tree building


class _Kind(enum.Enum):
    DIRECTIVE = "directive"
    SNIPPET = "snippet"
    MACRO = "macro"


class _TreeBuilder:
    """maddy's readNode/readNodes over a token list (config.md §3, §4, §6).

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
                        f"snippet declaration ({node.name}) can't have arguments, "
                        "only a block"
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
        """Substitute macro references in arguments (config.md §6)."""
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
                    f"character {_show(ch)} is not allowed "
                    "(use letters, digits, '.', '-' and '_')"
                )
                break
    if problem:
        raise ConfigError(f"invalid directive name {_show(name)}: {problem}", at.file, at.line)


# --------------------------------------------------------------------------
# Environment


def _expand_env(s: str, environ: Mapping[str, str]) -> str:
    """maddy's two steps: replace known `{env:NAME}`, then delete leftovers.

    Step one is Go's strings.Replacer over `{env:KEY}` for every variable:
    left to right, non-overlapping, replacement text not re-scanned. Step
    two is the regexp `{env:([^$]+)}`, whose greedy match runs to the last
    `}` before the next `$` (the quirk in config.md §7). Both are written
    with `find` so that long arguments full of `{env:` stay linear.
    """
    parts: list[str] = []
    done = 0
    brace = -1
    i = s.find(_ENV_OPEN)
    while i != -1:
        body = i + len(_ENV_OPEN)
        if brace < body:
            brace = s.find("}", body)
            if brace == -1:
                break
        value = environ.get(s[body:brace])
        if value is not None:
            parts.append(s[done:i])
            parts.append(value)
            done = brace + 1
            i = s.find(_ENV_OPEN, done)
        else:
            i = s.find(_ENV_OPEN, i + 1)
    if parts:
        parts.append(s[done:])
        s = "".join(parts)

    parts = []
    done = 0
    dollar = -1
    last_brace = -1
    i = s.find(_ENV_OPEN)
    while i != -1:
        body = i + len(_ENV_OPEN)
        if dollar < body:
            dollar = s.find("$", body)
            if dollar == -1:
                dollar = len(s)
            last_brace = s.rfind("}", 0, dollar)
        if last_brace > body:  # at least one character before the `}`
            parts.append(s[done:i])
            done = last_brace + 1
            i = s.find(_ENV_OPEN, done)
        else:
            i = s.find(_ENV_OPEN, i + 1)
    if parts:
        parts.append(s[done:])
        s = "".join(parts)
    return s


# --------------------------------------------------------------------------
# Helpers


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise ValueError(f"file is larger than {MAX_FILE_SIZE // (1024 * 1024)} MiB")
    return data


def _decode(data: bytes) -> str:
    # Go reads runes and turns invalid UTF-8 into U+FFFD without failing.
    return data.decode("utf-8", errors="replace")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _show(text: str, limit: int = 60) -> str:
    """Quote user text for an error message, escaping control characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text, ensure_ascii=False)
