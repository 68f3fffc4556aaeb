"""Two kittiwake nodes behind a real HAProxy, sharing their limits in a real Redis.

The configuration is the example of docs/several-nodes.md, taken from the
page as it is: its HAProxy file and its kittiwake file, with only the
addresses, ports and file paths replaced by the test's (`REPLACE_*` below;
each must occur, so the page cannot drift from the test). Node 1 listens on
127.0.0.2, node 2 on 127.0.0.3, on the same port, as two machines would;
HAProxy, on 127.0.0.1, sends connections to them in turn with a PROXY v2
header, and reaches them from 127.0.0.1, the address they trust. Clients
connect to HAProxy from their own addresses (127.0.0.20, ...), which is
what the `ip` limits see. Redis is a private `redis-server` on a free port,
killed and restarted by the tests that need an outage.

What is checked, each limit at its bound and past it:

- `all rate 300 1m`: 300 transactions in the minute across both nodes
  (two nodes counting apart would let 600 through), then `451 4.4.5`;
- `ip concurrency 5`: five transactions of one address held on both nodes,
  the sixth waits and gets 451, and gets its slot once one is freed;
- `max_connections_per_ip 20` and `max_connections` across the nodes;
- `auth_ratelimit` per address: failures on one node lock the address out
  on the other;
- Redis killed: `fail_closed` answers 451/421 with `4.4.5`, `fail_open`
  lets mail through; both log the outage once and recover by themselves
  when Redis is back, without a restart.
"""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest
from fakedns import FakeDNS
from haproxy import HAProxy, Route
from kw import LAUNCHER, NO_LIMITS, Dialog, Kittiwake, env, free_port, in_parallel, need_tool
from prometheus_client.parser import text_string_to_metric_families

from redisd import RedisServer

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "several-nodes.md"
NODES = ("127.0.0.2", "127.0.0.3")
HIGH_LOAD = "451 4.4.5 High load, try again later"
NO_CAPS = "421 4.4.5 Connection limits cannot be checked now, try again later"
TOO_MANY = "421 4.7.0 Too many connections, try again later"
#: The wait before a 451 (docs/limits.md), and the slack around it.
DEADLINE = 5.0


def page_examples() -> tuple[str, str]:
    """The page's HAProxy file (the first `text` fence) and kittiwake file
    (the first `conf` fence)."""
    fences = re.findall(r"^```(\w+)\n(.*?)^```", PAGE.read_text(), re.M | re.S)
    haproxy = next(text for info, text in fences if info == "text")
    kittiwake = next(text for info, text in fences if info == "conf")
    return haproxy, kittiwake


def replace(text: str, old: str, new: str, count: int = 1) -> str:
    """`old` must occur exactly `count` times: the page and the test agree."""
    assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times in {PAGE}"
    return text.replace(old, new)


@dataclass
class Cluster:
    redis: RedisServer
    nodes: list[Kittiwake]
    proxy: HAProxy | None
    front: int  # HAProxy's port
    port: int  # the nodes' port
    #: Each node's `openmetrics` port, when started with metrics.
    metrics: list[int] = field(default_factory=list)

    def connect(self, source: str) -> Dialog:
        """A session through HAProxy from `source`, greeted and EHLO'd."""
        d = Dialog(self.front, source=source, timeout=DEADLINE + 15)
        try:
            greeting = d.reply()[-1]
            assert greeting.startswith("220 "), greeting
            assert d.cmd("EHLO client.example").startswith("250 ")
        except BaseException:
            d.close()
            raise
        return d

    def logs(self) -> str:
        return "\n".join(node.log for node in self.nodes)


