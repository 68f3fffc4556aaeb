"""The pieces of worker processes (docs/workers.md), each on its own: the
count, the channel, the sockets of slots, whole-line log writes from several
processes, metrics merging, the TLS report forwarder and the queue runner's
memory of finished entries. The whole thing runs in tests/e2e/test_workers.py."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from kittiwake import log
from kittiwake.config.node import Node
from kittiwake.config.parser import parse_text
from kittiwake.config.values import parse_listen_address
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.mx_auth.base import PolicyReport
from kittiwake.queue.progress import NoticeRules
from kittiwake.queue.record import FileSum, Rcpt, Record
from kittiwake.queue.runner import Runner
from kittiwake.queue.schedule import RetryPolicy
from kittiwake.queue.store import Store
from kittiwake.server.sockets import ListenSockets, bind_of
from kittiwake.supervise.channel import Channel
from kittiwake.supervise.count import option, parse_count, usable_cores
from kittiwake.supervise.metrics import Merged, Retired, families
from kittiwake.supervise.spawn import WorkerInit, node_from_json, node_to_json
from kittiwake.tlsrpt import TLSAttempt
from kittiwake.tlsrpt.aggregate import DayCounts
from kittiwake.tlsrpt.forward import Forwarder
from kittiwake.tlsrpt.store import TLSReportStore, day_path, read_day

SRC = Path(__file__).resolve().parents[2] / "src"

# -- how many --------------------------------------------------------------------------


def test_auto_is_the_cores_this_process_may_use() -> None:
    assert parse_count("auto") == usable_cores() == len(os.sched_getaffinity(0))
    assert parse_count("3") == 3


@pytest.mark.parametrize("text", ["0", "-1", "2.5", "257", "many", "", "٣"])
def test_a_count_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_count(text)
    with pytest.raises(argparse.ArgumentTypeError):
        option(text)


def test_the_directive_is_a_global_and_its_errors_have_a_line(tmp_path: Path) -> None:
    base = f"state_dir {tmp_path}\nhostname mx.example.org\ntls off\n"
    endpoint = "smtp tcp://127.0.0.1:0 {\n    deliver_to dummy\n}\n"
    container = Container(parse_text(base + "workers 4\n" + endpoint, "w.conf"))
    container.build()
    assert container.globals.workers == 4
    default = Container(parse_text(base + endpoint, "w.conf"))
    default.build()
    assert default.globals.workers == 1
    with pytest.raises(ConfigError) as caught:
        Container(parse_text(base + "workers none\n" + endpoint, "w.conf")).build()
    assert str(caught.value).startswith("w.conf:4: workers: expected a number")


# -- what a worker is started with -----------------------------------------------------


def test_the_configuration_tree_travels_as_data() -> None:
    tree = parse_text(
        'smtp tcp://127.0.0.1:25 {\n    hostname "a b"\n    check { }\n    tls off\n}\n', "x.conf"
    )
    again = [node_from_json(node_to_json(n)) for n in tree]
    assert again == tree
    assert again[0].children is not None and again[0].children[1].children == []
    assert again[0].children[2].children is None  # no block is not an empty block
    init = WorkerInit(
        slot=1,
        generation=2,
        workers=3,
        config_file="x.conf",
        cwd="/",
        nodes=[node_to_json(n) for n in tree],
        sockets=[(("inet", "127.0.0.1", 0), 7), (("unix", "/run/k/lmtp.sock", 0), 8)],
        debug_flags={"smtp_port": 2525},
    )
    back = WorkerInit.from_message(init.message())
    assert back == init
    assert back.tree() == tree and back.flags().smtp_port == 2525


# -- the channel -----------------------------------------------------------------------


async def test_a_question_gets_its_answer_and_the_end_of_the_channel_none() -> None:
    a, b = socket.socketpair()
    left, right = await Channel.open(a), await Channel.open(b)

    async def answering() -> None:
        while (message := await right.receive()) is not None:
            if message["kind"] == "double":
                right.answer(message, "result", value=2 * message["value"])
            else:
                right.send("echo", got=message["kind"])

    task = asyncio.create_task(answering())
    listening = asyncio.create_task(left.receive())  # someone must read the answers
    assert await left.ask("double", 5.0, value=21) == {"kind": "result", "re": 1, "value": 42}
    left.send("hello")
    assert await listening == {"kind": "echo", "got": "hello"}
    right.close()
    await task
    assert await left.receive() is None
    assert await left.ask("double", 5.0, value=1) is None  # nobody there
    left.close()


# -- sockets ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balances on Linux")
def test_each_slot_has_its_own_socket_on_the_one_port(tmp_path: Path) -> None:
    sockets = ListenSockets(reuse_port=True)
    addr = parse_listen_address("tcp://127.0.0.1:0")
    sockets.prepare([bind_of(addr, str(tmp_path))])
    bind = sockets.assign(addr, str(tmp_path))
    assert bind[2] != 0
    slots = [sockets.slot(bind, n) for n in range(3)]
    assert len({s.fileno() for s in slots}) == 3
    assert {s.getsockname()[1] for s in slots} == {bind[2]}
    for s in slots:
        s.settimeout(0.05)
    landed: set[int] = set()
    clients = []
    for _ in range(60):
        clients.append(socket.create_connection(("127.0.0.1", bind[2])))
        for n, s in enumerate(slots):
            try:
                s.accept()[0].close()
                landed.add(n)
            except TimeoutError:
                pass
    assert landed == {0, 1, 2}  # the kernel spreads them out
    sockets.trim_slots(1)
    assert slots[1].fileno() == -1 and slots[2].fileno() == -1 and slots[0].fileno() >= 0
    sockets.close_all()
    for c in clients:
        c.close()


def test_without_reuse_port_every_slot_shares_the_socket(tmp_path: Path) -> None:
    sockets = ListenSockets()
    unix = parse_listen_address("unix://lmtp.sock")
    bind = sockets.assign(unix, str(tmp_path))
    assert sockets.slot(bind, 0) is sockets.slot(bind, 3)
    sockets.close_all()
    assert not (tmp_path / "lmtp.sock").exists()


def test_a_worker_serves_what_it_inherited_and_binds_nothing(tmp_path: Path) -> None:
    parent = ListenSockets()
    unix = parse_listen_address("unix://lmtp.sock")
    tcp = parse_listen_address("tcp://127.0.0.1:0")
    parent.prepare([bind_of(unix, str(tmp_path)), bind_of(tcp, str(tmp_path))])
    unix_bind = parent.assign(unix, str(tmp_path))
    tcp_bind = parent.assign(tcp, str(tmp_path))

    worker = ListenSockets(inherited_only=True)
    worker.adopt(bind_of(unix, str(tmp_path)), parent.slot(unix_bind, 0).dup())
    worker.adopt(bind_of(tcp, str(tmp_path)), parent.slot(tcp_bind, 0).dup())
    served = worker.take(tcp, str(tmp_path))
    assert served.getsockname()[1] == tcp_bind[2]  # the port 0 the parent got
    worker.take(unix, str(tmp_path)).close()
    served.close()
    with pytest.raises(OSError, match="not among the sockets"):
        worker.take(parse_listen_address("tcp://127.0.0.1:1"), str(tmp_path))
    worker.close_all()
    assert (tmp_path / "lmtp.sock").exists()  # the parent's file, left alone
    parent.close_all()
    assert not (tmp_path / "lmtp.sock").exists()


# -- log lines from several processes --------------------------------------------------


def test_lines_are_packed_whole_into_pieces() -> None:
    lines = ["a" * 10, "b" * 10, "c" * 30, "d"]
    assert log.chunks(lines, 22) == [
        b"a" * 10 + b"\n" + b"b" * 10 + b"\n",
        b"c" * 30 + b"\n",  # longer than the limit: a piece of its own
        b"d\n",
    ]
    assert log.chunks([], 10) == []


WRITER = """
import asyncio, sys
from kittiwake import log
log.configure([sys.argv[1]])
logger = log.get("")

