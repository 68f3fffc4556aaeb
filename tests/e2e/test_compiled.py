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
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kw import need_tool

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
    "tests/e2e/test_proxy_protocol.py",
    "tests/e2e/test_auth.py",
    "tests/e2e/test_metrics.py",
]


def _load_build() -> object:
    spec = importlib.util.spec_from_file_location(
        "kittiwake_bench_build", ROOT / "bench" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compiled_list() -> list[str]:
    """setup.py's COMPILED, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return [str(v) for v in value]
    raise AssertionError("setup.py has no COMPILED list")


@pytest.fixture(scope="module")
def site() -> Path:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("no C compiler: .ci/run installs gcc for this test")
    build = _load_build()
    return Path(build.compiled_site())  # type: ignore[attr-defined]


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KITTIWAKE_CONFIG", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    return env


def test_every_listed_module_is_compiled(site: Path) -> None:
    modules = _compiled_list()
    assert len(modules) >= 10, modules
    for source in modules:
        relative = Path(source).relative_to("src").with_suffix("")
        built = list((site / relative.parent).glob(f"{relative.name}.*.so"))
        assert built, f"{source} was not compiled"
    names = [".".join(Path(s).relative_to("src").with_suffix("").parts) for s in modules]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    print(name, importlib.import_module(name).__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(site),
        cwd=site.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        path = line.split(" ", 1)[1]
        assert path.startswith(str(site)) and path.endswith(".so"), line


def test_each_compiled_module_imports_first(site: Path) -> None:
    """Whichever module a program imports first, the import completes.

    A compiled module imported half-initialised through an import cycle can
    crash the interpreter where Python would only see the cycle; each
    module therefore starts a fresh interpreter of its own, then the rest.
    """
    for source in _compiled_list():
        name = ".".join(Path(source).relative_to("src").with_suffix("").parts)
        script = f"import {name}\nimport kittiwake.modules\nprint('ok')\n"
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=_env(site),
            cwd=site.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0 and done.stdout == "ok\n", (name, done.returncode, done.stderr)


def test_version_says_compiled(site: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kittiwake", "version"],
        env=_env(site),
        cwd=site.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(", compiled)\n"), done.stdout


def test_the_message_path_suite_passes_compiled(site: Path, tmp_path: Path) -> None:
    copy = tmp_path / "suite"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copytree(ROOT / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    # The tests find `src/` beside them (pytest's pythonpath, the servers'
    # PYTHONPATH): here it is the compiled build.
    (copy / "src").symlink_to(site, target_is_directory=True)
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-n", "2", "--maxprocesses", "2", *SUITE,
        ],
        env=_env(site),
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