@pytest.fixture
def cluster(
    tmp_path: Path, cert_files: tuple[str, str], dns: FakeDNS
) -> Iterator[Callable[..., Cluster]]:
    """Start Redis, two nodes from the page's configuration, and HAProxy."""
    need_tool("redis-server", "redis-server")
    need_tool("haproxy", "haproxy")
    started: list[Cluster] = []

    def start(
        *,
        edits: tuple[tuple[str, str], ...] = (),
        haproxy: bool = True,
        redis_up: bool = True,
        jobs: int = 1,
        metrics: bool = False,
    ) -> Cluster:
        proxy_text, node_text = page_examples()
        redis = RedisServer(tmp_path / "redis")
        if redis_up:
            redis.start()
        port, front = free_port(), free_port()
        for old, new in edits:
            node_text = replace(node_text, old, new)
        node_text = replace(node_text, "/etc/kittiwake/certs/fullchain.pem", cert_files[0])
        node_text = replace(node_text, "/etc/kittiwake/certs/privkey.pem", cert_files[1])
        node_text = replace(node_text, "redis://10.0.0.5:6379/0", redis.url)
        node_text = replace(node_text, "10.0.0.10", "127.0.0.1", count=2)  # HAProxy's address
        nodes = []
        cluster = Cluster(redis, nodes, None, front, port)
        started.append(cluster)
        for n, address in enumerate(NODES, 1):
            workdir = tmp_path / f"mx{n}"
            for sub in ("new", "cur", "tmp"):  # the page's storage does not auto_create
                (workdir / "maildir" / "example.org" / "user" / sub).mkdir(parents=True)
            text = replace(node_text, "/var/lib/kittiwake/maildir", str(workdir / "maildir"))
            text = replace(text, "tcp://0.0.0.0:25", f"tcp://{address}:{port}")
            if metrics:
                cluster.metrics.append(free_port())
                text += f"\nopenmetrics tcp://127.0.0.1:{cluster.metrics[-1]} {{ }}\n"
            args = ("--debug.dnsoverride", dns.address)
            if jobs > 1:  # worker processes (docs/workers.md), each counting in Redis
                args += ("-j", str(jobs))
            node = Kittiwake(workdir, text, args=args)
            nodes.append(node)
            node.wait_ready()
        if haproxy:
            proxy_text = replace(proxy_text, "203.0.113.25:25", f"127.0.0.1:{front}")
            for n, address in enumerate(NODES, 1):
                proxy_text = replace(proxy_text, f"10.0.0.1{n}:25", f"{address}:{port}")
            cluster.proxy = PageHAProxy(tmp_path / "haproxy", proxy_text, front).start()
        return cluster

    try:
        yield start
    finally:
        for c in started:
            if c.proxy is not None:
                c.proxy.stop()
            for node in c.nodes:
                node.kill()
            c.redis.kill()


class PageHAProxy(HAProxy):
    """HAProxy from the page's file rather than from routes."""

    def __init__(self, workdir: Path, text: str, port: int) -> None:
        super().__init__(workdir, [Route("mx", ("127.0.0.1", 0), "", port=port)])
        self.text = text

    def config(self) -> str:
        return self.text


def transaction(d: Dialog) -> str:
    """MAIL, RCPT, RSET pipelined; the RCPT's reply (the limits are taken
    at the first RCPT: `defer_sender_reject` is on by default)."""
    d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nRSET\r\n")
    mail, rcpt, rset = d.reply()[-1], d.reply()[-1], d.reply()[-1]
    assert mail.startswith("250 ") and rset.startswith("250 "), (mail, rset)
    return rcpt


def served_by(cluster: Cluster, source: str) -> list[int]:
    """Which nodes (1, 2) logged a connection from `source`."""
    pattern = f"connection opened .*src_ip={re.escape(source)} "
    return [n for n, node in enumerate(cluster.nodes, 1) if re.search(pattern, node.log)]


