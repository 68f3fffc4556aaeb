"""The thread side of `storage.maildir`: every blocking file-system call.

Its own module because everything here runs on the storage block's worker
threads and nothing here may touch the event loop, while `maildir.py`
holds the configuration, the mailbox names and the delivery objects that
schedule this work. Reading one file tells you what may block and what
may not.

What is here (docs/storage-maildir.md): unique file names; creating
Maildirs (race-safe, parents fsynced); `LFConverter`, which turns CR LF
into LF as the body streams and counts the S and W sizes exactly; the
`_Job` that writes one message into `tmp/` for every mailbox at once and
fsyncs it; publishing into `new/` (a hard link, or a rename where links
are unsupported) followed by the directory fsyncs; and `_io_error`, which
maps a failed call to its temporary reply. The durability argument is in
`maildir.py`'s docstring.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from kittiwake.durable import fsync_dir, sync_dir_shared, write_all
from kittiwake.errors import SMTPError

__all__ = ["LFConverter", "Mailbox", "is_maildir", "write_and_publish"]

_CHUNK = 256 * 1024  # bytes read from the buffer at a time
_NAME_TRIES = 10  # fresh names tried after EEXIST (a clash needs a broken clock and RNG)
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_SUBDIRS = ("tmp", "new", "cur")
_JUNK = ".Junk"
# link(2) is not available on this file system (FAT, some FUSE and network
# mounts): fall back to rename(2), which is atomic too but overwrites.
_NO_LINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})

_counter = itertools.count(1)
_counter_lock = threading.Lock()


# --- error mapping -----------------------------------------------------------


def _io_error(exc: OSError, what: str) -> SMTPError:
    """The reply for a failed file-system call (docs/storage-maildir.md, "Errors").

    Always temporary: the sender keeps the message and retries, so a full
    disk never turns into a bounce. The OS text goes to the log only.
    """
    reason = f"{what}: {exc}"
    if exc.errno == errno.ENOSPC:
        return SMTPError(452, (4, 3, 1), "Insufficient system storage", reason=reason)
    if exc.errno == errno.EDQUOT:
        return SMTPError(452, (4, 2, 2), "Mailbox full", reason=reason)
    return SMTPError(451, (4, 3, 0), "Local delivery error", reason=reason)


# --- unique names ------------------------------------------------------------


def _base_name(host: str) -> str:
    """A unique base name (docs/storage-maildir.md, "What the file holds and what it is called").

    Time to the microsecond, pid and a per-process counter make it unique on
    this host as long as the clock does not step back; 64 random bits cover
    that case and a pid reused within the same microsecond after a restart.
    """
    now = time.time_ns() // 1000
    seconds, micros = divmod(now, 1_000_000)
    with _counter_lock:
        n = next(_counter)
    return f"{seconds}.M{micros}P{os.getpid()}Q{n}R{os.urandom(8).hex()}.{host}"


# --- low-level file work (worker threads only) ------------------------------


def is_maildir(path: str) -> bool:
    """A Maildir is there iff its three folders are (docs/storage-maildir.md).

    Only "not there" answers False: any other error looking (a folder we may
    not read, EIO) is raised, because a mailbox we cannot see may well exist,
    and calling it unknown would bounce its mail for good.
    """
    for sub in _SUBDIRS:
        try:
            info = os.stat(os.path.join(path, sub))
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISDIR(info.st_mode):
            return False
    return True


def _create_maildir(levels: list[str], sync: bool, *, folder: bool = False) -> None:
    """Create each missing directory of `levels` (parent first), then the Maildir.

    Race-safe: a directory another delivery created meanwhile is fine. With
    `sync`, the parent of every directory we created is fsynced (deepest
    first) so the new entries survive a crash. `folder` marks a Maildir++
    sub-folder with the empty `maildirfolder` file Dovecot expects.
    """
    maildir = levels[-1]
    dirty: list[str] = []
    for path in [*levels, *(os.path.join(maildir, sub) for sub in _SUBDIRS)]:
        try:
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:
            continue
        dirty.append(os.path.dirname(path))
    if folder:
        marker = os.path.join(maildir, "maildirfolder")
        with contextlib.suppress(FileExistsError):
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
            dirty.append(maildir)
    if sync:
        for path in sorted(set(dirty), key=len, reverse=True):
            fsync_dir(path)


class LFConverter:
    """CR LF to LF, chunk by chunk, counting the sizes Dovecot will compute.

    A CR at the end of a chunk is held back until the next chunk shows
    whether an LF follows. `size` is the bytes produced (S); `missing_cr`
    the LFs not preceded by a CR in the output, which Dovecot counts twice
    in the virtual size (W = S + missing_cr). That is "S + number of LFs"
    except after a CR CR LF in the input, whose output CR LF Dovecot already
    reads as a line end.
    """

    __slots__ = ("_carry", "_last_cr", "missing_cr", "size")

    def __init__(self) -> None:
        self._carry = False
        self._last_cr = False
        self.size = 0
        self.missing_cr = 0

    def feed(self, data: bytes) -> bytes:
        if self._carry:
            data = b"\r" + data
            self._carry = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._carry = True
        return self._count(data.replace(b"\r\n", b"\n"))

    def flush(self) -> bytes:
        """The held-back CR, if the content ended with one."""
        if not self._carry:
            return b""
        self._carry = False
        return self._count(b"\r")

    def _count(self, out: bytes) -> bytes:
        if out:
            bare = out.count(b"\n") - out.count(b"\r\n")
            if self._last_cr and out.startswith(b"\n"):
                bare -= 1
            self.size += len(out)
            self.missing_cr += bare
            self._last_cr = out.endswith(b"\r")
        return out


@dataclass(frozen=True, slots=True)
class Mailbox:
    """Where one recipient's mail goes, and how the copy names the recipient."""

    path: str  # the Maildir D: ROOT/DOMAIN/LOCALPART
    recipient: str  # normalised address, sub-address kept (Delivered-To)


