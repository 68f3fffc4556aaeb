"""`check.dkim` configuration (docs/checks.md, "dkim"): defaults, limits, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.checks.base import Check, CheckAction
from kittiwake.checks.dkim import DKIMCheck
from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.module import Endpoint, register, unregister

PROBE = "kw_dkim_check_probe"


class Probe(Endpoint):
    def configure(self, cfg: Directives) -> None:
        self.checks: list[Check] = cfg.modules("check", Check, "check")
        cfg.finish()

    def addresses(self) -> list[str]:
        return []


@pytest.fixture(autouse=True, scope="module")
def _probe() -> Iterator[None]:
    register(PROBE)(Probe)
    yield
    unregister(PROBE)


def build(tmp: Path, line: str) -> DKIMCheck:
    text = f"{PROBE} {{\n    check {line}\n}}\n"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp))
    container.build()
    (probe,) = container.endpoints
    assert isinstance(probe, Probe)
    (check,) = probe.checks
    assert isinstance(check, DKIMCheck)
    return check


def test_defaults(tmp_path: Path) -> None:
    check = build(tmp_path, "dkim")
    assert check.required_fields == ["From", "Subject"]
    assert not check.allow_body_subset and not check.fail_open
    assert check.no_sig_action == check.broken_sig_action == CheckAction("ignore")
    assert check.max_signatures == 10


def test_max_signatures_bounds(tmp_path: Path) -> None:
    assert build(tmp_path, "dkim {\n max_signatures 1\n}").max_signatures == 1
    assert build(tmp_path, "dkim {\n max_signatures 100\n}").max_signatures == 100
    for bad, message in (("0", "at least 1"), ("101", "at most 100")):
        with pytest.raises(ConfigError, match=message):
            build(tmp_path, f"dkim {{\n max_signatures {bad}\n}}")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("dkim yes", "inline arguments are not used"),
        ("dkim {\n fail_open maybe\n}", "fail_open"),
        ("dkim {\n no_sig_action bounce\n}", "invalid action"),
        ("dkim {\n broken_sig_action reject 250\n}", "should start with either 4 or 5"),
        ("dkim {\n required_fields\n}", "expected at least one argument"),
        ("dkim {\n unknown 1\n}", "unexpected directive: unknown"),
    ],
)
def test_errors(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, line)
