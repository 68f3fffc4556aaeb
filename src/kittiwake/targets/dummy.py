"""`dummy`: a module that accepts everything and keeps nothing.

As a delivery target (`deliver_to dummy`) it accepts every recipient and
discards the message without reading its body: handy to test an endpoint,
a pipeline's routing or a client, and as the smallest example of the
delivery contract (targets/base.py). As an authentication provider
(`auth dummy`) it accepts any user name with any password: never use it on
a server that faces anyone but you.
"""

from __future__ import annotations

from kittiwake.config.directives import Directives
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Module, register
from kittiwake.targets.base import Delivery

__all__ = ["Dummy"]


class _Discard:
    """A delivery that accepts every call and stores nothing."""

    __slots__ = ()

    async def add_rcpt(self, rcpt: str) -> None:
        return None

    async def body(self, header: Header, body: Buffer) -> None:
        return None  # the body is not even read

    async def commit(self) -> None:
        return None

    async def abort(self) -> None:
        return None


_DISCARD = _Discard()


@register("dummy")
class Dummy(Module):
    """`dummy` (no arguments, no block)."""

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error("dummy takes no arguments")
        cfg.finish()

    # -- delivery target ------------------------------------------------------

    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> Delivery:
        # Stateless, so one shared delivery object serves every message.
        return _DISCARD

    # -- authentication provider ----------------------------------------------

    async def auth_plain(self, username: str, password: str) -> None:
        """Accept any user name with any password (`auth dummy`: tests only)."""
        return None
