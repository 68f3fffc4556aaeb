"""`table.chain`: feed each table's output into the next one.

This is how address rewriting is composed (strip `+tag`, map `postmaster`,
then aliases). A step whose table has several values for a key fans out, and
every later step sees every value. `step` is a filter (one value not found
and the whole chain finds nothing), `optional_step` is best-effort (one value
not found and the step is skipped as a whole, so the values pass through
unchanged, even those the table did know): the all-or-nothing rule is
maddy's, kept so that configurations behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from kittiwake.config.directives import Directives
from kittiwake.module import Module, register
from kittiwake.tables.base import Table, lookup_all


@dataclass(frozen=True, slots=True)
class _Step:
    table: Table
    optional: bool


@register("table.chain")
class ChainTable(Module):
    """`chain { step TABLE...; optional_step TABLE... }`."""

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(
                f"{self.module_name} takes no arguments: list its steps in its block"
            )
        container = self.container
        self._steps: list[_Step] = []
        # Steps run in file order, whichever of the two directives they use.
        optional = {id(n) for n in cfg.all("optional_step")}
        required = {id(n) for n in cfg.all("step")}
        for node in cfg.node.block:
            if id(node) in optional or id(node) in required:
                table = container.module_from_node(node, Table, "table")
                self._steps.append(_Step(table, id(node) in optional))
        cfg.finish()

    async def lookup_multi(self, key: str) -> list[str]:
        current = [key]
        for step in self._steps:
            produced: list[str] = []
            for value in current:
                found = await lookup_all(step.table, value)
                if not found:
                    if step.optional:
                        break  # skip the whole step: `current` passes through
                    return []
                produced.extend(found)
            else:
                current = produced
        return current

    async def lookup(self, key: str) -> str | None:
        values = await self.lookup_multi(key)
        return values[0] if values else None
