"""`check.spf`: may the client send mail for the MAIL FROM domain (RFC 7208)?

    check.spf {
        debug no
        enforce_early no
        none_action ignore
        neutral_action ignore
        fail_action quarantine
        softfail_action ignore
        permerr_action ignore
        temperr_action ignore
    }

Strategy (docs/checks.md, "spf"). Evaluation starts when the message's
state is created (the sender stage: MAIL FROM, or its first RCPT with
`defer_sender_reject`) and runs in the background, on a worker thread
(`spf_eval.evaluate`), while the client sends recipients and the body. Its
inputs are the client's address (`ConnInfo.remote_ip`: the one a trusted
PROXY header named), the HELO name, and the MAIL FROM exactly as the client
gave it, before any rewriting, normalised by `spf_sender`. Clients on a
Unix socket and messages kittiwake makes itself have no address to check:
no result, no `Authentication-Results` entry.

The result always gives an `spf=` entry for `Authentication-Results`, with
`smtp.mailfrom` and `smtp.helo` (the pipeline's DMARC reads those names).
The action configured for the result applies:

* with `enforce_early yes`, at the sender stage, which waits for the result;
* otherwise at the body stage. If DMARC will evaluate the message
  (`meta.dmarc_runs`) and the From domain publishes a `quarantine` or
  `reject` policy, the action is left to DMARC (the result is still
  recorded and logged). Without DMARC running, SPF acts on its own.

A malformed sender is refused (`550 5.1.7`), and a crash of the evaluation
answers `451 4.0.0`, whatever the actions say.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import replace

from kittiwake.address import split, to_alabel_domain
from kittiwake.checks.base import (
    OK,
    AuthResult,
    CheckAction,
    CheckResult,
    CheckState,
    CheckStateBase,
    action_directive,
)
from kittiwake.checks.spf_eval import SPFOutcome, evaluate
from kittiwake.config.directives import Directives
from kittiwake.dmarc import published_policy
from kittiwake.errors import EnhancedCode, SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Module, register

__all__ = ["SPF", "spf_sender"]

#: Results remembered (`SPF.outcome`): how many, and for how long at most.
RESULT_CACHE_SIZE = 10_000
RESULT_TTL = 300.0

NAME = "check.spf"
IGNORE = CheckAction("ignore")

#: Result -> the reply a rejecting action gives, and the directive that
#: chooses the action (docs/checks.md, "spf").
_FAILURES: dict[str, tuple[int, EnhancedCode, str, str]] = {
    "none": (550, (5, 7, 23), "No SPF policy", "none_action"),
    "neutral": (550, (5, 7, 23), "Neutral SPF result is not permitted", "neutral_action"),
    "fail": (550, (5, 7, 23), "SPF authentication failed", "fail_action"),
    "softfail": (550, (5, 7, 23), "SPF authentication soft-failed", "softfail_action"),
    "temperror": (
        451,
        (4, 7, 23),
        "SPF authentication failed with a temporary error",
        "temperr_action",
    ),
    "permerror": (
        550,
        (5, 7, 23),
        "SPF authentication failed with a permanent error",
        "permerr_action",
    ),
}
_DEFAULT_ACTIONS = {"fail_action": CheckAction("quarantine")}


def spf_sender(mail_from: str) -> str:
    """The sender SPF evaluates for a MAIL FROM; ValueError if it has none.

    The null sender stays empty (the evaluation then checks `postmaster@HELO`,
    RFC 7208 §2.4). The domain is converted to A-labels (RFC 8616 §4); an
    address literal is kept (it gives `none`, RFC 7208 §4.3). A local part
    that is not ASCII cannot appear in a DNS query and is replaced by
    `postmaster`, what RFC 7208 §4.3 uses when there is none.
    """
    if not mail_from:
        return ""
    return _spf_sender(mail_from, *split(mail_from))


def _spf_sender(mail_from: str, local: str, domain: str) -> str:
    """`spf_sender` for an address already split."""
    if not domain:
        raise ValueError(f"no domain in {mail_from!r}")
    if not domain.startswith("["):
        try:
            domain = to_alabel_domain(domain)
        except (UnicodeError, ValueError) as exc:
            raise ValueError(f"domain {domain!r} has no A-label form: {exc}") from None
    if not local.isascii():
        local = "postmaster"
    return f"{local}@{domain}"


@register(NAME)
class SPF(Module):
    """The module: configuration, and one `_State` per message."""

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        self.enforce_early = cfg.boolean("enforce_early", default=False)
        self.actions: dict[str, CheckAction] = {}
        for _code, _enhanced, _text, directive in _FAILURES.values():
            default = _DEFAULT_ACTIONS.get(directive, IGNORE)
            self.actions[directive] = cfg.custom(directive, action_directive, default)
        cfg.finish()
        # `%{r}` in explanations: the host doing the check (RFC 7208 §7.3).
        present, hostname = self.container.global_value("hostname")
        self.receiver = str(hostname) if present and hostname else "unknown"
        self._results: OrderedDict[tuple[str, str, str], SPFOutcome] = OrderedDict()

    async def check_state(self, meta: MsgMeta) -> CheckState:
        """The state of one message, of the class for the one stage it acts at.

        The pipeline calls a stage only on states whose class implements it
        (docs/pipeline.md), so a state that acts at the body stage alone
        costs nothing at the others.
        """
        state = (_EarlyState if self.enforce_early else _State)(self, meta)
        if state.malformed is not None:
            return _Malformed(state.malformed)
        return state

    def outcome(self, ip: str, sender: str, helo: str) -> SPFOutcome | asyncio.Future[SPFOutcome]:
        """The result for (ip, sender, HELO): remembered while its DNS answers hold.

        A result remembered is returned as it is, else the evaluation's task.

        A result depends only on those three and on DNS, so while every
        answer it rested on is fresh, evaluating again would give it again:
        a busy MX hears from the same sender at the same address all day.
        It is kept no longer than its first stale answer and `RESULT_TTL`,
        never for a temperror, and at most `RESULT_CACHE_SIZE` of them.
        """
        key = (ip, sender, helo)
        known = self._results.get(key)
        if known is not None and known.fresh_until > time.monotonic():
            self._results.move_to_end(key)
            return known
        task = asyncio.get_running_loop().create_task(
            evaluate(self.container.resolver, ip, sender, helo, receiver=self.receiver)
        )
        task.add_done_callback(lambda finished: self._remember(key, finished))
        return task

    def _remember(self, key: tuple[str, str, str], task: asyncio.Future[SPFOutcome]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        outcome = task.result()
        if outcome.result == "temperror":
            return
        until = min(outcome.fresh_until, time.monotonic() + RESULT_TTL)
        self._results[key] = replace(outcome, fresh_until=until)
        self._results.move_to_end(key)
        while len(self._results) > RESULT_CACHE_SIZE:
            self._results.popitem(last=False)

    def judge(self, outcome: SPFOutcome, params: dict[str, str]) -> tuple[CheckResult, CheckAction]:
        """The A-R entry and unjudged failure for a result, and the action it calls for."""
        note = outcome.problem or ("no policy" if outcome.result == "none" else "")
        entry = AuthResult("spf", outcome.result, dict(params), note)
        failure = _FAILURES.get(outcome.result)
        if failure is None:  # pass
            return CheckResult(auth_results=[entry]), IGNORE
        code, enhanced, text, directive = failure
        why = outcome.problem or outcome.explanation or outcome.mechanism
        reason = SMTPError(code, enhanced, text, check_name=NAME, reason=why)
        return CheckResult(reason=reason, auth_results=[entry]), self.actions[directive]


class _State(CheckStateBase):
    """One message: the evaluation in the background, its verdict at the body stage."""

    def __init__(self, check: SPF, meta: MsgMeta) -> None:
        self.check = check
        self.meta = meta
        #: The result, when it was known at once; else the evaluation's task.
        self._known: SPFOutcome | None = None
        self._task: asyncio.Future[SPFOutcome] | None = None
        #: Why the sender cannot be checked (`_Malformed` takes over).
        self.malformed: SMTPError | None = None
        self._params: dict[str, str] = {}
        conn = meta.conn
        if conn is None:
            check.log.debug("skipping locally generated message", msg_id=meta.id)
            return
        if conn.remote_ip is None:
            check.log.debug("skipping a client without an IP address", msg_id=meta.id)
            return
        mail_from = meta.original_from
        self._params = {"smtp.helo": conn.helo}
        try:
            if mail_from:
                local, domain = split(mail_from)
                sender = _spf_sender(mail_from, local, domain)
                self._params["smtp.mailfrom"] = domain
            else:
                sender = ""
        except ValueError as exc:
            self._params = {}
            self.malformed = SMTPError(
                550, (5, 1, 7), "Malformed address", check_name=NAME, reason=str(exc)
            )
            return
        ip = conn.remote_ip.partition("%")[0]  # no IPv6 zone
        outcome = check.outcome(ip, sender, conn.helo)
        if isinstance(outcome, SPFOutcome):
            self._known = outcome
        else:
            self._task = outcome

    @property
    def _evaluated(self) -> bool:
        """Whether there is a result to judge (known, or on its way)."""
        return self._known is not None or self._task is not None

    async def _judged(self) -> tuple[CheckResult, CheckAction]:
        try:
            outcome = self._known
            if outcome is None:
                assert self._task is not None
                outcome = await self._task
        except Exception as exc:
            self.check.log.error("SPF evaluation failed", err=exc, msg_id=self.meta.id)
            reason = SMTPError(
                451,
                (4, 0, 0),
                "Internal error during policy check",
                check_name=NAME,
                reason=repr(exc),
            )
            return CheckResult(reject=True, reason=reason), IGNORE
        log = self.check.log
        if log.debug_enabled:
            log.debug(
                "result",
                msg_id=self.meta.id,
                result=outcome.result,
                mechanism=outcome.mechanism,
                problem=outcome.problem,
            )
        return self.check.judge(outcome, self._params)

    async def check_body(self, header: Header, body: Buffer) -> CheckResult:
        if not self._evaluated:
            return OK
        result, action = await self._judged()
        if result.reason is None or action.kind == "ignore":
            return result
        if self.meta.dmarc_runs:
            policy = await published_policy(self.check.container.resolver, header)
            if policy in ("quarantine", "reject"):
                self.check.log.info(
                    "action left to DMARC",
                    msg_id=self.meta.id,
                    result=result.auth_results[0].result if result.auth_results else "",
                    policy=policy,
                )
                return result
        return action.apply(result)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        elif not task.cancelled():
            task.exception()  # seen: a crash nobody waited for is not reported twice


class _EarlyState(_State):
    """`enforce_early yes`: the verdict at the sender stage, which waits for it."""

    async def check_sender(self, mail_from: str) -> CheckResult:
        if not self._evaluated:
            return OK
        result, action = await self._judged()
        return action.apply(result)

    async def check_body(self, header: Header, body: Buffer) -> CheckResult:
        return OK


class _Malformed(CheckStateBase):
    """A sender SPF cannot check: refused at the stage the state is made in."""

    def __init__(self, reason: SMTPError) -> None:
        self.reason = reason

    async def check_connection(self) -> CheckResult:
        return CheckResult(reject=True, reason=self.reason)
