"""Running a pipeline's checks for one message, and the check action syntax.

Strategy (docs/pipeline.md, "Checks and modifiers"). A `CheckRunner` lives
for one message. A check module gets one *state* per message, created the
first time a level listing it is used, and shared by every level that lists
the same module
object. A state created late has missed earlier stages, so the runner
replays them for it: `connection()`, `sender()` with the sender the runner
saw last, and `rcpt()` for every recipient checked so far. Each
(state, recipient) pair and each state's body stage run at most once, so a
check listed at two levels never sees the same thing twice.

The checks of one group (the list of one level) run concurrently; their
results are merged in configuration order, not in completion order, so
the outcome does not depend on timing: the first rejecting check (in the
list) decides the error, any quarantine verdict marks the whole message,
and authentication results and header fields accumulate whatever the
verdict. The runner keeps those until the body stage, when `apply_results`
writes them into the header.

The action syntax checks use (`NAME_action`) is part of the check contract
and lives in `kittiwake.checks.base`.
"""

from __future__ import annotations

import asyncio
import functools
import re
import types
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, Protocol, TypeVar, cast

from kittiwake import metrics
from kittiwake.address import to_alabel_domain
from kittiwake.checks.base import (
    DEFAULT_REJECT_MESSAGE,
    AuthResult,
    Check,
    CheckResult,
    CheckState,
    CheckStateBase,
)
from kittiwake.dmarc import DmarcVerdict
from kittiwake.errors import SMTPError
from kittiwake.log import Logger
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header

__all__ = [
    "CheckRunner",
    "DmarcVerifier",
    "GroupCheckState",
    "format_auth_results",
    "merge_results",
]

_Outcome = CheckResult | Exception
_T = TypeVar("_T")


# --- DMARC hook --------------------------------------------------------------


class DmarcVerifier(Protocol):
    """Per-message DMARC evaluation (docs/pipeline.md, "DMARC"), plugged into the runner.

    `fetch_record` starts the policy lookup at the first body-stage call
    without waiting for it; `evaluate` runs after every body check, with
    every SPF and DKIM result this pipeline's checks produced.
    """

    def fetch_record(self, header: Header) -> None: ...

    async def evaluate(self, results: Sequence[AuthResult]) -> DmarcVerdict: ...

    async def close(self) -> None: ...


# --- Merging -----------------------------------------------------------------


def _generic_reject(check: object) -> SMTPError:
    return SMTPError(
        554, (5, 7, 0), DEFAULT_REJECT_MESSAGE, reason=f"{check!r} rejected without a reason"
    )


_PASSED = CheckResult()


#: (state class, stage) -> whether the class does anything at the stage.
_IMPLEMENTS: dict[tuple[type, str], bool] = {}


def _checks(state: CheckState, stage: str) -> bool:
    """Whether `state` does anything at `stage` (not `CheckStateBase`'s pass)."""
    key = (type(state), stage)
    known = _IMPLEMENTS.get(key)
    if known is None:
        known = getattr(key[0], stage, None) is not getattr(CheckStateBase, stage)
        if len(_IMPLEMENTS) < 1000:  # a few classes; never a leak whatever comes
            _IMPLEMENTS[key] = known
    return known


