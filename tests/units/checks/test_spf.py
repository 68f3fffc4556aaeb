"""check.spf: docs/checks.md ("`spf`"): inputs, results, actions, timing, DMARC.

The check is built from configuration text through a real `Container`,
whose resolver is replaced by `StubDNS` (answers from a dict, in process),
and its per-message state is driven the way the pipeline drives it. The
evaluation itself (pyspf on a worker thread, through the DNS hook) is the
real one; the RFC 7208 suite and hostile records are in tests/e2e.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from kittiwake.checks.base import Check, CheckResult
from kittiwake.checks.spf import SPF, spf_sender
from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.dns import Answer, TempDNSError
from kittiwake.errors import ConfigError
from kittiwake.message import ConnInfo, MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Endpoint, register, unregister

PROBE = "kw_spf_probe"


class Probe(Endpoint):
    """A listening-nothing endpoint that only references checks."""

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


class StubDNS:
    """The resolver's interface, answered from a dict; an Exception value is raised."""

    def __init__(self, records: dict[tuple[str, str], list[object] | Exception]) -> None:
        self.records = records
        self.asked: list[tuple[str, str]] = []

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (name.lower().rstrip("."), rdtype)
        self.asked.append(key)
        value = self.records.get(key)
        if isinstance(value, Exception):
            raise value
        exists = any(n == key[0] for n, _ in self.records)
        return Answer(key[0], rdtype, tuple(value or ()), nxdomain=not exists)

    async def txt(self, name: str) -> list[bytes]:
        return [r for r in (await self.query(name, "TXT")).records if isinstance(r, bytes)]


#: One domain per SPF result for a client at 192.0.2.1.
ZONE: dict[tuple[str, str], list[object] | Exception] = {
    ("pass.test", "TXT"): [b"v=spf1 ip4:192.0.2.0/24 -all"],
    ("fail.test", "TXT"): [b"v=spf1 -all exp=why.fail.test"],
    ("why.fail.test", "TXT"): [b"%{i} may not send for %{d}"],
    ("softfail.test", "TXT"): [b"v=spf1 ~all"],
    ("neutral.test", "TXT"): [b"v=spf1 ?all"],
    ("none.test", "A"): ["192.0.2.9"],
    ("temperror.test", "TXT"): TempDNSError("DNS timeout looking up TXT temperror.test"),
    ("permerror.test", "TXT"): [b"v=spf1 moo -all"],
    ("helo.test", "TXT"): [b"v=spf1 ip4:192.0.2.1 -all"],
    ("six.test", "TXT"): [b"v=spf1 ip6:2001:db8::/32 -all"],
    ("_dmarc.fail.test", "TXT"): [b"v=DMARC1; p=reject"],
    ("_dmarc.softfail.test", "TXT"): [b"v=DMARC1; p=quarantine"],
    ("_dmarc.neutral.test", "TXT"): [b"v=DMARC1; p=none"],
}

Build = Callable[..., Awaitable[tuple[SPF, StubDNS]]]


@pytest.fixture
async def containers() -> AsyncIterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in reversed(made):
        await c.stop()


@pytest.fixture
def build(tmp_path: Path, containers: list[Container]) -> Build:
    async def make(block: str = "", zone: dict | None = None) -> tuple[SPF, StubDNS]:  # type: ignore[type-arg]
        text = f"hostname mx.example.com\n{PROBE} {{\n check spf {{\n{block}\n }}\n}}\n"
        container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
        container.build()
        stub = StubDNS(dict(ZONE if zone is None else zone))
        container.shared._resolver = stub  # type: ignore[assignment]
        await container.start()
        containers.append(container)
        (probe,) = container.endpoints
        assert isinstance(probe, Probe)
        (check,) = probe.checks
        assert isinstance(check, SPF)
        return check, stub

    return make


def meta(
    sender: str,
    ip: str | None = "192.0.2.1",
    *,
    helo: str = "mail.client.test",
    local: bool = False,
    dmarc: bool = False,
) -> MsgMeta:
    conn = None if local else ConnInfo(remote_ip=ip, helo=helo, endpoint="smtp")
    return MsgMeta(id="0f3a91c2", conn=conn, original_from=sender, dmarc_runs=dmarc)


def header(from_: str = "a@fail.test") -> Header:
    return Header.parse(f"From: {from_}\r\nSubject: x\r\n".encode())


async def body() -> Buffer:
    buf = Buffer.ram()
    await buf.write(b"hello\r\n")
    await buf.finish()
    return buf


async def stages(check: SPF, m: MsgMeta, hdr: Header | None = None) -> list[CheckResult]:
    """Every stage of one message, as the pipeline calls them."""
    state = await check.check_state(m)
    try:
        results = [await state.check_connection(), await state.check_sender(m.original_from)]
        results.append(await state.check_rcpt("user@example.org"))
        results.append(await state.check_body(hdr or header(), await body()))
        return results
    finally:
        await state.close()


def only(results: list[CheckResult]) -> CheckResult:
    """The one stage that said something; the others must be empty."""
    said = [r for r in results if r.reason is not None or r.auth_results]
    assert len(said) == 1, results
    return said[0]


