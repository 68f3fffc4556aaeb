"""Maildir delivery agents in a real server (docs/storage-maildir.md, "Delivery agents").

The server is a real `kittiwake run` process delivering SMTP mail into a
Maildir; clients are smtplib. What is checked is what an operator relies
on: mail arrives through the agents, their number stays within
`delivery_agents`, a killed agent costs one `451` and nothing else, and a
server killed with SIGKILL under load leaves no agents behind and loses
no message it answered `250`.
"""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import time
from pathlib import Path

from kw import Kittiwake, maildir_files

RCPT = "user@example.org"


def config(root: Path, port: int = 0, agents: str = "") -> str:
    return f"""
hostname mx.example.org
state_dir {root / "state"}
storage.maildir local_mailboxes {{
    path {root / "mail"}
    auto_create yes
    {agents}
}}
smtp tcp://127.0.0.1:{port} {{
    tls off
    deliver_to &local_mailboxes
}}
"""


def agents_of(pid: int) -> list[int]:
    """The server's delivery agents: its children running maildir_agents."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"kittiwake.storage.maildir_agents" in cmdline:
                found.append(int(child))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def send(port: int, seq: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(
            "sender@example.net", [RCPT], f"Subject: {seq}\r\nX-Seq: {seq}\r\n\r\nHi.\r\n"
        )


def seqs(root: Path) -> list[int]:
    out = []
    for path in maildir_files(root / "mail", "example.org", "user"):
        for line in path.read_text().splitlines():
            if line.startswith("X-Seq: "):
                out.append(int(line[7:]))
    return out


def test_mail_goes_through_bounded_agents(tmp_path: Path) -> None:
    server = Kittiwake(tmp_path, config(tmp_path, agents="delivery_agents 3"))
    try:
        server.wait_ready()
        port = server.port()
        send(port, 0)  # the first message starts the first agent
        first = agents_of(server.proc.pid)
        assert len(first) == 1
        threads = [threading.Thread(target=send, args=(port, n)) for n in range(1, 31)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        pids = agents_of(server.proc.pid)
        assert 1 <= len(pids) <= 3 and first[0] in pids
        # Batch tasks: a woken agent does not preempt the server.
        assert all(os.sched_getscheduler(pid) == os.SCHED_BATCH for pid in pids)
        assert sorted(seqs(tmp_path)) == list(range(31))
        assert not list((tmp_path / "mail" / "example.org" / "user" / "tmp").iterdir())
        # Files are written by the agents, whose pid is in the name.
        names = {p.name for p in maildir_files(tmp_path / "mail", "example.org", "user")}
        assert all(any(f"P{pid}Q" in name for pid in pids) for name in names)
        assert server.stop() == 0  # SIGTERM: the agents are closed and reaped
        assert not any(running(pid) for pid in pids)
    finally:
        server.kill()


def test_a_killed_agent_costs_one_451_then_mail_flows(tmp_path: Path) -> None:
    server = Kittiwake(tmp_path, config(tmp_path, agents="delivery_agents 1"))
    try:
        server.wait_ready()
        port = server.port()
        send(port, 1)
        (agent,) = agents_of(server.proc.pid)
        os.kill(agent, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running(agent) and time.monotonic() < deadline:
            time.sleep(0.02)
        # The server learns of the death when it next hands the agent a
        # message: that one gets a temporary error, the one after a new agent.
        outcomes = []
        for seq in (2, 3):
            try:
                send(port, seq)
                outcomes.append(250)
            except smtplib.SMTPDataError as exc:
                outcomes.append(exc.smtp_code)
        assert outcomes == [451, 250]
        send(port, 4)
        assert agents_of(server.proc.pid) not in ([], [agent])
        assert {1, 3, 4} <= set(seqs(tmp_path))
        assert server.stop() == 0
    finally:
        server.kill()


def test_sigkill_under_load_loses_nothing_and_leaves_no_agents(tmp_path: Path) -> None:
    """Ten clients send without pause; the server is killed -9 three times and
    restarted. Every message answered 250 is in the Maildir; no agent outlives
    its server."""
    port = 0
    accepted: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(1_000_000))

    def client() -> None:
        while not stop.is_set():
            with lock:
                seq = next(counter)
            while not stop.is_set():
                try:
                    send(port, seq)
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.05)  # the server is down or said 4xx: again
                    continue
                with lock:
                    accepted.add(seq)
                break

    server = Kittiwake(tmp_path, config(tmp_path))
    server.wait_ready()
    port = server.port()
    clients = [threading.Thread(target=client) for _ in range(10)]
    for t in clients:
        t.start()
    try:
        for _ in range(3):
            time.sleep(1.0)
            agents = agents_of(server.proc.pid)
            assert agents  # the load keeps some busy
            server.kill()
            deadline = time.monotonic() + 10
            while any(running(pid) for pid in agents) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not any(running(pid) for pid in agents)
            server = Kittiwake(tmp_path, config(tmp_path, port))
            server.wait_ready()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in clients:
            t.join(60)
        server.stop()
        server.kill()  # closes its pipe
    delivered = set(seqs(tmp_path))
    assert len(accepted) > 50
    assert accepted <= delivered, sorted(accepted - delivered)
