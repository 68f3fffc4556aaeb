"""check.authorize_sender: docs/checks.md ("`authorize_sender`", and the actions).

Every test builds the check from configuration text through a real
`Container`, with real table modules, and drives its per-message state the
way the pipeline does: `check_state(meta)`, then the sender stage, then the
body stage; a few go through the pipeline's own `CheckRunner`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from kittiwake import log
from kittiwake.checks.authorize_sender import AuthorizeSender
from kittiwake.checks.base import Check, CheckResult
from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError, SMTPError
from kittiwake.message import ConnInfo, MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Endpoint, Module, register, unregister
from kittiwake.pipeline.check_runner import CheckRunner

PROBE = "kw_authz_probe"


class Probe(Endpoint):
    """A listening-nothing endpoint that only references checks."""

    def configure(self, cfg: Directives) -> None:
        self.checks: list[Check] = cfg.modules("check", Check, "check")
        cfg.finish()

    def addresses(self) -> list[str]:
        return []


class FailingTable(Module):
    """`kw_failing`: every lookup fails, like a database that is down."""

    async def lookup(self, key: str) -> str | None:
        raise RuntimeError("database unreachable")


@pytest.fixture(autouse=True, scope="module")
def _fakes() -> Iterator[None]:
    register(PROBE)(Probe)
    register("table.kw_failing")(FailingTable)
    yield
    unregister(PROBE)
    unregister("table.kw_failing")


Build = Callable[..., Awaitable[AuthorizeSender]]


@pytest.fixture
async def containers() -> AsyncIterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in reversed(made):
        await c.stop()


@pytest.fixture
def build(tmp_path: Path, containers: list[Container]) -> Build:
    async def make(block: str = "", *, before: str = "") -> AuthorizeSender:
        text = f"{before}\n{PROBE} {{\n check authorize_sender {{\n{block}\n }}\n}}\n"
        container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
        container.build()
        container.prepare_dirs()
        await container.start()
        containers.append(container)
        (probe,) = container.endpoints
        assert isinstance(probe, Probe)
        (check,) = probe.checks
        assert isinstance(check, AuthorizeSender)
        return check

    return make


def config_error(tmp_path: Path, block: str) -> str:
    text = f"{PROBE} {{\n check authorize_sender {block}\n}}\n"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    with pytest.raises(ConfigError) as info:
        container.build()
    return str(info.value)


def meta(user: str | None = "alice@example.org", *, local: bool = False) -> MsgMeta:
    conn = None if local else ConnInfo(remote_ip="192.0.2.1", auth_user=user, endpoint="submission")
    return MsgMeta(id="0f3a91c2", conn=conn)


def header(*lines: str) -> Header:
    return Header.parse(b"".join(line.encode() + b"\r\n" for line in lines))


async def body() -> Buffer:
    buf = Buffer.ram()
    await buf.write(b"hello\r\n")
    await buf.finish()
    return buf


async def sender(
    check: AuthorizeSender, mail_from: str, user: str | None = "alice@example.org"
) -> CheckResult:
    state = await check.check_state(meta(user))
    try:
        assert (await state.check_connection()).reason is None
        return await state.check_sender(mail_from)
    finally:
        await state.close()


async def body_stage(
    check: AuthorizeSender, *lines: str, user: str | None = "alice@example.org"
) -> CheckResult:
    state = await check.check_state(meta(user))
    try:
        return await state.check_body(header(*lines), await body())
    finally:
        await state.close()


def verdict(res: CheckResult) -> str:
    """`reject|quarantine|ignore CODE ENH TEXT`, or `ok`."""
    if res.reason is None:
        assert not res.reject and not res.quarantine
        return "ok"
    kind = "quarantine" if res.quarantine else "reject" if res.reject else "ignore"
    assert res.reason.check_name == "check.authorize_sender"
    return f"{kind} {res.reason}"


NO_MATCH = "reject 553 5.7.0 Unauthorized use of sender address"


# --- MAIL FROM with the defaults (identity tables, auto normalisation) ------------


@pytest.mark.parametrize(
    ("user", "mail_from", "expected"),
    [
        ("alice@example.org", "alice@example.org", "ok"),
        ("alice@example.org", "Alice@EXAMPLE.org", "ok"),  # from_normalize auto
        ("ALICE@Example.ORG", "alice@example.org", "ok"),  # auth_normalize auto, raw identity
        ("alice@example.org", "alice@example.org.", "ok"),  # trailing dot dropped
        ("alice@example.org", "alice@xn--bcher-kva.example", NO_MATCH),
        ("alice@bücher.example", "alice@xn--bcher-kva.example", "ok"),  # U-labels both sides
        ("alice@example.org", "bob@example.org", NO_MATCH),
        ("alice@example.org", "alice+tag@example.org", NO_MATCH),
        ("alice", "alice@example.org", NO_MATCH),
        ("alice@example.org", "", "reject 553 5.1.7 Unable to normalize sender address"),
        (
            "alice@example.org",
            "al ice@example.org",
            "reject 553 5.1.7 Unable to normalize sender address",
        ),
        (
            "al ice",
            "alice@example.org",
            "reject 535 5.7.8 Unable to normalize authorization username",
        ),
        (None, "alice@example.org", "reject 530 5.7.0 Authentication required"),
        ("", "alice@example.org", "reject 530 5.7.0 Authentication required"),
    ],
)
async def test_sender_stage_defaults(
    build: Build, user: str | None, mail_from: str, expected: str
) -> None:
    check = await build()
    assert verdict(await sender(check, mail_from, user)) == expected


async def test_locally_generated_messages_are_skipped(build: Build) -> None:
    check = await build()
    state = await check.check_state(meta(local=True))
    assert verdict(await state.check_sender("anyone@example.org")) == "ok"
    assert verdict(await state.check_body(header("From: anyone@x"), await body())) == "ok"
    assert verdict(await state.check_body(header("Subject: no from"), await body())) == "ok"


async def test_rcpt_and_connection_stages_pass(build: Build) -> None:
    check = await build()
    state = await check.check_state(meta(None))
    assert verdict(await state.check_connection()) == "ok"
    assert verdict(await state.check_rcpt("x@y")) == "ok"


# --- Tables --------------------------------------------------------------------------


USERS = """
 user_to_email static {
   entry alice alice@example.org alice@example.net
   entry bob example.com
   entry root *
   entry empty ""
 }
