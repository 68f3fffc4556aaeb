"""The message pipeline: one message from MAIL FROM to commit (docs/pipeline.md).

Strategy. `Pipeline` is built once from configuration (`config.parse_routing`
does all the reading); per message, `start()` returns a `MessageDelivery`
that carries every per-message state: the check runner, the modifier
states of each level, and one target delivery per target *object*, kept in
the order they were started (commit goes in that order). The endpoint
drives it with `add_rcpt`, then `body` (SMTP, submission: one outcome) or
`body_non_atomic` (LMTP: one outcome per recipient), then `commit`;
`abort` is always safe and undoes everything not yet committed.

A pipeline is itself a delivery target (`start_delivery`), which is how
`reroute { }` blocks and `msgpipeline` modules nest: the inner pipeline
sees the outer final recipients and the outer sender, runs its own checks
and modifiers, and never adds `Received`.

Errors keep their type: an `SMTPError` is the reply, anything else is a
bug or an I/O failure that the endpoint turns into `451 4.3.0`. The
pipeline logs the latter here, with the message ID, and re-raises it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

from kittiwake import log as _log
from kittiwake import metrics
from kittiwake.checks.base import EarlyCheck
from kittiwake.config.node import Node
from kittiwake.dmarc import DmarcEvaluation, PolicyCache
from kittiwake.errors import SMTPError
from kittiwake.message import ConnInfo, MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.pipeline.check_runner import CheckRunner, DmarcVerifier, authserv_id
from kittiwake.pipeline.config import (
    DestinationBlock,
    RoutingConfig,
    SourceBlock,
    parse_routing,
)
from kittiwake.pipeline.groups import NO_MODIFIERS, ModifierChain
from kittiwake.pipeline.received import Clock, local_now, received_value
from kittiwake.pipeline.routing import LookupFailed, select_destination, select_source
from kittiwake.tables.base import Table
from kittiwake.targets.base import (
    Delivery,
    DeliveryTarget,
    StatusCollector,
    honours_dsn,
    is_one_step,
    is_partial,
)

if TYPE_CHECKING:
    from kittiwake.container import Container

__all__ = ["MessageDelivery", "Pipeline"]

DmarcFactory = Callable[[MsgMeta], DmarcVerifier]


# --- The pipeline --------------------------------------------------------------


class Pipeline:
    """A configured message pipeline; also a delivery target (for nesting)."""

    #: Errors from nested pipelines pass through untagged: the inner pipeline
    #: has already named its own final address (`effective_rcpt`).
    is_message_pipeline: ClassVar[bool] = True

    def __init__(
        self,
        nodes: list[Node],
        container: Container,
        *,
        block: Node | None = None,
        hostname: str,
        first_pipeline: bool = False,
        logger: _log.Logger | None = None,
        clock: Clock = local_now,
        dmarc_factory: DmarcFactory | None = None,
    ) -> None:
        """Read `nodes` (pipeline directives); raise `ConfigError` on a bad one.

        `block` is the block holding them, for errors that belong to no
        single directive. `first_pipeline` marks the endpoint's own
        pipeline, the only one that adds `Received`. `dmarc_factory`
        creates the per-message DMARC evaluation (tests inject their own;
        the default asks the process's resolver).
        """
        self.container = container
        #: The block holding the directives (`kittiwake explain` names it).
        self.block = block
        self.hostname = hostname
        self.first_pipeline = first_pipeline
        self.log = logger if logger is not None else _log.get("pipeline")
        self.clock = clock
        #: DMARC discoveries shared by this pipeline's messages (and its nested ones').
        self._policies = PolicyCache()
        self.dmarc_factory = dmarc_factory or self._dmarc_evaluation
        self.routing: RoutingConfig = parse_routing(
            container, nodes, block, log=self.log, nested=self._nested
        )
        #: The `dmarc` directive's value (default yes).
        self.dmarc_enabled = self.routing.dmarc
        self._early = tuple(c for c in self.routing.checks if isinstance(c, EarlyCheck))
        #: Whether DMARC will evaluate messages: enabled, with SPF and DKIM checks.
        self.dmarc_runs = self.routing.dmarc_runs()
        targets = list(self.routing.all_targets())
        #: Every path ends in a target that sends the notices RFC 3461 asks
        #: for (docs/protocol.md, "DSN"): only then may an endpoint offer DSN.
        self.honours_dsn = bool(targets) and all(honours_dsn(t) for t in targets)

    def _dmarc_evaluation(self, meta: MsgMeta) -> DmarcVerifier:
        return DmarcEvaluation(self.container.resolver, meta, policies=self._policies)

    def _nested(self, nodes: list[Node], node: Node) -> DeliveryTarget:
        return Pipeline(
            nodes,
            self.container,
            block=node,
            hostname=self.hostname,
            logger=self.log,
            clock=self.clock,
            dmarc_factory=self.dmarc_factory,
        )

    async def check_early(self, conn: ConnInfo) -> None:
        """Run the root checks that can judge a client at its greeting (docs/checks.md).

        Raises the first rejection as an SMTPError, in configuration order.
        """
        for check in self._early:
            result = await check.check_early(conn)
            if result.reject and not result.quarantine:
                raise result.reason or SMTPError(
                    554, (5, 7, 0), "Message rejected due to a local policy"
                )

    async def start(self, meta: MsgMeta, mail_from: str) -> MessageDelivery:
        """Sender stage: checks, sender rewriting, source selection (docs/pipeline.md).

        `mail_from` is in clean form (`""` for the null sender). Errors are
        raised; nothing needs aborting then.
        """
        delivery = MessageDelivery(self, meta)
        await delivery._start(mail_from)
        return delivery

    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> Delivery:
        """`DeliveryTarget`: a nested pipeline starts like an endpoint's own."""
        return await self.start(meta, mail_from)


# --- One message ------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Started:
    """One target's delivery for this message and what was routed to it."""

    target: DeliveryTarget
    delivery: Delivery
    #: final address -> the addresses given to add_rcpt that produced it.
    finals: dict[str, list[str]] = field(default_factory=dict)
    #: addresses given to add_rcpt routed here, first-use order.
    recipients: dict[str, None] = field(default_factory=dict)
    finished: bool = False  # committed or aborted
    #: When the delivery started (loop clock), for its latency in the metrics.
    started_at: float = 0.0

    def note(self, final: str, original: str) -> None:
        sources = self.finals.setdefault(final, [])
        if original not in sources:
            sources.append(original)
        self.recipients[original] = None


class _Outcomes:
    """Per-recipient outcomes of `body_non_atomic`, reported once each at the end.

    A recipient may reach several targets (or several final addresses); its
    outcome is the first error any of them reported, else success if one
    reported it. The endpoint's collector gets at most one call per
    recipient (the delivery contract, docs/flow.md, "6. Targets").
    """

    __slots__ = ("_errors", "_ok")

    def __init__(self) -> None:
        self._errors: dict[str, Exception] = {}
        self._ok: set[str] = set()

    def set(self, rcpt: str, error: Exception | None) -> None:
        if error is None:
            self._ok.add(rcpt)
        else:
            self._errors.setdefault(rcpt, error)

    def report(self, status: StatusCollector, rcpts: Sequence[str]) -> None:
        for rcpt in rcpts:
            error = self._errors.get(rcpt)
            if error is not None:
                status.set_status(rcpt, error)
            elif rcpt in self._ok:
                status.set_status(rcpt, None)


class _Translate:
    """A target's status collector: final addresses back to what add_rcpt got.

    Replies name the address the client gave, never the alias it became
    (docs/pipeline.md, "One message, several targets").
    """

    __slots__ = ("_outcomes", "_started")

    def __init__(self, started: _Started, outcomes: _Outcomes) -> None:
        self._started = started
        self._outcomes = outcomes

    def set_status(self, rcpt: str, error: Exception | None) -> None:
        for original in self._started.finals.get(rcpt, (rcpt,)):
            self._outcomes.set(original, error)


def _tag(error: SMTPError, rcpt: str) -> SMTPError:
    """A copy of `error` with the `effective_rcpt` log field (shared errors stay intact)."""
    try:
        return replace(error, misc={**error.misc, "effective_rcpt": rcpt})
    except (TypeError, ValueError):
        return error


class DeliveryState(enum.Enum):
    """The life of one `MessageDelivery`: recipients are added while `OPEN`,
    the body moves it to `BODY`, commit to `DONE`; abort or an error that
    ends the message moves it to `FAILED`."""

    OPEN = "open"
    BODY = "body"
    DONE = "done"
    FAILED = "failed"


class MessageDelivery:
    """Everything the pipeline holds for one message (docs/flow.md, "5. Pipeline")."""

    __slots__ = (
        "_accepted",
        "_block_mods",
        "_by_target",
        "_closed",
        "_log",
        "_p",
        "_partial",
        "_reported",
        "_root_mods",
        "_runner",
        "_source",
        "_source_mods",
        "_started",
        "_state",
        "meta",
        "source_addr",
    )

    def __init__(self, pipeline: Pipeline, meta: MsgMeta) -> None:
        self._p = pipeline
        self.meta = meta
        self._log = pipeline.log
        dmarc = None
        if pipeline.dmarc_runs and pipeline.dmarc_factory is not None:
            dmarc = pipeline.dmarc_factory(meta)
            # check.spf leaves its action to DMARC only when DMARC runs.
            meta.dmarc_runs = True
        self._runner = CheckRunner(meta, pipeline.log, dmarc)
        self._root_mods = NO_MODIFIERS
        self._source_mods = NO_MODIFIERS
        self._source: SourceBlock = pipeline.routing.default
        self._block_mods: dict[DestinationBlock, ModifierChain] = {}
        self._started: list[_Started] = []
        self._by_target: dict[int, _Started] = {}
        self._accepted: dict[str, None] = {}
        #: The envelope sender every target gets (after root and source rewriting).
        self.source_addr = ""
        self._state = DeliveryState.OPEN
        self._closed = False
        self._reported = False
        #: After body_non_atomic: the outcomes so far, where they go, and for
        #: whom; reported once commit has added its own.
        self._partial: tuple[_Outcomes, StatusCollector, list[str]] | None = None

    # -- sender stage -----------------------------------------------------------

    async def _start(self, mail_from: str) -> None:
        routing = self._p.routing
        runner = self._runner
        try:
            await runner.check_sender(routing.checks, mail_from)
            self._root_mods = await ModifierChain.create(routing.modifiers, self.meta)
            mail_from = await self._root_mods.rewrite_sender(mail_from)
            self._source = source = await self._select_source(mail_from)
            await runner.check_sender(source.checks, mail_from)
            self._source_mods = await ModifierChain.create(source.modifiers, self.meta)
            self.source_addr = await self._source_mods.rewrite_sender(mail_from)
        except BaseException as exc:
            self._note_failure("sender stage failed", exc)
            self._state = DeliveryState.FAILED
            await self._close_states()
            raise

    async def _select_source(self, mail_from: str) -> SourceBlock:
        match = await select_source(self._p.routing, mail_from, self._lookup_failed("source_in"))
        block = match.block
        self._log.debug("source selected", msg_id=self.meta.id, sender=match.key, block=block.label)
        return block

    def _lookup_failed(self, what: str) -> LookupFailed:
        """A failing `*_in` lookup skips the table (docs/pipeline.md); it is logged."""

        def log_it(table: Table, key: str, exc: Exception) -> None:
            self._log.error(f"{what} lookup failed", err=exc, msg_id=self.meta.id, key=key)

        return log_it

    # -- recipient stage --------------------------------------------------------

    async def add_rcpt(self, rcpt: str) -> None:
        """Route one recipient (clean form); its error is that RCPT's reply."""
        if self._state is not DeliveryState.OPEN:
            raise RuntimeError(f"add_rcpt in state {self._state}")
        try:
            await self._add_rcpt(rcpt)
        except BaseException as exc:
            self._note_failure("recipient rejected", exc, rcpt=rcpt)
            raise
        self._accepted[rcpt] = None

    async def _add_rcpt(self, to: str) -> None:
        routing = self._p.routing
        source = self._source
        await self._runner.check_rcpt(routing.checks, to)
        await self._runner.check_rcpt(source.checks, to)
        expanded = await self._root_mods.rewrite_rcpt(to)
        if self._source_mods is not NO_MODIFIERS:
            rewritten: list[str] = []
            for addr in expanded:
                rewritten.extend(await self._source_mods.rewrite_rcpt(addr))
            expanded = rewritten
        for addr in expanded:
            try:
                block = await self._select_destination(source, addr)
            except SMTPError as exc:
                raise _tag(exc, addr) from None
            if block.reject is not None:
                # A fresh copy per RCPT: the configured error is shared.
                raise _tag(block.reject, addr)
            try:
                await self._runner.check_rcpt(block.checks, addr)
                mods = await self._block_modifiers(block, addr)
                finals = await mods.rewrite_rcpt(addr)
            except SMTPError as exc:
                raise _tag(exc, addr) from None
            for final in finals:
                await self._route(block, to, final)

    async def _route(self, block: DestinationBlock, to: str, final: str) -> None:
        if final != to:
            original = to
            if not self._p.first_pipeline:
                # Nested: `to` is an outer final address; keep the map
                # pointing at what the client gave.
                original = self.meta.original_rcpts.get(to, to)
            self.meta.original_rcpts[final] = original
        for target in block.targets:
            try:
                started = await self._delivery_for(target)
                await started.delivery.add_rcpt(final)
            except SMTPError as exc:
                if getattr(target, "is_message_pipeline", False):
                    raise
                raise _tag(exc, final) from None
            started.note(final, to)

    async def _select_destination(self, source: SourceBlock, rcpt: str) -> DestinationBlock:
        match = await select_destination(source, rcpt, self._lookup_failed("destination_in"))
        block = match.block
        self._log.debug(
            "destination selected", msg_id=self.meta.id, rcpt=match.key, block=block.label
        )
        return block

    async def _block_modifiers(self, block: DestinationBlock, rcpt: str) -> ModifierChain:
        """The block's modifier state, created on the block's first recipient.

        Its `rewrite_sender` runs once so modifiers see the calls in order,
        but the sender is fixed by then: a change is logged and ignored.
        """
        mods = self._block_mods.get(block)
        if mods is not None:
            return mods
        mods = await ModifierChain.create(block.modifiers, self.meta)
        self._block_mods[block] = mods
        if mods is not NO_MODIFIERS:
            try:
                changed = await mods.rewrite_sender(self.source_addr)
            except Exception as exc:
                self._log.error(
                    "destination modifiers failed to rewrite the sender (ignored)",
                    err=exc,
                    msg_id=self.meta.id,
                    rcpt=rcpt,
                )
            else:
                if changed != self.source_addr:
                    self._log.info(
                        "destination-level modifier changed the sender; not supported, ignored",
                        msg_id=self.meta.id,
                        rcpt=rcpt,
                        sender=self.source_addr,
                        modified_sender=changed,
                    )
        return mods

    async def _delivery_for(self, target: DeliveryTarget) -> _Started:
        started = self._by_target.get(id(target))
        if started is None:
            delivery = await target.start_delivery(self.meta, self.source_addr)
            started = _Started(target, delivery, started_at=time.monotonic())
            self._by_target[id(target)] = started
            self._started.append(started)
        return started

    # -- body stage -------------------------------------------------------------

    def _begin_body(self) -> None:
        if self._state is not DeliveryState.OPEN:
            raise RuntimeError(f"body in state {self._state}")
        self._state = DeliveryState.BODY

    async def _prepare(self, header: Header, body: Buffer) -> None:
        """Steps 1-4: body checks, Received, check results, body modifiers."""
        routing = self._p.routing
        runner = self._runner
        await runner.check_body(routing.checks, header, body)
        await runner.check_body(self._source.checks, header, body)
        for block in self._block_mods:
            await runner.check_body(block.checks, header, body)
        if self._p.first_pipeline:
            _drop_forged_results(header, self._p.hostname, self.meta)
            value = received_value(self.meta, self._p.hostname, self._p.clock())
            if value is not None:
                header.add("Received", value)
        await runner.apply_results(self._p.hostname, header)
        await self._root_mods.rewrite_body(header, body)
        await self._source_mods.rewrite_body(header, body)
        for mods in self._block_mods.values():
            await mods.rewrite_body(header, body)

    async def _final_header(self, header: Header, body: Buffer) -> Header:
        """The body stage up to the targets (`_prepare`), on a copy of `header`;
        after a failure every started delivery is aborted."""
        self._begin_body()
        header = Header(list(header.fields))
        try:
            await self._prepare(header, body)
        except BaseException as exc:
            self._note_failure("message rejected", exc)
            await self._fail()
            raise
        return header

    async def body(self, header: Header, body: Buffer) -> None:
        """All-or-nothing body stage (SMTP, submission); then call `commit`.

        `header` is not modified: the pipeline adds its fields to a copy
        that every target of this message receives. On failure every
        started delivery is aborted before the error is raised.
        """
        header = await self._final_header(header, body)
        for started in self._started:
            try:
                await started.delivery.body(header, body)
            except BaseException as exc:
                self._note_failure("message rejected", exc)
                await self._failed(started, exc)
                raise

    async def deliver(self, header: Header, body: Buffer) -> None:
        """`body` then `commit` (SMTP, submission): durable when this returns.

        A message with one delivery whose target takes both steps at once
        (`body_and_commit`, targets/base.py) goes through in one step:
        nothing can fail between its body and its commit, and `storage.maildir`
        then makes one trip to its threads instead of two.
        """
        started = self._started[0] if len(self._started) == 1 else None
        if started is None or started.finished or not is_one_step(started.delivery):
            await self.body(header, body)
            await self.commit()
            return
        header = await self._final_header(header, body)
        await self._close_states()
        await self._end_one(started, started.delivery.body_and_commit(header, body), "delivery")
        self._state = DeliveryState.DONE

    async def body_non_atomic(self, status: StatusCollector, header: Header, body: Buffer) -> None:
        """Per-recipient body stage (LMTP); then call `commit` (always).

        `status` gets at most one call per accepted recipient, keyed by the
        address exactly as given to `add_rcpt`, once `commit` has run (a
        target may only learn at its commit that one mailbox failed, and
        a failure there is that target's recipients' alone); a recipient with
        no call shares the outcome of `commit`.
        """
        self._begin_body()
        header = Header(list(header.fields))
        rcpts = list(self._accepted)
        try:
            await self._prepare(header, body)
        except Exception as exc:
            self._note_failure("message rejected", exc)
            for rcpt in rcpts:
                status.set_status(rcpt, exc)
            await self._fail()
            self._reported = True
            return
        except BaseException:
            await self._fail()
            raise
        outcomes = _Outcomes()
        try:
            for started in self._started:
                await self._body_one(started, header, body, outcomes)
        except BaseException:
            await self._fail()
            raise
        self._partial = (outcomes, status, rcpts)

    async def _body_one(
        self, started: _Started, header: Header, body: Buffer, outcomes: _Outcomes
    ) -> None:
        delivery = started.delivery
        try:
            if is_partial(delivery):
                await delivery.body_non_atomic(_Translate(started, outcomes), header, body)
                return
            await delivery.body(header, body)
        except Exception as exc:
            self._note_failure("delivery failed", exc, target=repr(started.target))
            for rcpt in started.recipients:
                outcomes.set(rcpt, exc)
            # Every recipient of this delivery was told it failed: nothing
            # of it may be committed later.
            started.finished = True
            await self._abort_one(started)

    # -- the end ----------------------------------------------------------------

    async def commit(self) -> None:
        """Commit every delivery, in start order; the first failure aborts the rest.

        After `body_non_atomic` a failed commit is its target's recipients'
        outcome only: the other targets still commit, and every recipient's
        status is reported at the end.
        """
        if self._state is DeliveryState.FAILED and self._reported:
            return  # body_non_atomic already gave every recipient its error
        if self._state is not DeliveryState.BODY:
            raise RuntimeError(f"commit in state {self._state}")
        await self._close_states()
        if self._partial is not None:
            await self._commit_each(*self._partial)
            return
        for started in self._started:
            if not started.finished:
                await self._end_one(started, started.delivery.commit(), "commit")
        self._state = DeliveryState.DONE

    async def _end_one(self, started: _Started, step: Awaitable[None], what: str) -> None:
        """Await `started`'s last step (commit, or body and commit at once); count
        its outcome, and after a failure abort it and every other delivery."""
        try:
            await step
        except BaseException as exc:
            self._note_failure(f"{what} failed", exc, target=repr(started.target))
            await self._failed(started, exc)
            raise
        _count(started, None)
        started.finished = True

    async def _commit_each(
        self, outcomes: _Outcomes, status: StatusCollector, rcpts: list[str]
    ) -> None:
        for started in self._started:
            if started.finished:
                continue
            started.finished = True
            try:
                await started.delivery.commit()
            except Exception as exc:
                self._note_failure("commit failed", exc, target=repr(started.target))
                _count(started, exc)
                for rcpt in started.recipients:
                    outcomes.set(rcpt, exc)
            except BaseException:
                await self._fail()
                raise
            else:
                _count(started, None)
        self._state = DeliveryState.DONE
        outcomes.report(status, rcpts)

    async def abort(self) -> None:
        """Undo everything not committed; safe at any time, any number of times."""
        if self._state in (DeliveryState.DONE, DeliveryState.FAILED):
            return
        await self._fail()

    async def _fail(self) -> None:
        self._state = DeliveryState.FAILED
        for started in self._started:
            if not started.finished:
                started.finished = True
                _count(started, None, "aborted")
                await self._abort_one(started)
        await self._close_states()

    async def _failed(self, started: _Started, exc: BaseException) -> None:
        """`started` failed with `exc`: counted so (once), aborted, then all the others.

        A cancellation is not the target's failure: it is counted `aborted`
        with the rest (docs/metrics.md).
        """
        if isinstance(exc, Exception):
            _count(started, exc)
            started.finished = True
            await self._abort_one(started)
        await self._fail()

    async def _abort_one(self, started: _Started) -> None:
        try:
            await started.delivery.abort()
        except Exception as exc:
            self._log.error(
                "delivery abort failed", err=exc, msg_id=self.meta.id, target=repr(started.target)
            )

    async def _close_states(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._runner.close()
        chains = [self._root_mods, self._source_mods, *self._block_mods.values()]
        for chain in chains:
            try:
                await chain.close()
            except Exception as exc:
                self._log.error("failed to close modifier state", err=exc, msg_id=self.meta.id)

    def _note_failure(self, what: str, exc: BaseException, **fields: str) -> None:
        """Log a failure with the message ID; rejections are routine, bugs are not."""
        if isinstance(exc, SMTPError):
            self._log.debug(what, msg_id=self.meta.id, reply=str(exc), reason=exc.reason, **fields)
        elif isinstance(exc, Exception):
            self._log.error(what, err=exc, msg_id=self.meta.id, **fields)


def _drop_forged_results(header: Header, hostname: str, meta: MsgMeta) -> None:
    """Remove `Authentication-Results` fields that claim to be ours (RFC 8601 §5).

    Only we may speak for our authserv-id: a field with it that arrives
    from outside is a forgery meant to make a mail reader trust a message.
    An LMTP client is a local MTA of ours, which may have written it.
    """
    if meta.conn is not None and meta.conn.endpoint == "lmtp":
        return
    ours = authserv_id(hostname)
    header.fields = [
        f
        for f in header.fields
        if f.name.lower() != "authentication-results" or _authserv(f.value) != ours
    ]


def _authserv(value: str) -> str:
    """The authserv-id of an A-R value: the first token, before `;`, lowercase."""
    first = value.split(";", 1)[0].strip()
    return first.split(None, 1)[0].lower() if first else ""


def _count(started: _Started, error: BaseException | None, result: str = "") -> None:
    """A target's delivery of this message ended: count it per recipient."""
    counted = metrics.current()
    if counted.enabled:
        counted.delivery(
            metrics.target_label(started.target),
            result or metrics.delivery_result(error),
            time.monotonic() - started.started_at,
            max(1, len(started.recipients)),
        )
