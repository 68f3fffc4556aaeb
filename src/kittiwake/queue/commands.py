"""The queue's operator commands (docs/queue-operations.md).

A running queue answers `queue.list`, `queue.show`, `queue.flush`,
`queue.delete` and `queue.bounce` on the control socket
(kittiwake/control.py), under its name (the block name, or the location
of an inline queue). Each acts through the queue's `Runner`, so it sees
the entries as the delivery loop does and cannot race it.

Without a running server, `kittiwake queue` reads the files itself:
`offline_list` and `offline_show` change nothing, and `offline_delete`
takes the queue's lock first, so it fails rather than touch a queue some
server owns.

Answers are plain JSON values; `cli/queue.py` prints them for people.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from kittiwake.control import CommandError, Commands
from kittiwake.queue.record import ID_PATTERN, Record
from kittiwake.queue.runner import Busy, Entry, Runner, StorageTrouble
from kittiwake.queue.store import Store

if TYPE_CHECKING:
    from kittiwake.queue.target import QueueTarget

__all__ = [
    "COMMANDS",
    "describe",
    "offline_delete",
    "offline_list",
    "offline_show",
    "register",
    "unregister",
]

COMMANDS = ("list", "show", "flush", "delete", "bounce")


def register(control: Commands, name: str, queue: QueueTarget) -> None:
    handlers = _Handlers(queue)
    for command in COMMANDS:
        control.add(f"queue.{command}", name, getattr(handlers, command))


def unregister(control: Commands, name: str) -> None:
    for command in COMMANDS:
        control.remove(f"queue.{command}", name)


def describe(record: Record, *, state: str, next_at: float | None, now: float) -> dict[str, Any]:
    """One entry as `queue list` shows it."""
    errors = [r.last_error for r in record.rcpts if r.last_error is not None]
    return {
        "id": record.id,
        "msg_id": record.msg_id,
        "arrival": record.arrival,
        "age": max(0.0, now - record.arrival),
        "size": record.size,
        "sender": record.sender,
        "rcpts": [
            {
                "addr": r.addr,
                "tries": r.tries,
                "last_error": str(r.last_error) if r.last_error else None,
            }
            for r in record.rcpts
        ],
        "notices_owed": len(record.notices),
        "state": state,
        "next_attempt": next_at,
        "last_attempt": record.last_attempt,
        "last_error": str(errors[-1]) if errors else None,
    }


def _details(record: Record, header: bytes, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        **summary,
        "metadata": json.loads(record.to_bytes()),
        "header": header.decode("utf-8", "replace"),
    }


def _entry_id(args: dict[str, Any]) -> str:
    entry_id = args.get("id")
    if not isinstance(entry_id, str) or not ID_PATTERN.match(entry_id):
        raise CommandError(f"not an entry ID: {entry_id!r} (16 hex digits)")
    return entry_id


class _Handlers:
    """The control commands of one running queue."""

    def __init__(self, queue: QueueTarget) -> None:
        self.queue = queue

    def _runner(self) -> Runner:
        runner = self.queue.runner
        if runner is None:
            raise CommandError("the queue is stopping")
        return runner

    def _entry(self, args: dict[str, Any]) -> Entry:
        entry_id = _entry_id(args)
        entry = self._runner().get(entry_id)
        if entry is None:
            raise CommandError(f"no entry {entry_id} in queue {self.queue.name}")
        return entry

    @staticmethod
    def _state(entry: Entry) -> str:
        if entry.running:
            return "in flight"
        return "ready" if entry.waiting else "waiting"

    def _describe(self, entry: Entry, now: float) -> dict[str, Any]:
        next_at = None if entry.running or entry.waiting else entry.next_at
        return describe(entry.record, state=self._state(entry), next_at=next_at, now=now)

    async def list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.time()
        entries = sorted(self._runner().entries.values(), key=lambda e: e.record.arrival)
        return [self._describe(e, now) for e in entries]

    async def show(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(args)
        header = await self.queue.run(_read_header, self.queue.store, entry.record.id)
        return _details(entry.record, header, self._describe(entry, time.time()))

    async def flush(self, args: dict[str, Any]) -> dict[str, Any]:
        runner = self._runner()
        if args.get("id") is None:
            return {"flushed": runner.flush()}
        entry = self._entry(args)
        flushed = runner.flush(entry.record.id)
        return {"flushed": flushed, "in_flight": entry.running}

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(args)
        try:
            in_flight = await self._runner().delete(entry.record.id)
        except OSError as exc:
            raise CommandError(f"cannot remove the files: {exc}") from None
        return {"deleted": entry.record.id, "in_flight": in_flight}

    async def bounce(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(args)
        try:
            count = await self._runner().bounce(entry.record.id)
        except Busy:
            raise CommandError(
                f"{entry.record.id} is being delivered right now; try again when the attempt ends"
            ) from None
        except StorageTrouble as exc:
            raise CommandError(f"cannot update the entry: {exc}") from None
        owed = len(entry.record.notices)
        return {"bounced": entry.record.id, "rcpts": count, "notices_owed": owed}


def _read_header(store: Store, entry_id: str) -> bytes:
    try:
        with open(store.path(entry_id, "header"), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


# --- without a server -------------------------------------------------------------------


def offline_list(store: Store) -> list[dict[str, Any]]:
    """The entries on disk, read without changing anything."""
    now = time.time()
    scan = store.scan(read_only=True)
    found = [describe(r, state="stored", next_at=None, now=now) for r in scan.records]
    found += [_unreadable(entry_id, reason) for entry_id, reason in scan.quarantined]
    return sorted(found, key=lambda d: d.get("arrival") or 0.0)


def _unreadable(entry_id: str, reason: str) -> dict[str, Any]:
    return {"id": entry_id, "state": "unreadable", "last_error": reason, "rcpts": []}


def offline_show(store: Store, entry_id: str) -> dict[str, Any]:
    _entry_id({"id": entry_id})
    if not store.exists(entry_id):
        raise CommandError(f"no entry {entry_id} in {store.location}")
    record = store.load(entry_id)
    summary = describe(record, state="stored", next_at=None, now=time.time())
    return _details(record, _read_header(store, entry_id), summary)


def offline_delete(store: Store, entry_id: str) -> dict[str, Any]:
    """Remove an entry while no server owns the queue (its lock is taken first)."""
    _entry_id({"id": entry_id})
    try:
        fd = store.lock()
    except BlockingIOError:
        raise CommandError(
            f"{store.location} is owned by a running server whose control socket does not "
            "answer; not touching it"
        ) from None
    try:
        if not store.remove(entry_id):
            raise CommandError(f"no entry {entry_id} in {store.location}")
    finally:
        os.close(fd)
    return {"deleted": entry_id, "in_flight": False}
