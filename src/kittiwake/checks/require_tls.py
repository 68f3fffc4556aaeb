"""`require_tls`: only clients that talk TLS may send (docs/checks.md).

Judged at the connection stage: the session is TLS from the first byte
(`tls://`) or after STARTTLS, or the message fails with
`550 5.7.1 TLS conversation required` (`fail_action`, default `reject`).
A message kittiwake generates itself has no connection and fails too, as
in maddy: it did not arrive over TLS.
"""

from __future__ import annotations

from kittiwake.checks.base import OK, CheckAction, CheckResult
from kittiwake.checks.stateless import StatelessCheck
from kittiwake.message import MsgMeta
from kittiwake.module import register

__all__ = ["RequireTLS"]


@register("require_tls")
class RequireTLS(StatelessCheck):
    default_action = CheckAction("reject")

    async def connection(self, meta: MsgMeta) -> CheckResult:
        if meta.conn is not None and meta.conn.tls:
            return OK
        return self.failure(550, (5, 7, 1), "TLS conversation required")
