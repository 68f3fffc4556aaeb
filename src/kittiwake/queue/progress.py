"""What an attempt changes in a queue entry, and which notices it owes.

Pure functions on a `Record`, no I/O, so every rule is unit-tested without
a server. The queue applies them, then writes the record to disk before
it does anything else (sends a notice, schedules the next attempt): a
recipient recorded as delivered is never sent the message again, even
after a crash.

Per recipient (docs/target-queue.md, "An attempt"):

* delivered: dropped from the entry; a success notice if it asked for one;
* failed permanently (5xx), or temporarily on its last allowed try: dropped,
  with a "failed" notice if it wants FAILURE;
* failed temporarily with tries left: kept, its try counted and its error
  remembered; once the message has waited `delay_notice`, one "delayed"
  notice if it wants DELAY.

Which notices exist at all (docs/target-queue.md, "Notices"): none without
a `bounce` pipeline, none for a message from the null sender (RFC 3461
§6.2: a notice about a notice could loop), and none a recipient's NOTIFY
does not ask for (RFC 3461 §4.1: no NOTIFY means FAILURE and DELAY).
Success: "relayed" when the next hop did not take over the DSN request
(`dsn_passed` False), nothing when it did (it reports, RFC 3461 §6.2.6),
"delivered" for a final delivery (no `dsn_passed`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kittiwake.queue.attempt import AttemptResult
from kittiwake.queue.record import Action, Notice, Record, StoredError
from kittiwake.queue.schedule import RetryPolicy

__all__ = ["NoticeRules", "apply_attempt", "bounce_all"]


@dataclass(frozen=True, slots=True)
class NoticeRules:
    """Which DSNs this queue sends."""

    #: A `bounce` pipeline is configured: without one, no notices at all.
    enabled: bool
    #: Seconds after arrival before a "delayed" notice; None: never.
    delay_after: float | None

    def allowed(self, record: Record) -> bool:
        return self.enabled and record.sender != ""

    def failure(self, record: Record, rcpt: str) -> bool:
        return self.allowed(record) and record.dsn_for(rcpt).wants("FAILURE")

    def success(self, record: Record, rcpt: str, dsn_passed: bool | None) -> str | None:
        """The success action to report for `rcpt`, or None."""
        if dsn_passed is True or not self.allowed(record):
            return None
        if not record.dsn_for(rcpt).wants("SUCCESS"):
            return None
        return Action.RELAYED if dsn_passed is False else Action.DELIVERED

    def delay_due(self, record: Record, rcpt: str, delay_notified: bool, now: float) -> bool:
        return (
            self.delay_after is not None
            and not delay_notified
            and now - record.arrival >= self.delay_after
            and self.allowed(record)
            and record.dsn_for(rcpt).wants("DELAY")
        )


def apply_attempt(
    record: Record,
    result: AttemptResult,
    policy: RetryPolicy,
    rules: NoticeRules,
    started: float,
    now: float,
) -> list[Notice]:
    """Record an attempt that started at `started` and ended at `now`.

    Updates `record` in place (recipients, tries, errors, attempt times,
    owed notices) and returns the notices it added.
    """
    record.first_attempt = record.first_attempt or started
    record.last_attempt = now
    added: list[Notice] = []
    remaining = []
    for rcpt in record.rcpts:
        if rcpt.addr not in result.outcomes:
            remaining.append(rcpt)  # not part of this attempt
            continue
        error = result.outcomes[rcpt.addr]
        if error is None:
            action = rules.success(record, rcpt.addr, result.dsn_passed)
            if action is not None:
                added.append(Notice(rcpt.addr, action, None, now))
            continue
        stored = StoredError.of(error)
        rcpt.last_error = stored
        final = not stored.temporary or policy.exhausted(rcpt.tries)
        rcpt.tries += 1
        if final:
            if rules.failure(record, rcpt.addr):
                added.append(Notice(rcpt.addr, Action.FAILED, stored, now))
            continue
        remaining.append(rcpt)
        if rules.delay_due(record, rcpt.addr, rcpt.delay_notified, now):
            rcpt.delay_notified = True
            until = policy.gives_up_at(now, rcpt.tries)
            added.append(Notice(rcpt.addr, Action.DELAYED, stored, now, until))
    record.rcpts = remaining
    record.notices.extend(added)
    return added


def bounce_all(record: Record, rules: NoticeRules, error: StoredError, now: float) -> list[Notice]:
    """Fail every recipient still waiting at once (`kittiwake queue bounce`)."""
    added = [
        Notice(r.addr, Action.FAILED, error, now)
        for r in record.rcpts
        if rules.failure(record, r.addr)
    ]
    for rcpt in record.rcpts:
        rcpt.last_error = error
    record.rcpts = []
    record.notices.extend(added)
    return added
