"""kill -9 at one exact step of a message's life: nothing that got a 250 is lost.

Every test runs two real servers (faults.py): the upstream A takes the
message into `target.queue` and relays it with `target.smtp` to the
downstream B, which delivers into a Maildir where each copy is counted.
strace kills A on entering one system call of one entry (a `-P` path), or
holds it just after one (`Relay.hold`) while the test looks at the disk or
arms the next strace. Each test then
restarts A and checks the rule (docs/target-queue.md, "Durability" and "An
attempt"): whatever got a 250 is delivered, duplicates only where the
step allows one, no file left half-written, and the server starts cleanly.

R49 kill mid-DATA, R50 between the final dot and the 250 (four steps), R51
just after the 250, R53 after the downstream's 250 but before the queue
records it, R58 a failed fsync or close, R68 SIGTERM mid-session, R70 the
second of two targets failing its commit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakedns import FakeDNS
from faults import (
    RENAME,
    UNLINK,
    Relay,
    entry_id_of,
    final_reply,
    message,
    open_data,
    queue_files,
    relay_of,
    send,
    stuffed,
)
from kw import Dialog

OK = ["u@ok.example"]


@pytest.fixture
def relay(tmp_path: Path, dns: FakeDNS) -> Iterator[Relay]:
    with relay_of(tmp_path, dns.address) as started:
        yield started


def _restart_clean(relay: Relay) -> None:
    """Restart A; nothing of the killed process was put aside as damaged."""
    a = relay.start_a()
    assert "quarantined" not in a.log
    assert not (relay.queue / "quarantine").exists()


# -- R49: mid-DATA -------------------------------------------------------------------


def test_kill_mid_data_leaves_no_trace(relay: Relay) -> None:
    """R49: killed while the body streams in; the client's retry gives one copy."""
    relay.start_b()
    a = relay.start_a(endpoint="    buffer fs")  # the body goes to a file from its first byte
    buffers = relay.a_dir / "state" / "buffer"
    with open_data(relay.a_port, "me@sender.example", OK) as d:
        d.send(message("1", body=b"x" * 998 + b"\r\n") + (b"y" * 998 + b"\r\n") * 300)
        deadline = time.monotonic() + 10
        while sum(p.stat().st_size for p in buffers.iterdir()) < 200_000:
            assert time.monotonic() < deadline, "the body never reached the buffer file"
            time.sleep(0.02)
        a.kill()
        assert final_reply(d) == ""
    assert queue_files(relay.queue) == []  # the queue saw nothing
    _restart_clean(relay)
    assert relay.a is not None
    relay.a.wait_log("removed buffer files of a process that died count=1")
    assert list(buffers.iterdir()) == []
    assert send(relay.a_port, "1", OK).startswith("250 ")
    relay.wait_copies({("u@ok.example", "1"): 1})
    relay.wait_drained()


# -- R50: between the final dot and the 250 ---------------------------------------------

#: What a step does once the end of the data is on its way.
Finish = Callable[[], None]


def _arm_header_fsync(relay: Relay) -> Finish:
    """Killed at the first fsync: the header file, before anything is complete."""
    relay.kill_at("fsync")
    return lambda: None


def _arm_dir_fsync_before_commit(relay: Relay) -> Finish:
    """Killed at the directory fsync that makes the header and body names durable."""
    relay.kill_at("fsync", (str(relay.queue),))
    return lambda: None


def _arm_commit_rename(relay: Relay) -> Finish:
    """Killed on entering the rename of `ID.meta.tmp` to `ID.meta` (the commit point)."""
    hold = relay.hold("fsync")

    def finish() -> None:
        entry = entry_id_of(hold.wait(), relay.queue)
        relay.kill_at(RENAME, (str(relay.queue / f"{entry}.meta.tmp"),))
        relay.resume()

    return finish


def _arm_after_commit(relay: Relay) -> Finish:
    """Held just after the commit rename ran, then killed: a live entry, no 250 sent."""
    hold = relay.hold("fsync")

    def finish() -> None:
        entry = entry_id_of(hold.wait(), relay.queue)
        meta = relay.queue / f"{entry}.meta"
        after = relay.hold(RENAME, (f"{meta}.tmp",))
        relay.resume()
        after.wait()
        assert meta.exists()
        os.kill(relay.pid, signal.SIGKILL)

    return finish


