"""`target.queue` as a message's only delivery: `body_and_commit` (docs/flow.md).

The queue is built from configuration text and started, with a Maildir as
its target, so an entry it accepts is really delivered; a throw-away
endpoint (`kw_queue_probe`) references it. The cancellations are forced
with events the worker thread waits on, never with sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.queue import store as store_module
from kittiwake.queue.target import QueueTarget
from kittiwake.targets.base import is_one_step
from probe import registered

PROBE = "kw_queue_probe"
WAIT = 10.0


@pytest.fixture(autouse=True, scope="module")
def _probe_registered() -> Iterator[None]:
    with registered(PROBE):
        yield


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[QueueTarget]:
    text = f"""state_dir {tmp_path / "state"}
hostname mx.example.org
storage.maildir mb {{
    path {tmp_path / "mail"}
    auto_create yes
}}
target.queue q {{
    target &mb
    location {tmp_path / "q"}
}}
{PROBE} {{
    deliver_to &q
}}
"""
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    container.build()
    container.prepare_dirs()
    await container.start()
    (probe,) = container.endpoints
    (target,) = probe.targets
    assert isinstance(target, QueueTarget)
    try:
        yield target
    finally:
        await container.stop()


def delivered(tmp_path: Path) -> list[Path]:
    new = tmp_path / "mail" / "example.org" / "user" / "new"
    return sorted(new.iterdir()) if new.exists() else []


async def wait_delivered(tmp_path: Path, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while len(delivered(tmp_path)) < count:
        assert time.monotonic() < deadline, "the queue did not deliver"
        await asyncio.sleep(0.02)


def queue_files(tmp_path: Path) -> list[str]:
    """The entries' files (the queue's `lock` file is not one)."""
    return sorted(p.name for p in (tmp_path / "q").iterdir() if p.is_file() and p.name != "lock")


async def ram(data: bytes) -> Buffer:
    buf = Buffer.ram()
    await buf.write(data)
    await buf.finish()
    return buf


HEAD = Header.parse(b"From: a@example.net\r\nSubject: hi\r\n")


def count_trips(delivery: Any, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The functions `delivery` sends to its threads from now on."""
    trips: list[object] = []
    real = delivery._in_thread

    async def counting(fn: Any, *args: Any) -> Any:
        trips.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(delivery, "_in_thread", counting)
    return trips


async def cancel_then_abort(
    queue: QueueTarget, stalled: threading.Event, release: threading.Event
) -> Any:
    """Start body_and_commit, cancel it once its thread is `stalled`, then
    abort; the abort must wait for the thread, which `release` lets go on."""
    delivery = await queue.start_delivery(MsgMeta(id="m1"), "a@example.net")
    await delivery.add_rcpt("user@example.org")
    task = asyncio.create_task(delivery.body_and_commit(HEAD, await ram(b"body\r\n")))
    assert await asyncio.to_thread(stalled.wait, WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    aborting = asyncio.create_task(delivery.abort())
    await asyncio.sleep(0.05)
    assert not aborting.done()  # it waits for the thread
    release.set()
    await aborting
    return delivery


async def test_one_step_makes_a_live_entry_that_is_delivered(
    queue: QueueTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery = await queue.start_delivery(MsgMeta(id="m1"), "a@example.net")
    assert is_one_step(delivery)
    await delivery.add_rcpt("user@example.org")
    trips = count_trips(delivery, monkeypatch)
    await delivery.body_and_commit(HEAD, await ram(b"body\r\n"))
    assert len(trips) == 1  # the point of it: one trip to the threads, not two
    await wait_delivered(tmp_path, 1)
    await delivery.abort()  # after the commit: nothing to undo
    assert b"body" in delivered(tmp_path)[0].read_bytes()


async def test_cancelled_while_writing_leaves_nothing(
    queue: QueueTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled before the rename: the abort stops the thread, every file goes."""
    in_write, release = threading.Event(), threading.Event()
    real = store_module.Store.write_message

    def stalling(self: store_module.Store, *args: Any) -> Any:
        in_write.set()
        release.wait(WAIT)
        return real(self, *args)

    monkeypatch.setattr(store_module.Store, "write_message", stalling)
    await cancel_then_abort(queue, in_write, release)
    assert queue_files(tmp_path) == []
    assert delivered(tmp_path) == []


async def test_cancelled_after_the_rename_is_delivered_not_dropped(
    queue: QueueTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread had renamed the entry into place (it sits in the directory
    fsync) when the session was cancelled: the entry is live, so the abort
    hands it to the queue, which delivers it."""
    in_sync, release = threading.Event(), threading.Event()
    real = store_module.sync_dir_shared

    def stalling(path: str) -> None:
        if any(name.endswith(".meta") for name in queue_files(tmp_path)):
            in_sync.set()
            release.wait(WAIT)
        real(path)

    monkeypatch.setattr(store_module, "sync_dir_shared", stalling)
    delivery = await cancel_then_abort(queue, in_sync, release)
    await wait_delivered(tmp_path, 1)
    await delivery.abort()  # repeatable
    assert len(delivered(tmp_path)) == 1
