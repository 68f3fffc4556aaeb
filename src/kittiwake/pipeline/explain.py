"""What the pipeline would do with one envelope, without doing it (`kittiwake explain`).

Strategy: walk a configured `Pipeline` the way `MessageDelivery` does
(docs/pipeline.md, "One message"), with the same pieces: the block
matching rules of `pipeline/routing.py` and the modifier chains of
`pipeline/groups.py`, which report each step through their `trace`. What
may have effects is left out and only named: checks are listed as "would
run" (many ask DNS or other servers), and no target is started; a
target's kind is read from the module. Table lookups (modifiers, `*_in`)
do run: they read, and they are the answer the operator asks for. A
`reroute` block or a `msgpipeline` target is explained in turn with the
outer sender and the final address, as the nested pipeline would see them.

The result is plain data (dataclasses), which the command prints as text
or JSON (docs/cli.md, "kittiwake explain").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kittiwake import address
from kittiwake.address.errors import Role
from kittiwake.errors import SMTPError
from kittiwake.message import ConnInfo, MsgMeta, new_msg_id
from kittiwake.modify.base import Modifier
from kittiwake.module import Module
from kittiwake.pipeline.config import DestinationBlock, SourceBlock
from kittiwake.pipeline.groups import NO_MODIFIERS, ModifierChain, MsgPipelineModule, Trace
from kittiwake.pipeline.pipeline import Pipeline
from kittiwake.pipeline.routing import (
    LookupFailed,
    Match,
    select_destination,
    select_source,
)
from kittiwake.tables.base import Table
from kittiwake.targets.base import DeliveryTarget

__all__ = [
    "BlockInfo",
    "PipelineExplanation",
    "RecipientExplanation",
    "ReplyInfo",
    "Rewrite",
    "Routed",
    "TargetInfo",
    "clean",
    "describe",
    "explain_pipeline",
    "kind_of",
    "new_meta",
]

#: Nested pipelines deeper than this are not followed (a `msgpipeline` may
#: deliver to itself through another one; the server would loop too).
MAX_DEPTH = 8


@dataclass(slots=True)
class ReplyInfo:
    """An SMTP reply the client would get, and why (the log's reason)."""

    code: int
    enhanced: str
    text: str
    reason: str = ""

    @classmethod
    def of(cls, exc: Exception) -> ReplyInfo:
        if isinstance(exc, SMTPError):
            enhanced = ".".join(str(part) for part in exc.enhanced)
            return cls(exc.code, enhanced, exc.message, exc.reason)
        # What the endpoint answers for anything else (docs/pipeline.md, "Errors").
        return cls(451, "4.3.0", "Internal server error", f"{type(exc).__name__}: {exc}")

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclass(slots=True)
class Rewrite:
    """One modifier step: the address it was given and what it made of it."""

    level: str
    modifier: str
    given: str
    result: list[str]


@dataclass(slots=True)
class BlockInfo:
    """A source or destination block that matched, where it is, and why."""

    label: str
    file: str
    line: int
    how: str
    key: str
    table: str = ""
    checks: list[str] = field(default_factory=list)
    modifiers: list[str] = field(default_factory=list)
    #: `*_in` tables whose lookup failed (skipped, as the server does).
    skipped: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TargetInfo:
    """Where a final address goes: `&local_mailboxes`, kind `storage.maildir`."""

    address: str
    name: str
    kind: str
    nested: PipelineExplanation | None = None


@dataclass(slots=True)
class Routed:
    """One address after root and source rewriting, and what happens to it."""

    address: str
    destination: BlockInfo | None = None
    rewrites: list[Rewrite] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    targets: list[TargetInfo] = field(default_factory=list)
    reject: ReplyInfo | None = None


@dataclass(slots=True)
class RecipientExplanation:
    """One RCPT TO: its rewrites, the addresses it became, the reply."""

    rcpt: str
    rewrites: list[Rewrite] = field(default_factory=list)
    routed: list[Routed] = field(default_factory=list)
    #: The RCPT's error reply; None means the recipient would be accepted.
    reply: ReplyInfo | None = None


@dataclass(slots=True)
class PipelineExplanation:
    """A sender and its recipients through one pipeline."""

    sender: str
    checks: list[str] = field(default_factory=list)
    modifiers: list[str] = field(default_factory=list)
    sender_rewrites: list[Rewrite] = field(default_factory=list)
    source: BlockInfo | None = None
    #: The envelope sender every target gets.
    final_sender: str = ""
    dmarc: bool = False
    #: The sender stage failed: every RCPT would get this reply.
    reply: ReplyInfo | None = None
    recipients: list[RecipientExplanation] = field(default_factory=list)


def describe(module: object) -> str:
    """`&name` for a named block, else the module name and its inline arguments."""
    if isinstance(module, Pipeline):
        where = module.block
        return f"reroute ({where.file}:{where.line})" if where is not None else "reroute"
    if isinstance(module, Module):
        if module.instance_name:
            return f"&{module.instance_name}"
        return " ".join([module.module_name, *module.inline_args])
    return type(module).__name__


def kind_of(module: object) -> str:
    """The module kind, following a queue to the target it sends through."""
    if isinstance(module, Pipeline):
        return "reroute"
    if isinstance(module, Module):
        inner: object = getattr(module, "target", None)
        if isinstance(inner, DeliveryTarget):
            return f"{module.module_name} → {kind_of(inner)}"
        return module.module_name
    return type(module).__name__


def _named(module: object) -> str:
    """`&spf_strict (check.spf)`, or `require_tls` for an inline one."""
    kind = kind_of(module)
    name = describe(module)
    return name if name.split(" ", 1)[0] == kind else f"{name} ({kind})"


def _tracer(modifiers: tuple[Modifier, ...], level: str, into: list[Rewrite]) -> Trace:
    """Record the steps that changed something; an unchanged address is no news."""

    def trace(index: int, given: str, result: list[str]) -> None:
        if result != [given]:
            into.append(Rewrite(level, _named(modifiers[index]), given, list(result)))

    return trace


def _skipper(into: list[str]) -> LookupFailed:
    def note(table: Table, key: str, exc: Exception) -> None:
        into.append(f"{describe(table)}: lookup of {key!r} failed: {exc}")

    return note


def _block_info(
    match: Match[SourceBlock] | Match[DestinationBlock], skipped: list[str]
) -> BlockInfo:
    block = match.block
    label = block.label
    suffix = f" ({block.file}:{block.line})"
    return BlockInfo(
        label=label.removesuffix(suffix),
        file=block.file,
        line=block.line,
        how=match.how,
        key=match.key,
        table=describe(match.table) if match.table is not None else "",
        checks=[_named(c) for c in block.checks],
        modifiers=[_named(m) for m in block.modifiers],
        skipped=skipped,
    )


def _nested(target: DeliveryTarget) -> Pipeline | None:
    if isinstance(target, Pipeline):
        return target
    if isinstance(target, MsgPipelineModule):
        return target.pipeline
    return None


async def explain_pipeline(
    pipeline: Pipeline, meta: MsgMeta, mail_from: str, rcpts: list[str], *, depth: int = 0
) -> PipelineExplanation:
    """Explain `mail_from` and `rcpts` (clean form) through `pipeline`; nothing is sent."""
    walk = _Walk(pipeline, meta, depth)
    try:
        return await walk.run(mail_from, rcpts)
    finally:
        await walk.close()


class _Walk:
    """One pipeline's explanation, in the order of `MessageDelivery`."""

    def __init__(self, pipeline: Pipeline, meta: MsgMeta, depth: int) -> None:
        self.p = pipeline
        self.meta = meta
        self.depth = depth
        self.chains: list[ModifierChain] = []
        self.block_chains: dict[DestinationBlock, ModifierChain] = {}
        self.root = NO_MODIFIERS
        self.source_mods = NO_MODIFIERS

    async def chain(self, modifiers: tuple[Modifier, ...]) -> ModifierChain:
        chain = await ModifierChain.create(modifiers, self.meta)
        self.chains.append(chain)
        return chain

    async def close(self) -> None:
        for chain in self.chains:
            await chain.close()

    async def run(self, mail_from: str, rcpts: list[str]) -> PipelineExplanation:
        routing = self.p.routing
        out = PipelineExplanation(
            sender=mail_from,
            checks=[_named(c) for c in routing.checks],
            modifiers=[_named(m) for m in routing.modifiers],
            dmarc=self.p.dmarc_runs,
        )
        try:
            self.root = await self.chain(routing.modifiers)
            trace = _tracer(routing.modifiers, "root", out.sender_rewrites)
            sender = await self.root.rewrite_sender(mail_from, trace)
            skipped: list[str] = []
            match = await select_source(routing, sender, _skipper(skipped))
            out.source = _block_info(match, skipped)
            source = match.block
            self.source_mods = await self.chain(source.modifiers)
            trace = _tracer(source.modifiers, "source", out.sender_rewrites)
            out.final_sender = await self.source_mods.rewrite_sender(sender, trace)
        except Exception as exc:
            out.reply = ReplyInfo.of(exc)
            return out
        for rcpt in rcpts:
            out.recipients.append(await self.recipient(source, rcpt, out.final_sender))
        return out

    async def recipient(self, source: SourceBlock, rcpt: str, sender: str) -> RecipientExplanation:
        routing = self.p.routing
        out = RecipientExplanation(rcpt)
        try:
            expanded = await self.root.rewrite_rcpt(
                rcpt, _tracer(routing.modifiers, "root", out.rewrites)
            )
            rewritten: list[str] = []
            for addr in expanded:
                rewritten.extend(
                    await self.source_mods.rewrite_rcpt(
                        addr, _tracer(source.modifiers, "source", out.rewrites)
                    )
                )
            for addr in rewritten:
                routed = Routed(addr)
                out.routed.append(routed)
                out.reply = await self.route(source, routed, sender)
                if out.reply is not None:
                    break  # the server stops at the first error of a RCPT
        except Exception as exc:
            out.reply = ReplyInfo.of(exc)
        return out

    async def route(self, source: SourceBlock, routed: Routed, sender: str) -> ReplyInfo | None:
        """Destination block, its rewrites and targets; the RCPT's error if any."""
        skipped: list[str] = []
        match = await select_destination(source, routed.address, _skipper(skipped))
        routed.destination = _block_info(match, skipped)
        block = match.block
        if block.reject is not None:
            routed.reject = ReplyInfo.of(block.reject)
            return routed.reject
        chain = self.block_chains.get(block)
        if chain is None:
            chain = self.block_chains[block] = await self.chain(block.modifiers)
            # Called once as the server does; a change is ignored there too.
            await chain.rewrite_sender(sender)
        trace = _tracer(block.modifiers, "destination", routed.rewrites)
        routed.finals = await chain.rewrite_rcpt(routed.address, trace)
        for final in routed.finals:
            for target in block.targets:
                info = TargetInfo(final, describe(target), kind_of(target))
                routed.targets.append(info)
                inner = _nested(target)
                if inner is None or self.depth >= MAX_DEPTH:
                    continue
                info.nested = await explain_pipeline(
                    inner, self.meta, sender, [final], depth=self.depth + 1
                )
                # A nested pipeline's error is the RCPT's reply (docs/pipeline.md).
                if info.nested.reply is not None:
                    return info.nested.reply
                nested_reply = info.nested.recipients[0].reply
                if nested_reply is not None:
                    return nested_reply
        return None


def clean(addr: str, role: Role) -> str:
    """What the endpoint gives the pipeline for a path (`<...>` optional):
    parsed as the protocol core parses it, then in clean form; or the
    endpoint's refusal (docs/address.md, "Errors and replies")."""
    content = addr[1:-1] if addr.startswith("<") and addr.endswith(">") else addr
    try:
        if role == "sender":
            parsed = address.parse_reverse_path(content, smtputf8=True)
        else:
            parsed = address.parse_forward_path(content, smtputf8=True)
        return address.clean_path(str(parsed), smtputf8=True)
    except address.AddressError as exc:
        raise exc.smtp_error(role) from None


def new_meta(conn: ConnInfo) -> MsgMeta:
    """Metadata of the imagined message (modifier states are made from it)."""
    return MsgMeta(id=new_msg_id(), conn=conn)
