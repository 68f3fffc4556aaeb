"""The check contract: what a check module is, what it returns, how it acts.

A check module creates one state per message; the pipeline calls the state's
stages in order (connection, sender, each recipient, body) and merges the
results (docs/checks.md). Stateless checks can implement only the stages
they need by subclassing `CheckStateBase`. A check that can judge a client
at its greeting also offers `EarlyCheck`.

The second half is the `NAME_action` syntax every check shares (`ignore`,
`quarantine` or `reject`, with an optional reply override) and the
`CODE [ENH [MESSAGE]]` reply reader the pipeline's `reject` directive uses
too, so both read replies the same way. Writing a new check touches this
package only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, runtime_checkable

from kittiwake.config.node import Node
from kittiwake.errors import SMTPError
from kittiwake.message import ConnInfo, MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import capability


@dataclass(slots=True)
class AuthResult:
    """One `method=result` entry for the Authentication-Results field."""

    method: str
    result: str
    params: dict[str, str] = field(default_factory=dict)
    reason: str = ""


@dataclass(slots=True)
class CheckResult:
    """What one stage of one check concluded.

    `reject` with `reason` fails the stage; `quarantine` marks the message
    (and wins over reject, as in maddy); a `reason` with neither flag is only
    logged. Header fields and authentication results accumulate whatever
    the verdict.
    """

    reject: bool = False
    quarantine: bool = False
    reason: SMTPError | None = None
    header_fields: list[tuple[str, str]] = field(default_factory=list)
    auth_results: list[AuthResult] = field(default_factory=list)


OK = CheckResult()


class CheckState(Protocol):
    async def check_connection(self) -> CheckResult: ...

    async def check_sender(self, mail_from: str) -> CheckResult: ...

    async def check_rcpt(self, rcpt: str) -> CheckResult: ...

    async def check_body(self, header: Header, body: Buffer) -> CheckResult: ...

    async def close(self) -> None: ...


class CheckStateBase:
    """A check state that passes every stage; override what you check."""

    async def check_connection(self) -> CheckResult:
        return OK

    async def check_sender(self, mail_from: str) -> CheckResult:
        return OK

    async def check_rcpt(self, rcpt: str) -> CheckResult:
        return OK

    async def check_body(self, header: Header, body: Buffer) -> CheckResult:
        return OK

    async def close(self) -> None:
        return None


@capability("check")
@runtime_checkable
class Check(Protocol):
    async def check_state(self, meta: MsgMeta) -> CheckState: ...


@runtime_checkable
class EarlyCheck(Protocol):
    """A check that can judge a client as soon as it greets (docs/checks.md, "When checks run").

    Only root-level checks of an endpoint's pipeline run this way (in maddy,
    `dnsbl` with `check_early`); a reject is the greeting's reply and the
    client stays un-greeted.
    """

    async def check_early(self, conn: ConnInfo) -> CheckResult: ...


# --- Actions and reply overrides (docs/checks.md) ----------------------------------

#: What a `reject` (or a check action override) says when given no text.
DEFAULT_REJECT_MESSAGE = "Message rejected due to a local policy"

_DIGITS = re.compile(r"[0-9]{1,3}")


def parse_reply(args: Sequence[str]) -> SMTPError:
    """`[CODE [ENH [MESSAGE]]]` -> the reply it describes; ValueError if invalid.

    Defaults: `554`, `x.7.0` with x the first digit of CODE, and
    `Message rejected due to a local policy`. Both codes must be in class 4
    or 5; when both are given their classes must agree (RFC 3463 §2; maddy
    does not check, but such a reply cannot be sent consistently).
    """
    if len(args) > 3:
        raise ValueError("invalid count of arguments: expected [CODE [ENHANCED-CODE [MESSAGE]]]")
    code = 554
    if args:
        if not re.fullmatch(r"[0-9]+", args[0]):
            raise ValueError(f"invalid error code integer: {args[0]!r}")
        code = int(args[0])
        if code // 100 not in (4, 5):
            raise ValueError("error code should start with either 4 or 5")
    enhanced = (code // 100, 7, 0)
    if len(args) >= 2:
        parts = args[1].split(".")
        if len(parts) != 3:
            raise ValueError(f"wrong amount of enhanced code parts: {args[1]!r}")
        if not all(_DIGITS.fullmatch(p) for p in parts):
            raise ValueError(f"invalid enhanced code: {args[1]!r}")
        enhanced = (int(parts[0]), int(parts[1]), int(parts[2]))
        if enhanced[0] not in (4, 5):
            raise ValueError("enhanced code should use either 4 or 5 as a first number")
        if enhanced[0] != code // 100:
            raise ValueError(
                f"enhanced code {args[1]} does not match the class of error code {code}"
            )
    message = DEFAULT_REJECT_MESSAGE
    if len(args) == 3:
        message = args[2]
        if not message:
            raise ValueError("message can't be empty")
    return SMTPError(code, enhanced, message, reason="reject directive used")


@dataclass(frozen=True, slots=True)
class CheckAction:
    """What a check does with a failure: `ignore`, `quarantine` or `reject`.

    `override`, if set, replaces the code, enhanced code and text the client
    sees; the check's own error is kept in the log fields.
    """

    kind: Literal["ignore", "quarantine", "reject"]
    override: SMTPError | None = field(default=None)

    def apply(self, result: CheckResult) -> CheckResult:
        """Set the verdict flags of a result whose `reason` says it failed."""
        reason = result.reason
        if reason is None:
            return result
        if self.override is not None:
            o = self.override
            reason = SMTPError(
                o.code,
                o.enhanced,
                o.message,
                check_name=reason.check_name,
                reason=f"{reason}" + (f": {reason.reason}" if reason.reason else ""),
                misc=dict(reason.misc),
            )
        return replace(
            result,
            reason=reason,
            reject=result.reject or self.kind == "reject",
            quarantine=result.quarantine or self.kind == "quarantine",
        )


def parse_action(args: Sequence[str]) -> CheckAction:
    """`ignore` | `quarantine [CODE [ENH [MSG]]]` | `reject [CODE [ENH [MSG]]]`."""
    if not args:
        raise ValueError("expected at least 1 argument")
    kind, rest = args[0], args[1:]
    if kind == "ignore":
        if rest:
            raise ValueError("ignore takes no arguments")
        return CheckAction("ignore")
    if kind not in ("quarantine", "reject"):
        raise ValueError(f"invalid action: {kind!r} (expected ignore, quarantine or reject)")
    override = parse_reply(rest) if rest else None
    return CheckAction("quarantine" if kind == "quarantine" else "reject", override)


def action_directive(node: Node) -> CheckAction:
    """Parser for `Directives.custom("fail_action", action_directive, default=...)`."""
    if node.children is not None:
        raise node.error(f"{node.name}: can't declare block here")
    try:
        return parse_action(node.args)
    except ValueError as exc:
        raise node.error(f"{node.name}: {exc}") from None
