"""`target.queue`: accept a message durably now, deliver it to a target later.

As a delivery target (docs/target-queue.md) the queue accepts every
recipient; `body` writes the message and its metadata to disk and syncs
them (`store.py`, steps 1-2); `commit` makes the entry live with one rename
(the commit point) and schedules its first attempt at once; only after
that may the endpoint say 250. `abort` removes whatever was written.
Storage errors are always temporary replies: `452 4.3.1` for a full disk,
`451 4.3.0` otherwise, never a 5xx that would bounce the message.

Behind it, `runner.py` delivers the entries to the configured `target`
with retries, and `notices.py` sends delivery status notifications
through the `bounce` pipeline. `commands.py` offers the entries to the
operator (`kittiwake queue`).

With worker processes (docs/workers.md) the queue of each worker only
accepts: it writes and commits entries as above and tells the supervisor
(`Uplink.queued`), whose queue holds the directory's lock and alone
delivers. The supervisor's queue picks each reported entry up from disk
(`pick_up`), and looks for entries nobody reported (`sweep`: a worker
killed between its commit and its report) after a worker dies and every
little while; an entry it knows already, or finished lately, is left
alone, so each is delivered once whichever way it arrived.

Threads: every file-system call runs on the queue's own small thread pool,
never on the event loop; the pool is separate from the storage and check
pools so a slow disk under the queue never delays local delivery or
checks, and the other way round.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kittiwake import metrics
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.config.values import parse_duration
from kittiwake.durable import storage_error
from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Module, Role, register
from kittiwake.queue import commands
from kittiwake.queue.notices import Notifier
from kittiwake.queue.progress import NoticeRules
from kittiwake.queue.record import CorruptEntry, FileSum, Rcpt, Record
from kittiwake.queue.runner import Runner
from kittiwake.queue.schedule import RetryPolicy
from kittiwake.queue.store import Cancelled, Store
from kittiwake.targets.base import DeliveryTarget
from kittiwake.workers import FilePool

__all__ = ["POOL_SIZE", "QueueDelivery", "QueueTarget"]

T = TypeVar("T")

#: Worker threads per queue: enough for the writes of concurrent sessions
#: and the attempts' reads to wait on the disk together.
POOL_SIZE = 8
#: A new entry ID is tried again this often if its name is taken.
_ID_TRIES = 5
_REPLY_TEXT = "Cannot queue the message, try again later"
#: `delay_notice` when not set: a "delayed" DSN after 4 hours in the queue.
DELAY_NOTICE: float | None = 4 * 3600.0


class QueueDelivery:
    """One message being accepted into the queue."""

    def __init__(self, queue: QueueTarget, meta: MsgMeta, mail_from: str) -> None:
        self._queue = queue
        self._meta = meta
        self._mail_from = mail_from
        self._rcpts: dict[str, None] = {}
        self._record: Record | None = None
        self._committed = False
        #: body_and_commit: what its thread finishes is live, not prepared.
        self._one_step = False
        self._cancel = threading.Event()
        self._future: concurrent.futures.Future[Any] | None = None

    async def add_rcpt(self, rcpt: str) -> None:
        """Every recipient is accepted; the same one twice is kept once."""
        self._rcpts[rcpt] = None

    async def body(self, header: Header, body: Buffer) -> None:
        """Write the entry (not yet live) and sync it; a storage error is 451/452."""
        self._record = await self._write(header, body, commit=False)

    async def body_and_commit(self, header: Header, body: Buffer) -> None:
        """`body` and `commit` in one trip to the queue's threads (the
        message's only delivery, targets/base.py): the entry is live and
        durable when this returns."""
        self._one_step = True
        record = await self._write(header, body, commit=True)
        if record is not None:
            self._record = record
            self._committed = True
            self._queue.accepted(record)

    async def _write(self, header: Header, body: Buffer, *, commit: bool) -> Record | None:
        """Write the entry (`commit`: and make it live) under a fresh entry ID,
        another on a clash."""
        if self._record is not None:
            raise RuntimeError("body was already called for this delivery")
        if not self._rcpts:
            return None
        data = header.to_bytes()
        for _ in range(_ID_TRIES):
            entry_id = secrets.token_hex(8)
            try:
                return await self._in_thread(
                    functools.partial(self._queue.store.write_entry, commit=commit),
                    entry_id,
                    data,
                    body,
                    self._cancel,
                    self._new_record,
                )
            except FileExistsError:
                continue  # another entry has this ID: 64 random bits, but be sure
            except OSError as exc:
                raise self._error(exc, "writing the entry") from exc
        raise SMTPError(451, (4, 3, 0), _REPLY_TEXT, reason="no free entry ID")

    def _new_record(self, entry_id: str, header: FileSum, body: FileSum) -> Record:
        """The metadata of the new entry; runs on a worker thread (reads only)."""
        meta = self._meta
        rcpts = list(self._rcpts)
        originals = {r: meta.original_rcpts[r] for r in rcpts if r in meta.original_rcpts}
        wanted = {originals.get(r, r) for r in rcpts}
        return Record(
            id=entry_id,
            msg_id=meta.id,
            sender=self._mail_from,
            original_sender=meta.original_from,
            rcpts=[Rcpt(r) for r in rcpts],
            header=header,
            body=body,
            arrival=time.time(),
            smtp=meta.smtp,
            original_rcpts=originals,
            rcpt_dsn={k: v for k, v in meta.rcpt_dsn.items() if k in wanted},
            quarantine=meta.quarantine,  # final at body time
            tls_not_required=meta.tls_not_required,
            dont_trace_sender=meta.dont_trace_sender,
            client_helo=_client_helo(meta),
        )

    async def commit(self) -> None:
        """The commit point: the entry is live and durable when this returns."""
        record = self._record
        if record is None or self._committed:
            return
        try:
            await self._in_thread(self._queue.store.commit, record.id)
        except OSError as exc:
            self._record = None  # store.commit removed every file
            raise self._error(exc, "committing the entry") from exc
        self._committed = True
        self._queue.accepted(record)

    async def abort(self) -> None:
        """Remove what `body` wrote; safe at any point, and repeatable.

        `body` may have been cancelled (a shutdown past its grace) while its
        thread went on writing: the thread is waited for, and an entry it
        finished is removed too, though `body` never saw it. An entry that
        `body_and_commit`'s thread renamed into place is live instead: it
        is handed to the queue and delivered.
        """
        if self._committed:
            return
        self._cancel.set()
        future = self._future
        if future is not None and not future.done():
            # Let the thread stop at the next chunk (it then removes its own
            # files) or finish, before looking.
            waiter = asyncio.wrap_future(future)
            await asyncio.wait([waiter])
            if not waiter.cancelled():
                waiter.exception()  # seen: it was body()'s to report
        if self._record is None and _finished_well(future):
            assert future is not None
            written = future.result()
            if isinstance(written, Record):
                self._record = written
                if self._one_step:
                    # body_and_commit's thread renamed it into place after
                    # all: it is live, so it is delivered (the client's
                    # retry, if any, is a duplicate, never a loss).
                    self._committed = True
                    self._queue.accepted(written)
                    return
        record, self._record = self._record, None
        if record is not None:
            await self._queue.run(self._queue.store.discard, record.id)

    def _error(self, exc: OSError, what: str) -> SMTPError:
        error = storage_error(exc, f"queue {self._queue.store.location}: {what}", _REPLY_TEXT)
        self._queue.log.error(
            "cannot queue the message", msg_id=self._meta.id, reply=str(error), err=exc
        )
        return error

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        try:
            future = self._queue.pool().submit(fn, *args)
        except RuntimeError as exc:  # the pool is shut down: the server is stopping
            raise SMTPError(451, (4, 3, 0), _REPLY_TEXT, reason=str(exc)) from None
        self._future = future
        try:
            return await asyncio.wrap_future(future)
        except Cancelled:
            raise SMTPError(451, (4, 3, 0), _REPLY_TEXT, reason="aborted") from None


def _finished_well(future: concurrent.futures.Future[Any] | None) -> bool:
    """The thread's job is over and returned (not raised, not cancelled)."""
    return (
        future is not None
        and future.done()
        and not future.cancelled()
        and future.exception() is None
    )


