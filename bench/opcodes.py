"""Where a message's work goes: bytecodes executed per function, counted.

Run as `python bench/opcodes.py [--per-session N] [--messages N]
[--top N] [--lines]`.

`bench/instructions.py` says how much work a message costs the server;
this says where it goes. It builds the kittiwake-discard configuration of
`bench/smtp.py` in this process, drives real sessions (the endpoint's own
`Session` objects and everything behind them) over an in-memory transport
that stands for the socket (EHLO, MAIL, RCPT, DATA, a 10 KiB message, QUIT),
and counts with `sys.settrace` every bytecode each function executes. The
counts are exact and repeat from run to run; at about 95 instructions per
bytecode (docs/bench.md) they rank the parts of the hot path without a
timer. What this process itself adds (the transport stand-in, the driver)
is shown like the rest, under this file's name; the event loop is
uvloop's, as in the server, so its work is not counted (it is C). A
dataclass's generated `__init__` is shown under its class's name.
`--lines` counts per source line instead of per function. It counts the
pure-Python build (src/ as it stands): in the compiled build that
`pip install .` makes (docs/performance.md) the message path has no
bytecode left to count, and only what stays Python shows.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import kittiwake.modules  # noqa: E402, F401  (registers every module)
from kittiwake import log  # noqa: E402
from kittiwake.config.parser import parse_text  # noqa: E402
from kittiwake.container import Container  # noqa: E402

#: As `bench/smtp.py`'s kittiwake-discard, but logging to a file in the
#: temporary directory: its lines are part of a message's work.
CONFIG = """hostname bench.test
state_dir {state}
log {state}/kittiwake.log
smtp tcp://127.0.0.1:0 {{
    tls off
    deliver_to dummy
}}
"""
BODY = (
    b"From: sender@bench.test\r\nTo: user@bench.test\r\nSubject: bench\r\n\r\n"
    + (b"x" * 78 + b"\r\n") * 128
)


class Transport:
    """What a session needs of its socket's transport: writes are kept."""

    def __init__(self, wrote: asyncio.Event) -> None:
        self.wrote = wrote
        self.out: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 25)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.wrote.set()

    def close(self) -> None:
        self.closed = True
        self.wrote.set()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def session(make: Any, per: int) -> None:
    """One client session of `per` messages, each command sent once its
    reply came (as smtp-source does)."""
    wrote = asyncio.Event()
    transport = Transport(wrote)
    s = make(set(), False, None)
    s.connection_made(transport)

    async def step(data: bytes) -> bytes:
        wrote.clear()
        transport.out.clear()
        if data:
            s.data_received(data)
        while not transport.out and not transport.closed:
            await wrote.wait()
            wrote.clear()
        return b"".join(transport.out)

    await step(b"")
    await step(b"EHLO client.bench.test\r\n")
    for _ in range(per):
        await step(b"MAIL FROM:<sender@bench.test>\r\n")
        await step(b"RCPT TO:<user@bench.test>\r\n")
        await step(b"DATA\r\n")
        reply = await step(BODY + b".\r\n")
        if not reply.startswith(b"250"):
            raise SystemExit(f"message refused: {reply!r}")
    await step(b"QUIT\r\n")
    s.connection_lost(None)
    await s.task


Counts = collections.Counter[str]


def _counter(counts: Counts, lines: bool) -> Any:
    prefixes = (
        str(ROOT / "src" / "kittiwake") + "/",  # kittiwake's own: server/session.py
        str(Path(asyncio.__file__).parent.parent) + "/",  # the standard library's
        str(ROOT) + "/",  # this file
    )

    def where(frame: FrameType) -> str:
        code = frame.f_code
        if code.co_filename == "<string>":  # a dataclass's generated method: say whose
            return f"{type(frame.f_locals.get('self')).__name__}.{code.co_name} (dataclass)"
        name = code.co_filename
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        return f"{name}:{frame.f_lineno}" if lines else f"{name}:{code.co_name}"

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            counts[where(frame)] += 1
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if event != "call":
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    return tracer


async def count(per: int, messages: int, lines: bool) -> tuple[Counts, int]:
    """Bytecodes per function (or line) over `messages` messages, and how many were sent."""
    with tempfile.TemporaryDirectory(prefix="kw-opcodes-") as state:
        container = Container(parse_text(CONFIG.format(state=state), "bench.conf"), cwd=state)
        container.build()
        g = container.globals
        log.configure(g.log, fmt=g.log_format, debug=g.debug)  # as `kittiwake run` does
        log.attach_loop(asyncio.get_running_loop())
        await container.start()
        try:
            endpoint = container.endpoints[0]
            make = endpoint.listener._make_session  # the listener's own factory
            for _ in range(3):  # warm: caches, first lookups
                await session(make, per)
            gc.collect()
            counts: Counts = collections.Counter()
            sessions = max(1, messages // per)
            sys.settrace(_counter(counts, lines))
            try:
                for _ in range(sessions):
                    await session(make, per)
            finally:
                sys.settrace(None)
        finally:
            await container.stop()
            log.attach_loop(None)
            log.configure(["stderr"])
    return counts, sessions * per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-session", type=int, default=20, help="messages per session")
    parser.add_argument("--messages", type=int, default=200, help="messages counted")
    parser.add_argument("--top", type=int, default=40, help="rows shown")
    parser.add_argument("--lines", action="store_true", help="per source line, not per function")
    args = parser.parse_args()
    work = count(args.per_session, args.messages, args.lines)
    try:  # the server's own event loop when it has it (docs/cli.md): C, not traced
        import uvloop
    except ImportError:
        counts, sent = asyncio.run(work)
    else:
        counts, sent = uvloop.run(work)
    total = sum(counts.values())
    print(
        f"{total / sent:,.0f} bytecodes per message "
        f"({sent} messages, {args.per_session} per session, 10 KiB)"
    )
    for where, n in counts.most_common(args.top):
        print(f"{n / sent:9,.1f}  {100 * n / total:5.1f} %  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
