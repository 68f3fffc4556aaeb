"""The check capability and how check results are combined.

A check module creates one state per message; the pipeline calls the state's
stages in order (connection, sender, each recipient, body) and merges the
results (spec/pipeline.md §6.5). Stateless checks can implement only the
stages they need by subclassing `CheckStateBase`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kittiwake.buffer import Buffer
from kittiwake.errors import SMTPError
from kittiwake.header import Header
from kittiwake.message import ConnInfo, MsgMeta
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
    """A check that can judge a client as soon as it greets (spec §4).

    Only root-level checks of an endpoint's pipeline run this way (in maddy,
    `dnsbl` with `check_early`); a reject is the greeting's reply and the
    client stays un-greeted.
    """

    async def check_early(self, conn: ConnInfo) -> CheckResult: ...
