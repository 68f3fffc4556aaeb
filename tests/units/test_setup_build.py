"""setup.py's choice of build (docs/performance.md): when it compiles and when not.

Only the decision is tested here, without compiling; test_compiled.py
builds and tests the compiled package, test_wheel.py the pure one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup_py(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("kittiwake_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not as __main__: setup() does not run
    monkeypatch.delenv("KITTIWAKE_COMPILE", raising=False)
    monkeypatch.setattr("sys.argv", ["setup.py", "bdist_wheel"])
    return module


def no_compiler(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_compiler", lambda: None)


def test_an_unknown_choice_is_refused(
    setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KITTIWAKE_COMPILE", "maybe")
    with pytest.raises(SystemExit, match="expected auto, yes or no"):
        setup_py.ext_modules()


def test_no_builds_pure_python(setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITTIWAKE_COMPILE", "no")
    assert setup_py.ext_modules() == []


@pytest.mark.parametrize("command", ["editable_wheel", "egg_info", "dist_info", "sdist"])
def test_editable_installs_and_metadata_steps_never_compile(
    setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setenv("KITTIWAKE_COMPILE", "yes")  # not even when asked to
    monkeypatch.setattr("sys.argv", ["setup.py", command])
    assert setup_py.ext_modules() == []


def test_auto_without_a_compiler_builds_pure_python_and_says_so(
    setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_compiler(setup_py, monkeypatch)
    assert setup_py.ext_modules() == []
    assert "no C compiler found, building pure Python" in capsys.readouterr().err


def test_yes_without_a_compiler_fails_the_build(
    setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KITTIWAKE_COMPILE", "yes")
    no_compiler(setup_py, monkeypatch)
    with pytest.raises(SystemExit, match="no C compiler found"):
        setup_py.ext_modules()


def test_the_compiler_is_the_one_cc_names(
    setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-here --flag")
    assert setup_py._compiler() is None
    monkeypatch.setenv("CC", "sh -c")  # any program on PATH stands for one
    assert setup_py._compiler() is not None
