"""The kill loop: 50 clients send, the server is killed -9 ten times, nothing with a 250 is lost.

The upstream A (smtp endpoint -> `target.queue` -> `target.smtp`) relays to
the downstream B, a second kittiwake delivering into a Maildir, where every
copy is counted by its `X-Seq:` number (faults.py). Fifty client threads
send uniquely numbered messages without pause; a client that loses its
connection or gets a 4xx sends the *same* number again, as a real client
does (RFC 1047), until it gets its 250. Meanwhile A is killed with SIGKILL
at random moments and restarted, ten times: the kills land wherever A is,
in a session, in the queue's writes, in a delivery, in the write-down of
an attempt. After the last restart the clients stop and the queue drains.

Then, per message number: every number that got a 250 must be in B's
Maildir at least once (the rule: no loss); a number that never got a 250
may or may not be there. Duplicates are allowed and counted by their cause:

* the client sent the end of the data more than once: a kill between the
  commit and the 250 made it send again what A had already queued (R50);
* the client sent it once: A was killed after B's 250 but before the queue
  wrote down the delivery, and sent it again after the restart (R53).

The seed of the random moments is printed, and the figures too (`-s`).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakedns import FakeDNS
from faults import Relay, message, queue_files, relay_of, stuffed
from kw import Dialog

CLIENTS = 50
KILLS = 10
#: Seconds between a restart and the next kill: random in this range.
KILL_AFTER = (0.1, 2.5)
RCPT = "u@ok.example"


@dataclass
class Ledger:
    """What the clients did, per message number; shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: number -> how many times the end of the data was sent for it.
    submitted: Counter[str] = field(default_factory=Counter)
    accepted: set[str] = field(default_factory=set)  # got a 250
    given_up: set[str] = field(default_factory=set)  # never got one

    def note(self, seq: str, *, submitted: bool = False, accepted: bool = False) -> None:
        with self.lock:
            if submitted:
                self.submitted[seq] += 1
            if accepted:
                self.accepted.add(seq)


def _try_once(port: int, seq: str, ledger: Ledger) -> bool:
    """One attempt to hand `seq` over; True on a 250 after the data."""
    with Dialog(port, timeout=15) as d:
        if not d.reply()[-1].startswith("220"):
            return False
        if not d.cmd("EHLO client.example").startswith("250"):
            return False
        if not d.cmd("MAIL FROM:<me@sender.example>").startswith("250"):
            return False
        if not d.cmd(f"RCPT TO:<{RCPT}>").startswith("250"):
            return False
        if not d.cmd("DATA").startswith("354"):
            return False
        d.send(stuffed(message(seq, subject=f"kill loop {seq}")))
        ledger.note(seq, submitted=True)
        if not d.reply()[-1].startswith("250"):
            return False
        ledger.note(seq, accepted=True)
        d.cmd("QUIT")
    return True


def client(number: int, port: int, ledger: Ledger, stop: threading.Event) -> None:
    """Send message after message; resend the same number until it gets its 250."""
    count = 0
    while not stop.is_set():
        count += 1
        seq = f"{number}-{count}"
        while True:
            try:
                if _try_once(port, seq, ledger):
                    break
            except (OSError, EOFError):
                pass  # refused, reset, closed: A is down or was killed mid-session
            if stop.is_set():
                with ledger.lock:
                    ledger.given_up.add(seq)
                return
            time.sleep(0.05)


@pytest.fixture
def relay(tmp_path: Path, dns: FakeDNS) -> Iterator[Relay]:
    with relay_of(tmp_path, dns.address) as started:
        yield started


@pytest.mark.timeout(180)
def test_nothing_that_got_a_250_is_lost(relay: Relay) -> None:
    seed = int(os.environ.get("KILL_LOOP_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    relay.start_b()
    relay.start_a()
    ledger = Ledger()
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(i, relay.a_port, ledger, stop), daemon=True)
        for i in range(CLIENTS)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for _ in range(KILLS):
        time.sleep(rng.uniform(*KILL_AFTER))
        assert relay.a is not None
        relay.a.kill()  # SIGKILL
        relay.start_a()
        assert "quarantined" not in relay.a.log
    time.sleep(1.0)  # traffic after the last restart too
    stop.set()
    for t in threads:
        t.join(30)
    sending = time.monotonic() - started
    relay.wait_drained(timeout=60)
    delivered = Counter({seq: n for (_, seq), n in relay.copies().items()})
    report = _report(seed, ledger, delivered, sending) + "\n" + _restarts(relay)
    print(report)
    lost = sorted(ledger.accepted - set(delivered))
    assert not lost, f"messages that got a 250 and never arrived: {lost[:20]}\n{report}"
    assert sum(delivered.values()) > 0
    _assert_clean(relay)


def _report(seed: int, ledger: Ledger, delivered: Counter[str], seconds: float) -> str:
    duplicates = {seq: n for seq, n in delivered.items() if n > 1}
    resent = sorted(s for s in duplicates if ledger.submitted[s] > 1)
    requeued = sorted(s for s in duplicates if ledger.submitted[s] <= 1)
    unacknowledged = [s for s in delivered if s not in ledger.accepted]
    lines = [
        f"kill loop: seed {seed}, {CLIENTS} clients, {KILLS} kills, {seconds:.1f}s of sending",
        f"  numbers sent (end of data at least once): {len(ledger.submitted)}",
        f"  ends of data sent, resends included:      {sum(ledger.submitted.values())}",
        f"  numbers that got a 250:                   {len(ledger.accepted)}",
        f"  numbers delivered:                        {len(delivered)}",
        f"  copies delivered:                         {sum(delivered.values())}",
        f"  delivered without a 250 (allowed):        {len(unacknowledged)}",
        f"  duplicates:                               {len(duplicates)}",
        f"    client resent after a lost 250 (R50):   {len(resent)} {resent[:10]}",
        f"    queue resent after a kill (R53):        {len(requeued)} {requeued[:10]}",
        f"  lost (250, not delivered):                {len(ledger.accepted - set(delivered))}",
    ]
    return "\n".join(lines)


def _restarts(relay: Relay) -> str:
    """What each restart of A found: entries to take over, half-written files removed."""
    a_logs = [s.log for s in relay.started if s.workdir == relay.a_dir]
    entries = [int(n) for log in a_logs for n in re.findall(r"queue started .*entries=(\d+)", log)]
    cleaned = [int(n) for log in a_logs for n in re.findall(r"unfinished files count=(\d+)", log)]
    return (
        f"  restarts: {len(entries) - 1}, entries taken over: {sum(entries[1:])}, "
        f"half-written files removed: {sum(cleaned)}"
    )


def _assert_clean(relay: Relay) -> None:
    """Nothing half-written anywhere, nothing put aside, no error logged by either server."""
    assert queue_files(relay.queue) == []
    assert not (relay.queue / "quarantine").exists()
    tmp = relay.b_dir / "mail" / "ok.example" / "u" / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    assert relay.a is not None and relay.a.proc.poll() is None
    for server in relay.started:
        assert not re.search(r"^error ", server.log, re.M), server.log
