"""A private HAProxy in front of kittiwake, for end-to-end tests.

`HAProxy` writes a `mode tcp` configuration into a work directory, checks it
(`haproxy -c`), starts `haproxy -f CONF -db` in the foreground on loopback
high ports and waits until every frontend port accepts connections. Each
`Route` is one bind port of the single frontend, sent to its own backend:
one server (kittiwake) with the server options given, e.g. `send-proxy` or
`send-proxy-v2`. HAProxy connects to kittiwake from `source` (127.0.0.9 by
default), so kittiwake can trust exactly that address and a test can tell
the proxy's address from the client's.

The Debian package's own service is never started (policy-rc.d forbids
it); this instance has no pid file, no chroot, no user switch, and a
stats socket in the work directory for `show stat`. `stop()` kills it and
is safe to call twice; use it in `finally`.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kw import TOOL_PATH, free_port

HAPROXY = shutil.which("haproxy", path=TOOL_PATH) or "/usr/sbin/haproxy"
WAIT = 20.0
#: The address HAProxy connects to kittiwake from.
PROXY_SOURCE = "127.0.0.9"


@dataclass(frozen=True)
class Route:
    """One frontend port to one backend server (kittiwake at `target`)."""

    name: str
    target: tuple[str, int]
    #: Options of the backend's server line: `send-proxy`, `send-proxy-v2`, ...
    server_options: str
    #: Extra lines of the backend (e.g. `option smtpchk`).
    backend_lines: tuple[str, ...] = ()
    port: int = 0


class HAProxy:
    def __init__(self, workdir: Path, routes: list[Route], *, source: str = PROXY_SOURCE) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.routes = [r if r.port else _with_port(r) for r in routes]
        self.source = source
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.stats_path = workdir / "haproxy.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def port(self, name: str) -> int:
        return next(r.port for r in self.routes if r.name == name)

    def config(self) -> str:
        lines = [
            "global",
            f"    stats socket {self.stats_path} mode 600 level admin",
            "    maxconn 256",
            "    nbthread 1",
            "",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
            "",
            "frontend smtp_in",
        ]
        lines += [f"    bind 127.0.0.1:{r.port}" for r in self.routes]
        lines += [f"    use_backend {r.name} if {{ dst_port {r.port} }}" for r in self.routes]
        for r in self.routes:
            host, port = r.target
            lines += ["", f"backend {r.name}", *(f"    {line}" for line in r.backend_lines)]
            lines.append(f"    server kw {host}:{port} source {self.source} {r.server_options}")
        return "\n".join(lines) + "\n"

    def start(self) -> HAProxy:
        self.config_path.write_text(self.config())
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        if check.returncode != 0:
            raise AssertionError(f"haproxy -c failed:\n{check.stdout}{check.stderr}")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-f", str(self.config_path), "-db"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + WAIT
        pending = [r.port for r in self.routes]
        while pending:
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited with {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy not listening on {pending}:\n{self.log}")
            try:
                socket.create_connection(("127.0.0.1", pending[0]), timeout=1).close()
                pending.pop(0)
            except OSError:
                time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stats(self) -> list[dict[str, str]]:
        """`show stat` over the stats socket, one dict per proxy/server row."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_path))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        text = data.decode().lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _with_port(route: Route) -> Route:
    return Route(route.name, route.target, route.server_options, route.backend_lines, free_port())
