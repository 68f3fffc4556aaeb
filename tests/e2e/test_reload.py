"""Reloading a running server's configuration (docs/reload.md).

The real server process, real clients (smtplib, raw sockets) and the real
`kittiwake reload` command run as a process on the server's own file. The
configuration is rewritten in place and the server told by SIGUSR2 or by
the command, as an operator would.
"""

from __future__ import annotations

import base64
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kw import LAUNCHER, Dialog, Kittiwake, env, free_port
from queuetools import config as queue_config
from queuetools import entries, mailbox, send, wait_for

Start = Callable[..., Kittiwake]
FROM = "me@sender.example"
#: A routing change: ok.example refused, the rest still delivered.
CLOSED = """destination ok.example { reject 550 5.7.1 "Closed today" }
    default_destination { deliver_to &mb }"""


def conf(tmp: Path, endpoints: list[str], *, route: str = "deliver_to &mb", extra: str = "") -> str:
    """A server with one `smtp` block per listen address in `endpoints`.

    An entry may carry directives after the address (`ADDR; hostname x`).
    """
    blocks = []
    for spec in endpoints:
        address, _, directives = spec.partition(";")
        blocks.append(f"smtp {address} {{\n    tls off\n    {directives}\n    {route}\n}}\n")
    return f"""state_dir {tmp}/state
hostname mx.example.com
{extra}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{"".join(blocks)}"""


def tcp(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def reload_cmd(tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), "reload", "-c", str(tmp / "kittiwake.conf")],
        check=False,
        cwd=tmp,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def rewrite(server: Kittiwake, text: str) -> None:
    server.config_path.write_text(text)


def signal_reload(server: Kittiwake, text: str) -> None:
    """Rewrite the file, send SIGUSR2 and wait for the reload's log line."""
    done = server.log.count("reloaded ")
    rewrite(server, text)
    server.send(signal.SIGUSR2)
    wait_for(lambda: server.log.count("reloaded ") > done, message="the reloaded line")


def subjects(tmp: Path, address: str) -> list[str]:
    return [str(m["Subject"]) for m in mailbox(tmp, address)]


def message(subject: str) -> bytes:
    return f"Subject: {subject}\r\nFrom: <me@sender.example>\r\n\r\nbody\r\n".encode()


def both(*ports: int) -> str:
    """Addresses as a reload lists them: in port order."""
    return " ".join(f"127.0.0.1:{p}" for p in sorted(ports))


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


