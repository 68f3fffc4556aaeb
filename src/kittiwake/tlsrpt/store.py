"""The process's TLS report store: attempts counted in memory, day files written by a thread.

Strategy: `target.remote` calls `record` on the event loop once per
connection attempt, so `record` only adds the attempt to an in-memory
`DayCounts` of what arrived since the last write (a lock held for a few
dictionary updates, never for I/O) and returns; it never raises. A daemon
thread wakes every `interval` seconds (5 by default), takes that delta
with one swap under the lock, adds it to the day's full counts (read from
the day's file on the first write of a run, so a restart the same day
adds to what the previous run wrote) and rewrites the file atomically and
durably (`durable.replace_file`: temporary file, fsync, rename, directory
fsync). Closing the store stops the thread and writes what is left, so a
clean shutdown loses nothing and a crash loses at most the last
`interval` seconds of counts.

Files: `STATE_DIR/tls_reports/YYYY-MM-DD.json`, one per UTC day, holding
per policy domain the `policies` array of its RFC 8460 §4 report (format
in docs/tls-report.md). Only the server writes them, always whole and
always by rename, so `kittiwake tls-report` can read them at any time.

A file that cannot be read as a day file (damaged by hand, or from a
newer version) is renamed to `NAME.bad-TIMESTAMP` and counting starts
afresh for that day, rather than stopping the counting or overwriting it.
A failed write is logged and tried again at the next wake-up with the
counts still in memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from kittiwake import log
from kittiwake.durable import replace_file
from kittiwake.tlsrpt import Recorder, TLSAttempt
from kittiwake.tlsrpt.aggregate import DayCounts
from kittiwake.tlsrpt.forward import Forwarder

if TYPE_CHECKING:
    from kittiwake.container import Container, Shared

__all__ = [
    "DIRECTORY",
    "FLUSH_INTERVAL",
    "TLSReportStore",
    "day_path",
    "read_day",
    "recorder",
    "shared",
]

#: Under state_dir.
DIRECTORY = "tls_reports"
#: Seconds between writes: the counts a crash can lose.
FLUSH_INTERVAL = 5.0


def day_path(directory: str, day: dt.date) -> str:
    """The file of UTC day `day`."""
    return os.path.join(directory, f"{day.isoformat()}.json")


def read_day(path: str) -> DayCounts | None:
    """The counts in day file `path`; None when there is none.

    `ValueError` when the file is not a day file, `OSError` when it cannot
    be read.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    try:
        return DayCounts.from_json(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class _Base:
    """A day's full counts as the writer thread knows them."""

    __slots__ = ("counts", "loaded", "unwritten")

    def __init__(self) -> None:
        self.counts = DayCounts()
        self.loaded = False  # the day file's counts have been added
        self.unwritten = False  # counts not yet in the file


class TLSReportStore:
    """Counts of TLS attempts per policy domain per UTC day, kept in `directory`.

    Implements `kittiwake.tlsrpt.Recorder`. `record` is for the event loop;
    `flush` and `close` block (a thread, or `aclose` from the loop).
    """

    def __init__(
        self,
        directory: str,
        *,
        interval: float = FLUSH_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.interval = interval
        self._clock = clock
        self.log = log.get("tlsrpt")
        self._lock = threading.Lock()  # guards _pending, _closed, _thread
        self._pending: dict[dt.date, DayCounts] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time; guards _bases
        self._bases: dict[dt.date, _Base] = {}
        self._day: tuple[float, float, dt.date] = (0.0, 0.0, dt.date.min)
        #: Attempts lost: recorded after `close`, or failing to be counted.
        self.lost = 0

    # -- the event loop's side ------------------------------------------------

    def record(self, attempt: TLSAttempt) -> None:
        """Count one attempt; never raises, never waits for I/O."""
        try:
            day = self._today()
            with self._lock:
                if self._closed:
                    self.lost += 1
                    return
                counts = self._pending.get(day) or DayCounts()
                counts.add(attempt)  # checks everything before it counts
                self._pending[day] = counts
                self._start_writer()
        except Exception as exc:  # a bug here must not fail a delivery
            self.lost += 1
            self.log.error("cannot count a TLS attempt", err=exc, domain=attempt.domain)

    def add_counts(self, day: dt.date, counts: DayCounts) -> None:
        """Add counts made elsewhere (a worker process's, docs/workers.md); never raises."""
        try:
            with self._lock:
                if self._closed:
                    self.lost += sum(
                        c.success + c.failure
                        for d in counts.domains.values()
                        for c in d.policies.values()
                    )
                    return
                mine = self._pending.get(day) or DayCounts()
                mine.merge(counts)
                self._pending[day] = mine
                self._start_writer()
        except Exception as exc:  # a bug here must not stop the supervisor
            self.log.error("cannot add a worker's TLS report counts", err=exc, day=str(day))

    def _start_writer(self) -> None:
        """Start the writer thread on first use (called with `_lock` held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kittiwake-tlsrpt", daemon=True)
            self._thread.start()

    def _today(self) -> dt.date:
        """The UTC day now, computed once per day rather than once per call."""
        now = self._clock()
        start, end, day = self._day
        if not start <= now < end:
            day = dt.datetime.fromtimestamp(now, dt.UTC).date()
            start = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
            self._day = (start, start + 86400.0, day)
        return day

    # -- the writer's side ------------------------------------------------------

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            try:
                self.flush()
            except Exception as exc:  # logged, and tried again next time
                self.log.error("cannot write TLS report data", err=exc, dir=self.directory)

    def flush(self) -> None:
        """Write every day with counts not yet in its file (blocking).

        Raises the first `OSError` after trying every day; what failed
        stays in memory for the next try.
        """
        with self._write_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            for day, delta in pending.items():
                base = self._bases.get(day)
                if base is None:
                    base = self._bases[day] = _Base()
                base.counts.merge(delta)
                base.unwritten = True
            failure: OSError | None = None
            for day, base in sorted(self._bases.items()):
                if not base.unwritten:
                    continue
                try:
                    self._write(day, base)
                except OSError as exc:
                    failure = failure or exc
            today = self._today()
            for day in [d for d, b in self._bases.items() if d < today and not b.unwritten]:
                del self._bases[day]  # that day is over and on disk
        if failure is not None:
            raise failure

    def _write(self, day: dt.date, base: _Base) -> None:
        path = day_path(self.directory, day)
        if not base.loaded:
            try:
                earlier = read_day(path)
            except ValueError as exc:
                earlier = None
                aside = f"{path}.bad-{int(self._clock())}"
                self.log.error("unreadable TLS report file set aside", err=exc, file=aside)
                os.rename(path, aside)
            if earlier is not None:
                earlier.merge(base.counts)
                base.counts = earlier
            base.loaded = True
        data = json.dumps(base.counts.to_json(day.isoformat()), ensure_ascii=False, indent=1)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        replace_file(path, data.encode("utf-8") + b"\n")
        base.unwritten = False

    def close(self) -> None:
        """Stop the writer thread and write what is left (blocking); idempotent."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None:
            thread.join()
        self.flush()

    async def aclose(self) -> None:
        """`close` from the event loop, on a thread."""
        await asyncio.to_thread(self.close)


_shared: weakref.WeakKeyDictionary[Shared, TLSReportStore] = weakref.WeakKeyDictionary()
_forwarders: weakref.WeakKeyDictionary[Shared, Forwarder] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def recorder(container: Container) -> Recorder:
    """Where `target.remote` counts its attempts: the store, or in a worker
    process the supervisor's store (docs/workers.md), through a `Forwarder`."""
    from kittiwake.module import Role

    if container.role is not Role.WORKER:
        return shared(container)
    with _shared_lock:
        forwarder = _forwarders.get(container.shared)
        if forwarder is None:
            forwarder = _forwarders[container.shared] = Forwarder(container.shared)
            container.on_stop(forwarder.aclose)
        return forwarder


def shared(container: Container) -> TLSReportStore:
    """The one store of the server `container` runs, made on first use.

    It writes under `STATE_DIR/tls_reports/` and is closed (its last
    counts written) when the container stops, after every module has
    stopped. Making it starts nothing: the writer thread starts with the
    first `record`, so `kittiwake config check` writes no file. A reload
    keeps it (it belongs to the process's `Shared`, docs/reload.md): two
    stores would each add their counts to the same day file and lose some.
    """
    with _shared_lock:
        store = _shared.get(container.shared)
        if store is None:
            store = TLSReportStore(container.state_path(DIRECTORY))
            _shared[container.shared] = store
            container.on_stop(store.aclose)
        return store
