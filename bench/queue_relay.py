"""Queue and relay throughput: kittiwake's `target.queue` + `target.smtp` beside Postfix.

Usage: python bench/queue_relay.py [--messages 4000] [--sessions 50] [--size 10240]
[--rounds 2] [--only kittiwake,postfix,remote,remote-noreuse] [--keep] [--quick] [--json FILE]
[--profile DIR] [--dir DIR]

Each server takes N messages of SIZE bytes (the `smtp-source -l` payload)
from `smtp-source` with S concurrent sessions, one message per connection
(`--keep`: every session sends its messages over one connection), and
relays them to a fresh `smtp-sink` on loopback:

- `kittiwake`: an `smtp` endpoint -> `target.queue` (defaults: 16 attempts
  at once) -> `target.smtp` (one connection per message) -> the sink;
- `remote` (issue 13): the same queue, but its target is `target.remote`:
  an MX lookup (`bench.test MX 10 mx.sink.test`, from a loopback DNS
  server), the connection to the sink through `--debug.smtpport`, and the
  idle pool keeping connections for the next messages;
- `remote-noreuse`: the same with the pool off (`conn_reuse_limit 1`,
  `conn_max_idle_count 0`): a connection, EHLO and QUIT per message;
- `postfix`: a private Postfix 3.7 (bench/smtp_servers.py) whose smtpd
  queues and whose smtp(8) relays everything to `relayhost =
  [127.0.0.1]:SINK` (defaults: 20 deliveries at once, connection cache).

Two rates per run, both from the same clock started just before
`smtp-source`:

- **accepted**: N / the time until `smtp-source` has its last `250`.
  Both servers answer `250` only once the message is in their queue on
  disk and synced, so this is the rate of durable acceptance; relaying
  runs at the same time and competes for the CPU, as it does in service.
- **relayed**: N / the time until the sink has received the last message
  (`smtp-sink -c` prints its counters; the `.` of the Nth message stops
  the clock): end to end, queue to downstream included.

Beside them: the servers' CPU time per message (kittiwake: its process;
Postfix: the master and every daemon it started, reaped or alive, from
/proc) and the machine's load average (before the benchmark, and around
each measurement, which counts the benchmark itself). Rounds alternate the servers and
the best rate of each counts. A warm-up (`--warm-up`, 200 messages)
precedes each measurement. The issue's goal: kittiwake at least Postfix's rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from checks import dns_zone  # noqa: E402
from smtp_load import Profiler, create_cost, smtp_source, summarize_profile  # noqa: E402
from smtp_servers import (  # noqa: E402
    HOSTNAME,
    KITTIWAKE_READY,
    BenchError,
    Process,
    add_source_option,
    dns_stub,
    free_port,
    postfix,
    postfix_master,
    python_env,
    tool,
    use_build,
    wait_for_port,
)

RELAY_TIMEOUT = 300.0  # seconds for the sink to see every message
STALL = 30.0  # seconds without a new message at the sink before giving up
SERVERS = ("kittiwake", "postfix", "remote", "remote-noreuse")
#: The issue-12 comparison; `--only remote,remote-noreuse,postfix` gives issue 13's.
DEFAULT_SERVERS = ("kittiwake", "postfix")
#: What `target.remote` finds in DNS for the recipients' domain: one MX on
#: loopback, reached at the sink's port through `--debug.smtpport`.
REMOTE_ZONE = {
    f"{HOSTNAME} MX": ["10 mx.sink.test."],
    "mx.sink.test A": ["127.0.0.1"],
}


# -- the downstream -------------------------------------------------------------------


class Sink:
    """`smtp-sink -c` on a free loopback port; `count` follows its message counter."""

    def __init__(self, work: Path) -> None:
        binary = tool("smtp-sink")
        if binary is None:
            raise BenchError("smtp-sink is not installed (Debian package postfix)")
        self.port = free_port()
        cmd = [binary, "-c", "-h", "sink.test", "-m", "1024"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # required when started as root
        cmd += [f"127.0.0.1:{self.port}", "1024"]
        self._err = open(work / "smtp-sink.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err
        )
        self.count = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        wait_for_port(self.port, lambda: self.proc.poll() is None)

    def _read(self) -> None:
        """The counters come as `sess=N quit=N mesg=N` lines ended by CR, not LF."""
        assert self.proc.stdout is not None
        pending = b""
        while chunk := self.proc.stdout.read1(4096):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in reversed(lines):
                found = re.search(rb"mesg=(\d+)", line)
                if found:
                    with self._changed:
                        self.count = max(self.count, int(found.group(1)))
                        self._changed.notify_all()
                    break

    def wait_for(self, total: int, timeout: float = RELAY_TIMEOUT) -> float:
        """`time.perf_counter()` once the sink has counted `total` messages."""
        deadline = time.monotonic() + timeout
        with self._changed:
            last, stalled = self.count, time.monotonic() + STALL
            while self.count < total:
                now = time.monotonic()
                if now > deadline or now > stalled:
                    raise BenchError(f"the sink got {self.count} of {total} messages")
                self._changed.wait(0.5)
                if self.count > last:
                    last, stalled = self.count, time.monotonic() + STALL
        return time.perf_counter()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


# -- the servers ------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    cpu: Callable[[], float]  # CPU seconds the server has used so far
    pid: int | None = None  # the one process to profile (kittiwake)


def kittiwake_config(work: Path, port: int, sink: int) -> Path:
    conf = work / "kittiwake.conf"
    conf.write_text(
        f"""state_dir {work}/state