# -- limits across the nodes ------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 2], ids=["one-process", "two-workers"])
def test_all_rate_holds_across_both_nodes_within_one_token(
    cluster: Callable[..., Cluster], jobs: int
) -> None:
    """`all rate 300 1m`: four clients run transactions as fast as they can
    until each is refused; over the minute the two nodes let 300 through
    together, not 300 each. With two workers per node, four processes
    count together."""
    c = cluster(jobs=jobs)
    sources = [f"127.0.0.{20 + i}" for i in range(4)]
    started = time.monotonic()

    def client(source: str) -> tuple[int, str]:
        # A new connection every 40 transactions (past 100 commands without
        # a message the server closes, docs/server.md); each lands on the
        # next node.
        accepted = 0
        while True:
            with c.connect(source) as d:
                for _ in range(40):
                    reply = transaction(d)
                    if not reply.startswith("250 "):
                        return accepted, reply
                    accepted += 1

    results = in_parallel(*(lambda s=s: client(s) for s in sources))
    window = time.monotonic() - started
    counts = [r[0] for r in results]
    assert window < 60.0  # one bucket period: the bound is one burst
    assert abs(sum(counts) - 300) <= 1, counts
    assert all(r[1] == HIGH_LOAD for r in results), results
    assert {n for s in sources for n in served_by(c, s)} == {1, 2}  # both nodes served
    assert all(n > 0 for n in counts), counts
    if jobs > 1:
        for node in c.nodes:
            assert len(set(re.findall(r"worker ready slot=(\d+)", node.log))) == jobs, node.log


@pytest.mark.parametrize("jobs", [1, 2], ids=["one-process", "two-workers"])
def test_ip_concurrency_holds_across_both_nodes(cluster: Callable[..., Cluster], jobs: int) -> None:
    """`ip concurrency 5`: five open transactions of one address, spread
    over both nodes, fill its slots; the sixth waits and gets 451; once
    one is given back (on the other node, or this one) the next goes in.
    With two workers per node, four processes hold the slots together."""
    c = cluster(jobs=jobs)
    source = "127.0.0.30"
    held = [c.connect(source) for _ in range(5)]
    extra = c.connect(source)
    other = c.connect("127.0.0.31")
    try:
        assert served_by(c, source) == [1, 2]
        for d in held:
            d.send(b"MAIL FROM:<a@example.net>\r\n")
            assert d.reply()[-1].startswith("250 ")
            assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")  # at the limit
        assert extra.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        started = time.monotonic()
        assert extra.cmd("RCPT TO:<user@example.org>") == HIGH_LOAD  # past it
        assert DEADLINE - 0.5 <= time.monotonic() - started <= DEADLINE + 3
        assert transaction(other).startswith("250 ")  # another address: not held up
        assert held[0].cmd("RSET").startswith("250 ")  # a slot freed on one node
        assert extra.cmd("RSET").startswith("250 ")
        started = time.monotonic()
        assert transaction(extra).startswith("250 ")
        assert time.monotonic() - started < 1.0
    finally:
        for d in (*held, extra, other):
            d.close()


def test_per_ip_connection_cap_holds_across_both_nodes(cluster: Callable[..., Cluster]) -> None:
    """`max_connections_per_ip 20`: 20 connections of one address, ten on
    each node (each node alone would take 20), then 421."""
    c = cluster()
    source = "127.0.0.40"
    opened = [c.connect(source) for _ in range(20)]  # at the cap
    try:
        past = Dialog(c.front, source=source)
        assert past.reply() == [TOO_MANY]
        assert past.closed()
        past.close()
        c.connect("127.0.0.41").close()  # another address is let in
        opened.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the slot comes back once the node has seen the close
            d = Dialog(c.front, source=source)
            reply = d.reply()[-1]
            if reply.startswith("220 ") or time.monotonic() > deadline:
                break
            d.close()
            time.sleep(0.1)
        assert reply.startswith("220 "), reply
        opened.append(d)
        assert re.search(r"per-IP connection limit reached src_ip=127\.0\.0\.40", c.logs())
    finally:
        for d in opened:
            d.close()


def test_max_connections_holds_across_both_nodes(cluster: Callable[..., Cluster]) -> None:
    """`max_connections 3` (edited from the page's 2000), clients straight to
    the nodes (HAProxy's health checks would take connections too): two
    on node 1 and one on node 2 fill it, the fourth is refused on either."""
    c = cluster(edits=(("max_connections 2000", "max_connections 3"),), haproxy=False)

    def direct(node: str, source: str) -> Dialog:
        return Dialog(c.port, host=node, source=source, timeout=DEADLINE + 15)

    opened = [direct(NODES[0], "127.0.0.50"), direct(NODES[0], "127.0.0.51")]
    opened.append(direct(NODES[1], "127.0.0.52"))
    try:
        for d in opened:
            assert d.reply()[-1].startswith("220 ")
        for node in NODES:
            with direct(node, "127.0.0.53") as d:
                assert d.reply() == [TOO_MANY]
        with opened.pop(0) as first:
            first.cmd("QUIT")
        time.sleep(0.3)
        with direct(NODES[1], "127.0.0.53") as d:
            assert d.reply()[-1].startswith("220 ")
    finally:
        for d in opened:
            d.close()