@pytest.mark.parametrize(
    ("arm", "where", "copies_before_retry"),
    [
        pytest.param(
            _arm_header_fsync, r"fsync\(\d+<\S+\.header\.tmp>\) += \?", 0, id="header-fsync"
        ),
        pytest.param(
            _arm_dir_fsync_before_commit,
            r"fsync\(\d+<\S+/queue>\) += \?",
            0,
            id="dir-fsync-before-commit",
        ),
        pytest.param(
            _arm_commit_rename, r"rename\S*\(.*\.meta\.tmp\".* = \?", 0, id="commit-rename"
        ),
        pytest.param(_arm_after_commit, r"rename\S*\(.*\.meta\.tmp\".* = 0", 1, id="after-commit"),
    ],
)
def test_kill_between_the_dot_and_the_250(
    relay: Relay,
    arm: Callable[[Relay], Finish],
    where: str,
    copies_before_retry: int,
) -> None:
    """R50: at most one copy from the killed try; the client's retry may add a duplicate.

    Before the commit rename nothing survives (the restart removes the
    half-written files); after it the entry is live and delivered, and the
    client, which never saw a 250, sends the message again: two copies.
    """
    relay.start_b()
    relay.start_a()
    with open_data(relay.a_port, "me@sender.example", OK) as d:
        d.send(message("1"))
        finish = arm(relay)
        d.send(stuffed(b""))
        finish()
        assert re.search(where, relay.dead())
        assert final_reply(d) == ""
    files = queue_files(relay.queue)
    _restart_clean(relay)
    assert relay.a is not None
    if copies_before_retry:
        relay.wait_copies({("u@ok.example", "1"): 1})
    else:
        assert files and not any(f.endswith(".meta") for f in files), files
        relay.a.wait_log(r"removed unfinished files count=\d+")
    relay.wait_drained()
    assert send(relay.a_port, "1", OK).startswith("250 ")
    relay.wait_copies({("u@ok.example", "1"): copies_before_retry + 1})
    relay.wait_drained()


# -- R51: just after the 250 ----------------------------------------------------------------


def test_kill_just_after_the_250_keeps_the_message(relay: Relay) -> None:
    """R51: the 250 was read, then kill -9; after the restart it is delivered once.

    B is not running yet, so the kill cannot fall inside a delivery (that is
    R53): the entry waits on disk for its downstream.
    """
    a = relay.start_a()
    assert send(relay.a_port, "1", OK).startswith("250 ")
    a.kill()
    assert len([f for f in queue_files(relay.queue) if f.endswith(".meta")]) == 1
    relay.start_b()
    _restart_clean(relay)
    relay.wait_drained()
    assert relay.copies() == {("u@ok.example", "1"): 1}


# -- R53: after the downstream's 250, before the queue records it ----------------------------

#: B refuses this domain at RCPT until restarted without `routes`.
REFUSE_TEMP = """
    destination temp.example {
        reject 451 4.4.1 "Downstream busy"
    }"""
THREE = ["a@ok.example", "b@ok.example", "c@temp.example"]


def _accept_and_learn_id(relay: Relay, rcpts: list[str]) -> tuple[Dialog, str]:
    """A session whose message A is holding at its first fsync: the entry ID."""
    d = open_data(relay.a_port, "me@sender.example", rcpts)
    d.send(message("1"))
    hold = relay.hold("fsync")
    d.send(stuffed(b""))
    return d, entry_id_of(hold.wait(), relay.queue)


def test_kill_after_the_downstream_took_it_sends_it_again(relay: Relay) -> None:
    """R53: killed on removing the delivered entry: one duplicate, never a loss."""
    relay.start_b()
    relay.start_a()
    d, entry = _accept_and_learn_id(relay, OK)
    with d:
        relay.kill_at(UNLINK, (str(relay.queue / f"{entry}.meta"),))
        relay.resume()
        assert final_reply(d).startswith("250 ")
    assert re.search(r"unlink\S*\(.*\.meta\" *\) += \?", relay.dead())
    relay.wait_copies({("u@ok.example", "1"): 1})  # the downstream said 250 to it
    assert queue_files(relay.queue) == [f"{entry}.{kind}" for kind in ("body", "header", "meta")]
    _restart_clean(relay)
    relay.wait_drained()
    assert relay.copies() == {("u@ok.example", "1"): 2}  # the one duplicate


