"""The queue's pure parts: retry arithmetic, the metadata format, what an attempt changes.

These need no server: the retry delays, the JSON round trip and the checks
that send a damaged entry to quarantine, and the rules that decide which
recipient is retried, failed or notified (docs/target-queue.md).
"""

from __future__ import annotations

import json
import math

import pytest

from kittiwake.errors import SMTPError
from kittiwake.message import RcptDSN, SMTPOptions
from kittiwake.queue.attempt import AttemptResult
from kittiwake.queue.progress import NoticeRules, apply_attempt, bounce_all
from kittiwake.queue.record import CorruptEntry, FileSum, Notice, Rcpt, Record, StoredError
from kittiwake.queue.schedule import MAX_DELAY, RetryPolicy

SUM = FileSum(10, "0" * 64)
ON = NoticeRules(enabled=True, delay_after=3600.0)


def record(*rcpts: str, sender: str = "me@example.org", **kw: object) -> Record:
    return Record(
        id="0123456789abcdef",
        msg_id="abcd1234",
        sender=sender,
        original_sender=sender,
        rcpts=[Rcpt(r) for r in rcpts],
        header=SUM,
        body=SUM,
        arrival=1000.0,
        **kw,  # type: ignore[arg-type]
    )


# --- schedule ------------------------------------------------------------------------


def test_delays_use_the_real_valued_scale() -> None:
    policy = RetryPolicy(initial=900.0, scale=1.25)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [900.0, 1125.0, 1406.25, 1757.8125]


def test_the_least_tried_recipient_sets_the_pace() -> None:
    policy = RetryPolicy(initial=60.0, scale=2.0)
    assert policy.next_attempt(100.0, [3, 1, 2]) == 160.0
    assert policy.next_attempt(100.0, [3]) == 100.0 + 240.0


def test_at_start_keeps_the_schedule_but_waits_post_init_delay() -> None:
    policy = RetryPolicy(initial=600.0, scale=1.0, post_init_delay=10.0)
    assert policy.at_start(1000.0, [1], now=1100.0) == 1600.0  # still ahead
    assert policy.at_start(1000.0, [1], now=5000.0) == 5010.0  # overdue: after the delay
    assert policy.at_start(None, [], now=5000.0) == 5010.0  # never tried


def test_default_schedule_gives_up_after_about_68_hours() -> None:
    policy = RetryPolicy()
    total = sum(policy.delay(n) for n in range(1, policy.max_tries))
    assert math.isclose(total / 3600, 68.39, abs_tol=0.01)
    assert math.isclose(policy.gives_up_at(0.0, 1) / 3600, 68.39, abs_tol=0.01)


def test_huge_settings_do_not_overflow() -> None:
    policy = RetryPolicy(initial=900.0, scale=999.0, max_tries=100000)
    assert policy.delay(5000) == MAX_DELAY


def test_exhausted_after_max_tries() -> None:
    policy = RetryPolicy(max_tries=3)
    assert [policy.exhausted(t) for t in (0, 1, 2)] == [False, False, True]


# --- the metadata format ---------------------------------------------------------------


def full_record() -> Record:
    r = record(
        "b@example.net",
        smtp=SMTPOptions(size=123, body="8BITMIME", smtputf8=True, dsn_ret="HDRS", dsn_envid="e1"),
        original_rcpts={"b@example.net": "B@Example.NET"},
        rcpt_dsn={"B@Example.NET": RcptDSN(("SUCCESS", "FAILURE"), ("rfc822", "b@x"))},
        quarantine=True,
        tls_not_required=True,
        first_attempt=1001.0,
        last_attempt=1002.5,
    )
    r.rcpts[0].tries = 2
    r.rcpts[0].last_error = StoredError(451, (4, 4, 1), "busy")
    r.notices.append(Notice("c@example.net", "failed", StoredError(550, (5, 1, 1), "no"), 1002.0))
    return r


def test_metadata_round_trip() -> None:
    r = full_record()
    back = Record.from_bytes(r.to_bytes(), r.id)
    assert back == r
    assert back.dsn_for("b@example.net").wants("SUCCESS")


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("rcpts"),
        lambda d: d.update(version=2),
        lambda d: d.update(id="fedcba9876543210"),
        lambda d: d["rcpts"][0].update(tries=-1),
        lambda d: d["rcpts"][0].update(addr=""),
        lambda d: d["rcpts"][0].update(last_error={"code": 451, "enhanced": [4, 4], "message": ""}),
        lambda d: d["header"].update(sha256="xyz"),
        lambda d: d.update(rcpts=[], notices=[]),
        lambda d: d["notices"][0].update(action="exploded"),
        lambda d: d["smtp"].update(smtputf8="yes"),
        lambda d: d.update(arrival="yesterday"),
    ],
)
def test_damaged_metadata_is_refused(change: object) -> None:
    r = full_record()
    doc = json.loads(r.to_bytes())
    change(doc)  # type: ignore[operator]
    with pytest.raises(CorruptEntry):
        Record.from_bytes(json.dumps(doc).encode(), r.id)


