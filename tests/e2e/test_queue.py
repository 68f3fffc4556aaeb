"""`target.queue` through the real server: accept, deliver, retry, notify, restart.

Each test starts `kittiwake run` with an smtp endpoint queueing into
`target.queue`, whose target is a real pipeline into `storage.maildir` that
refuses some domains the way a downstream server would (queuetools.py).
Nothing of the queue is mocked: files, timers, the bounce pipeline and the
maildir are the real ones.
"""

from __future__ import annotations

import re
import signal
import smtplib
from collections.abc import Callable
from pathlib import Path

from kw import Kittiwake
from queuetools import PERM, config, entries, mailbox, metadata, reports, send, wait_for

from kittiwake.queue.record import Record

Start = Callable[..., Kittiwake]


def _log_times(server: Kittiwake, pattern: str) -> list[float]:
    """Seconds (of the day) of each log line matching `pattern` (log stderr_ts)."""
    times = []
    for line in server.log.splitlines():
        if re.search(pattern, line):
            stamp = line.split()[0]  # 2026-01-01T10:00:00.123+00:00
            h, m, s = stamp.split("T")[1][:12].split(":")
            times.append(int(h) * 3600 + int(m) * 60 + float(s))
    return times


def test_delivers_and_leaves_nothing_behind(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path))
    send(server.port(), "me@sender.example", ["a@ok.example", "b@ok.example"])
    wait_for(lambda: mailbox(tmp_path, "b@ok.example"), message="delivery")
    assert len(mailbox(tmp_path, "a@ok.example")) == 1
    wait_for(lambda: not entries(tmp_path / "queue"), message="entry removed")
    assert sorted(p.name for p in (tmp_path / "queue").iterdir()) == ["lock"]
    assert not mailbox(tmp_path, "me@sender.example")  # no notice unless asked


def test_temporary_failures_are_retried_with_backoff_then_bounced(
    kittiwake: Start, tmp_path: Path
) -> None:
    """3 tries at 200 ms, then 300 ms (a real-valued scale of 1.5), then a DSN."""
    server = kittiwake(config(tmp_path, top="log stderr_ts"))
    send(server.port(), "me@sender.example", ["x@temp.example"], subject="retry me")
    notices = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")
    assert isinstance(notices, list) and len(notices) == 1
    tries = _log_times(server, r"not delivered .*rcpt=x@temp\.example")
    assert len(tries) == 3
    first, second = tries[1] - tries[0], tries[2] - tries[1]
    assert 0.19 <= first < 0.29, tries
    assert 0.29 <= second < 0.45, tries
    dsn = notices[0]
    assert dsn["From"].addresses[0].username == "MAILER-DAEMON"
    (report,) = reports(dsn)
    assert report["action"] == "failed"
    assert report["status"] == "4.4.1"
    assert "x@temp.example" in report["final-recipient"]
    assert "Downstream busy" in report.get("diagnostic-code", "")
    assert "retry me" in dsn.as_string()  # the original header comes back
    wait_for(lambda: not entries(tmp_path / "queue"), message="entry removed")


def test_permanent_failure_bounces_at_once_for_that_recipient_only(
    kittiwake: Start, tmp_path: Path
) -> None:
    server = kittiwake(config(tmp_path))
    send(server.port(), "me@sender.example", ["c@perm.example", "a@ok.example"])
    notices = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")
    assert isinstance(notices, list)
    (report,) = reports(notices[0])
    assert report["status"] == "5.1.1"
    assert "c@perm.example" in report["final-recipient"]
    assert len(mailbox(tmp_path, "a@ok.example")) == 1
    wait_for(lambda: not entries(tmp_path / "queue"), message="entry removed")
    assert server.log.count("not delivered") == 1  # a 5xx is never tried again


def test_the_null_sender_never_gets_a_notice(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path))
    send(server.port(), "", ["c@perm.example"])
    server.wait_log(r"entry done")
    assert "notice sent" not in server.log
    assert not (tmp_path / "mail" / "sender.example").exists()


def test_an_error_without_smtp_reply_is_temporary(kittiwake: Start, tmp_path: Path) -> None:
    """test.crash raises a plain RuntimeError: stored as 451 4.0.0 and retried."""
    server = kittiwake(config(tmp_path, target="test.crash"))
    send(server.port(), "me@sender.example", ["a@ok.example"])
    notices = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")
    assert isinstance(notices, list)
    (report,) = reports(notices[0])
    assert report["status"] == "4.0.0"
    assert server.log.count('reply="451 4.0.0 Internal server error"') == 3