class Load:
    """20 client threads sending to `ports` the whole time.

    Half open a connection per message, half send several messages over one
    connection, so sessions that began before a reload go on after it.
    Every exception is a failure: a refused connection or a failed
    transaction.
    """

    CLIENTS = 20

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.sent: list[str] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True)
            for n in range(self.CLIENTS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def count(self) -> int:
        with self._lock:
            return len(self.sent)

    def _client(self, n: int) -> None:
        port = self.ports[n % len(self.ports)]
        per_connection = 1 if n % 2 else 5
        while not self._stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    for _ in range(per_connection):
                        subject = f"load-{uuid.uuid4().hex}"
                        client.sendmail(
                            "me@sender.example", ["rcpt@load.example"], message(subject)
                        )
                        with self._lock:
                            self.sent.append(subject)
            except (OSError, smtplib.SMTPException) as exc:
                with self._lock:
                    self.failures.append(f"port {port}: {type(exc).__name__}: {exc}")


def test_reload_under_load_refuses_nothing_and_loses_nothing(
    kittiwake: Start, tmp_path: Path
) -> None:
    """Listeners are added, removed and changed, by SIGUSR2 and by `kittiwake
    reload`, while 20 clients send to the two listeners that stay."""
    a, b, c, d = (free_port() for _ in range(4))
    server = kittiwake(conf(tmp_path, [tcp(a), tcp(b), tcp(c)]), ready=3)

    with Load([a, b]) as load:
        wait_for(lambda: load.count() >= 20, message="load running")

        # SIGUSR2: c goes, d comes, b changes (the limit its EHLO announces).
        signal_reload(server, conf(tmp_path, [tcp(a), f"{tcp(b)}; max_recipients 7", tcp(d)]))
        line = server.wait_log(r"info reload: reloaded trigger=SIGUSR2 [^\n]*")
        assert f"added=127.0.0.1:{d} " in line
        assert f"removed=127.0.0.1:{c} " in line
        assert f'kept="{both(a, b)}"' in line
        assert refused(c)
        with smtplib.SMTP("127.0.0.1", d, timeout=10) as client:
            client.sendmail("me@sender.example", ["rcpt@new.example"], message("via-d"))
        with smtplib.SMTP("127.0.0.1", b, timeout=10) as client:
            assert b"RCPTMAX=7" in client.ehlo()[1]
        at_first = load.count()
        wait_for(lambda: load.count() >= at_first + 20, message="load after the first reload")

        # `kittiwake reload`: d goes, c comes back, a changes.
        rewrite(server, conf(tmp_path, [f"{tcp(a)}; max_recipients 10", tcp(b), tcp(c)]))
        done = reload_cmd(tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == (
            f"reloaded; listeners added: 127.0.0.1:{c}; removed: 127.0.0.1:{d};"
            f" kept: {both(a, b)}\n"
        )
        assert refused(d)
        with smtplib.SMTP("127.0.0.1", c, timeout=10) as client:
            client.sendmail("me@sender.example", ["rcpt@new.example"], message("via-c"))
        at_second = load.count()
        wait_for(lambda: load.count() >= at_second + 20, message="load after the second reload")

        # The same file again: everything kept.
        signal_reload(server, server.config_path.read_text())
        wait_for(lambda: load.count() >= at_second + 40, message="load after the third reload")

    assert load.failures == []
    delivered = subjects(tmp_path, "rcpt@load.example")
    assert sorted(delivered) == sorted(load.sent)  # each exactly once
    assert len(set(delivered)) == len(delivered)
    assert sorted(subjects(tmp_path, "rcpt@new.example")) == ["via-c", "via-d"]
    # The load's sessions have ended: every retired configuration stopped.
    wait_for(
        lambda: server.log.count("previous configuration stopped") == 3,
        message="the three old configurations stopped",
    )
    assert "error" not in server.log
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_a_broken_configuration_is_refused_and_the_old_one_serves(
    kittiwake: Start, tmp_path: Path
) -> None:
    port = free_port()
    good = conf(tmp_path, [tcp(port)])
    server = kittiwake(good)

    broken = conf(tmp_path, [f"{tcp(port)}; no_such_directive 1"])
    line = next(n for n, t in enumerate(broken.splitlines(), 1) if "no_such_directive" in t)
    rewrite(server, broken)
    done = reload_cmd(tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"{server.config_path}:{line}: ")
    assert "no_such_directive" in done.stderr
    assert done.stdout == ""
    server.wait_log(r"error reload: reload refused: configuration error [^\n]*no_such_directive")

    server.send(signal.SIGUSR2)  # the same by signal: refused, logged, nothing else
    wait_for(lambda: server.log.count("reload refused") == 2, message="second refusal")
    assert server.proc.poll() is None
    send(port, "me@sender.example", ["old@ok.example"], subject="still served")
    assert subjects(tmp_path, "old@ok.example") == ["still served"]

    # An address another process holds: refused too, exit status 1.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        rewrite(server, conf(tmp_path, [tcp(port), tcp(busy)]))
        done = reload_cmd(tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("kittiwake reload: cannot start: ")
    assert "in use" in done.stderr
    send(port, "me@sender.example", ["old@ok.example"], subject="served again")

    # A moved runtime_dir, by signal (the command would look for the control
    # socket in the new place): refused, the control socket still answers.
    rewrite(server, conf(tmp_path, [tcp(port)], extra=f"runtime_dir {tmp_path}/run2"))
    server.send(signal.SIGUSR2)
    server.wait_log(r"reload refused: configuration error [^\n]*runtime_dir changed from ")
    rewrite(server, good)
    assert reload_cmd(tmp_path).returncode == 0

    rewrite(server, conf(tmp_path, [tcp(port)], route=CLOSED))
    done = reload_cmd(tmp_path)
    assert done.returncode == 0, done.stderr
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(port, "me@sender.example", ["old@ok.example"], subject="refused")
    assert subjects(tmp_path, "old@ok.example") == ["still served", "served again"]


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "kittiwake.conf").write_text(conf(tmp_path, [tcp(free_port())]))
    done = reload_cmd(tmp_path)
    assert done.returncode == 1
    socket_path = tmp_path / "state" / "run" / "control.sock"
    assert done.stderr.startswith(f"kittiwake reload: no server answers on {socket_path}: ")


def test_a_session_open_across_a_reload_finishes_on_its_configuration(
    kittiwake: Start, tmp_path: Path
) -> None:
    """A routing change applies to sessions that begin after the reload."""
    port = free_port()
    server = kittiwake(conf(tmp_path, [tcp(port)]))
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as before:
        before.ehlo()
        signal_reload(server, conf(tmp_path, [tcp(port)], route=CLOSED))
        with (
            smtplib.SMTP("127.0.0.1", port, timeout=10) as after,
            pytest.raises(smtplib.SMTPRecipientsRefused),
        ):
            after.sendmail("me@sender.example", ["x@ok.example"], message("new session"))
        before.sendmail("me@sender.example", ["x@ok.example"], message("old session"))
        before.sendmail("me@sender.example", ["x@ok.example"], message("old session again"))
        assert "previous configuration stopped" not in server.log
    wait_for(lambda: "previous configuration stopped" in server.log, message="old one stopped")
    assert sorted(subjects(tmp_path, "x@ok.example")) == ["old session", "old session again"]


def test_unix_listener_kept_then_removed(kittiwake: Start, tmp_path: Path) -> None:
    port = free_port()
    lmtp = "lmtp unix://lmtp.sock {\n    deliver_to &mb\n}\n"
    server = kittiwake(conf(tmp_path, [tcp(port)], extra=lmtp), ready=2)
    path = tmp_path / "state" / "run" / "lmtp.sock"
    inode = os.stat(path).st_ino
    signal_reload(server, conf(tmp_path, [tcp(port)], extra=lmtp.replace("mb", "mb\n    debug no")))
    assert os.stat(path).st_ino == inode  # the same socket, never unbound
    with smtplib.LMTP(str(path), timeout=10) as client:
        client.sendmail("me@sender.example", ["u@unix.example"], message("over lmtp"))
    signal_reload(server, conf(tmp_path, [tcp(port)]))
    assert not path.exists()
    assert subjects(tmp_path, "u@unix.example") == ["over lmtp"]


def test_a_queue_survives_a_reload_with_nothing_lost_or_sent_twice(
    kittiwake: Start, tmp_path: Path
) -> None:
    """Entries waiting in `target.queue` pass to the reloaded queue at the
    same location, and so do those that sessions of the old configuration
    commit afterwards; each is delivered once.

    The entries are made by a first server whose downstream refuses them;
    the second delivers them, but only `post_init_delay` after its start,
    and is reloaded before that: had the first runner gone on beside the
    one that took over, both would deliver them.
    """
    port = free_port()

    def queue_conf(queue: str, **kw: str) -> str:
        text = queue_config(tmp_path, queue=queue, **kw)
        return text.replace("tcp://127.0.0.1:0", tcp(port))

    refusing = queue_conf("    initial_retry_time 1h")
    first = kittiwake(refusing)
    for n in range(5):
        send(port, FROM, [f"r{n}@temp.example"], subject=f"waiting-{n}")
    wait_for(lambda: len(entries(tmp_path / "queue")) == 5, message="five entries waiting")
    first.send(signal.SIGTERM)
    assert first.wait() == 0

    delivering = queue_conf("    post_init_delay 2s", temp="deliver_to &mb")
    server = kittiwake(delivering)

    def delivered() -> list[str]:
        rcpts = [*(f"r{n}@temp.example" for n in (*range(5), 9)), "late@temp.example"]
        return sorted(s for rcpt in rcpts for s in subjects(tmp_path, rcpt))

    expected = sorted([*(f"waiting-{n}" for n in range(5)), "after", "late"])
    # The held session keeps the old configuration (and its queue) alive
    # until everything is delivered.
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as held:
        held.ehlo()
        signal_reload(server, delivering)
        server.wait_log("queue taken over from the previous configuration")
        assert subjects(tmp_path, "r0@temp.example") == []  # not before post_init_delay
        # A session of the old configuration commits into the handed-over queue.
        held.sendmail(FROM, ["late@temp.example"], message("late"))
        send(port, FROM, ["r9@temp.example"], subject="after")
        wait_for(lambda: delivered() == expected, message="all delivered")
        wait_for(lambda: entries(tmp_path / "queue") == [], message="queue empty")
        time.sleep(1.0)  # a second runner's attempts would have come by now
        assert "previous configuration stopped" not in server.log
    assert delivered() == expected
    assert "error" not in server.log

    # Reloading back to the refusing downstream: the queue goes on working.
    signal_reload(server, refusing)
    send(port, FROM, ["z@temp.example"], subject="again")
    wait_for(lambda: len(entries(tmp_path / "queue")) == 1, message="an entry waits again")
    assert "used by another running kittiwake" not in server.log
    server.send(signal.SIGTERM)
    assert server.wait() == 0


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGHUP])
def test_log_file_reopened_after_logrotate_renamed_it(
    kittiwake: Start, tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    server = kittiwake(conf(tmp_path, [tcp(port)], extra=f"log {tmp_path}/k.log"))
    logfile = tmp_path / "k.log"
    wait_for(lambda: logfile.exists() and " started " in logfile.read_text(), message="started")
    rotated = tmp_path / "k.log.1"
    logfile.rename(rotated)
    server.send(sig)
    wait_for(logfile.exists, message="a new log file")
    wait_for(lambda: "log files reopened" in logfile.read_text(), message="reopen line")
    send(port, "me@sender.example", ["x@ok.example"], subject="after rotation")
    assert "log files reopened" not in rotated.read_text()
    assert " started " in rotated.read_text()
    # A reload keeps writing to the file the configuration names.
    signal_reload_file(server, logfile, conf(tmp_path, [tcp(port)], extra=f"log {logfile}"))
    assert server.proc.poll() is None


def signal_reload_file(server: Kittiwake, logfile: Path, text: str) -> None:
    rewrite(server, text)
    server.send(signal.SIGUSR2)
    wait_for(lambda: "reloaded " in logfile.read_text(), message="reloaded in the log file")


def test_a_reload_that_fails_to_start_gives_the_queue_back(
    kittiwake: Start, tmp_path: Path
) -> None:
    """The queue is taken over before the new endpoint starts; when that
    start fails (a buffer folder that cannot be made), the running queue
    gets its lock and entries back and goes on retrying."""
    port = free_port()
    refusing = queue_config(tmp_path, queue="    initial_retry_time 300ms\n    max_tries 1000")
    refusing = refusing.replace("tcp://127.0.0.1:0", tcp(port))
    server = kittiwake(refusing)
    for n in range(2):
        send(port, FROM, [f"r{n}@temp.example"], subject=f"waiting-{n}")
    wait_for(lambda: len(entries(tmp_path / "queue")) == 2, message="two entries waiting")

    (tmp_path / "afile").write_text("not a folder\n")
    broken = refusing.replace(
        "    deliver_to &outq", f"    buffer fs {tmp_path}/afile/sub\n    deliver_to &outq"
    )
    line = next(n for n, t in enumerate(broken.splitlines(), 1) if "buffer fs" in t)
    rewrite(server, broken)
    done = reload_cmd(tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"{server.config_path}:{line}: ")
    server.wait_log("queue given back: the reload did not complete")

    tries = server.log.count("not delivered")
    wait_for(lambda: server.log.count("not delivered") >= tries + 4, message="retries go on")
    send(port, FROM, ["new@ok.example"], subject="after the failed reload")
    wait_for(lambda: subjects(tmp_path, "new@ok.example"), message="new mail delivered")
    assert len(entries(tmp_path / "queue")) == 2

    rewrite(server, refusing)
    done = reload_cmd(tmp_path)
    assert done.returncode == 0, done.stderr
    server.wait_log("queue taken over from the previous configuration [^\n]*entries=2")
    assert "used by another running kittiwake" not in server.log


def test_failed_logins_still_count_after_a_reload(kittiwake: Start, tmp_path: Path) -> None:
    """`auth_ratelimit` counters belong to the endpoint on its addresses; a
    reload keeps them, so reloading does not forgive a password guesser."""
    port = free_port()
    users = """auth.pass_table users {
    table static {
        entry me@example.org "bcrypt:$2a$04$invalidinvalidinvalidinvalidinvalidinvalidinvalidinva"
    }
}"""
    throttled = (
        f"{tcp(port)}; auth &users\n    auth_ratelimit {{\n        ip 3 10m\n"
        "        username 0 10m\n        exempt none\n    }"
    )
    server = kittiwake(conf(tmp_path, [throttled], extra=users))

    def guess(n: int) -> str:
        """A distinct guess each time: a repeated one is not counted again."""
        with Dialog(port, source="127.0.0.2") as dialog:
            dialog.reply()
            dialog.cmd("EHLO client.example")
            wrong = base64.b64encode(f"\0me@example.org\0guess {n}".encode()).decode()
            return dialog.cmd(f"AUTH PLAIN {wrong}")

    assert guess(1).startswith("535 ")
    assert guess(2).startswith("535 ")
    signal_reload(server, conf(tmp_path, [throttled.replace("10m\n", "20m\n", 1)], extra=users))
    assert guess(3).startswith("535 ")  # the third failure: the limit
    assert guess(4).startswith("454 4.7.0 ")


def test_sigterm_stops_a_draining_configuration_with_the_running_one(
    kittiwake: Start, tmp_path: Path
) -> None:
    port = free_port()
    server = kittiwake(conf(tmp_path, [tcp(port)]))
    with Dialog(port) as old, Dialog(port) as new:
        old.reply()
        old.cmd("EHLO client.example")
        signal_reload(server, conf(tmp_path, [tcp(port)], route=CLOSED))
        new.reply()
        began = time.monotonic()
        server.send(signal.SIGTERM)
        assert old.line().startswith("421 4.3.2 ")  # idle: told at once
        assert new.line().startswith("421 4.3.2 ")
        assert server.wait() == 0
        assert time.monotonic() - began < 5
    assert "previous configuration stopped" in server.log
    assert server.log.rstrip().endswith("info stopped")


def _metric(port: int, name: str, **labels: str) -> float | None:
    """The sum of the samples of `/metrics` that match (None when none does),
    read with Prometheus' parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = [
        float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(found) if found else None


def test_metrics_keep_counting_across_a_reload(kittiwake: Start, tmp_path: Path) -> None:
    """`openmetrics` keeps its socket and its counters through a reload, the
    queue is still reported once its old configuration has stopped, and a
    reload that drops the block closes the port."""
    port, scrape_port = free_port(), free_port()

    def queue_conf(*, metrics: bool = True) -> str:
        top = f"openmetrics tcp://127.0.0.1:{scrape_port} {{ }}" if metrics else ""
        text = queue_config(tmp_path, queue="    initial_retry_time 1h", top=top)
        return text.replace("tcp://127.0.0.1:0", tcp(port))

    server = kittiwake(queue_conf())
    for n in range(3):
        send(port, FROM, [f"r{n}@temp.example"], subject=f"waiting-{n}")
    wait_for(lambda: len(entries(tmp_path / "queue")) == 3, message="three entries waiting")

    def queued() -> float | None:
        return _metric(scrape_port, "maddy_queue_length", module="outq")

    def started() -> float:
        return _metric(scrape_port, "maddy_smtp_started_transactions_total") or 0.0

    wait_for(lambda: queued() == 3, message="the queue's length reported")
    count = started()
    assert count >= 3

    # Scrapes go on while the configuration is reloaded: none is refused.
    failures: list[BaseException] = []
    done = threading.Event()

    def scraping() -> None:
        while not done.is_set():
            try:
                _metric(scrape_port, "maddy_queue_length")
            except OSError as exc:
                failures.append(exc)

    thread = threading.Thread(target=scraping)
    thread.start()
    try:
        signal_reload(server, queue_conf())
        server.wait_log("previous configuration stopped")
    finally:
        done.set()
        thread.join()
    assert failures == []
    assert queued() == 3  # the old queue's stop did not unregister the new one
    send(port, FROM, ["r9@temp.example"], subject="after")
    wait_for(lambda: queued() == 4, message="the new entry counted")
    assert started() == count + 1  # counters went on from where they were

    signal_reload(server, queue_conf(metrics=False))
    assert refused(scrape_port)
    assert "error" not in server.log