# -- Redis unreachable ------------------------------------------------------------------


def wait_for(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.2)


def test_redis_down_fails_closed_then_recovers_without_a_restart(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster()
    pids = [node.proc.pid for node in c.nodes]
    before = c.connect("127.0.0.60")  # greeted while Redis was up
    try:
        assert transaction(before).startswith("250 ")
        c.redis.kill()
        for _ in range(3):  # several decisions, one log line
            started = time.monotonic()
            assert transaction(before) == NO_LIMITS
            assert time.monotonic() - started < 2.5  # no 5-second wait
        for _ in range(4):  # new connections: turned away on both nodes
            with Dialog(c.front, source="127.0.0.61") as d:
                assert d.reply() == [NO_CAPS]
        for node in c.nodes:
            node.wait_log("shared state store unreachable .*mode=fail_closed")
            assert node.log.count("shared state store unreachable") == 1, node.log
        c.redis.start()  # empty, on the same port

        def accepting() -> bool:
            with Dialog(c.front, source="127.0.0.62") as d:
                if not d.reply()[-1].startswith("220 "):
                    return False
                d.cmd("EHLO client.example")
                return transaction(d).startswith("250 ")

        wait_for(accepting, 10.0)
        wait_for(lambda: all(accepting() for _ in range(2)), 10.0)  # both nodes
        assert transaction(before).startswith("250 ")
        for node in c.nodes:
            node.wait_log("shared state store reachable again")
        assert [node.proc.pid for node in c.nodes] == pids
        assert all(node.proc.poll() is None for node in c.nodes)
    finally:
        before.close()


def store_metrics(c: Cluster) -> dict[str, float]:
    """The shared store's samples, added up over both nodes' `/metrics` pages."""
    totals: dict[str, float] = {}
    for port in c.metrics:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name.startswith("kittiwake_state_")
                    and sample.labels["store"] == "cluster"
                ):
                    key = sample.name + "".join(
                        f",{k}={v}" for k, v in sorted(sample.labels.items()) if k != "store"
                    )
                    totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def test_the_store_and_its_outage_are_in_the_metrics(cluster: Callable[..., Cluster]) -> None:
    """Calls to Redis counted by result with their time, and the processes that
    find it unreachable, on each node's metrics page (docs/metrics.md)."""
    c = cluster(metrics=True)
    with c.connect("127.0.0.70") as before:  # greeted while Redis is up
        assert transaction(before).startswith("250 ")
        up = store_metrics(c)
        assert up["kittiwake_state_calls_total,result=ok"] >= 1
        assert up["kittiwake_state_call_duration_seconds_count"] >= 1
        assert up["kittiwake_state_unreachable"] == 0
        c.redis.kill()
        assert transaction(before) == NO_LIMITS  # asks Redis: failed
        assert transaction(before) == NO_LIMITS  # within the retry window: skipped
    down = store_metrics(c)
    assert down.get("kittiwake_state_calls_total,result=failed", 0) >= 1
    assert down.get("kittiwake_state_calls_total,result=skipped", 0) >= 1
    assert down["kittiwake_state_unreachable"] >= 1
    c.redis.start()

    def recovered() -> bool:
        with Dialog(c.front, source="127.0.0.72") as d:
            if not d.reply()[-1].startswith("220 "):
                return False
            d.cmd("EHLO client.example")
            transaction(d)
        return store_metrics(c)["kittiwake_state_unreachable"] == 0

    wait_for(recovered, 15.0)
    assert (
        store_metrics(c)["kittiwake_state_calls_total,result=ok"]
        > up["kittiwake_state_calls_total,result=ok"]
    )


