"""The linters are part of the test suite: ruff over the code, mypy --strict over src.

Both run as subprocesses from the repository root with the settings in
pyproject.toml. The tools come with the `test` extra: a missing one fails
the test rather than skipping it, so a clean run always means linted code.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_tool(module: str, *args: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]'", pytrace=False)
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        command = " ".join([module, *args])
        pytest.fail(f"{command} failed:\n{result.stdout}{result.stderr}", pytrace=False)


def test_ruff() -> None:
    paths = [p for p in ("src", "tests", "bench", "tools", "setup.py") if (ROOT / p).exists()]
    _run_tool("ruff", "check", *paths)


def test_ruff_format() -> None:
    """The code is in `ruff format`'s shape: run `ruff format src tests bench tools` to fix."""
    paths = [p for p in ("src", "tests", "bench", "tools", "setup.py") if (ROOT / p).exists()]
    _run_tool("ruff", "format", "--check", *paths)


def test_mypy_strict() -> None:
    _run_tool("mypy")  # files and strictness come from pyproject.toml