def test_a_delayed_notice_once_then_the_failure(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(
        config(tmp_path, queue="    max_tries 6\n    delay_notice 500ms\n    retry_time_scale 1")
    )
    send(server.port(), "me@sender.example", ["x@temp.example", "y@temp.example"])
    found = wait_for(lambda: len(mailbox(tmp_path, "me@sender.example")) == 2, timeout=30)
    assert found
    actions = sorted(
        tuple(sorted(r["action"] for r in reports(m)))
        for m in mailbox(tmp_path, "me@sender.example")
    )
    # One "delayed" report for both recipients, then one "failed" for both.
    assert actions == [("delayed", "delayed"), ("failed", "failed")]
    wait_for(lambda: not entries(tmp_path / "queue"), message="entry removed")


def test_delivered_recipients_are_not_sent_again_even_after_restart(
    kittiwake: Start, tmp_path: Path
) -> None:
    """3 recipients, one failing temporarily: the other two get one copy, ever."""
    slow = "    initial_retry_time 1s\n    max_tries 20"
    server = kittiwake(config(tmp_path, queue=slow))
    send(server.port(), "me@sender.example", ["a@ok.example", "x@temp.example", "c@ok.example"])
    server.wait_log(r"not delivered .*x@temp")
    wait_for(lambda: mailbox(tmp_path, "c@ok.example"), message="c delivered")
    server.wait_log(r"not delivered .*x@temp(.|\n)*not delivered .*x@temp")  # a retry
    (entry_id,) = entries(tmp_path / "queue")
    meta = metadata(tmp_path / "queue", entry_id)
    assert [r["addr"] for r in meta["rcpts"]] == ["x@temp.example"]  # type: ignore[union-attr,index]
    assert server.stop() == 0
    # Restart where temp.example accepts: only x is delivered, once.
    server = kittiwake(config(tmp_path, queue=slow, temp="deliver_to &mb"))
    wait_for(lambda: mailbox(tmp_path, "x@temp.example"), message="x delivered")
    wait_for(lambda: not entries(tmp_path / "queue"), message="entry removed")
    assert len(mailbox(tmp_path, "a@ok.example")) == 1
    assert len(mailbox(tmp_path, "c@ok.example")) == 1
    assert len(mailbox(tmp_path, "x@temp.example")) == 1


def test_restart_keeps_every_entry_and_its_schedule(kittiwake: Start, tmp_path: Path) -> None:
    """R69: N entries queued, a restart; each delivered once, none before its time."""
    queue = "    initial_retry_time 3s\n    max_tries 20"
    server = kittiwake(config(tmp_path, queue=queue))
    for i in range(5):
        send(server.port(), "me@sender.example", [f"u{i}@temp.example"])
    location = tmp_path / "queue"

    def tried() -> bool:
        found = entries(location)
        return len(found) == 5 and all(metadata(location, i)["last_attempt"] for i in found)

    wait_for(tried, message="first tries written")
    due = {}
    for entry_id in entries(location):
        meta = metadata(location, entry_id)
        last = meta["last_attempt"]
        assert isinstance(last, float)
        due[meta["rcpts"][0]["addr"]] = last + 3.0  # type: ignore[index]
    assert len(due) == 5
    assert server.stop() == 0
    kittiwake(config(tmp_path, queue=queue, temp="deliver_to &mb"))
    for addr, when in due.items():
        found = wait_for(lambda a=addr: mailbox(tmp_path, a), message=addr)  # type: ignore[misc]
        assert isinstance(found, list) and len(found) == 1
        (path,) = (tmp_path / "mail" / "temp.example" / addr.split("@")[0] / "new").iterdir()
        assert path.stat().st_mtime >= when - 0.05, (addr, path.stat().st_mtime, when)
    wait_for(lambda: not entries(location), message="queue empty")


def test_kill_during_metadata_rewrites_leaves_every_entry_whole(
    kittiwake: Start, tmp_path: Path
) -> None:
    """R54: kill -9 again and again while attempts rewrite metadata."""
    import random
    import time

    queue = "    initial_retry_time 10ms\n    retry_time_scale 1\n    max_tries 100000"
    location = tmp_path / "queue"
    server = kittiwake(config(tmp_path, queue=queue))
    for i in range(10):
        send(server.port(), "me@sender.example", [f"u{i}@temp.example", f"v{i}@ok.example"])
    for _ in range(6):
        time.sleep(random.uniform(0.2, 0.6))
        server.kill()
        # Whatever the moment, every entry on disk is whole.
        for entry_id in entries(location):
            Record.from_bytes((location / f"{entry_id}.meta").read_bytes(), entry_id)
        server = kittiwake(config(tmp_path, queue=queue))
        assert "quarantined" not in server.log
    server.kill()
    assert len(entries(location)) == 10
    server = kittiwake(config(tmp_path, queue=queue, temp="deliver_to &mb"))
    wait_for(lambda: not entries(location), message="all delivered")
    for i in range(10):
        assert len(mailbox(tmp_path, f"u{i}@temp.example")) == 1
        assert len(mailbox(tmp_path, f"v{i}@ok.example")) == 1
    assert not list(location.glob("*.tmp"))
    assert not (location / "quarantine").exists()


def test_damaged_entries_are_quarantined_and_the_rest_delivered(
    kittiwake: Start, tmp_path: Path
) -> None:
    """R55: garbage metadata, a truncated body, a missing header."""
    queue = "    initial_retry_time 1h"
    server = kittiwake(config(tmp_path, queue=queue))
    for i in range(4):
        send(server.port(), "me@sender.example", [f"u{i}@temp.example"], body=f"{i}\r\n" * 50)
    wait_for(lambda: server.log.count("not delivered") == 4, message="first tries")
    assert server.stop() == 0
    location = tmp_path / "queue"
    bad_meta, short_body, no_header, good = entries(location)
    (location / f"{bad_meta}.meta").write_bytes(b'{"version": 1, "id": ')
    body = location / f"{short_body}.body"
    body.write_bytes(body.read_bytes()[:-10])
    (location / f"{no_header}.header").unlink()
    server = kittiwake(config(tmp_path, temp="deliver_to &mb"))
    wait_for(lambda: entries(location) == [], message="good entry delivered")
    for entry_id in (bad_meta, short_body, no_header):
        assert re.search(rf"entry quarantined at start queue_id={entry_id}", server.log)
        assert (location / "quarantine" / f"{entry_id}.meta").exists()
    delivered = [i for i in range(4) if mailbox(tmp_path, f"u{i}@temp.example")]
    assert len(delivered) == 1
    server.wait_log(good)  # logged once the entry is off the disk: a moment later


def test_a_body_altered_on_disk_is_quarantined_before_it_is_sent(
    kittiwake: Start, tmp_path: Path
) -> None:
    queue = "    initial_retry_time 1h"
    server = kittiwake(config(tmp_path, queue=queue))
    send(server.port(), "me@sender.example", ["u@temp.example"], body="original\r\n")
    server.wait_log("not delivered")
    assert server.stop() == 0
    location = tmp_path / "queue"
    (entry_id,) = entries(location)
    (location / f"{entry_id}.body").write_bytes(b"forged!!\r\n")  # same size
    server = kittiwake(config(tmp_path, temp="deliver_to &mb"))
    server.wait_log(rf"entry quarantined queue_id={entry_id}")
    assert not mailbox(tmp_path, "u@temp.example")


def test_a_notice_that_cannot_be_handed_over_keeps_the_entry(
    kittiwake: Start, tmp_path: Path
) -> None:
    """R67: the bounce pipeline fails; the failed recipient's notice waits on disk."""
    busy = 'reject 451 4.3.0 "Notices paused"'
    server = kittiwake(config(tmp_path, bounce=busy, queue="    max_tries 20"))
    send(server.port(), "me@sender.example", ["c@perm.example"])
    server.wait_log(r"notice not sent: temporary")
    location = tmp_path / "queue"
    (entry_id,) = entries(location)
    meta = metadata(location, entry_id)
    assert meta["rcpts"] == []
    assert [n["rcpt"] for n in meta["notices"]] == ["c@perm.example"]  # type: ignore[union-attr]
    server.wait_log(r"notice not sent(.|\n)*notice not sent")  # tried again
    assert server.stop() == 0
    kittiwake(config(tmp_path))
    notices = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")
    assert isinstance(notices, list) and len(notices) == 1
    wait_for(lambda: not entries(location), message="entry removed")


def test_a_notice_refused_for_good_is_dropped(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path))
    send(server.port(), "me@elsewhere.example", ["c@perm.example"])
    line = server.wait_log(r"\S+ target.queue/outq: notice not sent: refused for good.*")
    # A policy outcome, not a bug: a warning naming the reply and the address.
    assert line.startswith("warn ")
    assert 'reply="550 5.7.1 No notices to strangers"' in line
    assert "to=me@elsewhere.example" in line and "where=" not in line
    wait_for(lambda: not entries(tmp_path / "queue"), message="entry removed")


