"""`kittiwake config check` on the configuration examples of the spec itself.

Each `tests/config/examples/NAME.conf` is a copy of one fenced example
(spec/config.md, seed/smtp-endpoint.md) with only its file paths turned
into placeholders. The real command checks it in a temporary directory.

What to expect is worked out from the registry when the test runs, not
written down, so the test keeps passing as modules land and grows stricter
with each one:

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
  the same lines;
- once every module is registered, the example must pass (exit 0), unless
  the example itself is known to be incomplete (`when_complete`).

The registry is read from a fresh interpreter, not from this process:
other tests register throw-away modules here, and the command under test
sees only the built-in ones.

A fragment that is not a whole configuration is completed by `Example`
below (prefix, suffix, or an edit that must match exactly once, each with
its reason), or listed in `LEFT_OUT` with the reason it cannot be.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from kittiwake.config.globals import PARSERS
from kittiwake.config.node import Node
from kittiwake.config.parser import parse_file
from kittiwake.log import LEVELS

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "config" / "examples"
SRC = HERE.parent.parent / "src"

#: Globals that make a bare endpoint whole (spec/smtp-endpoint.md: smtp
#: and submission need a hostname and a tls setting).
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
    #: registered, for an example that is incomplete as the spec wrote it.
    when_complete: tuple[str, str] | None = None


CASES = [
    Example(
        "spec-04-snippet",
        why="the elided `...` becomes what smtp needs besides tls: hostname and a final handling",
        edits=(("    ...\n", "    hostname mx.example.org\n    reject\n"),),
    ),
    Example(
        "spec-06-macros",
        why="smtp needs tls; destination rules need a default_destination (pipeline.md §2.2); "
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
        # The spec's sql_table omits table_name, which it requires (§13 has it).
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

#: Fenced blocks of spec/config.md not checked, and why.
LEFT_OUT = [
    ("§3 `name arg1 ...`", "directive syntax with placeholder names, not a configuration"),
    ("§5 `import NAME`", "a syntax template; import is exercised by §4 and §13"),
    ("§8.2 `MODULE [INSTANCE [ALIAS ...]]`", "a syntax template"),
    (
        "§11 endpoint addresses",
        "endpoint lines without blocks: the pipeline and submission's auth need a block; "
        "the address forms are tested in tests/config/test_values.py",
    ),
    ("§12 `tls off` ... `tls { loader ... }`", "a syntax summary with CERT/KEY/OPTIONS..."),
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


def _inline_uses(nodes: list[Node], top: bool = True) -> Iterator[_Use]:
    """Every module named by a directive (not a top-level block), in file order."""
    for node in nodes:
        if node.name == "tls" and node.args:
            first = node.args[0]
            # off is no module; a path is the legacy `tls CERT KEY` (tls.loader.file).
            if first != "off" and not first.startswith("&") and "/" not in first:
                yield _Use(first, "tls.loader", node)
        elif node.name in MODULE_DIRECTIVES and (not top or node.name in PARSERS):
            namespace, default = MODULE_DIRECTIVES[node.name]
            name = node.args[0] if node.args else default
            if name and not name.startswith("&"):
                yield _Use(name, namespace, node)
        yield from _inline_uses(node.block, top=False)


_NAMESPACE = r"( \(namespace: [\w.]*\))?"


def expected_errors(config: Path, env: Mapping[str, str], names: frozenset[str]) -> list[str]:
    """Patterns one of which the error line must match; [] means success."""
    nodes = parse_file(str(config), environ=env)
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
    assert len(lines) == 1, result.stderr
    assert any(re.fullmatch(p, lines[0]) for p in patterns), (lines[0], patterns)


def test_every_example_file_is_checked() -> None:
    on_disk = {p.stem for p in EXAMPLES.glob("*.conf")}
    assert on_disk == {e.name for e in CASES}


def test_every_spec_example_is_checked_or_left_out() -> None:
    """Each fenced block of spec/config.md is in CASES or in LEFT_OUT."""
    spec = HERE.parents[2] / "shared" / "spec" / "config.md"
    if not spec.exists():
        pytest.skip(f"the spec is not beside the repository ({spec})")
    fences = sum(line.startswith("```") for line in spec.read_text("utf-8").splitlines()) // 2
    from_spec = [case for case in CASES if case.name.startswith("spec-")]
    assert fences == len(from_spec) + len(LEFT_OUT)


def test_examples_say_where_they_come_from() -> None:
    for case in CASES:
        first = (EXAMPLES / f"{case.name}.conf").read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# Copied from "), case.name


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
