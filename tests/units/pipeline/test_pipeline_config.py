"""Pipeline configuration: every error of docs/pipeline.md, "Configuration errors",
with its line.

Each bad configuration is a whole file; the error must be `t.conf:LINE: message`
exactly, LINE being the directive the message is about (the later one when
two directives conflict: docs/config-language.md).
"""

from __future__ import annotations

from pathlib import Path

import pipefakes
import pytest
from pipefakes import build

from kittiwake.errors import ConfigError, SMTPError
from kittiwake.pipeline.config import DestinationBlock

MIXED_SOURCES = (
    "can't put handling directives together with source rules, did you mean to put "
    "it into 'default_source' block or into all source blocks?"
)
MIXED_DESTS = (
    "can't put handling directives together with destination rules, did you mean to "
    "put it into 'default_destination' block or into all destination blocks?"
)
NO_DEFAULT_SOURCE = (
    "missing or empty default source block, use default_source { reject } to reject messages"
)
NO_DEFAULT_DEST = (
    "missing or empty default destination block, "
    "use default_destination { reject } to reject messages"
)
EMPTY_PIPELINE = "empty pipeline configuration, use 'reject' to reject messages"
EMPTY_SOURCE = "empty source block, use 'reject' to reject messages"

BAD = {
    # -- root --------------------------------------------------------------
    "empty root": ("kw_pipe x {\n}\n", 1, EMPTY_PIPELINE),
    "root with only checks": ("kw_pipe x {\n  check { test c }\n}\n", 1, EMPTY_PIPELINE),
    "root with only source_in": (
        "kw_pipe x {\n  source_in &t { reject }\n}\ntable.static t { entry a b }\n",
        1,
        EMPTY_PIPELINE,
    ),
    "deliver_to after source": (
        "kw_pipe x {\n  source a.org { reject }\n  default_source { reject }\n"
        "  deliver_to test t\n}\n",
        4,
        MIXED_SOURCES,
    ),
    "source after deliver_to": (
        "kw_pipe x {\n  deliver_to test t\n  source a.org { reject }\n}\n",
        3,
        MIXED_SOURCES,
    ),
    "default_source after reject": (
        "kw_pipe x {\n  reject\n  default_source { reject }\n}\n",
        3,
        MIXED_SOURCES,
    ),
    "destination rule beside source rule": (
        "kw_pipe x {\n  source a.org { reject }\n  destination b.org { reject }\n}\n",
        3,
        MIXED_SOURCES,
    ),
    "default_destination beside default_source": (
        "kw_pipe x {\n  default_source { reject }\n  default_destination { reject }\n}\n",
        3,
        MIXED_SOURCES,
    ),
    "source rules without default": (
        "kw_pipe x {\n  source a.org { reject }\n  source b.org { reject }\n}\n",
        2,
        NO_DEFAULT_SOURCE,
    ),
    "empty default_source": (
        "kw_pipe x {\n  source a.org { reject }\n  default_source {\n  }\n}\n",
        3,
        NO_DEFAULT_SOURCE,
    ),
    "default_source without block": (
        "kw_pipe x {\n  source a.org { reject }\n  default_source\n}\n",
        3,
        NO_DEFAULT_SOURCE,
    ),
    "two default_source": (
        "kw_pipe x {\n  default_source { reject }\n  default_source { reject }\n}\n",
        3,
        "duplicate 'default_source' block",
    ),
    "empty source block": (
        "kw_pipe x {\n  source a.org {\n  }\n  default_source { reject }\n}\n",
        2,
        EMPTY_SOURCE,
    ),
    "source block with only checks": (
        "kw_pipe x {\n  source a.org {\n    check { test c }\n  }\n"
        "  default_source { reject }\n}\n",
        2,
        EMPTY_SOURCE,
    ),
    "source block with only destination_in": (
        "kw_pipe x {\n  source a.org {\n    destination_in &t { reject }\n  }\n"
        "  default_source { reject }\n}\ntable.static t { entry a b }\n",
        2,
        EMPTY_SOURCE,
    ),
    "source_in without block": (
        "kw_pipe x {\n  source_in &t\n  reject\n}\ntable.static t { entry a b }\n",
        2,
        EMPTY_SOURCE,
    ),
    "source without rules": (
        "kw_pipe x {\n  source { reject }\n  default_source { reject }\n}\n",
        2,
        "expected at least one source matching rule",
    ),
    "invalid source rule": (
        "kw_pipe x {\n  source a.org .. { reject }\n  default_source { reject }\n}\n",
        2,
        "invalid source match rule: ..",
    ),
    "invalid source address rule": (
        "kw_pipe x {\n  source @example. { reject }\n  default_source { reject }\n}\n",
        2,
        "invalid source match rule: @example.",
    ),
    "unknown root directive": (
        "kw_pipe x {\n  reject\n  frobnicate\n}\n",
        3,
        "unknown pipeline directive: frobnicate",
    ),
    "bad dmarc": ("kw_pipe x {\n  dmarc maybe\n  reject\n}\n", 2, "invalid argument for dmarc"),
    # -- source level ----------------------------------------------------------
    "deliver_to after destination": (
        "kw_pipe x {\n  destination a.org { reject }\n  default_destination { reject }\n"
        "  deliver_to test t\n}\n",
        4,
        MIXED_DESTS,
    ),
    "destination after reject": (
        "kw_pipe x {\n  reject\n  destination a.org { reject }\n}\n",
        3,
        MIXED_DESTS,
    ),
    "destination rules without default": (
        "kw_pipe x {\n  destination a.org { reject }\n}\n",
        2,
        NO_DEFAULT_DEST,
    ),
    "empty default_destination": (
        "kw_pipe x {\n  destination a.org { reject }\n  default_destination {\n  }\n}\n",
        3,
        NO_DEFAULT_DEST,
    ),
    "two default_destination": (
        "kw_pipe x {\n  source a.org {\n    default_destination { reject }\n"
        "    default_destination { reject }\n  }\n  default_source { reject }\n}\n",
        4,
        "duplicate 'default_destination' block",
    ),
    "destination without rules": (
        "kw_pipe x {\n  destination { reject }\n  default_destination { reject }\n}\n",
        2,
        "expected at least one destination match rule",
    ),
    "invalid destination rule": (
        "kw_pipe x {\n  destination x@@ { reject }\n  default_destination { reject }\n}\n",
        2,
        "invalid destination match rule: x@@",
    ),
    "dmarc at source level": (
        "kw_pipe x {\n  source a.org {\n    dmarc\n    reject\n  }\n"
        "  default_source { reject }\n}\n",
        3,
        "unknown pipeline directive: dmarc",
    ),
    # -- destination level -------------------------------------------------------
    "reject then deliver_to": (
        "kw_pipe x {\n  default_destination {\n    reject\n    deliver_to test t\n  }\n}\n",
        4,
        "can't use 'reject' and 'deliver_to' together",
    ),
    "deliver_to then reject": (
        "kw_pipe x {\n  default_destination {\n    deliver_to test t\n    reject\n  }\n}\n",
        4,
        "can't use 'reject' and 'deliver_to' together",
    ),
    "reroute then reject": (
        "kw_pipe x {\n  default_destination {\n    reroute { reject }\n    reject\n  }\n}\n",
        4,
        "can't use 'reject' and 'reroute' together",
    ),
    "deliver_to without arguments": (
        "kw_pipe x {\n  deliver_to\n}\n",
        2,
        "required at least one argument",
    ),
    "reroute without block": (
        "kw_pipe x {\n  reroute\n}\n",
        2,
        "missing or empty reroute pipeline configuration",
    ),
    "reroute with empty block": (
        "kw_pipe x {\n  reroute {\n  }\n}\n",
        2,
        "missing or empty reroute pipeline configuration",
    ),
    "reroute content is a pipeline": (
        "kw_pipe x {\n  reroute {\n    check { test c }\n  }\n}\n",
        2,
        EMPTY_PIPELINE,
    ),
    "error inside reroute": (
        "kw_pipe x {\n  reroute {\n    reject\n    bogus\n  }\n}\n",
        4,
        "unknown pipeline directive: bogus",
    ),
    "source directive at destination level": (
        "kw_pipe x {\n  destination a.org {\n    source b.org { reject }\n  }\n"
        "  default_destination { reject }\n}\n",
        3,
        "invalid directive: source",
    ),
    "destination with only checks": (
        "kw_pipe x {\n  destination a.org {\n    check { test c }\n  }\n"
        "  default_destination { reject }\n}\n",
        2,
        "destination block has neither deliver_to nor reject",
    ),
    "empty destination": (
        "kw_pipe x {\n  destination a.org {\n  }\n  default_destination { reject }\n}\n",
        2,
        "destination block has neither deliver_to nor reject",
    ),
    "destination_in without block": (
        "kw_pipe x {\n  destination_in &t\n  reject\n}\ntable.static t { entry a b }\n",
        2,
        "destination block has neither deliver_to nor reject",
    ),
    "deliver_to a table": (
        "kw_pipe x {\n  deliver_to &t\n}\ntable.static t { entry a b }\n",
        2,
        "deliver_to: module table.static (t) cannot be used here: it is not a delivery target",
    ),
    "check is not a check": (
        "kw_pipe x {\n  check &t\n  reject\n}\ntable.static t { entry a b }\n",
        2,
        "check: module table.static (t) cannot be used here: it is not a check",
    ),
    "source_in with a target": (
        "kw_pipe x {\n  source_in &t { reject }\n  reject\n}\ntarget.test t { }\n",
        2,
        "source_in: module target.test (t) cannot be used here: it is not a table",
    ),
    "source_in without table": (
        "kw_pipe x {\n  source_in { reject }\n  reject\n}\n",
        2,
        "source_in: expected a table (&name or module name)",
    ),
    "unknown target module": (
        "kw_pipe x {\n  deliver_to nosuch\n}\n",
        2,
        "unknown module: nosuch (namespace: target)",
    ),
    # -- reject arguments -----------------------------------------------------------
    "reject code not a number": (
        "kw_pipe x {\n  reject 55x\n}\n",
        2,
        "reject: invalid error code integer: '55x'",
    ),
    "reject code class": (
        "kw_pipe x {\n  reject 354\n}\n",
        2,
        "reject: error code should start with either 4 or 5",
    ),
    "reject enhanced parts": (
        "kw_pipe x {\n  reject 550 5.7\n}\n",
        2,
        "reject: wrong amount of enhanced code parts: '5.7'",
    ),
    "reject enhanced not numeric": (
        "kw_pipe x {\n  reject 550 5.x.1\n}\n",
        2,
        "reject: invalid enhanced code: '5.x.1'",
    ),
    "reject enhanced class": (
        "kw_pipe x {\n  reject 550 2.7.0\n}\n",
        2,
        "reject: enhanced code should use either 4 or 5 as a first number",
    ),
    "reject classes disagree": (
        "kw_pipe x {\n  reject 450 5.7.0\n}\n",
        2,
        "reject: enhanced code 5.7.0 does not match the class of error code 450",
    ),
    "reject empty message": (
        'kw_pipe x {\n  reject 550 5.7.0 ""\n}\n',
        2,
        "reject: message can't be empty",
    ),
    "reject too many": (
        'kw_pipe x {\n  reject 550 5.7.0 "a" b\n}\n',
        2,
        "reject: invalid count of arguments: expected [CODE [ENHANCED-CODE [MESSAGE]]]",
    ),
    "two rejects": ("kw_pipe x {\n  reject\n  reject 450\n}\n", 3, "duplicate 'reject' directive"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configuration(case: str, tmp_path: Path) -> None:
    text, line, message = BAD[case]
    with pytest.raises(ConfigError) as info:
        build(text, tmp_path)
    assert str(info.value) == f"t.conf:{line}: {message}"


def _reject(text: str, tmp: Path) -> SMTPError:
    pipeline = build(f"kw_pipe x {{\n  {text}\n}}\n", tmp)
    error = pipeline.routing.default.default.reject
    assert error is not None
    return error


@pytest.mark.parametrize(
    ("directive", "code", "enhanced", "message"),
    [
        ("reject", 554, (5, 7, 0), "Message rejected due to a local policy"),
        ("reject 450", 450, (4, 7, 0), "Message rejected due to a local policy"),
        ("reject 550", 550, (5, 7, 0), "Message rejected due to a local policy"),
        ("reject 501 5.1.8", 501, (5, 1, 8), "Message rejected due to a local policy"),
        ('reject 501 5.1.8 "Use Submission"', 501, (5, 1, 8), "Use Submission"),
        ("reject 421 4.4.5 Later", 421, (4, 4, 5), "Later"),
    ],
)
def test_reject_arguments(
    directive: str, code: int, enhanced: tuple[int, int, int], message: str, tmp_path: Path
) -> None:
    error = _reject(directive, tmp_path)
    assert (error.code, error.enhanced, error.message) == (code, enhanced, message)


def test_implicit_blocks(tmp_path: Path) -> None:
    """No source rules: the root's handling directives become the default source's
    default destination; check/modify stay at their level (docs/pipeline.md)."""
    pipeline = build(
        "kw_pipe x {\n  check { test root }\n  modify { test m }\n"
        "  deliver_to test t\n  deliver_to test u\n}\n",
        tmp_path,
    )
    routing = pipeline.routing
    assert [c.name for c in routing.checks] == ["root"]  # type: ignore[attr-defined]
    assert [m.name for m in routing.modifiers] == ["m"]  # type: ignore[attr-defined]
    source = routing.default
    assert not routing.rules and not source.rules and not source.checks
    dest = source.default
    assert isinstance(dest, DestinationBlock)
    assert [t.name for t in dest.targets] == ["t", "u"]  # type: ignore[attr-defined]
    assert dest.checks == () and dest.modifiers == ()


def test_implicit_destination_keeps_source_checks(tmp_path: Path) -> None:
    pipeline = build(
        "kw_pipe x {\n  source a.org {\n    check { test s }\n    deliver_to test t\n  }\n"
        "  default_source { reject }\n}\n",
        tmp_path,
    )
    source = pipeline.routing.rules["a.org"]
    assert [c.name for c in source.checks] == ["s"]  # type: ignore[attr-defined]
    assert source.default.checks == ()
    assert [t.name for t in source.default.targets] == ["t"]  # type: ignore[attr-defined]


def test_source_in_and_destination_in_are_not_rules(tmp_path: Path) -> None:
    """`source_in` next to handling directives still gives an implicit default."""
    pipeline = build(
        "table.static t { entry a b }\n"
        "kw_pipe x {\n  source_in &t { deliver_to test in }\n  deliver_to test out\n"
        "  destination_in &t { reject }\n}\n",
        tmp_path,
    )
    routing = pipeline.routing
    assert len(routing.tables) == 1
    default = routing.default
    assert len(default.tables) == 1
    assert [t.name for t in default.default.targets] == ["out"]  # type: ignore[attr-defined]


def test_rules_are_normalised(tmp_path: Path) -> None:
    pipeline = build(
        "kw_pipe x {\n"
        "  destination EXAMPLE.org. xn--9ca.example.com Postmaster Foo@E\u0301.Example.COM "
        "{ deliver_to test t }\n"
        "  default_destination { reject }\n}\n",
        tmp_path,
    )
    rules = pipeline.routing.default.rules
    assert sorted(rules) == sorted(
        [
            "example.org",
            "\u00e9.example.com",
            "postmaster",
            "foo@\u00e9.example.com",
        ]
    )


def test_duplicate_rule_first_wins_with_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = build(
        "kw_pipe x {\n"
        "  destination example.org { deliver_to test first }\n"
        "  destination EXAMPLE.ORG other.org { deliver_to test second }\n"
        "  default_destination { reject }\n}\n",
        tmp_path,
    )
    rules = pipeline.routing.default.rules
    assert [t.name for t in rules["example.org"].targets] == ["first"]  # type: ignore[attr-defined]
    assert [t.name for t in rules["other.org"].targets] == ["second"]  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert "duplicate destination rule ignored" in err
    assert "rule=example.org at=t.conf:3 first=t.conf:2" in err


def test_duplicate_source_rule_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(
        "kw_pipe x {\n  source a.org { reject }\n  source A.org { reject }\n"
        "  default_source { reject }\n}\n",
        tmp_path,
    )
    assert "duplicate source rule ignored" in capsys.readouterr().err


def test_a_rule_repeated_on_one_line_is_harmless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `$(local_domains) = $(hostname) localhost` repeats a name when the
    # host is called localhost: that is one block, nothing to warn about.
    build(
        "kw_pipe x {\n  source a.org a.org { reject }\n  default_source { reject }\n}\n", tmp_path
    )
    assert "duplicate" not in capsys.readouterr().err


def test_destination_checks_warn_about_body_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build(
        "kw_pipe x {\n  destination a.org {\n    check { test c }\n    reject\n  }\n"
        "  default_destination { reject }\n}\n",
        tmp_path,
    )
    assert "checks in a destination block also run at the body stage" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("directives", "enabled"),
    [
        ("", True),
        ("dmarc", True),
        ("dmarc yes", True),
        ("dmarc no", False),
        ("dmarc no\n  dmarc", True),
        ("dmarc no\n  dmarc yes extra", False),
    ],
)
def test_dmarc_directive(directives: str, enabled: bool, tmp_path: Path) -> None:
    pipeline = build(f"kw_pipe x {{\n  {directives}\n  reject\n}}\n", tmp_path)
    assert pipeline.dmarc_enabled is enabled


SPF = "check {\n    test s {\n      dmarc_input spf\n    }\n  }"
DKIM = "check {\n    test d {\n      dmarc_input dkim\n    }\n  }"


@pytest.mark.parametrize(
    ("checks", "dmarc", "runs"),
    [
        ("", "", False),
        (SPF, "", False),
        (f"{SPF}\n  {DKIM}", "", True),
        (f"{SPF}\n  {DKIM}", "dmarc no", False),
    ],
)
def test_dmarc_runs_only_with_spf_and_dkim(
    checks: str, dmarc: str, runs: bool, tmp_path: Path
) -> None:
    pipeline = build(f"kw_pipe x {{\n  {checks}\n  {dmarc}\n  reject\n}}\n", tmp_path)
    assert pipeline.dmarc_runs is runs


def test_dmarc_counts_checks_at_every_level(tmp_path: Path) -> None:
    pipeline = build(
        f"kw_pipe x {{\n  {SPF}\n"
        f"  source a.org {{\n    destination b.org {{\n      {DKIM}\n"
        "      reject\n    }\n    default_destination { reject }\n  }\n"
        "  default_source { reject }\n}\n",
        tmp_path,
    )
    assert pipeline.dmarc_runs


def test_check_groups_are_flattened(tmp_path: Path) -> None:
    pipeline = build(
        "checks shared {\n  test a\n  test b\n}\n"
        "modifiers mods {\n  test m1\n  test m2\n}\n"
        "kw_pipe x {\n  check &shared\n  check {\n    test c\n  }\n"
        "  modify &mods\n  modify { test m3 }\n  reject\n}\n",
        tmp_path,
    )
    routing = pipeline.routing
    assert [c.name for c in routing.checks] == ["a", "b", "c"]  # type: ignore[attr-defined]
    assert [m.name for m in routing.modifiers] == ["m1", "m2", "m3"]  # type: ignore[attr-defined]


def test_named_target_is_shared_inline_targets_are_not(tmp_path: Path) -> None:
    pipeline = build(
        "target.test shared { }\n"
        "kw_pipe x {\n  destination a.org { deliver_to &shared }\n"
        "  destination b.org { deliver_to &shared }\n"
        "  destination c.org { deliver_to test inline }\n"
        "  destination d.org { deliver_to test inline }\n"
        "  default_destination { reject }\n}\n",
        tmp_path,
    )
    rules = pipeline.routing.default.rules
    assert rules["a.org"].targets[0] is rules["b.org"].targets[0]
    assert rules["c.org"].targets[0] is not rules["d.org"].targets[0]
    assert rules["a.org"].targets[0] is pipefakes.FAKES["shared"]
