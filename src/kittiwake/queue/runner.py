"""The delivery loop: when each entry is tried, by whom, and what is kept.

Strategy. Every entry in memory has a wall-clock time for its next
attempt and a timer for it. When the timer fires the entry joins a ready
queue, served by `max_parallelism` worker tasks, so at most that many
attempts run at once and a burst of due entries waits in a plain queue
rather than as thousands of tasks. A worker takes an entry through one
round:

1. the attempt (`attempt.py`) for the recipients still waiting;
2. its outcomes applied (`progress.py`) and the record written to disk
   (or the entry removed when nothing is left) *before anything else*, so
   a recipient that got the message is never sent it again;
3. the notices owed handed to the bounce pipeline (`notices.py`) and the
   record written again without them;
4. the next attempt scheduled from the retry policy (`schedule.py`), or
   the entry forgotten.

An entry whose files turn out to be damaged, or whose round raises
anything but an I/O error (a bug), is quarantined with its ID in the log:
retrying it would crash the same way for ever. An I/O error writing the
metadata (a full disk) keeps the entry and its in-memory progress and
tries again after `initial_retry_time`.

Operator commands (`kittiwake queue`) act on the same entries from the
control socket, between the workers' steps, under each entry's lock: a
delete marks the entry and removes its files at once, and an attempt
that was running then writes nothing back, so the entry can neither come
back nor be sent again; a flush of an entry already being tried changes
nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kittiwake import log as _log
from kittiwake import metrics
from kittiwake.errors import SMTPError
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.queue.attempt import AttemptResult, attempt
from kittiwake.queue.notices import Notifier, parse_stored_header
from kittiwake.queue.progress import NoticeRules, apply_attempt, bounce_all
from kittiwake.queue.record import CorruptEntry, Record, StoredError
from kittiwake.queue.schedule import RetryPolicy
from kittiwake.queue.store import BODY, Store
from kittiwake.targets.base import DeliveryTarget

__all__ = ["SHUTDOWN_WAIT", "Busy", "Entry", "Runner", "StorageTrouble"]

#: How long `stop` lets attempts in progress finish (the endpoints' grace).
SHUTDOWN_WAIT = 10.0
#: How long a finished entry's ID is remembered, so that news of its
#: commit arriving late (from a worker process, docs/workers.md) cannot
#: bring it back.
FINISHED_MEMORY = 3600.0
#: What `kittiwake queue bounce` gives as the reason of each failure.
BOUNCED = StoredError(554, (5, 0, 0), "Delivery cancelled by the postmaster")

RunInThread = Callable[..., Awaitable[Any]]


class Busy(Exception):
    """The entry is being tried right now; the command cannot act on it."""


class StorageTrouble(Exception):
    """Writing the entry's files failed; the entry waits and tries again."""