def test_redis_down_fails_open_then_counts_again(cluster: Callable[..., Cluster]) -> None:
    c = cluster(edits=(("    fail_closed\n", "    fail_open\n"),))
    before = c.connect("127.0.0.70")
    try:
        c.redis.kill()
        assert transaction(before).startswith("250 ")  # through, uncounted
        for _ in range(4):
            with c.connect("127.0.0.71") as d:
                assert transaction(d).startswith("250 ")
        for node in c.nodes:
            node.wait_log("shared state store unreachable .*mode=fail_open")
        c.redis.start()
        time.sleep(1.2)  # past the retry window
        assert transaction(before).startswith("250 ")
        # Counting again: the transaction's bucket is back in Redis.
        wait_for(lambda: c.redis.command(b"KEYS", b"kittiwake:rate:*") != b"*0", 5.0)
    finally:
        before.close()


# -- auth_ratelimit across the nodes ----------------------------------------------------

PASSWORD = "correct horse"
HASH = "bcrypt:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4, b"2a")).decode()
INVALID = "535 5.7.8 Invalid credentials"
THROTTLED = "454 4.7.0 Too many failed authentication attempts, try again later"
OK = "235 2.0.0 Authentication succeeded"


def test_an_address_locked_out_on_one_node_is_locked_out_on_the_other(
    cluster: Callable[..., Cluster],
) -> None:
    """`auth_ratelimit { ip 3 }` on an endpoint with `state &cluster`:
    failures alternate between the nodes and count together; the third
    locks the address on both (a success in between resets nothing)."""
    submission = f"""
auth.pass_table users {{
    table static {{
        entry me@example.org "{HASH}"
    }}
}}

submission tcp://0.0.0.0:25 {{
    tls off
    proxy_protocol {{
        trust 10.0.0.10
    }}
    max_connections_per_ip_exempt 10.0.0.10
    state &cluster
    limits &inbound
    auth &users
    auth_ratelimit {{
        ip 3 1m
        username 0
        lockout 30s
        exempt none
    }}
    deliver_to &local_mailboxes
}}
"""
    # The page's file with a submission endpoint in place of its smtp one.
    _, page = page_examples()
    smtp = page[page.index("smtp tcp://0.0.0.0:25 {") :]
    c = cluster(edits=((smtp, submission.lstrip("\n")),))

    def login(source: str, password: str) -> str:
        with c.connect(source) as d:
            auth = base64.b64encode(f"\0me@example.org\0{password}".encode()).decode()
            return d.cmd("AUTH PLAIN " + auth)

    attacker = "127.0.0.80"
    assert login(attacker, "guess1") == INVALID
    assert login(attacker, "guess2") == INVALID
    assert login(attacker, PASSWORD) == OK  # two failures: below the limit
    assert login(attacker, "guess3") == INVALID  # the third reaches it: locked
    assert re.search(r"authentication locked out scope=ip src_ip=127\.0\.0\.80", c.logs())
    assert login(attacker, PASSWORD) == THROTTLED  # past it, on either node
    assert login(attacker, PASSWORD) == THROTTLED
    assert served_by(c, attacker) == [1, 2]
    assert login("127.0.0.81", PASSWORD) == OK  # another address


def test_a_node_starts_while_redis_is_down(cluster: Callable[..., Cluster]) -> None:
    """Starting does not wait for Redis: the node listens, says at once that
    Redis is unreachable, refuses (fail_closed) and serves once it is up."""
    c = cluster(haproxy=False, redis_up=False)
    node = c.nodes[0]
    node.wait_log("shared state store unreachable .*mode=fail_closed")
    with Dialog(c.port, host=NODES[0], source="127.0.0.95") as d:
        assert d.reply() == [NO_CAPS]
    c.redis.start()

    def greeted() -> bool:
        with Dialog(c.port, host=NODES[0], source="127.0.0.95") as d:
            return d.reply()[-1].startswith("220 ")

    wait_for(greeted, 10.0)
    node.wait_log("shared state store reachable again")


# -- reload -----------------------------------------------------------------------------