# -- configuration -------------------------------------------------------------


async def test_defaults_quarantine_fail_and_ignore_the_rest(build: Build) -> None:
    check, _ = await build()
    assert not check.enforce_early
    kinds = {name: action.kind for name, action in check.actions.items()}
    assert kinds == {
        "none_action": "ignore",
        "neutral_action": "ignore",
        "fail_action": "quarantine",
        "softfail_action": "ignore",
        "temperr_action": "ignore",
        "permerr_action": "ignore",
    }
    assert check.receiver == "mx.example.com"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("fail_action drop", "invalid action: 'drop'"),
        ("fail_action reject 250", "error code should start with either 4 or 5"),
        ("enforce_early maybe", "enforce_early"),
        ("spf_action reject", "unexpected directive: spf_action"),
    ],
)
def test_bad_directives(tmp_path: Path, block: str, message: str) -> None:
    text = f"{PROBE} {{\n check spf {{\n{block}\n }}\n}}\n"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        container.build()


def test_inline_arguments_are_refused(tmp_path: Path) -> None:
    text = f"{PROBE} {{\n check spf extra\n}}\n"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    with pytest.raises(ConfigError, match="inline arguments are not used"):
        container.build()


# -- the sender ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mail_from", "expected"),
    [
        ("", ""),
        ("alice@Example.ORG", "alice@Example.ORG"),
        ("alice@bücher.example", "alice@xn--bcher-kva.example"),
        ("jörg@bücher.example", "postmaster@xn--bcher-kva.example"),
        ("a@b@example.org", "a@b@example.org"),
        ("x@[192.0.2.1]", "x@[192.0.2.1]"),
    ],
)
def test_sender_normalisation(mail_from: str, expected: str) -> None:
    assert spf_sender(mail_from) == expected


@pytest.mark.parametrize("mail_from", ["postmaster", "x@", "no-at-sign"])
def test_malformed_sender_is_refused_whatever_the_actions(mail_from: str) -> None:
    with pytest.raises(ValueError):
        spf_sender(mail_from)


async def test_malformed_sender_fails_the_stage_the_state_is_made_in(build: Build) -> None:
    check, stub = await build("fail_action ignore")
    state = await check.check_state(meta("postmaster"))
    result = await state.check_connection()
    await state.close()
    assert result.reject and result.reason is not None
    assert str(result.reason) == "550 5.1.7 Malformed address"
    assert stub.asked == []


async def test_the_client_gives_the_domain_and_a_labels_are_asked(build: Build) -> None:
    check, stub = await build()
    stub.records[("xn--bcher-kva.example", "TXT")] = [b"v=spf1 +all"]
    result = only(await stages(check, meta("jörg@bücher.example")))
    entry = result.auth_results[0]
    assert (entry.result, entry.params) == (
        "pass",
        {"smtp.mailfrom": "bücher.example", "smtp.helo": "mail.client.test"},
    )
    assert ("xn--bcher-kva.example", "TXT") in stub.asked


async def test_null_sender_checks_postmaster_at_helo(build: Build) -> None:
    check, _ = await build()
    result = only(await stages(check, meta("", helo="helo.test")))
    entry = result.auth_results[0]
    assert (entry.result, entry.params) == ("pass", {"smtp.helo": "helo.test"})


# -- what is skipped -----------------------------------------------------------


@pytest.mark.parametrize(
    "m",
    [meta("a@fail.test", local=True), meta("a@fail.test", ip=None)],
    ids=["locally-generated", "unix-socket"],
)
async def test_no_address_no_spf(build: Build, m: MsgMeta) -> None:
    check, stub = await build("fail_action reject")
    results = await stages(check, m)
    assert all(r.reason is None and not r.auth_results for r in results)
    assert stub.asked == []


# -- results and actions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "result", "note", "reply", "flag"),
    [
        ("pass.test", "pass", "", None, None),
        ("fail.test", "fail", "", "550 5.7.23 SPF authentication failed", "quarantine"),
        ("softfail.test", "softfail", "", "550 5.7.23 SPF authentication soft-failed", None),
        ("neutral.test", "neutral", "", "550 5.7.23 Neutral SPF result is not permitted", None),
        ("none.test", "none", "no policy", "550 5.7.23 No SPF policy", None),
        (
            "temperror.test",
            "temperror",
            "DNS error: DNS timeout looking up TXT temperror.test",
            "451 4.7.23 SPF authentication failed with a temporary error",
            None,
        ),
        (
            "permerror.test",
            "permerror",
            "Unknown mechanism found: moo",
            "550 5.7.23 SPF authentication failed with a permanent error",
            None,
        ),
    ],
)
async def test_each_result_with_the_default_actions(
    build: Build, domain: str, result: str, note: str, reply: str | None, flag: str | None
) -> None:
    check, _ = await build()
    verdict = only(await stages(check, meta(f"alice@{domain}")))
    (entry,) = verdict.auth_results
    assert (entry.method, entry.result, entry.reason) == ("spf", result, note)
    assert entry.params == {"smtp.mailfrom": domain, "smtp.helo": "mail.client.test"}
    assert (str(verdict.reason) if verdict.reason else None) == reply
    assert verdict.quarantine == (flag == "quarantine")
    assert not verdict.reject