def _meta_rcpts(relay: Relay, entry: str) -> list[str]:
    data = json.loads((relay.queue / f"{entry}.meta").read_bytes())
    return [r["addr"] for r in data["rcpts"]]


def test_recipients_already_done_are_not_sent_again(relay: Relay) -> None:
    """R53: two of three recipients delivered and recorded; the kill after the third's
    250 resends only the third."""
    relay.start_b(routes=REFUSE_TEMP)
    relay.start_a(queue={"initial_retry_time": "1s"})
    assert send(relay.a_port, "1", THREE).startswith("250 ")
    (entry,) = [f.split(".")[0] for f in queue_files(relay.queue) if f.endswith(".meta")]
    deadline = time.monotonic() + 20
    while _meta_rcpts(relay, entry) != ["c@temp.example"]:  # the first attempt is recorded
        assert time.monotonic() < deadline, "first attempt never recorded"
        time.sleep(0.02)
    relay.kill_at(UNLINK, (str(relay.queue / f"{entry}.meta"),))
    relay.stop_b()
    relay.start_b()  # now takes temp.example too
    assert re.search(r"unlink\S*\(.*\.meta\" *\) += \?", relay.dead())
    _restart_clean(relay)
    relay.wait_drained()
    assert relay.copies() == {
        ("a@ok.example", "1"): 1,
        ("b@ok.example", "1"): 1,
        ("c@temp.example", "1"): 2,
    }


def test_kill_before_a_partial_attempt_is_recorded(relay: Relay) -> None:
    """R53: killed on writing down that two of three were delivered: those two get a
    duplicate at the restart (the record still lists them), the third one copy."""
    relay.start_b(routes=REFUSE_TEMP)
    relay.start_a(queue={"initial_retry_time": "1s"})
    d, entry = _accept_and_learn_id(relay, THREE)
    with d:
        meta_tmp = str(relay.queue / f"{entry}.meta.tmp")
        commit = relay.hold(RENAME, (meta_tmp,))  # the commit rename: leave it be
        relay.resume()
        commit.wait()
        relay.kill_at(RENAME, (meta_tmp,))  # the next one: the record of the attempt
        relay.resume()
        assert final_reply(d).startswith("250 ")
    assert re.search(r"rename\S*\(.*\.meta\.tmp\".* = \?", relay.dead())
    relay.wait_copies({("a@ok.example", "1"): 1, ("b@ok.example", "1"): 1})
    assert _meta_rcpts(relay, entry) == THREE  # the old record survived whole
    relay.stop_b()
    relay.start_b()
    _restart_clean(relay)
    relay.wait_drained()
    assert relay.copies() == {
        ("a@ok.example", "1"): 2,
        ("b@ok.example", "1"): 2,
        ("c@temp.example", "1"): 1,
    }


# -- R58: a failed fsync or close -----------------------------------------------------------


def _fail_header_fsync(errno_name: str) -> Callable[[Relay], Finish]:
    def arm(relay: Relay) -> Finish:
        relay.fail_at("fsync", errno_name)
        return lambda: None

    return arm


def _fail_body_close(relay: Relay) -> Finish:
    """The close of the body file after its fsync (NFS reports write-back errors there)."""
    hold = relay.hold("fsync")

    def finish() -> None:
        entry = entry_id_of(hold.wait(), relay.queue)
        relay.fail_at("close", "EIO", (str(relay.queue / f"{entry}.body.tmp"),))
        relay.resume()

    return finish


def _fail_dir_fsync_after_commit(relay: Relay) -> Finish:
    """The directory fsync that makes the commit rename durable: after the rename ran."""
    hold = relay.hold("fsync")

    def finish() -> None:
        entry = entry_id_of(hold.wait(), relay.queue)
        commit = relay.hold(RENAME, (str(relay.queue / f"{entry}.meta.tmp"),))
        relay.resume()
        commit.wait()
        relay.fail_at("fsync", "EIO", (str(relay.queue),))
        relay.resume()

    return finish


