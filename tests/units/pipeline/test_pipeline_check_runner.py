"""Check scheduling and merging, Authentication-Results and DMARC
(docs/pipeline.md), and the check action syntax (docs/checks.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from pipefakes import EVENTS, FAKES, buffer, deliver, err, header, meta, pipe

from kittiwake.checks.base import (
    AuthResult,
    Check,
    CheckAction,
    CheckResult,
    CheckStateBase,
    action_directive,
    parse_action,
)
from kittiwake.config.node import Node
from kittiwake.dmarc import DmarcVerdict
from kittiwake.errors import ConfigError, SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.pipeline.check_runner import _gather, format_auth_results, merge_results
from kittiwake.pipeline.groups import CheckGroup

LEVELS = """
  check { test root }
  source s@example.org {
    check { test src }
    destination a.org {
      check { test dst }
      deliver_to test t
    }
    default_destination { deliver_to test t2 }
  }
  default_source { reject }
"""


async def test_stage_order_and_replay(tmp_path: Path) -> None:
    pipeline = pipe(LEVELS, tmp_path)
    await deliver(pipeline, "s@example.org", ["x@b.org", "y@a.org", "z@a.org"])
    assert FAKES["root"].stages() == [
        ("connection", ""),
        ("sender", "s@example.org"),
        ("rcpt", "x@b.org"),
        ("rcpt", "y@a.org"),
        ("rcpt", "z@a.org"),
        ("body", ""),
    ]
    # Created at the first RCPT routed to its block, then replayed: connection,
    # sender, and every recipient checked so far (each once).
    assert FAKES["dst"].stages() == [
        ("connection", ""),
        ("sender", "s@example.org"),
        ("rcpt", "x@b.org"),
        ("rcpt", "y@a.org"),
        ("rcpt", "z@a.org"),
        ("body", ""),
    ]
    for name in ("root", "src", "dst"):
        assert FAKES[name].created == FAKES[name].closed == 1


async def test_source_checks_see_root_rewritten_sender(tmp_path: Path) -> None:
    pipeline = pipe(
        "  check { test root }\n  modify {\n    test m {\n      sender a@x.org b@x.org\n"
        "    }\n  }\n  source b@x.org {\n    check { test src }\n    deliver_to test t\n  }\n"
        "  default_source { reject }\n",
        tmp_path,
    )
    await deliver(pipeline, "a@x.org", ["r@y.org"], m=meta("a@x.org"))
    assert ("sender", "a@x.org") in FAKES["root"].stages()
    assert ("sender", "b@x.org") in FAKES["src"].stages()


async def test_shared_check_has_one_state_and_no_duplicate_calls(tmp_path: Path) -> None:
    pipeline = pipe(
        "  check &shared\n  source s@example.org {\n    check &shared\n"
        "    destination a.org {\n      check &shared\n      deliver_to test t\n    }\n"
        "    default_destination { deliver_to test t }\n  }\n  default_source { reject }\n",
        tmp_path,
        before="check.test shared { }\n",
    )
    await deliver(pipeline, "s@example.org", ["x@a.org", "x@a.org"])
    shared = FAKES["shared"]
    assert shared.created == shared.closed == 1
    assert shared.stages() == [
        ("connection", ""),
        ("sender", "s@example.org"),
        ("rcpt", "x@a.org"),
        ("body", ""),  # body deduplicated too (maddy would call it three times)
    ]


async def test_first_reject_in_config_order_wins(tmp_path: Path) -> None:
    pipeline = pipe("  check {\n    test a\n    test b\n  }\n  deliver_to test t\n", tmp_path)
    FAKES["a"].rcpt["x@a.org"] = CheckResult(reject=True, reason=err(550, (5, 7, 1), "from a"))
    FAKES["a"].delay["rcpt"] = 0.05  # finishes last, still decides
    FAKES["b"].rcpt["x@a.org"] = CheckResult(reject=True, reason=err(550, (5, 7, 1), "from b"))
    delivery = await pipeline.start(meta(), "s@example.org")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("x@a.org")
    assert info.value.message == "from a"
    assert FAKES["a"].finished[-1] == "rcpt" and FAKES["b"].finished[-1] == "rcpt"
    await delivery.abort()


async def test_group_runs_concurrently(tmp_path: Path) -> None:
    pipeline = pipe("  check {\n    test a\n    test b\n  }\n  deliver_to test t\n", tmp_path)
    FAKES["a"].delay["body"] = 0.02
    FAKES["b"].delay["body"] = 0.01
    delivery = await pipeline.start(meta(), "s@example.org")
    await delivery.add_rcpt("x@a.org")
    await delivery.body(header(), await buffer())
    await delivery.commit()
    body_events = [e for e in EVENTS if " body" in e and e.split()[0] in ("a", "b")]
    # Both started before either finished.
    assert body_events[:2] == ["a body", "b body"]
    assert sorted(body_events[2:]) == ["a body done", "b body done"]


async def test_cancelled_stage_stops_every_check_first(tmp_path: Path) -> None:
    """A stage cancelled mid-way (the client left) ends only once no check runs any more."""
    pipeline = pipe("  check {\n    test a\n    test b\n  }\n  deliver_to test t\n", tmp_path)
    FAKES["a"].delay["body"] = 5.0
    FAKES["b"].delay["body"] = 5.0
    delivery = await pipeline.start(meta(), "s@example.org")
    await delivery.add_rcpt("x@a.org")
    body = asyncio.ensure_future(delivery.body(header(), await buffer()))
    await asyncio.sleep(0.01)
    assert [e for e in EVENTS if e.endswith(" body")] == ["a body", "b body"]
    body.cancel()
    with pytest.raises(asyncio.CancelledError):
        await body
    assert [t for t in asyncio.all_tasks() if not t.done()] == [asyncio.current_task()]
    assert "body" not in FAKES["a"].finished and "body" not in FAKES["b"].finished


async def test_quarantine_beats_reject_in_one_result(tmp_path: Path) -> None:
    pipeline = pipe("  check { test c }\n  deliver_to test t\n", tmp_path)
    FAKES["c"].sender = CheckResult(
        reject=True, quarantine=True, reason=err(550, (5, 7, 1), "Suspicious")
    )
    m = meta()
    await deliver(pipeline, "s@example.org", ["x@a.org"], m=m)
    assert m.quarantine


async def test_ignored_failure_is_logged_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = pipe("  check { test c }\n  deliver_to test t\n", tmp_path)
    FAKES["c"].sender = CheckResult(reason=err(550, (5, 7, 1), "Meh"))
    m = meta()
    await deliver(pipeline, "s@example.org", ["x@a.org"], m=m)
    assert not m.quarantine and FAKES["t"].committed
    assert "no check action" in capsys.readouterr().err


async def test_check_exception_fails_the_stage(tmp_path: Path) -> None:
    pipeline = pipe("  check { test c }\n  deliver_to test t\n", tmp_path)
    FAKES["c"].connection = RuntimeError("resolver crashed")
    with pytest.raises(RuntimeError):
        await pipeline.start(meta(), "s@example.org")
    assert FAKES["c"].closed == 1


async def test_state_creation_error_fails_like_reject(tmp_path: Path) -> None:
    pipeline = pipe(LEVELS, tmp_path)
    FAKES["dst"].state_err = err(451, (4, 7, 0), "Cannot start")
    delivery = await pipeline.start(meta(), "s@example.org")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("y@a.org")
    assert info.value.message == "Cannot start"
    await delivery.add_rcpt("x@b.org")
    await delivery.abort()
    assert FAKES["root"].closed == 1 and FAKES["src"].closed == 1


async def test_failed_replay_closes_the_new_state_and_retries(tmp_path: Path) -> None:
    pipeline = pipe(LEVELS, tmp_path)
    FAKES["dst"].rcpt["x@b.org"] = CheckResult(reject=True, reason=err(550, (5, 7, 1), "old"))
    delivery = await pipeline.start(meta(), "s@example.org")
    await delivery.add_rcpt("x@b.org")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("y@a.org")  # the replay of x@b.org rejects (maddy too)
    assert info.value.message == "old"
    assert FAKES["dst"].created == FAKES["dst"].closed == 1
    await delivery.abort()


async def test_auth_results_assembly(tmp_path: Path) -> None:
    pipeline = pipe(
        "  hostname mx.example.org\n"
        "  check {\n    test spf\n    test dkim\n  }\n  deliver_to test t\n",
        tmp_path,
    )
    FAKES["spf"].delay["sender"] = 0.05  # config order, not completion order
    FAKES["spf"].sender = CheckResult(
        auth_results=[
            AuthResult(
                "spf", "pass", {"smtp.mailfrom": "sender.net", "smtp.helo": "mail.sender.net"}
            )
        ]
    )
    FAKES["dkim"].sender = CheckResult(
        auth_results=[
            AuthResult("dkim", "pass", {"header.d": "sender.net", "header.i": "@sender.net"})
        ]
    )
    await deliver(pipeline, "s@example.org", ["x@a.org"])
    first = FAKES["t"].committed[0].header.split(b"\r\nReceived:")[0].decode()
    assert first == (
        "Authentication-Results: mx.example.org; spf=pass smtp.helo=mail.sender.net\r\n"
        " smtp.mailfrom=sender.net; dkim=pass header.d=sender.net\r\n"
        " header.i=@sender.net"
    )


def test_auth_results_format() -> None:
    results = [
        AuthResult(
            "spf", "fail", {"smtp.mailfrom": "x.org", "smtp.helo": ""}, reason="SPF record says so"
        ),
        AuthResult("dkim", "none"),
        AuthResult("dmarc", "pass", {"header.from": "x.org", "reason": "aligned"}),
        AuthResult("auth", "pass", {"smtp.auth": "a b"}),
    ]
    assert format_auth_results("\u00e9.example", results) == (
        'xn--9ca.example; spf=fail reason="SPF record says so" smtp.mailfrom=x.org; '
        'dkim=none; dmarc=pass reason=aligned header.from=x.org; auth=pass smtp.auth="a b"'
    )


def test_no_auth_results_field_without_results() -> None:
    assert format_auth_results("h", []) == "h"


class FakeDmarc:
    def __init__(self, policy: str, result: str = "fail") -> None:
        self.policy = policy
        self.result = result
        self.fetched: list[bytes] = []
        self.seen: list[AuthResult] = []
        self.closed = 0

    def fetch_record(self, hdr: Header) -> None:
        self.fetched.append(hdr.to_bytes())

    async def evaluate(self, results: Sequence[AuthResult]) -> DmarcVerdict:
        self.seen = list(results)
        return DmarcVerdict(
            AuthResult("dmarc", self.result, {"header.from": "x.org"}),
            self.policy,  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        self.closed += 1


DMARC_CHECKS = (
    "  check {\n    test s {\n      dmarc_input spf\n    }\n"
    "    test d {\n      dmarc_input dkim\n    }\n  }\n"
)


async def _with_dmarc(tmp_path: Path, verifier: FakeDmarc, extra: str = "") -> MsgMeta:
    pipeline = pipe(DMARC_CHECKS + extra + "  deliver_to test t\n", tmp_path)
    pipeline.dmarc_factory = lambda m: verifier
    FAKES["s"].body = CheckResult(auth_results=[AuthResult("spf", "fail")])
    m = meta()
    delivery = await pipeline.start(m, "s@example.org")
    await delivery.add_rcpt("x@a.org")
    await delivery.body(header(), await buffer())
    await delivery.commit()
    return m


async def test_dmarc_reject(tmp_path: Path) -> None:
    verifier = FakeDmarc("reject")
    with pytest.raises(SMTPError) as info:
        await _with_dmarc(tmp_path, verifier)
    assert str(info.value) == "550 5.7.1 DMARC check failed"
    assert len(verifier.fetched) == 1 and verifier.closed == 1
    assert [r.method for r in verifier.seen] == ["spf"]
    assert FAKES["t"].started[0].aborted == 1


async def test_dmarc_temperror_reject_is_temporary(tmp_path: Path) -> None:
    with pytest.raises(SMTPError) as info:
        await _with_dmarc(tmp_path, FakeDmarc("reject", "temperror"))
    assert str(info.value) == "450 4.7.1 DMARC check failed"


async def test_dmarc_quarantine_and_ar_last(tmp_path: Path) -> None:
    m = await _with_dmarc(tmp_path, FakeDmarc("quarantine"))
    assert m.quarantine
    ar = FAKES["t"].committed[0].header.split(b"\r\nReceived:")[0]
    assert ar == b"Authentication-Results: mx.example.com; spf=fail; dmarc=fail header.from=x.org"


async def test_dmarc_inert_without_both_checks(tmp_path: Path) -> None:
    verifier = FakeDmarc("reject")
    pipeline = pipe("  check { test s }\n  deliver_to test t\n", tmp_path)
    pipeline.dmarc_factory = lambda m: verifier
    await deliver(pipeline, "s@example.org", ["x@a.org"])
    assert verifier.fetched == [] and FAKES["t"].committed


async def test_dmarc_off(tmp_path: Path) -> None:
    verifier = FakeDmarc("reject")
    pipeline = pipe(DMARC_CHECKS + "  dmarc no\n  deliver_to test t\n", tmp_path)
    pipeline.dmarc_factory = lambda m: verifier
    assert not pipeline.dmarc_runs
    await deliver(pipeline, "s@example.org", ["x@a.org"])
    assert verifier.fetched == []


# --- merge_results (a `checks` group used as one check) ------------------------------------


def test_merge_results() -> None:
    a = CheckResult(reject=True, reason=err(550, (5, 7, 1), "a"), header_fields=[("X-A", "1")])
    b = CheckResult(
        reject=True, reason=err(550, (5, 7, 1), "b"), auth_results=[AuthResult("spf", "pass")]
    )
    q = CheckResult(quarantine=True, reject=True, reason=err(550, (5, 7, 1), "q"))
    merged = merge_results([q, a, b])
    assert merged.reject and merged.quarantine
    assert merged.reason is not None and merged.reason.message == "a"
    assert merged.header_fields == [("X-A", "1")]
    assert [r.method for r in merged.auth_results] == ["spf"]


async def test_checks_group_as_single_check(tmp_path: Path) -> None:
    """A `checks` block is itself a check: members concurrently, results merged."""
    before = "checks g {\n  test a\n  test b\n}\n"
    pipeline = pipe("  check &g\n  reject\n", tmp_path, before=before)
    group = pipeline.container.instance("g", Node("check", ["&g"]), Check)
    assert isinstance(group, CheckGroup)
    assert group.members == (FAKES["a"], FAKES["b"])
    FAKES["b"].sender = CheckResult(reject=True, reason=err(550, (5, 7, 1), "b"))
    state = await group.check_state(meta())
    result = await state.check_sender("x@y.org")
    assert result.reject and result.reason is not None and result.reason.message == "b"
    await state.close()
    assert FAKES["a"].closed == FAKES["b"].closed == 1


class _Stepping(CheckStateBase):
    """A body stage that waits `wait` seconds (0: not at all), noting its task."""

    def __init__(self, name: str, wait: float = 0.0, *, bound: float | None = None) -> None:
        self.name = name
        self.wait = wait
        self.bound = bound
        self.tasks: list[asyncio.Task[object] | None] = []

    async def check_body(self, header: Header, body: Buffer) -> CheckResult:
        self.tasks.append(asyncio.current_task())
        if self.wait:
            if self.bound is None:
                await asyncio.sleep(self.wait)
            else:
                async with asyncio.timeout(self.bound):  # bound to the task it entered in
                    await asyncio.sleep(self.wait)
        self.tasks.append(asyncio.current_task())
        return CheckResult(auth_results=[AuthResult(self.name, "pass")])


async def _body_stage(states: Sequence[CheckStateBase]) -> list[CheckResult | Exception]:
    buf = await buffer()
    return await _gather(states, lambda s: s.check_body(header(), buf), "check_body")


async def test_stage_that_need_not_wait_costs_no_task() -> None:
    """States that finish at once run in the caller's task, one after the other."""
    a, b = _Stepping("a"), _Stepping("b")
    before = len(asyncio.all_tasks())
    outcomes = await _body_stage([a, b])
    assert [o.auth_results[0].method for o in outcomes if isinstance(o, CheckResult)] == ["a", "b"]
    me = asyncio.current_task()
    assert a.tasks == [me, me] and b.tasks == [me, me]
    assert len(asyncio.all_tasks()) == before