def test_truncated_metadata_is_refused() -> None:
    data = full_record().to_bytes()
    for cut in (1, len(data) // 2, len(data) - 3):
        with pytest.raises(CorruptEntry):
            Record.from_bytes(data[:cut], "0123456789abcdef")


# --- what an attempt changes ---------------------------------------------------------


def outcome(**errors: Exception | None) -> AttemptResult:
    return AttemptResult({k.replace("_", "@") + ".example": v for k, v in errors.items()})


TEMP = SMTPError(451, (4, 4, 1), "busy")
PERM = SMTPError(550, (5, 1, 1), "no such user")


def test_outcomes_per_recipient() -> None:
    r = record("a@ok.example", "b@ok.example", "c@ok.example")
    added = apply_attempt(
        r, outcome(a_ok=None, b_ok=TEMP, c_ok=PERM), RetryPolicy(), ON, 1000.0, 1001.0
    )
    assert [x.addr for x in r.rcpts] == ["b@ok.example"]
    assert r.rcpts[0].tries == 1 and str(r.rcpts[0].last_error) == "451 4.4.1 busy"
    assert [(n.rcpt, n.action) for n in added] == [("c@ok.example", "failed")]
    assert r.first_attempt == 1000.0 and r.last_attempt == 1001.0


def test_an_error_without_smtp_information_is_temporary_451_400() -> None:
    r = record("a@ok.example")
    apply_attempt(r, outcome(a_ok=RuntimeError("boom")), RetryPolicy(), ON, 1.0, 2.0)
    assert str(r.rcpts[0].last_error) == "451 4.0.0 Internal server error"


def test_the_last_try_fails_for_good() -> None:
    r = record("a@ok.example")
    policy = RetryPolicy(max_tries=2)
    apply_attempt(r, outcome(a_ok=TEMP), policy, ON, 1.0, 2.0)
    added = apply_attempt(r, outcome(a_ok=TEMP), policy, ON, 3.0, 4.0)
    assert r.rcpts == []
    assert [(n.action, str(n.error)) for n in added] == [("failed", "451 4.4.1 busy")]


def test_no_notices_without_bounce_or_for_the_null_sender_or_never() -> None:
    for rules, rec in (
        (NoticeRules(enabled=False, delay_after=None), record("a@ok.example")),
        (ON, record("a@ok.example", sender="")),
        (ON, record("a@ok.example", rcpt_dsn={"a@ok.example": RcptDSN(("NEVER",))})),
    ):
        assert apply_attempt(rec, outcome(a_ok=PERM), RetryPolicy(), rules, 1.0, 2.0) == []


def test_success_notices_follow_notify_and_dsn_passed() -> None:
    wants = {"a@ok.example": RcptDSN(("SUCCESS",))}
    for passed, expected in ((None, ["delivered"]), (False, ["relayed"]), (True, [])):
        r = record("a@ok.example", rcpt_dsn=wants)
        result = AttemptResult({"a@ok.example": None}, dsn_passed=passed)
        added = apply_attempt(r, result, RetryPolicy(), ON, 1.0, 2.0)
        assert [n.action for n in added] == expected
    r = record("a@ok.example")  # default NOTIFY: no success notice
    assert apply_attempt(r, outcome(a_ok=None), RetryPolicy(), ON, 1.0, 2.0) == []


def test_one_delayed_notice_after_delay_notice() -> None:
    r = record("a@ok.example", "b@ok.example", rcpt_dsn={"b@ok.example": RcptDSN(("FAILURE",))})
    policy = RetryPolicy(max_tries=10)
    assert apply_attempt(r, outcome(a_ok=TEMP, b_ok=TEMP), policy, ON, 1100.0, 1100.0) == []
    added = apply_attempt(r, outcome(a_ok=TEMP, b_ok=TEMP), policy, ON, 4700.0, 4700.0)
    assert [(n.rcpt, n.action) for n in added] == [("a@ok.example", "delayed")]
    assert added[0].retry_until is not None and added[0].retry_until > 4700.0
    assert apply_attempt(r, outcome(a_ok=TEMP, b_ok=TEMP), policy, ON, 9000.0, 9000.0) == []


def test_bounce_all_fails_everyone_waiting() -> None:
    r = record("a@ok.example", "b@ok.example", rcpt_dsn={"b@ok.example": RcptDSN(("NEVER",))})
    added = bounce_all(r, ON, StoredError(554, (5, 0, 0), "cancelled"), 5.0)
    assert r.rcpts == []
    assert [n.rcpt for n in added] == ["a@ok.example"]