def _start(coro: Coroutine[Any, Any, _T]) -> tuple[bool, Any]:
    """Run `coro` until it finishes or first waits: (True, its value) or (False, what it yielded).

    A check stage that needs nothing it must wait for (a cached key, a
    result already there) thus costs no task and no trip through the event
    loop. An exception from `coro` propagates.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, yielded


@types.coroutine
def _finish(coro: Coroutine[Any, Any, _T], yielded: Any) -> Generator[Any, Any, _T]:
    """Await the rest of `coro`, started by `_start`, which yielded `yielded`.

    What `await` does for a coroutine, from its first suspension on: what it
    waits for goes up to the task, what the task sends or throws (a
    cancellation) goes down to it. The task that ran the start runs the
    rest, so code that holds on to its task (`asyncio.timeout`) is right.
    """
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return cast(_T, stop.value)
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return cast(_T, stop.value)


async def _gather(
    states: Sequence[CheckState],
    run: Callable[[CheckState], Coroutine[Any, Any, CheckResult]],
    stage: str = "",
) -> list[_Outcome]:
    """Run one stage on every state concurrently; outcomes in `states` order.

    An exception from a check is returned in its place (it fails the stage
    like a reject). Cancellation and other BaseExceptions propagate, once
    the other calls have been cancelled and have finished. With `stage`
    (`check_rcpt`, ...), states that only inherit `CheckStateBase`'s pass
    for it are not called at all: most checks act at one stage.

    The states are called in turn in the caller's task, each until it
    finishes or must wait. Most finish at once (results kept from earlier
    messages, keys in the DNS cache): then the stage costs no task at all.
    The first one that must wait finishes in the caller's task; each state
    after it gets a task of its own, started first so that all of them
    overlap (a check waiting on DNS lets the others run). Every call thus
    runs in one task from start to end.
    """
    outcomes: list[_Outcome] = []
    for i, state in enumerate(states):
        if stage and not _checks(state, stage):
            outcomes.append(_PASSED)
            continue
        coro = run(state)
        try:
            done, got = _start(coro)
        except Exception as exc:
            outcomes.append(exc)
            continue
        if done:
            outcomes.append(got)
            continue
        rest = [s for s in states[i + 1 :] if not stage or _checks(s, stage)]
        waited: list[_Outcome] = []
        await _wait_rest(coro, got, rest, run, waited)
        outcomes.append(waited[0])
        more = iter(waited[1:])
        for later in states[i + 1 :]:
            outcomes.append(next(more) if not stage or _checks(later, stage) else _PASSED)
        break
    return outcomes


async def _wait_rest(
    coro: Coroutine[Any, Any, CheckResult],
    yielded: Any,
    rest: Sequence[CheckState],
    run: Callable[[CheckState], Coroutine[Any, Any, CheckResult]],
    outcomes: list[_Outcome],
) -> None:
    """`_gather` once a call must wait: it finishes here, `rest` each in a task."""
    others = [asyncio.ensure_future(run(s)) for s in rest]
    try:
        try:
            outcomes.append(await _finish(coro, yielded))
        except Exception as exc:
            outcomes.append(exc)
        for task in others:
            try:
                outcomes.append(await task)
            except Exception as exc:
                outcomes.append(exc)
    except BaseException:
        await _stop(others)
        raise


async def _stop(tasks: Sequence[asyncio.Future[CheckResult]]) -> None:
    """Cancel `tasks` and wait until each has finished (as `asyncio.gather` would)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited is not reported again


def merge_results(results: Sequence[CheckResult]) -> CheckResult:
    """Combine one group's results into one (config order decides the reason).

    A result with `quarantine` counts as quarantine even if it also says
    reject; the first rejecting result's reason is the group's reason
    (docs/pipeline.md, "Checks and modifiers").
    """
    merged = CheckResult()
    for res in results:
        merged.auth_results.extend(res.auth_results)
        merged.header_fields.extend(res.header_fields)
        if res.quarantine:
            merged.quarantine = True
            if merged.reason is None:
                merged.reason = res.reason
        elif res.reject and not merged.reject:
            merged.reject = True
            merged.reason = res.reason if res.reason is not None else _generic_reject(res)
    return merged


class GroupCheckState:
    """The state of a `checks` group used as one check: members run concurrently."""

    __slots__ = ("_states",)

    def __init__(self, states: Sequence[CheckState]) -> None:
        self._states = list(states)

    async def _run(
        self, run: Callable[[CheckState], Coroutine[Any, Any, CheckResult]]
    ) -> CheckResult:
        if not self._states:
            return CheckResult()
        outcomes = await _gather(self._states, run)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return merge_results([o for o in outcomes if isinstance(o, CheckResult)])

    async def check_connection(self) -> CheckResult:
        return await self._run(lambda s: s.check_connection())

    async def check_sender(self, mail_from: str) -> CheckResult:
        return await self._run(lambda s: s.check_sender(mail_from))

    async def check_rcpt(self, rcpt: str) -> CheckResult:
        return await self._run(lambda s: s.check_rcpt(rcpt))

    async def check_body(self, header: Header, body: Buffer) -> CheckResult:
        return await self._run(lambda s: s.check_body(header, body))

    async def close(self) -> None:
        errors: list[Exception] = []
        for state in self._states:
            try:
                await state.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


