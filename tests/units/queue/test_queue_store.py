"""The queue's files: the write recipe, what a scan cleans and what it quarantines."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from kittiwake.message.buffer import Buffer
from kittiwake.queue import store as store_module
from kittiwake.queue.record import CorruptEntry, FileSum, Rcpt, Record
from kittiwake.queue.store import Cancelled, Store

ID = "0123456789abcdef"


def _buffer(data: bytes, where: Path) -> Buffer:
    where.parent.mkdir(exist_ok=True)
    where.write_bytes(data)
    return Buffer.from_file(str(where), len(data))


def enqueue(store: Store, entry_id: str = ID) -> Record:
    store.prepare()
    source = Path(store.location).parent / "source" / "body"
    header, body = store.write_message(
        entry_id, b"Subject: x\r\n\r\n", _buffer(b"body\r\n" * 1000, source), threading.Event()
    )
    record = Record(entry_id, "m1", "a@b.example", "a@b.example", [Rcpt("c@d.example")],
                    header, body, arrival=1.0)  # fmt: skip
    store.prepare_meta(record)
    return record


def test_nothing_is_an_entry_before_the_commit(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q"))
    enqueue(store)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        f"{ID}.body",
        f"{ID}.header",
        f"{ID}.meta.tmp",
    ]
    scan = store.scan()
    assert scan.records == [] and scan.cleaned == 2
    assert list((tmp_path / "q").iterdir()) == []


def test_a_committed_entry_is_found_whole(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q"))
    record = enqueue(store)
    store.commit(ID)
    (tmp_path / "q" / "other.meta.tmp").write_bytes(b"half a rewrite")
    scan = store.scan()
    assert scan.records == [record]
    assert not (tmp_path / "q" / "other.meta.tmp").exists()
    assert store.read_header(record) == b"Subject: x\r\n\r\n"
    store.verify_body(record)


def test_read_only_scan_changes_nothing(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q"))
    enqueue(store)
    before = sorted(p.name for p in (tmp_path / "q").iterdir())
    store.scan(read_only=True)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == before


def test_a_damaged_entry_is_moved_to_quarantine(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q"))
    enqueue(store)
    store.commit(ID)
    (tmp_path / "q" / f"{ID}.header").write_bytes(b"Subject: y\r\n\r\n")  # same size, altered
    scan = store.scan()
    assert scan.records == []
    assert scan.quarantined == [(ID, "header does not match its checksum")]
    assert sorted(p.name for p in (tmp_path / "q" / "quarantine").iterdir()) == [
        f"{ID}.body",
        f"{ID}.header",
        f"{ID}.meta",
    ]


def test_a_cancelled_write_leaves_nothing(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q"))
    store.prepare()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        store.write_message(ID, b"Subject: x\r\n\r\n", _buffer(b"x", tmp_path.parent / "b"), cancel)
    assert list((tmp_path / "q").iterdir()) == []


def test_remove_takes_the_metadata_first(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q"))
    enqueue(store)
    store.commit(ID)
    assert store.remove(ID)
    assert list((tmp_path / "q").iterdir()) == []
    assert not store.remove(ID)


def test_the_lock_is_exclusive(tmp_path: Path) -> None:
    import os

    store = Store(str(tmp_path / "q"))
    store.prepare()
    fd = store.lock()
    try:
        with pytest.raises(BlockingIOError):
            store.lock()
    finally:
        os.close(fd)
    os.close(store.lock())


def test_load_refuses_a_short_body(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q"))
    enqueue(store)
    store.commit(ID)
    body = tmp_path / "q" / f"{ID}.body"
    body.write_bytes(body.read_bytes()[:-1])
    with pytest.raises(CorruptEntry, match="body is 5999 bytes, 6000 recorded"):
        store.load(ID)


def _record(entry_id: str, header: FileSum, body: FileSum) -> Record:
    return Record(entry_id, "m1", "a@b.example", "a@b.example", [Rcpt("c@d.example")],
                  header, body, arrival=1.0)  # fmt: skip


def test_write_entry_with_commit_makes_a_whole_live_entry(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q"))
    store.prepare()
    body = _buffer(b"body\r\n" * 1000, tmp_path / "source" / "body")
    record = store.write_entry(
        ID, b"Subject: x\r\n\r\n", body, threading.Event(), _record, commit=True
    )
    assert sorted(p.name for p in (tmp_path / "q").iterdir() if p.name != "lock") == [
        f"{ID}.body",
        f"{ID}.header",
        f"{ID}.meta",
    ]
    assert store.scan().records == [record]


def test_write_entry_with_commit_removes_everything_when_the_last_fsync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename happened, its directory fsync did not: the entry may not be
    on disk, so it is taken back whole and the caller gets the error."""
    store = Store(str(tmp_path / "q"))
    store.prepare()
    real = store_module.sync_dir_shared
    renamed: list[bool] = []

    def failing(path: str) -> None:
        if (tmp_path / "q" / f"{ID}.meta").exists():  # after the commit rename
            renamed.append(True)
            raise OSError(errno.EIO, "I/O error")
        real(path)

    monkeypatch.setattr(store_module, "sync_dir_shared", failing)
    body = _buffer(b"body\r\n", tmp_path / "source" / "body")
    with pytest.raises(OSError, match="I/O error"):
        store.write_entry(ID, b"Subject: x\r\n\r\n", body, threading.Event(), _record, commit=True)
    assert renamed == [True]
    assert [p.name for p in (tmp_path / "q").iterdir() if p.name != "lock"] == []


def test_write_entry_with_commit_stops_before_the_rename_when_cancelled(tmp_path: Path) -> None:
    """An abort that comes after the files are written but before the commit
    rename: nothing becomes live, every file goes."""
    store = Store(str(tmp_path / "q"))
    store.prepare()
    cancel = threading.Event()

    def record_then_abort(entry_id: str, header: FileSum, body: FileSum) -> Record:
        cancel.set()  # the session is aborted while the metadata is made
        return _record(entry_id, header, body)

    body = _buffer(b"body\r\n", tmp_path / "source" / "body")
    with pytest.raises(Cancelled):
        store.write_entry(ID, b"Subject: x\r\n\r\n", body, cancel, record_then_abort, commit=True)
    assert [p.name for p in (tmp_path / "q").iterdir() if p.name != "lock"] == []