async def test_first_state_that_waits_finishes_in_the_callers_task() -> None:
    """From the first state that waits on, the later ones overlap in tasks of their own;
    each call runs in one task from start to end, so a timeout it set is its own."""
    quick = _Stepping("quick")
    slow = _Stepping("slow", 0.02, bound=0.01)
    after = _Stepping("after", 0.01)
    outcomes = await _body_stage([quick, slow, after])
    me = asyncio.current_task()
    assert quick.tasks == [me, me]
    assert slow.tasks == [me]  # timed out: the caller's own task went on
    assert isinstance(outcomes[1], TimeoutError)
    assert after.tasks[0] is not me and after.tasks == [after.tasks[0]] * 2
    assert isinstance(outcomes[2], CheckResult) and outcomes[2].auth_results[0].method == "after"


async def test_stage_start_exception_is_an_outcome() -> None:
    class Broken(CheckStateBase):
        async def check_body(self, header: Header, body: Buffer) -> CheckResult:
            raise RuntimeError("broken at once")

    outcomes = await _body_stage([Broken(), _Stepping("b", 0.001)])
    assert isinstance(outcomes[0], RuntimeError)
    assert isinstance(outcomes[1], CheckResult)


# --- actions (docs/checks.md) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kind", "reply"),
    [
        (["ignore"], "ignore", None),
        (["quarantine"], "quarantine", None),
        (["reject"], "reject", None),
        (["reject", "450"], "reject", "450 4.7.0 Message rejected due to a local policy"),
        (["reject", "550", "5.7.23", "SPF failed"], "reject", "550 5.7.23 SPF failed"),
        (
            ["quarantine", "451", "4.7.1"],
            "quarantine",
            "451 4.7.1 Message rejected due to a local policy",
        ),
    ],
)
def test_parse_action(args: list[str], kind: str, reply: str | None) -> None:
    action = parse_action(args)
    assert action.kind == kind
    assert (str(action.override) if action.override else None) == reply


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "expected at least 1 argument"),
        (["drop"], "invalid action: 'drop' (expected ignore, quarantine or reject)"),
        (["ignore", "550"], "ignore takes no arguments"),
        (["reject", "650"], "error code should start with either 4 or 5"),
        (
            ["reject", "550", "4.7.0"],
            "enhanced code 4.7.0 does not match the class of error code 550",
        ),
        (["reject", "550", "5.7.0", ""], "message can't be empty"),
    ],
)
def test_parse_action_errors(args: list[str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_action(args)
    assert str(info.value) == message


def test_action_directive_positions_errors() -> None:
    with pytest.raises(ConfigError) as info:
        action_directive(Node("fail_action", ["explode"], None, "c.conf", 7))
    assert str(info.value) == (
        "c.conf:7: fail_action: invalid action: 'explode' (expected ignore, quarantine or reject)"
    )
    with pytest.raises(ConfigError) as info:
        action_directive(Node("fail_action", ["reject"], [], "c.conf", 8))
    assert str(info.value) == "c.conf:8: fail_action: can't declare block here"


def test_action_apply() -> None:
    original = SMTPError(
        550, (5, 7, 23), "SPF authentication failed", check_name="spf", reason="fail"
    )
    failed = CheckResult(reason=original, auth_results=[AuthResult("spf", "fail")])
    assert CheckAction("ignore").apply(failed) == failed
    quarantined = CheckAction("quarantine").apply(failed)
    assert quarantined.quarantine and not quarantined.reject
    overridden = parse_action(["reject", "451", "4.7.1", "Later"]).apply(failed)
    assert overridden.reject and overridden.reason is not None
    assert str(overridden.reason) == "451 4.7.1 Later"
    assert overridden.reason.check_name == "spf"
    assert overridden.reason.reason == "550 5.7.23 SPF authentication failed: fail"
    assert overridden.auth_results == failed.auth_results
    passed = CheckResult()
    assert CheckAction("reject").apply(passed) is passed


def test_auth_results_never_carry_a_line_break() -> None:
    """A reason or value quoted from a message cannot inject a header field."""
    value = format_auth_results(
        "mx.example.org",
        [AuthResult("dkim", "fail", {"header.d": "a.example\r\nX-Evil: 1"}, "bad\r\nX-Bad: 2")],
    )
    assert "\r" not in value and "\n" not in value
    assert 'reason="bad  X-Bad: 2"' in value
