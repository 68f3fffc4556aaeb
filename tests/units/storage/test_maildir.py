"""storage.maildir on a real file system, configured from configuration text.

Every test builds a `Container` from text: a throw-away endpoint
(`kw_maildir_probe`) references the storage with `deliver_to` and `table`,
so the module goes through parsing, `&references`, capability checks,
`configure`, `start` and `stop` exactly as in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kittiwake import metrics
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError, SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.storage import maildir as maildir_module
from kittiwake.storage import maildir_agents
from kittiwake.storage.maildir import MaildirDelivery, MaildirStorage, encode_host
from kittiwake.storage.maildir_files import LFConverter
from kittiwake.targets.base import Delivery, PartialDelivery
from probe import TargetProbe, registered

PROBE = "kw_maildir_probe"
NAME = re.compile(
    r"^(?P<sec>\d+)\.M(?P<usec>\d{1,6})P(?P<pid>\d+)Q(?P<q>\d+)R(?P<rand>[0-9a-f]{16})"
    r"\.(?P<host>[^,]+),S=(?P<s>\d+),W=(?P<w>\d+)$"
)


@pytest.fixture(autouse=True, scope="module")
def _probe_registered() -> Iterator[None]:
    with registered(PROBE):
        yield


class Env:
    """A started configuration: the storage module and where its mail goes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "mail"
        self.containers: list[Container] = []
        #: False: `delivery_agents 0`, so the file work runs in this process
        #: and the tests' monkeypatches reach it.
        self.agents = False

    def build(self, body: str, *, path: str | None = None) -> Container:
        where = str(self.root) if path is None else path
        path_line = f"path {where}" if where else ""
        if not self.agents and "delivery_agents" not in body:
            body = f"{body}\ndelivery_agents 0"
        text = (
            f"state_dir {self.tmp / 'state'}\n"
            f"storage.maildir local_mailboxes {{\n {path_line}\n{body}\n}}\n"
            f"{PROBE} {{\n deliver_to &local_mailboxes\n table &local_mailboxes\n}}\n"
        )
        container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(self.tmp))
        container.build()
        container.prepare_dirs()
        return container

    async def start(self, body: str = "", *, path: str | None = None) -> MaildirStorage:
        container = self.build(body, path=path)
        self.containers.append(container)
        await container.start()
        (probe,) = container.endpoints
        assert isinstance(probe, TargetProbe)
        (storage,) = probe.targets
        assert isinstance(storage, MaildirStorage)
        assert probe.tables == [storage]
        return storage

    def mailbox(self, domain: str, local: str) -> Path:
        return self.root / domain / local

    def make(self, domain: str, local: str) -> Path:
        box = self.mailbox(domain, local)
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        return box


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    while e.containers:
        await e.containers.pop().stop()


def header(*fields: tuple[str, str]) -> Header:
    h = Header()
    for name, value in reversed(fields):
        h.add(name, value, folded=False)
    return h


HEAD = header(("From", "a@example.net"), ("Subject", "hello"))


async def buffer(data: bytes, *, directory: Path | None = None) -> Buffer:
    buf = Buffer.fs(str(directory)) if directory is not None else Buffer.ram()
    await buf.write(data)
    await buf.finish()
    return buf


async def deliver(
    target: MaildirStorage,
    rcpts: list[str],
    body: bytes = b"Hi.\r\n",
    *,
    head: Header = HEAD,
    mail_from: str = "sender@example.net",
    quarantine: bool = False,
    one_step: bool = False,
) -> None:
    """The whole transaction the smtp endpoint runs: atomic body() and commit(),
    or with `one_step` both at once, as when the mailbox is the only target."""
    buf = await buffer(body)
    delivery = await target.start_delivery(MsgMeta(id="t1", quarantine=quarantine), mail_from)
    assert isinstance(delivery, Delivery)
    try:
        for rcpt in rcpts:
            await delivery.add_rcpt(rcpt)
        if one_step:
            await delivery.body_and_commit(head, buf)
        else:
            await delivery.body(head, buf)
            await delivery.commit()
    except BaseException:
        await delivery.abort()
        raise
    finally:
        buf.remove()


@pytest.fixture(params=[False, True], ids=["two-steps", "one-step"])
def one_step(request: pytest.FixtureRequest) -> bool:
    """Run a test through body() + commit() and through body_and_commit()."""
    return bool(request.param)


@pytest.fixture(params=["two-steps", "one-step", "agent"])
def way(request: pytest.FixtureRequest, env: Env) -> bool:
    """`one_step`, and the one step again in a delivery agent process; the value
    is `deliver`'s `one_step`."""
    env.agents = request.param == "agent"
    return bool(request.param != "two-steps")


def files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


def only_file(box: Path) -> Path:
    new = files(box / "new")
    assert len(new) == 1, new
    assert files(box / "tmp") == []
    return new[0]


