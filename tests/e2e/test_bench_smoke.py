"""The benchmarks still run: each in a tiny configuration, real processes throughout.

`bench/smtp.py`: a tiny matrix against kittiwake alone. `bench/queue_relay.py`:
60 messages through kittiwake's queue and through a private Postfix, both
relaying to smtp-sink. `bench/instructions.py`: kittiwake under valgrind's
callgrind (Debian package `valgrind`), 50 messages counted. `bench/opcodes.py`:
40 messages through real sessions in its own process, bytecodes counted.

Each benchmark starts `kittiwake run` and drives it with Postfix's
`smtp-source`, so this fails where that tool is missing (Debian package
`postfix`, which `.ci/run` installs). It checks that messages were really accepted (a rate
above zero in both the printed table and the JSON) and that the memory
probes produced figures, not that any target is met: timings on a shared
test machine mean nothing. They run kittiwake from the sources
(`--source`), which needs no build; test_compiled.py runs `bench/smtp.py`
on the compiled build it makes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from kw import need_tool

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "smtp.py"
QUEUE_BENCH = ROOT / "bench" / "queue_relay.py"
INSTRUCTIONS = ROOT / "bench" / "instructions.py"
OPCODES = ROOT / "bench" / "opcodes.py"


def run_bench(script: Path, *args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    """Run a benchmark script to its end; its output, which must come with status 0."""
    result = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.timeout(150)
def test_quick_kittiwake_discard_reports_a_rate(tmp_path: Path) -> None:
    need_tool("smtp-source", "postfix")
    report = tmp_path / "bench.json"
    stdout = run_bench(
        BENCH,
        *("--quick", "--only", "kittiwake-discard", "--per-session", "20", "--source"),
        *("--json", str(report), "--dir", str(tmp_path)),
        cwd=tmp_path,
    )

    rows = re.findall(r"^kittiwake-discard\s+(\d+)\s+10K\s+20\s+(\d+)\s+(\d+)\s", stdout, re.M)
    assert [int(sessions) for sessions, _, _ in rows] == [1, 10]
    assert all(int(rate) > 0 for _, _, rate in rows)

    data = json.loads(report.read_text())
    results = data["results"]
    assert {r["server"] for r in results} == {"kittiwake-discard"}
    assert all(r["error"] is None and r["rate"] > 0 and r["messages"] > 0 for r in results)
    assert data["idle"]["kittiwake"]["connections"] == 200
    assert data["big_message"]["kittiwake"]["accepted"] is True
    assert data["big_message"]["kittiwake"]["delivered"] == 1
    memory_targets = [t for t in data["targets"] if str(t["target"]).startswith("memory:")]
    assert [t["status"] in ("PASS", "MISS") for t in memory_targets] == [True, True]


@pytest.mark.timeout(150)
def test_maildir_runs_probe_file_creation_and_move_files_aside(tmp_path: Path) -> None:
    """Each Maildir run probes what creating a file costs first, and the
    delivered files are moved aside between runs, never deleted (docs/bench.md,
    "Deleted files slow the next run"); `--keep` leaves them all in place."""
    need_tool("smtp-source", "postfix")
    report = tmp_path / "bench.json"
    stdout = run_bench(
        BENCH,
        *("--quick", "--only", "kittiwake-maildir", "--per-session", "20", "--no-memory"),
        *("--source", "--keep", "--json", str(report), "--dir", str(tmp_path)),
        cwd=tmp_path,
    )

    assert re.search(r"^file creation before the Maildir runs: \d+-\d+ µs", stdout, re.M)
    results = json.loads(report.read_text())["results"]
    assert [r["sessions"] for r in results] == [1, 10]
    for r in results:
        assert r["error"] is None and r["messages"] > 0
        assert len(r["create_us"]) == 1 and r["create_us"][0] > 0
    (kept,) = tmp_path.glob("kittiwake-bench-*")
    work = kept / "kittiwake-maildir"
    in_new = [f for d in (work / "maildir").rglob("new") for f in d.iterdir()]
    moved = list((work / "maildir.delivered").iterdir())
    assert len(in_new) == results[-1]["messages"]
    # The first run's files and the message that made the mailbox.
    assert len(moved) == results[0]["messages"] + 1
    probes = [f for f in (work / "maildir").rglob(".create-probe-*")]
    assert len(probes) == 2 * 200


@pytest.mark.timeout(150)
def test_queue_relay_bench_reports_both_servers(tmp_path: Path) -> None:
    need_tool("smtp-source", "postfix")
    need_tool("smtp-sink", "postfix")
    report = tmp_path / "queue.json"
    stdout = run_bench(
        QUEUE_BENCH,
        *("--messages", "60", "--sessions", "5"),
        # No --dir: Postfix's daemons could not reach pytest's private tmp_path.
        *("--rounds", "1", "--warm-up", "10", "--json", str(report), "--source"),
        cwd=tmp_path,
    )
    rows = dict(re.findall(r"^(kittiwake|postfix)\s+(\d+)\s+\d+\s", stdout, re.M))
    assert set(rows) == {"kittiwake", "postfix"}, stdout
    assert re.search(r"^(PASS|MISS)  relayed: kittiwake [\d.]+x Postfix", stdout, re.M)
    data = json.loads(report.read_text())
    for server in ("kittiwake", "postfix"):
        (run,) = data["results"][server]
        assert run["messages"] == 60
        assert run["accepted_rate"] > 0 and run["relayed_rate"] > 0
        assert run["relayed_seconds"] >= run["accepted_seconds"]


@pytest.mark.timeout(400)
def test_instructions_per_message_are_counted(tmp_path: Path) -> None:
    need_tool("smtp-source", "postfix")
    need_tool("valgrind", "valgrind")
    stdout = run_bench(
        INSTRUCTIONS,
        *("--per-session", "1", "--messages", "50", "--sessions", "5", "--dir", str(tmp_path)),
        "--source",
        cwd=tmp_path,
        timeout=380,
    )
    found = re.search(
        r"^kittiwake-discard \(source\): 5 sessions, 1 per session, 10 KiB: "
        r"([\d,]+) k instructions",
        stdout,
        re.M,
    )
    assert found, stdout
    # A message costs the interpreter some hundreds of thousands of
    # instructions: far from nothing, and far from a runaway.
    assert 100 <= int(found.group(1).replace(",", "")) <= 100_000


@pytest.mark.timeout(120)
def test_bytecodes_per_message_are_counted_by_function() -> None:
    stdout = run_bench(OPCODES, "--messages", "40", "--top", "200", timeout=100)
    head, *rows = stdout.splitlines()
    found = re.fullmatch(
        r"([\d,]+) bytecodes per message \(40 messages, 20 per session, 10 KiB\)", head
    )
    assert found, head
    assert 1_000 <= int(found.group(1).replace(",", "")) <= 100_000
    # The parts of the hot path are there, named by module and function.
    named = {row.split()[-1] for row in rows}
    for part in ("server/session.py:_run", "protocol/connection.py:_next_command", "log.py:_emit"):
        assert part in named, stdout