@dataclass(eq=False)
class _File:
    """One recipient mailbox's copy of the message, from tmp/ to new/."""

    mailbox: Mailbox
    rcpts: list[str]  # every address given to add_rcpt that maps here
    create: bool = False  # auto_create: make the mailbox when the message comes
    folder: str = ""  # the Maildir written to (the mailbox or its .Junk)
    base: str = ""
    tmp_path: str = ""
    new_path: str = ""  # its name in new/, once published
    prefix: bytes = b""
    fd: int = -1
    size: int = 0
    vsize: int = 0
    error: Exception | None = None

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class _Cancelled(Exception):
    """abort() was called while the files were being written."""


class _Body(Protocol):
    """Where a job reads the body: a `Buffer`, or a delivery agent's copy."""

    def open(self) -> BinaryIO: ...


class _Flag(Protocol):
    """A job's cancel flag: a `threading.Event`, or a delivery agent's socket."""

    def is_set(self) -> bool: ...


@dataclass(eq=False)
class _Job:
    """What one `body` call writes; runs entirely in a worker thread."""

    files: list[_File]
    header: bytes
    body: _Body
    host: str
    sync: bool
    junk: bool
    atomic: bool
    cancel: _Flag
    #: tmp/ paths that exist right now; abort() removes what is left.
    created: set[str] = field(default_factory=set)
    #: Mailboxes this job created (`auto_create`), for the log.
    new_mailboxes: list[str] = field(default_factory=list)

    def run(self) -> None:
        try:
            for f in self.files:
                self._guard(f, self._open, f)
            live = [f for f in self.files if f.error is None]
            conv = LFConverter()
            if live:
                # Written in pieces of about `_CHUNK`: a usual message (its
                # copy's own prefix, the header, the body) in one write.
                with self.body.open() as reader:
                    pending = [conv.feed(self.header)]
                    size = len(pending[0])
                    first = True
                    while True:
                        if self.cancel.is_set():
                            raise _Cancelled
                        try:
                            chunk = reader.read(_CHUNK)
                        except OSError as exc:  # the buffer's disk: every copy fails
                            raise _io_error(exc, "reading the message buffer") from exc
                        if not chunk:
                            break
                        pending.append(conv.feed(chunk))
                        size += len(pending[-1])
                        if size >= _CHUNK:
                            self._write(live, b"".join(pending), first)
                            pending, size, first = [], 0, False
                    pending.append(conv.flush())
                    self._write(live, b"".join(pending), first)
            for f in live:
                self._guard(f, self._finish, f, conv)
            if self.cancel.is_set():  # abort() came during the last write or fsync
                raise _Cancelled
        except BaseException:
            for f in self.files:
                self._discard(f)
            raise

    def _guard(self, f: _File, step: Callable[..., None], *args: object) -> None:
        """Run one file's step; outside atomic mode a failure is that file's alone."""
        if f.error is not None:
            return
        try:
            step(*args)
        except OSError as exc:
            error = _io_error(exc, f"maildir {f.folder or f.mailbox.path}")
            if self.atomic:
                raise error from exc
            f.error = error
            self._discard(f)

    def _write(self, live: list[_File], data: bytes, first: bool) -> None:
        """`data` to every live copy; the first write puts each copy's prefix before it."""
        for f in live:
            out = f.prefix + data if first else data
            if out:
                self._guard(f, write_all, f.fd, out)

    def _open(self, f: _File) -> None:
        if f.create and not is_maildir(f.mailbox.path):
            # auto_create: a mailbox exists once mail comes, never for a RCPT.
            domain_dir = os.path.dirname(f.mailbox.path)
            _create_maildir([domain_dir, f.mailbox.path], self.sync)
            self.new_mailboxes.append(f.mailbox.path)
        f.folder = f.mailbox.path
        if self.junk:
            f.folder = os.path.join(f.mailbox.path, _JUNK)
            if not is_maildir(f.folder):
                _create_maildir([f.folder], self.sync, folder=True)
        for _ in range(_NAME_TRIES):
            base = _base_name(self.host)
            path = os.path.join(f.folder, "tmp", base)
            try:
                f.fd = os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE
                )
            except FileExistsError:
                continue
            f.base, f.tmp_path = base, path
            self.created.add(path)
            return
        raise OSError(errno.EEXIST, "no unique file name in tmp/")

    def _finish(self, f: _File, conv: LFConverter) -> None:
        if self.sync:
            os.fsync(f.fd)
        f.close()
        f.size = len(f.prefix) + conv.size
        f.vsize = f.size + f.prefix.count(b"\n") + conv.missing_cr

    def _discard(self, f: _File) -> None:
        """Close and unlink a file that will not be delivered; never raises."""
        with contextlib.suppress(OSError):
            f.close()
        self.created.discard(f.tmp_path)
        _drop_tmp(f)


