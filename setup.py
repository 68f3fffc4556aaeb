"""Build hook: the message path's modules compiled to C with mypyc.

Everything else about the package is in pyproject.toml; this file only
adds the compiled modules (docs/performance.md). mypyc turns the listed
modules, which are type-checked strictly, into C extensions next to their
`.py` sources: the same code, run without the interpreter's bytecode loop
(1.1 to 1.4 times the messages per second on the discard path).

`KITTIWAKE_COMPILE` chooses:

* `auto` (the default): compile when a C compiler is found, else build the
  pure-Python package and say so;
* `yes`: compile, and fail the build when that is impossible;
* `no`: never compile.

Editable installs (`pip install -e .`) are never compiled: a compiled
module would hide every later edit of its source. Nor is anything
compiled for the steps that only read metadata (`egg_info`, `dist_info`,
`sdist`), which pip runs before the build proper.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import setup

#: The setup.py commands that build extensions; pip runs `bdist_wheel`.
BUILDS = ("bdist_wheel", "build_ext", "build", "install")

#: The modules every message passes through, in the order it does. A module
#: is listed only when mypyc compiles it as it is and its compiled form
#: passes the module's tests: not `message/buffer.py` (async generators),
#: not `pipeline/routing.py` (a frozen generic dataclass with slots), not
#: `pipeline/check_runner.py` (it drives coroutines by hand with a
#: `types.coroutine` generator, which crashed compiled when a stage was
#: cancelled), not `server/session_config.py` (docs/performance.md), and
#: none whose classes a plugin subclasses at run time.
COMPILED = [
    "src/kittiwake/log.py",
    "src/kittiwake/metrics.py",
    "src/kittiwake/server/session.py",
    "src/kittiwake/server/errors.py",
    "src/kittiwake/server/transaction.py",
    "src/kittiwake/protocol/connection.py",
    "src/kittiwake/protocol/content.py",
    "src/kittiwake/protocol/events.py",
    "src/kittiwake/protocol/parse.py",
    "src/kittiwake/protocol/replies.py",
    "src/kittiwake/address/normalize.py",
    "src/kittiwake/address/path.py",
    "src/kittiwake/message/header.py",
    "src/kittiwake/message/meta.py",
    "src/kittiwake/pipeline/pipeline.py",
    "src/kittiwake/pipeline/received.py",
    # Run by every Maildir delivery agent for each message it writes.
    "src/kittiwake/storage/maildir_files.py",
]


def _compiler() -> str | None:
    """The C compiler the build would use, if it is installed."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0])


def ext_modules() -> list[object]:
    choice = os.environ.get("KITTIWAKE_COMPILE", "auto").strip().lower()
    if choice not in ("auto", "yes", "no"):
        raise SystemExit(f"KITTIWAKE_COMPILE={choice!r}: expected auto, yes or no")
    if choice == "no" or not any(command in sys.argv for command in BUILDS):
        return []
    if _compiler() is None:
        if choice == "yes":
            raise SystemExit("KITTIWAKE_COMPILE=yes: no C compiler found (install gcc)")
        print("kittiwake: no C compiler found, building pure Python", file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if choice == "yes":
            raise SystemExit("KITTIWAKE_COMPILE=yes: mypyc is missing (pip install mypy)") from None
        print("kittiwake: mypyc is missing, building pure Python", file=sys.stderr)
        return []
    return list(mypycify(COMPILED, opt_level="3"))


if __name__ == "__main__":  # as pip's build backend runs it; tests import it
    setup(ext_modules=ext_modules())
