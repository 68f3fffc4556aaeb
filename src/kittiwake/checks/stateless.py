"""Checks that judge one stage with one function and share one `fail_action`.

maddy's simple checks (`require_tls`, `require_mx_record`,
`require_matching_rdns`; docs/checks.md) take no arguments and only two
directives, `debug` and `fail_action`, and each looks at one stage. A
subclass sets `default_action` and overrides `connection` or `sender`; the
per-message state calls it and applies the configured action to whatever
failure it reports, so the check itself always describes a failure as if
it rejected.
"""

from __future__ import annotations

from typing import ClassVar

from kittiwake.checks.base import (
    OK,
    CheckAction,
    CheckResult,
    CheckState,
    CheckStateBase,
    action_directive,
)
from kittiwake.config.directives import Directives
from kittiwake.errors import EnhancedCode, SMTPError
from kittiwake.message import MsgMeta
from kittiwake.module import Module

__all__ = ["StatelessCheck"]


class StatelessCheck(Module):
    """The module side: `debug`, `fail_action`, and the stage functions."""

    #: What `fail_action` is when the block does not say.
    default_action: ClassVar[CheckAction] = CheckAction("quarantine")

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        self.fail_action = cfg.custom("fail_action", action_directive, self.default_action)
        cfg.finish()

    async def check_state(self, meta: MsgMeta) -> CheckState:
        return _State(self, meta)

    async def connection(self, meta: MsgMeta) -> CheckResult:
        """The connection stage; OK unless overridden."""
        return OK

    async def sender(self, meta: MsgMeta, mail_from: str) -> CheckResult:
        """The sender stage (`mail_from` in clean form, "" for `<>`); OK unless overridden."""
        return OK

    def failure(
        self, code: int, enhanced: EnhancedCode, text: str, reason: str = ""
    ) -> CheckResult:
        """A failure not yet judged: `fail_action` decides what it does."""
        error = SMTPError(code, enhanced, text, check_name=self.module_name, reason=reason)
        return CheckResult(reason=error)


class _State(CheckStateBase):
    """One message: the stage functions, with the configured action applied."""

    __slots__ = ("check", "meta")

    def __init__(self, check: StatelessCheck, meta: MsgMeta) -> None:
        self.check = check
        self.meta = meta

    async def check_connection(self) -> CheckResult:
        return self.check.fail_action.apply(await self.check.connection(self.meta))

    async def check_sender(self, mail_from: str) -> CheckResult:
        return self.check.fail_action.apply(await self.check.sender(self.meta, mail_from))