def _drop_tmp(f: _File) -> None:
    """Unlink the tmp/ name if there is one; a stray tmp/ file is only clutter."""
    if f.tmp_path:
        with contextlib.suppress(OSError):
            os.unlink(f.tmp_path)
        f.tmp_path = ""


def _publish(f: _File, host: str) -> None:
    """Give a prepared file its final name in new/ (docs/storage-maildir.md,
    "How delivery is made safe", step 2)."""
    base = f.base
    for _ in range(_NAME_TRIES):
        target = os.path.join(f.folder, "new", f"{base},S={f.size},W={f.vsize}")
        try:
            os.link(f.tmp_path, target)
        except FileExistsError:
            base = _base_name(host)
            continue
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if os.path.lexists(target):  # rename(2) would overwrite it
                base = _base_name(host)
                continue
            os.rename(f.tmp_path, target)
            f.tmp_path = ""
        f.new_path = target
        _drop_tmp(f)
        return
    raise OSError(errno.EEXIST, "no unique file name in new/")


def _commit(files: list[_File], host: str, sync: bool) -> dict[int, OSError]:
    """Move every file into new/, then fsync the directories; the failures.

    Files are all moved even if one fails: each one moved is delivered.
    Returns the error of each file that is not durably in new/, by its
    index in `files` (its link failed, or the fsync of its new/ did, in
    which case its name there is removed again); the directory fsyncs run
    whatever happened before them.
    """
    failed: dict[int, OSError] = {}
    dirs: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        try:
            _publish(f, host)
        except OSError as exc:
            failed[i] = exc
            _drop_tmp(f)
            continue
        # Only new/ needs its entry on disk; a tmp/ entry that comes back
        # after a crash is a stale file readers ignore, so tmp/ is not synced.
        dirs.setdefault(os.path.join(f.folder, "new"), []).append(i)
    if sync:
        for d in sorted(dirs):
            try:
                sync_dir_shared(d)
            except OSError as exc:  # never retried: after EIO the page state is unknown
                for i in dirs[d]:
                    failed[i] = exc
                    _unpublish(files[i])
    return failed


def write_and_publish(job: _Job, host: str, sync: bool) -> dict[int, OSError]:
    """`job.run()` then `_commit` in one thread trip (`body_and_commit`).

    An abort that came while the files were written or synced keeps them
    out of `new/`: `run` then removes them and raises. `job.created` is
    emptied once the tmp/ names are gone, as `commit` does.
    """
    job.run()
    try:
        return _commit(job.files, host, sync)
    finally:
        job.created.clear()


def _unpublish(f: _File) -> None:
    """Take a copy out of new/ again: its name may not be on disk, and it fails.

    The client is told this copy failed and sends the message again; a copy
    left in new/ meanwhile would be read, then duplicated by that retry.
    Never raises: if the unlink fails too, the duplicate is all it costs.
    """
    if f.new_path:
        with contextlib.suppress(OSError):
            os.unlink(f.new_path)
        f.new_path = ""


#: Maildir convention (and Dovecot's): a tmp/ file untouched this long
#: belongs to a delivery that died; nobody will ever finish it.
STALE_TMP = 36 * 3600


def sweep_stale_tmp(root: str, now: float, max_age: float = STALE_TMP) -> int:
    """Remove tmp/ files older than `max_age` in every mailbox under `root`.

    Looks at `root/DOMAIN/USER/tmp/` and the tmp/ of each Maildir++ folder
    (`USER/.Junk/tmp/`, ...). Symbolic links are not followed. Returns how
    many files were removed; a folder that cannot be read is skipped.
    """
    removed = 0
    for tmp in _tmp_folders(root):
        try:
            entries = list(os.scandir(tmp))
        except OSError:
            continue
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime < max_age:
                    continue
                os.unlink(entry.path)
            except OSError:
                continue
            removed += 1
    return removed


def _subdirs(path: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _tmp_folders(root: str) -> list[str]:
    folders = []
    for domain in _subdirs(root):
        for mailbox in _subdirs(domain):
            folders.append(os.path.join(mailbox, "tmp"))
            for sub in _subdirs(mailbox):
                if os.path.basename(sub).startswith("."):
                    folders.append(os.path.join(sub, "tmp"))
    return folders


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
