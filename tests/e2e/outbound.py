"""Drive `target.smtp`/`target.lmtp` in this process, against a real server.

When a test needs exact control of the message's metadata (every form of
the DSN parameters, REQUIRETLS without a TLS client session upstream),
it builds the target from configuration text with the real container, as
the server would, and calls the delivery contract itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.targets.base import DeliveryTarget, PartialDelivery


@asynccontextmanager
async def target(deliver_to: str, tmp: Path, top: str = "") -> AsyncIterator[DeliveryTarget]:
    """The target of one `deliver_to ...` line, started, stopped after."""
    text = f"state_dir {tmp}/state\nhostname client.example.net\n{top}"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp))
    container.parse_globals()
    (node,) = parse_text(deliver_to, "t.conf")
    built = container.module_from_node(node, DeliveryTarget, "target")
    await container.start()
    try:
        yield built
    finally:
        await container.stop()


def header(subject: str) -> Header:
    h = Header()
    h.add("Date", "Tue, 05 Mar 2024 10:00:00 +0000", folded=False)
    h.add("Message-ID", f"<{subject}@client.example.net>", folded=False)
    h.add("To", "someone@example.org", folded=False)
    h.add("From", "Sender <sender@example.org>", folded=False)
    h.add("Subject", subject, folded=False)
    return h


@dataclass
class Outcome:
    rcpt_errors: dict[str, SMTPError | None] = field(default_factory=dict)
    body_error: Exception | None = None
    statuses: dict[str, Exception | None] = field(default_factory=dict)
    dsn_passed: bool = False


class _Statuses:
    def __init__(self, out: dict[str, Exception | None]) -> None:
        self.out = out

    def set_status(self, rcpt: str, error: Exception | None) -> None:
        assert rcpt not in self.out, f"status set twice for {rcpt}"
        self.out[rcpt] = error


async def deliver(
    tgt: DeliveryTarget,
    meta: MsgMeta,
    sender: str,
    rcpts: list[str],
    subject: str,
    body: bytes,
    *,
    non_atomic: bool = False,
) -> Outcome:
    """One message through the contract, as the pipeline calls it."""
    out = Outcome()
    buf = Buffer.ram()
    await buf.write(body)
    await buf.finish()
    delivery = await tgt.start_delivery(meta, sender)
    try:
        for rcpt in rcpts:
            try:
                await delivery.add_rcpt(rcpt)
                out.rcpt_errors[rcpt] = None
            except SMTPError as exc:
                out.rcpt_errors[rcpt] = exc
        if any(e is None for e in out.rcpt_errors.values()):
            if non_atomic:
                assert isinstance(delivery, PartialDelivery)
                await delivery.body_non_atomic(_Statuses(out.statuses), header(subject), buf)
            else:
                try:
                    await delivery.body(header(subject), buf)
                except SMTPError as exc:
                    out.body_error = exc
        await (delivery.abort() if out.body_error else delivery.commit())
    except BaseException:
        await delivery.abort()
        raise
    finally:
        buf.remove()
    out.dsn_passed = bool(getattr(delivery, "dsn_passed", False))
    return out
