"""Worker processes (docs/workers.md): `workers N` and `kittiwake run -j N`.

Real processes on loopback only: the server is started as an operator
would, its workers are found by the `worker ready ... pid=` lines the
supervisor logs, and every connection's `connection opened` line names
the pid of the worker that took it. Clients are smtplib and raw sockets.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kw import (
    LAUNCHER,
    NO_LIMITS,
    Dialog,
    Kittiwake,
    ServerProcess,
    env,
    free_port,
    in_parallel,
    rcpt_reply,
)
from queuetools import config as queue_config
from queuetools import entries, send, wait_for
from test_auth_ratelimit import HASH, INVALID, OK, PASSWORD, THROTTLED
from test_reload import Load, message, reload_cmd, rewrite, signal_reload, subjects, tcp

Start = Callable[..., Kittiwake]
FROM = "me@sender.example"


def conf(
    tmp: Path, *, workers: str = "2", ports: list[int], extra: str = "", smtp: str = ""
) -> str:
    """`workers`, one smtp block on `ports`, an lmtp endpoint on `lmtp.sock`."""
    addresses = " ".join(tcp(p) for p in ports)
    return f"""state_dir {tmp}/state
hostname mx.example.com
tls off
{f"workers {workers}" if workers else ""}
{extra}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
smtp {addresses} {{
    {smtp}
    deliver_to &mb
}}
lmtp unix://lmtp.sock {{
    deliver_to &mb
}}
"""


def worker_pids(server: ServerProcess) -> dict[int, int]:
    """slot -> pid of the workers running now, from the supervisor's log."""
    pids: dict[int, int] = {}
    for found in re.finditer(r"worker (?:ready|restarted) slot=(\d+) pid=(\d+)", server.log):
        pids[int(found[1])] = int(found[2])
    return pids


