"""A worker process's TLS report counts, sent to the supervisor's store (docs/workers.md).

Two processes rewriting one day file would each write their own counts
over the other's, so only the supervisor's `TLSReportStore` writes. A
worker's `target.remote` counts into a `Forwarder` instead: the attempts
of the last `interval` seconds, per UTC day, sent over the worker's
uplink as one day's counts (the day file's own JSON form) when the
interval is over, and what is left when the worker stops. A worker that
is killed loses at most its last interval, as the store itself does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kittiwake import log
from kittiwake.tlsrpt import TLSAttempt
from kittiwake.tlsrpt.aggregate import DayCounts

if TYPE_CHECKING:
    from kittiwake.container import Shared

__all__ = ["FORWARD_INTERVAL", "Forwarder"]

#: Seconds between two sends: what a killed worker can lose.
FORWARD_INTERVAL = 5.0


class Forwarder:
    """Implements `kittiwake.tlsrpt.Recorder` for a worker; on the event loop only."""

    def __init__(
        self,
        shared: Shared,
        *,
        interval: float = FORWARD_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shared = shared
        self.interval = interval
        self._clock = clock
        self._pending: dict[dt.date, DayCounts] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.log = log.get("tlsrpt")

    def record(self, attempt: TLSAttempt) -> None:
        """Count one attempt; sent within `interval` seconds. Never raises."""
        try:
            day = dt.datetime.fromtimestamp(self._clock(), dt.UTC).date()
            counts = self._pending.get(day) or DayCounts()
            counts.add(attempt)
            self._pending[day] = counts
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.interval, self.send)
        except Exception as exc:  # a bug here must not fail a delivery
            self.log.error("cannot count a TLS attempt", err=exc, domain=attempt.domain)

    def send(self) -> None:
        """Hand what was counted to the supervisor."""
        self._timer = None
        pending, self._pending = self._pending, {}
        uplink = self._shared.uplink
        if uplink is None:
            return
        for day, counts in sorted(pending.items()):
            uplink.tls_counts(day.isoformat(), counts.to_json(day.isoformat()))

    async def aclose(self) -> None:
        """The worker stops: send the rest."""
        if self._timer is not None:
            self._timer.cancel()
        self.send()