"""


@pytest.mark.parametrize(
    ("user", "mail_from", "expected"),
    [
        ("alice", "alice@example.org", "ok"),
        ("Alice", "ALICE@example.net", "ok"),
        ("alice", "alice@example.com", NO_MATCH),
        ("bob", "anyone@example.com", "ok"),  # a domain value
        ("bob", "anyone@EXAMPLE.com", "ok"),
        ("bob", "anyone@sub.example.com", NO_MATCH),
        ("root", "whoever@wherever.example", "ok"),  # "*"
        ("carol", "carol@example.org", NO_MATCH),  # user not in the table
        ("empty", "x@example.org", NO_MATCH),
    ],
)
async def test_user_to_email(build: Build, user: str, mail_from: str, expected: str) -> None:
    check = await build(USERS)
    assert verdict(await sender(check, mail_from, user)) == expected


async def test_prepare_email_maps_aliases(build: Build, tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text(
        "postmaster@example.org: alice@example.org\nteam@example.org: bob@x, alice@example.org\n"
    )
    check = await build(f" prepare_email file {aliases}\n{USERS}")
    assert verdict(await sender(check, "Postmaster@example.org", "alice")) == "ok"
    assert verdict(await sender(check, "team@example.org", "alice")) == "ok"  # any value
    assert verdict(await sender(check, "alice@example.org", "alice")) == "ok"  # not found: itself
    assert verdict(await sender(check, "postmaster@example.org", "bob")) == NO_MATCH


async def test_prepare_email_replaces_the_address(build: Build) -> None:
    # Once mapped, the original address no longer counts.
    check = await build(" prepare_email static { entry alice@example.org someone@else.example }")
    assert verdict(await sender(check, "alice@example.org")) == NO_MATCH


async def test_tables_by_reference_and_regexp(build: Build) -> None:
    check = await build(
        ' user_to_email &users\n prepare_email regexp "(.+)\\+.*@(.+)" "$1@$2"',
        before="table.static users { entry alice@example.org alice@example.org }",
    )
    assert verdict(await sender(check, "alice+lists@example.org")) == "ok"
    assert verdict(await sender(check, "alice@example.org")) == "ok"
    assert verdict(await sender(check, "bob+x@example.org")) == NO_MATCH


async def test_values_are_compared_exactly(build: Build) -> None:
    # Table values must be written normalised: an upper-case value never matches.
    check = await build(" user_to_email static { entry alice Alice@Example.org }")
    assert verdict(await sender(check, "alice@example.org", "alice")) == NO_MATCH


async def test_lookup_failure_is_err_action(build: Build) -> None:
    failing = await build(" user_to_email kw_failing")
    assert verdict(await sender(failing, "alice@example.org")) == (
        "reject 454 4.7.0 Internal error during policy check"
    )
    failing = await build(" prepare_email kw_failing")
    assert verdict(await sender(failing, "alice@example.org")) == (
        "reject 454 4.7.0 Internal error during policy check"
    )


async def test_unusable_address_is_err_action(build: Build) -> None:
    # noop keeps a value without '@': its domain cannot be taken.
    check = await build(" from_normalize noop")
    assert verdict(await sender(check, "no-at-sign")) == (
        "reject 454 4.7.0 Internal error during policy check"
    )


async def test_postmaster_has_no_domain_to_match(build: Build) -> None:
    check = await build(' from_normalize noop\n user_to_email static { entry alice "" postmaster }')
    assert verdict(await sender(check, "postmaster", "alice")) == "ok"
    assert verdict(await sender(check, "PostMaster", "alice")) == NO_MATCH


# --- Normalisation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "user", "mail_from", "expected"),
    [
        (" auth_normalize noop", "Alice@example.org", "alice@example.org", NO_MATCH),
        (" auth_normalize casefold", "ALICE@EXAMPLE.ORG", "alice@example.org", "ok"),
        (" auth_normalize precis_casefold", "ALICE@EXAMPLE.ORG", "alice@example.org", "ok"),
        (" from_normalize noop", "alice@example.org", "Alice@example.org", NO_MATCH),
        (" from_normalize precis_email", "alice@example.org", "Alice@example.org", NO_MATCH),
        (" from_normalize precis_email", "alice@example.org", "alice@EXAMPLE.org", "ok"),
        (" from_normalize precis_casefold_email", "alice@example.org", "ALICE@example.org", "ok"),
        # casefold keeps the null sender, which then has no domain to compare
        (
            " from_normalize casefold",
            "alice@example.org",
            "",
            "reject 454 4.7.0 Internal error during policy check",
        ),
    ],
)
async def test_normalisation_functions(
    build: Build, block: str, user: str, mail_from: str, expected: str
) -> None:
    check = await build(block)
    assert verdict(await sender(check, mail_from, user)) == expected


# --- Actions ----------------------------------------------------------------------


async def test_actions_and_overrides(build: Build) -> None:
    check = await build(
        " unauth_action ignore\n"
        ' no_match_action reject 550 5.7.1 "Not your address"\n'
        " err_action quarantine\n"
    )
    assert verdict(await sender(check, "x@y", None)) == ("ignore 530 5.7.0 Authentication required")
    res = await sender(check, "bob@example.org")
    assert verdict(res) == "reject 550 5.7.1 Not your address"
    assert res.reason is not None
    assert "Unauthorized use of sender address" in res.reason.reason  # kept for the log
    assert verdict(await sender(check, "")) == (
        "quarantine 553 5.1.7 Unable to normalize sender address"
    )


async def test_reject_with_only_a_code(build: Build) -> None:
    check = await build(" no_match_action reject 450")
    assert verdict(await sender(check, "bob@example.org")) == (
        "reject 450 4.7.0 Message rejected due to a local policy"
    )


# --- The header (body stage) -------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["From: alice@example.org"], "ok"),
        (["From: Alice <ALICE@example.org>"], "ok"),
        (["From: =?utf-8?q?Al=C3=AFce?= <alice@example.org>"], "ok"),
        (["From: bob@example.org"], NO_MATCH),
        (["Subject: none"], "reject 550 5.7.0 Missing From header"),
        (["From:"], "reject 550 5.7.0 Missing From header"),
        (["From: not an address"], "reject 550 5.7.0 Malformed From header"),
        (["From: undisclosed:;"], "reject 550 5.7.0 Malformed From header"),
        (
            ["From: alice@example.org, bob@example.org", "Sender: alice@example.org"],
            "reject 550 5.7.0 Multiple From addresses are not allowed",
        ),
        (
            ["From: alice@example.org", "Sender: <a@b> junk"],
            "reject 550 5.7.0 Malformed Sender header",
        ),
        (["From: bob@example.org", "Sender: Alice <alice@example.org>"], "ok"),
        (["From: bob@example.org", "Sender: carol@example.org"], NO_MATCH),
        (["From: alice@example.org", "Sender: carol@example.org"], "ok"),
        (["From: bob@example.org", "Sender:"], NO_MATCH),
        (["From: bob@example.org", "From: alice@example.org"], NO_MATCH),  # first one counts
    ],
)
async def test_body_stage(build: Build, lines: list[str], expected: str) -> None:
    check = await build()
    assert verdict(await body_stage(check, *lines)) == expected


async def test_body_stage_unauthenticated_is_no_match(build: Build) -> None:
    # As in maddy: a From that is not authorised for any reason ends in
    # no_match_action at the body stage, even when the reason was "no user".
    check = await build(" unauth_action ignore")
    assert verdict(await body_stage(check, "From: alice@example.org", user=None)) == NO_MATCH


async def test_check_header_no(build: Build) -> None:
    check = await build(" check_header no")
    assert verdict(await body_stage(check, "Subject: none")) == "ok"
    assert verdict(await body_stage(check, "From: bob@example.org")) == "ok"
    assert verdict(await sender(check, "bob@example.org")) == NO_MATCH  # MAIL FROM still checked


async def test_malformed_action_and_its_fallback(build: Build) -> None:
    check = await build(" malformed_action ignore\n err_action quarantine")
    assert (
        verdict(await body_stage(check, "Subject: none")) == "ignore 550 5.7.0 Missing From header"
    )
    check = await build(" err_action quarantine")
    assert (
        verdict(await body_stage(check, "From: x")) == "quarantine 550 5.7.0 Malformed From header"
    )
    assert verdict(await sender(check, "")) == (
        "quarantine 553 5.1.7 Unable to normalize sender address"
    )


async def test_header_uses_the_tables(build: Build) -> None:
    check = await build(USERS)
    assert verdict(await body_stage(check, "From: Bob <x@example.com>", user="bob")) == "ok"
    assert verdict(await body_stage(check, "From: x@example.org", user="bob")) == NO_MATCH


# --- Driven by the pipeline's CheckRunner ---------------------------------------------


async def test_through_the_check_runner(build: Build) -> None:
    check = await build()
    runner = CheckRunner(meta("alice@example.org"), log.get("test"))
    try:
        await runner.check_sender([check], "alice@example.org")
        await runner.check_rcpt([check], "rcpt@example.net")
        with pytest.raises(SMTPError) as info:
            await runner.check_body([check], header("From: mallory@example.org"), await body())
        assert str(info.value) == "553 5.7.0 Unauthorized use of sender address"
    finally:
        await runner.close()

    runner = CheckRunner(meta("alice@example.org"), log.get("test"))
    try:
        with pytest.raises(SMTPError) as info:
            await runner.check_sender([check], "mallory@example.org")
        assert str(info.value) == "553 5.7.0 Unauthorized use of sender address"
    finally:
        await runner.close()


async def test_quarantine_through_the_runner(build: Build) -> None:
    check = await build(" no_match_action quarantine")
    m = meta("alice@example.org")
    runner = CheckRunner(m, log.get("test"))
    try:
        await runner.check_sender([check], "bob@example.org")
        await runner.apply_results("mx.example.org", header("From: a@b"))
    finally:
        await runner.close()
    assert m.quarantine


async def test_inside_a_checks_group(
    build: Build, tmp_path: Path, containers: list[Container]
) -> None:
    text = (
        "checks outbound {\n authorize_sender { check_header no }\n}\n"
        f"{PROBE} {{\n check &outbound\n}}\n"
    )
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    container.build()
    containers.append(container)
    (probe,) = container.endpoints
    assert isinstance(probe, Probe)
    (group,) = probe.checks
    state = await group.check_state(meta("alice@example.org"))
    assert verdict(await state.check_sender("alice@example.org")) == "ok"
    res = await state.check_sender("bob@example.org")
    assert res.reject and res.reason is not None and res.reason.code == 553
    await state.close()


# --- Configuration errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("extra", "t.conf:2: check.authorize_sender: inline arguments are not used"),
        ("{\n  check_headers yes\n }", "t.conf:3: unexpected directive: check_headers"),
        ("{\n  check_header maybe\n }", "t.conf:3: check_header:"),
        ("{\n  unauth_action explode\n }", "t.conf:3: unauth_action: invalid action"),
        ("{\n  err_action reject 650\n }", "t.conf:3: err_action: error code should start"),
        ("{\n  malformed_action ignore 550\n }", "t.conf:3: malformed_action: ignore takes no"),
        ("{\n  auth_normalize upper\n }", "t.conf:3: auth_normalize: expected one of: auto,"),
        ("{\n  from_normalize\n }", "t.conf:3: from_normalize: expected one of"),
        ("{\n  user_to_email\n }", "t.conf:3: user_to_email: expected a module name"),
        ("{\n  prepare_email nosuchtable\n }", "t.conf:3: unknown module: nosuchtable"),
        ("{\n  user_to_email &missing\n }", "t.conf:3: unknown configuration block: missing"),
    ],
)
def test_configuration_errors(tmp_path: Path, block: str, expected: str) -> None:
    assert config_error(tmp_path, block).startswith(expected)


def test_registered_name() -> None:
    assert AuthorizeSender.module_name == "check.authorize_sender"
