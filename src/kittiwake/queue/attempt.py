"""One delivery attempt of a queued message (docs/target-queue.md, "An attempt").

The attempt drives the queue's target through the ordinary delivery
contract (targets/base.py) and turns whatever happens into one outcome per
recipient: None for delivered, the exception for not. It decides nothing
about retries or notices; `progress.py` does, from these outcomes.

1. `start_delivery` with the attempt's metadata and the stored sender; a
   failure is every recipient's outcome.
2. `add_rcpt` for each recipient still to try; a failure is that
   recipient's. If none is accepted, the delivery is aborted.
3. `body_non_atomic` when the target has it (each recipient its own
   outcome; one not reported shares the commit's), else `body` (a failure
   is every accepted recipient's). If every accepted recipient failed, the
   delivery is aborted, else committed; a failed commit is the outcome of
   every accepted recipient not already failed.

Exceptions of every kind from the target are outcomes, never raised: the
queue turns those without SMTP information into temporary failures.
Cancellation (the server stopping) aborts the delivery and propagates.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.targets.base import Delivery, DeliveryTarget, is_partial

__all__ = ["AttemptResult", "attempt"]


@dataclass
class AttemptResult:
    """What one attempt did, per recipient."""

    #: recipient -> None (delivered) or the error.
    outcomes: dict[str, Exception | None] = field(default_factory=dict)
    #: The delivery's `dsn_passed` (an SMTP next hop that did or did not
    #: take over the DSN request), None when it has no such attribute:
    #: final delivery.
    dsn_passed: bool | None = None


class _Statuses:
    """The `StatusCollector` of `body_non_atomic`: the first status per recipient."""

    def __init__(self) -> None:
        self.errors: dict[str, Exception | None] = {}

    def set_status(self, rcpt: str, error: Exception | None) -> None:
        self.errors.setdefault(rcpt, error)


async def attempt(
    target: DeliveryTarget,
    meta: MsgMeta,
    sender: str,
    rcpts: list[str],
    header: Header,
    body: Buffer,
) -> AttemptResult:
    """Deliver to `rcpts` once; see the module docstring for the steps."""
    result = AttemptResult()
    try:
        delivery = await target.start_delivery(meta, sender)
    except Exception as exc:
        result.outcomes = dict.fromkeys(rcpts, exc)
        return result
    try:
        accepted = await _add_rcpts(delivery, rcpts, result)
        if accepted:
            await _send(delivery, accepted, header, body, result)
        else:
            await _abort(delivery)
    except BaseException:
        await _abort(delivery)
        raise
    passed = getattr(delivery, "dsn_passed", None)
    result.dsn_passed = passed if isinstance(passed, bool) else None
    return result


async def _add_rcpts(delivery: Delivery, rcpts: list[str], result: AttemptResult) -> list[str]:
    accepted = []
    for rcpt in rcpts:
        try:
            await delivery.add_rcpt(rcpt)
        except Exception as exc:
            result.outcomes[rcpt] = exc
        else:
            accepted.append(rcpt)
    return accepted


async def _send(
    delivery: Delivery, accepted: list[str], header: Header, body: Buffer, result: AttemptResult
) -> None:
    if is_partial(delivery):
        statuses = _Statuses()
        try:
            await delivery.body_non_atomic(statuses, header, body)
        except Exception as exc:
            for rcpt in accepted:
                statuses.set_status(rcpt, exc)
        if all(statuses.errors.get(r) is not None for r in accepted):
            await _abort(delivery)
        else:
            try:
                await delivery.commit()
            except Exception as exc:
                for rcpt in accepted:
                    statuses.set_status(rcpt, exc)
        for rcpt in accepted:
            result.outcomes[rcpt] = statuses.errors.get(rcpt)
        return
    try:
        await delivery.body(header, body)
        await delivery.commit()
    except Exception as exc:
        result.outcomes.update(dict.fromkeys(accepted, exc))
        await _abort(delivery)
        return
    result.outcomes.update(dict.fromkeys(accepted))


async def _abort(delivery: Delivery) -> None:
    """Abort, ignoring its own failure: the outcome is already decided."""
    with contextlib.suppress(Exception):
        await delivery.abort()
