"""The queue's files: writing an entry durably, rewriting, removing, loading.

Everything here blocks and runs on the queue's worker threads (or in the
`kittiwake queue` command when no server runs); nothing here touches the
event loop.

Layout of `location` (docs/target-queue.md, "On disk"), for an entry `ID`
(16 hex digits):

* `ID.header` - the header section as it will be sent, CR LF, with the
  empty line that ends it;
* `ID.body` - the body bytes;
* `ID.meta` - the metadata (`record.Record`) as JSON, with the size and
  SHA-256 of the other two files;
* `NAME.tmp` - a file being written; never part of an entry;
* `quarantine/` - entries put aside because they could not be read or
  their delivery crashed the code;
* `lock` - held (`flock`) by the server that owns the queue.

Strategy (durability; the commit point is the rename of `ID.meta`):

1. `write_message` writes `ID.header.tmp` and `ID.body.tmp` (`O_EXCL`,
   0600), fsyncs each, renames them to `ID.header` and `ID.body`;
2. `prepare_meta` writes and fsyncs `ID.meta.tmp`, then fsyncs the
   directory, so the header and body names are durable before anything
   can point at them (`write_entry` runs steps 1 and 2 together);
3. `commit` renames `ID.meta.tmp` to `ID.meta` and fsyncs the directory.
   Only after that does the client get its 250.

A crash before step 3 leaves files that are not an entry: `*.tmp` files
and a header or body without metadata, all removed by `scan` at the next
start. A crash after it leaves a complete entry. Later changes to the
metadata are atomic replacements (`durable.replace_file`): the old or the
new version survives, never a torn one. Removal goes the other way: the
metadata first (the entry stops existing), then the header and body.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kittiwake.durable import FILE_MODE, NEW_FILE, replace_file, sync_dir_shared, write_all
from kittiwake.message.buffer import Buffer
from kittiwake.queue.record import ID_PATTERN, CorruptEntry, FileSum, Record

__all__ = ["LOCK_FILE", "QUARANTINE_DIR", "Cancelled", "Scan", "Store"]

HEADER = "header"
BODY = "body"
META = "meta"
TMP = ".tmp"
QUARANTINE_DIR = "quarantine"
LOCK_FILE = "lock"
_CHUNK = 256 * 1024
_DIR_MODE = 0o700


class Cancelled(Exception):
    """The enqueue was aborted while its files were being written."""


@dataclass
class Scan:
    """What `Store.scan` found in the queue directory."""

    records: list[Record] = field(default_factory=list)
    #: (id, reason) of each entry put aside (or, read-only, that would be).
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    #: Temporary files and half-written entries removed.
    cleaned: int = 0


@dataclass(frozen=True)
class Store:
    """The files of one queue, under `location`."""

    location: str

    def path(self, entry_id: str, kind: str) -> str:
        return os.path.join(self.location, f"{entry_id}.{kind}")

    @property
    def quarantine_dir(self) -> str:
        return os.path.join(self.location, QUARANTINE_DIR)

    # -- start ------------------------------------------------------------------

    def prepare(self) -> None:
        """Create `location` (0700) if needed and prove files can be made in it."""
        os.makedirs(self.location, mode=_DIR_MODE, exist_ok=True)
        if not os.path.isdir(self.location):
            raise NotADirectoryError(20, "not a directory", self.location)
        probe = os.path.join(self.location, f"probe-{os.getpid()}{TMP}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
        os.close(os.open(probe, NEW_FILE, FILE_MODE))
        os.unlink(probe)

    def lock(self) -> int:
        """Take the queue's lock file; raise `BlockingIOError` if a process holds it.

        The running server holds it for its whole life, so two servers never
        share a queue and `kittiwake queue delete` without a server knows
        it is alone. Returns the descriptor; closing it releases the lock.
        """
        fd = os.open(os.path.join(self.location, LOCK_FILE), os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- enqueue ------------------------------------------------------------------

    def write_message(
        self, entry_id: str, header: bytes, body: Buffer, cancel: threading.Event
    ) -> tuple[FileSum, FileSum]:
        """Steps 1: the header and body files, synced, under their final names.

        On any failure (or `cancel`) every file of the entry is removed
        before the error is raised.
        """
        try:
            header_sum = self._write_file(entry_id, HEADER, [header], cancel)
            with body.open() as reader:
                chunks = iter(lambda: reader.read(_CHUNK), b"")
                body_sum = self._write_file(entry_id, BODY, chunks, cancel)
        except BaseException:
            self.discard(entry_id)
            raise
        return header_sum, body_sum

    def _write_file(
        self, entry_id: str, kind: str, chunks: Iterable[bytes], cancel: threading.Event
    ) -> FileSum:
        final = self.path(entry_id, kind)
        tmp = final + TMP
        digest = hashlib.sha256()
        size = 0
        fd = os.open(tmp, NEW_FILE, FILE_MODE)
        try:
            for chunk in chunks:
                if cancel.is_set():
                    raise Cancelled
                write_all(fd, chunk)
                digest.update(chunk)
                size += len(chunk)
            os.fsync(fd)  # never retried: after EIO the pages may be gone
        finally:
            os.close(fd)
        os.rename(tmp, final)
        return FileSum(size, digest.hexdigest())

    def write_entry(
        self,
        entry_id: str,
        header: bytes,
        body: Buffer,
        cancel: threading.Event,
        make_record: Callable[[str, FileSum, FileSum], Record],
        *,
        commit: bool = False,
    ) -> Record:
        """Steps 1 and 2 in one call: one trip to a worker thread per message, not two.

        `make_record(entry_id, header_sum, body_sum)` builds the metadata
        once the sums are known. Every file is removed on any failure.
        With `commit`, step 3 too (`QueueDelivery.body_and_commit`): the
        entry is live when this returns, unless `cancel` was set before
        the rename (every file removed, then `Cancelled`).
        """
        sums = self.write_message(entry_id, header, body, cancel)
        record = make_record(entry_id, *sums)
        self.prepare_meta(record)
        if commit:
            if cancel.is_set():
                self.discard(entry_id)
                raise Cancelled
            self.commit(entry_id)
        return record

    def prepare_meta(self, record: Record) -> None:
        """Step 2: `ID.meta.tmp` written and synced, the directory synced."""
        tmp = self.path(record.id, META) + TMP
        try:
            fd = os.open(tmp, NEW_FILE, FILE_MODE)
            try:
                write_all(fd, record.to_bytes())
                os.fsync(fd)
            finally:
                os.close(fd)
            sync_dir_shared(self.location)
        except BaseException:
            self.discard(record.id)
            raise

    def commit(self, entry_id: str) -> None:
        """Step 3, the commit point: the metadata gets its final name, durably."""
        meta = self.path(entry_id, META)
        try:
            os.rename(meta + TMP, meta)
            sync_dir_shared(self.location)
        except BaseException:
            self.discard(entry_id)
            raise

    def discard(self, entry_id: str) -> None:
        """Remove every file of an entry, temporary ones included; never raises."""
        for kind in (META, HEADER, BODY):
            for name in (self.path(entry_id, kind), self.path(entry_id, kind) + TMP):
                with contextlib.suppress(OSError):
                    os.unlink(name)

    # -- a live entry ---------------------------------------------------------------

    def save(self, record: Record) -> None:
        """Replace the entry's metadata atomically and durably."""
        meta = self.path(record.id, META)
        replace_file(meta, record.to_bytes(), tmp=meta + TMP)

    def remove(self, entry_id: str) -> bool:
        """Remove an entry: metadata first, so it stops existing at once.

        False if there was no metadata (already removed). The header and
        body go whatever happened; the directory is synced so a removed
        entry does not come back after a crash and get sent again.
        """
        try:
            os.unlink(self.path(entry_id, META))
            existed = True
        except FileNotFoundError:
            existed = False
        for kind in (HEADER, BODY):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(entry_id, kind))
        sync_dir_shared(self.location)
        return existed

    def exists(self, entry_id: str) -> bool:
        return os.path.exists(self.path(entry_id, META))

    def read_header(self, record: Record) -> bytes:
        """The header file, checked against its recorded size and checksum."""
        with open(self.path(record.id, HEADER), "rb") as f:
            data = f.read(record.header.size + 1)
        _check(data, record.header, "header")
        return data

    def read_for_attempt(self, record: Record, verify_body: bool) -> bytes:
        """The checked header, and the body checked too if asked: one thread trip."""
        data = self.read_header(record)
        if verify_body:
            self.verify_body(record)
        return data

    def verify_body(self, record: Record) -> None:
        """Read the body through once and compare it with its record."""
        digest = hashlib.sha256()
        size = 0
        with open(self.path(record.id, BODY), "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        if size != record.body.size or digest.hexdigest() != record.body.sha256:
            raise CorruptEntry(f"body is {size} bytes or altered, {record.body.size} recorded")

    def body_size(self, record: Record) -> int:
        return os.stat(self.path(record.id, BODY)).st_size

    def quarantine(self, entry_id: str) -> list[str]:
        """Move every file of an entry into `quarantine/`; the names moved.

        The metadata goes first, so the entry is gone from the queue even
        if a later move fails.
        """
        os.makedirs(self.quarantine_dir, mode=_DIR_MODE, exist_ok=True)
        moved = []
        for kind in (META, HEADER, BODY):
            name = f"{entry_id}.{kind}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path(entry_id, kind), os.path.join(self.quarantine_dir, name))
                moved.append(name)
        sync_dir_shared(self.quarantine_dir)
        sync_dir_shared(self.location)
        return moved

    # -- loading ----------------------------------------------------------------------

    def scan(self, *, read_only: bool = False) -> Scan:
        """Every entry in the directory, checked (docs/target-queue.md, "At start").

        Temporary files and headers or bodies without metadata are what a
        crash before a commit leaves: they are removed. An entry whose
        metadata cannot be read, or whose header or body is missing, of
        the wrong size or (header) altered, is quarantined. `read_only`
        (the `kittiwake queue` command without a server) changes nothing
        and only reports.
        """
        scan = Scan()
        kinds: dict[str, set[str]] = {}
        for name in sorted(os.listdir(self.location)):
            if name.endswith(TMP):
                if not read_only and _unlink(os.path.join(self.location, name)):
                    scan.cleaned += 1
                continue
            entry_id, dot, kind = name.partition(".")
            if dot and ID_PATTERN.match(entry_id) and kind in (HEADER, BODY, META):
                kinds.setdefault(entry_id, set()).add(kind)
        for entry_id, present in kinds.items():
            if META not in present:
                if not read_only:
                    self.discard(entry_id)
                    scan.cleaned += 1
                continue
            try:
                scan.records.append(self.load(entry_id))
            except (CorruptEntry, OSError) as exc:
                scan.quarantined.append((entry_id, _reason(exc)))
                if not read_only:
                    self.quarantine(entry_id)
        if scan.cleaned and not read_only:
            sync_dir_shared(self.location)
        return scan

    def committed(self) -> list[str]:
        """The IDs of the entries in the directory now (those with an `ID.meta`).

        Touches nothing: worker processes may be writing entries at this
        moment (docs/workers.md), and their files are none of ours until
        their metadata is renamed into place.
        """
        found = []
        for name in os.listdir(self.location):
            entry_id, dot, kind = name.partition(".")
            if dot and kind == META and ID_PATTERN.match(entry_id):
                found.append(entry_id)
        return sorted(found)

    def load(self, entry_id: str) -> Record:
        """One entry's metadata, with its header checked and its body's size."""
        with open(self.path(entry_id, META), "rb") as f:
            record = Record.from_bytes(f.read(), entry_id)
        self.read_header(record)
        size = self.body_size(record)
        if size != record.body.size:
            raise CorruptEntry(f"body is {size} bytes, {record.body.size} recorded")
        return record


def _check(data: bytes, expected: FileSum, what: str) -> None:
    if len(data) != expected.size:
        raise CorruptEntry(f"{what} is {len(data)} bytes, {expected.size} recorded")
    if hashlib.sha256(data).hexdigest() != expected.sha256:
        raise CorruptEntry(f"{what} does not match its checksum")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
