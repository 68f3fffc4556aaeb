"""What both aiosmtpd peers share: the command line, the listener and the ready line.

Each peer is a separate process started by `bench/smtp.py`, so it gets a
core of its own the way kittiwake does. It runs aiosmtpd as its README
shows (`SMTP(handler)` under `loop.create_server`) on the stock asyncio
event loop, with two settings changed for fairness: the hostname is given
(otherwise each connection calls `socket.getfqdn()`), and the size limit
is raised so the 32 MiB test message fits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

from aiosmtpd.smtp import SMTP

READY = "aiosmtpd: listening on "
HOSTNAME = "bench.test"
SIZE_LIMIT = 64 * 1024 * 1024  # bytes: room for the 32 MiB memory test


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", help="Maildir to deliver into (maildir peer only)")
    parser.add_argument(
        "--threads", type=int, default=16, help="file-writing threads (maildir peer only)"
    )
    return parser.parse_args(argv)


async def _serve(handler: object, host: str, port: int) -> None:
    await serve_protocol(
        lambda: SMTP(handler, hostname=HOSTNAME, data_size_limit=SIZE_LIMIT), host, port
    )


async def serve_protocol(factory: Callable[[], asyncio.BaseProtocol], host: str, port: int) -> None:
    """Serve `factory`'s protocols until SIGTERM or SIGINT; the ready line once bound."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host=host, port=port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"{READY}{host}:{port}\n")
    sys.stdout.flush()
    async with server:
        await stop.wait()


def serve(handler: object, host: str, port: int) -> int:
    """Serve until SIGTERM or SIGINT; the ready line goes to stdout once bound."""
    asyncio.run(_serve(handler, host, port))
    return 0