# --- The runner ----------------------------------------------------------------


class CheckRunner:
    """Check states and merged results of one message (docs/pipeline.md)."""

    __slots__ = (
        "_body_done",
        "_dmarc",
        "_dmarc_fetched",
        "_levels",
        "_log",
        "_names",
        "_rcpt_done",
        "_rcpts",
        "_sender",
        "_states",
        "auth_results",
        "header_fields",
        "meta",
        "quarantine",
    )

    def __init__(self, meta: MsgMeta, log: Logger, dmarc: DmarcVerifier | None = None) -> None:
        self.meta = meta
        self._log = log
        self._dmarc = dmarc
        self._dmarc_fetched = False
        # id(check) -> (check, state); the check is kept so its id stays unique.
        self._states: dict[int, tuple[Check, CheckState]] = {}
        # id(state) -> its check's name, for the metrics (docs/metrics.md).
        self._names: dict[int, str] = {}
        # id(level's check list) -> (the list, its states), see `_states_for`.
        self._levels: dict[int, tuple[Sequence[Check], list[CheckState]]] = {}
        self._sender: str | None = None  # None until the sender stage ran
        self._rcpts: list[str] = []
        self._rcpt_done: dict[int, set[str]] = {}
        self._body_done: set[int] = set()
        self.quarantine = False
        self.auth_results: list[AuthResult] = []
        self.header_fields: list[tuple[str, str]] = []

    # -- states and replay ------------------------------------------------

    async def _states_for(self, checks: Sequence[Check]) -> list[CheckState]:
        """The states of `checks` (unique, in order), creating and replaying new ones.

        A level's list, once made, is kept for the message: states are only
        ever added, and all of this level's exist.
        """
        known = self._levels.get(id(checks))
        if known is not None:
            return known[1]
        states = await self._make_states(checks)
        self._levels[id(checks)] = (checks, states)
        return states

    async def _make_states(self, checks: Sequence[Check]) -> list[CheckState]:
        states: list[CheckState] = []
        new: list[tuple[int, Check, CheckState]] = []
        seen: set[int] = set()
        for check in checks:
            key = id(check)
            if key in seen:
                continue
            seen.add(key)
            known = self._states.get(key)
            if known is not None:
                states.append(known[1])
                continue
            try:
                state = await check.check_state(self.meta)
            except BaseException:
                await self._close_new(new)
                raise
            new.append((key, check, state))
            if metrics.current().enabled:
                self._names[id(state)] = metrics.target_label(check)
            states.append(state)
        if not new:
            return states
        fresh = [state for _, _, state in new]
        try:
            if self._sender is not None:
                sender = self._sender
                # Only states that act at a stage take part in it.
                active = [s for s in fresh if _checks(s, "check_connection")]
                if active:
                    self._merge(active, await _gather(active, lambda s: s.check_connection()))
                active = [s for s in fresh if _checks(s, "check_sender")]
                if active:
                    self._merge(active, await _gather(active, lambda s: s.check_sender(sender)))
            for rcpt in self._rcpts:
                await self._run_rcpt(fresh, rcpt)
        except BaseException:
            await self._close_new(new)
            raise
        # Registered only once nothing can fail, so a failed replay leaves
        # no half-initialised state behind (the next use creates it again).
        for key, check, state in new:
            self._states[key] = (check, state)
        return states

    async def _close_new(self, new: list[tuple[int, Check, CheckState]]) -> None:
        for _, _, state in new:
            self._rcpt_done.pop(id(state), None)
            self._body_done.discard(id(state))
            await self._close_one(state)

    async def _close_one(self, state: CheckState) -> None:
        try:
            await state.close()
        except Exception as exc:
            self._log.error("failed to close check state", err=exc, msg_id=self.meta.id)

    def _merge(self, states: Sequence[CheckState], outcomes: Sequence[_Outcome]) -> None:
        """Fold one group's outcomes into the message; raise the group's failure.

        Config order decides which failure is reported, whatever finished
        first. Quarantine is recorded even when another check of the group
        rejects, so a verdict is never lost.
        """
        failure: Exception | None = None
        counted = metrics.current()
        if counted.enabled:
            for state, outcome in zip(states, outcomes, strict=True):
                counted.check_result(self._names.get(id(state), "unknown"), _verdict(outcome))
        for state, outcome in zip(states, outcomes, strict=True):
            if isinstance(outcome, Exception):
                if failure is None:
                    failure = outcome  # logged by whoever handles the raise
                elif not isinstance(outcome, SMTPError):
                    self._log.error("check failed", err=outcome, msg_id=self.meta.id)
                continue
            if outcome.auth_results:
                self.auth_results.extend(outcome.auth_results)
            if outcome.header_fields:
                self.header_fields.extend(outcome.header_fields)
            if outcome.quarantine:
                self.quarantine = True
                self._log.info(
                    "quarantined", msg_id=self.meta.id, reason=_describe(outcome.reason, state)
                )
            elif outcome.reject:
                if failure is None:
                    failure = (
                        outcome.reason if outcome.reason is not None else (_generic_reject(state))
                    )
            elif outcome.reason is not None:
                # `ignore` action: the failure is only worth a log line.
                self._log.info(
                    "no check action", msg_id=self.meta.id, reason=_describe(outcome.reason, state)
                )
        if failure is not None:
            raise failure

    async def _run_rcpt(self, states: Sequence[CheckState], rcpt: str) -> None:
        todo: list[CheckState] = []
        for state in states:
            if not _checks(state, "check_rcpt"):
                continue  # nothing to run, nothing to replay
            done = self._rcpt_done.setdefault(id(state), set())
            if rcpt not in done:
                done.add(rcpt)
                todo.append(state)
        if todo:
            self._merge(todo, await _gather(todo, lambda s: s.check_rcpt(rcpt)))

    # -- stages -----------------------------------------------------------

    async def check_sender(self, checks: Sequence[Check], mail_from: str) -> None:
        """Connection and sender stage of one level (creating its states replays them)."""
        self._sender = mail_from
        if checks:
            await self._states_for(checks)

    async def check_rcpt(self, checks: Sequence[Check], rcpt: str) -> None:
        """Recipient stage of one level; `rcpt` is remembered for later replays."""
        try:
            if checks:
                await self._run_rcpt(await self._states_for(checks), rcpt)
        finally:
            self._rcpts.append(rcpt)

    async def check_body(self, checks: Sequence[Check], header: Header, body: Buffer) -> None:
        """Body stage of one level; a state already given the body is skipped."""
        if self._dmarc is not None and not self._dmarc_fetched:
            self._dmarc_fetched = True
            self._dmarc.fetch_record(header)
        if not checks:
            return
        todo: list[CheckState] = []
        for state in await self._states_for(checks):
            if id(state) not in self._body_done and _checks(state, "check_body"):
                self._body_done.add(id(state))
                todo.append(state)
        if todo:
            self._merge(todo, await _gather(todo, lambda s: s.check_body(header, body)))

    async def apply_results(self, hostname: str, header: Header) -> None:
        """Quarantine flag, DMARC, `Authentication-Results`, then fields from checks.

        Each field is prepended, so the result reads from the top: fields
        from checks, `Authentication-Results`, then whatever was already
        there (docs/pipeline.md, "Header fields added at the body stage").
        """
        if self.quarantine:
            self.meta.quarantine = True
        results = list(self.auth_results)
        if self._dmarc is not None:
            verdict = await self._dmarc.evaluate(results)
            results.append(verdict.auth_result)
            if verdict.policy == "reject":
                temporary = verdict.auth_result.result == "temperror"
                raise SMTPError(
                    450 if temporary else 550,
                    (4 if temporary else 5, 7, 1),
                    "DMARC check failed",
                    check_name="dmarc",
                    reason=verdict.auth_result.reason,
                )
            if verdict.policy == "quarantine":
                self.meta.quarantine = True
                self._log.info(
                    "quarantined",
                    msg_id=self.meta.id,
                    check="dmarc",
                    reason=verdict.auth_result.reason,
                )
        if results:
            header.add("Authentication-Results", format_auth_results(hostname, results))
        for name, value in self.header_fields:
            header.add(name, value)

    async def close(self) -> None:
        """Close every state (and the DMARC verifier); safe to call twice."""
        states, self._states = self._states, {}
        self._levels = {}
        for _, state in states.values():
            if _checks(state, "close"):  # the base class has nothing to close
                await self._close_one(state)
        dmarc, self._dmarc = self._dmarc, None
        if dmarc is not None:
            try:
                await dmarc.close()
            except Exception as exc:
                self._log.error("failed to close DMARC state", err=exc, msg_id=self.meta.id)


