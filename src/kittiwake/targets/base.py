"""The delivery contract (docs/flow.md, "6. Targets: where the message ends up").

A delivery is a transaction: `start_delivery` once per message and target,
`add_rcpt` per recipient (its error is that RCPT's reply), `body` with the
final header and the re-readable body buffer, then `commit` (make it
durable: only after it returns may the endpoint say 250) or `abort` (undo,
safe after any failure). Targets that can succeed for some recipients and
fail for others also implement `body_non_atomic`, which LMTP uses to give
each recipient its own reply. Targets whose body and commit are each a
trip to a thread may implement `body_and_commit`, which the pipeline calls
instead of both when the delivery is the message's only one (nothing else
can fail between the two): one trip instead of two.
"""

from __future__ import annotations

from typing import Protocol, TypeGuard, runtime_checkable

from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import capability


@runtime_checkable
class Delivery(Protocol):
    async def add_rcpt(self, rcpt: str) -> None: ...

    async def body(self, header: Header, body: Buffer) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class StatusCollector(Protocol):
    """Receives per-recipient outcomes, keyed by the address given to add_rcpt."""

    def set_status(self, rcpt: str, error: Exception | None) -> None: ...


@runtime_checkable
class PartialDelivery(Delivery, Protocol):
    async def body_non_atomic(
        self, status: StatusCollector, header: Header, body: Buffer
    ) -> None: ...


#: Whether a class conforms to a runtime protocol, by (class, protocol).
_conforms: dict[tuple[type, type], bool] = {}


def _remembered(delivery: Delivery, protocol: type) -> bool:
    """`isinstance(delivery, protocol)`, remembered per class.

    A runtime protocol check looks up every member of the protocol on each
    call (Python 3.11): a measurable cost once per message on the delivery
    path. A class's answer never changes.
    """
    key = (type(delivery), protocol)
    known = _conforms.get(key)
    if known is None:
        known = _conforms[key] = isinstance(delivery, protocol)
    return known


def is_partial(delivery: Delivery) -> TypeGuard[PartialDelivery]:
    """Whether `delivery` reports per recipient (`body_non_atomic`)."""
    return _remembered(delivery, PartialDelivery)


@runtime_checkable
class OneStepDelivery(Delivery, Protocol):
    async def body_and_commit(self, header: Header, body: Buffer) -> None:
        """`body` then `commit`, at once; `abort` is still called after an error."""
        ...


def is_one_step(delivery: Delivery) -> TypeGuard[OneStepDelivery]:
    """Whether `delivery` takes body and commit at once (`body_and_commit`)."""
    return _remembered(delivery, OneStepDelivery)


@capability("delivery target")
@runtime_checkable
class DeliveryTarget(Protocol):
    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> Delivery: ...


def honours_dsn(target: object) -> bool:
    """Whether `target` keeps RFC 3461's promises for what it accepts.

    A target says so with a true `honours_dsn` attribute: `target.queue`
    does (it sends the notices NOTIFY asks for, through its `bounce`
    pipeline), a nested pipeline does when every target it routes to does.
    An endpoint offers the DSN extension only when its pipeline honours it
    (docs/protocol.md): a final delivery straight from the session, or a
    hop without a queue, could not send a "delivered" or "relayed" notice.
    """
    return bool(getattr(target, "honours_dsn", False))
