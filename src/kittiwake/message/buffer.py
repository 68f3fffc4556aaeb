"""Where a message body lives between DATA and the final reply.

The body streams in chunk by chunk (`write`), is closed (`finish`), and is
then read any number of times, once per target (`open`, `chunks`). Whoever
creates a buffer removes it (`remove`), before the final reply of the
transaction (docs/buffer.md, "Files").

Kinds (docs/buffer.md): `ram` keeps everything in memory; `fs` writes to a
file from the first byte; `auto MAX` keeps a body shorter than MAX bytes in
memory and moves it to a file as soon as it reaches MAX (a body of exactly
MAX bytes goes to a file, as in maddy). The file is named with 64 random hex
digits, created with `O_EXCL` and mode 0600, and never outlives the buffer:
a failed write deletes it at once.

Reading: `open()` returns an ordinary binary file object (a `BufferedReader`
over the file, or over the memory without copying it), for code that reads
in a worker thread or synchronously in bounded pieces; `chunks(size)` is an
async iterator of `bytes` for code that streams to a socket. Neither loads a
file-backed body whole.

Strategy (disk writes and the event loop). Measured on the development VM
(ext4 on virtio, page cache; `bench` numbers in docs/buffer.md): a direct
`os.write` costs about 20 µs for 64 KiB, 60 µs for 256 KiB and 0.2-1.4 ms
for 1 MiB, while a hop through `asyncio.to_thread` costs about 200 µs
whatever the size. A buffer file also lives only seconds, so its pages are
usually deleted before writeback ever reaches the disk: writing it is a
memory copy into the page cache. Hence:

* small chunks are appended to a `bytearray` and written out in batches of
  `_BATCH` (256 KiB) with direct `os.write` calls - one short, bounded
  stall instead of a thread hop per chunk;
* one write of `_THREAD_MIN` (1 MiB) or more (the spill of the RAM part of
  an `auto` buffer, or a huge chunk from the caller) goes to a worker thread,
  where a slow disk or dirty-page throttling cannot stall the loop;
* reads for `chunks()` are direct too: the body was just written and is in
  the page cache.

A write goes to the file as given (the batch, then the chunk) - the chunk
is not first copied into the batch. No fsync: the buffer is scratch space,
and durability is the targets' job (they fsync before the final reply).
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import re
import secrets
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal

from kittiwake.config.values import parse_size
from kittiwake.durable import storage_error
from kittiwake.errors import SMTPError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "DEFAULT_MAX_RAM",
    "Buffer",
    "BufferSpec",
    "default_buffer_spec",
    "parse_buffer_directive",
]

DEFAULT_MAX_RAM = 1024 * 1024  # the default `auto 1M` (docs/buffer.md)
_BATCH = 256 * 1024
_THREAD_MIN = 1024 * 1024
_READ_CHUNK = 256 * 1024
_NAME_BYTES = 32  # 64 hex digits
#: Buffer file names: the owning process, then randomness, so that a
#: process starting up can tell its dead predecessors' files from those of
#: a live process sharing the folder (a second worker).
_FILE_NAME = re.compile(r"(?:([0-9]+)-)?[0-9a-f]{64}\Z")
_cleaned: set[str] = set()  # buffer folders this process swept at start


def _storage_error(exc: OSError) -> SMTPError:
    """The reply for a failed buffer write (docs/buffer.md, "Failures").

    A full disk or an exhausted quota on the buffer directory is the
    server's storage, not a mailbox's, so both are `452 4.3.1`. Anything
    else is `451 4.3.0`: temporary, so the client retries.
    """
    return storage_error(exc, "message buffer")


def _write_all(fd: int, parts: Sequence[ReadableBuffer]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


class _MemoryReader(io.RawIOBase):
    """A seekable raw reader over a memoryview, so `open()` copies nothing."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        out = memoryview(buffer).cast("B")
        n = min(len(out), len(self._view) - self._pos)
        if n <= 0:
            return 0
        out[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        data = bytes(self._view[self._pos :])
        self._pos = len(self._view)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = len(self._view) + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._view.release()
        super().close()


class Buffer:
    """One message body: written once in chunks, then read any number of times.

    One writer: `write` calls must not overlap (each is awaited before the
    next chunk is read from the client). If a write fails, the buffer is
    dead: its file is already deleted, and every later `write`, `finish` or
    read raises the same `SMTPError` again, so a session can note it, keep
    discarding the rest of DATA, and answer it after the final dot.
    """

    __slots__ = (
        "_borrowed",
        "_busy",
        "_close_when_idle",
        "_data",
        "_dir",
        "_error",
        "_fd",
        "_finished",
        "_lock",
        "_path",
        "_removed",
        "_size",
        "_spill_at",
    )

    def __init__(self, *, spill_at: int | None, directory: str) -> None:
        """Prefer the factories `ram`, `fs`, `auto` or `BufferSpec.new`.

        `spill_at`: the body moves to a file in `directory` once it
        reaches this many bytes (docs/buffer.md, "Where the line is for
        `auto`"); None keeps it in memory whatever its size.
        """
        self._data = bytearray()  # the whole body in RAM, else the unwritten tail
        self._size = 0
        self._spill_at = spill_at
        self._dir = directory
        self._fd = -1
        self._path: str | None = None
        self._finished = False
        self._removed = False
        self._error: SMTPError | None = None
        # A worker thread may still be writing to `_fd` when the session is
        # cancelled and calls remove(); the thread then closes the fd itself.
        self._lock = threading.Lock()
        self._busy = False
        self._close_when_idle = False
        self._borrowed = False  # the file belongs to someone else: never unlinked

    @classmethod
    def ram(cls) -> Buffer:
        return cls(spill_at=None, directory="")

    @classmethod
    def fs(cls, directory: str) -> Buffer:
        """A file-backed buffer; the file is created at once (may raise `SMTPError`)."""
        buf = cls(spill_at=0, directory=directory)
        buf._open_file()
        return buf

    @classmethod
    def auto(cls, max_ram: int, directory: str) -> Buffer:
        return cls(spill_at=max_ram, directory=directory)

    @classmethod
    def from_file(cls, path: str, size: int) -> Buffer:
        """A finished, read-only buffer over a file someone else owns.

        The outbound queue hands its stored body to a target this way, for
        every attempt, without copying it. `remove()` forgets the file but
        never deletes it: the file's owner decides when it goes.
        """
        buf = cls(spill_at=0, directory=os.path.dirname(path))
        buf._path = path
        buf._size = size
        buf._finished = True
        buf._borrowed = True
        return buf

    # --- state ----------------------------------------------------------

    def __len__(self) -> int:
        """Bytes written so far (all of them, once finished)."""
        return self._size

    @property
    def in_memory(self) -> bool:
        """False once the body has a file (always for `fs`)."""
        return self._path is None

    @property
    def path(self) -> str | None:
        """The file holding the body, if any (for logs and tests)."""
        return self._path

    @property
    def finished(self) -> bool:
        return self._finished

    # --- writing --------------------------------------------------------

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append `chunk` (a byte string; its length counts in bytes).

        May raise `SMTPError` (452 4.3.1 disk full, 451 4.3.0 other I/O
        errors); the caller must not reuse a mutable `chunk` until the call
        returns.
        """
        self._check_writable()
        n = len(chunk)
        if not n:
            return
        self._size += n
        if self._fd < 0:
            if self._spill_at is None or self._size < self._spill_at:
                self._data += chunk
                return
            # Past the RAM limit: everything so far, then the rest, to a file.
            self._open_file()
        if len(self._data) + n < _BATCH:
            self._data += chunk
            return
        batch, self._data = self._data, bytearray()
        await self._write_out((batch, chunk) if batch else (chunk,))

    async def finish(self) -> None:
        """The body is complete: flush it and close the writing side. Idempotent."""
        if self._finished and self._error is None and not self._removed:
            return
        self._check_writable()
        if self._fd >= 0:
            if self._data:
                batch, self._data = self._data, bytearray()
                await self._write_out((batch,))
            self._close_fd()
        self._finished = True

    def _check_writable(self) -> None:
        if self._error is not None:
            # A fresh traceback each time, so repeated calls do not pile up frames.
            raise self._error.with_traceback(None)
        if self._removed:
            raise RuntimeError("buffer was removed")
        if self._finished:
            raise RuntimeError("buffer is finished: no more writes")

    def _open_file(self) -> None:
        for _ in range(3):
            path = os.path.join(self._dir, _file_name())
            try:
                # os.open sets O_CLOEXEC itself (PEP 446).
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # 256 random bits: only a broken RNG gets here
            except OSError as exc:
                raise self._fail(exc) from exc
            self._path = path
            return
        raise self._fail(OSError(errno.EEXIST, "no unique buffer file name"))

    async def _write_out(self, parts: tuple[ReadableBuffer, ...]) -> None:
        size = sum(memoryview(p).nbytes for p in parts)
        try:
            if size < _THREAD_MIN:
                _write_all(self._fd, parts)
            else:
                await asyncio.to_thread(self._thread_write, parts)
        except OSError as exc:
            raise self._fail(exc) from exc
        except asyncio.CancelledError:
            # The thread may still be writing: the body is incomplete for good.
            self._error = SMTPError(451, (4, 3, 0), "Internal server error", reason="cancelled")
            raise

    def _thread_write(self, parts: tuple[ReadableBuffer, ...]) -> None:
        # The fd is taken under the lock: if remove() ran first (the writing
        # task was cancelled before this thread started) there is nothing to
        # do; otherwise remove() sees `_busy` and leaves the close to us.
        with self._lock:
            fd = self._fd
            if fd < 0:
                return
            self._busy = True
        try:
            _write_all(fd, parts)
        finally:
            with self._lock:
                self._busy = False
                if self._close_when_idle:
                    os.close(fd)

    def _fail(self, exc: OSError) -> SMTPError:
        """Turn an I/O error into the reply and leave nothing behind."""
        self._error = _storage_error(exc)
        self._data = bytearray()
        self._discard_file()
        return self._error

    # --- reading --------------------------------------------------------

    def _check_readable(self) -> None:
        if self._error is not None:
            # A fresh traceback each time, so repeated calls do not pile up frames.
            raise self._error.with_traceback(None)
        if self._removed:
            raise RuntimeError("buffer was removed")
        if not self._finished:
            raise RuntimeError("buffer is still being written: call finish() first")

    def open(self) -> BinaryIO:
        """A new binary reader positioned at the start of the body.

        Independent of other readers; close it when done. Reading a file
        blocks, so on the event loop read in bounded pieces (or use
        `chunks`), or hand the reader to a worker thread.
        """
        self._check_readable()
        if self._path is not None:
            return open(self._path, "rb")
        return io.BufferedReader(_MemoryReader(memoryview(self._data)))

    def memory(self) -> bytes | None:
        """The whole body as one `bytes` (a copy) while it is in memory, else None.

        For a small body read on the event loop, where a reader and its
        pieces cost more than the copy; a large one is better read in pieces.
        """
        self._check_readable()
        if self._path is not None:
            return None
        return bytes(self._data)

    async def chunks(self, size: int = _READ_CHUNK) -> AsyncIterator[bytes]:
        """The body as `bytes` pieces of at most `size` bytes."""
        self._check_readable()
        if size <= 0:
            raise ValueError("chunk size must be positive")
        if self._path is None:
            with memoryview(self._data) as view:
                for start in range(0, len(view), size):
                    yield bytes(view[start : start + size])
            return
        # Direct reads, see Strategy: the pages were just written.
        fd = os.open(self._path, os.O_RDONLY)
        try:
            while block := os.read(fd, size):
                yield block
        finally:
            os.close(fd)

    # --- removal --------------------------------------------------------

    def remove(self) -> None:
        """Drop the body and delete its file. Safe to call more than once."""
        if self._removed:
            return
        self._removed = True
        self._data = bytearray()
        self._discard_file()

    def _close_fd(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd < 0:
                return
            if self._busy:
                self._close_when_idle = True  # the writing thread closes it
                return
        os.close(fd)

    def _discard_file(self) -> None:
        self._close_fd()
        path, self._path = self._path, None
        if path is not None and not self._borrowed:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Buffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        where = "ram" if self._path is None else self._path
        return f"<Buffer {self._size} bytes in {where}>"


# --- the `buffer` directive ------------------------------------------------


@dataclass(frozen=True, slots=True)
class BufferSpec:
    """A parsed `buffer` directive: what kind of buffer each message gets.

    `directory` is absolute (resolved against the state directory); it is
    unused for `ram`. `max_ram` matters only for `auto`.
    """

    kind: Literal["ram", "fs", "auto"]
    directory: str = ""
    max_ram: int = DEFAULT_MAX_RAM

    def new(self) -> Buffer:
        """A fresh buffer; `fs` creates its file now and may raise `SMTPError`."""
        if self.kind == "ram":
            return Buffer.ram()
        if self.kind == "fs":
            return Buffer.fs(self.directory)
        return Buffer.auto(self.max_ram, self.directory)

    def prepare(self) -> None:
        """Create the directory (mode 0700) and check that files can be made in it.

        Run once at start, so a bad directory is a configuration error at
        the `buffer` line instead of a failed DATA later; maddy finds out at
        the first large message (docs/buffer.md). Raises `ValueError` with
        an operator-readable message.
        """
        if self.kind == "ram":
            return
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            probe = os.path.join(self.directory, _file_name())
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ValueError(f"buffer directory {self.directory} is not usable: {reason}") from exc

    def sweep(self) -> int:
        """Remove the buffer files a dead process left behind; how many.

        A buffer file lives only while its message is received, and whoever
        creates it removes it, but a process that is killed (kill -9, a
        second SIGTERM, a power cut) cannot: its files would stay for ever.
        Nothing in them was acknowledged, so they are only clutter. Run once
        per folder per process, at start, before this process makes files
        of its own there; files of another live process (a worker sharing
        the folder) are left alone.
        """
        if self.kind == "ram" or self.directory in _cleaned:
            return 0
        _cleaned.add(self.directory)
        removed = 0
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        for name in names:
            match = _FILE_NAME.match(name)
            if match is None:
                continue  # not ours
            owner = int(match.group(1)) if match.group(1) else 0
            if owner and owner != os.getpid() and _alive(owner):
                continue
            try:
                os.unlink(os.path.join(self.directory, name))
            except OSError:
                continue
            removed += 1
        return removed


def _file_name() -> str:
    return f"{os.getpid()}-{secrets.token_hex(_NAME_BYTES)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def default_buffer_spec(state_dir: str) -> BufferSpec:
    """`auto 1M STATE_DIR/buffer`, used when there is no `buffer` directive."""
    return BufferSpec("auto", _resolve(state_dir, "buffer"), DEFAULT_MAX_RAM)


def _resolve(state_dir: str, directory: str) -> str:
    if not directory:
        raise ValueError("buffer directory must not be empty")
    return os.path.abspath(os.path.join(state_dir, directory))


def parse_buffer_directive(args: Sequence[str], state_dir: str) -> BufferSpec:
    """Parse the arguments of `buffer` (docs/buffer.md, "Configuration").

    `ram` | `fs [DIR]` | `auto [MAX [DIR]]`, DIR relative to `state_dir`
    unless absolute, MAX one data-size token (`parse_size`). Raises
    `ValueError` with an operator-readable message; the directive reader
    adds FILE:LINE.
    """
    if not args:
        raise ValueError("expected a buffer mode: ram, fs [DIR] or auto [MAX [DIR]]")
    mode, rest = args[0], args[1:]
    if mode == "ram":
        if rest:
            raise ValueError("no additional arguments for 'ram' mode")
        return BufferSpec("ram")
    if mode == "fs":
        if len(rest) > 1:
            raise ValueError("too many arguments for 'fs' mode (expected: fs [DIR])")
        directory = rest[0] if rest else "buffer"
        return BufferSpec("fs", _resolve(state_dir, directory))
    if mode == "auto":
        if len(rest) > 2:
            raise ValueError("too many arguments for 'auto' mode (expected: auto [MAX [DIR]])")
        max_ram = parse_size([rest[0]]) if rest else DEFAULT_MAX_RAM
        directory = rest[1] if len(rest) > 1 else "buffer"
        return BufferSpec("auto", _resolve(state_dir, directory), max_ram)
    raise ValueError(f"unknown buffer mode: {mode}")
