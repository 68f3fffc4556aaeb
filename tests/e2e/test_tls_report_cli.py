"""`kittiwake tls-report` as an operator runs it, on files the real store wrote.

The command runs as its own process (`python -m kittiwake tls-report`),
once on day files written by `TLSReportStore` in this process, and once
next to a running server whose `test.tlsrpt` endpoint records attempts
through the shared store, as `target.remote` does: the file appears while
the server runs, and what it counted last is written when it stops.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kw import WAIT, Kittiwake, env

from kittiwake.mx_auth.base import PolicyReport
from kittiwake.tlsrpt import TLSAttempt
from kittiwake.tlsrpt.store import TLSReportStore

Start = Callable[..., Kittiwake]


def tls_report(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kittiwake", "tls-report", "-c", str(tmp / "kittiwake.conf"), *args],
        check=False,
        cwd=tmp,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def reports(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def write_days(tmp: Path) -> None:
    """Two days of attempts, written by the real store as the server would."""
    (tmp / "kittiwake.conf").write_text(
        "state_dir data\nhostname mx.sender.example\n"
        "smtp tcp://127.0.0.1:0 {\n deliver_to dummy\n}\n"
    )
    sts = PolicyReport(
        "sts", "sts.example", ("version: STSv1", "mode: enforce"), ("mx.sts.example",)
    )
    clock = [dt.datetime(2016, 4, 1, 12, tzinfo=dt.UTC).timestamp()]
    store = TLSReportStore(str(tmp / "data" / "tls_reports"), interval=3600, clock=lambda: clock[0])
    for _ in range(3):
        store.record(TLSAttempt("sts.example", "success", (sts,), sending_ip="192.0.2.1"))
    store.record(
        TLSAttempt(
            "sts.example",
            "certificate-expired",
            (sts,),
            sending_ip="192.0.2.1",
            receiving_mx="mx.sts.example",
            receiving_ip="198.51.100.7",
            helo="mx.sts.example",
            detail="certificate has expired",
        )
    )
    store.record(
        TLSAttempt("plain.example", "starttls-not-supported", (), receiving_mx="mx.plain.example")
    )
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    clock[0] = dt.datetime.combine(yesterday, dt.time(6), dt.UTC).timestamp()
    store.record(TLSAttempt("late.example", "success", ()))
    store.close()


def test_reports_of_a_day_one_json_per_line(tmp_path: Path) -> None:
    write_days(tmp_path)
    done = tls_report(
        tmp_path,
        "--day",
        "2016-04-01",
        "--organization",
        "Sender Org",
        "--contact",
        "tls@sender.example",
    )
    plain, sts = reports(done)
    assert sts == {
        "organization-name": "Sender Org",
        "date-range": {
            "start-datetime": "2016-04-01T00:00:00Z",
            "end-datetime": "2016-04-01T23:59:59Z",
        },
        "contact-info": "tls@sender.example",
        "report-id": "2016-04-01T00:00:00Z_sts.example@Sender Org",
        "policies": [
            {
                "policy": {
                    "policy-type": "sts",
                    "policy-string": ["version: STSv1", "mode: enforce"],
                    "policy-domain": "sts.example",
                    "mx-host": ["mx.sts.example"],
                },
                "summary": {"total-successful-session-count": 3, "total-failure-session-count": 1},
                "failure-details": [
                    {
                        "result-type": "certificate-expired",
                        "sending-mta-ip": "192.0.2.1",
                        "receiving-mx-hostname": "mx.sts.example",
                        "receiving-ip": "198.51.100.7",
                        "receiving-mx-helo": "mx.sts.example",
                        "failure-reason-code": "certificate has expired",
                        "failed-session-count": 1,
                    }
                ],
            }
        ],
    }
    assert plain["policies"][0]["policy"] == {
        "policy-type": "no-policy-found",
        "policy-domain": "plain.example",
    }
    # Defaults come from the configuration's hostname.
    [only] = reports(tls_report(tmp_path, "--day", "2016-04-01", "--domain", "STS.example."))
    assert only["organization-name"] == "mx.sender.example"
    assert only["contact-info"] == "postmaster@mx.sender.example"
    assert only["policies"] == sts["policies"]


def test_the_default_day_is_yesterday_utc(tmp_path: Path) -> None:
    write_days(tmp_path)
    [late] = reports(tls_report(tmp_path))
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    assert late["date-range"]["start-datetime"] == f"{yesterday}T00:00:00Z"
    assert late["policies"][0]["summary"]["total-successful-session-count"] == 1


def test_missing_data_and_bad_arguments(tmp_path: Path) -> None:
    write_days(tmp_path)
    none = tls_report(tmp_path, "--day", "2001-01-01")
    assert (none.returncode, none.stdout) == (0, "")
    assert "no TLS attempts recorded on 2001-01-01" in none.stderr
    other = tls_report(tmp_path, "--day", "2016-04-01", "--domain", "other.example")
    assert (other.returncode, other.stdout) == (1, "")
    assert "no TLS attempts to other.example recorded on 2016-04-01" in other.stderr
    bad = tls_report(tmp_path, "--day", "2016-4-1")
    assert bad.returncode == 2
    assert "invalid day '2016-4-1': expected YYYY-MM-DD" in bad.stderr
    broken = tmp_path / "data" / "tls_reports" / "2016-04-02.json"
    broken.write_text("[]")
    damaged = tls_report(tmp_path, "--day", "2016-04-02")
    assert damaged.returncode == 1
    assert "2016-04-02.json: not a kittiwake TLS report day file" in damaged.stderr
    missing = tls_report(tmp_path, "-c", str(tmp_path / "nope.conf"))
    assert missing.returncode == 2


def probe(port: int, lines: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        f = sock.makefile("rwb")
        for line in lines:
            f.write(line.encode() + b"\n")
            f.flush()
            assert f.readline() == b"ok\n"


def test_a_running_server_writes_periodically_and_at_shutdown(
    kittiwake: Start, tmp_path: Path
) -> None:
    server = kittiwake(
        "state_dir data\nhostname mx.sender.example\n"
        "test.tlsrpt tcp://127.0.0.1:0 {\n grace 1s\n}\n"
    )
    probe(
        server.port(),
        ["sts.example success mx.sts.example sts"] * 2
        + ["plain.example starttls-not-supported mx.plain.example"],
    )
    today = dt.datetime.now(dt.UTC).date().isoformat()
    path = tmp_path / "data" / "tls_reports" / f"{today}.json"
    deadline = time.monotonic() + WAIT
    while not path.exists():  # the writer thread's periodic write (every 5 s)
        assert time.monotonic() < deadline, f"no day file; log:\n{server.log}"
        time.sleep(0.1)
    running = {
        r["policies"][0]["policy"]["policy-domain"]: r
        for r in reports(tls_report(tmp_path, "--day", today))
    }
    assert running["sts.example"]["policies"][0]["summary"] == {
        "total-successful-session-count": 2,
        "total-failure-session-count": 0,
    }
    assert running["plain.example"]["policies"][0]["failure-details"] == [
        {
            "result-type": "starttls-not-supported",
            "sending-mta-ip": "127.0.0.1",
            "receiving-mx-hostname": "mx.plain.example",
            "failed-session-count": 1,
        }
    ]
    # Counted just before SIGTERM: only the shutdown write can have them.
    probe(server.port(), ["sts.example certificate-expired mx.sts.example sts"] * 4)
    assert server.stop() == 0
    [sts] = reports(tls_report(tmp_path, "--day", today, "--domain", "sts.example"))
    assert sts["policies"][0]["summary"] == {
        "total-successful-session-count": 2,
        "total-failure-session-count": 4,
    }
    assert sts["policies"][0]["failure-details"][0]["failed-session-count"] == 4