@dataclass(eq=False)
class Entry:
    """An entry in memory: its record and where it is in the loop."""

    record: Record
    next_at: float = 0.0
    timer: asyncio.TimerHandle | None = None
    waiting: bool = False  # in the ready queue
    running: bool = False  # a worker (or `bounce`) is on it
    deleted: bool = False  # removed by the operator; never written again
    gone: bool = False  # its files are removed: delivered and notified
    #: Its body was checked against its checksum since it was loaded.
    verified: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Runner:
    """The entries of one queue and the workers that deliver them."""

    def __init__(
        self,
        *,
        target: DeliveryTarget,
        store: Store,
        run: RunInThread,
        policy: RetryPolicy,
        rules: NoticeRules,
        notifier: Notifier | None,
        parallelism: int,
        log: _log.Logger,
    ) -> None:
        self.target = target
        self.store = store
        self.run = run
        self.policy = policy
        self.rules = rules
        self.notifier = notifier
        self.parallelism = parallelism
        self.log = log
        self.entries: dict[str, Entry] = {}
        #: Entries finished (done, deleted, quarantined): ID -> monotonic time.
        self._finished: dict[str, float] = {}
        self._ready: asyncio.Queue[Entry] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- life -------------------------------------------------------------------------

    def start(
        self, records: list[Record], now: float, planned: dict[str, float] | None = None
    ) -> None:
        """Take over the entries found on disk, keeping their schedule.

        `planned`: when the runner a reload replaced would have tried each
        entry (docs/reload.md, "The queue"); those keep that time.
        """
        for record in records:
            when = (planned or {}).get(record.id)
            if when is None:
                tries = [r.tries for r in record.rcpts]
                when = self.policy.at_start(record.last_attempt, tries, now)
            self.add(record, when, verified=False)
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._worker()) for _ in range(self.parallelism)]

    def add(self, record: Record, when: float | None = None, *, verified: bool = True) -> Entry:
        """A committed entry; tried at `when` (default: now).

        An entry already here is left as it is: with workers, a commit can
        be reported and found on disk both (docs/workers.md).
        """
        known = self.entries.get(record.id)
        if known is not None:
            return known
        entry = Entry(record, verified=verified)
        self.entries[record.id] = entry
        self._schedule(entry, time.time() if when is None else when)
        return entry

    async def stop(self) -> None:
        """Let attempts in progress finish (up to `SHUTDOWN_WAIT`), then stop.

        Entries not being tried simply stay on disk; an attempt still
        running after the wait is cancelled (its delivery aborted) and its
        entry is tried again at the next start.
        """
        self._stopping = True
        for entry in self.entries.values():
            self._cancel_timer(entry)
        for worker in self._workers:
            if worker not in self._busy:
                worker.cancel()
        if self._busy:
            _, late = await asyncio.wait(list(self._busy), timeout=SHUTDOWN_WAIT)
            for task in late:
                self.log.warn("attempt still running at shutdown: cancelled")
                task.cancel()
        if self._workers:
            await asyncio.wait(self._workers)
        self._workers = []

    def knows(self, entry_id: str) -> bool:
        """Whether the entry is here, or was finished here lately."""
        return entry_id in self.entries or entry_id in self._finished

    def _finish(self, entry_id: str) -> None:
        """Forget the entry, remembering its ID for `FINISHED_MEMORY` seconds."""
        self.entries.pop(entry_id, None)
        now = time.monotonic()
        self._finished.pop(entry_id, None)
        self._finished[entry_id] = now  # the newest last
        while self._finished:
            oldest, at = next(iter(self._finished.items()))
            if now - at < FINISHED_MEMORY:
                break
            del self._finished[oldest]

    # -- scheduling -----------------------------------------------------------------------

    def _schedule(self, entry: Entry, when: float) -> None:
        self._cancel_timer(entry)
        entry.next_at = when
        if self._stopping:
            return
        delay = max(0.0, when - time.time())
        entry.timer = asyncio.get_running_loop().call_later(delay, self._make_ready, entry)

    @staticmethod
    def _cancel_timer(entry: Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def _make_ready(self, entry: Entry) -> None:
        entry.timer = None
        if entry.deleted or entry.running or entry.waiting or self._stopping:
            return
        entry.waiting = True
        self._ready.put_nowait(entry)

    async def _worker(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping:
            entry = await self._ready.get()
            entry.waiting = False
            if entry.deleted or entry.running:
                continue
            entry.running = True
            self._busy.add(task)
            try:
                await self._round(entry)
            finally:
                entry.running = False
                self._busy.discard(task)

    # -- one round --------------------------------------------------------------------------

    async def _round(self, entry: Entry) -> None:
        record = entry.record
        try:
            if record.rcpts:
                await self._deliver(entry)
            if record.notices and not (entry.deleted or entry.gone):
                await self._notify(entry)
        except asyncio.CancelledError:
            raise
        except StorageTrouble as exc:
            self.log.error("cannot update the entry; will try again", queue_id=record.id, err=exc)
            self._schedule(entry, time.time() + self.policy.initial)
            return
        except Exception as exc:
            await self._quarantine(entry, exc)
            return
        self._next(entry)

    async def _deliver(self, entry: Entry) -> None:
        record = entry.record
        started = time.time()
        header, body = await self._message(entry)
        try:
            result = await attempt(
                self.target,
                record.meta(f"{record.msg_id}-{int(started):x}"),
                record.sender,
                [r.addr for r in record.rcpts],
                header,
                body,
            )
        finally:
            body.remove()
        _count(self.target, result, time.time() - started)
        async with entry.lock:
            if entry.deleted:
                return
            apply_attempt(record, result, self.policy, self.rules, started, time.time())
            await self._save(entry)
        self._log_attempt(record, result)  # once the outcome is on disk

    async def _message(self, entry: Entry) -> tuple[Header, Buffer]:
        """The entry's header and body for an attempt, checked against its record."""
        record = entry.record
        try:
            data = await self.run(self.store.read_for_attempt, record, not entry.verified)
            entry.verified = True
        except FileNotFoundError as exc:
            raise CorruptEntry(f"{exc.filename} is missing") from None
        except OSError as exc:
            raise StorageTrouble(exc) from exc
        try:
            header = parse_stored_header(data)
        except SMTPError as exc:
            raise CorruptEntry(f"header cannot be parsed: {exc}") from None
        return header, Buffer.from_file(self.store.path(record.id, BODY), record.body.size)

    async def _notify(self, entry: Entry) -> None:
        record = entry.record
        if self.notifier is None:  # no bounce pipeline (any longer): nothing to send
            settled, waiting = list(record.notices), False
        else:
            settled, waiting = await self.notifier.send(record, list(record.notices))
        async with entry.lock:
            if entry.deleted:
                return
            record.notices = [n for n in record.notices if n not in settled]
            record.notice_tries = record.notice_tries + 1 if waiting else 0
            await self._save(entry)

    async def _save(self, entry: Entry) -> None:
        """Write the record, or remove the entry when nothing is left of it."""
        record = entry.record
        try:
            if record.rcpts or record.notices:
                await self.run(self.store.save, record)
            else:
                await self.run(self.store.remove, record.id)
                entry.gone = True
        except OSError as exc:
            raise StorageTrouble(exc) from exc

    def _next(self, entry: Entry) -> None:
        record = entry.record
        if entry.deleted or entry.gone:
            self._finish(record.id)
            if entry.gone:
                self.log.info("entry done", queue_id=record.id, msg_id=record.msg_id)
            return
        now = time.time()
        if record.rcpts:
            when = self.policy.next_attempt(now, (r.tries for r in record.rcpts))
        else:  # only notices owed: their own pace
            n = max(1, min(record.notice_tries, self.policy.max_tries))
            when = now + self.policy.delay(n)
        self._schedule(entry, when)

    async def _quarantine(self, entry: Entry, exc: Exception) -> None:
        record = entry.record
        self._finish(record.id)
        entry.deleted = True
        reason = str(exc) if isinstance(exc, CorruptEntry) else f"delivery crashed: {exc!r}"
        try:
            moved = await self.run(self.store.quarantine, record.id)
        except OSError as err:
            self.log.error("cannot quarantine the entry", queue_id=record.id, err=err)
            return
        self.log.error(
            "entry quarantined",
            queue_id=record.id,
            msg_id=record.msg_id,
            reason=reason,
            files=",".join(moved),
            err=None if isinstance(exc, CorruptEntry) else exc,
        )

    def _log_attempt(self, record: Record, result: AttemptResult) -> None:
        for rcpt, error in result.outcomes.items():
            if error is None:
                self.log.info("delivered", queue_id=record.id, msg_id=record.msg_id, rcpt=rcpt)
            else:
                self.log.info(
                    "not delivered",
                    queue_id=record.id,
                    msg_id=record.msg_id,
                    rcpt=rcpt,
                    reply=str(StoredError.of(error)),
                    reason=getattr(error, "reason", "") or str(error),
                )

    # -- operator commands --------------------------------------------------------------------

    def get(self, entry_id: str) -> Entry | None:
        return self.entries.get(entry_id)

    def flush(self, entry_id: str | None = None) -> list[str]:
        """Try now: one entry, or every entry. Those being tried are left alone."""
        chosen = self.entries.values() if entry_id is None else [self.entries[entry_id]]
        flushed = []
        for entry in list(chosen):
            if entry.running or entry.waiting or entry.deleted:
                continue
            self._schedule(entry, time.time())
            flushed.append(entry.record.id)
        return flushed

    async def delete(self, entry_id: str) -> bool:
        """Remove an entry now; an attempt in progress writes nothing back.

        Returns whether an attempt was in progress (its delivery finishes,
        but the entry is never tried again).
        """
        entry = self.entries[entry_id]
        entry.deleted = True  # before any await: no worker starts it from now on
        self._cancel_timer(entry)
        running = entry.running
        async with entry.lock:
            self._finish(entry_id)
            await self.run(self.store.remove, entry_id)
        self.log.info("entry deleted by the operator", queue_id=entry_id, in_flight=running)
        return running

    async def bounce(self, entry_id: str) -> int:
        """Fail every waiting recipient now and send the notices; how many failed."""
        entry = self.entries[entry_id]
        if entry.running:
            raise Busy(entry_id)
        entry.running = True
        self._cancel_timer(entry)
        try:
            async with entry.lock:
                count = len(entry.record.rcpts)
                bounce_all(entry.record, self.rules, BOUNCED, time.time())
                await self._save(entry)
            self.log.info("entry bounced by the operator", queue_id=entry_id, rcpts=count)
            if entry.record.notices and not entry.gone:
                await self._notify(entry)
        except StorageTrouble as exc:
            self.log.error("cannot update the entry; will try again", queue_id=entry_id, err=exc)
            self._schedule(entry, time.time() + self.policy.initial)
            raise
        finally:
            entry.running = False
        self._next(entry)
        return count


def _count(target: DeliveryTarget, result: AttemptResult, seconds: float) -> None:
    """One attempt's outcome per recipient, for the metrics (docs/metrics.md)."""
    counted = metrics.current()
    if not counted.enabled:
        return
    label = metrics.target_label(target)
    tally: dict[str, int] = {}
    for error in result.outcomes.values():
        kind = metrics.delivery_result(error)
        tally[kind] = tally.get(kind, 0) + 1
    for kind, count in tally.items():
        counted.delivery(label, kind, seconds, count)
