"""SMTP throughput and memory: kittiwake against aiosmtpd, smtp-sink and Postfix.

Run as `python bench/smtp.py [--quick] [--only NAMES] [--json PATH]
[--profile DIR] [--seconds S] [--repeats N] [--sessions LIST] [--sizes LIST]
[--per-session LIST] [--no-memory] [--dir DIR] [--source]`. In one run it
starts these servers, each as its own process on a loopback high port:

    discarding      kittiwake-discard   kittiwake, `deliver_to dummy`
                    (kittiwake-discard-w2: the same with `-j 2`, two worker
                    processes; only when named in --only)
                    aiosmtpd-discard    aiosmtpd, a handler that returns 250
                    smtp-sink           Postfix's protocol-only sink (C): the ceiling
                    (python-floor: the least protocol work a Python server
                    can do on uvloop, to show what is kittiwake's own cost;
                    only when named in --only)
    durable         kittiwake-maildir   kittiwake, `storage.maildir` (fsync, then 250)
                    aiosmtpd-maildir    aiosmtpd, a handler that fsyncs a Maildir file
                    postfix-maildir     a private Postfix, virtual(8) into a Maildir

and drives each with Postfix's `smtp-source` at 1, 10 and 50 concurrent
sessions, 10 KiB and 100 KiB messages, 1 and 20 messages per session (see
`smtp_load.py` for how one cell is measured). All servers stay up for the
whole matrix and every cell is measured on each in turn, twice, in rotating
order, keeping the better rate: load from elsewhere on the machine then
hits every server alike. Then it measures memory on fresh processes: the
growth per idle connection with 2,000 connections open, and the growth
while one 32 MiB message is received with `buffer auto 1M` (kittiwake, and
aiosmtpd for comparison); kittiwake's peak (VmHWM) over the matrix comes
from the matrix processes. It prints a table, the memory figures and one
PASS/MISS line per target of issue 4, and with `--json PATH` writes
everything as JSON. `--profile DIR` attaches `py-spy` to the kittiwake
processes and prints where their time went.

kittiwake runs as `pip install .` builds it, its message path compiled
with mypyc (`bench/build.py` builds it once per source revision, about a
minute); `--source` runs src/ as it stands instead, the pure-Python build.
The report's version line says which.

`--quick` runs a reduced matrix (1 and 10 sessions, 10 KiB, one run per
cell, 200 idle connections, a 4 MiB message) in under 20 seconds; targets
defined at 50 sessions then read SKIP. The full matrix takes about 5
minutes on 2 cores: each measurement lasts at least `--seconds` (1.5) and
at least one round of `sessions * 20` messages (and at least 200 when each
session sends one message).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import smtp_load
import smtp_servers
from smtp_load import Cell, KiB, MiB
from smtp_servers import BenchError, Target

Starter = Callable[[str, Path], AbstractContextManager[Target]]
#: The most memory an idle connection may cost kittiwake (KiB).
IDLE_KIB = 6


@dataclass(frozen=True)
class Server:
    name: str
    group: str  # "discard" or "durable": ratios compare servers in the same group
    short: str  # label in the ratio column
    start: Starter
    #: Part of the matrix without --only.
    default: bool = True


SERVERS = (
    Server(
        "kittiwake-discard",
        "discard",
        "kittiwake",
        lambda n, w: smtp_servers.kittiwake(n, w, durable=False),
    ),
    Server(
        "kittiwake-discard-w2",
        "discard",
        "kittiwake-w2",
        lambda n, w: smtp_servers.kittiwake(n, w, durable=False, workers=2),
        default=False,
    ),
    Server(
        "aiosmtpd-discard",
        "discard",
        "aiosmtpd",
        lambda n, w: smtp_servers.aiosmtpd(n, w, durable=False),
    ),
    Server("smtp-sink", "discard", "smtp-sink", smtp_servers.smtp_sink),
    Server("python-floor", "discard", "floor", smtp_servers.python_floor, default=False),
    Server(
        "kittiwake-maildir",
        "durable",
        "kittiwake",
        lambda n, w: smtp_servers.kittiwake(n, w, durable=True),
    ),
    Server(
        "aiosmtpd-maildir",
        "durable",
        "aiosmtpd",
        lambda n, w: smtp_servers.aiosmtpd(n, w, durable=True),
    ),
    Server("postfix-maildir", "durable", "postfix", smtp_servers.postfix),
)
BY_NAME = {s.name: s for s in SERVERS}


@dataclass(frozen=True)
class Plan:
    sessions: tuple[int, ...]
    sizes: tuple[int, ...]
    per_session: tuple[int, ...]
    min_seconds: float  # per cell and server
    repeats: int  # each cell is measured this many times per server; the best counts
    max_rounds: int  # per cell: an upper bound whatever the server's speed
    idle_connections: int
    big_message: int  # bytes, headers included
    #: Seconds a Maildir run waits at most for fast file creation
    #: (smtp_load.wait_for_fast_creation): ext4 remembers deleted files for
    #: up to six minutes.
    settle: float

    def cells(self) -> list[Cell]:
        return [Cell(s, z, m) for z in self.sizes for s in self.sessions for m in self.per_session]


FULL = Plan((1, 10, 50), (10 * KiB, 100 * KiB), (1, 20), 1.5, 2, 400, 2000, 32 * MiB, 420.0)
QUICK = Plan((1, 10), (10 * KiB,), (1, 20), 0.3, 1, 50, 200, 4 * MiB, 0.0)
BIG_BUFFER = "buffer auto 1M"


@dataclass
class Result:
    server: str
    group: str
    sessions: int
    size: int
    per_session: int
    messages: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    server_cpu: float | None = None  # cores the server process used (1.0 = one core)
    client_cpu: float | None = None  # cores smtp-source used
    machine_cpu: float | None = None  # cores busy on the whole machine
    rates: list[float] = field(default_factory=list)  # every repeat; `rate` is the best
    #: Maildir servers: CPU µs per file created, probed before each repeat.
    create_us: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    peak_kib: dict[str, int] = field(default_factory=dict)
    idle: dict[str, dict[str, float]] = field(default_factory=dict)
    big: dict[str, dict[str, float | int | str]] = field(default_factory=dict)
    memory_errors: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)
    targets: list[dict[str, object]] = field(default_factory=list)

    def rate(self, server: str, cell: Cell) -> float | None:
        for r in self.results:
            if (r.server, r.sessions, r.size, r.per_session) == (
                server,
                cell.sessions,
                cell.size,
                cell.per_session,
            ):
                return r.rate if r.error is None else None
        return None


def log(text: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def size_label(size: int) -> str:
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB}M"
    return f"{size // KiB}K" if size % KiB == 0 else str(size)


# -- the matrix ------------------------------------------------------------------------


def run_matrix(
    servers: list[Server], plan: Plan, root: Path, report: Report, profile_dir: Path | None
) -> None:
    """Every cell on every server, the servers side by side, best of `plan.repeats`.

    All servers are started first and stay up (an idle one costs nothing),
    so each cell is measured on every server within seconds, the order
    rotating between repeats: load from elsewhere on the machine then hits
    all servers alike instead of whichever happened to run at the time.
    """
    with contextlib.ExitStack() as stack:
        targets: dict[str, Target] = {}
        broken: dict[str, str] = {}
        for server in servers:
            try:
                start = server.start(server.name, root / server.name)
                targets[server.name] = stack.enter_context(start)
            except (BenchError, OSError) as exc:
                broken[server.name] = str(exc).splitlines()[0]
                log(f"{server.name}: {exc}")
        profilers: dict[str, smtp_load.Profiler] = {}
        try:
            for name, target in targets.items():
                if profile_dir is not None and target.pid is not None and "kittiwake" in name:
                    profilers[name] = smtp_load.Profiler(target.pid, profile_dir / f"{name}.txt")
            for cell in plan.cells():
                report.results += measure_cell(servers, targets, broken, cell, plan)
        finally:
            for name, profiler in profilers.items():
                profiler.stop()
                report.profiles[name] = smtp_load.summarize_profile(profiler.out)
        for name, target in targets.items():
            if target.pid is not None and target.alive():
                report.peak_kib[name] = smtp_load.hwm_kib(target.pid)


def measure_cell(
    servers: list[Server],
    targets: dict[str, Target],
    broken: dict[str, str],
    cell: Cell,
    plan: Plan,
) -> list[Result]:
    results = {
        s.name: Result(s.name, s.group, cell.sessions, cell.size, cell.per_session, error=None)
        for s in servers
    }
    for name, reason in broken.items():
        results[name].error = f"not started: {reason}"
    for repeat in range(plan.repeats):
        shift = repeat % len(servers)
        for server in servers[shift:] + servers[:shift]:
            result = results[server.name]
            if result.error is not None:
                continue
            label = f"{server.name} {cell.sessions}x{size_label(cell.size)}x{cell.per_session}"
            try:
                measured = smtp_load.measure(
                    targets[server.name], cell, plan.min_seconds, plan.max_rounds, plan.settle, log
                )
            except BenchError as exc:
                result.error = str(exc)
                log(f"{label}: error: {exc}")
                continue
            create = (
                "" if measured.create is None else f", file creation {measured.create * 1e6:.0f} µs"
            )
            log(
                f"{label}: {measured.rate:8.0f}/s ({measured.messages} in "
                f"{measured.seconds:.2f}s{create})"
            )
            result.rates.append(measured.rate)
            if measured.create is not None:
                result.create_us.append(measured.create * 1e6)
            if measured.rate > result.rate:
                result.messages, result.seconds, result.rate = (
                    measured.messages,
                    measured.seconds,
                    measured.rate,
                )
                seconds = measured.seconds
                if measured.server_cpu is not None:
                    result.server_cpu = measured.server_cpu / seconds
                result.client_cpu = measured.client_cpu / seconds
                result.machine_cpu = measured.machine_cpu / seconds
    return list(results.values())


# -- memory ----------------------------------------------------------------------------


def warm_up(target: Target) -> None:
    """A few messages first, so lazily built state is not counted as growth."""
    smtp_load.smtp_source(target.port, 2, 20, 10 * KiB, keep=True)


def run_memory(kind: str, plan: Plan, root: Path, report: Report) -> None:
    """Idle-connection and large-message growth for `kind` (kittiwake or aiosmtpd)."""

    def start(what: str) -> AbstractContextManager[Target]:
        work = root / f"memory-{kind}-{what}"
        # The large message goes to durable storage: it must really be read and written.
        if kind == "kittiwake":
            extra = BIG_BUFFER if what == "big" else ""
            return smtp_servers.kittiwake(kind, work, durable=what == "big", endpoint_extra=extra)
        return smtp_servers.aiosmtpd(kind, work, durable=what == "big")

    for what in ("idle", "big"):
        try:
            with start(what) as target:
                assert target.pid is not None
                warm_up(target)
                smtp_load.clear_delivered(target.maildir)
                if what == "idle":
                    report.idle[kind] = smtp_load.idle_connections(
                        target.pid, target.port, plan.idle_connections
                    )
                    log(f"{kind} idle: {report.idle[kind]['per_connection_kib']:.1f} KiB/conn")
                else:
                    big = smtp_load.big_message(target.pid, target.port, plan.big_message)
                    big["delivered"] = smtp_load.count_delivered(target.maildir)
                    report.big[kind] = big
                    log(
                        f"{kind} {size_label(plan.big_message)} message: {big['reply']}, "
                        f"growth {int(big['growth_kib']) / 1024:.1f} MiB"
                    )
        except (BenchError, OSError) as exc:
            report.memory_errors[f"{kind} {what}"] = str(exc)
            log(f"{kind} {what}: {exc}")


# -- targets ---------------------------------------------------------------------------


def ratio_target(
    report: Report,
    plan: Plan,
    title: str,
    ours: str,
    peers: list[str],
    factor: float,
    *,
    sessions: int,
    sizes: tuple[int, ...] | None = None,
) -> dict[str, object]:
    """kittiwake at least `factor` times the fastest of `peers`, in every matching cell."""
    cells = [
        c for c in plan.cells() if c.sessions == sessions and (sizes is None or c.size in sizes)
    ]
    if not cells:
        return {"target": title, "status": "SKIP", "detail": f"no {sessions}-session cells run"}
    ratios: list[tuple[float, str]] = []
    for cell in cells:
        mine = report.rate(ours, cell)
        theirs = [report.rate(p, cell) for p in peers]
        label = f"{size_label(cell.size)}x{cell.per_session}"
        if mine is None or any(t is None for t in theirs):
            return {"target": title, "status": "SKIP", "detail": f"{label}: missing result"}
        best = max(t for t in theirs if t is not None)
        ratios.append((mine / best if best else float("inf"), label))
    worst = min(ratios)
    met = sum(r >= factor for r, _ in ratios)
    detail = f"met in {met} of {len(ratios)} cells: " + ", ".join(
        f"{label} x{r:.2f}" for r, label in ratios
    )
    status = "PASS" if worst[0] >= factor else "MISS"
    return {"target": title, "status": status, "worst": worst[0], "detail": detail}


def evaluate(report: Report, plan: Plan) -> None:
    t = report.targets
    t.append(
        ratio_target(
            report,
            plan,
            "discard: kittiwake >= 3x aiosmtpd at 50 sessions",
            "kittiwake-discard",
            ["aiosmtpd-discard"],
            3.0,
            sessions=50,
        )
    )
    t.append(
        ratio_target(
            report,
            plan,
            "discard: kittiwake >= 0.5x smtp-sink at 50 sessions",
            "kittiwake-discard",
            ["smtp-sink"],
            0.5,
            sessions=50,
        )
    )
    t.append(
        ratio_target(
            report,
            plan,
            "maildir: kittiwake >= 2x fastest durable peer at 50 sessions, 10 KiB",
            "kittiwake-maildir",
            ["aiosmtpd-maildir", "postfix-maildir"],
            2.0,
            sessions=50,
            sizes=(10 * KiB,),
        )
    )
    idle = report.idle.get("kittiwake")
    # Issue 15's bound (issue 4 allowed 10 KiB).
    title = f"memory: <= {IDLE_KIB} KiB per idle connection ({plan.idle_connections} open)"
    if idle is None:
        t.append({"target": title, "status": "SKIP", "detail": "not measured"})
    else:
        per = idle["per_connection_kib"]
        t.append(
            {
                "target": title,
                "status": "PASS" if per <= IDLE_KIB else "MISS",
                "worst": per,
                "detail": f"{per:.1f} KiB per connection",
            }
        )
    big = report.big.get("kittiwake")
    title = f"memory: {size_label(plan.big_message)} message accepted with < 8 MiB growth"
    if big is None:
        t.append({"target": title, "status": "SKIP", "detail": "not measured"})
    else:
        growth = int(big["growth_kib"]) / 1024
        ok = bool(big["accepted"]) and growth < 8
        t.append(
            {
                "target": title,
                "status": "PASS" if ok else "MISS",
                "worst": growth,
                "detail": f"{big['reply']}; growth {growth:.1f} MiB",
            }
        )


# -- output ----------------------------------------------------------------------------


def format_table(report: Report, plan: Plan) -> str:
    head = (
        f"{'server':<18} {'sess':>4} {'size':>5} {'m/sess':>6} {'msgs':>6} {'msgs/s':>7} "
        f"{'ms/msg':>6} {'srv':>4} {'cli':>4} {'all':>4}  ratio"
    )
    lines = [head, "-" * len(head)]
    for group in ("discard", "durable"):
        members = [s for s in SERVERS if s.group == group]
        for cell in plan.cells():
            rows = [(s, report.rate(s.name, cell)) for s in members]
            measured = [
                r
                for r in report.results
                if r.group == group
                and (r.sessions, r.size, r.per_session)
                == (cell.sessions, cell.size, cell.per_session)
            ]
            if not measured:
                continue
            for server, rate in rows:
                res = next((r for r in measured if r.server == server.name), None)
                if res is None:
                    continue
                prefix = (
                    f"{server.name:<18} {cell.sessions:>4} {size_label(cell.size):>5} "
                    f"{cell.per_session:>6}"
                )
                if rate is None:
                    lines.append(f"{prefix} {'':>6} {'error':>7}  {res.error}")
                    continue
                ratios = "  ".join(
                    f"x{rate / other:.2f} {peer.short}"
                    for peer, other in rows
                    if peer is not server and other
                )
                per_msg = "-" if res.server_cpu is None else f"{1000 * res.server_cpu / rate:.2f}"
                cpu = (
                    f"{per_msg:>6} {_percent(res.server_cpu):>4} {_percent(res.client_cpu):>4} "
                    f"{_percent(res.machine_cpu):>4}"
                )
                lines.append(f"{prefix} {res.messages:>6} {rate:>7.0f} {cpu}  {ratios}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def format_memory(report: Report, plan: Plan) -> str:
    lines = ["memory (VmRSS / VmHWM from /proc/PID/status)"]
    for name, kib in report.peak_kib.items():
        lines.append(f"  {name:<18} peak over its matrix: {kib / 1024:7.1f} MiB")
    for kind, idle in report.idle.items():
        lines.append(
            f"  {kind:<18} {int(idle['connections'])} idle connections: "
            f"{idle['rss_before_kib'] / 1024:.1f} -> {idle['rss_after_kib'] / 1024:.1f} MiB, "
            f"{idle['per_connection_kib']:.1f} KiB per connection"
        )
    for kind, big in report.big.items():
        lines.append(
            f"  {kind:<18} one {size_label(plan.big_message)} message: {big['reply']} in "
            f"{float(big['seconds']):.2f}s, growth {int(big['growth_kib']) / 1024:.1f} MiB "
            f"(from {int(big['rss_before_kib']) / 1024:.1f} MiB), "
            f"{big.get('delivered', '?')} file(s) delivered"
        )
    for what, error in report.memory_errors.items():
        lines.append(f"  {what}: error: {error.splitlines()[0]}")
    return "\n".join(lines) + "\n"


def format_targets(report: Report) -> str:
    return "".join(f"{t['status']:<4}  {t['target']}: {t['detail']}\n" for t in report.targets)


# -- the machine -----------------------------------------------------------------------


def file_system(path: Path) -> str:
    """`DEVICE TYPE (mounted on MOUNT, rotational=0|1)` of the mount holding `path`."""
    best = ("?", "?", "")
    real = os.path.realpath(path)
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            dev, mnt, kind, *_ = line.split()
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best[2]):
                best = (dev, kind, mnt)
    rotational = "?"
    with contextlib.suppress(OSError):
        name = os.path.basename(best[0])
        rotational = Path(f"/sys/block/{name}/queue/rotational").read_text().strip()
    return f"{best[0]} {best[1]} (mounted on {best[2]}, rotational={rotational})"


def _command_output(*cmd: str) -> str:
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


def machine(root: Path) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as info:
        mem = f"{int(info.readline().split()[1]) // 1024} MiB"
    commit = _command_output("git", "-C", str(smtp_servers.ROOT), "rev-parse", "--short", "HEAD")
    dirty = _command_output("git", "-C", str(smtp_servers.ROOT), "status", "--porcelain", "src")
    postconf = smtp_servers.tool("postconf")
    try:
        aiosmtpd_version = importlib.metadata.version("aiosmtpd")
    except importlib.metadata.PackageNotFoundError:
        aiosmtpd_version = "not installed"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "disk": file_system(root),
        "python": platform.python_version(),
        "kittiwake": commit + ("+dirty" if dirty not in ("", "?") else ""),
        "aiosmtpd": aiosmtpd_version,
        "postfix": _command_output(postconf, "-d", "-h", "mail_version") if postconf else "?",
    }


# -- main ------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch(base: str | None, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kittiwake-bench-", dir=base))
    try:
        os.chmod(path, 0o755)  # Postfix's daemons (user postfix, nobody) must get through
        yield path
    finally:
        if keep:
            log(f"kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SMTP throughput and memory: kittiwake against aiosmtpd, smtp-sink, Postfix"
    )
    parser.add_argument("--quick", action="store_true", help="reduced matrix for smoke tests")
    parser.add_argument("--only", help=f"comma-separated servers to run (of: {', '.join(BY_NAME)})")
    parser.add_argument("--json", type=Path, help="also write all results as JSON here")
    parser.add_argument("--seconds", type=float, help="minimum seconds per cell and server")
    parser.add_argument("--repeats", type=int, help="measurements per cell and server (best)")
    parser.add_argument("--sessions", help="comma-separated session counts (e.g. 50)")
    parser.add_argument("--sizes", help="comma-separated message sizes in KiB (e.g. 10,100)")
    parser.add_argument("--per-session", help="comma-separated messages per session (e.g. 1,20)")
    parser.add_argument("--profile", type=Path, help="py-spy kittiwake; raw stacks go here")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--dir", help="where the temporary directory goes (its disk matters)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (deleting many files slows the next run's Maildirs)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        help=f"seconds a Maildir run may wait for fast file creation (default {FULL.settle:.0f})",
    )
    smtp_servers.add_source_option(parser)
    args = parser.parse_args(argv)
    if args.only:
        unknown = [n for n in args.only.split(",") if n not in BY_NAME]
        if unknown:
            parser.error(f"unknown server(s): {', '.join(unknown)}")
    return args


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(",") if n.strip())


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: servers get stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    plan = QUICK if args.quick else FULL
    changes: dict[str, object] = {}
    if args.seconds is not None:
        changes["min_seconds"] = args.seconds
    if args.repeats is not None:
        changes["repeats"] = max(1, args.repeats)
    if args.sessions:
        changes["sessions"] = _numbers(args.sessions)
    if args.sizes:
        changes["sizes"] = tuple(n * KiB for n in _numbers(args.sizes))
    if args.per_session:
        changes["per_session"] = _numbers(args.per_session)
    if args.settle is not None:
        changes["settle"] = args.settle
    plan = dataclasses.replace(plan, **changes)
    names = args.only.split(",") if args.only else [s.name for s in SERVERS if s.default]
    if smtp_servers.tool("smtp-source") is None:
        log("smtp-source is not installed (Debian package postfix)")
        return 2
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    report = Report()
    started = time.monotonic()
    try:
        build = smtp_servers.use_build(not args.source)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    with scratch(args.dir, args.keep) as root:
        info = machine(root)
        info["kittiwake"] += f" ({build})"
        log(f"bench: {info['nproc']} CPUs, disk {info['disk']}, kittiwake {info['kittiwake']}")
        run_matrix([BY_NAME[n] for n in names], plan, root, report, args.profile)
        if not args.no_memory:
            kinds = [k for k in ("kittiwake", "aiosmtpd") if any(n.startswith(k) for n in names)]
            for kind in kinds:
                run_memory(kind, plan, root, report)
    evaluate(report, plan)
    elapsed = time.monotonic() - started
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"kittiwake SMTP benchmark, {date}, {elapsed:.0f}s")
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']}, "
        f"kernel {info['kernel']}\ndisk: {info['disk']}"
    )
    print(
        f"versions: kittiwake {info['kittiwake']}, Python {info['python']}, "
        f"aiosmtpd {info['aiosmtpd']}, Postfix {info['postfix']}"
    )
    probes = [us for r in report.results for us in r.create_us]
    if probes:
        print(
            f"file creation before the Maildir runs: {min(probes):.0f}-{max(probes):.0f} µs "
            "of CPU per file (normal: about 20)"
        )
    print(
        f"size = smtp-source payload; m/sess = messages per session; msgs/s = best of "
        f"{plan.repeats} run(s)\nof at least {plan.min_seconds:g}s; ms/msg = server CPU time "
        "per message; CPU (100% = one core):\nsrv = the server process (- = several), "
        "cli = smtp-source, all = the whole machine;\nratio = this row's rate / the other "
        "server's\n"
    )
    print(format_table(report, plan))
    print(format_memory(report, plan))
    print(format_targets(report), end="")
    for summary in report.profiles.values():
        print()
        print(summary)
    if args.json is not None:
        payload = {
            "date": date,
            "command": [sys.executable, *sys.argv],
            "seconds": elapsed,
            "machine": info,
            "plan": asdict(plan),
            "results": [asdict(r) for r in report.results],
            "peak_kib": report.peak_kib,
            "idle": report.idle,
            "big_message": report.big,
            "memory_errors": report.memory_errors,
            "targets": report.targets,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    failed = any(r.error for r in report.results) or bool(report.memory_errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
