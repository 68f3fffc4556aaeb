"""The log side of a deployment (docs/production.md): the fail2ban filter
against what a real server logs after failed logins, and the logrotate
snippet against a real server writing its log file.

Both run the shipped files from contrib/ with real tools: `fail2ban-regex`
(Debian package fail2ban) and `logrotate` (Debian package logrotate).
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
from kw import Kittiwake, need_tool

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "contrib" / "fail2ban" / "filter.d" / "kittiwake.conf"
JAIL = ROOT / "contrib" / "fail2ban" / "jail.d" / "kittiwake.conf"
LOGROTATE = ROOT / "contrib" / "logrotate" / "kittiwake"

HASH = "bcrypt:" + bcrypt.hashpw(b"right password", bcrypt.gensalt(4, b"2a")).decode()
#: A user name that tries to make the filter block someone else.
HOSTILE = 'x" src_ip=10.9.8.7 count=1 "'


def conf(tmp: Path, logfile: Path, fmt: str) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.org
log {logfile}
log_format {fmt}
tls off
auth.pass_table users {{
    table static {{
        entry me@example.org "{HASH}"
    }}
}}
submission tcp://127.0.0.1:0 {{
    auth &users
    insecure_auth yes
    deliver_to dummy
}}
"""


def fail_login(port: int, source: str, user: str) -> None:
    """One failed AUTH PLAIN on a fresh connection from `source`."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=20) as client:
        client.ehlo("client.example")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(user, "wrong password")


def attempts(port: int, plan: dict[str, list[str]]) -> None:
    """Each source address's failed logins, the sources in parallel."""
    errors: list[BaseException] = []

    def run(source: str, users: list[str]) -> None:
        try:
            for user in users:
                fail_login(port, source, user)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in plan.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_fail2ban_filter_finds_each_failed_login(
    kittiwake: Callable[..., Kittiwake], tmp_path: Path, fmt: str
) -> None:
    """Five failures from two addresses: five matches, the right addresses.

    One user name is hostile (`src_ip=` inside it); the filter still
    reports the address the connection came from.
    """
    tool = need_tool("fail2ban-regex", "fail2ban")
    logfile = tmp_path / "kittiwake.log"
    server = kittiwake(conf(tmp_path, logfile, fmt))
    server.wait_ready()
    plan = {
        "127.0.0.2": ["me@example.org", HOSTILE, "nobody@example.org"],
        "127.0.0.3": ["me@example.org", "me@example.org"],
    }
    attempts(server.port(), plan)
    assert logfile.read_text().count("authentication failed") == 5
    result = subprocess.run(
        [tool, "-o", "ip", str(logfile), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = sorted(result.stdout.split())
    assert found == ["127.0.0.2"] * 3 + ["127.0.0.3"] * 2, result.stdout
    # The summary agrees: every line with a timestamp was read.
    summary = subprocess.run(
        [tool, str(logfile), str(FILTER)], capture_output=True, text=True, timeout=60, check=False
    )
    assert re.search(r"Lines: \d+ lines, 0 ignored, 5 matched", summary.stdout), summary.stdout


def test_fail2ban_jail_names_the_filter_and_log() -> None:
    jail = JAIL.read_text()
    assert re.search(r"^filter\s*=\s*kittiwake$", jail, re.M)
    assert re.search(r"^logpath\s*=\s*/var/log/kittiwake/kittiwake\.log$", jail, re.M)
    assert "/var/log/kittiwake/*.log" in LOGROTATE.read_text()


def test_logrotate_moves_the_file_and_kittiwake_writes_the_new_one(
    kittiwake: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    """`logrotate -f` with the shipped snippet, on a file a running server writes.

    Three lines of the snippet name the machine, not the behaviour, and
    are replaced for the test: the log folder, the `su` user, and the
    postrotate command (`systemctl kill` of the unit becomes `kill` of
    this server's pid). The signal is the same, SIGUSR1.
    """
    tool = need_tool("logrotate", "logrotate")
    logdir = tmp_path / "log"
    logdir.mkdir(mode=0o750)
    logfile = logdir / "kittiwake.log"
    server = kittiwake(conf(tmp_path, logfile, "text"))
    server.wait_ready()
    fail_login(server.port(), "127.0.0.2", "before@example.org")
    assert "before@example.org" in logfile.read_text()

    snippet = LOGROTATE.read_text()
    replacements = [
        (r"^/var/log/kittiwake/", f"{logdir}/"),
        (r"su kittiwake kittiwake", "su root root"),
        (r"create 0640 kittiwake kittiwake", "create 0640 root root"),
        (
            r"systemctl kill --signal=SIGUSR1 --kill-whom=main kittiwake\.service",
            f"kill -USR1 {server.proc.pid}",
        ),
    ]
    for pattern, new in replacements:
        snippet, count = re.subn(pattern, new, snippet, flags=re.M)
        assert count == 1, pattern
    config = tmp_path / "logrotate.conf"
    config.write_text(snippet)
    os.chmod(config, 0o644)
    result = subprocess.run(
        [tool, "-f", "-s", str(tmp_path / "logrotate.state"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rotated = logdir / "kittiwake.log.1"  # delaycompress: the first stays plain
    assert rotated.is_file(), sorted(p.name for p in logdir.iterdir())
    assert "before@example.org" in rotated.read_text()
    # kittiwake says in the new file that it reopened it, then goes on there.
    deadline = time.monotonic() + 20
    while "log files reopened" not in (logfile.read_text() if logfile.exists() else ""):
        assert time.monotonic() < deadline, "no reopen line in the new file"
        time.sleep(0.05)
    fail_login(server.port(), "127.0.0.2", "after@example.org")
    assert "after@example.org" in logfile.read_text()
    assert "after@example.org" not in rotated.read_text()
    assert (logfile.stat().st_mode & 0o777) == 0o640


def test_logging_page_shows_the_shipped_logrotate_file() -> None:
    """docs/logging.md quotes contrib/logrotate/kittiwake whole, as shipped."""
    page = (ROOT / "docs" / "logging.md").read_text()
    assert f"```text\n{LOGROTATE.read_text().rstrip()}\n```" in page