def _verdict(outcome: _Outcome) -> str:
    """The `result` label of one check outcome (docs/metrics.md)."""
    if isinstance(outcome, Exception):
        return "reject" if isinstance(outcome, SMTPError) else "error"
    if outcome.quarantine:
        return "quarantine"
    if outcome.reject:
        return "reject"
    return "pass" if outcome.reason is None else "ignore"


def _describe(reason: SMTPError | None, state: object) -> str:
    if reason is None:
        return type(state).__name__
    text = str(reason)
    if reason.check_name:
        text = f"{reason.check_name}: {text}"
    return f"{text} ({reason.reason})" if reason.reason else text


# --- Authentication-Results (RFC 8601; docs/pipeline.md) -----------------------

#: Characters that make a value a quoted-string: white space, controls and
#: RFC 2045 tspecials.
_NEEDS_QUOTES = re.compile(r'[\x00- ()<>@,;:\\"/\[\]?=]')
#: An address- or domain-like pvalue: letters and digits (any script, as
#: `str.isalnum` has them; `\w` adds only `_`) and address punctuation.
_PLAIN_PVALUE = re.compile(r"[\w#$%&'*+,./@\[\]\\^`{|}~-]*")


#: Control characters become spaces: a value that came from a message (a
#: reason quoting a header, a domain from a signature) must never be able to
#: end the A-R field and start a header field of its own.
_CONTROLS = {c: " " for c in (*range(32), 127)}


