"""The downstream misbehaves: refused, slow, 4xx, 5xx, silent after the dot, a full mailbox.

The upstream A is a real kittiwake taking mail into `target.queue`, which
relays it with `target.smtp` (or `target.lmtp`) to the downstream on a
fixed loopback port (faults.py). The downstream is Postfix's `smtp-sink`
with its fault options (`man smtp-sink`: `-r`/`-f` soft and hard errors,
`-q` a hang-up, `-W` a stalled reply), replaced by a plain one on the same
port when the test wants the message to go through at last; or a second
kittiwake delivering into a Maildir (a full mailbox on a tiny tmpfs).
Notices (DSNs) land in A's own Maildir.

R60 one full mailbox over LMTP, R61 connection refused, R62 a stalled
reply, R63 4xx retried and 5xx bounced, R64 a hang-up after the dot.
"""

from __future__ import annotations

import email.message
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakedns import FakeDNS
from faults import Relay, make_mailbox, relay_of, send, small_disk
from kw import Dialog, Kittiwake, free_port
from queuetools import mailbox, reports, wait_for
from sink import Sink

OK = ["u@ok.example"]
SENDER = "me@sender.example"


@pytest.fixture
def relay(tmp_path: Path, dns: FakeDNS) -> Iterator[Relay]:
    with relay_of(tmp_path, dns.address) as started:
        yield started


@pytest.fixture
def sinks() -> Iterator[Callable[..., Sink]]:
    """Start smtp-sinks (`options`, `port=`); all are killed after the test."""
    started: list[Sink] = []

    def start(*options: str, port: int) -> Sink:
        sink = Sink(*options, port=port)
        started.append(sink)
        return sink

    try:
        yield start
    finally:
        for sink in started:
            sink.close()


def seqs(sink: Sink) -> Counter[str]:
    """X-Seq -> copies the sink received (whole transactions only)."""
    found: Counter[str] = Counter()
    for t in sink.transactions():
        match = re.search(rb"^X-Seq: (\S+)", t.message, re.M)
        found[match.group(1).decode() if match else ""] += 1
    return found


def attempts(server: Kittiwake, rcpt: str = "u@ok.example") -> list[str]:
    """The reply of each failed attempt for `rcpt`, from A's log."""
    pattern = rf"not delivered .*rcpt={re.escape(rcpt)} reply=\"([^\"]+)\""
    return re.findall(pattern, server.log)


def _notices(relay: Relay) -> list[email.message.EmailMessage]:
    return mailbox(relay.a_dir, SENDER)


# -- R60: one mailbox full, over LMTP ------------------------------------------------


def test_lmtp_one_full_mailbox_of_three(relay: Relay) -> None:
    """R60: the full one gets its own 452, in its place; the other two 250.

    The mailbox is a 64 KiB tmpfs almost filled, so the disk really is full:
    `452 4.3.1` (mail system full). kittiwake says `452 4.2.2` (mailbox
    full) for EDQUOT, which needs a file-system quota this kernel lacks
    (unit-tested in tests/units/storage/test_maildir.py).
    """
    full = relay.b_dir / "mail" / "ok.example" / "full"
    with small_disk(full):
        make_mailbox(full)
        (full / "filler").write_bytes(b"\0" * 60 * 1024)
        relay.start_b(lmtp=True)
        with Dialog(relay.b_port) as d:
            assert d.reply()[-1].startswith("220 ")
            assert d.cmd("LHLO client.example").startswith("250 ")
            assert d.cmd(f"MAIL FROM:<{SENDER}>").startswith("250 ")
            for rcpt in ("a@ok.example", "full@ok.example", "c@ok.example"):
                assert d.cmd(f"RCPT TO:<{rcpt}>").startswith("250 ")
            assert d.cmd("DATA").startswith("354 ")
            d.send(b"X-Seq: 1\r\n\r\n" + (b"x" * 98 + b"\r\n") * 200 + b".\r\n")
            replies = [d.reply()[-1] for _ in range(3)]
        assert replies[0] == "250 2.0.0 <a@ok.example> OK: queued"
        assert re.fullmatch(
            r"452 4\.3\.1 <full@ok\.example> Insufficient system storage \(msg ID = \w+\)",
            replies[1],
        ), replies[1]
        assert replies[2] == "250 2.0.0 <c@ok.example> OK: queued"
        assert relay.copies() == {("a@ok.example", "1"): 1, ("c@ok.example", "1"): 1}
        assert list((full / "tmp").iterdir()) == list((full / "new").iterdir()) == []


