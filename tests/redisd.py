"""A private `redis-server` on a loopback port, for the tests of shared state.

`RedisServer` starts the real server (Debian package `redis-server`; `.ci/run`
installs it, its system service is never started) in the foreground with
no persistence (`--save ''`, `--appendonly no`), in a work directory, and
waits until it answers PING. `kill()` stops it at once (SIGKILL, as a
crash would), `start()` brings it back on the same port, empty: that is
how the tests make Redis unreachable and then reachable again.

`RedisServer(..., args=["--replicaof", ...])` makes a replica, and
`RedisSentinel` runs the same binary as a Sentinel (`--sentinel`) watching
one master with short timeouts, so a test can kill the master and see a
replica promoted within seconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

#: Where tools are looked for: PATH, then the sbin folders.
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
WAIT = 20.0


def redis_server_path() -> str:
    """The server binary; a missing one fails the test and names the package.

    As `kw.need_tool` does: a skip would report a clean run while shared
    state went untested.
    """
    found = shutil.which("redis-server", path=TOOL_PATH)
    if found is None:
        pytest.fail(
            "redis-server is missing: install it: .ci/run installs Debian package redis-server",
            pytrace=False,
        )
    return found


def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    """Poll `check` until it holds; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not in time: {what}"
        time.sleep(0.1)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1:`port`."""

    def __init__(
        self,
        workdir: Path,
        port: int = 0,
        *,
        tls: tuple[str, str] | None = None,
        args: list[str] | None = None,
        password: str = "",
        tls_ca: str = "",
    ) -> None:
        """`tls`: (certificate, key) files; Redis then also listens with TLS
        on `tls_port` (the plain port stays, for the tests' own peeking).
        `tls_ca`: with `tls`, the CA file that verifies the servers this one
        connects to, and replication (a Sentinel: its watching) over TLS.
        `args`: more options, as `--replicaof 127.0.0.1 PORT`. `password`:
        required of clients, and given to the master when replicating."""
        self.password = password
        #: The ACL user the tests' own commands log in as ("" for the default user).
        self.username = ""
        self.args = list(args or [])
        if password and not isinstance(self, RedisSentinel):
            self.args += ["--requirepass", password, "--masterauth", password]
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.tls_ca = tls_ca
        self.tls_port = free_port() if tls is not None else 0
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_server_path()
        with open(self.log_path, "ab") as log:
            # No persistence, in the foreground, on loopback only.
            args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
            args += ["--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"]
            if self.tls is not None:
                args += ["--tls-port", str(self.tls_port), "--tls-cert-file", self.tls[0]]
                args += ["--tls-key-file", self.tls[1], "--tls-auth-clients", "no"]
                if self.tls_ca:
                    args += ["--tls-ca-cert-file", self.tls_ca, "--tls-replication", "yes"]
            self.proc = subprocess.Popen(
                [binary, *self._first_args(), *args, *self.args],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()
        return self

    def _first_args(self) -> list[str]:
        return []

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + WAIT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log_path.read_text()}")
            try:
                if self.command(b"PING") == b"+PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server not ready: {self.log_path.read_text()}")
            time.sleep(0.02)

    def command(self, *words: bytes) -> bytes:
        """One command in RESP; the first line of the answer (tests peek with it)."""
        return self._ask(words, lambda data: b"\r\n" in data).split(b"\r\n", 1)[0]

    def strings(self, *words: bytes) -> list[bytes]:
        """One command whose answer is an array of bulk strings: the strings."""
        answer = self._ask(words, _complete)
        return answer.split(b"\r\n")[2::2]

    def _ask(self, words: tuple[bytes, ...], complete: Callable[[bytes], bool]) -> bytes:
        request = _resp(words)
        login = b"+OK\r\n"
        if self.password:  # AUTH first, on the same connection; its +OK is dropped
            user = (self.username.encode(),) if self.username else ()
            request = _resp((b"AUTH", *user, self.password.encode())) + request
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request)
            data = b""
            while not complete(data.removeprefix(login) if self.password else data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        if self.password:
            assert data.startswith(login), data
            return data.removeprefix(login)
        return data

    def kill(self) -> None:
        """Stop at once, as a crash would; safe to call twice."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _resp(words: tuple[bytes, ...]) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def _complete(data: bytes) -> bool:
    """Whether `data` holds a whole array of bulk strings (or one error line)."""
    if b"\r\n" not in data:
        return False
    if not data.startswith(b"*"):
        return True
    head, _, rest = data.partition(b"\r\n")
    count = int(head[1:])
    lines = rest.split(b"\r\n")
    return count <= 0 or len(lines) > 2 * count


class RedisSentinel(RedisServer):
    """A Sentinel watching the master `MASTER` at 127.0.0.1:`master_port`.

    Quorum 1 (it is the only one), the master taken for down after one
    second without an answer and a failover allowed every five seconds:
    a killed master is replaced by its replica within a few seconds.
    """

    MASTER = "kwmaster"

    def __init__(
        self,
        workdir: Path,
        master_port: int,
        *,
        password: str = "",
        master_password: str = "",
        username: str = "",
        tls: tuple[str, str] | None = None,
        tls_ca: str = "",
    ) -> None:
        """`password`: the Sentinel's own, required of clients (with `username`:
        that ACL user's, and the default user is switched off); `master_password`:
        the master's. `tls`, `tls_ca`: as a server's; `master_port` is then
        the master's TLS port."""
        super().__init__(workdir, password=password, tls=tls, tls_ca=tls_ca)
        self.username = username
        self.master_port = master_port
        self.master_password = master_password

    def _first_args(self) -> list[str]:
        conf = self.workdir / "sentinel.conf"  # Sentinel rewrites it: its own file
        conf.write_text(
            f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
            f"sentinel failover-timeout {self.MASTER} 5000\n"
            + (
                f"sentinel auth-pass {self.MASTER} {self.master_password}\n"
                if self.master_password
                else ""
            )
            + (f"requirepass {self.password}\n" if self.password and not self.username else "")
            + (
                f"user {self.username} on >{self.password} ~* &* +@all\nuser default off\n"
                if self.username
                else ""
            )
        )
        return [str(conf), "--sentinel"]

    def master_port_now(self) -> int:
        """The master's port as the Sentinel names it now."""
        host_port = self.strings(b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", self.MASTER.encode())
        return int(host_port[1])

    def replicas(self) -> int:
        """How many replicas of the master the Sentinel knows of."""
        return int(self.command(b"SENTINEL", b"REPLICAS", self.MASTER.encode())[1:])
