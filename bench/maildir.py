"""Maildir deliveries per second through the real `storage.maildir` module.

Run as `python bench/maildir.py [--count N] [--size BYTES] [--dir DIR]
[--pool-sizes 1,4,16]`. Each delivery is the full transaction an endpoint
runs: `start_delivery`, `add_rcpt`, `body` (with a real `Buffer`), `commit`.
Figures are printed for 1 and 50 concurrent deliveries, with fsync on (what
production runs) and off (to show what durability costs). `--pool-sizes`
sweeps the worker pool size, which is how `POOL_SIZE` was chosen.

The Maildir is created in a temporary directory under `--dir` (default: the
system temporary directory); its file system is printed, because the
figures mean nothing without it (tmpfs ignores fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from kittiwake.config.node import Node
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.storage import maildir
from kittiwake.targets.base import DeliveryTarget

RCPT = "user@example.org"


def file_system(path: str) -> str:
    """`DEVICE TYPE (mounted on MOUNT)` of the mount holding `path`."""
    best = ("?", "?", "")
    real = os.path.realpath(path)
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            dev, mnt, kind, *_ = line.split()
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best[2]):
                best = (dev, kind, mnt)
    return f"{best[0]} {best[1]} (mounted on {best[2]})"


def message(size: int) -> tuple[Header, bytes]:
    header = Header()
    header.add("Subject", "benchmark")
    header.add("From", "sender@example.net")
    line = b"x" * 70 + b"\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return header, body


async def deliver(target: DeliveryTarget, header: Header, body: bytes, n: int) -> None:
    buf = Buffer.ram()
    await buf.write(body)
    await buf.finish()
    delivery = await target.start_delivery(MsgMeta(id=f"bench{n}"), "sender@example.net")
    try:
        await delivery.add_rcpt(RCPT)
        await delivery.body(header, buf)
        await delivery.commit()
    except BaseException:
        await delivery.abort()
        raise
    finally:
        buf.remove()


async def run_once(root: str, *, fsync: bool, concurrency: int, count: int, size: int) -> float:
    """Deliveries per second for one configuration, in a fresh Maildir."""
    path = os.path.join(root, f"md-{fsync}-{concurrency}-{maildir.POOL_SIZE}")
    conf = f"storage.maildir local {{\n path {path}\n auto_create yes\n fsync {fsync}\n}}\n"
    container = Container(parse_text(conf, "bench.conf"), cwd=root)
    container.parse_globals()
    target = container.module_from_node(Node("deliver_to", ["&local"]), DeliveryTarget, "target")
    await container.start()
    header, body = message(size)
    try:
        await deliver(target, header, body, -1)  # creates the mailbox
        counter = iter(range(count))

        async def worker() -> None:
            for n in counter:
                await deliver(target, header, body, n)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await container.stop()
    delivered = len(os.listdir(os.path.join(path, "example.org", "user", "new")))
    assert delivered == count + 1, f"expected {count + 1} files, found {delivered}"
    shutil.rmtree(path)
    return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="deliveries per run")
    parser.add_argument("--size", type=int, default=10 * 1024, help="body size in bytes")
    parser.add_argument("--dir", default=None, help="where to create the Maildir")
    parser.add_argument("--pool-sizes", default="", help="comma-separated pool sizes to sweep")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="kw-maildir-bench-", dir=args.dir)
    try:
        print(f"file system: {file_system(root)}; cpus: {os.cpu_count()}")
        print(f"message: {args.size} bytes body, {args.count} deliveries per run")
        if args.pool_sizes:
            for pool in (int(p) for p in args.pool_sizes.split(",")):
                maildir.POOL_SIZE = pool
                rate = await run_once(
                    root, fsync=True, concurrency=50, count=args.count, size=args.size
                )
                print(f"pool {pool:3d} threads, fsync on, 50 concurrent: {rate:8.0f} /s")
            return
        print(f"pool: {maildir.POOL_SIZE} threads")
        for fsync in (True, False):
            for concurrency in (1, 50):
                rate = await run_once(
                    root, fsync=fsync, concurrency=concurrency, count=args.count, size=args.size
                )
                state = "on " if fsync else "off"
                print(f"fsync {state}, {concurrency:2d} concurrent: {rate:8.0f} deliveries/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
