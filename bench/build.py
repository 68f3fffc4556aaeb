"""kittiwake as `pip install .` builds it, for the benchmarks and the compiled tests.

`pip install .` compiles the message path's modules with mypyc (setup.py,
docs/performance.md), so that build, not the source tree, is what an
operator runs and what `bench/` measures. `compiled_site()` builds it once
per source revision: the sources are copied to a folder of their own (an
in-tree build would leave `build/` and `*.egg-info` in the checkout), `pip
install --no-deps --target` puts the package there with
`KITTIWAKE_COMPILE=yes` (a build that cannot compile fails instead of
quietly measuring pure Python), and the result is kept in the system's
temporary folder under a hash of every file the build reads. A second
benchmark, or the test suite's second user, finds it built. A lock makes
concurrent callers (pytest workers) wait for one build instead of racing.

Run as `python bench/build.py` to build (or find) it and print its path.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What the build reads besides src/: the build hook and the metadata.
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE")
BUILD_TIMEOUT = 900.0  # seconds: mypyc and the C compiler on two slow cores


class BuildError(RuntimeError):
    """The compiled build failed; the message holds pip's output."""


#: What lies in src/ but is not source: caches and earlier builds' products.
NOT_SOURCE = ("__pycache__", "*.egg-info", "*.pyc", "*.so", "*.c", "*.o")


def source_key() -> str:
    """A hash of every file the build reads: a changed source is a new build."""
    digest = hashlib.sha256()
    files = [ROOT / name for name in BUILD_FILES]
    files += sorted(p for p in (ROOT / "src").rglob("*") if p.is_file() and _source(p))
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _source(path: Path) -> bool:
    parts = path.relative_to(ROOT).parts
    return not any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in NOT_SOURCE)


def copy_sources(dest: Path) -> None:
    """What a build reads, copied to `dest` (which must not exist yet)."""
    dest.mkdir()
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns(*NOT_SOURCE))


def compiled_site() -> Path:
    """A folder holding the compiled `kittiwake` package (for PYTHONPATH)."""
    home = (
        Path(tempfile.gettempdir())
        / f"kittiwake-compiled-{sys.version_info[0]}{sys.version_info[1]}-{source_key()}"
    )
    site = home / "site"
    done = home / "complete"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _build(home, site)
            done.touch()
    return site


def _build(home: Path, site: Path) -> None:
    source = home / "source"
    for path in (source, site):
        shutil.rmtree(path, ignore_errors=True)
    copy_sources(source)
    env = {**os.environ, "KITTIWAKE_COMPILE": "yes", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), "."],
        cwd=source,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(
            f"pip install (compiled) failed:\n{result.stdout}\n{result.stderr}"[-4000:]
        )
    if not list((site / "kittiwake" / "protocol").glob("connection.*.so")):
        raise BuildError(f"{site}: the build holds no compiled modules")


def main() -> int:
    try:
        print(compiled_site())
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