async def main():
    log.attach_loop(asyncio.get_running_loop())
    for turn in range(30):  # 50 lines a turn: one batch of ~75 KB each
        for n in range(turn * 50, turn * 50 + 50):
            logger.info("line", n=n, pad="x" * (n * 7 % 3000))
        await asyncio.sleep(0)
    log.attach_loop(None)

asyncio.run(main())
"""


@pytest.mark.parametrize("target", ["file", "pipe"])
def test_processes_writing_one_target_never_mix_lines(tmp_path: Path, target: str) -> None:
    """Four processes log long lines at once to one file (O_APPEND), or to
    one pipe as their stderr (what a service manager reads): every line
    arrives whole."""
    logfile = tmp_path / "all.log"
    environ = {**os.environ, "PYTHONPATH": str(SRC)}
    with open(logfile, "ab") as out:
        reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=out)
        assert reader.stdin is not None
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(logfile) if target == "file" else "stderr"],
                env=environ,
                stderr=reader.stdin,
            )
            for _ in range(4)
        ]
        for writer in writers:
            assert writer.wait(60) == 0
        reader.stdin.close()
        reader.wait(60)
    lines = logfile.read_text().splitlines()
    assert len(lines) == 4 * 1500
    for line in lines:
        head, _, pad = line.rpartition(" pad=")
        assert re.fullmatch(r"(\S+ )?info line n=\d+", head), line[:80]
        n = int(head.rsplit("n=", 1)[1])
        assert pad == ("x" * (n * 7 % 3000) or '""'), line[:80]


# -- metrics ---------------------------------------------------------------------------


def _registry(connections: float, open_now: float, max_fds: float) -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("conns", "Connections.", ["module"], registry=r).labels("smtp").inc(connections)
    Gauge("open_now", "Open.", registry=r).set(open_now)
    Gauge("process_max_fds", "Limit.", registry=r).set(max_fds)
    return r


def _value(metrics: list[Any], sample: str, **labels: str) -> float:
    return sum(
        s.value for m in metrics for s in m.samples if s.name == sample and s.labels == labels
    )


def test_a_scrape_adds_the_workers_to_the_supervisor() -> None:
    own = _registry(1, 0, 1024)
    workers = [families(_registry(5, 2, 99)), families(_registry(7, 3, 99))]
    merged = Merged(own, workers).collect()
    assert _value(merged, "conns_total", module="smtp") == 13
    assert _value(merged, "open_now") == 5
    assert _value(merged, "process_max_fds") == 1024  # the supervisor's own, not a sum
    # A family of another type under the same name is not added.
    odd = [
        {
            "name": "conns",
            "type": "gauge",
            "help": "",
            "unit": "",
            "samples": [["conns", {"module": "smtp"}, 100]],
        }
    ]
    assert _value(Merged(own, [odd]).collect(), "conns_total", module="smtp") == 1


def test_counts_of_workers_gone_stay_in_the_totals() -> None:
    retired = Retired()
    retired.add(families(_registry(5, 2, 99)))
    retired.add(families(_registry(7, 3, 99)))
    merged = Merged(_registry(1, 0, 1024), [retired.as_families()]).collect()
    assert _value(merged, "conns_total", module="smtp") == 13
    assert _value(merged, "open_now") == 0  # gauges of gone workers are gone


# -- TLS report counts -----------------------------------------------------------------


class _Uplink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def queued(self, location: str, entry_id: str) -> None:
        raise AssertionError("not used here")

    def tls_counts(self, day: str, counts: dict[str, Any]) -> None:
        self.sent.append((day, counts))


def _attempt(result: str = "success") -> TLSAttempt:
    policy = PolicyReport(policy_type="no-policy-found", policy_domain="example.net")
    return TLSAttempt(domain="example.net", result=result, policies=(policy,))


async def test_a_worker_forwards_its_tls_counts_to_the_one_store(tmp_path: Path) -> None:
    container = Container([Node("x")])
    uplink = _Uplink()
    container.shared.uplink = uplink
    noon = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC).timestamp()
    forwarder = Forwarder(container.shared, interval=0.05, clock=lambda: noon)
    for _ in range(3):
        forwarder.record(_attempt())
    forwarder.record(_attempt("starttls-not-supported"))
    await asyncio.sleep(0.2)
    assert [day for day, _ in uplink.sent] == ["2026-12-07"]
    forwarder.record(_attempt())
    await forwarder.aclose()  # the rest goes at the stop
    assert len(uplink.sent) == 2

    store = TLSReportStore(str(tmp_path), interval=3600)
    for day, counts in uplink.sent:
        store.add_counts(dt.date.fromisoformat(day), DayCounts.from_json(counts))
    store.close()
    written = read_day(day_path(str(tmp_path), dt.date(2026, 12, 7)))
    assert written is not None
    (policy,) = written.to_json("2026-12-07")["domains"]["example.net"]["policies"]
    assert policy["summary"] == {
        "total-successful-session-count": 4,
        "total-failure-session-count": 1,
    }


# -- the queue's memory of finished entries --------------------------------------------


def _record(entry_id: str) -> Record:
    empty = FileSum(0, "")
    return Record(entry_id, "m", "a@x", "a@x", [Rcpt("b@y")], empty, empty, time.time())


async def test_the_runner_takes_an_entry_once_and_remembers_it_finished(tmp_path: Path) -> None:
    async def in_thread(fn: Any, *args: Any) -> Any:
        return fn(*args)

    runner = Runner(
        target=object(),  # type: ignore[arg-type]
        store=Store(str(tmp_path)),
        run=in_thread,
        policy=RetryPolicy(initial=3600, scale=1.0, max_tries=1, post_init_delay=0),
        rules=NoticeRules(enabled=False, delay_after=None),
        notifier=None,
        parallelism=1,
        log=log.get("test"),
    )
    first = runner.add(_record("00000000000000aa"), time.time() + 3600)
    assert runner.add(_record("00000000000000aa")) is first  # reported and found: once
    assert runner.knows("00000000000000aa") and not runner.knows("00000000000000bb")
    runner._finish("00000000000000aa")
    assert "00000000000000aa" not in runner.entries
    assert runner.knows("00000000000000aa")  # a late report cannot bring it back
    await runner.stop()