def serving_pids(server: ServerProcess, source: str = "127.0.0.1") -> list[int]:
    """The pid of every `connection opened` line from `source` (`unix` for a Unix socket)."""
    pattern = rf"connection opened [^\n]*src_ip={re.escape(source)} [^\n]*pid=(\d+)"
    return [int(p) for p in re.findall(pattern, server.log)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def lmtp_send(path: Path, subject: str) -> None:
    with smtplib.LMTP(str(path), timeout=20) as client:
        client.sendmail(FROM, ["lmtp@example.com"], message(subject))


def test_two_workers_serve_tcp_and_unix_and_both_take_connections(
    kittiwake: Start, tmp_path: Path
) -> None:
    port = free_port()
    server = kittiwake(conf(tmp_path, ports=[port]), ready=2)
    assert server.addresses == [
        f"tcp://127.0.0.1:{port}",
        f"unix://{tmp_path}/state/run/lmtp.sock",
    ]
    pids = worker_pids(server)
    assert len(pids) == 2 and server.proc.pid not in pids.values()
    # Connections held open at once: the kernel shares them out.
    held = [Dialog(port) for _ in range(30)]
    unix = []
    for _ in range(30):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(str(tmp_path / "state/run/lmtp.sock"))
        unix.append(sock)
    for d in held:
        assert d.reply()[-1].startswith("220 ")
    for sock in unix:
        assert sock.recv(1024).startswith(b"220 ")
    for n in range(6):
        send(port, FROM, ["tcp@example.com"], subject=f"tcp-{n}")
        lmtp_send(tmp_path / "state/run/lmtp.sock", f"lmtp-{n}")
    assert sorted(set(serving_pids(server))) == sorted(pids.values())
    assert sorted(set(serving_pids(server, "unix"))) == sorted(pids.values())
    assert len(subjects(tmp_path, "tcp@example.com")) == 6
    assert len(subjects(tmp_path, "lmtp@example.com")) == 6
    for d in held:
        d.close()
    for sock in unix:
        sock.close()
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert not any(alive(pid) for pid in pids.values())


def test_j_overrides_the_directive(kittiwake: Start, tmp_path: Path) -> None:
    port = free_port()
    server = kittiwake(conf(tmp_path, workers="", ports=[port]), ready=2, args=("-j", "2"))
    assert len(worker_pids(server)) == 2
    assert "workers=2" in server.wait_log(r"info started [^\n]*")
    server.send(signal.SIGTERM)
    assert server.wait() == 0

    port = free_port()
    single = kittiwake(conf(tmp_path, workers="auto", ports=[port]), ready=2, args=("-j", "1"))
    send(port, FROM, ["one@example.com"])
    assert worker_pids(single) == {}
    assert "pid=" not in single.wait_log(r"connection opened [^\n]*")  # the single process
    single.send(signal.SIGTERM)
    assert single.wait() == 0


def test_a_killed_worker_is_restarted_and_no_client_is_refused(
    kittiwake: Start, tmp_path: Path
) -> None:
    """A client that is cut off retries at once; no connection is ever refused."""
    port = free_port()
    server = kittiwake(conf(tmp_path, ports=[port]), ready=2)
    victim = worker_pids(server)[0]
    refused: list[str] = []
    sent: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            subject = f"k-{uuid.uuid4().hex}"
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
                    c.sendmail(FROM, ["kill@example.com"], message(subject))
                sent.append(subject)
            except ConnectionRefusedError as exc:
                refused.append(str(exc))
            except (OSError, smtplib.SMTPException):
                pass  # cut off by the kill: tried again at once

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(sent) > 20, message="traffic")
        os.kill(victim, signal.SIGKILL)
        server.wait_log(rf"worker died slot=0 pid={victim} status=\"killed by SIGKILL\"")
        server.wait_log(r"worker restarted slot=0 pid=\d+")
        after = len(sent)
        wait_for(lambda: len(sent) > after + 20, message="traffic after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert refused == []
    new = worker_pids(server)[0]
    assert new != victim and alive(new)
    assert new in serving_pids(server)
    # Every 250 was stored, once; a message the killed worker stored
    # before its client had the reply is there too (the client sent it
    # again under another subject): at most one per client.
    delivered = subjects(tmp_path, "kill@example.com")
    assert len(set(delivered)) == len(delivered)
    assert set(sent) <= set(delivered)
    assert len(delivered) - len(sent) <= len(threads)
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_sigterm_stops_every_worker_with_graceful_421s(kittiwake: Start, tmp_path: Path) -> None:
    port = free_port()
    server = kittiwake(conf(tmp_path, ports=[port]), ready=2)
    pids = worker_pids(server)
    idle = [Dialog(port) for _ in range(12)]
    for d in idle:
        assert d.reply()[-1].startswith("220 ")
        assert d.cmd("EHLO client.example").startswith("250 ")
    busy = Dialog(port)
    busy.reply()
    busy.cmd("EHLO client.example")
    assert busy.cmd(f"MAIL FROM:<{FROM}>").startswith("250 ")
    assert busy.cmd("RCPT TO:<late@example.com>").startswith("250 ")
    assert busy.cmd("DATA").startswith("354 ")
    assert len(set(serving_pids(server))) == 2  # both workers hold sessions
    server.send(signal.SIGTERM)
    for d in idle:
        assert d.line().startswith("421 4.3.2 ")
    # The transaction in progress may finish, then is told 421 too.
    busy.send(b"Subject: late\r\n\r\nbody\r\n.\r\n")
    assert busy.line().startswith("250 ")
    assert busy.line().startswith("421 4.3.2 ")
    assert server.wait() == 0
    for d in [*idle, busy]:
        d.close()
    assert not any(alive(pid) for pid in pids.values())
    assert subjects(tmp_path, "late@example.com") == ["late"]
    assert server.log.rstrip().endswith("info stopped")


def test_reload_under_load_with_workers_loses_nothing(kittiwake: Start, tmp_path: Path) -> None:
    """The workers of each configuration are replaced by a new generation;
    clients keep sending to the listeners that stay, none is refused."""
    a, b, c, d = (free_port() for _ in range(4))
    server = kittiwake(conf(tmp_path, ports=[a, b, c]), ready=4)
    first = set(worker_pids(server).values())

    with Load([a, b]) as load:
        wait_for(lambda: load.count() >= 20, message="load running")
        signal_reload(server, conf(tmp_path, ports=[a, b, d], smtp="max_recipients 7"))
        line = server.wait_log(r"info reload: reloaded trigger=SIGUSR2 [^\n]*")
        assert f"added=127.0.0.1:{d} " in line and f"removed=127.0.0.1:{c} " in line
        with smtplib.SMTP("127.0.0.1", b, timeout=10) as client:
            assert b"RCPTMAX=7" in client.ehlo()[1]
        with smtplib.SMTP("127.0.0.1", d, timeout=10) as client:
            client.sendmail(FROM, ["rcpt@new.example"], message("via-d"))
        at_first = load.count()
        wait_for(lambda: load.count() >= at_first + 20, message="load after the reload")

        # The command, with a broken file: refused once, the workers serve on.
        rewrite(server, conf(tmp_path, ports=[a, b, d]) + "\nno_such_directive 1\n")
        done = reload_cmd(tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert re.fullmatch(r".*kittiwake\.conf:\d+: .*no_such_directive.*\n", done.stderr)
        rewrite(server, conf(tmp_path, ports=[a, b, d]))
        done = reload_cmd(tmp_path)
        assert done.returncode == 0, done.stderr
        at_second = load.count()
        wait_for(lambda: load.count() >= at_second + 20, message="load after the command")

    assert load.failures == []
    assert server.log.count("reload refused: configuration error") == 1
    delivered = subjects(tmp_path, "rcpt@load.example")
    assert sorted(delivered) == sorted(load.sent)
    assert subjects(tmp_path, "rcpt@new.example") == ["via-d"]
    wait_for(
        lambda: server.log.count("previous configuration stopped") == 2,
        message="the two old configurations stopped",
    )
    assert not any(alive(pid) for pid in first)
    now = set(worker_pids(server).values())
    assert len(now) == 2 and not now & first
    errors = [line for line in server.log.splitlines() if line.startswith("error ")]
    assert len(errors) == 1 and "reload refused: configuration error" in errors[0]
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_a_reload_whose_workers_cannot_start_is_refused_once(
    kittiwake: Start, tmp_path: Path
) -> None:
    """The new file is fine for the supervisor but not for the workers (their
    endpoint's buffer folder cannot be made): refused with the worker's
    `FILE:LINE: message`, once; the queue the supervisor had already taken
    over goes back and the running workers serve on."""
    port = free_port()
    good = queue_config(tmp_path, top="workers 2").replace("tcp://127.0.0.1:0", tcp(port))
    server = kittiwake(good)
    before = set(worker_pids(server).values())
    (tmp_path / "plain-file").write_text("")
    bad = good.replace(
        "    deliver_to &outq", f"    buffer fs {tmp_path}/plain-file/sub\n    deliver_to &outq"
    )
    rewrite(server, bad)
    done = reload_cmd(tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    line = next(n for n, t in enumerate(bad.splitlines(), 1) if "buffer fs" in t)
    assert done.stderr.startswith(f"{server.config_path}:{line}: "), done.stderr
    assert done.stderr.count("\n") == 1
    assert server.log.count("reload refused") == 1
    server.wait_log(r"queue given back: the reload did not complete")
    send(port, FROM, ["a@ok.example"], subject="after the refusal")
    wait_for(lambda: subjects(tmp_path, "a@ok.example"), message="delivered by the old queue")
    assert set(worker_pids(server).values()) >= before and all(alive(p) for p in before)
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_queue_with_workers_delivers_each_message_exactly_once(
    kittiwake: Start, tmp_path: Path
) -> None:
    """Mail comes in through both workers, one is killed meanwhile; the
    supervisor's queue delivers every accepted message once. An entry a
    worker committed but never reported (it died first) is found too."""
    port = free_port()
    text = queue_config(tmp_path, top="workers 2").replace("tcp://127.0.0.1:0", tcp(port))
    server = kittiwake(text)
    sent: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            subject = f"q-{uuid.uuid4().hex}"
            try:
                send(port, FROM, ["a@ok.example", "b@ok.example"], subject=subject)
            except (OSError, smtplib.SMTPException):
                continue
            with lock:
                sent.append(subject)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(sent) > 30, message="traffic")
        victim = worker_pids(server)[1]
        os.kill(victim, signal.SIGKILL)
        server.wait_log(r"worker restarted slot=1 ")
        count = len(sent)
        wait_for(lambda: len(sent) > count + 30, message="traffic after the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(set(serving_pids(server))) >= 2
    # An entry committed behind the queue's back, as by a worker killed
    # between its commit and its report: found after the next worker death.
    orphan = _commit_orphan(tmp_path / "queue", "orphan")
    os.kill(worker_pids(server)[0], signal.SIGKILL)
    server.wait_log(r"picked up entries nobody reported entries=1")
    wait_for(lambda: not entries(tmp_path / "queue"), timeout=30, message="queue empty")
    for rcpt in ("a@ok.example", "b@ok.example"):
        delivered = subjects(tmp_path, rcpt)
        assert len(set(delivered)) == len(delivered), rcpt  # never twice
        assert {*sent, "orphan"} <= set(delivered), rcpt  # every 250 delivered
        # Beyond those: what the killed worker committed before its client
        # had the 250, at most one per client (at least once, never lost).
        assert len(delivered) - len(sent) - 1 <= len(threads), rcpt
    assert orphan in server.log
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_kittiwake_queue_reaches_the_queue_of_the_supervisor(
    kittiwake: Start, tmp_path: Path
) -> None:
    """Entries written by the workers are listed, flushed and deleted through
    the control socket, which the supervisor serves."""
    text = queue_config(tmp_path, top="workers 2", queue="    initial_retry_time 1h")
    server = kittiwake(text)
    for n in range(4):
        send(server.port(), FROM, [f"x{n}@temp.example"], subject=f"wait-{n}")
    wait_for(lambda: server.log.count("not delivered") == 4, message="first tries")

    def listed() -> list[dict[str, Any]]:
        done = subprocess.run(
            [
                sys.executable,
                str(LAUNCHER),
                "queue",
                "list",
                "--json",
                "-c",
                str(server.config_path),
            ],
            capture_output=True,
            text=True,
            env=env(),
            cwd=tmp_path,
            timeout=60,
            check=True,
        )
        found: list[dict[str, Any]] = json.loads(done.stdout)["entries"]
        return found

    wait_for(lambda: [e["state"] for e in listed()] == ["waiting"] * 4, message="four waiting")
    assert sorted(e["rcpts"][0]["addr"] for e in listed()) == [
        f"x{n}@temp.example" for n in range(4)
    ]
    flushed = subprocess.run(
        [sys.executable, str(LAUNCHER), "queue", "flush", "-c", str(server.config_path)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert flushed.returncode == 0, flushed.stderr
    wait_for(lambda: server.log.count("not delivered") == 8, message="flushed tries")
    time.sleep(0.5)
    assert server.log.count("not delivered") == 8  # one try each, by one queue
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert len(entries(tmp_path / "queue")) == 4  # still waiting on disk


def _commit_orphan(location: Path, subject: str) -> str:
    """Write and commit one entry with kittiwake's own store; its ID."""
    from kittiwake.message.buffer import Buffer
    from kittiwake.queue.record import FileSum, Rcpt, Record
    from kittiwake.queue.store import Store

    store = Store(str(location))
    entry_id = uuid.uuid4().hex[:16]
    content = location.parent / "orphan-body"
    content.write_bytes(b"body\r\n")
    header = f"Subject: {subject}\r\nFrom: <{FROM}>\r\n\r\n".encode()

    def record(entry: str, head: FileSum, body: FileSum) -> Record:
        rcpts = [Rcpt("a@ok.example"), Rcpt("b@ok.example")]
        return Record(entry, "orphan01", FROM, FROM, rcpts, head, body, time.time())

    body = Buffer.from_file(str(content), 6)
    store.write_entry(entry_id, header, body, threading.Event(), record)
    store.commit(entry_id)
    return entry_id


def test_systemd_hears_ready_once_from_the_main_process(
    kittiwake: Start, tmp_path: Path, notify: tuple[socket.socket, str]
) -> None:
    """READY=1 once, when every worker serves, sent by the main process
    (so `NotifyAccess=main` suffices); STOPPING=1 once at SIGTERM."""
    sock, name = notify
    port = free_port()
    (tmp_path / "kittiwake.conf").write_text(conf(tmp_path, ports=[port], workers="3"))
    server = ServerProcess(
        tmp_path, ["-c", str(tmp_path / "kittiwake.conf")], env(NOTIFY_SOCKET=name)
    )
    try:
        messages = [_datagram(sock)]
        server.wait_ready(2)
        assert len(worker_pids(server)) == 3
        for _ in range(10):
            with Dialog(port) as d:
                assert d.reply()[-1].startswith("220 ")
        server.send(signal.SIGUSR2)  # the same file again: a new generation
        messages += [_datagram(sock), _datagram(sock)]
        server.wait_log(r"reload: reloaded ")
        server.send(signal.SIGTERM)
        messages.append(_datagram(sock))
        assert server.wait() == 0
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            messages.append(_datagram(sock))
    finally:
        server.kill()
    firsts = [lines.splitlines()[0] for pid, lines in messages]
    assert firsts == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert {pid for pid, _ in messages} == {server.proc.pid}


def _datagram(sock: socket.socket) -> tuple[int, str]:
    """One notification and the pid of its sender (SO_PASSCRED)."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = 0
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(payload[:4], sys.byteorder)
    return pid, data.decode()


@pytest.fixture
def notify() -> Iterator[tuple[socket.socket, str]]:
    name = f"kittiwake-workers-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind("\0" + name)
    sock.settimeout(30)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _metric(port: int, name: str, **labels: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_one_scrape_counts_every_worker(kittiwake: Start, tmp_path: Path) -> None:
    """The supervisor serves `openmetrics`; its page adds up every worker,
    and a worker killed does not make a counter go down."""
    port, scrape = free_port(), free_port()
    extra = f"openmetrics tcp://127.0.0.1:{scrape} {{ }}"
    server = kittiwake(conf(tmp_path, ports=[port], extra=extra), ready=3)
    for n in range(20):
        send(port, FROM, ["m@example.com"], subject=f"m-{n}")
    assert len(set(serving_pids(server))) == 2
    name = "kittiwake_smtp_connections_total"
    assert _metric(scrape, name, module="smtp") == 20
    assert _metric(scrape, "maddy_smtp_completed_transactions_total", module="smtp") == 20
    assert _metric(scrape, "process_max_fds") > 0  # one process's, not a sum of three
    os.kill(worker_pids(server)[0], signal.SIGKILL)
    server.wait_log(r"worker restarted slot=0 ")
    assert _metric(scrape, name, module="smtp") == 20
    send(port, FROM, ["m@example.com"], subject="after")
    assert _metric(scrape, name, module="smtp") == 21
    server.send(signal.SIGTERM)
    assert server.wait() == 0


LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (debug|info|warn|error) \S")


def test_one_log_file_whole_lines_and_reopened_in_every_worker(
    kittiwake: Start, tmp_path: Path
) -> None:
    """Every process appends to one file without mixing lines; SIGUSR1 to the
    main process makes every worker reopen it (logrotate's way)."""
    port = free_port()
    logfile = tmp_path / "kw.log"
    server = kittiwake(conf(tmp_path, ports=[port], extra=f"log {logfile}"), ready=2)
    pids = sorted(worker_pids_from(logfile).values())
    with Load([port]) as load:
        wait_for(lambda: load.count() >= 60, message="load")
        logfile.rename(tmp_path / "kw.log.1")
        server.send(signal.SIGUSR1)
        wait_for(logfile.exists, message="the new log file")
        at = load.count()
        wait_for(lambda: load.count() >= at + 60, message="load after the rotation")
    assert load.failures == []
    old, new = (tmp_path / "kw.log.1").read_text(), logfile.read_text()
    for text in (old, new):
        bad = [line for line in text.splitlines() if not LINE.match(line)]
        assert bad == [], bad[:3]
    assert "log files reopened signal=SIGUSR1" in new
    in_new = {int(p) for p in re.findall(r"connection opened [^\n]*pid=(\d+)", new)}
    assert sorted(in_new) == pids  # both workers write to the new file
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def worker_pids_from(logfile: Path) -> dict[int, int]:
    text = logfile.read_text()
    return {int(s): int(p) for s, p in re.findall(r"worker ready slot=(\d+) pid=(\d+)", text)}


def _config_check(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "check.conf"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, str(LAUNCHER), "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=tmp,
        timeout=60,
        check=False,
    )


def test_config_check_has_nothing_to_warn_about_counters_with_workers(tmp_path: Path) -> None:
    """Every counter counts for the whole server: in the supervisor's host
    store, or in the shared store a `state &NAME` names (docs/state.md), so
    there is no bound that holds per worker to warn about."""
    port = free_port()
    auth = """auth.pass_table users {
    table static { }
}
submission tcp://127.0.0.1:0 {
    auth &users
    deliver_to &mb
}"""
    limits = "max_connections_per_ip 5\n    limits {\n        all rate 20 1s\n    }"
    text = conf(tmp_path, ports=[port], smtp=limits, extra=auth)
    for workers in ("workers 2", "workers 1"):
        done = _config_check(tmp_path, text.replace("workers 2", workers))
        assert done.returncode == 0, done.stderr
        assert "warn " not in done.stderr, done.stderr
    # With a shared store too (and Redis need not be up).
    shared_auth = auth.replace("    auth &users", "    state &cluster\n    auth &users")
    shared = conf(
        tmp_path,
        ports=[port],
        smtp="state &cluster\n    " + limits,
        extra="state.redis cluster {\n    endpoint redis://127.0.0.1:1/0\n}\n" + shared_auth,
    )
    done = _config_check(tmp_path, shared)
    assert done.returncode == 0, done.stderr
    assert "warn " not in done.stderr, done.stderr


def test_a_worker_that_cannot_start_stops_the_server_with_its_error_once(
    kittiwake: Start, tmp_path: Path
) -> None:
    """An endpoint fails in the workers only (its buffer folder cannot be
    made): exit 2 and `FILE:LINE: message`, printed once, not once per worker."""
    (tmp_path / "plain-file").write_text("")
    port = free_port()
    text = conf(tmp_path, ports=[port], smtp=f"buffer fs {tmp_path}/plain-file/sub")
    (tmp_path / "kittiwake.conf").write_text(text)
    server = ServerProcess(tmp_path, ["-c", str(tmp_path / "kittiwake.conf")])
    assert server.wait() == 2
    errors = [line for line in server.log.splitlines() if "kittiwake.conf:" in line]
    assert len(errors) == 1, server.log
    assert re.match(r".*kittiwake\.conf:\d+: ", errors[0])
    assert server.proc.stdout is not None and server.proc.stdout.read() == ""
    server.kill()
    time.sleep(0.2)
    assert not [
        p for p in Path("/proc").iterdir() if p.name.isdigit() and _child_of(p, server.proc.pid)
    ]


def _child_of(proc: Path, parent: int) -> bool:
    try:
        return int((proc / "stat").read_text().split(")")[1].split()[1]) == parent
    except (OSError, IndexError, ValueError):
        return False


# -- counting across workers: the supervisor's host store (docs/state.md) -----------------

HIGH_LOAD = "451 4.4.5 High load, try again later"
TOO_MANY = "421 4.7.0 Too many connections, try again later"
#: How long a transaction waits for a full limit before its 451 (docs/limits.md).
DEADLINE = 5.0


def taken_by(server: ServerProcess, d: Dialog, source: str) -> int:
    """The pid of the worker that took connection `d`, from its `connection opened` line."""
    port = d.sock.getsockname()[1]
    line = server.wait_log(
        rf"connection opened [^\n]*src_ip={re.escape(source)} src_port={port} pid=\d+"
    )
    return int(line.rsplit("pid=", 1)[1])


def greeted(port: int, source: str) -> Dialog | None:
    """A connection from `source` that got its 220 and said EHLO; None if turned away."""
    d = Dialog(port, source=source, timeout=DEADLINE + 15)
    if not d.reply()[-1].startswith("220 "):
        d.close()
        return None
    assert d.cmd("EHLO client.example").startswith("250 ")
    return d


def spread(server: ServerProcess, port: int, source: str, each: int) -> dict[int, list[Dialog]]:
    """`each` open connections from `source` on every worker (pid -> them).

    The kernel picks the worker; a connection that lands on one with enough
    is closed and another opened (its slot comes back once the worker has
    seen the close: until then a new one may be turned away, and is tried
    again)."""
    kept: dict[int, list[Dialog]] = {pid: [] for pid in worker_pids(server).values()}
    for _ in range(100 + 4 * each * len(kept)):
        if all(len(held) == each for held in kept.values()):
            return kept
        d = greeted(port, source)
        if d is None:
            time.sleep(0.05)
            continue
        held = kept[taken_by(server, d, source)]
        if len(held) < each:
            held.append(d)
        else:
            d.cmd("QUIT")
            d.close()
    raise AssertionError(f"connections not spread over the workers: {kept}")


def capped(concurrency: int, per_ip: int = 4) -> str:
    """An endpoint's lines: a per-address cap that counts loopback clients
    too, and an `ip concurrency` limit."""
    return (
        f"max_connections_per_ip {per_ip}\n    max_connections_per_ip_exempt none\n"
        f"    limits {{\n        ip concurrency {concurrency}\n    }}"
    )


def begin(d: Dialog, rcpt: str = "held@example.com") -> str:
    """MAIL and RCPT; the RCPT's reply (where the limits are taken)."""
    assert d.cmd(f"MAIL FROM:<{FROM}>").startswith("250 ")
    return d.cmd(f"RCPT TO:<{rcpt}>")


def test_two_workers_admit_one_all_rate_between_them(kittiwake: Start, tmp_path: Path) -> None:
    """`all rate 20 1m` with `workers 2`: 30 clients at once, spread over both
    workers; 20 messages are taken in the minute, not 20 per worker, and the
    other 10 get the limit's temporary reply."""
    port = free_port()
    limits = "limits {\n        all rate 20 1m\n    }"
    server = kittiwake(conf(tmp_path, ports=[port], smtp=limits), ready=2)

    def client(n: int) -> str:
        with Dialog(port, timeout=DEADLINE + 15) as d:
            assert d.reply()[-1].startswith("220 ")
            assert d.cmd("EHLO client.example").startswith("250 ")
            rcpt = begin(d, "rate@example.com")
            if rcpt.startswith("250 "):
                assert d.cmd("DATA").startswith("354 ")
                d.send(message(f"rate-{n}") + b".\r\n")
                assert d.reply()[-1].startswith("250 ")
            return rcpt

    replies = in_parallel(*(lambda n=n: client(n) for n in range(30)))
    assert sum(r.startswith("250 ") for r in replies) == 20, replies
    assert sorted(r for r in replies if not r.startswith("250 ")) == [HIGH_LOAD] * 10
    assert len(subjects(tmp_path, "rate@example.com")) == 20
    assert sorted(set(serving_pids(server))) == sorted(worker_pids(server).values())
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_per_ip_caps_and_concurrency_hold_across_workers(kittiwake: Start, tmp_path: Path) -> None:
    """`max_connections_per_ip 4` and `ip concurrency 2`: two connections on
    each worker fill the cap (each worker alone would take four); a
    transaction on each worker fills the slots, and a third waits and gets
    451 until one of them ends."""
    port = free_port()
    source = "127.0.0.7"
    smtp = capped(concurrency=2)
    server = kittiwake(conf(tmp_path, ports=[port], smtp=smtp), ready=2)
    kept = spread(server, port, source, 2)
    (a, on_a), (b, on_b) = kept.items()
    opened = on_a + on_b
    try:
        past = Dialog(port, source=source)
        assert past.reply() == [TOO_MANY]
        past.close()
        with Dialog(port, source="127.0.0.17") as other:  # another address: let in
            assert other.reply()[-1].startswith("220 ")
        assert re.search(r"per-IP connection limit reached src_ip=127\.0\.0\.7", server.log)

        assert begin(on_a[0]).startswith("250 ")
        assert begin(on_b[0]).startswith("250 ")  # both slots, one on each worker
        started = time.monotonic()
        assert begin(on_a[1]) == HIGH_LOAD  # past them
        assert DEADLINE - 0.5 <= time.monotonic() - started <= DEADLINE + 3
        assert on_b[0].cmd("RSET").startswith("250 ")  # a slot given back on worker b
        assert on_a[1].cmd("RSET").startswith("250 ")
        started = time.monotonic()
        assert begin(on_a[1]).startswith("250 ")  # worker a sees it at its next poll
        assert time.monotonic() - started < 1.0
    finally:
        for d in opened:
            d.close()
    assert a != b
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_the_default_caps_count_per_worker(kittiwake: Start, tmp_path: Path) -> None:
    """Without a cap written in the block, `max_connections_per_ip`'s default
    (100) protects each worker and counts its own connections: 55 on each
    of two workers (110 from one address) are all let in, without asking
    the supervisor (docs/limits.md, "Connection caps")."""
    port = free_port()
    source = "127.0.0.9"
    smtp = "max_connections_per_ip_exempt none"
    server = kittiwake(conf(tmp_path, ports=[port], smtp=smtp), ready=2)
    kept = spread(server, port, source, 55)
    try:
        assert sum(len(held) for held in kept.values()) == 110
        assert "per-IP connection limit reached" not in server.log
    finally:
        for held in kept.values():
            for d in held:
                d.close()
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_a_password_guesser_is_locked_out_on_every_worker(kittiwake: Start, tmp_path: Path) -> None:
    """`auth_ratelimit { ip 3 }`: failures on both workers count together, a
    wrong password repeated on the other worker counts once (the guess key
    is the server's, not each worker's), and the lockout holds on both."""
    port = free_port()
    source = "127.0.0.8"
    users = f"""auth.pass_table users {{
    table static {{
        entry me@example.org "{HASH}"
    }}
}}"""
    smtp = (
        "auth &users\n    auth_ratelimit {\n        ip 3 1m\n        username 0\n"
        "        lockout 30s\n        exempt none\n    }"
    )
    server = kittiwake(conf(tmp_path, ports=[port], smtp=smtp, extra=users), ready=2)
    a, b = sorted(worker_pids(server).values())

    def login(pid: int, password: str) -> str:
        """AUTH on a connection the worker `pid` took (others are closed)."""
        for _ in range(100):
            d = greeted(port, source)
            assert d is not None
            with d:
                if taken_by(server, d, source) == pid:
                    auth = base64.b64encode(f"\0me@example.org\0{password}".encode()).decode()
                    return d.cmd("AUTH PLAIN " + auth)
                d.cmd("QUIT")
        raise AssertionError(f"no connection reached worker {pid}")

    assert login(a, "guess1") == INVALID
    assert login(b, "guess1") == INVALID  # the same guess again: not counted
    assert login(b, "guess2") == INVALID
    assert login(a, PASSWORD) == OK  # two failures: below the limit
    assert login(a, "guess3") == INVALID  # the third reaches it
    assert re.search(r"authentication locked out scope=ip src_ip=127\.0\.0\.8 ", server.log)
    assert login(b, PASSWORD) == THROTTLED  # locked on both workers
    assert login(a, PASSWORD) == THROTTLED
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_a_killed_worker_leaves_no_slot_taken(kittiwake: Start, tmp_path: Path) -> None:
    """A worker holding two connections (a slot of each cap for each) and a
    concurrency slot is killed with -9: the supervisor gives back what it
    held when its store connection ends, so after the restart the cap has
    room for exactly those two, and the slot is free at once."""
    port = free_port()
    source = "127.0.0.10"
    smtp = capped(concurrency=1)
    server = kittiwake(conf(tmp_path, ports=[port], smtp=smtp), ready=2)
    kept = spread(server, port, source, 2)
    victim, survivor = kept
    slot = next(s for s, pid in worker_pids(server).items() if pid == victim)
    opened = [*kept[victim], *kept[survivor]]
    try:
        assert begin(kept[victim][0]).startswith("250 ")  # the one ip slot
        with Dialog(port, source=source) as past:
            assert past.reply() == [TOO_MANY]
            assert past.closed()  # after it gave back the `max_connections` slot it took
        os.kill(victim, signal.SIGKILL)
        server.wait_log(rf"worker died slot={slot} pid={victim} ")
        server.wait_log(rf"slots of a worker that is gone given back pid={victim} slots=5")
        server.wait_log(rf"worker restarted slot={slot} pid=\d+")
        for d in kept[victim]:
            assert d.closed()  # cut with their worker
        again = [greeted(port, source) for _ in range(2)]  # the dead worker's two
        opened += [d for d in again if d is not None]
        assert None not in again
        with Dialog(port, source=source) as past:  # and not one more
            assert past.reply() == [TOO_MANY]
        started = time.monotonic()
        assert begin(kept[survivor][0]).startswith("250 ")  # the slot is free
        assert time.monotonic() - started < 1.0
    finally:
        for d in opened:
            d.close()
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_a_reload_keeps_the_counts_of_the_host_store(kittiwake: Start, tmp_path: Path) -> None:
    """The supervisor's store outlives configurations: the tokens the old
    workers took are gone for the new ones too (docs/state.md, "Reloads")."""
    port = free_port()
    limits = "limits {\n        all rate 3 1m\n    }"
    server = kittiwake(conf(tmp_path, ports=[port], smtp=limits), ready=2)

    def transaction() -> str:
        with Dialog(port, timeout=DEADLINE + 15) as d:
            d.reply()
            d.cmd("EHLO client.example")
            return begin(d, "reload@example.com")

    assert transaction().startswith("250 ")
    assert transaction().startswith("250 ")
    old = set(worker_pids(server).values())
    signal_reload(server, conf(tmp_path, ports=[port], smtp=limits + "\n    max_recipients 7"))
    wait_for(lambda: not any(alive(pid) for pid in old), message="the old workers gone")
    assert transaction().startswith("250 ")  # the third of the minute
    assert transaction() == HIGH_LOAD
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_each_worker_says_whose_redis_outage_it_logs(kittiwake: Start, tmp_path: Path) -> None:
    """Every process logs its own outage of a shared store (docs/state.md):
    with workers, each line names the process (`pid=`), as its session
    lines do; nothing listens on the Redis port."""
    port = free_port()
    text = conf(
        tmp_path,
        ports=[port],
        smtp="limits {\n        state &cluster\n        all rate 100 1m\n    }",
        extra="state.redis cluster {\n    endpoint redis://127.0.0.1:1/0\n}",
    )
    server = kittiwake(text, ready=2)
    pids = set(worker_pids(server).values())
    for _ in range(6):  # decisions in both workers (the kernel shares connections out)
        assert rcpt_reply(port) == NO_LIMITS
    deadline = time.monotonic() + 10
    while True:
        found = re.findall(r"shared state store unreachable [^\n]* pid=(\d+)", server.log)
        if pids <= {int(p) for p in found}:
            break
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    lines = [line for line in server.log.splitlines() if "store unreachable" in line]
    assert all(" pid=" in line for line in lines), lines
    assert {int(p) for p in found} <= pids | {server.proc.pid}
