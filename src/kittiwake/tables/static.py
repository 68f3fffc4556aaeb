"""`table.static`: a table written inside the configuration itself.

Handy for a few fixed mappings (`postmaster` → a real mailbox) where a
separate file would be overkill. Repeating a key replaces the earlier entry,
as maddy does, so a later line can override an earlier snippet.
"""

from __future__ import annotations

from kittiwake.config.directives import Directives
from kittiwake.config.redact import HIDDEN
from kittiwake.module import Module, register


@register("table.static")
class StaticTable(Module):
    """`static { entry KEY VALUE [VALUE...] ... }`."""

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(
                f"{self.module_name} takes no arguments: list the entries in its block"
            )
        self._entries: dict[str, list[str]] = {}
        self._entry_nodes = cfg.all("entry")
        for node in self._entry_nodes:
            if node.children is not None:
                raise node.error("entry: unexpected block")
            if len(node.args) < 2:
                raise node.error("entry: expected a key and at least one value")
            # Last wins: a repeated key replaces, it does not accumulate.
            self._entries[node.args[0]] = list(node.args[1:])
        cfg.finish()

    def hide_values(self) -> None:
        """The values are secrets (`auth.pass_table`: password hashes):
        `config show` prints them as `***` (docs/cli.md)."""
        for node in self._entry_nodes:
            self.container.note_secret(node, [node.args[0], *(HIDDEN for _ in node.args[1:])])

    async def lookup(self, key: str) -> str | None:
        values = self._entries.get(key)
        return values[0] if values else None

    async def lookup_multi(self, key: str) -> list[str]:
        return list(self._entries.get(key, ()))