@pytest.mark.parametrize(
    ("arm", "failed", "reply"),
    [
        pytest.param(_fail_header_fsync("EIO"), r"fsync\(.*\.header\.tmp>", "451 4.3.0", id="eio"),
        pytest.param(
            _fail_header_fsync("ENOSPC"), r"fsync\(.*\.header\.tmp>", "452 4.3.1", id="enospc"
        ),
        pytest.param(_fail_body_close, r"close\(.*\.body\.tmp>", "451 4.3.0", id="close-eio"),
        pytest.param(
            _fail_dir_fsync_after_commit, r"fsync\(\d+<\S+/queue>", "451 4.3.0", id="dir-eio"
        ),
    ],
)
def test_a_failed_sync_is_temporary_and_never_tried_again(
    relay: Relay, arm: Callable[[Relay], Finish], failed: str, reply: str
) -> None:
    """R58: 4xx (never 5xx), the call not repeated, every file of the entry removed,
    the session and the server go on, and the message sent again arrives once."""
    relay.start_b()
    a = relay.start_a()
    with open_data(relay.a_port, "me@sender.example", OK) as d:
        d.send(message("1"))
        finish = arm(relay)
        d.send(stuffed(b""))
        finish()
        answer = final_reply(d)
        assert answer.startswith(reply), answer
        assert d.cmd("NOOP").startswith("250 ")
    tracer = relay.tracers[-1]
    tracer.close()
    lines = tracer.lines()
    (failure,) = [line for line in lines if re.search(failed, line) and " = -1 E" in line]
    path = re.search(r"<([^>]+)>", failure)
    assert path is not None
    assert [line for line in lines if path.group(0) in line and failed[:5] in line] == [failure]
    assert queue_files(relay.queue) == []
    a.wait_log(r"cannot queue the message .*reply=\"4")
    assert send(relay.a_port, "1", OK).startswith("250 ")
    relay.wait_drained()
    assert relay.copies() == {("u@ok.example", "1"): 1}


# -- R68: SIGTERM in the middle of a session -------------------------------------------------

SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


def test_sigterm_mid_data_lets_the_message_finish_durably(relay: Relay) -> None:
    """R68: the DATA in progress completes (250, then 421) and is delivered once."""
    relay.start_b()
    a = relay.start_a()
    with open_data(relay.a_port, "me@sender.example", OK) as d:
        d.send(message("1"))
        a.send(signal.SIGTERM)
        time.sleep(0.2)
        d.send(stuffed(b""))
        assert final_reply(d).startswith("250 ")
        assert d.reply() == [SHUTTING_DOWN]
    assert a.wait() == 0
    _restart_clean(relay)
    relay.wait_drained()
    assert relay.copies() == {("u@ok.example", "1"): 1}


def test_sigterm_while_the_queue_writes_the_message(relay: Relay) -> None:
    """R68: SIGTERM arrives while A is held inside the queue's write: the write
    completes, the client gets 250 then 421, and the message arrives once."""
    relay.start_b()
    a = relay.start_a()
    d, _ = _accept_and_learn_id(relay, OK)
    with d:
        a.send(signal.SIGTERM)  # pending until A runs again
        relay.resume()
        assert final_reply(d).startswith("250 ")
        assert d.reply() == [SHUTTING_DOWN]
    assert a.wait() == 0
    _restart_clean(relay)
    relay.wait_drained()
    assert relay.copies() == {("u@ok.example", "1"): 1}


def test_sigterm_with_a_client_that_does_not_finish(relay: Relay) -> None:
    """R68: past `shutdown_timeout` the unfinished DATA gets 421 4.3.2 and leaves nothing."""
    relay.start_b()
    a = relay.start_a(endpoint="    shutdown_timeout 1s")
    with open_data(relay.a_port, "me@sender.example", OK) as d:
        d.send(message("1"))
        a.send(signal.SIGTERM)
        assert final_reply(d) == SHUTTING_DOWN
    assert a.wait() == 0
    assert queue_files(relay.queue) == []
    _restart_clean(relay)
    assert send(relay.a_port, "1", OK).startswith("250 ")
    relay.wait_drained()
    assert relay.copies() == {("u@ok.example", "1"): 1}


