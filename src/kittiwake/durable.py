"""The durable-write recipe, shared by everything that says 250 for a file.

`storage.maildir` and `target.queue` both promise that a message they
accepted survives a crash, and both keep that promise the same way
(docs/target-queue.md, "Durability"; docs/storage-maildir.md): write a
temporary file created with `O_EXCL` and mode 0600, `fsync` it, give it its
final name with a rename (or a link), then `fsync` the directory that holds
the name. Only then is the message reported stored. The pieces of that
recipe live here so both follow it to the letter:

* `write_all` - `os.write` until every byte is out (short writes happen);
* `fsync_dir` - the directory fsync that makes a new name durable;
* `sync_dir_shared` - the same, with overlapping callers sharing one fsync;
* `write_new` / `replace_file` - a whole small file written and synced,
  either under a fresh name or atomically in place of an old version;
* `storage_error` - a failed call as the temporary reply a client gets.

Everything here blocks: call it from a worker thread, never the event loop.
After a failed fsync nothing is retried: once a write-back has failed (EIO)
the kernel may have dropped the dirty pages, and a second fsync that
succeeds would only hide the loss.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import weakref

from kittiwake.errors import SMTPError

__all__ = [
    "FILE_MODE",
    "NEW_FILE",
    "DirSync",
    "fsync_dir",
    "replace_file",
    "storage_error",
    "sync_dir_shared",
    "write_all",
    "write_new",
]

#: Files holding mail are readable by the server's user only.
FILE_MODE = 0o600
#: Flags of a new file: never follow or overwrite an existing name.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def storage_error(exc: OSError, what: str, message: str = "Internal server error") -> SMTPError:
    """The reply for a failed file-system call on the server's own storage.

    A full disk or an exhausted quota is `452 4.3.1` (RFC 3463: mail
    system full); anything else (EIO, EACCES, EROFS, ...) is `451 4.3.0`
    with `message`. Both are temporary: the sender keeps the message and
    tries again, so a full disk never turns into a bounce. The OS text
    (`what: exc`) goes to the log only.
    """
    reason = f"{what}: {exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SMTPError(452, (4, 3, 1), "Insufficient system storage", reason=reason)
    return SMTPError(451, (4, 3, 0), message, reason=reason)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of `data`: `os.write` may write fewer than asked."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: str) -> None:
    """Make the names in directory `path` (new, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: str, data: bytes, *, sync: bool = True) -> None:
    """Create `path` (it must not exist), write `data`, fsync and close it.

    On any failure the partial file is removed before the error is raised,
    so a caller never has to clean up after this function.
    """
    fd = os.open(path, NEW_FILE, FILE_MODE)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    try:
        os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def replace_file(path: str, data: bytes, *, tmp: str | None = None) -> None:
    """Atomically give `path` the content `data`, durably.

    Written to `tmp` (default `path.tmp`) first, synced, renamed over
    `path`, then the directory is synced: a crash at any point leaves
    either the old version or the new one, never a mix, plus at most a
    stale temporary file. A temporary file left by an earlier crash is
    replaced (the caller is the only writer of `path`).
    """
    tmp = tmp or f"{path}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    write_new(tmp, data)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_dir_shared(os.path.dirname(path) or ".")


class DirSync:
    """The fsyncs of one directory, shared by callers that overlap (group commit).

    A caller takes a ticket after its change to the directory; an fsync
    that *starts* after that covers it. While one fsync runs, later callers
    wait, and the next fsync (run by one of them) covers them all: fifty
    deliveries into one busy directory share a few fsyncs instead of
    queueing fifty. A failed fsync fails every caller it was meant to cover
    (never retried: after EIO the state of the pages is unknown).
    """

    __slots__ = ("__weakref__", "cond", "covered", "failures", "issued", "running")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.issued = 0  # tickets handed out
        self.covered = 0  # every ticket up to this one has had its fsync
        self.running = False
        self.failures: list[tuple[int, int, OSError]] = []  # (after, upto, error)

    def sync(self, path: str) -> None:
        with self.cond:
            self.issued += 1
            ticket = self.issued
            while self.covered < ticket and self.running:
                self.cond.wait()
            if self.covered >= ticket:
                for after, upto, error in self.failures:
                    if after < ticket <= upto:
                        raise error
                return
            self.running = True
            start, target = self.covered, self.issued
        failure: OSError | None = None
        try:
            fsync_dir(path)
        except OSError as exc:
            failure = exc
        with self.cond:
            self.running = False
            self.covered = max(self.covered, target)
            if failure is not None:
                self.failures = [*self.failures[-15:], (start, target, failure)]
            self.cond.notify_all()
        if failure is not None:
            raise failure


_dir_syncs: weakref.WeakValueDictionary[str, DirSync] = weakref.WeakValueDictionary()
_dir_syncs_lock = threading.Lock()


def sync_dir_shared(path: str) -> None:
    """`fsync_dir(path)`, shared with every other caller syncing `path` now."""
    with _dir_syncs_lock:
        state = _dir_syncs.get(path)
        if state is None:
            state = _dir_syncs[path] = DirSync()
    state.sync(path)
