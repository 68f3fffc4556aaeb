"""`kittiwake queue` against a running server, and without one.

The command is run as a real process (through the test launcher, which
also knows `test.hold`), on the same configuration file as the server, as
an operator would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kw import LAUNCHER, Kittiwake, env
from queuetools import config, entries, mailbox, reports, send, wait_for

Start = Callable[..., Kittiwake]
SLOW = "    initial_retry_time 1h"


def queue_cmd(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), "queue", *args, "-c", str(tmp / "kittiwake.conf")],
        check=False,
        cwd=tmp,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def as_json(tmp: Path, *args: str) -> Any:
    done = queue_cmd(tmp, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def states(tmp: Path) -> list[str]:
    return [e["state"] for e in as_json(tmp, "list")["entries"]]


def test_list_show_flush_delete_bounce_on_a_running_server(
    kittiwake: Start, tmp_path: Path
) -> None:
    server = kittiwake(config(tmp_path, queue=SLOW))
    send(server.port(), "me@sender.example", ["x@temp.example", "a@ok.example"], subject="one")
    send(server.port(), "me@sender.example", ["y@temp.example"], subject="two")
    wait_for(lambda: server.log.count("not delivered") == 2, message="first tries")
    wait_for(
        lambda: (
            [e["state"] for e in as_json(tmp_path, "list")["entries"]] == ["waiting", "waiting"]
        ),
        message="both waiting",
    )

    listed = as_json(tmp_path, "list")["entries"]
    assert [[r["addr"] for r in e["rcpts"]] for e in listed] == [
        ["x@temp.example"],
        ["y@temp.example"],
    ]
    first, second = listed
    assert first["sender"] == "me@sender.example"
    assert first["last_error"] == "451 4.4.1 Downstream busy"
    assert first["state"] == "waiting"
    assert 3500 < first["next_attempt"] - time.time() <= 3600
    text = queue_cmd(tmp_path, "list")
    assert text.returncode == 0
    line = rf"{first['id']}  age \d+s  \d+ B  next in 59m\d\ds  from <me@sender"
    assert re.search(line, text.stdout)
    assert "x@temp.example (tries 1): 451 4.4.1 Downstream busy" in text.stdout
    assert text.stdout.endswith("2 entries in queue outq\n")

    shown = as_json(tmp_path, "show", first["id"])
    assert "Subject: one" in shown["header"]
    assert shown["metadata"]["rcpts"][0]["addr"] == "x@temp.example"
    assert "Subject: one" in queue_cmd(tmp_path, "show", first["id"]).stdout

    assert sorted(as_json(tmp_path, "flush")["flushed"]) == sorted([first["id"], second["id"]])
    wait_for(lambda: server.log.count("not delivered") == 4, message="flushed tries")
    wait_for(
        lambda: (
            [e["state"] for e in as_json(tmp_path, "list")["entries"]] == ["waiting", "waiting"]
        ),
        message="both waiting again",
    )

    bounced = as_json(tmp_path, "bounce", second["id"])
    assert bounced["rcpts"] == 1
    notices = wait_for(lambda: mailbox(tmp_path, "me@sender.example"), message="DSN")
    assert isinstance(notices, list)
    (report,) = reports(notices[0])
    assert report["action"] == "failed" and report["status"] == "5.0.0"

    done = queue_cmd(tmp_path, "delete", first["id"])
    assert done.returncode == 0 and done.stdout == f"deleted {first['id']}\n"
    wait_for(lambda: not entries(tmp_path / "queue"), message="queue empty")
    assert queue_cmd(tmp_path, "list").stdout == "queue outq is empty\n"
    missing = queue_cmd(tmp_path, "show", first["id"])
    assert missing.returncode == 1
    assert f"no entry {first['id']}" in missing.stderr


def test_without_a_server_list_show_delete_read_the_files(kittiwake: Start, tmp_path: Path) -> None:
    server = kittiwake(config(tmp_path, queue=SLOW))
    send(server.port(), "me@sender.example", ["x@temp.example"])
    send(server.port(), "me@sender.example", ["y@temp.example"])
    wait_for(lambda: server.log.count("not delivered") == 2, message="first tries")
    assert server.stop() == 0

    offline = as_json(tmp_path, "list")
    assert (offline["queue"], offline["server_running"]) == ("outq", False)
    listed = offline["entries"]
    assert [e["state"] for e in listed] == ["stored", "stored"]
    assert "(server not running: read from disk)" in queue_cmd(tmp_path, "list").stdout
    assert "Subject: hello" in as_json(tmp_path, "show", listed[0]["id"])["header"]
    for action in ("flush", "bounce"):
        refused = queue_cmd(tmp_path, action, listed[0]["id"])
        assert refused.returncode == 1
        assert f"no server answers on {tmp_path}/state/run/control.sock" in refused.stderr
    assert as_json(tmp_path, "delete", listed[0]["id"])["deleted"] == listed[0]["id"]
    assert entries(tmp_path / "queue") == [listed[1]["id"]]
    # The survivor is still whole for the next start.
    server = kittiwake(config(tmp_path, temp="deliver_to &mb"))
    wait_for(lambda: mailbox(tmp_path, "y@temp.example"), message="y delivered")
    assert not mailbox(tmp_path, "x@temp.example")


def test_delete_while_an_attempt_is_in_flight(kittiwake: Start, tmp_path: Path) -> None:
    """The entry is gone at once, is not written back when the attempt ends, and
    is never tried again; a flush of it meanwhile does nothing."""
    journal, release = tmp_path / "journal", tmp_path / "release"
    top = f"test.hold held {{\n    release {release}\n    journal {journal}\n}}"
    server = kittiwake(config(tmp_path, target="&held", top=top, queue=SLOW))
    send(server.port(), "me@sender.example", ["a@ok.example"])
    wait_for(journal.exists, message="attempt started")
    (entry,) = as_json(tmp_path, "list")["entries"]
    assert entry["state"] == "in flight"
    assert as_json(tmp_path, "flush", entry["id"]) == {"flushed": [], "in_flight": True}
    busy = queue_cmd(tmp_path, "bounce", entry["id"])
    assert busy.returncode == 1 and "being delivered right now" in busy.stderr
    deleted = queue_cmd(tmp_path, "delete", entry["id"])
    assert deleted.returncode == 0
    assert "not tried again" in deleted.stdout
    assert entries(tmp_path / "queue") == []
    release.touch()
    wait_for(lambda: "delivered" in journal.read_text(), message="attempt ended")
    time.sleep(0.5)
    assert entries(tmp_path / "queue") == []
    assert journal.read_text().count("started") == 1
    assert as_json(tmp_path, "list")["entries"] == []
    assert server.stop() == 0
    server = kittiwake(config(tmp_path, target="&held", top=top))
    time.sleep(0.5)
    assert journal.read_text().count("started") == 1  # not resurrected at restart


def test_several_queues_need_a_choice(kittiwake: Start, tmp_path: Path) -> None:
    second = f"target.queue other {{\n    target &mb\n    location {tmp_path}/other\n}}\n"
    both = "deliver_to &outq\n    deliver_to &other"
    text = config(tmp_path, top=second).replace("deliver_to &outq", both)
    kittiwake(text)
    unclear = queue_cmd(tmp_path, "list")
    assert unclear.returncode == 2
    assert "several queues, choose one with --queue: outq, other" in unclear.stderr
    assert as_json(tmp_path, "list", "--queue", "other")["entries"] == []
    assert as_json(tmp_path, "list", "--queue", f"{tmp_path}/other")["entries"] == []


def test_an_inline_queue_is_chosen_by_its_location_as_written(
    kittiwake: Start, tmp_path: Path
) -> None:
    kittiwake(f"""
state_dir {tmp_path}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp_path}/mail
}}
smtp tcp://127.0.0.1:0 {{
    tls off
    deliver_to queue inlineq {{
        target &mb
    }}
}}
""")
    listed = as_json(tmp_path, "list", "--queue", "inlineq")
    assert listed["server_running"] is True and listed["entries"] == []


def test_from_another_directory_the_paths_are_named(kittiwake: Start, tmp_path: Path) -> None:
    """Relative paths follow the working directory: the error says which path and why."""
    conf = config(tmp_path).replace(f"state_dir {tmp_path}/state", "state_dir state")
    conf = conf.replace(f"location {tmp_path}/queue", "location queue")
    (tmp_path / "kittiwake.conf").write_text(conf)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), "queue", "list", "-c", str(tmp_path / "kittiwake.conf")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env=env(),
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{elsewhere}/state/queue does not exist" in done.stderr
    assert "relative state_dir and runtime_dir" in done.stderr
    assert "Errno" not in done.stderr


def test_a_bad_id_is_refused(kittiwake: Start, tmp_path: Path) -> None:
    kittiwake(config(tmp_path))
    done = queue_cmd(tmp_path, "show", "../../etc/passwd")
    assert done.returncode == 1
    assert "not an entry ID" in done.stderr
