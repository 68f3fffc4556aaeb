"""The compiled build: what `pip install .` gives operators (docs/performance.md).

The rest of the suite runs the sources (an editable install is never
compiled). Here the package is built as pip builds it, with the message
path compiled by mypyc (`bench/build.py`, shared with the benchmarks and
kept per source revision), and then:

- every module setup.py lists is a C extension in the build, and importing
  kittiwake from it loads them (`kittiwake version` says `compiled`);
- the tests of those modules and the end-to-end SMTP, LMTP and limits
  tests run against it in a pytest of their own, in a copy of the test
  suite whose `src/` is the compiled build: the tests import kittiwake from
  there and start their servers from there, so every line they exercise in
  a compiled module runs compiled;
- `bench/smtp.py` measures it (the benchmarks' default), in a tiny matrix.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kw import bench_build, need_tool

ROOT = Path(__file__).resolve().parents[2]

#: Building runs mypyc and the C compiler (about a minute on two cores);
#: the inner run is a few minutes of end-to-end tests.
pytestmark = pytest.mark.timeout(1800)

#: The tests run again on the compiled build: those of the compiled modules
#: and the end-to-end dialogues that go through all of them.
SUITE = [
    "tests/protocol",
    "tests/units/test_address.py",
    "tests/units/test_header.py",
    "tests/units/test_log_format.py",
    "tests/units/pipeline",
    "tests/units/test_connection_gate.py",
    "tests/units/test_metrics_registry.py",
    "tests/e2e/test_smtp.py",
    "tests/e2e/test_replies.py",
    "tests/e2e/test_hardening.py",
    "tests/e2e/test_message_log.py",
    "tests/e2e/test_limits_e2e.py",
    "tests/e2e/test_endpoint_directives.py",
    "tests/e2e/test_dovecot_maildir.py",
    "tests/e2e/test_maildir_agents.py",
    "tests/e2e/test_proxy_protocol.py",
    "tests/e2e/test_auth.py",
    "tests/e2e/test_metrics.py",
]


def _modules() -> list[str]:
    """setup.py's COMPILED as module names, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            paths = ast.literal_eval(node.value)
            return [".".join(Path(p).relative_to("src").with_suffix("").parts) for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


@pytest.fixture(scope="module")
def site() -> Path:
    return Path(bench_build().compiled_site())


def _environ(**extra: str) -> dict[str, str]:
    """This environment without what would point kittiwake elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("KITTIWAKE_CONFIG", "PYTHONPATH")}
    return env | extra


def _python(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python ARGS` importing kittiwake from the compiled build only."""
    return subprocess.run(
        [sys.executable, *args],
        env=_environ(PYTHONPATH=str(site)),
        cwd=site.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_listed_module_is_compiled(site: Path) -> None:
    names = _modules()
    assert len(names) >= 10, names
    script = (
        f"import importlib\nfor name in {names!r}:\n"
        "    print(importlib.import_module(name).__file__)\n"
    )
    done = _python(site, "-c", script)
    assert done.returncode == 0, done.stderr
    paths = done.stdout.splitlines()
    assert len(paths) == len(names)
    for name, path in zip(names, paths, strict=True):
        assert path.startswith(str(site)) and path.endswith(".so"), (name, path)


def test_each_compiled_module_imports_first(site: Path) -> None:
    """Whichever module a program imports first, the import completes.

    A compiled module can crash the interpreter at import where Python
    would not (docs/performance.md, a dataclass's field types); each module
    therefore starts a fresh interpreter of its own, then the rest.
    """
    for name in _modules():
        done = _python(site, "-c", f"import {name}\nimport kittiwake.modules\nprint('ok')\n")
        assert done.returncode == 0 and done.stdout == "ok\n", (name, done.returncode, done.stderr)


def test_version_says_compiled(site: Path) -> None:
    done = _python(site, "-m", "kittiwake", "version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(", compiled)\n"), done.stdout


#: Added to the copied suite: it fails the inner run unless the tests there
#: import, and start their servers from, the compiled build.
PROBE = """
import kittiwake.protocol.connection
from kw import SRC


def test_this_suite_runs_the_compiled_build():
    assert kittiwake.protocol.connection.__file__.endswith(".so")
    assert any((SRC / "kittiwake" / "protocol").glob("connection.*.so"))
"""


def test_the_message_path_suite_passes_compiled(site: Path, tmp_path: Path) -> None:
    copy = tmp_path / "suite"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copytree(ROOT / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    # The tests find `src/` beside them (pytest's pythonpath, the servers'
    # PYTHONPATH): here it is the compiled build.
    (copy / "src").symlink_to(site, target_is_directory=True)
    (copy / "tests" / "e2e" / "test_compiled_probe.py").write_text(PROBE)
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-n", "2", "--maxprocesses", "2", "tests/e2e/test_compiled_probe.py", *SUITE,
        ],
        env=_environ(),
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )  # fmt: skip
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, tail
    assert " passed" in done.stdout, tail


def test_the_benchmark_measures_the_compiled_build(site: Path, tmp_path: Path) -> None:
    need_tool("smtp-source", "postfix")
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "smtp.py"), "--quick", "--no-memory",
            "--only", "kittiwake-discard", "--per-session", "20", "--dir", str(tmp_path),
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^versions: kittiwake \S+ \(compiled\),", done.stdout, re.M), done.stdout
    rows = re.findall(r"^kittiwake-discard\s+\d+\s+10K\s+20\s+\d+\s+(\d+)\s", done.stdout, re.M)
    assert rows and all(int(rate) > 0 for rate in rows), done.stdout