hostname {HOSTNAME}
target.smtp downstream {{
    targets tcp://127.0.0.1:{sink}
    starttls no
}}
target.queue outq {{
    target &downstream
    location {work}/queue
}}
smtp tcp://127.0.0.1:{port} {{
    tls off
    deliver_to &outq
}}
"""
    )
    return conf


def remote_config(work: Path, port: int, reuse: bool) -> Path:
    """The queue sends through `target.remote` (MX lookup, STARTTLS attempt, the pool).

    Without reuse every delivery opens its own connection
    (`conn_reuse_limit 1`, `conn_max_idle_count 0`).
    """
    pool = "" if reuse else "    conn_reuse_limit 1\n    conn_max_idle_count 0\n"
    conf = work / "kittiwake.conf"
    conf.write_text(
        f"""state_dir {work}/state
hostname {HOSTNAME}
target.remote outbound {{
{pool}}}
target.queue outq {{
    target &outbound
    location {work}/queue
}}
smtp tcp://127.0.0.1:{port} {{
    tls off
    deliver_to &outq
}}
"""
    )
    return conf


@contextlib.contextmanager
def kittiwake(work: Path, sink: int) -> Iterator[Server]:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = kittiwake_config(work, port, sink)
    # Every client's PTR lookup stays on loopback.
    with (
        dns_stub(work) as dns,
        _kittiwake_process("kittiwake", conf, port, ["--debug.dnsoverride", dns]) as server,
    ):
        yield server


@contextlib.contextmanager
def kittiwake_remote(work: Path, sink: int, *, reuse: bool) -> Iterator[Server]:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = remote_config(work, port, reuse)
    name = "remote" if reuse else "remote-noreuse"
    with dns_zone(work, REMOTE_ZONE) as dns:
        flags = ["--debug.dnsoverride", dns, "--debug.smtpport", str(sink)]
        with _kittiwake_process(name, conf, port, flags) as server:
            yield server


@contextlib.contextmanager
def _kittiwake_process(name: str, conf: Path, port: int, flags: list[str]) -> Iterator[Server]:
    cmd = [sys.executable, "-m", "kittiwake", "run", "-c", str(conf), *flags]
    proc = Process(cmd, conf.parent / "kittiwake.log", python_env())
    try:
        proc.wait_ready(KITTIWAKE_READY)
        yield Server(name, port, lambda: tree_cpu(proc.pid), proc.pid)
    finally:
        proc.stop()


@contextlib.contextmanager
def postfix_relay(work: Path, sink: int) -> Iterator[Server]:
    with postfix("postfix", work, relay_to=sink) as target:
        master = postfix_master(work)
        if master is None:
            raise BenchError("postfix started but wrote no master.pid")
        yield Server("postfix", target.port, lambda: tree_cpu(master))


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid`, of its children it has reaped, and of those still alive.

    Postfix's daemons are the master's children and exit now and then
    (`max_use`, `max_idle`); the ones it has reaped are in its cutime and
    cstime, the others are read one by one. kittiwake is one process.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    fields = _stat(pid)
    total = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pid:
            continue
        try:
            child = _stat(int(entry))
        except OSError:
            continue
        if int(child[1]) == pid:  # ppid
            total += int(child[11]) + int(child[12])
    return total / ticks


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state is [0], ppid [1], utime [11]."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rpartition(")")[2].split()


# -- one measurement ----------------------------------------------------------------------


@dataclass
class Result:
    server: str
    messages: int
    accepted_seconds: float
    relayed_seconds: float
    cpu_ms_per_message: float
    load_before: float
    load_after: float
    #: CPU µs per file created in the server's directory just before: on ext4
    #: without a journal, the queue's own deletions of earlier runs raise it
    #: (docs/bench.md, "Deleted files slow the next run").
    create_us: float = 0.0

    @property
    def accepted_rate(self) -> float:
        return self.messages / self.accepted_seconds

    @property
    def relayed_rate(self) -> float:
        return self.messages / self.relayed_seconds


def load_average() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


def measure(server: Server, sink: Sink, args: argparse.Namespace, work: Path) -> Result:
    """Warm up, wait until relayed, then the measured N messages."""
    baseline = args.warm_up  # the sink is fresh for each measurement
    if baseline:
        smtp_source(server.port, min(args.sessions, 10), baseline, args.size, args.keep)
        sink.wait_for(baseline)
    os.sync()  # the warm-up's writes are not flushed on the measurement's time
    create = create_cost(work) * 1e6
    load_before = load_average()
    cpu_before = server.cpu()
    start = time.perf_counter()
    smtp_source(server.port, args.sessions, args.messages, args.size, args.keep)
    accepted = time.perf_counter()
    relayed = sink.wait_for(baseline + args.messages)
    cpu = server.cpu() - cpu_before
    return Result(
        server.name,
        args.messages,
        accepted - start,
        relayed - start,
        1000 * cpu / args.messages,
        load_before,
        load_average(),
        create,
    )


def _start(name: str, work: Path, sink: int) -> contextlib.AbstractContextManager[Server]:
    if name == "kittiwake":
        return kittiwake(work, sink)
    if name == "postfix":
        return postfix_relay(work, sink)
    return kittiwake_remote(work, sink, reuse=name == "remote")


def run_one(name: str, root: Path, args: argparse.Namespace) -> Result:
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    os.chmod(work, 0o755)  # Postfix's daemons must reach their directories
    sink = Sink(work)
    try:
        with _start(name, work, sink.port) as server:
            if args.profile is None or server.pid is None:
                return measure(server, sink, args, work)
            args.profile.mkdir(parents=True, exist_ok=True)
            out = args.profile / f"{name}-{len(os.listdir(args.profile))}.txt"
            profiler = Profiler(server.pid, out)
            try:
                return measure(server, sink, args, work)
            finally:
                profiler.stop()
                print(summarize_profile(out), flush=True)
    finally:
        sink.close()


# -- the report ----------------------------------------------------------------------------


def report(results: dict[str, list[Result]], args: argparse.Namespace, idle: float) -> str:
    """The table; `idle`: the load average before the benchmark started (other work).

    The load column is the 1-minute load average before and after a
    measurement; it counts the benchmark itself (Postfix's 70 processes,
    threads waiting on fsync), so only `idle` says how busy the machine was.
    """
    best = {name: _best(rs) for name, rs in results.items() if rs}
    lines = [
        f"{args.messages} messages of {args.size // 1024} KiB, {args.sessions} sessions, "
        f"{'one connection per session' if args.keep else 'one message per connection'}, "
        f"best of {args.rounds}; load average before the benchmark: {idle:.2f}",
        f"{'server':<10} {'accepted/s':>10} {'relayed/s':>10} {'ms CPU/msg':>10} {'load':>11}",
    ]
    for name, r in best.items():
        load = f"{r.load_before:.2f}-{r.load_after:.2f}"
        lines.append(
            f"{name:<10} {r.accepted_rate:>10.0f} {r.relayed_rate:>10.0f} "
            f"{r.cpu_ms_per_message:>10.2f} {load:>11}"
        )
    if "kittiwake" in best and "postfix" in best:
        k, p = best["kittiwake"], best["postfix"]
        for what, kr, pr in (
            ("accepted", k.accepted_rate, p.accepted_rate),
            ("relayed", k.relayed_rate, p.relayed_rate),
        ):
            verdict = "PASS" if kr >= pr else "MISS"
            lines.append(f"{verdict}  {what}: kittiwake {kr / pr:.2f}x Postfix (goal >= 1)")
    return "\n".join(lines)


def _best(results: list[Result]) -> Result:
    """The round with the best end-to-end rate (its accepted rate goes with it)."""
    return max(results, key=lambda r: r.relayed_rate)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=10 * 1024, help="payload bytes")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each")
    parser.add_argument("--warm-up", type=int, default=200, help="messages before measuring")
    parser.add_argument(
        "--only", default=",".join(DEFAULT_SERVERS), help=f"some of {','.join(SERVERS)}"
    )
    parser.add_argument("--keep", action="store_true", help="smtp-source -d")
    parser.add_argument("--quick", action="store_true", help="300 messages, one round")
    parser.add_argument("--dir", type=Path, default=None, help="where the work goes")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--profile", type=Path, help="py-spy kittiwake into DIR (do not quote its rates)"
    )
    add_source_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 300, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SERVERS)
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))}")
    if tool("smtp-source") is None:
        print("smtp-source is not installed (Debian package postfix)", file=sys.stderr)
        return 2
    print(f"kittiwake: {use_build(not args.source)}")
    results: dict[str, list[Result]] = {name: [] for name in names}
    failures: list[str] = []
    idle = load_average()
    with tempfile.TemporaryDirectory(prefix="kittiwake-bench-queue-", dir=args.dir) as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        for _ in range(args.rounds):
            for name in names:
                try:
                    result = run_one(name, root, args)
                except BenchError as exc:
                    failures.append(f"{name}: {exc}")
                    print(f"{name}: FAILED: {exc}", file=sys.stderr)
                    continue
                results[name].append(result)
                print(
                    f"{name:>9}: accepted {result.accepted_rate:6.0f}/s, relayed "
                    f"{result.relayed_rate:6.0f}/s, {result.cpu_ms_per_message:.2f} ms CPU/msg, "
                    f"file creation {result.create_us:.0f} µs",
                    flush=True,
                )
    print(report(results, args, idle))
    if args.json is not None:
        args.json.write_text(json.dumps(_payload(results, args, idle), indent=2))
    return 1 if failures else 0


def _payload(
    results: dict[str, list[Result]], args: argparse.Namespace, idle: float
) -> dict[str, object]:
    def row(r: Result) -> dict[str, object]:
        return asdict(r) | {"accepted_rate": r.accepted_rate, "relayed_rate": r.relayed_rate}

    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_before": idle,
        "results": {name: [row(r) for r in rs] for name, rs in results.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