@register("target.queue")
class QueueTarget(Module):
    """`target.queue NAME { ... }`, or inline `deliver_to queue LOCATION { ... }`."""

    #: The queue sends the notices NOTIFY asks for (targets/base.py `honours_dsn`).
    honours_dsn = True

    def configure(self, cfg: Directives) -> None:
        node = cfg.node
        self._node = node
        if len(self.inline_args) > 1:
            raise node.error(f"{self.module_name}: expected at most one argument: the location")
        location = cfg.optional_string("location")
        if self.inline_args and location is not None:
            raise node.error("location: given twice (argument and directive)")
        location = location or (self.inline_args[0] if self.inline_args else None)
        if location is None and not self.instance_name:
            raise node.error(f"{self.module_name}: an inline queue needs a location argument")
        self.location = os.path.abspath(self.container.state_path(location or self.instance_name))
        self.store = Store(self.location)
        target = cfg.module("target", DeliveryTarget, "target", required=True)
        assert target is not None  # required
        self.target: DeliveryTarget = target
        self.policy = RetryPolicy(
            initial=cfg.duration("initial_retry_time", 15 * 60.0, positive=True),
            scale=cfg.custom("retry_time_scale", _scale, 1.25),
            max_tries=cfg.integer("max_tries", 20, minimum=1),
            post_init_delay=cfg.duration("post_init_delay", 10.0),
        )
        self.parallelism = cfg.integer("max_parallelism", 16, minimum=1)
        delay_after = cfg.custom("delay_notice", _delay_notice, DELAY_NOTICE)
        self.log.debug_enabled = cfg.boolean("debug", default=self.log.debug_enabled, inherit=True)
        self.notifier: Notifier | None = None
        bounce = cfg.get("bounce")
        if bounce is not None:
            self.notifier = self._bounce(cfg, bounce)
        self.rules = NoticeRules(enabled=self.notifier is not None, delay_after=delay_after)
        cfg.finish()
        #: The name operators choose this queue by (`kittiwake queue --queue`).
        self.name = self.instance_name or self.location
        self._threads = FilePool(POOL_SIZE, "kittiwake-queue")
        self._lock_fd = -1
        self.runner: Runner | None = None
        # A reload (docs/reload.md, "The queue"): the queue this one took
        # over, or handed over to, and the entries in transit between them.
        self._predecessor: QueueTarget | None = None
        self._successor: QueueTarget | None = None
        self._inherited: list[Record] = []
        self._pending: list[Record] = []
        self._planned: dict[str, float] = {}

    def _bounce(self, cfg: Directives, node: Node) -> Notifier:
        """The `bounce { PIPELINE }` block and what notices need besides it."""
        hostname = cfg.string("hostname", inherit=True, default="")
        domain = cfg.string("autogenerated_msg_domain", inherit=True, default="")
        if not hostname:
            raise node.error("bounce: a hostname is needed (directive or global)")
        if not domain:
            raise node.error("bounce: autogenerated_msg_domain is needed (directive or global)")
        if not node.block:
            raise node.error("bounce: missing or empty pipeline block")
        from kittiwake.pipeline.pipeline import Pipeline  # the pipeline imports targets

        pipeline = Pipeline(
            node.block, self.container, block=node, hostname=hostname, logger=self.log
        )
        return Notifier(pipeline, self.store, self.run, hostname, domain, self.log)

    # -- threads -------------------------------------------------------------------

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        return self._threads.executor()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking file-system work on this queue's threads."""
        return await self._threads.run(fn, *args)

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.container.role is Role.WORKER:
            await self._start_intake()
            return
        if self._predecessor is not None:  # a reload: lock and entries taken over
            records = self._merge(self._inherited, self._pending)
            self._inherited, self._pending = [], []
            self._run_entries(records, self._planned)
            self._planned = {}
            self.log.info(
                "queue taken over from the previous configuration",
                location=self.location,
                entries=len(records),
            )
            return
        try:
            await self.run(self.store.prepare)
            self._lock_fd = await self.run(self.store.lock)
        except BlockingIOError:
            raise self._node.error(
                f"{self.module_name}: {self.location} is used by another running kittiwake"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise self._node.error(
                f"{self.module_name}: cannot use location {self.location}: {reason}"
            ) from None
        scan = await self.run(self.store.scan)
        for entry_id, reason in scan.quarantined:
            self.log.error("entry quarantined at start", queue_id=entry_id, reason=reason)
        if scan.cleaned:
            self.log.info("removed unfinished files", count=scan.cleaned)
        self._run_entries(scan.records)
        self.log.info("queue started", location=self.location, entries=len(scan.records))

    async def _start_intake(self) -> None:
        """A worker's queue: entries are written here, delivered by the supervisor."""
        try:
            await self.run(self.store.prepare)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise self._node.error(
                f"{self.module_name}: cannot use location {self.location}: {reason}"
            ) from None

    def _run_entries(self, records: list[Record], planned: dict[str, float] | None = None) -> None:
        """Start delivering `records` and answer the queue's control commands."""
        self.runner = Runner(
            target=self.target,
            store=self.store,
            run=self.run,
            policy=self.policy,
            rules=self.rules,
            notifier=self.notifier,
            parallelism=self.parallelism,
            log=self.log,
        )
        self.runner.start(records, time.time(), planned)
        metrics.current().add_queue(self.name, self.location, self._stats)
        commands.register(self.container.control, self.name, self)

    def _stats(self) -> metrics.QueueStats:
        """Length and oldest arrival, computed when the metrics are scraped."""
        runner = self.runner
        if runner is None or not runner.entries:
            return metrics.QueueStats(0, None)
        entries = runner.entries.values()
        return metrics.QueueStats(len(entries), min(e.record.arrival for e in entries))

    async def stop(self) -> None:
        metrics.current().remove_queue(self.name, self._stats)
        commands.unregister(self.container.control, self.name)
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.stop()
        await self._threads.shutdown()
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)

    # -- reload: one queue directory, one runner (docs/reload.md, "The queue") ----------

    async def take_over(self, previous: list[Module]) -> None:
        """Take the lock and entries of the running queue at the same location.

        Only one runner may deliver a directory's entries, or an entry
        would be sent twice: the running queue's runner stops first (its
        attempts in progress finish), then this queue starts one with the
        same entries, read again from disk, and without scanning the
        directory: sessions of the previous configuration may still be
        writing entries there, and what they commit is passed on
        (`accepted`).
        """
        for module in previous:
            if (
                isinstance(module, QueueTarget)
                and module.location == self.location
                and module.runner is not None
            ):
                self._inherited = await module._hand_over(self)
                return

    async def give_back(self) -> None:
        """The reload failed after `take_over`: the previous queue goes on.

        Until the previous queue runs again, what its sessions commit still
        comes here (`_pending`) and goes back with the rest.
        """
        before = self._predecessor
        if before is None or before._successor is not self:
            return
        runner, self.runner = self.runner, None
        if runner is not None:
            commands.unregister(self.container.control, self.name)
            await runner.stop()
        planned = {i: e.next_at for i, e in runner.entries.items()} if runner else self._planned
        records = await self._reread(runner, self._inherited)
        # No await from here on: the links change and the runner starts at once.
        before._successor = self._predecessor = None
        before._lock_fd, self._lock_fd = self._lock_fd, -1
        before._run_entries(self._merge(records, self._pending), planned)
        self._inherited, self._pending, self._planned = [], [], {}
        before.log.info("queue given back: the reload did not complete", location=self.location)

    async def _hand_over(self, successor: QueueTarget) -> list[Record]:
        runner, self.runner = self.runner, None
        assert runner is not None
        # Linked first: what sessions commit while the runner stops is the
        # successor's (`accepted`).
        self._successor = successor
        successor._predecessor = self
        commands.unregister(self.container.control, self.name)
        await runner.stop()
        successor._planned = {i: e.next_at for i, e in runner.entries.items() if not e.running}
        successor._lock_fd, self._lock_fd = self._lock_fd, -1
        return await self._reread(runner, [])

    async def _reread(self, runner: Runner | None, extra: list[Record]) -> list[Record]:
        """The entries of a stopped runner and `extra`, as they are on disk now."""
        ids = [r.id for r in extra]
        if runner is not None:
            ids += [
                entry_id
                for entry_id, e in runner.entries.items()
                if not e.deleted and not e.gone and entry_id not in ids
            ]
        return await self.run(self._load_existing, ids)

    def _load_existing(self, ids: list[str]) -> list[Record]:
        records = []
        for entry_id in ids:
            try:
                records.append(self.store.load(entry_id))
            except FileNotFoundError:
                continue  # delivered and removed meanwhile
            except (CorruptEntry, OSError) as exc:
                self.log.error("entry quarantined at hand-over", queue_id=entry_id, reason=exc)
                self.store.quarantine(entry_id)
        return records

    @staticmethod
    def _merge(first: list[Record], then: list[Record]) -> list[Record]:
        seen: dict[str, Record] = {}
        for record in (*first, *then):
            seen.setdefault(record.id, record)
        return list(seen.values())

    # -- the target ------------------------------------------------------------------

    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> QueueDelivery:
        return QueueDelivery(self, meta, mail_from)

    def accepted(self, record: Record) -> None:
        """A committed entry: try it at once (or at the next start if stopping).

        After a reload handed this queue over, entries that sessions of the
        previous configuration commit go to its successor.
        """
        if self._successor is not None:
            self._successor.accepted(record)
            return
        uplink = self.container.shared.uplink
        if self.container.role is Role.WORKER and uplink is not None:
            uplink.queued(self.location, record.id)  # the supervisor delivers it
        elif self.runner is not None:
            self.runner.add(record)
        elif self._predecessor is not None:
            self._pending.append(record)  # taken over, not started yet
        self.log.info("queued", queue_id=record.id, msg_id=record.msg_id, rcpts=len(record.rcpts))

    # -- entries committed by worker processes (docs/workers.md) -------------------

    async def pick_up(self, ids: list[str]) -> int:
        """Deliver entries a worker process committed; how many were new.

        An entry this queue knows (waiting, being tried, or finished lately)
        is left alone, so an entry both reported and found by `sweep` is
        delivered once. One that cannot be read is quarantined as at start.
        """
        if self._successor is not None:
            return await self._successor.pick_up(ids)
        runner = self.runner
        if runner is None:
            return 0  # handed over or stopping: found on disk at the next start
        fresh = [entry_id for entry_id in ids if not runner.knows(entry_id)]
        if not fresh:
            return 0
        records, damaged = await self.run(self._load_fresh, fresh)
        if self.runner is not runner:  # handed over meanwhile: the successor's now
            return await self.pick_up(ids)
        added = 0
        for record in records:
            if not runner.knows(record.id):
                runner.add(record)
                added += 1
        for entry_id, reason in damaged:
            if not runner.knows(entry_id):  # not removed by our own delivery meanwhile
                self.log.error("entry quarantined when picked up", queue_id=entry_id, reason=reason)
                await self.run(self.store.quarantine, entry_id)
        return added

    def _load_fresh(self, ids: list[str]) -> tuple[list[Record], list[tuple[str, str]]]:
        records, damaged = [], []
        for entry_id in ids:
            try:
                records.append(self.store.load(entry_id))
            except FileNotFoundError:
                continue  # its metadata is gone: delivered and removed meanwhile
            except (CorruptEntry, OSError) as exc:
                damaged.append((entry_id, str(exc)))
        return records, damaged

    async def sweep(self) -> int:
        """Pick up the committed entries on disk that nobody reported; how many.

        For a worker killed between its commit and its report, and as a
        safety net now and then: reads the directory, writes nothing.
        """
        if self.runner is None or self._successor is not None:
            return 0
        try:
            ids = await self.run(self.store.committed)
        except OSError as exc:
            self.log.error("cannot read the queue directory", err=exc, location=self.location)
            return 0
        found = await self.pick_up(ids)
        if found:
            self.log.info("picked up entries nobody reported", entries=found)
        return found


def _scale(node: Node) -> float:
    if len(node.args) != 1:
        raise ValueError("expected one number")
    try:
        value = float(node.args[0])
    except ValueError:
        raise ValueError(f"not a number: {node.args[0]!r}") from None
    if not 0 < value < 1000:
        raise ValueError("must be greater than 0 and below 1000")
    return value


def _delay_notice(node: Node) -> float | None:
    if node.args == ["off"]:
        return None
    value = parse_duration(node.args)
    if value <= 0:
        raise ValueError("must be greater than zero, or off")
    return value


def _client_helo(meta: MsgMeta) -> str | None:
    """The EHLO name a DSN may name as Received-From-MTA (RFC 3464 §2.2.4)."""
    if meta.conn is None or meta.dont_trace_sender or not meta.conn.helo:
        return None
    return meta.conn.helo