def _quote_value(text: str) -> str:
    """RFC 2045 `value`: a token as is, anything else as a quoted-string."""
    if not text.isprintable():
        text = text.translate(_CONTROLS)
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _pvalue(text: str) -> str:
    """RFC 8601 `pvalue`: address- and domain-like values stay unquoted."""
    if _PLAIN_PVALUE.fullmatch(text):
        return text
    return _quote_value(text)


@functools.lru_cache(maxsize=64)
def authserv_id(hostname: str) -> str:
    """Our authserv-id in A-R fields (RFC 8601 §2.5): the host name in A-labels, lowercase."""
    try:
        return to_alabel_domain(hostname).lower()
    except (UnicodeError, ValueError):
        return hostname.lower()


def format_auth_results(hostname: str, results: Sequence[AuthResult]) -> str:
    """`AUTHSERV-ID; method=result [reason=...] [params sorted]; ...`.

    The authserv-id is the host name in A-labels. Empty parameters are
    left out; a result without parameters gets no trailing space (maddy
    writes one; nothing requires it).
    """
    parts = [authserv_id(hostname)]
    for res in results:
        entry = [f"{res.method}={res.result}"]
        params = res.params
        reason = res.reason or params.get("reason", "")
        if reason:
            entry.append("reason=" + _quote_value(reason))
        for name in sorted(params) if len(params) > 1 else params:
            value = params[name]
            if name != "reason" and value:
                entry.append(f"{name}={_pvalue(value)}")
        parts.append(" ".join(entry))
    return "; ".join(parts)
