"""Top-level pipeline modules: `msgpipeline`, `checks`, `modifiers` (docs/pipeline.md).

`checks` and `modifiers` name an ordered list once so several pipelines can
share it (`check &inbound_checks`); `check { ... }` and `modify { ... }` in
a pipeline are the same modules defined inline. The pipeline flattens a
group into its members, so each member module gets its own per-message
state and a member listed at two levels still shares one check state.
Used directly as a single check or modifier elsewhere, a group behaves as
one: checks run concurrently with merged results, modifiers serially.

`msgpipeline` is a whole pipeline usable as a delivery target
(`deliver_to &name`). `ModifierChain` (the per-message states of an ordered
list of modifiers) lives here too: the pipeline applies each level's
modifiers with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kittiwake.checks.base import Check, CheckState
from kittiwake.config.directives import Directives
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.modify.base import Modifier, ModifierState
from kittiwake.module import Module, register
from kittiwake.pipeline.check_runner import GroupCheckState
from kittiwake.targets.base import Delivery

if TYPE_CHECKING:
    from kittiwake.pipeline.pipeline import Pipeline

__all__ = [
    "NO_MODIFIERS",
    "CheckGroup",
    "ModifierChain",
    "ModifierGroup",
    "MsgPipelineModule",
    "Trace",
]


# --- Modifier states of one level ------------------------------------------------


class ModifierChain:
    """The states of an ordered list of modifiers, applied serially (docs/modify.md).

    For recipients, each modifier is applied to every output of the one
    before it (1:N at each step, no deduplication).
    """

    __slots__ = ("_states",)

    def __init__(self, states: Sequence[ModifierState] = ()) -> None:
        self._states = tuple(states)

    @classmethod
    async def create(cls, modifiers: Sequence[Modifier], meta: MsgMeta) -> ModifierChain:
        if not modifiers:
            return NO_MODIFIERS
        states: list[ModifierState] = []
        try:
            for modifier in modifiers:
                states.append(await modifier.modifier_state(meta))
        except BaseException:
            await cls(states).close()
            raise
        return cls(states)

    async def rewrite_sender(self, mail_from: str, trace: Trace | None = None) -> str:
        for index, state in enumerate(self._states):
            given = mail_from
            mail_from = await state.rewrite_sender(mail_from)
            if trace is not None:
                trace(index, given, [mail_from])
        return mail_from

    async def rewrite_rcpt(self, rcpt: str, trace: Trace | None = None) -> list[str]:
        current = [rcpt]
        for index, state in enumerate(self._states):
            produced: list[str] = []
            for addr in current:
                out = await state.rewrite_rcpt(addr)
                if trace is not None:
                    trace(index, addr, out)
                produced.extend(out)
            current = produced
        return current

    async def rewrite_body(self, header: Header, body: Buffer) -> None:
        for state in self._states:
            await state.rewrite_body(header, body)

    async def close(self) -> None:
        """Close every state even if one fails; re-raise the first failure."""
        first: Exception | None = None
        for state in self._states:
            try:
                await state.close()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first


NO_MODIFIERS = ModifierChain()

#: Told of each step of a rewrite: (the modifier's index in the chain, the
#: address it was given, what it returned). `kittiwake explain` shows them.
Trace = Callable[[int, str, list[str]], None]


@register("checks")
class CheckGroup(Module):
    """`checks NAME { CHECK [ARGS] [{ ... }] ... }`: an ordered list of checks.

    Each line names a check module with its arguments and block (`spf`,
    `dnsbl { ... }`); bare names are looked up as `check.NAME` first.
    """

    members: tuple[Check, ...] = ()

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(f"{self.module_name} takes no arguments: list checks in its block")
        found: list[Check] = []
        for node in cfg.node.block:
            check = self.container.module_from_args(
                node, [node.name, *node.args], node.children, Check, "check"
            )
            # A nested group is spliced in, so the list stays flat.
            found.extend(check.members if isinstance(check, CheckGroup) else (check,))
        self.members = tuple(found)

    async def check_state(self, meta: MsgMeta) -> CheckState:
        states: list[CheckState] = []
        try:
            for check in self.members:
                states.append(await check.check_state(meta))
        except BaseException:
            await GroupCheckState(states).close()
            raise
        return GroupCheckState(states)


@register("modifiers")
class ModifierGroup(Module):
    """`modifiers NAME { MODIFIER [ARGS] [{ ... }] ... }`: modifiers run in order.

    Bare names are looked up as `modify.NAME` first.
    """

    members: tuple[Modifier, ...] = ()

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(
                f"{self.module_name} takes no arguments: list modifiers in its block"
            )
        found: list[Modifier] = []
        for node in cfg.node.block:
            modifier = self.container.module_from_args(
                node, [node.name, *node.args], node.children, Modifier, "modify"
            )
            found.extend(modifier.members if isinstance(modifier, ModifierGroup) else (modifier,))
        self.members = tuple(found)

    async def modifier_state(self, meta: MsgMeta) -> ModifierState:
        return await ModifierChain.create(self.members, meta)


@register("msgpipeline")
class MsgPipelineModule(Module):
    """`msgpipeline NAME { hostname ...; debug ...; PIPELINE }`: a reusable pipeline.

    Its own checks and modifiers run for what is routed to it; it sees the
    final recipients of the pipeline that delivers to it and never adds
    `Received` (docs/pipeline.md, "Nested pipelines").
    """

    #: Errors from a nested pipeline pass through the outer one untagged.
    is_message_pipeline = True

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(f"{self.module_name} takes no arguments")
        hostname = cfg.string("hostname", inherit=True, required=True)
        self.log.debug_enabled = cfg.boolean("debug", default=self.log.debug_enabled, inherit=True)
        rest = cfg.finish(allow_unknown=True)
        # Imported here: the pipeline itself imports this module.
        from kittiwake.pipeline.pipeline import Pipeline

        self.pipeline: Pipeline = Pipeline(
            rest, self.container, block=cfg.node, hostname=hostname, logger=self.log
        )

    @property
    def honours_dsn(self) -> bool:
        """A reusable pipeline keeps DSN promises when all its targets do."""
        return self.pipeline.honours_dsn

    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> Delivery:
        return await self.pipeline.start(meta, mail_from)
