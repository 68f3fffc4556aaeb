"""Postfix's `smtp-sink` as a downstream server with faults (tests only).

`Sink(options)` starts `/usr/sbin/smtp-sink` on a free loopback port with
the given fault options (`-f RCPT`, `-W RCPT:10`, `-q .`, ...; see
`man smtp-sink`), dumping each transaction into its own file under a
directory of its own (`-d`), and kills it on `close()`. As root it drops
to `nobody` (`-u`), which the dump directory is opened to.

`transactions()` reads the dumps back: smtp-sink records the MAIL and RCPT
arguments it received (`X-Mail-Args`, `X-Rcpt-Args`) above the message,
which is how a test sees exactly which ESMTP parameters went out.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kw import free_port, need_tool

WAIT = 20.0


@dataclass
class Transaction:
    mail_args: str
    rcpt_args: list[str]
    message: bytes


class Sink:
    def __init__(self, *options: str, port: int | None = None) -> None:
        """`port`: where to listen (default a free one): a sink replaced by
        another with other faults keeps its clients' address."""
        tool = need_tool("smtp-sink", "postfix")
        self.port = port or free_port()
        self.dump = Path(tempfile.mkdtemp(prefix="kw-sink-"))
        self.dump.chmod(0o777)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [tool, *user, *options, "-d", f"{self.dump}/%H%M%S.", f"127.0.0.1:{self.port}", "32"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"smtp-sink exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _open_dumps(self) -> set[str]:
        """The dump files smtp-sink still has open (being written)."""
        fds = Path(f"/proc/{self.proc.pid}/fd")
        names = set()
        try:
            for fd in fds.iterdir():
                try:
                    names.add(os.readlink(fd))
                except OSError:
                    continue
        except OSError:
            pass
        return names

    def transactions(self) -> list[Transaction]:
        """The finished dumps, oldest first.

        A dump smtp-sink still has open is half written (its buffered header
        lines may not be on disk yet), so it is left for the next look: the
        directory is listed before the open files, so a dump not open then
        was closed before being read.
        """
        paths = list(self.dump.iterdir())
        writing = self._open_dumps()
        done = [p for p in paths if str(p) not in writing]
        out = []
        for path in sorted(done, key=lambda p: p.stat().st_mtime_ns):
            head, _, message = path.read_bytes().partition(b"\nReceived: ")
            lines = head.decode("utf-8", "replace").splitlines()
            mail = next(line[13:] for line in lines if line.startswith("X-Mail-Args: "))
            rcpts = [line[13:] for line in lines if line.startswith("X-Rcpt-Args: ")]
            out.append(Transaction(mail, rcpts, b"Received: " + message))
        return out

    def wait_transactions(self, count: int) -> list[Transaction]:
        """smtp-sink closes a dump file at the end of the data; wait for `count`."""
        deadline = time.monotonic() + WAIT
        while True:
            found = self.transactions()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def close(self) -> None:
        """Kill it and remove its dumps; again is a no-op."""
        if not self.dump.exists():
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        for path in self.dump.iterdir():
            path.unlink()
        self.dump.rmdir()
