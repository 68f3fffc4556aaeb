"""Fault injection for end-to-end tests: strace at one system call, and a two-server relay.

**strace.** `strace -e inject=SYSCALL:signal=SIGKILL` kills a process on
entering a system call, before the call runs; `error=EIO` makes the call
fail instead. Two things make that precise enough to hit *one* step of
one message:

* `-P PATH` restricts tracing, and so the injection, to calls that name
  PATH, or a descriptor open on it (`fsync(fd)`, `close(fd)`). strace 6.1
  looks only at the *first* path of a rename: name the old one
  (`ID.meta.tmp`);
* a process can be *held*: `Hold` injects SIGSTOP at the first call of
  a kind (the call itself runs, then every thread stops), reads which file
  it was (`-y` prints the path of each descriptor) and detaches, leaving
  the process stopped. The next strace, with a `-P` on a name learnt that
  way (a queue entry's `ID.meta`), is attached before `resume`.

strace counts `when=N` per thread, so only the first matching call
(`when=1`) is a reliable target in a server with worker pools: each helper
here injects at the first call that matches, and the `-P` paths make that
call the intended one.

**Relay.** Two real kittiwake processes: the *upstream* (`A`) takes mail
on an smtp endpoint into `target.queue`, whose target is `target.smtp`
(or `target.lmtp`) towards the *downstream* (`B`), which delivers into a
Maildir where every copy can be counted. Each has its own folder, a fixed
loopback port (so a restarted server is found where it was) and the same
fake DNS. Messages carry an `X-Seq:` header so copies are counted per
message.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kw import WAIT, Dialog, Kittiwake, free_port, need_tool

#: Every rename and unlink kind, so a path filter catches the call whatever
#: the C library uses for `os.rename` and `os.unlink`.
RENAME = "rename,renameat,renameat2"
UNLINK = "unlink,unlinkat"


# -- strace ------------------------------------------------------------------------------


class Strace:
    """One strace attached to a running process (all its threads), until `close`."""

    def __init__(
        self,
        pid: int,
        output: Path,
        *,
        trace: str,
        inject: str | None = None,
        paths: tuple[str, ...] = (),
    ) -> None:
        """`trace`: the calls traced; `inject`: what strace does to them; `paths`: -P."""
        tool = need_tool("strace", "strace")
        self.output = output
        cmd = [tool, "-f", "-y", "-o", str(output), "-p", str(pid), "-e", f"trace={trace}"]
        for path in paths:
            cmd += ["-P", path]
        if inject is not None:
            cmd += ["-e", f"inject={inject}"]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._attached = threading.Event()
        self._messages: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._attached.wait(WAIT):
            self.close()
            raise AssertionError(f"strace did not attach: {self._messages}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._messages.append(line)
            if " attached" in line:  # "Process N attached with M threads": all are
                self._attached.set()
        self._attached.set()  # exited: the caller sees no trace

    def lines(self) -> list[str]:
        return self.output.read_text().splitlines() if self.output.exists() else []

    def wait(self, timeout: float = WAIT) -> None:
        """Until strace has exited (its tracee died or it was told to stop)."""
        self.proc.wait(timeout)

    def last_call(self) -> str:
        """The last system call strace printed, whole: where its injection struck.

        With several threads strace splits a call it could not print at
        once into `... <unfinished ...>` and `<... NAME resumed>...`; the
        two halves are joined here.
        """
        calls = [line for line in self.lines() if not re.match(r"\d+\s+(\+\+\+|---) ", line)]
        if not calls:
            return ""
        last = calls[-1]
        resumed = re.match(r"(\d+)\s+<\.\.\. \S+ resumed>(.*)", last)
        if resumed is None:
            return last
        pid, rest = resumed.groups()
        for line in reversed(calls[:-1]):
            if line.startswith(pid) and line.endswith("<unfinished ...>"):
                return line.removesuffix("<unfinished ...>").rstrip() + rest
        return last

    def close(self) -> None:
        """Detach (the tracee goes on, or stays stopped) and wait for strace to exit."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(WAIT)
        # strace has exited, so its stderr ends: the reader finishes what is
        # left before the pipe is closed under it (closing a file another
        # thread is reading fails that read).
        self._reader.join(WAIT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (group stop), or the process is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


class Hold:
    """A strace that stops the whole process just after the first `trace` call (on `paths`).

    Attach it before what triggers the call; `wait` returns strace's lines
    (the last traced call is the one that stopped it) once every thread
    is stopped. The process stays stopped after strace detaches, until
    `resume`.
    """

    def __init__(self, pid: int, output: Path, trace: str, paths: tuple[str, ...] = ()) -> None:
        self.pid = pid
        self.trace = trace
        self.tracer = Strace(
            pid, output, trace=trace, inject=f"{trace}:signal=SIGSTOP:when=1", paths=paths
        )

    def wait(self) -> list[str]:
        try:
            deadline = time.monotonic() + WAIT
            while not (_stopped(self.pid) and self._shows_stop()):
                if time.monotonic() > deadline:
                    lines = self.tracer.lines()[-20:]
                    raise AssertionError(f"never stopped at {self.trace}: {lines}")
                time.sleep(0.01)
        finally:
            self.tracer.close()
        return self.tracer.lines()

    def _shows_stop(self) -> bool:
        """strace delivered its SIGSTOP (not: saw the process stopped when it attached)."""
        return self.tracer.proc.poll() is not None or any(
            "--- SIGSTOP {" in line and "SI_KERNEL" in line for line in self.tracer.lines()
        )


def resume(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def kill_at(pid: int, output: Path, trace: str, paths: tuple[str, ...] = ()) -> Strace:
    """Attach a strace that SIGKILLs the process on entering the first `trace` call.

    The call does not run. `resume` the process if a `Hold` stopped it.
    """
    return Strace(pid, output, trace=trace, inject=f"{trace}:signal=SIGKILL:when=1", paths=paths)


def fail_at(pid: int, output: Path, trace: str, error: str, paths: tuple[str, ...] = ()) -> Strace:
    """Attach a strace that makes the first `trace` call fail with `error` (EIO, ENOSPC...)."""
    return Strace(pid, output, trace=trace, inject=f"{trace}:error={error}:when=1", paths=paths)


def entry_id_of(lines: list[str], location: Path) -> str:
    """The queue entry a traced call touched (`fsync(5</q/ID.header.tmp>)`)."""
    for line in reversed(lines):
        found = re.search(rf"{re.escape(str(location))}/([0-9a-f]{{16}})\.", line)
        if found:
            return found.group(1)
    raise AssertionError("no queue entry in the trace:\n" + "\n".join(lines[-20:]))


# -- two servers -------------------------------------------------------------------------


def downstream_config(
    tmp: Path, port: int, *, lmtp: bool = False, routes: str = "", top: str = ""
) -> str:
    """The downstream (B): an smtp (or lmtp) endpoint delivering into a Maildir.

    `routes`: destination blocks before the default one, e.g. a domain that
    is refused with `reject 451 ...`.
    """
    kind = "lmtp" if lmtp else "smtp"
    return f"""
state_dir {tmp}/state
hostname b.example.com
{top}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{kind} tcp://127.0.0.1:{port} {{
    tls off
{routes}
    default_destination {{
        deliver_to &mb
    }}
}}
"""


#: The upstream's queue settings unless a test says otherwise: short pauses,
#: entries found at start tried at once.
QUEUE_DEFAULTS = {
    "initial_retry_time": "200ms",
    "retry_time_scale": "1.5",
    "max_tries": "20",
    "post_init_delay": "0s",
}


def upstream_config(
    tmp: Path,
    port: int,
    downstream: int,
    *,
    queue: dict[str, str] | None = None,
    lmtp: bool = False,
    endpoint: str = "",
    targets: tuple[str, ...] = ("&outq",),
    top: str = "",
    extra: str = "",
    timeouts: str = "2s",
) -> str:
    """The upstream (A): smtp endpoint -> target.queue -> target.smtp/lmtp -> B.

    Notices (DSNs) for `sender.example` go into A's own Maildir (`&local`),
    so a test reads them; notices to anyone else are refused. `targets`:
    the endpoint's `deliver_to` lines, in order; `extra`: blocks after it
    (a second endpoint, say).
    """
    settings = {**QUEUE_DEFAULTS, **(queue or {})}
    directives = "".join(f"    {name} {value}\n" for name, value in settings.items())
    kind = "lmtp" if lmtp else "smtp"
    deliver = "".join(f"    deliver_to {target}\n" for target in targets)
    return f"""
state_dir {tmp}/state
hostname a.example.com
autogenerated_msg_domain example.com
{top}
storage.maildir local {{
    path {tmp}/mail
    auto_create yes
}}
target.{kind} relay {{
    targets tcp://127.0.0.1:{downstream}
    starttls no
    connect_timeout {timeouts}
    command_timeout {timeouts}
    submission_timeout {timeouts}
}}
target.queue outq {{
    target &relay
    location {tmp}/queue
{directives}    bounce {{
        destination sender.example {{
            deliver_to &local
        }}
        default_destination {{
            reject 550 5.7.1 "No notices to strangers"
        }}
    }}
}}
smtp tcp://127.0.0.1:{port} {{
    tls off
{endpoint}
{deliver}}}
{extra}
"""


@dataclass
class Relay:
    """The upstream A and downstream B of one test, each restartable on its port."""

    tmp: Path
    dns: str  # HOST:PORT of the fake DNS both use
    a_port: int = field(default_factory=free_port)
    b_port: int = field(default_factory=free_port)
    started: list[Kittiwake] = field(default_factory=list)
    tracers: list[Strace] = field(default_factory=list)
    a: Kittiwake | None = None
    b: Kittiwake | None = None

    @property
    def a_dir(self) -> Path:
        return self.tmp / "a"

    @property
    def b_dir(self) -> Path:
        return self.tmp / "b"

    @property
    def queue(self) -> Path:
        return self.a_dir / "queue"

    def _start(self, folder: Path, config: str, *, unprivileged: bool = False) -> Kittiwake:
        folder.mkdir(exist_ok=True)
        args = ("--debug.dnsoverride", self.dns)
        server = Kittiwake(folder, config, args=args, unprivileged=unprivileged)
        self.started.append(server)
        server.wait_ready()
        return server

    def start_a(self, **options: Any) -> Kittiwake:
        """Start (or restart) A; `options` go to `upstream_config`."""
        config = upstream_config(self.a_dir, self.a_port, self.b_port, **options)
        self.a = self._start(self.a_dir, config)
        return self.a

    def start_b(self, **options: Any) -> Kittiwake:
        """Start (or restart) B; `options` go to `downstream_config`."""
        config = downstream_config(self.b_dir, self.b_port, **options)
        self.b = self._start(self.b_dir, config)
        return self.b

    def stop_b(self) -> None:
        if self.b is not None:
            self.b.stop()
            self.b = None

    def close(self) -> None:
        for server in self.started:
            server.kill()
        for tracer in self.tracers:
            tracer.close()

    # -- faults in A ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.a is not None, "A is not running"
        return self.a.proc.pid

    def _trace_file(self) -> Path:
        folder = self.tmp / "traces"
        folder.mkdir(exist_ok=True)
        return folder / f"{len(self.tracers) + 1}.trace"

    def kill_at(self, trace: str, paths: tuple[str, ...] = ()) -> Strace:
        """SIGKILL A on entering the first `trace` call on `paths` (see `kill_at`)."""
        tracer = kill_at(self.pid, self._trace_file(), trace, paths)
        self.tracers.append(tracer)
        return tracer

    def fail_at(self, trace: str, error: str, paths: tuple[str, ...] = ()) -> Strace:
        """Make A's first `trace` call on `paths` fail with `error`."""
        tracer = fail_at(self.pid, self._trace_file(), trace, error, paths)
        self.tracers.append(tracer)
        return tracer

    def delay_at(self, trace: str, seconds: float, paths: tuple[str, ...] = ()) -> Strace:
        """Hold A's thread on entering its first `trace` call on `paths` for `seconds`
        (a slow disk); the rest of A runs on."""
        inject = f"{trace}:delay_enter={int(seconds * 1_000_000)}:when=1"
        tracer = Strace(self.pid, self._trace_file(), trace=trace, inject=inject, paths=paths)
        self.tracers.append(tracer)
        return tracer

    def hold(self, trace: str, paths: tuple[str, ...] = ()) -> Hold:
        """Stop A just after its first `trace` call on `paths` (see `Hold`)."""
        hold = Hold(self.pid, self._trace_file(), trace, paths)
        self.tracers.append(hold.tracer)
        return hold

    def resume(self) -> None:
        resume(self.pid)

    def dead(self) -> str:
        """A was killed by SIGKILL: the last call the last strace saw (where it died)."""
        assert self.a is not None
        assert self.a.wait() == -signal.SIGKILL
        for tracer in self.tracers:
            tracer.wait()
        return self.tracers[-1].last_call() if self.tracers else ""

    # -- what arrived ------------------------------------------------------------------

    def copies(self) -> Counter[tuple[str, str]]:
        """(mailbox, X-Seq) -> how many copies B delivered."""
        return copies(self.b_dir / "mail")

    def wait_copies(self, expected: dict[tuple[str, str], int], timeout: float = WAIT) -> None:
        """Until B holds at least `expected`; then check that it holds exactly that."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.copies()
            if all(found[k] >= n for k, n in expected.items()):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {expected}, downstream has {dict(found)}")
            time.sleep(0.05)
        assert dict(found) == expected, (dict(found), expected)

    def wait_drained(self, timeout: float = WAIT) -> None:
        """Until A's queue has no entry left (its files included)."""
        deadline = time.monotonic() + timeout
        while queue_files(self.queue):
            if time.monotonic() > deadline:
                raise AssertionError(f"queue not drained: {queue_files(self.queue)}")
            time.sleep(0.05)


def copies(root: Path) -> Counter[tuple[str, str]]:
    """(user@domain, X-Seq) of every file in every `new/` under a Maildir root."""
    found: Counter[tuple[str, str]] = Counter()
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    if not root.is_dir():
        return found
    for domain in root.iterdir():
        for user in domain.iterdir():
            new = user / "new"
            if not new.is_dir():
                continue
            for path in new.iterdir():
                with open(path, "rb") as f:
                    seq = parser.parse(f).get("X-Seq", "")
                found[(f"{user.name}@{domain.name}", str(seq).strip())] += 1
    return found


def queue_files(location: Path) -> list[str]:
    """Every name in a queue directory but its lock: entries, temporary files, quarantine."""
    if not location.is_dir():
        return []
    return sorted(p.name for p in location.iterdir() if p.name != "lock")


def message(seq: str, subject: str = "fault", body: bytes = b"body\r\n") -> bytes:
    """A message numbered `seq`, CR LF, not yet dot-stuffed or terminated."""
    head = f"From: <me@sender.example>\r\nSubject: {subject}\r\nX-Seq: {seq}\r\n\r\n"
    return head.encode() + body


def open_data(port: int, sender: str, rcpts: list[str]) -> Dialog:
    """A session that has had its 354: the caller sends the content."""
    d = Dialog(port)
    try:
        assert d.reply()[-1].startswith("220 ")
        assert d.cmd("EHLO client.example").startswith("250 ")
        assert d.cmd(f"MAIL FROM:<{sender}>").startswith("250 ")
        for rcpt in rcpts:
            reply = d.cmd(f"RCPT TO:<{rcpt}>")
            assert reply.startswith("250 "), reply
        assert d.cmd("DATA").startswith("354 ")
    except BaseException:
        d.close()
        raise
    return d


def final_reply(d: Dialog) -> str:
    """The reply to the end of the data, or "" if the server went away without one."""
    try:
        return d.reply()[-1]
    except (EOFError, ConnectionError):
        return ""


def send(
    port: int,
    seq: str,
    rcpts: list[str],
    *,
    sender: str = "me@sender.example",
    subject: str = "fault",
    body: bytes = b"body\r\n",
) -> str:
    """One whole message; the reply to its end of data ("" if the server vanished)."""
    with open_data(port, sender, rcpts) as d:
        d.send(stuffed(message(seq, subject, body)))
        return final_reply(d)


def stuffed(content: bytes) -> bytes:
    """`content` dot-stuffed and terminated, ready to follow a 354."""
    return content.replace(b"\r\n.", b"\r\n..") + b".\r\n"


@contextlib.contextmanager
def relay_of(tmp: Path, dns: str) -> Iterator[Relay]:
    relay = Relay(tmp, dns)
    try:
        yield relay
    finally:
        relay.close()


@contextlib.contextmanager
def small_disk(mount: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of `size` at `mount` (made if missing), unmounted afterwards."""
    if os.geteuid() != 0:
        raise AssertionError("mounting a tmpfs needs root; the suite runs as root in CI")
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def make_mailbox(box: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    return box
