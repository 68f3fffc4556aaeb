"""What every test shares: the built-in modules, and a short temporary root.

The program's entry point imports `kittiwake.modules` (the composition
root); tests that build configurations without going through it need the
same list, so it is imported once here.

The suite runs in pytest-xdist worker processes (one per core, at most 4:
`addopts` in pyproject.toml), which put each worker's temporary folders one level
deeper (`.../popen-gw0/`). Servers under test bind Unix sockets in there
(the control socket in `state/run/`), and a socket path may hold at most
107 bytes, so the run's root is made short: `/tmp/kwt-XXXXXXXX`, shorter
than pytest's own `/tmp/pytest-of-USER/pytest-N`. Roots left by runs more
than a day old are removed; a run going on meanwhile is never touched.

Before anything runs, the controller compiles `src/` to bytecode once. The
suite starts hundreds of `python -m kittiwake` processes; where
Python does not write bytecode by itself (`PYTHONDONTWRITEBYTECODE`, or a
read-only tree) each of them would compile some 190 modules again, about
0.35 s of CPU per start on the development machine.
"""

from __future__ import annotations

import compileall
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import kittiwake.modules  # noqa: F401  (registers every built-in module)

_ROOT_PREFIX = "kwt-"
_ROOT_KEPT = 24 * 3600.0


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or config.option.basetemp:
        return  # an xdist worker (its root comes from the controller), or chosen by hand
    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob(_ROOT_PREFIX + "*"):
        try:
            if time.time() - old.stat().st_mtime > _ROOT_KEPT:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    config.option.basetemp = tempfile.mkdtemp(prefix=_ROOT_PREFIX, dir=tmp)
    compileall.compile_dir(str(_SRC), quiet=1)  # a tree that cannot be written is fine


_SRC = Path(__file__).resolve().parent.parent / "src"
