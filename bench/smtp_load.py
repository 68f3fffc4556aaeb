"""The load side of `bench/smtp.py`: smtp-source runs, Maildir counts, memory probes.

Strategy (throughput). One measurement ("cell") is a number of sessions, a
message size and a number of messages per session. Postfix's `smtp-source`
(C, one process, no pipelining) is run in rounds of `sessions * N`
messages: with `-d` each session sends its 20 messages over one connection
and quits; without it every message gets its own connection and the
`sessions` slots are refilled as connections end. Rounds repeat until the
cell has run for a minimum time, so a fast server gets more messages and a
slow one fewer, and the rate is messages / wall-clock seconds over all
rounds. A 250 from kittiwake or the aiosmtpd peers means the message is
already in `new/` (or discarded); Postfix queues first and delivers later,
so its clock stops only when the expected number of files is in `new/`.
Each round costs one `smtp-source` start (about 1.5 ms here), counted in
the time: it matters only for the fastest servers at 1 session.

Strategy (memory). Linux's `/proc/PID/status` gives VmRSS (now) and VmHWM
(the peak). Idle connections are opened from this process one at a time,
each read up to the end of its banner so the server has really set the
session up, and the growth in VmRSS is divided by their number. They come
from 127.0.0.2, 127.0.0.3, ... (50 each: all of 127/8 is loopback), the way
many clients would, so kittiwake's per-address connection limit is not hit. The large
message is streamed from a raw socket in 1 MiB writes while a thread
samples VmRSS every 5 ms; the growth is the highest sample (or VmHWM, if
the peak rose) minus VmRSS before.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smtp_servers import HOSTNAME, BenchError, Target, tool

SENDER = f"sender@{HOSTNAME}"
RECIPIENT = f"user@{HOSTNAME}"
ROUND_TIMEOUT = 300.0  # seconds: no single smtp-source run may take longer
DELIVERY_TIMEOUT = 120.0  # seconds to wait for a queueing server's deliveries
STALL_TIMEOUT = 15.0  # seconds without a new delivery before giving up
SETTLE_POLL = 15.0  # seconds between file-creation probes while settling
POLL = 0.02  # seconds between Maildir counts while waiting for deliveries
IDLE_PER_SOURCE = 50  # idle connections per loopback source address (2,000 -> 40 addresses)
KiB = 1024
MiB = 1024 * KiB


# -- Maildir ------------------------------------------------------------------------


def _new_dirs(root: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(root):
        if os.path.basename(dirpath) == "new":
            found.append(dirpath)
            dirnames.clear()
        else:
            dirnames[:] = [d for d in dirnames if d not in ("tmp", "cur")]
    return found


def count_delivered(root: Path | None) -> int:
    """Files in every `new/` folder under `root`: the messages delivered."""
    if root is None:
        return 0
    return sum(len(os.listdir(d)) for d in _new_dirs(root))


def clear_delivered(root: Path | None) -> None:
    """Empty every `new/` between cells, so every cell starts from empty folders.

    The files are moved aside, not deleted. On an ext4 file system without
    a journal (this development VM's root), the kernel will not reuse an
    inode freed in the last minute (six while its inode table block is
    dirty) and steps over each such inode while allocating: after thousands
    of unlinks, every file created in the same block group costs about
    0.8 ms of kernel CPU instead of 20 µs, and the next cell would measure
    the benchmark's own cleanup. The scratch directory is removed at the end.
    """
    if root is None:
        return
    kept = root.parent / f"{root.name}.delivered"
    kept.mkdir(exist_ok=True)
    for d in _new_dirs(root):
        for entry in os.scandir(d):
            os.rename(entry.path, kept / entry.name)


#: CPU per file created above which the file system is still busy with
#: recently freed inodes (see `clear_delivered`); normal here is about 20 µs.
SLOW_CREATE = 50e-6
PROBE_FILES = 200


def create_cost(folder: Path) -> float:
    """CPU seconds (user + kernel) this process spends per empty file created in `folder`.

    The files stay (hidden names, which no Maildir reader counts): deleting
    them would itself slow down what comes next.
    """
    tag = f".create-probe-{time.monotonic_ns()}"
    before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(PROBE_FILES):
        os.close(os.open(folder / f"{tag}-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return used / PROBE_FILES


def probe_folder(root: Path) -> Path:
    """Where a Maildir server creates its files: a mailbox folder once one exists.

    ext4 places a file in its directory's block group, so the probe must
    share that directory to see what the server's files will meet.
    """
    dirs = _new_dirs(root)
    return Path(dirs[0]).parent if dirs else root


def wait_for_fast_creation(folder: Path, limit: float, report: Callable[[str], None]) -> float:
    """Wait (up to `limit` seconds) until creating a file in `folder` costs
    what it normally does; the last cost measured.

    Files deleted shortly before the benchmark (by an earlier run, or a test
    suite) make every file created next to them slower for up to six minutes
    (see `clear_delivered`), which would be measured as the Maildir servers'
    own cost.
    """
    deadline = time.monotonic() + limit
    cost = create_cost(folder)
    while cost > SLOW_CREATE and time.monotonic() < deadline:
        report(
            f"file creation costs {cost * 1e6:.0f} µs of CPU here (recently deleted "
            "files nearby): waiting for it to fall below "
            f"{SLOW_CREATE * 1e6:.0f} µs"
        )
        time.sleep(SETTLE_POLL)
        cost = create_cost(folder)
    return cost


def wait_delivered(root: Path, expected: int) -> float:
    """`time.perf_counter()` when `expected` files are in `new/`.

    BenchError once nothing new has arrived for `STALL_TIMEOUT` seconds (a
    queueing server that cannot deliver keeps accepting, so only progress
    tells) or after `DELIVERY_TIMEOUT` in all.
    """
    now = time.monotonic()
    deadline, stalled_at = now + DELIVERY_TIMEOUT, now + STALL_TIMEOUT
    dirs: list[str] = []
    got = 0
    while True:
        if not dirs:
            dirs = _new_dirs(root)
        count = sum(len(os.listdir(d)) for d in dirs)
        if count >= expected:
            return time.perf_counter()
        now = time.monotonic()
        if count > got:
            got, stalled_at = count, now + STALL_TIMEOUT
        if now > deadline or now > stalled_at:
            raise BenchError(f"only {got} of {expected} messages delivered to new/")
        time.sleep(POLL)


# -- smtp-source -----------------------------------------------------------------------


def smtp_source(
    port: int, sessions: int, count: int, size: int, keep: bool, message: Path | None = None
) -> None:
    """One smtp-source run; BenchError on a failed session or a rejected message.

    `message`: a file with the whole message (header and body) to send
    instead of smtp-source's generated one of `size` bytes.
    """
    binary = tool("smtp-source")
    if binary is None:
        raise BenchError("smtp-source is not installed (Debian package postfix)")
    cmd = [binary, "-s", str(sessions), "-m", str(count)]
    cmd += ["-F", str(message)] if message is not None else ["-l", str(size)]
    cmd += ["-f", SENDER, "-t", RECIPIENT, "-M", HOSTNAME]
    if keep:
        cmd.append("-d")
    cmd.append(f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _, err = proc.communicate(timeout=ROUND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"smtp-source took over {ROUND_TIMEOUT:.0f}s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        lines = err.strip().splitlines()
        raise BenchError(f"smtp-source exited {proc.returncode}: {' | '.join(lines[-3:])}")


@dataclass(frozen=True)
class Cell:
    sessions: int
    size: int  # bytes of payload (smtp-source -l), headers not counted
    per_session: int
    message: Path | None = None  # a whole message to send instead (smtp-source -F)

    def round_size(self) -> int:
        """Messages per smtp-source run: whole sessions with -d, larger rounds without."""
        if self.per_session > 1:
            return self.sessions * self.per_session
        return max(self.sessions * 20, 200)


@dataclass
class Measured:
    messages: int
    seconds: float
    server_cpu: float | None  # CPU seconds the server process used (None: not one process)
    client_cpu: float  # CPU seconds smtp-source used
    machine_cpu: float  # CPU seconds all processors were busy, whoever for
    create: float | None = None  # CPU seconds per file created, probed just before (Maildir)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def measure(
    target: Target,
    cell: Cell,
    min_seconds: float,
    max_rounds: int,
    settle: float,
    report: Callable[[str], None],
) -> Measured:
    """Drive `target` with one cell's load; check every message was delivered.

    A Maildir server's run waits first (up to `settle` seconds) until
    creating a file costs what it normally does (`wait_for_fast_creation`).
    """
    create = None
    if target.maildir is not None:
        if not _new_dirs(target.maildir):  # the mailbox appears with the first message
            smtp_source(target.port, 1, 1, cell.size, False, cell.message)
            wait_delivered(target.maildir, 1)
        clear_delivered(target.maildir)
        os.sync()  # earlier writes must not be flushed on this cell's time
        create = wait_for_fast_creation(probe_folder(target.maildir), settle, report)
    batch = cell.round_size()
    sent = 0
    cpu_before = cpu_seconds(target.pid) if target.pid is not None else 0.0
    client_before = _children_cpu()
    machine_before = machine_busy()
    start = time.perf_counter()
    for _ in range(max_rounds):
        if not target.alive():
            raise BenchError(f"{target.name} is no longer running")
        smtp_source(
            target.port, cell.sessions, batch, cell.size, cell.per_session > 1, cell.message
        )
        sent += batch
        if time.perf_counter() - start >= min_seconds:
            break
    end = time.perf_counter()
    if target.maildir is not None:
        if not target.acks_after_delivery:
            end = wait_delivered(target.maildir, sent)
        got = count_delivered(target.maildir)
        if got != sent:
            raise BenchError(f"{sent} messages accepted but {got} files in new/")
    server_cpu = cpu_seconds(target.pid) - cpu_before if target.pid is not None else None
    client_cpu = _children_cpu() - client_before
    machine_cpu = machine_busy() - machine_before
    return Measured(sent, end - start, server_cpu, client_cpu, machine_cpu, create)


def machine_busy() -> float:
    """CPU seconds spent on all processors so far, idle and I/O wait excluded (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(f) for f in stat.readline().split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads) and of its live
    descendants (a supervisor's workers, Maildir delivery agents), from /proc."""
    used: dict[int, float] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cpu, parent = _stat(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            used[int(entry)] = cpu
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += used.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def _stat(pid: int) -> tuple[float, int]:
    """(user + system seconds, parent pid) of one process."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[1])


def _children_cpu() -> float:
    """CPU time of waited-for children: here, the smtp-source runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- memory ----------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """The `Vm*` lines of /proc/PID/status, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Vm"):
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0])
    return values


def rss_kib(pid: int) -> int:
    return proc_status(pid)["VmRSS"]


def hwm_kib(pid: int) -> int:
    return proc_status(pid)["VmHWM"]


def settle(pid: int, seconds: float = 0.5) -> int:
    """VmRSS once it has stopped moving (or after a bounded wait)."""
    last = rss_kib(pid)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        time.sleep(seconds / 5)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


class LineClient:
    """Just enough SMTP client for banners and one large message."""

    def __init__(self, port: int, timeout: float = 30.0, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.buf = b""

    def reply(self) -> tuple[int, bytes]:
        """Read one (possibly multi-line) reply: its code and its last line."""
        while True:
            end = self.buf.find(b"\r\n")
            while end < 0:
                data = self.sock.recv(4096)
                if not data:
                    raise BenchError("connection closed while waiting for a reply")
                self.buf += data
                end = self.buf.find(b"\r\n")
            line, self.buf = self.buf[:end], self.buf[end + 2 :]
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), line

    def command(self, line: str, expect: int) -> None:
        self.sock.sendall(line.encode("ascii") + b"\r\n")
        code, text = self.reply()
        if code != expect:
            got = text.decode("ascii", errors="replace")
            raise BenchError(f"{line.split(maxsplit=1)[0]}: expected {expect}, got {got}")

    def close(self) -> None:
        self.sock.close()


def idle_connections(pid: int, port: int, count: int) -> dict[str, float]:
    """VmRSS growth of `pid` while `count` connections sit idle after the banner."""
    before = settle(pid)
    clients: list[LineClient] = []
    try:
        for i in range(count):
            # Like real clients, from many addresses: 127.0.0.2 and up, IDLE_PER_SOURCE
            # each, under kittiwake's default max_connections_per_ip (100).
            client = LineClient(port, source=f"127.0.0.{2 + i // IDLE_PER_SOURCE}")
            clients.append(client)
            code, text = client.reply()
            if code != 220:
                raise BenchError(f"connection {len(clients)}: banner {text!r}")
        after = settle(pid)
    finally:
        for client in clients:
            client.close()
    return {
        "connections": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "per_connection_kib": (after - before) / count,
    }


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.005)


def big_message(pid: int, port: int, size: int) -> dict[str, float | int | str]:
    """Memory growth of `pid` while one message of `size` bytes (headers included) goes in."""
    header = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: large message\r\n"
        f"Message-ID: <big.{time.time_ns()}@{HOSTNAME}>\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n\r\n"
    ).encode("ascii")
    line = b"x" * 78 + b"\r\n"
    chunk = line * (MiB // len(line))
    body_size = size - len(header)
    before = settle(pid)
    hwm_before = hwm_kib(pid)
    sampler = _Sampler(pid)
    sampler.start()
    client = LineClient(port, timeout=120.0)
    started = time.perf_counter()
    try:
        code, text = client.reply()
        if code != 220:
            raise BenchError(f"banner {text!r}")
        client.command(f"EHLO {HOSTNAME}", 250)
        client.command(f"MAIL FROM:<{SENDER}> SIZE={size}", 250)
        client.command(f"RCPT TO:<{RECIPIENT}>", 250)
        client.command("DATA", 354)
        client.sock.sendall(header)
        left = body_size
        while left > 0:
            piece = chunk if left >= len(chunk) else _tail_piece(line, left)
            client.sock.sendall(piece)
            left -= len(piece)
        client.sock.sendall(b".\r\n")
        code, text = client.reply()
        seconds = time.perf_counter() - started
        try:
            client.command("QUIT", 221)
        except (OSError, BenchError):
            pass
    finally:
        client.close()
        sampler.stop.set()
        sampler.join()
    hwm_after = hwm_kib(pid)
    peak = max(sampler.peak, hwm_after if hwm_after > hwm_before else 0)
    return {
        "size": size,
        "reply": text.decode("ascii", errors="replace"),
        "accepted": code == 250,
        "seconds": seconds,
        "rss_before_kib": before,
        "peak_kib": peak,
        "growth_kib": max(0, peak - before),
    }


def _tail_piece(line: bytes, left: int) -> bytes:
    """The last `left` bytes of the body: whole lines, the final one cut short."""
    full, rest = divmod(left, len(line))
    if 0 < rest < 2:  # a 1-byte line cannot end in CR LF; lengthen the previous one
        return line * (full - 1) + b"x" * (len(line) - 2 + rest) + b"\r\n"
    return line * full + (b"x" * (rest - 2) + b"\r\n" if rest else b"")


# -- profiles --------------------------------------------------------------------------


class Profiler:
    """`py-spy record` on one pid: the thread holding the GIL, raw stacks into a file.

    `--gil` keeps only samples where Python code runs, so the profile is where
    CPU goes; time a thread spends blocked in a system call (fsync) is not in it.
    `--subprocesses` follows worker processes (`-j 2`): their samples add up
    with the supervisor's, each stack starting with its process.
    """

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        binary = tool("py-spy")
        if binary is None:
            raise BenchError("py-spy is not installed (pip install py-spy)")
        self.out = out
        self.proc = subprocess.Popen(
            [
                *(binary, "record", "--pid", str(pid), "--rate", str(rate)),
                *("--format", "raw", "--function", "--gil", "--nonblocking", "--subprocesses"),
                *("--output", str(out)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def summarize_profile(path: Path, top: int = 15) -> str:
    """Top functions by own and by inclusive samples, from py-spy's raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return f"{path}: no samples"
    lines = [f"{path.name}: {total} samples"]
    for title, counter in (("own time", own), ("inclusive", inclusive)):
        lines.append(f"  top {top} by {title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)
