"""The servers `bench/smtp.py` compares, each started as a real process on loopback.

Every server is a context manager yielding a `Target` (its port, the pid
whose memory is read, where its deliveries land); leaving the `with` block
stops it, whatever happened inside. Ports are free high ports on 127.0.0.1
chosen at start, and nothing listens anywhere else.

- `kittiwake`: `python -m kittiwake run -c CONF`, ready at the line
  `kittiwake: listening on ADDR`; `deliver_to dummy` (discard) or a
  `storage.maildir` block (durable). Its DNS goes to `peers/dns_stub.py`
  (`--debug.dnsoverride`): kittiwake looks up every client's PTR name and
  those queries must not leave loopback. It runs as `pip install .` builds
  it, its message path compiled (`use_build`, `bench/build.py`), unless a
  script's `--source` asks for src/ as it stands.
- `aiosmtpd`: `bench/peers/aiosmtpd_discard.py` or `aiosmtpd_maildir.py`.
- `smtp-sink`: Postfix's protocol-only sink, the upper bound, written in C.
- `python-floor`: `peers/python_floor.py`, the least protocol work on
  uvloop (not a mail server): what the interpreter and the event loop cost
  per message, run only when named with `--only`.
- `postfix`: a private Postfix instance (its own `config_directory`,
  `queue_directory` and `data_directory` under the run's temporary
  directory) delivering through `virtual(8)` into one Maildir; it is
  started with `postfix -c DIR start` and always stopped with
  `postfix -c DIR stop`. The system's own Postfix is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
PEERS = HERE / "peers"
HOSTNAME = "bench.test"
KITTIWAKE_READY = "kittiwake: listening on "
AIOSMTPD_READY = "aiosmtpd: listening on "
DNS_READY = "dns-stub: listening on "
START_TIMEOUT = 30.0  # seconds for any server to become ready
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


class BenchError(Exception):
    """A server or client misbehaved; the message says which and how."""


def tool(name: str) -> str | None:
    """Path of a Postfix tool, which Debian keeps in /usr/sbin (often not on PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, alive: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
    """Until a connection to 127.0.0.1:`port` succeeds and a banner arrives."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise BenchError(f"server on port {port} exited before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
                s.recv(512)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing answered on 127.0.0.1:{port}") from None
            time.sleep(0.05)


@dataclass
class Target:
    """A running server as the benchmark sees it."""

    name: str
    port: int
    pid: int | None  # the process whose memory is read (None: not measured)
    maildir: Path | None  # root under which delivered files appear in `new/`
    acks_after_delivery: bool  # True: a 250 means the file is already in `new/`
    alive: Callable[[], bool]
    log: Path  # where the server's own output goes, for error messages


class Process:
    """A child process we started; stdout is read line by line, stderr goes to a file."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,  # a Ctrl-C at the terminal reaches only us
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """The rest of the first stdout line starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"no line {prefix!r} in {timeout:.0f}s:\n{self.tail()}") from None
            if line is None:
                self.proc.wait(STOP_TIMEOUT)
                raise BenchError(
                    f"exited with status {self.proc.returncode} before ready:\n{self.tail()}"
                )
            if line.startswith(prefix):
                return line[len(prefix) :]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


#: Where the kittiwake processes import it from: src/ until `use_build` says.
_IMPORT_FROM = {"kittiwake": SRC}


def add_source_option(parser: argparse.ArgumentParser) -> None:
    """`--source`, which every script that starts kittiwake takes (`use_build`)."""
    parser.add_argument(
        "--source",
        action="store_true",
        help="kittiwake from src/, not as `pip install .` builds it",
    )


def use_build(compiled: bool) -> str:
    """Run kittiwake as `pip install .` builds it (compiled, `bench/build.py`)
    or from src/ as it stands; returns the label the reports print."""
    if not compiled:
        _IMPORT_FROM["kittiwake"] = SRC
        return "source"
    import build

    try:
        _IMPORT_FROM["kittiwake"] = build.compiled_site()
    except build.BuildError as exc:
        raise BenchError(str(exc)) from None
    return "compiled"


def python_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KITTIWAKE_CONFIG"}
    paths = (str(_IMPORT_FROM["kittiwake"]), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


# -- kittiwake -----------------------------------------------------------------------


def kittiwake_config(
    work: Path, port: int, *, durable: bool, endpoint_extra: str = ""
) -> tuple[Path, Path | None]:
    """Write the configuration the issue specifies; return it and the Maildir root."""
    state = work / "state"
    state.mkdir(parents=True, exist_ok=True)
    maildir = work / "maildir" if durable else None
    lines = [f"state_dir {state}", f"hostname {HOSTNAME}"]
    if maildir is not None:
        lines += [f"storage.maildir mb {{ path {maildir}", "    auto_create yes }"]
    lines += [
        f"smtp tcp://127.0.0.1:{port} {{",
        "    tls off",
        f"    deliver_to {'&mb' if durable else 'dummy'}",
        *(f"    {line}" for line in endpoint_extra.splitlines() if line.strip()),
        "}",
    ]
    conf = work / "kittiwake.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf, maildir


def kittiwake_check(work: Path, *, durable: bool) -> str | None:
    """None if `kittiwake config check` accepts the configuration, else its complaint."""
    work.mkdir(parents=True, exist_ok=True)
    conf, _ = kittiwake_config(work, free_port(), durable=durable)
    result = subprocess.run(
        [sys.executable, "-m", "kittiwake", "config", "check", "-c", str(conf)],
        env=python_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode == 0:
        return None
    return (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"


@contextlib.contextmanager
def kittiwake(
    name: str,
    work: Path,
    *,
    durable: bool,
    endpoint_extra: str = "",
    dns: str | None = None,
    workers: int = 1,
    global_extra: str = "",
    wrapper: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[Target]:
    """`dns`: HOST:PORT of a DNS server to use instead of a fresh `dns_stub`;
    `workers`: worker processes (`-j`, docs/workers.md), 1 for a single process;
    `global_extra`: lines above the endpoint (for example `log off`);
    `wrapper`: a command the server runs under (valgrind: `instructions.py`),
    with `env` added to its environment."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf, maildir = kittiwake_config(work, port, durable=durable, endpoint_extra=endpoint_extra)
    if global_extra:
        conf.write_text(global_extra.strip() + "\n" + conf.read_text())
    with contextlib.ExitStack() as stack:
        if dns is None:
            dns = stack.enter_context(dns_stub(work))
        cmd = [*wrapper, sys.executable, "-m", "kittiwake", "run", "-c", str(conf)]
        cmd += ["--debug.dnsoverride", dns]
        if workers > 1:
            cmd += ["-j", str(workers)]
        proc = Process(cmd, work / "kittiwake.log", env={**python_env(), **(env or {})})
        try:
            proc.wait_ready(KITTIWAKE_READY, start_timeout)
            yield Target(name, port, proc.pid, maildir, True, proc.alive, proc.log)
        finally:
            proc.stop()


@contextlib.contextmanager
def dns_stub(work: Path) -> Iterator[str]:
    """`bench/peers/dns_stub.py` on a loopback port; yields its HOST:PORT."""
    port = free_port()
    proc = Process(
        [sys.executable, str(PEERS / "dns_stub.py"), "--port", str(port)], work / "dns-stub.log"
    )
    try:
        proc.wait_ready(DNS_READY)
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


# -- aiosmtpd ------------------------------------------------------------------------


def aiosmtpd(name: str, work: Path, *, durable: bool) -> AbstractContextManager[Target]:
    script = "aiosmtpd_maildir.py" if durable else "aiosmtpd_discard.py"
    return _python_peer(name, work, script, maildir=work / "maildir" if durable else None)


def python_floor(name: str, work: Path) -> AbstractContextManager[Target]:
    """`peers/python_floor.py`: the least a Python server can do per message."""
    return _python_peer(name, work, "python_floor.py")


@contextlib.contextmanager
def _python_peer(
    name: str, work: Path, script: str, *, maildir: Path | None = None
) -> Iterator[Target]:
    """A peer in `bench/peers/` (they share `_serve.py`'s ready line)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, str(PEERS / script), "--port", str(port)]
    if maildir is not None:
        cmd += ["--maildir", str(maildir)]
    proc = Process(cmd, work / f"{Path(script).stem}.log")
    try:
        proc.wait_ready(AIOSMTPD_READY)
        yield Target(name, port, proc.pid, maildir, True, proc.alive, proc.log)
    finally:
        proc.stop()


# -- smtp-sink -------------------------------------------------------------------------


@contextlib.contextmanager
def smtp_sink(name: str, work: Path) -> Iterator[Target]:
    binary = tool("smtp-sink")
    if binary is None:
        raise BenchError("smtp-sink is not installed (Debian package postfix)")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [binary, "-h", HOSTNAME, "-m", "4096"]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # required when started as root
    cmd += [f"127.0.0.1:{port}", "4096"]
    proc = Process(cmd, work / "smtp-sink.log")
    try:
        wait_for_port(port, proc.alive)
        yield Target(name, port, proc.pid, None, True, proc.alive, proc.log)
    finally:
        proc.stop()


# -- Postfix ---------------------------------------------------------------------------

# Only the services a virtual(8) delivery needs, none chrooted (the private
# instance has no chroot jail), smtpd on the chosen loopback port.
POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - 100 smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
virtual   unix  - n n -     - virtual
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

# Everything not named here is Postfix's default (3.7): in particular the
# queue manager and virtual(8) concurrency (20 deliveries at once) and
# in_flow_delay, which is how Postfix slows SMTP clients down when delivery
# falls behind.
POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {base}/etc
queue_directory = {base}/queue
data_directory = {base}/data
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
myhostname = {host}
mydomain = {host}
myorigin = {host}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
biff = no
smtpd_banner = $myhostname ESMTP
virtual_mailbox_domains = {host}
virtual_mailbox_base = {base}/mail
virtual_mailbox_maps = static:bench/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
"""


# The relaying variant (`postfix(..., relay_to=PORT)`, for bench/queue.py):
# smtpd takes mail from loopback (mynetworks) for any domain and the smtp(8)
# client hands everything to the relayhost, a loopback smtp-sink. No DNS:
# the relayhost is an IP literal in brackets. Everything else is Postfix's
# default, in particular 20 concurrent deliveries to the relayhost and its
# connection cache (several messages per connection when mail waits).
POSTFIX_RELAY_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {base}/etc
queue_directory = {base}/queue
data_directory = {base}/data
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
myhostname = {host}
mydomain = {host}
myorigin = {host}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
relayhost = [127.0.0.1]:{relay}
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
biff = no
smtpd_banner = $myhostname ESMTP
"""
POSTFIX_RELAY_SERVICES = """\
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
"""


def postfix_unavailable() -> str | None:
    if tool("postfix") is None:
        return "postfix is not installed"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
        pwd.getpwnam("nobody")
    except KeyError as exc:
        return f"missing system user: {exc}"
    return None


def _postfix(base: Path, command: str) -> subprocess.CompletedProcess[str]:
    binary = tool("postfix")
    assert binary is not None
    return subprocess.run(
        [binary, "-c", str(base / "etc"), command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def postfix_master(work: Path) -> int | None:
    """The master pid of the instance `postfix(..., work)` started (its daemons are
    the master's children), None if it is not running."""
    return _postfix_master_pid(work / "postfix")


def _postfix_master_pid(base: Path) -> int | None:
    try:
        return int((base / "queue" / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def postfix(name: str, work: Path, *, relay_to: int | None = None) -> Iterator[Target]:
    """A private instance; `relay_to`: relay everything to 127.0.0.1:PORT instead of
    delivering into the Maildir (the `Target` then has no Maildir)."""
    reason = postfix_unavailable()
    if reason is not None:
        raise BenchError(reason)
    base = work / "postfix"
    for sub in ("etc", "queue", "data", "mail"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    # Postfix daemons run as `postfix` and deliveries as `nobody`: both must
    # reach their directories (the caller makes the run's root traversable).
    for path in (work, base):
        os.chmod(path, 0o755)
    owner = pwd.getpwnam("postfix")
    nobody = pwd.getpwnam("nobody")
    os.chown(base / "data", owner.pw_uid, owner.pw_gid)
    os.chown(base / "mail", nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    master_cf = POSTFIX_MASTER_CF.format(port=port)
    if relay_to is None:
        main_cf = POSTFIX_MAIN_CF.format(
            base=base, host=HOSTNAME, uid=nobody.pw_uid, gid=nobody.pw_gid
        )
    else:
        main_cf = POSTFIX_RELAY_MAIN_CF.format(base=base, host=HOSTNAME, relay=relay_to)
        master_cf += POSTFIX_RELAY_SERVICES
    (base / "etc" / "main.cf").write_text(main_cf)
    (base / "etc" / "master.cf").write_text(master_cf)
    log = base / "postfix.log"
    master: int | None = None

    def alive() -> bool:
        return master is not None and _pid_alive(master)

    try:
        started = _postfix(base, "start")
        master = _postfix_master_pid(base)
        if started.returncode != 0 or master is None:
            raise BenchError(
                f"postfix -c {base / 'etc'} start failed ({started.returncode}):\n"
                f"{started.stdout}{started.stderr}{_tail(log)}"
            )
        wait_for_port(port, alive)
        maildir = base / "mail" if relay_to is None else None
        yield Target(name, port, None, maildir, False, alive, log)
    finally:
        _postfix(base, "stop")
        pid = master or _postfix_master_pid(base)
        if pid is not None:
            deadline = time.monotonic() + STOP_TIMEOUT
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)  # the master we started, by its pid file


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
