"""Turn configuration text into a tree of `Node`s (docs/config-language.md).

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

Three modules share the work. This one is the driver: the public entry
points, the trampoline, and the `_Session` that resolves `import`s
(snippets and files) under the expansion budgets. `config/tree.py` builds
one file's directive tree from its tokens, with snippet and macro
declarations and macro references. `config/env.py` substitutes `{env:NAME}`
over the finished tree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kittiwake.config.env import substitute_env
from kittiwake.config.lexer import Token, tokenize
from kittiwake.config.node import Node
from kittiwake.config.tree import (
    _T,
    MAX_NESTING,
    _FileContext,
    _show,
    _Step,
    _Task,
    _TreeBuilder,
)
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
