"""Run the real `kittiwake` process for end-to-end tests, and talk to it.

`Kittiwake` starts `python tests/e2e/launcher.py run -c CONF` (the real
command, plus test-only modules), waits for its readiness lines and kills it
at the end. `Dialog` is a raw-socket client for byte-exact exchanges.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "launcher.py"
ROOT = HERE.parent.parent
SRC = ROOT / "src"
READY = "kittiwake: listening on "
#: Run as root without the capabilities that bypass file permissions
#: (util-linux's setpriv), so a mode-0 folder stops the server as it would
#: stop an unprivileged one: the tests run as root in CI.
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
WAIT = 20.0
#: Where tools are looked for: PATH, then the sbin folders a non-root PATH
#: often lacks (haproxy, dovecot and Postfix's tools live there on Debian).
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def need_tool(tool: str, package: str) -> str:
    """The path of `tool`, which `.ci/run` installs from Debian package `package`.

    Without it the test fails rather than skips: a skip would report a
    clean run while the feature the tool checks went untested.
    """
    found = shutil.which(tool, path=TOOL_PATH)
    if found is None:
        pytest.fail(
            f"{tool} is missing: install it: .ci/run installs Debian package {package}",
            pytrace=False,
        )
    return found


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "KITTIWAKE_CONFIG"}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), e.get("PYTHONPATH")) if p)
    e.update(extra)
    return e


def bench_build() -> Any:
    """`bench/build.py`, which builds kittiwake as `pip install .` does
    (test_compiled.py) and copies what a build reads (test_wheel.py)."""
    spec = importlib.util.spec_from_file_location("bench_build", ROOT / "bench" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One `kittiwake run ARGS...` process (through the test launcher).

    Its stdout is read line by line in a thread (readiness lines), its
    stderr (the log) goes to a file in `workdir`.
    """

    def __init__(
        self,
        workdir: Path,
        args: list[str],
        environ: dict[str, str] | None = None,
        *,
        unprivileged: bool = False,
    ) -> None:
        """`unprivileged`: file permissions apply to the server even as root."""
        self.workdir = workdir
        self.stderr_path = workdir / f"stderr-{time.monotonic_ns()}.log"
        prefix = UNPRIVILEGED if unprivileged and os.geteuid() == 0 else []
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, str(LAUNCHER), "run", *args],
                cwd=workdir,
                env=environ or env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.stdout: list[str] = []  # every stdout line read so far
        self.addresses: list[str] = []  # from the readiness lines

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    log = stderr

    def wait_ready(self, count: int = 1, timeout: float = WAIT) -> list[str]:
        """The listening addresses, once `count` readiness lines have come."""
        deadline = time.monotonic() + timeout
        while len(self.addresses) < count:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no readiness line; log:\n{self.log}") from None
            if line is None:
                self.proc.wait(WAIT)
                raise AssertionError(
                    f"exited with {self.proc.returncode} before ready; log:\n{self.log}"
                )
            self.stdout.append(line)
            if line.startswith(READY):
                self.addresses.append(line[len(READY) :])
        return list(self.addresses)

    def port(self, index: int = 0) -> int:
        return int(self.addresses[index].rsplit(":", 1)[1])

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def wait_log(self, pattern: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log)
            if found:
                return found.group(0)
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not logged; log:\n{self.log}")
            time.sleep(0.02)


class Kittiwake(ServerProcess):
    """A server started from configuration text (written to kittiwake.conf)."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        args: tuple[str, ...] = (),
        unprivileged: bool = False,
        environ: dict[str, str] | None = None,
    ) -> None:
        """`environ`: the server's whole environment (`env(...)`), if not the default."""
        self.config_path = workdir / "kittiwake.conf"
        self.config_path.write_text(config)
        super().__init__(
            workdir, ["-c", str(self.config_path), *args], environ, unprivileged=unprivileged
        )


class Dialog:
    """A raw SMTP client: send bytes, read whole replies."""

    def __init__(
        self, port: int, *, host: str = "127.0.0.1", timeout: float = WAIT, source: str = ""
    ) -> None:
        """`source`: the client address to connect from (127.0.0.2, ...)."""
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; pending {self._buf!r}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def reply(self) -> list[str]:
        """One whole (possibly multi-line) reply."""
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self.line())
        return lines

    def cmd(self, text: str) -> str:
        """Send one command line; return the last line of its reply."""
        self.send(text.encode() + b"\r\n")
        return self.reply()[-1]

    def closed(self) -> bool:
        """True once the server has closed the connection (after any pending data)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self._buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        assert isinstance(self.sock, socket.socket)
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Dialog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A `limits` decision its shared store could not make, `fail_closed` (docs/state.md).
NO_LIMITS = "451 4.4.5 Sending limits cannot be checked now, try again later"


def rcpt_reply(port: int) -> str:
    """MAIL and RCPT on a fresh session: the RCPT's reply (where the limits are
    taken, `defer_sender_reject` being on), or MAIL's if MAIL was refused."""
    with Dialog(port) as d:
        assert d.reply()[-1].startswith("220 ")
        assert d.cmd("EHLO client.example").startswith("250 ")
        mail = d.cmd("MAIL FROM:<a@example.com>")
        if not mail.startswith("250 "):
            return mail
        return d.cmd("RCPT TO:<b@example.com>")


def maildir_files(root: Path, domain: str, user: str) -> list[Path]:
    """The delivered files, oldest first.

    By modification time, not by name: the microseconds in a Maildir name
    are not zero-padded, so two deliveries in one second can sort wrong.
    """
    new = root / domain / user / "new"
    if not new.is_dir():
        return []
    dated = []
    for path in new.iterdir():
        try:
            dated.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:
            continue  # moved to cur/ meanwhile (a mail reader)
    return [path for _, _, path in sorted(dated)]


def in_parallel(*calls: Callable[[], Any], timeout: float = 60.0) -> list[Any]:
    """Run each call in its own thread at once; their results in order.

    The first error a call raised is raised again once all have ended (or
    `timeout` seconds passed for each).
    """
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            results[index] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    return results