def vsize(data: bytes) -> int:
    """What Dovecot computes: every LF not preceded by CR counts twice."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


# --- where and what --------------------------------------------------------


async def test_file_lands_in_new_with_exact_bytes(env: Env, way: bool) -> None:
    storage = await env.start()
    box = env.make("example.org", "user")
    await deliver(storage, ["user@example.org"], b"line 1\r\nline 2\r\n", one_step=way)
    path = only_file(box)
    assert path.read_bytes() == (
        b"Return-Path: <sender@example.net>\n"
        b"Delivered-To: user@example.org\n"
        b"From: a@example.net\n"
        b"Subject: hello\n"
        b"\n"
        b"line 1\nline 2\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert files(box / "cur") == []


async def test_one_step_is_one_trip_to_the_threads(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """body_and_commit writes and publishes in one job; body and commit take two."""
    storage = await env.start()
    box = env.make("example.org", "user")
    trips: dict[str, int] = {}
    for step in ("two", "one"):
        delivery = await storage.start_delivery(MsgMeta(id=step), "")
        await delivery.add_rcpt("user@example.org")
        real = delivery._in_thread
        trips[step] = 0

        async def counting(fn: Any, *args: Any, step: str = step, real: Any = real) -> Any:
            trips[step] += 1
            return await real(fn, *args)

        monkeypatch.setattr(delivery, "_in_thread", counting)
        buf = await buffer(b"Hi.\r\n")
        if step == "one":
            await delivery.body_and_commit(HEAD, buf)
        else:
            await delivery.body(HEAD, buf)
            await delivery.commit()
        buf.remove()
    assert trips == {"two": 2, "one": 1}
    assert len(files(box / "new")) == 2 and files(box / "tmp") == []


async def test_name_convention_and_exact_sizes(env: Env) -> None:
    storage = await env.start()
    box = env.make("example.org", "user")
    # Bare CR, CR CR LF, 8-bit text, a bare LF and a CR at the very end.
    body = "Grüße\r\nbare\rcr\r\r\nlf\nend\r".encode()
    await deliver(storage, ["user@example.org"], body)
    path = only_file(box)
    m = NAME.match(path.name)
    assert m is not None, path.name
    data = path.read_bytes()
    assert data.endswith("Grüße\nbare\rcr\r\nlf\nend\r".encode())
    assert int(m["s"]) == len(data) == path.stat().st_size
    assert int(m["w"]) == vsize(data)
    assert m["host"] == encode_host(socket.gethostname())
    assert int(m["pid"]) == os.getpid()
    assert ":2," not in path.name


def test_host_encoding() -> None:
    assert encode_host("mx.example.org") == "mx.example.org"
    assert encode_host("a/b:c") == "a\\057b\\072c"


@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"\r\r", b"ab\r"]), max_size=40),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_converter_any_chunking(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    bounds = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    conv = LFConverter()
    out = b"".join(conv.feed(c) for c in chunks) + conv.flush()
    assert out == data.replace(b"\r\n", b"\n")
    assert conv.size == len(out)
    assert conv.size + conv.missing_cr == vsize(out)


async def test_large_body_streams_across_chunk_boundaries(env: Env, tmp_path: Path) -> None:
    storage = await env.start()
    box = env.make("example.org", "user")
    body = bytearray(os.urandom(3 * 1024 * 1024))
    for at in (256 * 1024 - 1, 512 * 1024 - 1, 768 * 1024):
        body[at : at + 2] = b"\r\n"  # a CR LF split by the 256 KiB read size
    spill = tmp_path / "spill"
    spill.mkdir()
    buf = await buffer(bytes(body), directory=spill)
    tracemalloc.start()
    try:
        delivery = await storage.start_delivery(MsgMeta(id="big"), "")
        await delivery.add_rcpt("user@example.org")
        await delivery.body(HEAD, buf)
        await delivery.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        buf.remove()
    assert peak < 2 * 1024 * 1024  # streamed in chunks, never held whole
    path = only_file(box)
    data = path.read_bytes()
    prefix = b"Return-Path: <>\nDelivered-To: user@example.org\n"
    assert data == prefix + b"From: a@example.net\nSubject: hello\n\n" + bytes(body).replace(
        b"\r\n", b"\n"
    )
    m = NAME.match(path.name)
    assert m is not None
    assert (int(m["s"]), int(m["w"])) == (len(data), vsize(data))


async def test_return_path_forms(env: Env) -> None:
    storage = await env.start()
    box = env.make("example.org", "user")
    await deliver(storage, ["user@example.org"], mail_from="")
    await deliver(storage, ["user@example.org"], mail_from="john doe@example.net")
    first, second = (p.read_bytes() for p in files(box / "new"))
    lines = {first.split(b"\n")[0], second.split(b"\n")[0]}
    assert lines == {b"Return-Path: <>", b'Return-Path: <"john doe"@example.net>'}


async def test_several_mailboxes_one_file_each(env: Env, way: bool) -> None:
    storage = await env.start()
    a, b = env.make("example.org", "a"), env.make("example.com", "b")
    await deliver(storage, ["a@example.org", "B@Example.COM"], one_step=way)
    assert b"Delivered-To: a@example.org\n" in only_file(a).read_bytes()
    assert b"Delivered-To: b@example.com\n" in only_file(b).read_bytes()


# --- mailbox resolution -------------------------------------------------------


async def test_sub_addresses_and_case(env: Env) -> None:
    storage = await env.start()
    box = env.make("example.org", "user")
    plus = env.make("example.org", "+tag")
    await deliver(storage, ["User+Tag@Example.ORG"])
    assert b"Delivered-To: user+tag@example.org\n" in only_file(box).read_bytes()
    # The same mailbox twice, spelt differently: one copy.
    (only_file(box)).unlink()
    await deliver(storage, ["user@example.org", "user+x@example.org", "USER@example.org"])
    assert b"Delivered-To: user@example.org\n" in only_file(box).read_bytes()
    # A local part that starts with the separator is kept whole.
    await deliver(storage, ["+tag@example.org"])
    only_file(plus)


async def test_idn_domain_goes_to_alabel_folder(env: Env) -> None:
    storage = await env.start()
    box = env.make("xn--bcher-kva.example", "user")
    await deliver(storage, ["User@Bücher.example"])
    assert b"Delivered-To: user@xn--bcher-kva.example\n" in only_file(box).read_bytes()


@pytest.mark.parametrize(
    "rcpt",
    [
        ".hidden@example.org",
        "..@example.org",
        "a/b@example.org",
        "john\u00a0doe@example.org",  # PRECIS refuses a non-ASCII space
        "x" * 256 + "@example.org",
        "user@..",
        "user@.example.org",
        "no-at-sign",
    ],
)
async def test_invalid_names_553(env: Env, rcpt: str) -> None:
    storage = await env.start("auto_create yes")
    delivery = await storage.start_delivery(MsgMeta(id="t"), "")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt(rcpt)
    assert (info.value.code, info.value.enhanced) == (553, (5, 1, 3))
    assert info.value.message == "Invalid mailbox name"
    assert os.listdir(env.root) == []


async def test_bare_postmaster_is_unknown(env: Env) -> None:
    storage = await env.start("auto_create yes")
    delivery = await storage.start_delivery(MsgMeta(id="t"), "")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("Postmaster")
    assert (info.value.code, info.value.enhanced) == (550, (5, 1, 1))


async def test_a_mailbox_seen_is_known_for_a_while(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RCPT does not look again at a mailbox it saw moments ago; one removed
    meanwhile fails the message temporarily, and once the window is over
    the recipient is unknown again (docs/storage-maildir.md)."""
    monkeypatch.setattr(maildir_module, "KNOWN_FOR", 0.5)
    storage = await env.start()
    box = env.make("example.org", "user")
    await deliver(storage, ["user@example.org"])
    only_file(box)
    shutil.rmtree(box)
    with pytest.raises(SMTPError) as info:
        await deliver(storage, ["user@example.org"])
    assert (info.value.code, info.value.enhanced) == (451, (4, 3, 0))
    await asyncio.sleep(0.6)
    with pytest.raises(SMTPError) as info:
        await deliver(storage, ["user@example.org"])
    assert (info.value.code, info.value.enhanced) == (550, (5, 1, 1))


