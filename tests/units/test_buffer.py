"""kittiwake.message.buffer: the three kinds, spilling, memory bounds, disk errors,
removal, and the `buffer` directive."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.errors import SMTPError
from kittiwake.message.buffer import (
    DEFAULT_MAX_RAM,
    Buffer,
    BufferSpec,
    default_buffer_spec,
    parse_buffer_directive,
)

MiB = 1024 * 1024
# Binary and line-ish content: every byte value, bare CR/LF, NULs, dots.
BODY = bytes(range(256)) * 37 + b"\r\n.\r\n\n\r\x00" * 50 + os.urandom(70_001)


# Small synchronous helpers: the tests look at the file system between awaits.
def _files(directory: Path) -> list[str]:
    return os.listdir(directory)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _size(path: str) -> int:
    return os.path.getsize(path)


def _new(kind: str, directory: Path) -> Buffer:
    """A buffer of each kind under test; `fs` creates its file at once."""
    if kind == "ram":
        return Buffer.ram()
    if kind == "fs":
        return Buffer.fs(str(directory))
    max_ram = {"auto-ram": len(BODY) + 1, "auto-spilled": 1000, "auto-0": 0}[kind]
    return Buffer.auto(max_ram, str(directory))


async def _fill(buf: Buffer, data: bytes, sizes: tuple[int, ...] = (1, 7, 4096, 65536, 3)) -> None:
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        await buf.write(memoryview(data)[pos : pos + n])
        pos += n
        i += 1
    await buf.finish()


async def _read_chunks(buf: Buffer, size: int = 5000) -> bytes:
    return b"".join([chunk async for chunk in buf.chunks(size)])


@pytest.mark.parametrize("kind", ["ram", "fs", "auto-ram", "auto-spilled", "auto-0"])
async def test_round_trip_is_byte_exact(tmp_path: Path, kind: str) -> None:
    buf = _new(kind, tmp_path)
    with buf:
        await _fill(buf, BODY)
        assert len(buf) == len(BODY)
        assert buf.in_memory == (kind in ("ram", "auto-ram"))
        with buf.open() as f:
            assert f.read() == BODY
        # Readers are independent and seekable.
        with buf.open() as a, buf.open() as b:
            assert a.read(10) == BODY[:10]
            assert b.read(20) == BODY[:20]
            a.seek(-5, os.SEEK_END)
            assert a.read() == BODY[-5:]
            a.seek(100)
            assert a.read(1) == BODY[100:101]
        assert await _read_chunks(buf) == BODY
        assert all(len(c) <= 5000 for c in [c async for c in buf.chunks(5000)])
        # The whole body at once only while it is in memory.
        assert buf.memory() == (BODY if buf.in_memory else None)
    assert not _files(tmp_path)


@pytest.mark.parametrize("kind", ["ram", "fs", "auto-ram", "auto-0"])
async def test_empty_body(tmp_path: Path, kind: str) -> None:
    with _new(kind, tmp_path) as buf:
        await buf.finish()
        assert len(buf) == 0
        with buf.open() as f:
            assert f.read() == b""
        assert await _read_chunks(buf) == b""
        assert buf.in_memory == (kind != "fs")
        assert buf.memory() == (b"" if buf.in_memory else None)


async def test_big_single_write_goes_through_a_thread(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    with Buffer.fs(str(tmp_path)) as buf:
        await buf.write(b"head")
        await buf.write(data)
        await buf.write(b"tail")
        await buf.finish()
        with buf.open() as f:
            assert f.read() == b"head" + data + b"tail"


# --- auto: where the line is ----------------------------------------------


async def test_auto_keeps_one_byte_under_max_in_memory(tmp_path: Path) -> None:
    with Buffer.auto(1000, str(tmp_path)) as buf:
        await buf.write(b"x" * 998)
        await buf.write(b"y")
        assert buf.in_memory
        await buf.finish()
        assert buf.in_memory and buf.path is None
        assert not _files(tmp_path)


async def test_auto_spills_when_the_body_reaches_max(tmp_path: Path) -> None:
    # A body of exactly MAX bytes goes to a file (docs/buffer.md, "Where the line
    # is for `auto`").
    with Buffer.auto(1000, str(tmp_path)) as buf:
        await buf.write(b"x" * 999)
        assert buf.in_memory
        await buf.write(b"y")  # byte 1000
        assert not buf.in_memory
        assert buf.path is not None and _exists(buf.path)
        await buf.write(b"z" * 10)
        await buf.finish()
        assert _read(buf.path) == b"x" * 999 + b"y" + b"z" * 10
        with buf.open() as f:
            assert f.read() == b"x" * 999 + b"y" + b"z" * 10


async def test_auto_spill_in_one_big_chunk(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 5)
    with Buffer.auto(MiB, str(tmp_path)) as buf:
        await buf.write(data[:10])
        await buf.write(data[10:])
        await buf.finish()
        assert not buf.in_memory
        assert await _read_chunks(buf, 100_000) == data


@pytest.mark.parametrize("size", [13, 0, 5, 6])
async def test_auto_5b_bodies_stay_intact(tmp_path: Path, size: int) -> None:
    # maddy's own case: bodies of 13, 0 and 5 bytes through `auto 5b`.
    data = os.urandom(size)
    with Buffer.auto(5, str(tmp_path)) as buf:
        await _fill(buf, data, (2,))
        assert buf.in_memory == (size < 5)
        with buf.open() as f:
            assert f.read() == data


async def test_memory_stays_bounded_through_auto_1m(tmp_path: Path) -> None:
    chunk = os.urandom(64 * 1024)
    total = 32 * MiB
    tracemalloc.start()
    try:
        with BufferSpec("auto", str(tmp_path), MiB).new() as buf:
            for _ in range(total // len(chunk)):
                await buf.write(chunk)
            await buf.finish()
            _, peak = tracemalloc.get_traced_memory()
            assert len(buf) == total
            assert buf.path is not None
            assert _size(buf.path) == total
    finally:
        tracemalloc.stop()
    # 1 MiB in RAM before the spill, a 256 KiB write batch, bookkeeping.
    assert peak < 3 * MiB, f"peak {peak / MiB:.2f} MiB"


async def test_content_of_a_large_spilled_body(tmp_path: Path) -> None:
    digest = hashlib.sha256()
    with Buffer.auto(MiB, str(tmp_path)) as buf:
        for i in range(200):
            piece = os.urandom(1000 + i * 37)
            digest.update(piece)
            await buf.write(piece)
        await buf.finish()
        check = hashlib.sha256()
        async for block in buf.chunks():
            check.update(block)
        assert check.digest() == digest.digest()


# --- files ------------------------------------------------------------------


async def test_file_name_and_mode(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        buf = Buffer.fs(str(tmp_path))
    finally:
        os.umask(old)
    with buf:
        assert buf.path is not None
        # The owning process, then 64 random hex digits (a sweep at start
        # tells a dead process's files from a live one's by the first part).
        owner, _, name = os.path.basename(buf.path).partition("-")
        assert owner == str(os.getpid())
        assert len(name) == 64 and all(c in "0123456789abcdef" for c in name)
        assert os.path.dirname(buf.path) == str(tmp_path)
        assert stat.S_IMODE(os.stat(buf.path).st_mode) == 0o600
        await buf.write(b"data")
        await buf.finish()


async def test_remove_deletes_the_file_and_is_idempotent(tmp_path: Path) -> None:
    buf = Buffer.auto(10, str(tmp_path))
    await buf.write(b"0123456789abc")
    path = buf.path
    assert path is not None and _exists(path)
    buf.remove()
    assert not _exists(path)
    buf.remove()
    buf.remove()
    with pytest.raises(RuntimeError, match="removed"):
        buf.open()
    with pytest.raises(RuntimeError, match="removed"):
        await buf.write(b"x")


async def test_remove_after_finish_and_while_readers_open(tmp_path: Path) -> None:
    buf = Buffer.fs(str(tmp_path))
    await buf.write(b"hello")
    await buf.finish()
    reader = buf.open()
    buf.remove()
    assert not _files(tmp_path)
    assert reader.read() == b"hello"  # POSIX: an open file outlives its name
    reader.close()


async def test_remove_ram_buffer(tmp_path: Path) -> None:
    buf = Buffer.ram()
    await buf.write(b"abc")
    await buf.finish()
    buf.remove()
    buf.remove()
    with pytest.raises(RuntimeError):
        buf.open()


async def test_context_manager_removes(tmp_path: Path) -> None:
    with Buffer.fs(str(tmp_path)) as buf:
        await buf.write(b"x")
    assert not _files(tmp_path)


async def test_misuse_is_reported(tmp_path: Path) -> None:
    with Buffer.fs(str(tmp_path)) as buf:
        await buf.write(b"x")
        with pytest.raises(RuntimeError, match="finish"):
            buf.open()
        with pytest.raises(RuntimeError, match="finish"):
            await anext(buf.chunks())
        await buf.finish()
        await buf.finish()  # idempotent
    with Buffer.ram() as buf:
        await buf.finish()
        with pytest.raises(RuntimeError, match="finished"):
            await buf.write(b"late")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_cancelled_threaded_write_leaks_nothing(tmp_path: Path) -> None:
    before = _open_fds()
    data = os.urandom(64 * MiB)
    buf = Buffer.fs(str(tmp_path))
    task = asyncio.create_task(buf.write(data))
    for _ in range(1000):  # until the worker thread is inside os.write
        await asyncio.sleep(0.001)
        if buf._busy:
            break
    assert buf._busy, "the 64 MiB write finished too fast to test cancellation"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    buf.remove()
    assert not _files(tmp_path)
    for _ in range(200):  # the worker closes the file when it is done
        if _open_fds() <= before:
            break
        await asyncio.sleep(0.01)
    assert _open_fds() <= before
    with pytest.raises(SMTPError):
        await buf.write(b"x")


# --- disk errors --------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so that writes fail with ENOSPC."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the ENOSPC test needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("kind", ["fs", "auto"])
async def test_disk_full_is_452_and_leaves_no_file(tiny_tmpfs: Path, kind: str) -> None:
    spec = BufferSpec(kind, str(tiny_tmpfs), 64 * 1024)  # type: ignore[arg-type]
    buf = spec.new()
    chunk = os.urandom(100_000)
    with pytest.raises(SMTPError) as info:
        for _ in range(40):  # 4 MB into 1 MiB
            await buf.write(chunk)
        await buf.finish()
    err = info.value
    assert (err.code, err.enhanced) == (452, (4, 3, 1))
    assert "No space left" in err.reason
    assert err.message == "Insufficient system storage"
    assert not _files(tiny_tmpfs)
    # The buffer stays dead with the same error, so the session can answer
    # it after the final dot.
    with pytest.raises(SMTPError) as again:
        await buf.write(b"more")
    assert again.value is err
    with pytest.raises(SMTPError):
        await buf.finish()
    with pytest.raises(SMTPError):
        buf.open()
    buf.remove()
    buf.remove()


async def test_disk_full_on_finish(tiny_tmpfs: Path) -> None:
    # 1,000,000 bytes reach the file in two batches; the last 100,000 wait
    # in the batch until finish(), which then overflows the 1 MiB.
    buf = Buffer.fs(str(tiny_tmpfs))
    for _ in range(4):
        await buf.write(os.urandom(250_000))
    await buf.write(os.urandom(100_000))
    assert len(_files(tiny_tmpfs)) == 1
    with pytest.raises(SMTPError) as info:
        await buf.finish()
    assert (info.value.code, info.value.enhanced) == (452, (4, 3, 1))
    assert not _files(tiny_tmpfs)


async def test_other_io_errors_are_451(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    buf = Buffer.auto(10, str(missing))
    await buf.write(b"12345")
    with pytest.raises(SMTPError) as info:
        await buf.write(b"678901")  # spills into a directory that does not exist
    assert (info.value.code, info.value.enhanced) == (451, (4, 3, 0))
    assert info.value.message == "Internal server error"
    assert not _exists(str(missing))
    with pytest.raises(SMTPError) as fs_info:
        Buffer.fs(str(missing))
    assert fs_info.value.code == 451


# --- the `buffer` directive -------------------------------------------------

STATE = "/var/lib/kittiwake"

SPECS = [
    (["ram"], BufferSpec("ram")),
    (["fs"], BufferSpec("fs", f"{STATE}/buffer")),
    (["fs", "spool"], BufferSpec("fs", f"{STATE}/spool")),
    (["fs", "/tmp/buf"], BufferSpec("fs", "/tmp/buf")),
    (["auto"], BufferSpec("auto", f"{STATE}/buffer", MiB)),
    (["auto", "5b"], BufferSpec("auto", f"{STATE}/buffer", 5)),
    (["auto", "0"], BufferSpec("auto", f"{STATE}/buffer", 0)),
    (["auto", "2M", "/srv/buf"], BufferSpec("auto", "/srv/buf", 2 * MiB)),
    (["auto", "512K", "rel/dir"], BufferSpec("auto", f"{STATE}/rel/dir", 512 * 1024)),
]


@pytest.mark.parametrize(("args", "expected"), SPECS)
def test_parse_buffer_directive(args: list[str], expected: BufferSpec) -> None:
    assert parse_buffer_directive(args, STATE) == expected


BAD_SPECS = [
    ([], "expected a buffer mode"),
    (["ram", "x"], "no additional arguments for 'ram' mode"),
    (["fs", "a", "b"], "too many arguments for 'fs' mode"),
    (["auto", "1M", "a", "b"], "too many arguments for 'auto' mode"),
    (["auto", "lots"], "invalid size"),
    (["auto", "1X"], "invalid size"),
    (["fs", ""], "must not be empty"),
    (["disk"], "unknown buffer mode: disk"),
    (["RAM"], "unknown buffer mode: RAM"),
]


@pytest.mark.parametrize(("args", "message"), BAD_SPECS)
def test_parse_buffer_directive_errors(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_buffer_directive(args, STATE)


def test_default_spec() -> None:
    assert default_buffer_spec(STATE) == BufferSpec("auto", f"{STATE}/buffer", DEFAULT_MAX_RAM)
    assert MiB == DEFAULT_MAX_RAM


def test_relative_state_dir_gives_absolute_paths(tmp_path: Path) -> None:
    spec = parse_buffer_directive(["fs"], "state")
    assert os.path.isabs(spec.directory)


def test_prepare_creates_the_directory(tmp_path: Path) -> None:
    spec = parse_buffer_directive(["auto", "1M", "a/b"], str(tmp_path))
    spec.prepare()
    assert os.path.isdir(spec.directory)
    assert stat.S_IMODE(os.stat(spec.directory).st_mode) & 0o077 == 0
    assert not os.listdir(spec.directory)  # the probe file is gone
    BufferSpec("ram").prepare()  # nothing to do


def test_prepare_reports_an_unusable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    spec = parse_buffer_directive(["fs", "file/sub"], str(tmp_path))
    with pytest.raises(ValueError, match="not usable"):
        spec.prepare()


async def test_spec_new_makes_each_kind(tmp_path: Path) -> None:
    for kind in ("ram", "fs", "auto"):
        with BufferSpec(kind, str(tmp_path), 4).new() as buf:
            await buf.write(b"12345")
            await buf.finish()
            assert buf.in_memory == (kind == "ram")


def test_sweep_removes_only_what_dead_processes_left(tmp_path: Path) -> None:
    spec = BufferSpec("fs", str(tmp_path / "sweep"))
    spec.prepare()
    folder = tmp_path / "sweep"
    token = "a" * 64
    (folder / f"999999999-{token}").write_bytes(b"")  # no such process
    (folder / token).write_bytes(b"")  # an old-style name: no owner known
    (folder / f"1-{token}").write_bytes(b"")  # pid 1 lives: another worker's
    (folder / "notes.txt").write_bytes(b"")  # not a buffer file
    assert spec.sweep() == 2
    assert sorted(p.name for p in folder.iterdir()) == [f"1-{token}", "notes.txt"]
    assert spec.sweep() == 0  # once per process and folder
