"""`pip install kittiwake` from a built wheel (docs/production.md, "Installing").

The wheel is built from a copy of the source (so the checkout gets no
`build/` folder), installed into a fresh virtual environment that sees the
already-installed dependencies (`--system-site-packages`, `--no-index`:
nothing is downloaded at install time), and the installed command is run
from an empty folder: `kittiwake version`, and `kittiwake config default`,
which reads default.conf, package data that only a complete wheel has.
Building fetches setuptools and mypy into pip's isolated build environment,
as any build does. This wheel is the pure-Python one (`KITTIWAKE_COMPILE=no`,
what a machine without a C compiler gets); the compiled build is built and
tested by test_compiled.py.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from kw import bench_build

from kittiwake import __version__
from kittiwake.cli.common import default_config_text

ROOT = Path(__file__).resolve().parents[2]

#: Building fetches setuptools, which a slow index can stretch past the
#: suite's 120 s default.
pytestmark = pytest.mark.timeout(600)

#: Run in the venv: print each requirement of the installed kittiwake (not
#: its extras) that no installed distribution satisfies.
CHECK_REQUIREMENTS = """
from importlib import metadata
from packaging.requirements import Requirement
for line in metadata.requires("kittiwake") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        print("missing", req)
        continue
    if not req.specifier.contains(have, prereleases=True):
        print("wrong version", req, have)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    bench_build().copy_sources(source)
    out = tmp / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "KITTIWAKE_COMPILE": "no"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("kittiwake-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_the_package_data_and_metadata(wheel: Path) -> None:
    assert wheel.name == f"kittiwake-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"kittiwake-{__version__}.dist-info"
        metadata = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    for data in ("kittiwake/default.conf", "kittiwake/py.typed", f"{info}/licenses/LICENSE"):
        assert data in names, data
    # Every module of the source tree is in the wheel.
    sources = {
        p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "kittiwake").rglob("*.py")
    }
    assert sources <= names, sorted(sources - names)
    # What PyPI shows.
    assert metadata["Name"] == "kittiwake"
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata["Keywords"] and metadata["Summary"]
    assert metadata.get_all("Author") or metadata.get_all("Author-email")
    classifiers = metadata.get_all("Classifier") or []
    assert "Topic :: Communications :: Email :: Mail Transport Agents" in classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Source", "Changelog"} <= set(urls)
    assert "kittiwake = kittiwake.cli:main" in entry_points
    assert "kittiwake-sendmail = kittiwake.cli.sendmail:console" in entry_points


def test_installed_wheel_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "KITTIWAKE_CONFIG", "VIRTUAL_ENV")
    }
    environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # --force-reinstall: this machine may have kittiwake installed already
    # (an editable install of a checkout), which pip would call satisfied;
    # --no-deps with it, or pip would reinstall every dependency from an
    # index it is told not to use. The dependencies are checked below.
    result = subprocess.run(
        [
            str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
            "--force-reinstall", str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
    check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    command = venv / "bin" / "kittiwake"

    def run(*args: str) -> str:
        done = subprocess.run(
            [str(command), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=empty,
            env=environ,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    # The package imported is the one in the venv, not this checkout.
    where = subprocess.run(
        [str(python), "-c", "import kittiwake; print(kittiwake.__file__)"],
        capture_output=True,
        text=True,
        cwd=empty,
        env=environ,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    # Every dependency the wheel declares is there, at a version it allows.
    unmet = subprocess.run(
        [str(python), "-c", CHECK_REQUIREMENTS],
        capture_output=True,
        text=True,
        cwd=empty,
        env=environ,
        timeout=60,
        check=False,
    )
    assert unmet.returncode == 0 and unmet.stdout == "", unmet.stdout + unmet.stderr
    assert run("version").startswith(f"kittiwake {__version__} ")
    assert run("version").endswith(", pure Python)\n")
    # Byte for byte what this checkout prints: the whole default.conf came along.
    assert run("config", "default") == default_config_text()
    assert (venv / "bin" / "kittiwake-sendmail").is_file()
    assert not any(empty.iterdir()), "a command wrote into the current folder"
