"""`modify.replace_rcpt` and `modify.replace_sender`: addresses mapped through a table.

    modify {
        replace_rcpt &aliases            # or: replace_rcpt file /etc/aliases
        replace_sender static { entry old@example.org new@example.org }
    }

Algorithm (docs/modify.md, "`replace_rcpt` and `replace_sender`"), for an
address A:

1. the key is A's lookup form (domain U-labels, everything NFC and
   lowercase); an address that has none is an error;
2. the table's values for the whole key, if any, replace A (each must be a
   valid address);
3. otherwise the values for the local part alone: a value with `@` (and
   not quoted) replaces the whole address, any other value replaces only
   the local part and A's (normalised) domain is kept;
4. otherwise A is unchanged.

One step only: results are not looked up again, so an alias chain is the
table's business (`table.chain`). `replace_rcpt` keeps every value (one
recipient can become several); `replace_sender` takes the first. The null
sender's key is `""`, so it changes only if the table has an empty key.
"""

from __future__ import annotations

from kittiwake.address import AddressError, is_valid_address_rule, normalize_address, split
from kittiwake.config.directives import Directives
from kittiwake.errors import KittiwakeError
from kittiwake.message import MsgMeta
from kittiwake.modify.base import ModifierState, ModifierStateBase
from kittiwake.module import Module, register
from kittiwake.tables.base import Table, lookup_all

__all__ = ["ReplaceAddress", "ReplaceError", "ReplaceRecipient", "ReplaceSender"]


class ReplaceError(KittiwakeError):
    """The address or the table's answer is unusable.

    Deliberately not an SMTPError: it means a configuration or data problem
    on our side, which the endpoint answers as an internal (temporary) error.
    """


class ReplaceAddress(Module, ModifierStateBase):
    """Shared by both modules; stateless, so the module is its own state."""

    def configure(self, cfg: Directives) -> None:
        # The table is given inline: `replace_rcpt &name`, or a table module
        # with its arguments and block (`replace_rcpt file /etc/aliases`).
        if not self.inline_args:
            raise cfg.node.error(
                f"{self.module_name}: expected a table (&name or a table module and its arguments)"
            )
        self.table = self.container.module_from_args(
            cfg.node, self.inline_args, cfg.node.children, Table, "table"
        )

    async def modifier_state(self, meta: MsgMeta) -> ModifierState:
        return self

    async def replace(self, addr: str) -> list[str]:
        """The addresses `addr` maps to: the table's values, or `[addr]`."""
        try:
            key = normalize_address(addr)
        except AddressError as exc:
            raise ReplaceError(f"malformed address: {exc.reason}") from None
        found = await lookup_all(self.table, key)
        if found:
            for value in found:
                _check(value)
            return found
        if not key:
            return [addr]
        local, domain = split(key)
        if not domain:
            return [addr]  # bare postmaster: its local part was the whole key
        found = await lookup_all(self.table, local)
        if not found:
            return [addr]
        results = []
        for value in found:
            if "@" in value and not value.startswith('"') and not value.endswith('"'):
                _check(value)
                results.append(value)
            else:
                results.append(f"{value}@{domain}")
        return results


def _check(value: str) -> None:
    if not is_valid_address_rule(value):
        raise ReplaceError(f"refusing to replace recipient with the invalid address {value}")


@register("modify.replace_rcpt")
class ReplaceRecipient(ReplaceAddress):
    """Rewrites recipients; one recipient may become several."""

    async def rewrite_rcpt(self, rcpt: str) -> list[str]:
        return await self.replace(rcpt)


@register("modify.replace_sender")
class ReplaceSender(ReplaceAddress):
    """Rewrites the envelope sender; the first value wins."""

    async def rewrite_sender(self, mail_from: str) -> str:
        return (await self.replace(mail_from))[0]
