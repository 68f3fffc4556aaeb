"""Instructions per message: kittiwake's own cost, counted instead of timed.

Run as `python bench/instructions.py [--per-session LIST] [--messages N]
[--sessions N] [--size BYTES] [--log-off] [--durable] [--dir DIR]`.

On a shared virtual machine the rate of one benchmark run swings by a
third from one minute to the next (docs/bench.md), which hides any change
worth less than that. This counts instead: it starts kittiwake (the same
configuration as `bench/smtp.py`'s kittiwake-discard, or with `--durable`
kittiwake-maildir) under valgrind's callgrind, which counts every
instruction the process executes, sends `--messages` messages with
`smtp-source` (after a warm-up), and prints the instructions per message:
the user-space work of the interpreter, the event loop and the C
libraries, none of the kernel's. The count is repeatable to about 1 %
(`PYTHONHASHSEED=0`, so dictionaries and sets are laid out alike), so two
revisions can be compared one after the other; it says nothing about
waiting (fsync) or the kernel's share. The server runs some fifty times
slower under valgrind: 400 messages take about half a minute.

Needs valgrind (Debian package `valgrind`, which has `callgrind_control`)
and `smtp-source` (package `postfix`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import smtp_load
import smtp_servers
from smtp_servers import BenchError

#: valgrind starts the interpreter slowly: seconds until the ready line.
START_TIMEOUT = 300.0
WARM_UP = 200  # messages before counting: caches, the first PTR lookup


def _total(out: Path) -> int:
    """The instructions in one callgrind dump (its `summary:` or `totals:` line)."""
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise BenchError(f"no total in {out}")


def _control(option: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", option, str(pid)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=60,
    )


def count(args: argparse.Namespace, work: Path) -> list[tuple[int, float]]:
    """(messages per session, instructions per message) for each of --per-session."""
    out = work / "callgrind.out"
    wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}")
    results = []
    with smtp_servers.kittiwake(
        "kittiwake",
        work / "kittiwake",
        durable=args.durable,
        global_extra="log off" if args.log_off else "",
        wrapper=wrapper,
        env={"PYTHONHASHSEED": "0"},
        start_timeout=START_TIMEOUT,
    ) as target:
        for dump, per in enumerate(args.per_session, start=1):
            keep = per > 1
            # With -d every session sends count/sessions messages.
            warm = args.sessions * per if keep else WARM_UP
            n = (
                args.sessions * per * max(1, args.messages // (args.sessions * per))
                if keep
                else args.messages
            )
            smtp_load.smtp_source(target.port, args.sessions, warm, args.size, keep)
            _control("-z", target.pid)
            smtp_load.smtp_source(target.port, args.sessions, n, args.size, keep)
            _control("-d", target.pid)
            results.append((per, _total(Path(f"{out}.{dump}")) / n))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-session", default="1,20", help="messages per session (list)")
    parser.add_argument("--messages", type=int, default=400, help="messages counted per cell")
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions")
    parser.add_argument("--size", type=int, default=10 * 1024, help="message size in bytes")
    parser.add_argument("--log-off", action="store_true", help="`log off`: without log lines")
    parser.add_argument("--durable", action="store_true", help="storage.maildir, not dummy")
    parser.add_argument("--dir", type=Path, help="keep the work files here")
    smtp_servers.add_source_option(parser)
    args = parser.parse_args()
    args.per_session = [int(p) for p in args.per_session.split(",")]
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install valgrind", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="kw-instr-", dir=args.dir) as tmp:
        try:
            build = smtp_servers.use_build(not args.source)
            results = count(args, Path(tmp))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    what = "maildir" if args.durable else "discard"
    for per, instructions in results:
        name = f"kittiwake-{what} ({build}{', log off' if args.log_off else ''})"
        cell = f"{args.sessions} sessions, {per} per session, {args.size // 1024} KiB"
        print(f"{name}: {cell}: {instructions / 1000:,.0f} k instructions per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
