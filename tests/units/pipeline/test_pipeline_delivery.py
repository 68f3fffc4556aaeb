"""The message transaction: body, commit, abort on every failure path, LMTP
statuses, nested pipelines (docs/pipeline.md, docs/flow.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipefakes import (
    EVENTS,
    FAKES,
    Statuses,
    buffer,
    deliver,
    err,
    header,
    meta,
    pipe,
)

from kittiwake import metrics
from kittiwake.checks.base import CheckResult
from kittiwake.errors import SMTPError
from kittiwake.pipeline.pipeline import Pipeline

TWO_TARGETS = (
    "  destination b.org { deliver_to test second }\n"
    "  default_destination { deliver_to test first }\n"
)


async def _open(pipeline: Pipeline, rcpts: list[str]):  # type: ignore[no-untyped-def]
    delivery = await pipeline.start(meta(), "s@example.org")
    for rcpt in rcpts:
        await delivery.add_rcpt(rcpt)
    return delivery


# --- abort on every failure path ---------------------------------------------------------


async def test_body_failure_aborts_every_delivery(tmp_path: Path) -> None:
    pipeline = pipe(TWO_TARGETS, tmp_path)
    delivery = await _open(pipeline, ["x@a.org", "y@b.org"])
    FAKES["second"].body_err = err(451, (4, 3, 0), "Disk trouble")
    with pytest.raises(SMTPError) as info:
        await delivery.body(header(), await buffer())
    assert str(info.value) == "451 4.3.0 Disk trouble"
    assert FAKES["first"].started[0].aborted == 1
    assert FAKES["second"].started[0].aborted == 1
    await delivery.abort()  # always safe, no second abort
    assert FAKES["first"].started[0].aborted == 1
    assert not FAKES["first"].committed


async def test_commit_failure_aborts_the_rest(tmp_path: Path) -> None:
    pipeline = pipe(TWO_TARGETS + "  ", tmp_path)
    delivery = await _open(pipeline, ["x@a.org", "y@b.org"])
    await delivery.body(header(), await buffer())
    FAKES["first"].commit_err = err(451, (4, 3, 0), "No")
    with pytest.raises(SMTPError):
        await delivery.commit()
    assert not FAKES["second"].committed
    assert FAKES["first"].started[0].aborted == 1
    assert FAKES["second"].started[0].aborted == 1
    assert "second commit" not in EVENTS


async def test_commit_failure_of_a_later_target_keeps_earlier_commit(tmp_path: Path) -> None:
    pipeline = pipe(TWO_TARGETS, tmp_path)
    delivery = await _open(pipeline, ["x@a.org", "y@b.org"])
    await delivery.body(header(), await buffer())
    FAKES["second"].commit_err = err(451, (4, 3, 0), "No")
    with pytest.raises(SMTPError):
        await delivery.commit()
    assert FAKES["first"].committed and FAKES["first"].started[0].aborted == 0
    assert FAKES["second"].started[0].aborted == 1


# --- deliver(): one step where the only target takes it ------------------------------


async def test_deliver_uses_one_step_for_the_only_delivery(tmp_path: Path) -> None:
    pipeline = pipe("  deliver_to test_one_step t\n", tmp_path)
    delivery = await _open(pipeline, ["x@a.org"])
    await delivery.deliver(header(), await buffer(b"data\r\n"))
    assert [e for e in EVENTS if e.startswith("t ")] == [
        "t start s@example.org",
        "t rcpt x@a.org",
        "t body_and_commit",
    ]
    (done,) = FAKES["t"].committed
    assert done.data == b"data\r\n" and b"Received: " in (done.header or b"")
    await delivery.abort()  # after success: nothing to undo
    assert done.aborted == 0


async def test_deliver_takes_two_steps_beside_another_target(tmp_path: Path) -> None:
    pipeline = pipe(
        "  destination b.org { deliver_to test_one_step second }\n"
        "  default_destination { deliver_to test first }\n",
        tmp_path,
    )
    delivery = await _open(pipeline, ["x@a.org", "y@b.org"])
    await delivery.deliver(header(), await buffer())
    assert "second body_and_commit" not in EVENTS
    assert EVENTS[-4:] == ["first body", "second body", "first commit", "second commit"]
    assert FAKES["first"].committed and FAKES["second"].committed


@pytest.mark.parametrize("stage", ["body", "commit"])
async def test_a_failed_one_step_is_aborted_and_reported(tmp_path: Path, stage: str) -> None:
    pipeline = pipe("  check { test c }\n  deliver_to test_one_step t\n", tmp_path)
    delivery = await _open(pipeline, ["x@a.org"])
    setattr(FAKES["t"], f"{stage}_err", err(452, (4, 3, 1), "Insufficient system storage"))
    with pytest.raises(SMTPError) as info:
        await delivery.deliver(header(), await buffer())
    assert str(info.value) == "452 4.3.1 Insufficient system storage"
    (started,) = FAKES["t"].started
    assert started.aborted == 1 and not started.committed
    assert FAKES["c"].closed == 1
    await delivery.abort()
    assert started.aborted == 1


async def test_a_body_check_rejection_never_reaches_the_one_step(tmp_path: Path) -> None:
    pipeline = pipe("  check { test c }\n  deliver_to test_one_step t\n", tmp_path)
    FAKES["c"].body = CheckResult(reject=True, reason=err(550, (5, 7, 1), "Spam"))
    delivery = await _open(pipeline, ["x@a.org"])
    with pytest.raises(SMTPError):
        await delivery.deliver(header(), await buffer())
    assert "t body_and_commit" not in EVENTS
    assert FAKES["t"].started[0].aborted == 1


@pytest.mark.parametrize(
    ("fails", "via"),
    [("body", "two steps"), ("commit", "two steps"), ("body", "one step"), ("commit", "one step")],
)
async def test_a_failed_target_is_counted_once_and_the_others_aborted(
    tmp_path: Path, fails: str, via: str
) -> None:
    """docs/metrics.md: a target's own failure is counted by its reply's class;
    `aborted` is for the targets undone because of it."""
    live = metrics.LiveMetrics()
    metrics.install(live)
    try:
        if via == "one step":
            pipeline = pipe("  deliver_to test_one_step t\n", tmp_path)
            delivery = await _open(pipeline, ["x@a.org"])
        else:
            pipeline = pipe(TWO_TARGETS, tmp_path)
            delivery = await _open(pipeline, ["x@a.org", "y@b.org"])
        failing = "t" if via == "one step" else "first"
        setattr(FAKES[failing], f"{fails}_err", err(451, (4, 3, 0), "No"))
        with pytest.raises(SMTPError):
            await delivery.deliver(header(), await buffer())

        counted = {
            (sample.labels["target"], sample.labels["result"]): sample.value
            for family in live.registry.collect()
            if family.name == "kittiwake_delivery_results"
            for sample in family.samples
            if sample.name.endswith("_total")
        }
        # The fakes are labelled by module: `first` and `second` share one.
        if via == "one step":
            assert counted == {("target.test_one_step", "temporary"): 1.0}
        else:
            assert counted == {("target.test", "temporary"): 1.0, ("target.test", "aborted"): 1.0}
        assert FAKES[failing].started[0].aborted == 1
    finally:
        metrics.install(None)


async def test_abort_after_recipients(tmp_path: Path) -> None:
    pipeline = pipe(TWO_TARGETS + "  check { test c }\n  modify { test m }\n", tmp_path)
    delivery = await _open(pipeline, ["x@a.org", "y@b.org"])
    await delivery.abort()
    await delivery.abort()
    assert [d.aborted for d in FAKES["first"].started + FAKES["second"].started] == [1, 1]
    assert FAKES["c"].closed == FAKES["c"].created == 1
    assert FAKES["m"].closed == FAKES["m"].created == 1


async def test_abort_errors_do_not_stop_other_aborts(tmp_path: Path) -> None:
    pipeline = pipe(TWO_TARGETS, tmp_path)
    delivery = await _open(pipeline, ["x@a.org", "y@b.org"])
    FAKES["first"].abort_err = OSError("gone")
    await delivery.abort()
    assert FAKES["second"].started[0].aborted == 1


async def test_check_body_reject_aborts(tmp_path: Path) -> None:
    pipeline = pipe("  check { test c }\n  deliver_to test t\n", tmp_path)
    FAKES["c"].body = CheckResult(reject=True, reason=err(550, (5, 7, 1), "Spam"))
    delivery = await _open(pipeline, ["x@a.org"])
    with pytest.raises(SMTPError) as info:
        await delivery.body(header(), await buffer())
    assert info.value.message == "Spam"
    assert FAKES["t"].started[0].aborted == 1
    assert "t body" not in EVENTS
    assert FAKES["c"].closed == 1


async def test_modifier_body_error_aborts(tmp_path: Path) -> None:
    pipeline = pipe("  modify { test m }\n  deliver_to test t\n", tmp_path)
    FAKES["m"].errors["body"] = RuntimeError("signing key missing")
    delivery = await _open(pipeline, ["x@a.org"])
    with pytest.raises(RuntimeError):  # no SMTP information: the endpoint says 451
        await delivery.body(header(), await buffer())
    assert FAKES["t"].started[0].aborted == 1
    assert FAKES["m"].closed == 1


async def test_start_delivery_error_fails_the_rcpt_only(tmp_path: Path) -> None:
    pipeline = pipe(TWO_TARGETS, tmp_path)
    FAKES["second"].start_err = err(421, (4, 4, 2), "Connection refused")
    delivery = await pipeline.start(meta(), "s@example.org")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("y@b.org")
    assert info.value.misc["effective_rcpt"] == "y@b.org"
    await delivery.add_rcpt("x@a.org")
    await delivery.body(header(), await buffer())
    await delivery.commit()
    assert FAKES["first"].committed[0].rcpts == ["x@a.org"]


async def test_sender_stage_failure_closes_states(tmp_path: Path) -> None:
    pipeline = pipe("  check { test c }\n  modify { test m }\n  deliver_to test t\n", tmp_path)
    FAKES["m"].errors["sender"] = err(553, (5, 1, 7), "Bad sender")
    with pytest.raises(SMTPError):
        await pipeline.start(meta(), "s@example.org")
    assert FAKES["c"].closed == FAKES["c"].created == 1
    assert FAKES["m"].closed == FAKES["m"].created == 1


async def test_misuse_is_a_programming_error(tmp_path: Path) -> None:
    pipeline = pipe("  deliver_to test t\n", tmp_path)
    delivery = await _open(pipeline, ["x@a.org"])
    with pytest.raises(RuntimeError):
        await delivery.commit()  # before body
    await delivery.body(header(), await buffer())
    with pytest.raises(RuntimeError):
        await delivery.add_rcpt("y@a.org")
    await delivery.commit()
    await delivery.abort()  # after commit: nothing to undo
    assert FAKES["t"].started[0].aborted == 0


# --- header changes ----------------------------------------------------------------------------


async def test_header_order_and_received(tmp_path: Path) -> None:
    pipeline = pipe(
        "  check { test c }\n  modify {\n    test m {\n      header DKIM-Signature sig\n    }\n"
        "  }\n  deliver_to test t\n",
        tmp_path,
    )
    FAKES["c"].body = CheckResult(header_fields=[("X-Spam", "no")])
    original = header()
    await deliver(pipeline, "sender@example.org", ["x@a.org"], hdr=original)
    got = FAKES["t"].committed[0].header.decode()
    lines = got.split("\r\n")
    assert lines[0] == "DKIM-Signature: sig"
    assert lines[1] == "X-Spam: no"
    assert lines[2].startswith("Received: from mx.example.org (mx.example.org [127.0.0.1]) by")
    assert got.endswith("From: a@example.org\r\nSubject: hi\r\n\r\n")
    # The check saw the header as received (no Received yet).
    assert FAKES["c"].seen_headers == [original.to_bytes()]
    # The caller's header object is left alone.
    assert original.count("Received") == 0


async def test_no_received_for_locally_generated_mail(tmp_path: Path) -> None:
    pipeline = pipe("  deliver_to test t\n", tmp_path)
    await deliver(pipeline, "s@example.org", ["x@a.org"], m=meta(conn=None))
    assert b"Received" not in FAKES["t"].committed[0].header


async def test_quarantine_flag(tmp_path: Path) -> None:
    pipeline = pipe("  check { test c }\n  deliver_to test t\n", tmp_path)
    FAKES["c"].rcpt["x@a.org"] = CheckResult(quarantine=True, reason=err(550, (5, 7, 1), "Hm"))
    m = meta()
    await deliver(pipeline, "s@example.org", ["x@a.org"], m=m)
    assert m.quarantine
    assert FAKES["t"].committed[0].meta.quarantine


# --- body_non_atomic (LMTP) --------------------------------------------------------------------


async def test_body_non_atomic_statuses_translated(tmp_path: Path) -> None:
    pipeline = pipe(
        "  modify {\n    test m {\n      rcpt alias@a.org box1@a.org box2@a.org\n    }\n  }\n"
        "  destination b.org { deliver_to test atomic }\n"
        "  default_destination { deliver_to test_partial part }\n",
        tmp_path,
    )
    delivery = await _open(pipeline, ["alias@a.org", "plain@a.org", "x@b.org", "ok@a.org"])
    FAKES["part"].partial_err = {
        "box2@a.org": err(552, (5, 2, 2), "Mailbox full"),
        "plain@a.org": None,
        "box1@a.org": None,
    }
    FAKES["atomic"].body_err = err(451, (4, 3, 0), "Try later")
    statuses = Statuses()
    await delivery.body_non_atomic(statuses, header(), await buffer())
    await delivery.commit()
    got = {rcpt: (str(e) if e else None) for rcpt, e in statuses.got.items()}
    assert got == {
        # One of the alias's two mailboxes failed: the alias fails.
        "alias@a.org": "552 5.2.2 Mailbox full",
        "plain@a.org": None,
        "x@b.org": "451 4.3.0 Try later",
        # No status from the target: the outcome of commit.
    }
    assert FAKES["part"].committed  # the partial target is committed
    assert FAKES["atomic"].started[0].aborted == 1 and not FAKES["atomic"].committed


async def test_body_non_atomic_check_failure_sets_every_status(tmp_path: Path) -> None:
    pipeline = pipe("  check { test c }\n  deliver_to test_partial t\n", tmp_path)
    FAKES["c"].body = CheckResult(reject=True, reason=err(550, (5, 7, 1), "Spam"))
    delivery = await _open(pipeline, ["a@x.org", "b@x.org"])
    statuses = Statuses()
    await delivery.body_non_atomic(statuses, header(), await buffer())
    await delivery.commit()  # the endpoint always commits: nothing happens
    assert {r: str(e) for r, e in statuses.got.items()} == {
        "a@x.org": "550 5.7.1 Spam",
        "b@x.org": "550 5.7.1 Spam",
    }
    assert not FAKES["t"].committed and FAKES["t"].started[0].aborted == 1


async def test_body_non_atomic_adds_received_like_smtp(tmp_path: Path) -> None:
    """kittiwake deviation (docs/pipeline.md): the LMTP path adds Received too."""
    pipeline = pipe("  deliver_to test_partial t\n", tmp_path)
    delivery = await _open(pipeline, ["a@x.org"])
    await delivery.body_non_atomic(Statuses(), header(), await buffer())
    await delivery.commit()
    assert FAKES["t"].committed[0].header.startswith(b"Received: ")


async def test_failed_rcpt_gets_no_status(tmp_path: Path) -> None:
    pipeline = pipe("  deliver_to test_partial t\n  deliver_to test u\n", tmp_path)
    delivery = await pipeline.start(meta(), "s@example.org")
    FAKES["u"].rcpt_err["bad@x.org"] = err()
    with pytest.raises(SMTPError):
        await delivery.add_rcpt("bad@x.org")  # `t` already accepted it
    await delivery.add_rcpt("good@x.org")
    FAKES["t"].partial_err = {"bad@x.org": err(), "good@x.org": None}
    statuses = Statuses()
    await delivery.body_non_atomic(statuses, header(), await buffer())
    assert statuses.got == {}  # reported once commit has run
    await delivery.commit()
    assert statuses.got == {"good@x.org": None}


async def test_body_non_atomic_commit_failure_is_its_targets_recipients_only(
    tmp_path: Path,
) -> None:
    """LMTP: a target that fails at commit fails its own recipients; the rest commit."""
    routes = (
        "  destination a.org { deliver_to test_partial t }\n"
        "  destination b.org { deliver_to test u }\n"
        "  default_destination { reject }\n"
    )
    pipeline = pipe(routes, tmp_path)
    delivery = await _open(pipeline, ["x@a.org", "y@b.org"])
    FAKES["t"].commit_err = err(451, (4, 3, 0), "Disk trouble")
    statuses = Statuses()
    await delivery.body_non_atomic(statuses, header(), await buffer())
    await delivery.commit()  # does not raise: the failure is per recipient
    # y@b.org has no status: it shares commit's outcome, which is success.
    assert {r: str(e) for r, e in statuses.got.items()} == {"x@a.org": "451 4.3.0 Disk trouble"}
    assert FAKES["u"].committed and not FAKES["t"].committed


# --- nested pipelines ----------------------------------------------------------------------


async def test_reroute_matches_final_addresses(tmp_path: Path) -> None:
    pipeline = pipe(
        "  destination local.org {\n"
        "    modify {\n      test alias {\n        rcpt user@local.org friend@remote.net\n"
        "      }\n    }\n"
        "    reroute {\n      check { test inner }\n"
        "      destination local.org { deliver_to test mbox }\n"
        "      default_destination { deliver_to test relay }\n    }\n  }\n"
        '  default_destination { reject 550 5.7.1 "No relaying" }\n',
        tmp_path,
    )
    m = meta()
    delivery = await pipeline.start(m, "s@example.org")
    await delivery.add_rcpt("user@local.org")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("friend@remote.net")  # outer rules: no open relay
    assert info.value.message == "No relaying"
    await delivery.body(header(), await buffer())
    await delivery.commit()
    relay = FAKES["relay"].committed[0]
    assert relay.rcpts == ["friend@remote.net"] and relay.mail_from == "s@example.org"
    assert not FAKES["mbox"].started
    # The inner checks saw the outer final address; only one Received.
    assert ("rcpt", "friend@remote.net") in FAKES["inner"].stages()
    assert relay.header.count(b"Received:") == 1
    assert m.original_rcpts["friend@remote.net"] == "user@local.org"


async def test_reroute_combined_with_deliver_to(tmp_path: Path) -> None:
    pipeline = pipe(
        "  deliver_to test direct\n  reroute {\n    deliver_to test nested\n  }\n", tmp_path
    )
    await deliver(pipeline, "s@example.org", ["a@x.org"])
    assert FAKES["direct"].committed[0].rcpts == ["a@x.org"]
    assert FAKES["nested"].committed[0].rcpts == ["a@x.org"]


async def test_msgpipeline_module_as_target(tmp_path: Path) -> None:
    pipeline = pipe(
        "  destination a.org { deliver_to &local_routing }\n"
        "  destination b.org { deliver_to &local_routing }\n"
        "  default_destination { reject }\n",
        tmp_path,
        before="msgpipeline local_routing {\n  hostname inner.example.com\n"
        "  check { test inner }\n  modify {\n    test m {\n      header X-Inner yes\n    }\n  }\n"
        "  deliver_to test box\n}\n",
    )
    await deliver(pipeline, "s@example.org", ["x@a.org", "y@b.org"])
    box = FAKES["box"]
    assert len(box.started) == 1  # one nested delivery for both blocks
    assert box.committed[0].rcpts == ["x@a.org", "y@b.org"]
    assert box.committed[0].header.startswith(b"X-Inner: yes\r\nReceived: ")
    assert FAKES["inner"].closed == FAKES["inner"].created == 1


async def test_nested_pipeline_errors_pass_through_untagged(tmp_path: Path) -> None:
    pipeline = pipe(
        "  reroute {\n    destination x.org { reject 550 5.1.1 Nope }\n"
        "    default_destination { deliver_to test t }\n  }\n",
        tmp_path,
    )
    delivery = await pipeline.start(meta(), "s@example.org")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("a@x.org")
    assert info.value.misc == {"effective_rcpt": "a@x.org"}  # tagged by the inner one only
    await delivery.abort()


async def test_nested_failure_in_lmtp_path(tmp_path: Path) -> None:
    pipeline = pipe(
        "  modify {\n    test m {\n      rcpt list@x.org a@x.org b@x.org\n    }\n  }\n"
        "  reroute {\n    check { test inner }\n    deliver_to test_partial t\n  }\n",
        tmp_path,
    )
    FAKES["inner"].body = CheckResult(reject=True, reason=err(554, (5, 7, 0), "Inner says no"))
    delivery = await _open(pipeline, ["list@x.org", "c@x.org"])
    statuses = Statuses()
    await delivery.body_non_atomic(statuses, header(), await buffer())
    await delivery.commit()
    assert {r: e.message for r, e in statuses.got.items()} == {  # type: ignore[union-attr]
        "list@x.org": "Inner says no",
        "c@x.org": "Inner says no",
    }
    assert not FAKES["t"].committed
