"""When the queue tries a message again (docs/target-queue.md, "Retry schedule").

Pure arithmetic on Unix times, so it is tested without waiting. After the
n-th failed attempt of the recipient that has been tried least, the next
attempt comes `initial_retry_time * retry_time_scale ** (n - 1)` later. The
scale is a real number (maddy truncates it to an integer, which turns
1.25 into 1 and makes every delay the same); with the defaults (15 minutes,
1.25, 20 tries) the delays are 15m, 18m45s, 23m26s, 29m18s, ... and the
20th and last try comes about 2 days 20 hours after the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_DELAY", "RetryPolicy"]

#: No single wait is longer than this: a guard for settings (a scale of 10
#: with 1000 tries) whose formula would overflow or never come back.
MAX_DELAY = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry directives of one queue, in seconds."""

    initial: float = 15 * 60.0
    scale: float = 1.25
    max_tries: int = 20
    post_init_delay: float = 10.0

    def delay(self, n: int) -> float:
        """The wait after the n-th failed try (n ≥ 1)."""
        try:
            value = self.initial * self.scale ** (max(1, n) - 1)
        except OverflowError:
            return MAX_DELAY
        return min(value, MAX_DELAY)

    def next_attempt(self, last: float, tries: Iterable[int]) -> float:
        """The next attempt after one that ended at `last`.

        `tries` are the counts of the recipients still waiting; the least
        tried sets the pace, so a recipient added by a later attempt's
        outcome is not held back by its older companions.
        """
        n = min(tries, default=1)
        return last + self.delay(n)

    def at_start(self, last: float | None, tries: Iterable[int], now: float) -> float:
        """The first attempt for an entry found on disk when the queue starts.

        The schedule it had is kept, but nothing is tried before
        `post_init_delay` has passed, so a restart does not fire every
        overdue message at the moment the server comes up. An entry never
        tried (a crash just after it was accepted) waits only that delay.
        """
        earliest = now + self.post_init_delay
        if last is None:
            return earliest
        return max(earliest, self.next_attempt(last, tries))

    def gives_up_at(self, last: float, tries: int) -> float:
        """When the last try of a recipient tried `tries` times would happen.

        An estimate for the "delayed" notice (`Will-Retry-Until`, RFC 3464
        §2.3.9): the remaining tries at their scheduled delays.
        """
        total = sum(self.delay(n) for n in range(max(1, tries), self.max_tries))
        return last + min(total, MAX_DELAY)

    def exhausted(self, tries: int) -> bool:
        """Whether a recipient that just failed its try number `tries + 1` is done."""
        return tries + 1 >= self.max_tries
