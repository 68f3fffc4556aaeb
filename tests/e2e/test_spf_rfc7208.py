"""The RFC 7208 test suite, run through kittiwake's SPF evaluation.

The suite is the openspf.org one that pyspf's source distribution ships
(`test/rfc7208-tests.yml`): YAML scenarios, each with zone data and tests
(client address, MAIL FROM, HELO, the expected result or results, and for
some the explanation). It is not copied into this repository: the first
test of a session downloads the sdist of the pyspf version installed
(`pip download`, cached in pytest's cache, or a temporary folder with
`-p no:cacheprovider`) and reads the YAML from it.

Every test serves its scenario's zone from `FakeDNS` on loopback, asks it
through a fresh `kittiwake.dns.Resolver` (short timeout: the suite's
`TIMEOUT` entries cost 0.3 s), and evaluates with `spf_eval.evaluate`, the
function `check.spf` runs in the server. A result must be one the suite
allows; an explanation, where the suite gives one, must match (`DEFAULT`,
the suite's word for "the implementation's own", is our empty one).

Zone data follows the suite's conventions (as its drivers do): records of
the retired SPF type (99) are also served as TXT at names that have no TXT
entry at all (`TXT: NONE` means none, and stops that); a bare `TIMEOUT` in
a name's list makes every type not listed before it time out.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakedns import TIMEOUT, FakeDNS, txt

from kittiwake.checks.spf_eval import evaluate
from kittiwake.dns import Resolver

#: Record types the zone data uses; the ones a bare TIMEOUT makes stall.
TYPES = ("A", "AAAA", "MX", "TXT", "SPF", "PTR", "CNAME")


@dataclass(frozen=True)
class Case:
    name: str
    zone: dict[tuple[str, str], list[str] | str]
    test: dict[str, Any]


def _download(config: pytest.Config) -> Path:
    """pyspf's sdist for the installed version, downloaded once per cache."""
    version = importlib.metadata.version("pyspf")
    cache = getattr(config, "cache", None)
    if cache is not None:
        folder = Path(cache.mkdir("pyspf-sdist"))
    else:
        holder = tempfile.TemporaryDirectory(prefix="kittiwake-pyspf-")
        config.add_cleanup(holder.cleanup)
        folder = Path(holder.name)
    archive = folder / f"pyspf-{version}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet"),
                *("--disable-pip-version-check", "--no-binary", ":all:", "--no-deps"),
                *(f"pyspf=={version}", "-d", str(folder)),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return archive


def _zone(data: dict[str, list[Any]]) -> dict[tuple[str, str], list[str] | str]:
    """FakeDNS records for one scenario's `zonedata` (conventions: module docstring)."""
    records: dict[tuple[str, str], list[str] | str] = {}
    for name, entries in data.items():
        typed: dict[str, list[str]] = {}
        stalled: set[str] = set()
        has_txt = False
        timeout = False
        for entry in entries:
            if entry == "TIMEOUT":
                timeout = True
                break
            ((rtype, value),) = entry.items()
            if value == "TIMEOUT":
                stalled.add(rtype)
                continue
            if rtype == "TXT":
                has_txt = True
            if rtype in ("TXT", "SPF"):
                strings = [value] if isinstance(value, str) else list(value)
                if strings == ["NONE"]:
                    continue
                typed.setdefault(rtype, []).append(txt(*strings))
            else:
                typed.setdefault(rtype, []).append(_rdata(rtype, value))
        if not has_txt and "SPF" in typed and not timeout:
            typed["TXT"] = list(typed["SPF"])
        for rtype, values in typed.items():
            records[(name, rtype)] = values
        for rtype in stalled | (set(TYPES) - set(typed) if timeout else set()):
            records[(name, rtype)] = TIMEOUT
    return records


def _rdata(rtype: str, value: Any) -> str:
    """Zone text of an A, AAAA, MX (`[PREFERENCE, HOST]`), PTR or CNAME value."""
    if rtype == "MX":
        preference, host = value
        return f"{preference} {_absolute(host)}"
    if rtype in ("PTR", "CNAME"):
        return _absolute(value)
    return str(value)


def _absolute(host: str) -> str:
    return host if host.endswith(".") else host + "."


_CASES = pytest.StashKey[list[Case]]()


def _cases(config: pytest.Config) -> list[Case]:
    """Every test of the suite, read once per session."""
    if _CASES not in config.stash:
        config.stash[_CASES] = _read_cases(config)
    return config.stash[_CASES]


def _read_cases(config: pytest.Config) -> list[Case]:
    version = importlib.metadata.version("pyspf")
    with tarfile.open(_download(config)) as tar:
        member = tar.extractfile(f"pyspf-{version}/test/rfc7208-tests.yml")
        assert member is not None
        scenarios = list(yaml.safe_load_all(member.read()))
    cases = []
    for scenario in scenarios:
        zone = _zone(scenario["zonedata"])
        for name, test in scenario["tests"].items():
            cases.append(Case(name, zone, test))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    try:
        cases: list[Case | str] = list(_cases(metafunc.config))
    except (OSError, subprocess.SubprocessError, tarfile.TarError, yaml.YAMLError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        cases = [f"the RFC 7208 suite could not be read: {exc} {detail.decode(errors='replace')}"]
    ids = [c.name if isinstance(c, Case) else "suite-unavailable" for c in cases]
    metafunc.parametrize("case", cases, ids=ids)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeDNS]:
    fake = FakeDNS({})
    try:
        yield fake
    finally:
        fake.close()


def test_the_suite_is_complete(request: pytest.FixtureRequest) -> None:
    """Every scenario of the 2014 suite is there (a truncated download fails here)."""
    assert len(_cases(request.config)) == 203


async def test_rfc7208(case: Case | str, server: FakeDNS) -> None:
    if isinstance(case, str):
        pytest.fail(case, pytrace=False)
    server.records.clear()
    for (name, rtype), value in case.zone.items():
        server.set(name, rtype, value)
    resolver = Resolver(server.address, timeout=0.3)
    test = case.test
    outcome = await evaluate(resolver, str(test["host"]), test["mailfrom"], test["helo"])
    allowed = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert outcome.result in allowed, (test.get("description"), test["spec"], outcome)
    if "explanation" in test:
        expected = "" if test["explanation"] == "DEFAULT" else test["explanation"]
        assert outcome.explanation == expected, (test["spec"], outcome)
