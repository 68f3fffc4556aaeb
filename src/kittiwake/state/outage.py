"""Whether a shared store is reachable, and the few log lines that say so.

Strategy: when the store stops answering, every session would find out on
its own, and a busy server would log thousands of identical errors a
minute while each decision waited for its own timeout. So the first
failure opens a short *retry window* (`RETRY`): during it every decision
fails at once without asking the store, and the first decision after it
tries again. Whatever happens the server never crashes and recovers by
itself: redis-py reconnects on the next call that is let through.

Logging: one `error` line when the outage starts, then at most one every
`interval` (default a minute) with how many decisions failed meanwhile,
and one `info` line when the store answers again. Never one per message
(docs/state.md, "When the store is unreachable").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kittiwake.log import Logger

__all__ = ["LOG_INTERVAL", "RETRY", "Outage", "reason_of"]

#: After a failure, decisions fail at once for this long before one retries.
RETRY = 1.0
#: At most one log line per this many seconds while the store is unreachable.
LOG_INTERVAL = 60.0


class Outage:
    """The reachability of one store, as seen by this process."""

    def __init__(
        self,
        log: Logger,
        *,
        mode: str,
        interval: float = LOG_INTERVAL,
        retry: float = RETRY,
        clock: Callable[[], float] = time.monotonic,
        fields: dict[str, Any] | None = None,
        describe: Callable[[BaseException], str] | None = None,
    ) -> None:
        """`mode` (`fail_open` or `fail_closed`) is named in the log lines;
        `fields` are added to them (the worker's `pid`, docs/workers.md);
        `describe` turns a failure into their `reason`."""
        self.log = log
        self.fields = dict(fields or {})
        #: The `reason` of a failure in the log (a store may know better words).
        self.describe = describe or reason_of
        self.mode = mode
        self.interval = interval
        self.retry = retry
        self.clock = clock
        #: When the current outage began (None: the store is answering).
        self.since: float | None = None
        self._retry_at = 0.0
        self._logged_at = 0.0
        self._failed = 0  # decisions failed since the last line

    @property
    def down(self) -> bool:
        return self.since is not None

    def skip(self) -> bool:
        """True while decisions should fail without asking (the retry window)."""
        if self.since is None:
            return False
        if self.clock() < self._retry_at:
            self._failed += 1
            return True
        return False

    def failed(self, exc: BaseException) -> None:
        """A call failed: open the retry window; log if it is time to."""
        now = self.clock()
        self._retry_at = now + self.retry
        self._failed += 1
        if self.since is None:
            self.since = now
        elif now - self._logged_at < self.interval:
            return
        self._logged_at = now
        self.log.error(
            "shared state store unreachable",
            reason=self.describe(exc),
            mode=self.mode,
            failed=self._failed,
            down_for=round(now - self.since, 1),
            **self.fields,
        )
        self._failed = 0

    def succeeded(self) -> None:
        """A call was answered: end the outage, with one line if there was one."""
        if self.since is None:
            return
        now = self.clock()
        self.log.info(
            "shared state store reachable again",
            down_for=round(now - self.since, 1),
            failed=self._failed,
            **self.fields,
        )
        self.since = None
        self._failed = 0


def reason_of(exc: BaseException) -> str:
    """The error's class and text; a timeout says so (its text is empty)."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
