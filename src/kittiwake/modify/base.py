"""The modifier capability: rewriting sender, recipients and header.

Calls are strictly ordered per message: `rewrite_sender` before any
`rewrite_rcpt`, `rewrite_body` last (docs/modify.md). A recipient may
become several (aliases expand); the body content itself is never changed,
only header fields are added.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import capability


class ModifierState(Protocol):
    async def rewrite_sender(self, mail_from: str) -> str: ...

    async def rewrite_rcpt(self, rcpt: str) -> list[str]: ...

    async def rewrite_body(self, header: Header, body: Buffer) -> None: ...

    async def close(self) -> None: ...


class ModifierStateBase:
    """A modifier state that changes nothing; override what you rewrite."""

    async def rewrite_sender(self, mail_from: str) -> str:
        return mail_from

    async def rewrite_rcpt(self, rcpt: str) -> list[str]:
        return [rcpt]

    async def rewrite_body(self, header: Header, body: Buffer) -> None:
        return None

    async def close(self) -> None:
        return None


@capability("modifier")
@runtime_checkable
class Modifier(Protocol):
    async def modifier_state(self, meta: MsgMeta) -> ModifierState: ...