def test_sigterm_leaves_waiting_entries_on_disk(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path, queue="    initial_retry_time 1h"))
    send(server.port(), "me@sender.example", ["u@temp.example"])
    server.wait_log("not delivered")
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert len(entries(tmp_path / "queue")) == 1


# --- what the sender asked for (RFC 3461 NOTIFY, RET, ENVID, ORCPT) ----------------------


def test_notify_never_silences_a_failure(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path))
    send(server.port(), "me@sender.example", ["c@perm.example"], rcpt_options=("NOTIFY=NEVER",))
    server.wait_log(r"entry done")
    assert "notice sent" not in server.log
    assert not mailbox(tmp_path, "me@sender.example")


def test_notify_success_reports_a_final_delivery(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path))
    send(server.port(), "me@sender.example", ["a@ok.example"], rcpt_options=("NOTIFY=SUCCESS",))
    notices = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")
    assert isinstance(notices, list) and len(notices) == 1
    (report,) = reports(notices[0])
    assert report["action"] == "delivered"
    assert report["status"] == "2.0.0"
    assert len(mailbox(tmp_path, "a@ok.example")) == 1


def test_notify_delay_without_failure(kittiwake: Start, tmp_path: Path) -> None:
    """Only the "delayed" report: the final failure was not asked for."""
    server = kittiwake(config(tmp_path, queue="    max_tries 5\n    delay_notice 300ms"))
    send(server.port(), "me@sender.example", ["x@temp.example"], rcpt_options=("NOTIFY=DELAY",))
    server.wait_log(r"entry done")
    (dsn,) = mailbox(tmp_path, "me@sender.example")
    (report,) = reports(dsn)
    assert report["action"] == "delayed"
    assert "will-retry-until" in report