def test_lmtp_per_recipient_4xx_retries_only_that_recipient(relay: Relay) -> None:
    """R60 through the queue, R63 (LMTP): the client gets 250; the full mailbox is
    tried again until it has room, the other two are never sent a second copy."""
    rcpts = ["a@ok.example", "full@ok.example", "c@ok.example"]
    full = relay.b_dir / "mail" / "ok.example" / "full"
    with small_disk(full):
        make_mailbox(full)
        filler = full / "filler"
        filler.write_bytes(b"\0" * 60 * 1024)
        relay.start_b(lmtp=True)
        a = relay.start_a(lmtp=True)
        body = (b"x" * 98 + b"\r\n") * 200
        assert send(relay.a_port, "1", rcpts, body=body).startswith("250 ")
        wait_for(lambda: len(attempts(a, "full@ok.example")) >= 2, message="tried again")
        assert all(r.startswith("452 4.3.1") for r in attempts(a, "full@ok.example"))
        assert relay.copies() == {("a@ok.example", "1"): 1, ("c@ok.example", "1"): 1}
        filler.unlink()  # room again
        relay.wait_drained()
        assert relay.copies() == {(r, "1"): 1 for r in rcpts}
    for rcpt in ("a@ok.example", "c@ok.example"):
        assert not attempts(a, rcpt)
        assert len(re.findall(rf"outq: delivered .*rcpt={rcpt}", a.log)) == 1


def _direct_endpoint(port: int) -> str:
    """A second endpoint on A relaying straight to the downstream, no queue."""
    return f"""smtp tcp://127.0.0.1:{port} {{
    tls off
    deliver_to &relay
}}"""


# -- R61: the downstream refuses connections ------------------------------------------------


def test_refused_connection_direct_is_451(relay: Relay) -> None:
    """R61: without a queue, the client itself is told to try later: 451 4.4.1."""
    direct = free_port()
    relay.start_a(extra=_direct_endpoint(direct))  # B is not running: nothing listens
    with Dialog(direct) as d:
        assert d.reply()[-1].startswith("220 ")
        assert d.cmd("EHLO client.example").startswith("250 ")
        assert d.cmd(f"MAIL FROM:<{SENDER}>").startswith("250 ")
        reply = d.cmd("RCPT TO:<u@ok.example>")
    assert reply.startswith("451 4.4.1 "), reply


def test_refused_connection_through_the_queue(relay: Relay) -> None:
    """R61: 250 at once, then tries with growing pauses, and the DSN only after the last."""
    a = relay.start_a(queue={"max_tries": "3", "retry_time_scale": "2"}, top="log stderr_ts")
    assert send(relay.a_port, "1", OK, sender=SENDER, subject="refused").startswith("250 ")
    (dsn,) = wait_for(lambda: _notices(relay), message="the DSN")  # type: ignore[misc]
    tried = _log_times(a, r"not delivered .*rcpt=u@ok\.example")
    assert len(tried) == 3
    assert all(r.startswith("451 4.4.1 ") for r in attempts(a))
    first, second = tried[1] - tried[0], tried[2] - tried[1]
    assert 0.19 <= first < 0.35 and 0.39 <= second < 0.6, tried  # 200 ms, then 400 ms
    sent = _log_times(a, r"notice sent")
    assert sent and sent[0] >= tried[2]  # only after max_tries
    (report,) = reports(dsn)
    assert report["action"] == "failed"
    assert report["status"] == "4.4.1"
    assert "u@ok.example" in report["final-recipient"]
    assert "451 4.4.1" in report["diagnostic-code"]
    assert "Subject: refused" in dsn.as_string()
    relay.wait_drained()


def _log_times(server: Kittiwake, pattern: str) -> list[float]:
    """Seconds (of the day) of each log line matching `pattern` (`log stderr_ts`)."""
    times = []
    for line in server.log.splitlines():
        if re.search(pattern, line):
            h, m, s = line.split()[0].split("T")[1][:12].split(":")
            times.append(int(h) * 3600 + int(m) * 60 + float(s))
    return times


# -- R62: a downstream that stalls ----------------------------------------------------------


