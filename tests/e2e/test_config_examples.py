"""`kittiwake config check` on every configuration example: the docs' and maddy's.

The real command checks each example in a temporary directory, in a fresh
interpreter (other tests register throw-away modules in this one).

**The documentation.** Every fenced block of README.md and docs/*.md says
what it is in its info string (the word after the opening backticks):

- `conf`: kittiwake configuration, checked; it must pass;
- `syntax`: a grammar summary, with at least one CAPITALISED placeholder,
  `[optional]` part or `a|b` choice;
- `text`: output, dialogs, headers, table files, other programs' files;
- `sh`, `python`: commands and code.

A fence with no info string or another one fails
`test_every_fence_is_classified`, so a new page cannot slip an unchecked
example in. After `conf` may come a CONTEXT, `each` and `future`:

- no CONTEXT: a whole configuration, checked as it is;
- `global`: top-level directives from a larger file;
- `endpoint`: directives of an endpoint block, put in
  `smtp tcp://127.0.0.1:2525 { }`. If they say nothing about what happens
  to a message (`deliver_to`, `reject`, `destination`, ...), `reject` is
  added; `destination` or `source` rules without their default get
  `default_destination { reject }` or `default_source { reject }`;
- `modify`: directives of a `modify { }` block, in such an endpoint, which
  then ends with `reject`;
- `table`: one inline table (`NAME ARGS [{ }]`), as `replace_rcpt NAME ...`
  in such a `modify` block;
- `check.NAME`: directives of check NAME, as `check { NAME { } }` in such
  an endpoint, which then ends with `reject`;
- `each`: the fence lists alternatives (`log stderr`, `log syslog`, ...);
  each top-level directive, with its block, is checked on its own;
- `future`: the example names a module kittiwake does not have yet, and
  the page says so in its text (readers do not see the info string). It
  must fail with exactly the `unknown module` error for one of the missing
  ones, as maddy's examples below do; once they all exist, the test fails
  until `future` is dropped. An example without `future` that names a
  missing module fails.

Write `...` nowhere in a `conf` fence: the test cannot guess what it stands
for. A line such as `deliver_to &local_mailboxes` says as much and runs.

A fragment (any CONTEXT) is then completed with what the rest of a file
would have: `hostname mx.example.org` and `tls self_signed` unless it sets
them at its top level; a stock definition (`STOCK`) for each `&NAME` it
refers to but does not define; and an `smtp` endpoint when it has none or
when it defines named blocks that nothing in it refers to. That endpoint
refers to each such block by its kind (`_REFER`: `auth &NAME`, `limits
&NAME`, `tls &NAME`, `check &NAME`, `modify &NAME`, `destination_in &NAME
{ reject }` for tables and storage, `deliver_to &NAME` for anything else)
and ends with `default_destination { reject }` (or `deliver_to` those
targets). A whole configuration (no CONTEXT) gets none of this.

In every example, absolute `.pem`/`.crt`/`.key` paths are replaced by a
test certificate (a name with `key` in it by its key); an absolute `log`
file whose folder does not exist here (`/var/log/kittiwake/kittiwake.log`)
is put under the temporary directory, its folder made; each `{env:NAME}`
is set to `2525`; a file that an `import` names (not a snippet) is made,
empty, in the temporary directory, and the `import` points there.

**maddy's examples.** Each `tests/config/examples/NAME.conf` is an example
written in maddy's configuration language, kept as written except for its
file paths (placeholders `@CERT@`, `@KEY@`, `@TMP@`). Its first line names
the docs/ page that describes the syntax it shows. What to expect is worked
out from the registry when the test runs, not written down, so the test
keeps passing as modules land and grows stricter with each one:

- while some top-level name of the example is not a registered module,
  the command must fail (exit 2) with exactly one error line,
  `FILE:LINE: unknown module or global directive: NAME`, for the first such
  name in file order: the container splits the top level before it
  configures anything;
- otherwise, while a module named *inside* a block (`auth pam`,
  `deliver_to dummy`, `limits { ... }`) is missing, the one error line is
  `FILE:LINE: unknown module: NAME (namespace: ...)` for one of them. Which
  one cannot be told from file order alone: named blocks are configured
  lazily, at their first reference, and each module reads its directives
  in the order its code asks for them. The line and name must still match
  one of the missing uses exactly. An endpoint may instead refuse the
  directive itself (`auth: not available in this version of kittiwake
  yet`) while the modules it would name do not exist; that is accepted at
  the same lines. (In a `target.smtp`/`target.lmtp` block, `auth plain
  USER PASS` names a SASL mechanism, not a module.);
- once every module is registered, the example must pass (exit 0), unless
  the example itself is known to be incomplete (`when_complete`).

A fragment that is not a whole configuration is completed by `Example`
below (prefix, suffix, or an edit that must match exactly once, each with
its reason).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import trustme

from kittiwake.config.globals import PARSERS
from kittiwake.config.maddy import maddy_only
from kittiwake.config.node import Node
from kittiwake.config.parser import parse_file, parse_text
from kittiwake.errors import ConfigError
from kittiwake.log import LEVELS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXAMPLES = ROOT / "tests" / "config" / "examples"
SRC = ROOT / "src"

#: Globals that make a bare endpoint whole: smtp and submission refuse to
#: start without a hostname and a tls setting (`missing required directive`).
GLOBALS = "hostname mx.example.org\ntls self_signed\n"


@dataclass(frozen=True)
class Example:
    """One example file and how the test completes it, if it must."""

    name: str
    #: Why it needs completing; empty when it is checked as it is.
    why: str = ""
    prefix: str = ""
    suffix: str = ""
    #: (old, new): `old` must occur exactly once in the file.
    edits: tuple[tuple[str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: (text of the line, message): the error expected once every module is
    #: registered, for an example that is incomplete as it was written.
    when_complete: tuple[str, str] | None = None


CASES = [
    Example(
        "spec-04-snippet",
        why="the elided `...` becomes what smtp needs besides tls: hostname and a final handling",
        edits=(("    ...\n", "    hostname mx.example.org\n    reject\n"),),
    ),
    Example(
        "spec-06-macros",
        why="smtp needs tls; destination rules need a default_destination (docs/pipeline.md); "
        "&local_mailboxes must exist",
        edits=(
            (
                "{ deliver_to &local_mailboxes }\n",
                "{ deliver_to &local_mailboxes }\n    default_destination { reject }\n",
            ),
        ),
        suffix="tls self_signed\nstorage.maildir local_mailboxes {\n    path maildir\n}\n",
    ),
    Example(
        "spec-07-env",
        why="SMTP_PORT is set; the elided body gets hostname, tls and a final handling",
        edits=(("{ ... }", "{\n    hostname mx.example.org\n    tls self_signed\n    reject\n}"),),
        env={"SMTP_PORT": "2525"},
    ),
    Example(
        "spec-08.1-endpoints",
        why="global hostname and tls; each elided body gets a final handling, "
        "submission also the auth it requires",
        prefix=GLOBALS,
        edits=(
            ("tcp://[::]:25 { ... }", "tcp://[::]:25 {\n    reject\n}"),
            ("tcp://0.0.0.0:587 { ... }", "tcp://0.0.0.0:587 {\n    auth dummy\n    reject\n}"),
        ),
    ),
    Example(
        "spec-08.2-named-blocks",
        why="a named block nothing references is an error: an endpoint references both",
        suffix=GLOBALS + "submission tcp://127.0.0.1:587 {\n"
        "    auth &local_authdb\n    limits &inbound_limits\n    reject\n}\n",
        # Its sql_table omits table_name, which is required (spec-13-complete has it).
        when_complete=("table sql_table {", "missing required directive: table_name"),
    ),
    Example(
        "spec-08.3-references",
        why="directives of an endpoint block: wrapped in submission, with &local_authdb "
        "defined and the elided table made a static one",
        prefix=GLOBALS + "auth.pass_table local_authdb {\n    table static\n}\n"
        "submission tcp://127.0.0.1:587 {\n",
        suffix="}\n",
        edits=(("{ table ... }", "{ table static }"),),
    ),
    Example(
        "spec-09-globals",
        why="globals only: an endpoint is added",
        suffix="smtp tcp://127.0.0.1:25 {\n    reject\n}\n",
    ),
    Example(
        "spec-12-tls-options",
        why="a global tls only: a hostname and an endpoint are added",
        suffix="hostname mx.example.org\nsmtp tcp://127.0.0.1:25 {\n    reject\n}\n",
    ),
    Example("spec-13-complete"),
    Example(
        "seed-smtp-endpoint",
        why="&local_mailboxes must exist",
        suffix="storage.maildir local_mailboxes {\n    path maildir\n}\n",
    ),
]

#: How an endpoint refuses a directive whose modules do not exist yet
#: (server/endpoint.py); as good as "unknown module" for the module it names.
NOT_YET = "not available in this version of kittiwake yet"

#: Where a directive names a module: directive -> (namespace, default module).
#: `tls` is handled apart (off, legacy paths).
MODULE_DIRECTIVES: dict[str, tuple[str, str]] = {
    "auth": ("auth", ""),
    "auth_map": ("table", ""),
    "table": ("table", ""),
    "deliver_to": ("target", ""),
    "loader": ("tls.loader", ""),
    "limits": ("", "limits"),
}
#: Blocks whose every child names a module: `check { spf }`, `modifiers NAME { ... }`.
MODULE_LISTS = {"check": "check", "checks": "check", "modify": "modify", "modifiers": "modify"}


# -- what the registry says ----------------------------------------------------------


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KITTIWAKE_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def registered() -> frozenset[str]:
    """The names a fresh `kittiwake` process knows (`module.names()`)."""
    code = (
        "import kittiwake.modules; from kittiwake import module; print('\\n'.join(module.names()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return frozenset(out.split())


def _known(names: frozenset[str], name: str, namespace: str = "") -> bool:
    """`registry.find(name, namespace) is not None`, against `names`."""
    if namespace and "." not in name and f"{namespace}.{name}" in names:
        return True
    return name in names


@dataclass(frozen=True)
class _Use:
    name: str
    namespace: str
    node: Node


#: Blocks whose `auth` names a SASL mechanism (`auth plain USER PASS`), not a module.
_AUTH_MECHANISM_BLOCKS = frozenset({"target.smtp", "target.lmtp"})
#: Blocks whose `tls` is a yes/no switch (`state.redis` with `sentinel`), not a loader.
_TLS_SWITCH_BLOCKS = frozenset({"state.redis"})


def _block_module(node: Node, top: bool) -> str:
    """The module whose block `node.block` is: a top-level block's, or an inline target's."""
    if top:
        return node.name
    if node.name == "deliver_to" and node.args and not node.args[0].startswith("&"):
        return node.args[0] if "." in node.args[0] else f"target.{node.args[0]}"
    return ""


def _inline_uses(nodes: list[Node], top: bool = True, within: str = "") -> Iterator[_Use]:
    """Every module named by a directive (not a top-level block), in file order."""
    for node in nodes:
        if (node.name == "auth" and within in _AUTH_MECHANISM_BLOCKS) or (
            node.name == "tls" and within in _TLS_SWITCH_BLOCKS
        ):
            pass
        elif node.name == "tls" and node.args:
            first = node.args[0]
            # off is no module; a path is the legacy `tls CERT KEY` (tls.loader.file).
            if first != "off" and not first.startswith("&") and "/" not in first:
                yield _Use(first, "tls.loader", node)
        elif node.name in MODULE_DIRECTIVES and (not top or node.name in PARSERS):
            namespace, default = MODULE_DIRECTIVES[node.name]
            name = node.args[0] if node.args else default
            if name and not name.startswith("&"):
                yield _Use(name, namespace, node)
        if node.name in MODULE_LISTS:
            for child in node.block:
                yield _Use(child.name, MODULE_LISTS[node.name], child)
        yield from _inline_uses(node.block, top=False, within=_block_module(node, top))


_NAMESPACE = r"( \(namespace: [\w.]*\))?"


def expected_errors(config: Path, env: Mapping[str, str], names: frozenset[str]) -> list[str]:
    """Patterns one of which the error line must match; [] means success."""
    nodes = parse_file(str(config), environ=env)
    # maddy's modules kittiwake lacks are all named first, each with its
    # advice (docs/from-maddy.md), one line each.
    advised = maddy_only(nodes, lambda name: name in names)
    if advised:
        return [re.escape(str(error)) for error in advised]
    for node in nodes:
        if node.name not in PARSERS and not _known(names, node.name):
            where = re.escape(f"{node.file}:{node.line}: ")
            return [where + re.escape(f"unknown module or global directive: {node.name}")]
    patterns = []
    for use in _inline_uses(nodes):
        if not _known(names, use.name, use.namespace):
            where = re.escape(f"{use.node.file}:{use.node.line}: ")
            patterns.append(where + re.escape(f"unknown module: {use.name}") + _NAMESPACE)
            patterns.append(where + re.escape(f"{use.node.name}: {NOT_YET}"))
    return patterns


# -- running the command -------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("certs")
    leaf = trustme.CA().issue_cert("mx.example.org", "example.org")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def _materialise(example: Example, tmp: Path, certificate: tuple[str, str]) -> Path:
    text = (EXAMPLES / f"{example.name}.conf").read_text(encoding="utf-8")
    for old, new in example.edits:
        assert text.count(old) == 1, f"{example.name}: edit {old!r} must match exactly once"
        text = text.replace(old, new)
    text = example.prefix + text + example.suffix
    for placeholder, value in (("@CERT@", certificate[0]), ("@KEY@", certificate[1])):
        text = text.replace(placeholder, value)
    text = text.replace("@TMP@", str(tmp))
    path = tmp / f"{example.name}.conf"
    path.write_text(text, encoding="utf-8")
    return path


def config_check(config: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kittiwake", "config", "check", "-c", str(config)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _error_lines(stderr: str) -> list[str]:
    """stderr without log lines below `error` (a warning is not the verdict)."""
    quiet = tuple(f"{level} " for level in LEVELS if level != "error")
    return [line for line in stderr.splitlines() if not line.startswith(quiet)]


def _line_of(config: Path, text: str) -> int:
    lines = config.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == text)


@pytest.mark.parametrize("example", CASES, ids=lambda e: e.name)
def test_example(
    example: Example,
    tmp_path: Path,
    certificate: tuple[str, str],
    registered: frozenset[str],
) -> None:
    config = _materialise(example, tmp_path, certificate)
    env = _env(example.env)
    patterns = expected_errors(config, env, registered)
    if not patterns and example.when_complete is not None:
        anchor, message = example.when_complete
        patterns = [re.escape(f"{config}:{_line_of(config, anchor)}: {message}")]
    result = config_check(config, tmp_path, env)
    assert "Traceback" not in result.stderr + result.stdout
    if not patterns:
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{config}: configuration OK\n"
        return
    assert result.returncode == 2, result.stderr
    lines = _error_lines(result.stderr)
    # One line; or, for maddy's modules, one advice line each.
    assert len(lines) == 1 or len(lines) == len(patterns), result.stderr
    assert all(any(re.fullmatch(p, line) for p in patterns) for line in lines), (lines, patterns)


def test_every_example_file_is_checked() -> None:
    on_disk = {p.stem for p in EXAMPLES.glob("*.conf")}
    assert on_disk == {e.name for e in CASES}


def test_examples_name_their_docs_page() -> None:
    """Each example's first line names the docs/ page on its syntax, and the page exists."""
    for case in CASES:
        first = (EXAMPLES / f"{case.name}.conf").read_text(encoding="utf-8").splitlines()[0]
        pages = re.findall(r"docs/[\w.-]+\.md", first)
        assert first.startswith("# ") and pages, case.name
        assert all((ROOT / page).is_file() for page in pages), case.name