def test_a_reload_keeps_the_shared_counters_and_the_leases(
    cluster: Callable[..., Cluster],
) -> None:
    """docs/state.md, "Reloads": the old configuration's pool keeps renewing
    the slots of its draining sessions; the new one counts in the same keys."""
    c = cluster(
        edits=(("    key_prefix kittiwake:\n", "    key_prefix kittiwake:\n    lease 3s\n"),)
    )
    node = c.nodes[0]
    slot = b"kittiwake:slot:limits/inbound/ip.concurrency.0:127.0.0.90"
    with Dialog(c.port, host=NODES[0], source="127.0.0.90") as before:
        assert before.reply()[-1].startswith("220 ")
        before.cmd("EHLO client.example")
        assert before.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        assert before.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        assert c.redis.command(b"ZCARD", slot) == b":1"
        node.config_path.write_text(
            replace(node.config_path.read_text(), "max_connections 2000", "max_connections 1999")
        )
        node.send(signal.SIGUSR2)
        node.wait_log("reload: reloaded")
        time.sleep(4.5)  # longer than the lease: only renewal keeps the slot
        assert c.redis.command(b"ZCARD", slot) == b":1"
        with Dialog(c.port, host=NODES[0], source="127.0.0.90") as after:
            assert after.reply()[-1].startswith("220 ")
            after.cmd("EHLO client.example")
            assert transaction(after).startswith("250 ")
        assert before.cmd("RSET").startswith("250 ")
        assert c.redis.command(b"EXISTS", slot) == b":0"
        assert before.cmd("QUIT").startswith("221 ")
    node.wait_log("previous configuration stopped")
    assert " error " not in node.log.replace("error control:", ""), node.log


def test_a_changed_rate_applies_at_the_reload_not_at_the_refill(
    cluster: Callable[..., Cluster],
) -> None:
    """docs/limits.md: a reload that raises a rate lets the difference through
    at once, one that lowers it holds back at once; what was used this period
    stays used (the bucket in Redis outlives the reload)."""
    c = cluster(haproxy=False, edits=(("all rate 300 1m", "all rate 2 1h"),))
    node = c.nodes[0]

    def run(count: int) -> list[str]:
        with Dialog(c.port, host=NODES[0], source="127.0.0.91") as d:
            assert d.reply()[-1].startswith("220 ")
            d.cmd("EHLO client.example")
            return [transaction(d) for _ in range(count)]

    def reload(old: str, new: str, times: int) -> None:
        node.config_path.write_text(replace(node.config_path.read_text(), old, new))
        node.send(signal.SIGUSR2)
        node.wait_log("(?s:" + ".*".join(["reload: reloaded"] * times) + ")")

    assert all(r.startswith("250 ") for r in run(2))
    reload("all rate 2 1h", "all rate 5 1h", 1)
    replies = run(4)  # 5 - the 2 used: three now, not in an hour
    assert all(r.startswith("250 ") for r in replies[:3]) and replies[3] == HIGH_LOAD
    reload("all rate 5 1h", "all rate 4 1h", 2)
    assert run(1) == [HIGH_LOAD]  # all 5 used: none of 4 is left


# -- config check -------------------------------------------------------------------------


def test_config_check_refuses_a_mistake_at_its_line(
    tmp_path: Path, cert_files: tuple[str, str]
) -> None:
    """The real `kittiwake config check` on the page's file with both fail
    modes: exit 2 and FILE:LINE, without connecting anywhere."""
    _, text = page_examples()
    text = replace(text, "/etc/kittiwake/certs/fullchain.pem", cert_files[0])
    text = replace(text, "/etc/kittiwake/certs/privkey.pem", cert_files[1])
    text = replace(text, "    fail_closed\n", "    fail_closed\n    fail_open\n")
    (tmp_path / "kittiwake.conf").write_text(text)
    line = text.split("\n").index("    fail_open") + 1
    result = subprocess.run(
        [sys.executable, str(LAUNCHER), "config", "check", "-c", "kittiwake.conf"],
        check=False,
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (
        2,
        f"kittiwake.conf:{line}: fail_open and fail_closed cannot both be set: choose one\n",
    )