def test_sigterm_while_the_disk_is_slow_leaves_no_half_written_entry(relay: Relay) -> None:
    """R68: the queue's write outlasts `shutdown_timeout` (its directory fsync takes
    3 s): the client gets 421 4.3.2, and the entry the thread finished after the
    session gave up is removed before the server exits, not left for the next start."""
    relay.start_b()
    a = relay.start_a(endpoint="    shutdown_timeout 1s")
    with open_data(relay.a_port, "me@sender.example", OK) as d:
        d.send(message("1"))
        relay.delay_at("fsync", 3.0, (str(relay.queue),))
        d.send(stuffed(b""))
        time.sleep(0.5)  # the thread is in its directory fsync now
        a.send(signal.SIGTERM)
        assert final_reply(d) == SHUTTING_DOWN
    assert a.wait() == 0
    assert queue_files(relay.queue) == []
    relay.start_a()
    assert send(relay.a_port, "1", OK).startswith("250 ")
    relay.wait_drained()
    assert relay.copies() == {("u@ok.example", "1"): 1}


# -- R70: two targets, the second one's commit fails -----------------------------------------


def _mailbox(relay: Relay) -> Path:
    """A's own mailbox for u@ok.example, made beforehand so its path is known."""
    box = relay.a_dir / "mail" / "ok.example" / "u"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    return box


def _fail_mailbox_commit(relay: Relay) -> Finish:
    """The mailbox is second: the fsync of its new/ after the link fails."""
    relay.fail_at("fsync", "EIO", (str(_mailbox(relay) / "new"),))
    return lambda: None


def _last_fsync(lines: list[str]) -> str:
    return [line for line in lines if "fsync(" in line][-1]


def _fail_queue_commit(relay: Relay) -> Finish:
    """The queue is second: its commit rename fails (the mailbox committed first)."""
    _mailbox(relay)
    first = relay.hold("fsync")  # the mailbox's tmp/ file: its body stage runs first

    def finish() -> None:
        assert "/mail/ok.example/u/tmp/" in _last_fsync(first.wait())
        second = relay.hold("fsync")  # the queue's header file
        relay.resume()
        entry = entry_id_of(second.wait(), relay.queue)
        relay.fail_at(RENAME, "EIO", (str(relay.queue / f"{entry}.meta.tmp"),))
        relay.resume()

    return finish


@pytest.mark.parametrize(
    ("targets", "arm", "reply"),
    [
        pytest.param(("&outq", "&local"), _fail_mailbox_commit, "451 4.3.0", id="mailbox-second"),
        pytest.param(("&local", "&outq"), _fail_queue_commit, "451 4.3.0", id="queue-second"),
    ],
)
def test_a_failed_second_commit_is_never_a_250(
    relay: Relay, targets: tuple[str, str], arm: Callable[[Relay], Finish], reply: str
) -> None:
    """R70: the client hears 451, never 250 with a target missing; its retry reaches
    both targets, so the one that had committed holds a duplicate (docs/pipeline.md)."""
    relay.start_b()
    relay.start_a(targets=targets)
    box = _mailbox(relay)
    with open_data(relay.a_port, "me@sender.example", OK) as d:
        d.send(message("1"))
        finish = arm(relay)
        d.send(stuffed(b""))
        finish()
        answer = final_reply(d)
        assert answer.startswith(reply), answer
    queue_first = targets[0] == "&outq"
    if not queue_first:
        assert queue_files(relay.queue) == []
    assert send(relay.a_port, "1", OK).startswith("250 ")
    relay.wait_drained()
    in_mailbox = len(list((box / "new").iterdir()))
    assert relay.copies() == {("u@ok.example", "1"): 2 if queue_first else 1}
    assert in_mailbox == (1 if queue_first else 2), in_mailbox
    assert list((box / "tmp").iterdir()) == []