async def test_the_known_mailboxes_are_bounded(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """At `KNOWN_MAX` every mailbox seen is still known; one more starts afresh
    (a flood of distinct recipients cannot grow the memory without bound)."""
    monkeypatch.setattr(maildir_module, "KNOWN_MAX", 3)
    storage = await env.start()
    boxes = [f"u{n}@example.org" for n in range(4)]
    for rcpt in boxes:
        env.make("example.org", rcpt.partition("@")[0])
    paths = [str(env.mailbox("example.org", f"u{n}")) for n in range(4)]
    await deliver(storage, boxes[:3])
    assert [storage.known_mailbox(p) for p in paths] == [True, True, True, False]
    await deliver(storage, boxes[3:])
    assert [storage.known_mailbox(p) for p in paths] == [False, False, False, True]


async def test_auto_create_no_refuses_at_rcpt(env: Env) -> None:
    storage = await env.start()
    delivery = await storage.start_delivery(MsgMeta(id="t"), "")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("nobody@example.org")
    assert (info.value.code, info.value.enhanced, info.value.message) == (
        550,
        (5, 1, 1),
        "User does not exist",
    )
    await delivery.abort()
    assert os.listdir(env.root) == []
    # A half-made Maildir is not a mailbox either.
    (env.root / "example.org" / "half" / "new").mkdir(parents=True)
    with pytest.raises(SMTPError):
        await delivery.add_rcpt("half@example.org")


async def test_auto_create_yes_creates_at_rcpt(env: Env) -> None:
    storage = await env.start("auto_create yes")
    await deliver(storage, ["New.User@example.org"])
    box = env.mailbox("example.org", "new.user")
    only_file(box)
    for d in (box.parent, box, box / "tmp", box / "new", box / "cur"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


# --- quarantine ------------------------------------------------------------------


async def test_quarantine_goes_to_junk_folder(env: Env) -> None:
    storage = await env.start()
    box = env.make("example.org", "user")
    await deliver(storage, ["user@example.org"], quarantine=True)
    assert files(box / "new") == []
    junk = box / ".Junk"
    only_file(junk)
    assert (junk / "maildirfolder").read_bytes() == b""
    assert (junk / "cur").is_dir()
    # The folder now exists: a second message just goes there.
    await deliver(storage, ["user@example.org"], quarantine=True)
    assert len(files(junk / "new")) == 2


# --- failures leave nothing behind ---------------------------------------------


async def test_abort_after_body_leaves_nothing(env: Env) -> None:
    storage = await env.start()
    a, b = env.make("example.org", "a"), env.make("example.org", "b")
    buf = await buffer(b"x" * 100_000)
    delivery = await storage.start_delivery(MsgMeta(id="t"), "")
    await delivery.add_rcpt("a@example.org")
    await delivery.add_rcpt("b@example.org")
    await delivery.body(HEAD, buf)
    assert len(files(a / "tmp")) == 1  # prepared, not visible
    assert files(a / "new") == []
    await delivery.abort()
    await delivery.abort()  # repeatable
    for box in (a, b):
        assert files(box / "tmp") == files(box / "new") == []
    buf.remove()


async def test_failure_in_body_removes_every_prepared_file(env: Env) -> None:
    storage = await env.start()
    a, b = env.make("example.org", "a"), env.make("example.org", "b")
    delivery = await storage.start_delivery(MsgMeta(id="t"), "")
    await delivery.add_rcpt("a@example.org")
    await delivery.add_rcpt("b@example.org")
    shutil.rmtree(b / "tmp")  # b breaks between RCPT and DATA
    buf = await buffer(b"body\r\n")
    with pytest.raises(SMTPError) as info:
        await delivery.body(HEAD, buf)
    assert (info.value.code, info.value.enhanced) == (451, (4, 3, 0))
    assert info.value.message == "Local delivery error"
    await delivery.abort()
    assert files(a / "tmp") == files(a / "new") == files(b / "new") == []
    buf.remove()


class StallingBuffer(Buffer):
    """A RAM buffer whose reader blocks until released.

    Lets a test cancel body() while the worker thread is inside the write,
    with a file already in tmp/.
    """

    def __init__(self) -> None:
        super().__init__(spill_at=None, directory="")
        self.reading = threading.Event()
        self.release = threading.Event()

    def open(self) -> BinaryIO:
        inner = super().open()
        outer = self

        class Reader(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, b: Any) -> int:
                outer.reading.set()
                outer.release.wait(10)
                return inner.readinto(b)

        return io.BufferedReader(Reader(), buffer_size=16)


@pytest.mark.parametrize("step", ["body", "body_and_commit"])
async def test_cancelled_body_then_abort_leaves_nothing(env: Env, step: str) -> None:
    """body() or body_and_commit() cancelled while its thread writes: abort
    waits for the thread, and nothing reaches new/ or stays in tmp/."""
    storage = await env.start()
    box = env.make("example.org", "user")
    buf = StallingBuffer()
    await buf.write(b"y" * 1_000_000)
    await buf.finish()
    delivery = await storage.start_delivery(MsgMeta(id="t"), "")
    await delivery.add_rcpt("user@example.org")
    task = asyncio.create_task(getattr(delivery, step)(HEAD, buf))
    assert await asyncio.to_thread(buf.reading.wait, 10)
    assert len(files(box / "tmp")) == 1  # the thread is mid-file
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    aborting = asyncio.create_task(delivery.abort())
    await asyncio.sleep(0.05)
    assert not aborting.done()  # abort waits for the thread before cleaning up
    buf.release.set()
    await aborting
    assert files(box / "tmp") == files(box / "new") == []
    buf.remove()


async def test_an_abort_during_the_files_fsync_keeps_the_message_out_of_new(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread has written everything and sits in fsync when the abort comes:
    it must not go on to publish (the client is being told the message failed)."""
    storage = await env.start()
    box = env.make("example.org", "user")
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if _fd_path(fd).startswith(str(box / "tmp")):
            in_fsync.set()
            release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    buf = await buffer(b"body\r\n")
    delivery = await storage.start_delivery(MsgMeta(id="t"), "")
    await delivery.add_rcpt("user@example.org")
    task = asyncio.create_task(delivery.body_and_commit(HEAD, buf))
    assert await asyncio.to_thread(in_fsync.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    aborting = asyncio.create_task(delivery.abort())
    await asyncio.sleep(0.05)
    release.set()
    await aborting
    assert files(box / "tmp") == files(box / "new") == []
    buf.remove()


async def test_commit_without_body_or_recipients_is_harmless(env: Env) -> None:
    storage = await env.start()
    delivery = await storage.start_delivery(MsgMeta(id="t"), "")
    await delivery.body(HEAD, await buffer(b""))
    await delivery.commit()
    await delivery.abort()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, so the disk really fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


async def test_disk_full_gives_452_431_and_leaves_no_file(env: Env, tmpfs: Path) -> None:
    root = tmpfs / "mail"
    storage = await env.start("auto_create yes", path=str(root))
    await deliver(storage, ["user@example.org"])  # creates the mailbox
    box = root / "example.org" / "user"
    (only_file(box)).unlink()
    with pytest.raises(SMTPError) as info:
        await deliver(storage, ["user@example.org"], b"z" * (512 * 1024))
    err = info.value
    assert (err.code, err.enhanced, err.message) == (452, (4, 3, 1), "Insufficient system storage")
    assert files(box / "tmp") == files(box / "new") == []
    # Space again: the retry goes through.
    await deliver(storage, ["user@example.org"], b"small\r\n")
    only_file(box)


@pytest.mark.parametrize(
    ("code", "reply"),
    [
        (errno.EDQUOT, (452, (4, 2, 2), "Mailbox full")),
        (errno.ENOSPC, (452, (4, 3, 1), "Insufficient system storage")),
        (errno.EIO, (451, (4, 3, 0), "Local delivery error")),
    ],
)
async def test_error_at_fsync_is_mapped(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    reply: tuple[int, Any, str],
    one_step: bool,
) -> None:
    """Quota and I/O errors often surface only at fsync (NFS, delayed allocation)."""
    storage = await env.start()
    box = env.make("example.org", "user")
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(SMTPError) as info:
        await deliver(storage, ["user@example.org"], one_step=one_step)
    assert (info.value.code, info.value.enhanced, info.value.message) == reply
    assert len(calls) == 1  # never retried
    assert files(box / "tmp") == files(box / "new") == []


async def test_a_failed_fsync_of_new_takes_the_copy_back(
    env: Env, monkeypatch: pytest.MonkeyPatch, one_step: bool
) -> None:
    """The link into new/ ran but its directory fsync failed: 451, and the copy is
    not left in new/ for the user to read and the client's retry to duplicate."""
    import kittiwake.storage.maildir_files as files_module

    storage = await env.start()
    box = env.make("example.org", "user")
    real = files_module.sync_dir_shared

    def failing(path: str) -> None:
        if path.endswith("/new"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(path)

    monkeypatch.setattr(files_module, "sync_dir_shared", failing)
    with pytest.raises(SMTPError) as info:
        await deliver(storage, ["user@example.org"], one_step=one_step)
    assert (info.value.code, info.value.enhanced) == (451, (4, 3, 0))
    assert files(box / "tmp") == files(box / "new") == []
    monkeypatch.setattr(files_module, "sync_dir_shared", real)
    await deliver(storage, ["user@example.org"], one_step=one_step)  # the retry: the one copy
    only_file(box)


# --- per-recipient outcomes ------------------------------------------------------


class Statuses:
    def __init__(self) -> None:
        self.seen: dict[str, Exception | None] = {}

    def set_status(self, rcpt: str, error: Exception | None) -> None:
        assert rcpt not in self.seen, f"status set twice for {rcpt}"
        self.seen[rcpt] = error


async def test_body_non_atomic_reports_each_recipient(env: Env) -> None:
    storage = await env.start()
    a, b, c = (env.make("example.org", n) for n in ("a", "b", "c"))
    delivery = await storage.start_delivery(MsgMeta(id="t"), "s@example.net")
    assert isinstance(delivery, PartialDelivery)
    for rcpt in ("a@example.org", "b@example.org", "B+x@example.org", "c@example.org"):
        await delivery.add_rcpt(rcpt)
    shutil.rmtree(b)  # b's mailbox vanishes between RCPT and DATA
    status = Statuses()
    buf = await buffer(b"hello\r\n")
    await delivery.body_non_atomic(status, HEAD, buf)
    assert set(status.seen) == {"b@example.org", "B+x@example.org"}
    for err in status.seen.values():
        assert isinstance(err, SMTPError)
        assert (err.code, err.enhanced) == (451, (4, 3, 0))
    await delivery.commit()
    only_file(a)
    only_file(c)
    assert not b.exists()
    buf.remove()


# --- durability --------------------------------------------------------------


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.parametrize("sync", [True, False])
async def test_fsync_really_called_in_order(
    env: Env, monkeypatch: pytest.MonkeyPatch, sync: bool, one_step: bool
) -> None:
    """fsync(file) < link into new/ < fsync(new/) < commit returns.

    The order of docs/storage-maildir.md, "How delivery is made safe".
    """
    storage = await env.start(f"fsync {'yes' if sync else 'no'}")
    box = env.make("example.org", "user")
    events: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        events.append(("fsync", _fd_path(fd)))
        real_fsync(fd)

    def link(src: str, dst: str, **kw: Any) -> None:
        events.append(("link", dst))
        real_link(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    await deliver(storage, ["user@example.org"], one_step=one_step)
    events.append(("returned", ""))
    final = str(only_file(box))
    if not sync:
        assert events == [("link", final), ("returned", "")]
        return
    kinds = [e[0] for e in events]
    # The file in tmp/ is synced, linked into new/, and new/ is synced
    # before commit returns; tmp/ itself needs no sync.
    assert kinds == ["fsync", "link", "fsync", "returned"]
    assert events[0][1].startswith(str(box / "tmp") + "/")  # the file, still in tmp/
    assert events[2][1] == str(box / "new")


async def test_auto_created_directories_are_synced(
    env: Env, monkeypatch: pytest.MonkeyPatch, one_step: bool
) -> None:
    storage = await env.start("auto_create yes")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(_fd_path(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await deliver(storage, ["user@example.org"], one_step=one_step)
    box = env.mailbox("example.org", "user")
    for parent in (env.root, box.parent, box):
        assert str(parent) in synced


async def test_1000_concurrent_deliveries_give_1000_files(env: Env, way: bool) -> None:
    storage = await env.start()
    box = env.make("example.org", "user")
    await asyncio.gather(
        *(deliver(storage, ["user@example.org"], one_step=way) for _ in range(1000))
    )
    names = os.listdir(box / "new")
    assert len(names) == len(set(names)) == 1000
    assert all(NAME.match(n) for n in names)
    assert files(box / "tmp") == []


# --- the table and configuration ----------------------------------------------


async def test_table_lookup_finds_existing_mailboxes_only(env: Env) -> None:
    storage = await env.start("auto_create yes")
    env.make("example.org", "user")
    assert await storage.lookup("user@example.org") == ""
    assert await storage.lookup("User+tag@Example.org") == ""
    assert await storage.lookup("other@example.org") is None
    assert await storage.lookup(".x@example.org") is None
    assert await storage.lookup("postmaster") is None
    assert not env.mailbox("example.org", "other").exists()  # never creates


async def test_defaults_and_relative_path(env: Env) -> None:
    storage = await env.start(path="")
    state = env.tmp / "state"
    assert storage.path == str(state / "maildir")
    assert stat.S_IMODE((state / "maildir").stat().st_mode) == 0o700
    assert storage.auto_create is False
    assert storage.fsync is True
    storage = await env.start(path="boxes")
    assert storage.path == str(state / "boxes")
    assert (state / "boxes").is_dir()


async def test_path_that_is_a_file_is_a_config_error(env: Env) -> None:
    env.tmp.joinpath("afile").write_text("x")
    container = env.build("", path=str(env.tmp / "afile"))
    with pytest.raises(ConfigError) as info:
        await container.start()
    assert str(info.value).startswith("t.conf:2: storage.maildir: cannot use path")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("fsync maybe", "t.conf:4: fsync:"),
        ("colour blue", "t.conf:4: unexpected directive: colour"),
        ("delivery_agents -1", "t.conf:4: delivery_agents:"),
    ],
)
def test_bad_directives(env: Env, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        env.build(body)
    assert str(info.value).startswith(message)


def test_inline_arguments_refused(tmp_path: Path) -> None:
    text = f"{PROBE} {{\n deliver_to storage.maildir extra\n}}\n"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    with pytest.raises(ConfigError, match="takes no arguments"):
        container.build()


def test_overlapping_commits_share_directory_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: concurrent commits into one new/ need fewer fsyncs than
    commits, and none returns before an fsync that started after its link."""
    import threading
    import time as _time

    from kittiwake import durable

    directory = tmp_path / "new"
    directory.mkdir()
    calls: list[tuple[float, float]] = []
    real = durable.fsync_dir

    def slow_fsync(path: str) -> None:
        started = _time.monotonic()
        _time.sleep(0.02)  # long enough for commits to pile up behind it
        real(path)
        calls.append((started, _time.monotonic()))

    monkeypatch.setattr(durable, "fsync_dir", slow_fsync)
    linked: dict[int, float] = {}
    returned: dict[int, float] = {}

    def commit(i: int) -> None:
        linked[i] = _time.monotonic()
        durable.sync_dir_shared(str(directory))
        returned[i] = _time.monotonic()

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(returned) == 40
    assert len(calls) < 40
    for i in range(40):
        # Some fsync started after this commit's link and ended before it returned.
        assert any(linked[i] <= start and end <= returned[i] for start, end in calls), i


def test_a_failed_shared_fsync_fails_the_commits_it_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kittiwake import durable

    def broken(path: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durable, "fsync_dir", broken)
    with pytest.raises(OSError, match="Input/output error"):
        durable.sync_dir_shared(str(tmp_path))


# --- delivery agents (docs/storage-maildir.md, "Delivery agents") ------------


async def agent_storage(env: Env, body: str = "") -> MaildirStorage:
    env.agents = True
    storage = await env.start(body)
    assert storage.agents is not None
    return storage


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_agents_start_when_needed_and_stop_with_the_storage(env: Env) -> None:
    storage = await agent_storage(env)
    pool = storage.agents
    assert pool is not None and pool.running == 0  # an idle server has none
    box = env.make("example.org", "user")
    await deliver(storage, ["user@example.org"], one_step=True)
    assert pool.running == 1
    (pid,) = pool.pids()
    assert pid != os.getpid() and alive(pid)
    await deliver(storage, ["user@example.org"], one_step=True)
    assert pool.pids() == [pid]  # reused
    names = files(box / "new")
    assert len(names) == 2
    m = NAME.match(names[0].name)
    assert m is not None and m["pid"] == str(pid)  # written by the agent
    await env.containers.pop().stop()
    assert not alive(pid)


async def test_agents_are_bounded_and_serve_everyone(env: Env) -> None:
    storage = await agent_storage(env, "delivery_agents 2")
    box = env.make("example.org", "user")
    await asyncio.gather(
        *(deliver(storage, ["user@example.org"], one_step=True) for _ in range(40))
    )
    assert storage.agents is not None and storage.agents.running == 2
    assert len(files(box / "new")) == 40 and files(box / "tmp") == []


async def test_agent_writes_a_spilled_body_and_a_new_junk_mailbox(env: Env, tmp_path: Path) -> None:
    """A body on disk is read by the agent from its file; auto_create and the
    .Junk folder happen there too, and the server logs the new mailbox."""
    storage = await agent_storage(env, "auto_create yes")
    body = b"".join(b"line %d\r\n" % i for i in range(60_000))  # 600 KiB: several chunks
    buf = await buffer(body, directory=tmp_path)
    assert buf.path is not None
    delivery = await storage.start_delivery(MsgMeta(id="big", quarantine=True), "s@example.net")
    await delivery.add_rcpt("new@example.org")
    await delivery.body_and_commit(HEAD, buf)
    buf.remove()
    junk = env.mailbox("example.org", "new") / ".Junk"
    path = only_file(junk)
    content = path.read_bytes()
    assert content.endswith(body.replace(b"\r\n", b"\n"))
    m = NAME.match(path.name)
    assert m is not None and int(m["s"]) == len(content) and int(m["w"]) == vsize(content)
    assert (junk / "maildirfolder").exists()


async def test_agent_disk_full_gives_452_and_leaves_no_file(env: Env, tmpfs: Path) -> None:
    env.agents = True
    root = tmpfs / "mail"
    storage = await env.start("auto_create yes", path=str(root))
    await deliver(storage, ["user@example.org"], one_step=True)
    box = root / "example.org" / "user"
    only_file(box).unlink()
    with pytest.raises(SMTPError) as info:
        await deliver(storage, ["user@example.org"], b"z" * (512 * 1024), one_step=True)
    err = info.value
    assert (err.code, err.enhanced, err.message) == (452, (4, 3, 1), "Insufficient system storage")
    assert "No space left" in err.reason
    assert files(box / "tmp") == files(box / "new") == []
    await deliver(storage, ["user@example.org"], b"small\r\n", one_step=True)
    only_file(box)


class Fifo:
    """A body the agent reads from a FIFO, so a test decides when it gets it."""

    def __init__(self, tmp: Path, data: bytes) -> None:
        self.path = tmp / "body.fifo"
        os.mkfifo(self.path)
        self.data = data
        self.writer: BinaryIO | None = None

    def buffer(self) -> Buffer:
        return Buffer.from_file(str(self.path), len(self.data))

    async def wait_for_reader(self) -> None:
        """Returns once the agent has opened the FIFO (it is inside the job)."""
        self.writer = await asyncio.to_thread(open, self.path, "wb")

    async def finish(self) -> None:
        assert self.writer is not None
        writer, data = self.writer, self.data

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError), writer:
                writer.write(data)

        await asyncio.to_thread(feed)


async def held_in_agent(
    storage: MaildirStorage, fifo: Fifo, msg_id: str
) -> tuple[MaildirDelivery, asyncio.Future[None], int]:
    """A one-step delivery whose agent is inside the job, reading the FIFO:
    the delivery, its task and the agent's pid."""
    assert storage.agents is not None
    delivery = await storage.start_delivery(MsgMeta(id=msg_id), "s@example.net")
    await delivery.add_rcpt("user@example.org")
    task = asyncio.ensure_future(delivery.body_and_commit(HEAD, fifo.buffer()))
    await fifo.wait_for_reader()
    (pid,) = storage.agents.pids()
    return delivery, task, pid


async def cancelled(task: asyncio.Future[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_killed_agent_fails_its_delivery_with_451_and_is_replaced(
    env: Env, tmp_path: Path
) -> None:
    live = metrics.LiveMetrics()
    metrics.install(live)
    try:
        await _killed_agent(env, tmp_path, live)
    finally:
        metrics.install(None)


async def _killed_agent(env: Env, tmp_path: Path, live: metrics.LiveMetrics) -> None:
    storage = await agent_storage(env)
    agents = {"storage": "local_mailboxes"}
    assert live.registry.get_sample_value("kittiwake_maildir_agents", agents) == 0
    pool = storage.agents
    assert pool is not None
    box = env.make("example.org", "user")
    fifo = Fifo(tmp_path, b"Hi.\r\n")
    _, task, pid = await held_in_agent(storage, fifo, "k")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(SMTPError) as info:
        await task
    assert (info.value.code, info.value.enhanced) == (451, (4, 3, 0))
    assert "agent lost" in info.value.reason
    await fifo.finish()
    assert pool.running == 0
    await deliver(storage, ["user@example.org"], one_step=True)  # a new agent
    assert pool.running == 1 and pool.pids() != [pid]
    # As after a crash: the killed agent's tmp/ file stays (swept after 36 h).
    assert len(files(box / "new")) == 1 and len(files(box / "tmp")) == 1
    assert live.registry.get_sample_value("kittiwake_maildir_agents_lost_total", agents) == 1
    assert live.registry.get_sample_value("kittiwake_maildir_agents", agents) == 1


async def test_a_cancelled_agent_delivery_publishes_nothing(env: Env, tmp_path: Path) -> None:
    """As with the threads: a cancel before the link keeps the message out of
    new/, abort() returns once the agent has cleaned up, and the agent is reused."""
    storage = await agent_storage(env)
    pool = storage.agents
    assert pool is not None
    box = env.make("example.org", "user")
    fifo = Fifo(tmp_path, b"x" * (600 * 1024))  # more than one chunk
    delivery, task, pid = await held_in_agent(storage, fifo, "c")
    await cancelled(task)
    feeding = asyncio.ensure_future(fifo.finish())
    await delivery.abort()
    await feeding
    await pool.wait_idle()  # the agent has answered: it removed its own files
    assert files(box / "new") == [] and files(box / "tmp") == []
    await deliver(storage, ["user@example.org"], one_step=True)
    assert pool.pids() == [pid]  # the same agent, free again
    only_file(box)


async def test_two_step_deliveries_stay_on_the_threads(env: Env) -> None:
    """Only the one-step delivery goes to an agent (the storage is the
    message's only target); body() and commit() run in this process."""
    storage = await agent_storage(env)
    box = env.make("example.org", "user")
    await deliver(storage, ["user@example.org"])
    assert storage.agents is not None and storage.agents.running == 0
    path = only_file(box)
    m = NAME.match(path.name)
    assert m is not None and m["pid"] == str(os.getpid())


async def test_a_large_body_in_memory_stays_on_the_threads(env: Env) -> None:
    """`buffer ram` can hold tens of megabytes: one past AGENT_COPY_MAX is not
    copied to an agent, one of exactly AGENT_COPY_MAX is."""
    storage = await agent_storage(env)
    pool = storage.agents
    assert pool is not None
    box = env.make("example.org", "user")
    big = b"y" * (maildir_module.AGENT_COPY_MAX + 1)
    await deliver(storage, ["user@example.org"], big, one_step=True)
    assert pool.running == 0
    path = only_file(box)
    assert path.read_bytes().endswith(big)
    m = NAME.match(path.name)
    assert m is not None and m["pid"] == str(os.getpid())
    path.unlink()
    at_limit = b"y" * maildir_module.AGENT_COPY_MAX
    await deliver(storage, ["user@example.org"], at_limit, one_step=True)
    assert pool.running == 1
    path = only_file(box)
    assert path.read_bytes().endswith(at_limit)
    m = NAME.match(path.name)
    assert m is not None and m["pid"] == str(pool.pids()[0])


async def test_idle_agents_retire(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maildir_agents, "IDLE_EXIT", 0.3)
    storage = await agent_storage(env)
    pool = storage.agents
    assert pool is not None
    env.make("example.org", "user")
    await asyncio.gather(*(deliver(storage, ["user@example.org"], one_step=True) for _ in range(6)))
    pids = pool.pids()
    assert pids
    for _ in range(100):
        if pool.running == 0 and not any(alive(pid) for pid in pids):
            break
        await asyncio.sleep(0.05)
    assert pool.running == 0 and not any(alive(pid) for pid in pids)
    await deliver(storage, ["user@example.org"], one_step=True)  # a new one starts
    assert pool.running == 1


async def test_stop_kills_an_agent_stuck_in_a_request(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled disk (here: a body that never comes) must not keep the server
    from stopping, nor leave the agent behind."""
    monkeypatch.setattr(maildir_agents, "STOP_WAIT", 0.5)
    storage = await agent_storage(env)
    pool = storage.agents
    assert pool is not None
    env.make("example.org", "user")
    fifo = Fifo(tmp_path, b"never sent")
    _, task, pid = await held_in_agent(storage, fifo, "s")
    await cancelled(task)
    await asyncio.wait_for(env.containers.pop().stop(), 10)
    assert not alive(pid)
    assert fifo.writer is not None
    with contextlib.suppress(BrokenPipeError):
        fifo.writer.close()


async def test_agents_keep_no_inherited_descriptor(env: Env) -> None:
    """A descriptor the server inherited without close-on-exec is not the agent's."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        storage = await agent_storage(env)
        env.make("example.org", "user")
        await deliver(storage, ["user@example.org"], one_step=True)
        assert storage.agents is not None
        (pid,) = storage.agents.pids()
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        assert fds[:3] == [0, 1, 2] and len(fds) == 4  # and its socket
    finally:
        os.close(r)
        os.close(w)


async def test_stop_kills_an_agent_that_does_not_exit(env: Env) -> None:
    """An idle agent that cannot see its socket close (stopped) is killed
    after EXIT_WAIT, not waited for."""
    storage = await agent_storage(env)
    env.make("example.org", "user")
    await deliver(storage, ["user@example.org"], one_step=True)
    assert storage.agents is not None
    (pid,) = storage.agents.pids()
    os.kill(pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await env.containers.pop().stop()
    assert loop.time() - started < maildir_agents.EXIT_WAIT + 2
    assert not alive(pid)