async def test_every_action_can_reject_with_its_own_reply(build: Build) -> None:
    block = "\n".join(
        f"{name}_action reject 550 5.7.{n} {name}"
        for n, name in enumerate(("none", "neutral", "fail", "softfail", "permerr"), 1)
    )
    check, _ = await build(block + "\ntemperr_action reject 421 4.4.4 later")
    for domain, reply in [
        ("none.test", "550 5.7.1 none"),
        ("neutral.test", "550 5.7.2 neutral"),
        ("fail.test", "550 5.7.3 fail"),
        ("softfail.test", "550 5.7.4 softfail"),
        ("permerror.test", "550 5.7.5 permerr"),
        ("temperror.test", "421 4.4.4 later"),
    ]:
        verdict = only(await stages(check, meta(f"a@{domain}")))
        assert verdict.reject and str(verdict.reason) == reply, domain
        assert verdict.reason is not None and verdict.reason.check_name == "check.spf"


async def test_the_explanation_goes_to_the_log_not_the_client(build: Build) -> None:
    check, _ = await build('fail_action reject 550 5.7.23 "SPF failed"')
    verdict = only(await stages(check, meta("a@fail.test")))
    assert verdict.reason is not None
    assert str(verdict.reason) == "550 5.7.23 SPF failed"
    assert "192.0.2.1 may not send for fail.test" in verdict.reason.reason


async def test_ipv6_and_ipv4_mapped_clients(build: Build) -> None:
    check, _ = await build()
    six = only(await stages(check, meta("a@six.test", ip="2001:db8::25%eth0")))
    mapped = only(await stages(check, meta("a@pass.test", ip="::ffff:192.0.2.1")))
    assert six.auth_results[0].result == mapped.auth_results[0].result == "pass"


# -- timing ----------------------------------------------------------------------


async def test_evaluation_starts_with_the_state(build: Build) -> None:
    check, stub = await build()
    state = await check.check_state(meta("a@pass.test"))
    try:
        for _ in range(200):
            if stub.asked:
                break
            await asyncio.sleep(0.01)
        assert ("pass.test", "TXT") in stub.asked  # before any stage was called
    finally:
        await state.close()


async def test_enforce_early_decides_at_the_sender_stage(build: Build) -> None:
    check, _ = await build("enforce_early yes\nfail_action reject")
    results = await stages(check, meta("a@fail.test", dmarc=True))
    assert only(results) is results[1]
    assert results[1].reject and str(results[1].reason) == "550 5.7.23 SPF authentication failed"


async def test_a_state_closed_early_leaves_nothing_behind(build: Build) -> None:
    check, _ = await build()
    state = await check.check_state(meta("a@pass.test"))
    await state.close()
    await state.close()


async def test_a_crash_is_a_temporary_hard_reject(build: Build) -> None:
    check, stub = await build("fail_action ignore")
    stub.records[("crash.test", "TXT")] = RuntimeError("resolver bug")
    verdict = only(await stages(check, meta("a@crash.test")))
    assert verdict.reject and str(verdict.reason) == "451 4.0.0 Internal error during policy check"
    assert verdict.auth_results == []


# -- DMARC ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "dmarc", "acted"),
    [
        ("fail.test", True, False),  # p=reject, DMARC runs: DMARC decides
        ("softfail.test", True, False),  # p=quarantine
        ("neutral.test", True, True),  # p=none: SPF acts
        ("pass.test", True, False),  # nothing to act on
        ("fail.test", False, True),  # DMARC does not run: SPF acts
    ],
)
async def test_action_left_to_dmarc_only_when_it_runs_with_a_policy(
    build: Build, domain: str, dmarc: bool, acted: bool
) -> None:
    check, stub = await build("fail_action reject\nsoftfail_action reject\nneutral_action reject")
    verdict = only(await stages(check, meta(f"a@{domain}", dmarc=dmarc), header(f"b@{domain}")))
    assert verdict.reject == acted
    assert verdict.auth_results[0].result == domain.partition(".")[0]  # A-R entry either way
    asked = (f"_dmarc.{domain}", "TXT") in stub.asked
    assert asked == (dmarc and domain != "pass.test")  # only for a result to act on


@pytest.mark.parametrize(
    "hdr",
    [Header.parse(b"Subject: no From\r\n"), header("b@neutral.test"), header("b@pass.test")],
    ids=["no-from", "p-none", "no-record"],
)
async def test_no_policy_to_defer_to_means_spf_acts(build: Build, hdr: Header) -> None:
    check, _ = await build("fail_action reject")
    verdict = only(await stages(check, meta("a@fail.test", dmarc=True), hdr))
    assert verdict.reject


async def test_an_ignored_result_asks_no_dmarc_policy(build: Build) -> None:
    check, stub = await build("fail_action ignore")
    verdict = only(await stages(check, meta("a@fail.test", dmarc=True)))
    assert not verdict.reject and not verdict.quarantine and verdict.reason is not None
    assert not any(name.startswith("_dmarc.") for name, _ in stub.asked)