def test_ret_full_envid_and_orcpt_come_back(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path))
    send(
        server.port(),
        "me@sender.example",
        ["c@perm.example"],
        body="the secret body\r\n",
        mail_options=("RET=FULL", "ENVID=env+2Dtracking"),
        rcpt_options=("ORCPT=rfc822;orig@perm.example",),
    )
    (dsn,) = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")  # type: ignore[misc]
    text = dsn.as_string()
    assert "the secret body" in text
    assert "env-tracking" in text
    (report,) = reports(dsn)
    assert "orig@perm.example" in report["original-recipient"]


def test_ret_hdrs_returns_the_header_only(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path))
    send(
        server.port(),
        "me@sender.example",
        ["c@perm.example"],
        subject="only me",
        body="the secret body\r\n",
        mail_options=("RET=HDRS",),
    )
    (dsn,) = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")  # type: ignore[misc]
    assert "only me" in dsn.as_string()
    assert "the secret body" not in dsn.as_string()


def test_sigterm_lets_an_attempt_in_flight_finish(kittiwake: Start, tmp_path: Path) -> None:
    """The stop waits for the running attempt; its outcome is written before exit."""
    import threading

    journal, release = tmp_path / "journal", tmp_path / "release"
    top = f"test.hold held {{\n    release {release}\n    journal {journal}\n}}"
    server = kittiwake(config(tmp_path, target="&held", top=top))
    send(server.port(), "me@sender.example", ["a@ok.example"])
    wait_for(journal.exists, message="attempt started")
    server.send(signal.SIGTERM)
    threading.Timer(1.0, release.touch).start()
    assert server.wait() == 0
    assert "delivered a@ok.example" in journal.read_text()
    assert entries(tmp_path / "queue") == []


def test_a_refusal_by_the_next_hop_names_it_and_the_client_in_the_dsn(
    kittiwake: Start, tmp_path: Path
) -> None:
    """Remote-MTA (the next hop that refused) and Received-From-MTA (the client's
    EHLO name) in the report, through a real target.smtp and a second server."""
    down_dir = tmp_path / "down"
    down_dir.mkdir()
    downstream = Kittiwake(
        down_dir,
        f"""
state_dir {down_dir}/state
hostname next.example.com
tls off
smtp tcp://127.0.0.1:0 {{
    destination perm.example {{ {PERM} }}
    default_destination {{ reject 451 4.4.1 "Later" }}
}}
""",
    )
    try:
        downstream.wait_ready()
        hop = f"smtp tcp://127.0.0.1:{downstream.port()} {{\n        starttls no\n    }}"
        server = kittiwake(config(tmp_path, target=hop))
        with smtplib.SMTP("127.0.0.1", server.port(), timeout=20) as client:
            client.ehlo("laptop.example.test")
            client.sendmail("me@sender.example", ["c@perm.example"], b"Subject: s\r\n\r\nb\r\n")
        notices = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")
    finally:
        downstream.kill()
    assert isinstance(notices, list)
    status = next(p for p in notices[0].walk() if p.get_content_type() == "message/delivery-status")
    per_message, per_rcpt = status.get_payload()[:2]
    assert per_message["Received-From-MTA"] == "dns; laptop.example.test"
    assert per_rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1 No such user here")
    assert "127.0.0.1" in notices[0].as_string().split("message/delivery-status")[0]