# -- the documentation's fences ------------------------------------------------------

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Fences that are not kittiwake's configuration, by info string.
NOT_CONFIG = {
    "syntax": "a grammar summary: CAPITALISED placeholders, [optional] parts, a|b",
    "text": "output, dialogs, message headers, table files, other programs' configuration",
    "sh": "shell commands",
    "python": "Python code",
}

#: A `syntax` fence shows at least one placeholder, `[optional]` part or `a|b`
#: choice; one without any is an example and must be checked (`conf`).
_PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_-]*[A-Z0-9]\b|\[|\|")

#: The endpoint a fragment is put in (config check binds nothing).
_ENDPOINT = "smtp tcp://127.0.0.1:2525"

#: `conf CONTEXT`: where the fragment goes; `@@` is replaced by its text.
CONTEXTS = {
    "global": "@@\n",
    "endpoint": f"{_ENDPOINT} {{\n@@\n}}\n",
    "modify": f"{_ENDPOINT} {{\n    modify {{\n@@\n    }}\n    reject\n}}\n",
    "table": f"{_ENDPOINT} {{\n    modify {{\n        replace_rcpt @@\n    }}\n    reject\n}}\n",
    "check": f"{_ENDPOINT} {{\n    check {{\n        @NAME@ {{\n@@\n        }}\n    }}\n"
    "    reject\n}\n",
}

#: Directives that say what happens to a message, at an endpoint's top level.
_HANDLING = {"deliver_to", "reroute", "reject", "destination", "destination_in"}
_HANDLING |= {"default_destination", "source", "source_in", "default_source"}

#: Named blocks an example refers to (`&NAME`) but leaves to the rest of the file.
STOCK = {
    "local_mailboxes": "storage.maildir local_mailboxes {\n}\n",
    "mailboxes": "storage.maildir mailboxes {\n}\n",
    "local_authdb": "auth.pass_table local_authdb {\n    table static\n}\n",
    "aliases": "table.static aliases {\n}\n",
    "local_aliases": "table.static local_aliases {\n}\n",
    "local_rewrites": "table.static local_rewrites {\n}\n",
    "proxy_tls": "tls.loader.self_signed proxy_tls {\n}\n",
    "remote_queue": "target.queue remote_queue {\n    target dummy\n}\n",
    "cluster": "state.redis cluster {\n    endpoint redis://127.0.0.1:6379/0\n}\n",
}

#: How the added endpoint refers to a named block nothing else refers to, by
#: module name (prefix); anything else is a target (`deliver_to`).
_REFER = {
    "auth.": "auth &{}",
    "limits": "limits &{}",
    "state.": "state &{}",
    "tls.loader.": "tls &{}",
    "checks": "check &{}",
    "modifiers": "modify &{}",
    "table.": "destination_in &{} {{ reject }}",
    "storage.": "destination_in &{} {{ reject }}",
}

_ENDPOINT_NAMES = frozenset({"smtp", "submission", "lmtp"})
#: Top-level blocks that listen, as endpoints do, and are no named blocks;
#: `openmetrics` alone still gets the mail endpoint a fragment lacks.
_LISTENER_NAMES = _ENDPOINT_NAMES | {"openmetrics"}
_OPEN = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_CERTIFICATE = re.compile(r"(?<![\w.])/[^\s\"{}]+\.(?:pem|crt|key)\b")


@dataclass(frozen=True)
class Fence:
    """One fenced block of a page: where it opens, its info string and its text."""

    page: str
    line: int
    info: str
    text: str

    @property
    def kind(self) -> str:
        words = self.info.split()
        return words[0] if words else ""

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def fences(path: Path) -> Iterator[Fence]:
    """The fenced blocks of a Markdown page, their text dedented to the fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(ROOT).as_posix()
    i = 0
    while i < len(lines):
        opening = _OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        closing = re.compile(rf" *{re.escape(fence[0])}{{{len(fence)},}}\s*")
        end = next((j for j in range(i + 1, len(lines)) if closing.fullmatch(lines[j])), None)
        assert end is not None, f"{page}:{i + 1}: the fence is never closed"
        body = [
            line[min(indent, len(line) - len(line.lstrip(" "))) :] for line in lines[i + 1 : end]
        ]
        yield Fence(page, i + 1, opening["info"].strip(), "\n".join(body) + "\n")
        i = end + 1


FENCES = [fence for page in PAGES for fence in fences(page)]


@dataclass(frozen=True)
class DocExample:
    """A `conf` fence, or with `each` one directive of it, and how it is completed."""

    fence: Fence
    text: str
    context: str = ""
    check: str = ""
    future: bool = False
    #: With `each`: which directive of the fence, from 1.
    piece: int = 0

    @property
    def id(self) -> str:
        return f"{self.fence}#{self.piece}" if self.piece else str(self.fence)


def _directives(text: str) -> list[str]:
    """The top-level directives of a fragment, each with its block and comments."""
    pieces: list[list[str]] = [[]]
    for line in text.splitlines():
        if line[:1] not in ("", " ", "\t", "#", "}") and _has_directive(pieces[-1]):
            pieces.append([])
        pieces[-1].append(line)
    return ["\n".join(p) + "\n" for p in pieces if _has_directive(p)]


def _has_directive(lines: list[str]) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in lines)


def doc_examples() -> list[DocExample]:
    examples = []
    for fence in FENCES:
        if fence.kind != "conf":
            continue
        words = fence.info.split()[1:]
        flags = {w for w in words if w in ("each", "future")}
        rest = [w for w in words if w not in flags]
        context, check = (rest[0] if rest else ""), ""
        if context.startswith("check."):
            context, check = "check", context.removeprefix("check.")
        assert len(rest) <= 1 and (not context or context in CONTEXTS), (
            f"{fence}: unknown words in `{fence.info}`: conf [{'|'.join(CONTEXTS)}|check.NAME] "
            "[each] [future]"
        )
        future = "future" in flags
        if "each" not in flags:
            examples.append(DocExample(fence, fence.text, context, check, future))
            continue
        for i, text in enumerate(_directives(fence.text), 1):
            examples.append(DocExample(fence, text, context, check, future, piece=i))
    return examples


def _walk(nodes: list[Node]) -> Iterator[Node]:
    for node in nodes:
        yield node
        yield from _walk(node.block)


def _rewrite_files(text: str, tmp: Path, certificate: tuple[str, str]) -> str:
    """Certificates become the test's; a missing imported file is made, empty;
    a log file in a folder this machine lacks is moved into `tmp`."""
    cert, key = certificate
    text = _CERTIFICATE.sub(lambda m: key if "key" in m[0].rsplit("/", 1)[1] else cert, text)
    for targets in re.findall(r"^\s*log\s+([^#\n]+)", text, re.M):
        for word in targets.split():
            if word.startswith("/") and not Path(word).parent.is_dir():
                moved = tmp / word.lstrip("/")
                moved.parent.mkdir(parents=True, exist_ok=True)
                text = text.replace(word, str(moved))
    snippets = set(re.findall(r"^\s*\((\S+)\)", text, re.M))
    for name in re.findall(r"^\s*import\s+(\S+)", text, re.M):
        if name in snippets:
            continue
        target = tmp / name.lstrip("/")
        if name.startswith("/"):
            text = text.replace(f"import {name}", f"import {target}")
        if not target.name.endswith(".conf"):
            target = target.with_name(target.name + ".conf")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    return text


def _wrap(example: DocExample) -> str:
    """The fragment in its context, with the handling an endpoint body needs."""
    text = example.text
    if example.context == "endpoint":
        top = {line.split()[0] for line in text.splitlines() if line[:1].isalpha()}
        if not top & _HANDLING:
            text += "reject\n"
        if top & {"destination", "destination_in"} and "default_destination" not in top:
            text += "default_destination {\n    reject\n}\n"
        if top & {"source", "source_in"} and "default_source" not in top:
            text += "default_source {\n    reject\n}\n"
    template = CONTEXTS[example.context].replace("@NAME@", example.check)
    before = template[: template.index("@@")]
    body = textwrap.indent(text, "    " * before.count("{")).rstrip("\n")
    if before and not before.endswith("\n"):  # the slot is mid-line (`replace_rcpt @@`)
        body = body.lstrip(" ")
    return template.replace("@@", body)


def _complete(text: str, path: Path, env: Mapping[str, str]) -> str:
    """What the rest of the file would have: globals, referenced blocks, an endpoint."""
    nodes = parse_text(text, str(path), environ=env)
    top = {node.name for node in nodes}
    prefix = "".join(
        f"{name} {value}\n"
        for name, value in (("hostname", "mx.example.org"), ("tls", "self_signed"))
        if name not in top
    )
    # A named block: MODULE [INSTANCE [ALIAS...]] { }.
    blocks = [n for n in nodes if n.name not in PARSERS and n.name not in _LISTENER_NAMES]
    names = {name for block in blocks for name in block.args or [block.name]}
    referred = {arg[1:] for node in _walk(nodes) for arg in node.args if arg.startswith("&")}
    suffix = ""
    for name in sorted(referred - names):
        assert name in STOCK, f"&{name} is defined neither in the example nor in STOCK"
        suffix += STOCK[name]
    unused = {
        (block.args or [block.name])[0]: block.name
        for block in blocks
        if not referred & set(block.args or [block.name])
    }
    if unused or not top & _ENDPOINT_NAMES:
        suffix += _endpoint_using(unused)
    return prefix + text + suffix


def _endpoint_using(blocks: Mapping[str, str]) -> str:
    lines, targets = [], []
    for name, module in blocks.items():
        use = next((u for prefix, u in _REFER.items() if module.startswith(prefix)), None)
        if use is None:
            targets.append(f"deliver_to &{name}")
        else:
            lines.append(use.format(name))
    handling = "\n        ".join(targets or ["reject"])
    lines.append(f"default_destination {{\n        {handling}\n    }}")
    return f"{_ENDPOINT} {{\n" + "".join(f"    {line}\n" for line in lines) + "}\n"


def materialise_doc(
    example: DocExample, tmp: Path, certificate: tuple[str, str]
) -> tuple[Path, dict[str, str]]:
    """The example as a file in `tmp`, and the environment to check it in."""
    env = _env({name: "2525" for name in re.findall(r"\{env:(\w+)\}", example.text)})
    path = tmp / "example.conf"
    text = _rewrite_files(example.text, tmp, certificate)
    if example.context:
        text = _wrap(replace(example, text=text))
        # A fragment that does not even parse is checked as it is: the
        # command's error is the one to show.
        with contextlib.suppress(ConfigError):
            text = _complete(text, path, env)
    path.write_text(text, encoding="utf-8")
    return path, env


def test_every_fence_is_classified() -> None:
    """Each fence of README.md and docs/*.md says what it is (see the module docstring)."""
    kinds = ["conf", *NOT_CONFIG]
    unknown = [f"{f}: `{f.info}`" for f in FENCES if f.kind not in kinds]
    assert not unknown, f"fences whose info string is none of {kinds}:\n" + "\n".join(unknown)
    bare = [str(f) for f in FENCES if f.kind == "syntax" and not _PLACEHOLDER.search(f.text)]
    assert not bare, f"`syntax` fences without a placeholder (examples: mark them conf): {bare}"


def test_pages_have_examples() -> None:
    """The fence reader sees the pages (a broken reader would pass every test vacuously)."""
    assert len(PAGES) > 10
    assert sum(f.kind == "conf" for f in FENCES) > 20


@pytest.mark.parametrize("example", doc_examples(), ids=lambda e: e.id)
def test_doc_example(
    example: DocExample,
    tmp_path: Path,
    certificate: tuple[str, str],
    registered: frozenset[str],
) -> None:
    config, env = materialise_doc(example, tmp_path, certificate)
    try:
        missing = expected_errors(config, env, registered)
    except ConfigError:
        missing = []  # a syntax error: the command reports it below
    result = config_check(config, tmp_path, env)
    shown = f"{example.fence} as checked:\n{config.read_text('utf-8')}\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, shown
    if example.future:
        assert missing, f"{example.fence}: everything it names exists now: drop `future`"
        assert result.returncode == 2, shown
        lines = _error_lines(result.stderr)
        # One line; or, for maddy's modules, one advice line each.
        assert len(lines) == 1 or len(lines) == len(missing), shown
        assert all(any(re.fullmatch(p, line) for p in missing) for line in lines), shown
        return
    assert not missing, (
        f"{shown}\nnames a module or top-level directive kittiwake does not have "
        "(a module not built yet? mark the fence `future` and say so on the page)"
    )
    assert result.returncode == 0, shown
    assert result.stdout == f"{config}: configuration OK\n"


# -- names nobody registered -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("check.nonexistent { }\n", "1: unknown module or global directive: check.nonexistent"),
        (
            "hostname mx.example.org\ntls nonexistent\n",
            "2: unknown module: nonexistent (namespace: tls.loader)",
        ),
    ],
    ids=["top-level", "inline"],
)
def test_unregistered_module_is_a_clean_error(tmp_path: Path, text: str, error: str) -> None:
    config = tmp_path / "bad.conf"
    config.write_text(text, encoding="utf-8")
    result = config_check(config, tmp_path, _env())
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"{config}:{error}\n"
