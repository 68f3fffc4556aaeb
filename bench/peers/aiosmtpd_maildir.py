"""aiosmtpd with a handler that delivers durably into one Maildir.

The Python baseline for kittiwake's `storage.maildir`: the 250 is sent only
after the message is on disk, the way kittiwake and Postfix's `virtual(8)`
do it. For each message the handler

1. writes it to a new file in `tmp/` (CR LF turned into LF, the Maildir
   convention) and fsyncs the file,
2. renames it into `new/`,
3. fsyncs `new/` so the rename itself survives a crash,

and only then returns `250`. The file work runs on a thread pool of
`--threads` workers (16 by default, the size kittiwake's `storage.maildir`
uses), so concurrent sessions share journal commits instead of queueing
behind one another on the event loop: the peer is given the same advantage
kittiwake has. Run by `bench/smtp.py` as
`python bench/peers/aiosmtpd_maildir.py --port PORT --maildir DIR`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import sys
import time

from _serve import HOSTNAME, parse_args, serve
from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirWriter:
    def __init__(self, root: str, threads: int) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="maildir")
        self.counter = itertools.count()
        self.pid = os.getpid()

    def deliver(self, content: bytes) -> None:
        now = time.time()
        micro = int(now * 1e6) % 1_000_000
        name = f"{int(now)}.M{micro}P{self.pid}Q{next(self.counter)}.{HOSTNAME}"
        tmp = os.path.join(self.root, "tmp", name)
        new_dir = os.path.join(self.root, "new")
        data = content.replace(b"\r\n", b"\n")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(new_dir, name))
        dir_fd = os.open(new_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.pool, self.deliver, content)
        except OSError as exc:
            return f"451 4.3.0 Delivery failed: {exc.strerror}"
        return "250 2.0.0 OK: delivered"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    if not args.maildir:
        sys.exit("aiosmtpd_maildir: --maildir is required")
    return serve(MaildirWriter(args.maildir, args.threads), args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
