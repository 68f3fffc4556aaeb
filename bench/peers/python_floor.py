"""The floor of a Python SMTP server: the least protocol work, on uvloop.

Not a mail server: one `asyncio.Protocol` that answers each command line as
soon as it is cut, finds the end of DATA with one `find` per read and keeps
nothing; no checks, no limits, no logging, no message object. It shows what
the event loop, the interpreter and the kernel cost per message on this
machine, so that the gap between it and kittiwake is known to be
kittiwake's own work (bench/smtp.py, `--only ...,python-floor`). Run as
`python bench/peers/python_floor.py --port PORT`; it listens and prints
its ready line as the aiosmtpd peers do (`_serve.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import cast

import uvloop
from _serve import serve_protocol  # the same listener and ready line as the aiosmtpd peers

GREETING = b"220 bench.test ESMTP floor\r\n"
EHLO = b"250-bench.test\r\n250-8BITMIME\r\n250 SIZE 67108864\r\n"
OK = b"250 2.0.0 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = b"221 2.0.0 Bye\r\n"
END = b"\r\n.\r\n"


class Floor(asyncio.Protocol):
    """One connection; replies to one read go out in one write."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        closing = False
        while not closing:
            if self.in_data:
                end = buf.find(END)
                if end < 0:
                    # Keep only what could be the start of the end marker.
                    del buf[: max(0, len(buf) - len(END) + 1)]
                    break
                del buf[: end + len(END)]
                self.in_data = False
                out.append(OK)
                continue
            nl = buf.find(b"\n")
            if nl < 0:
                break
            verb = bytes(buf[:4]).upper()
            del buf[: nl + 1]
            if verb in (b"EHLO", b"HELO"):
                out.append(EHLO)
            elif verb == b"DATA":
                self.in_data = True
                buf[:0] = b"\r\n"  # the end marker may come right away
                out.append(GO_AHEAD)
            elif verb == b"QUIT":
                out.append(BYE)
                closing = True
            else:
                out.append(OK)
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if closing:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    await serve_protocol(Floor, host, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