def test_stalled_downstream_keeps_every_session_responsive(
    relay: Relay, sinks: Callable[..., Sink]
) -> None:
    """R62: the downstream holds its RCPT reply for 30 s (`-W RCPT:30`).

    Direct sessions get `450 4.4.2` once `command_timeout` (2 s) is up;
    meanwhile, with 5 direct sessions and 5 queue attempts stuck downstream,
    a whole transaction on the queue endpoint still takes well under a
    second. When the downstream recovers, every queued message arrives once.
    """
    sink = sinks("-W", "RCPT:30", port=relay.b_port)
    direct = free_port()
    a = relay.start_a(extra=_direct_endpoint(direct))
    for i in range(5):  # five queue entries whose attempts stall
        assert send(relay.a_port, f"q{i}", OK).startswith("250 ")
    answers: list[tuple[str, float]] = []

    def direct_session() -> None:
        started = time.monotonic()
        with Dialog(direct) as d:
            d.reply()
            d.cmd("EHLO client.example")
            d.cmd(f"MAIL FROM:<{SENDER}>")
            answers.append((d.cmd("RCPT TO:<u@ok.example>"), time.monotonic() - started))

    threads = [threading.Thread(target=direct_session) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # every direct session is now waiting on the downstream
    latencies = []
    for i in range(5):
        started = time.monotonic()
        assert send(relay.a_port, f"p{i}", OK).startswith("250 ")
        latencies.append(time.monotonic() - started)
    for t in threads:
        t.join(20)
    assert max(latencies) < 1.0, latencies
    assert len(answers) == 5
    for reply, took in answers:
        assert reply.startswith("450 4.4.2 Network I/O error"), reply
        assert 1.8 < took < 5, took
    wait_for(lambda: len(attempts(a)) >= 10, message="queue attempts timed out")
    assert all(r.startswith("450 4.4.2") for r in attempts(a))
    sink.close()
    healthy = sinks(port=relay.b_port)
    relay.wait_drained(timeout=30)
    assert seqs(healthy) == Counter({f"{k}{i}": 1 for k in "qp" for i in range(5)})


# -- R63: 4xx is retried, 5xx is bounced ------------------------------------------------------


def test_downstream_4xx_is_retried_until_it_goes_through(
    relay: Relay, sinks: Callable[..., Sink]
) -> None:
    """R63: `-r RCPT` (450 4.3.0) is temporary: tried again; then delivered, once."""
    sink = sinks("-r", "RCPT", port=relay.b_port)
    a = relay.start_a()
    assert send(relay.a_port, "1", OK).startswith("250 ")
    wait_for(lambda: len(attempts(a)) >= 2, message="two failed attempts")
    assert all(r.startswith("450 4.3.0") for r in attempts(a))
    sink.close()
    healthy = sinks(port=relay.b_port)
    relay.wait_drained()
    assert seqs(healthy) == Counter({"1": 1})
    assert not _notices(relay)


def test_downstream_5xx_bounces_to_the_sender(relay: Relay, sinks: Callable[..., Sink]) -> None:
    """R63: `-f .` (500 5.3.0 after the dot) fails for good at once: one try, one DSN."""
    sinks("-f", ".", port=relay.b_port)
    a = relay.start_a()
    assert send(relay.a_port, "1", OK, subject="bounce me").startswith("250 ")
    (dsn,) = wait_for(lambda: _notices(relay), message="the DSN")  # type: ignore[misc]
    relay.wait_drained()
    assert attempts(a) == ["500 5.3.0 Error: command failed"]  # never tried again
    assert dsn["From"].addresses[0].addr_spec == "MAILER-DAEMON@example.com"
    assert dsn["To"].addresses[0].addr_spec == SENDER
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["Return-Path"] == "<>"  # from the null sender: no notice about a notice
    (report,) = reports(dsn)
    assert report["action"] == "failed"
    assert report["status"] == "5.3.0"
    assert report["final-recipient"] == "rfc822; u@ok.example"
    assert report["diagnostic-code"].startswith("smtp; 500 5.3.0 ")
    text = dsn.as_string()
    assert "Subject: bounce me" in text and "X-Seq: 1" in text  # the original header


def test_downstream_5xx_for_the_null_sender_is_dropped(
    relay: Relay, sinks: Callable[..., Sink]
) -> None:
    """A failed notice is never answered with a notice (RFC 3461 §6.2)."""
    sinks("-f", ".", port=relay.b_port)
    a = relay.start_a()
    assert send(relay.a_port, "1", OK, sender="").startswith("250 ")
    a.wait_log("entry done")
    assert "notice sent" not in a.log
    assert not _notices(relay)


# -- R64: the downstream hangs up after the dot ----------------------------------------------


def test_hang_up_after_the_dot_is_retried(relay: Relay, sinks: Callable[..., Sink]) -> None:
    """R64: `-q .` closes without a reply: temporary, tried again, delivered later.

    The sink that hung up may have kept the content (it never said so); the
    copy the queue counts is the one a server acknowledged.
    """
    sink = sinks("-q", ".", port=relay.b_port)
    a = relay.start_a()
    assert send(relay.a_port, "1", OK).startswith("250 ")
    wait_for(lambda: len(attempts(a)) >= 2, message="two failed attempts")
    assert all(r.startswith("450 4.4.2") for r in attempts(a))
    a.wait_log(r"connection closed by the server")
    sink.close()
    healthy = sinks(port=relay.b_port)
    relay.wait_drained()
    assert seqs(healthy) == Counter({"1": 1})
    assert not _notices(relay)
