"""`state.redis` with `sentinel`: the master found through Redis Sentinel, and a failover.

Real processes on loopback: a Redis master, its replica, and a Sentinel
watching them (tests/redisd.py; all three are the Debian package's
`redis-server`), and a kittiwake node whose `limits` count in the master
the Sentinel names. The test spends half of an `all rate` limit, kills the
master with SIGKILL, and checks what docs/state.md promises: while the
Sentinel has no new master the decisions fail closed (`451 4.4.5`), the
server keeps running, and once the replica is promoted it counts there
without a restart, from where the old master left off: the other half of
the limit is admitted and no more.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kw import NO_LIMITS, Kittiwake, free_port, need_tool, rcpt_reply

from redisd import RedisSentinel, RedisServer, wait_for

HIGH_LOAD = "451 4.4.5 High load, try again later"
RATE = 6  # the limit: `all rate 6 1h`, so nothing refills during the test
PREFIX = "sentineltest:"


def config(port: int, sentinel_port: int, login: str = "") -> str:
    return f"""hostname mx.example.org
state.redis shared {{
    sentinel {RedisSentinel.MASTER} 127.0.0.1:{sentinel_port}{login}
    key_prefix {PREFIX}
    fail_closed
}}
smtp tcp://127.0.0.1:{port} {{
    tls off
    limits {{
        state &shared
        all rate {RATE} 1h
    }}
    deliver_to dummy
}}
"""


@dataclass
class Site:
    master: RedisServer
    replica: RedisServer
    sentinel: RedisSentinel


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """Start a master, its replica and a Sentinel: `password` is the
    master's (and the replica's), `sentinel_password` the Sentinel's own, of
    its ACL user `sentinel_user` if one is named."""
    need_tool("redis-server", "redis-server")
    started: list[RedisServer] = []

    def start(password: str = "", sentinel_password: str = "", sentinel_user: str = "") -> Site:
        master = RedisServer(tmp_path / "master", password=password)
        started.append(master.start())
        follow = ["--replicaof", "127.0.0.1", str(master.port)]
        replica = RedisServer(tmp_path / "replica", args=follow, password=password)
        started.append(replica.start())
        sentinel = RedisSentinel(
            tmp_path / "sentinel",
            master.port,
            password=sentinel_password,
            username=sentinel_user,
            master_password=password,
        )
        started.append(sentinel.start())
        wait_for(lambda: sentinel.replicas() == 1, 15.0, "the Sentinel sees the replica")
        return Site(master, replica, sentinel)

    try:
        yield start
    finally:
        for server in reversed(started):
            server.kill()


@pytest.fixture
def site(sites: Callable[..., Site]) -> Site:
    return sites()


def test_limits_count_in_the_master_the_sentinel_names_and_survive_a_failover(
    tmp_path: Path, site: Site
) -> None:
    port = free_port()
    (tmp_path / "node").mkdir()
    node = Kittiwake(tmp_path / "node", config(port, site.sentinel.port))
    try:
        node.wait_ready()
        node.wait_log(f'shared state in redis endpoint="sentinel {RedisSentinel.MASTER}@')
        # The log names the server that holds the counters.
        node.wait_log(
            f"redis master found master={RedisSentinel.MASTER} address=127.0.0.1:{site.master.port}"
        )
        half = RATE // 2
        for _ in range(half):
            assert rcpt_reply(port).startswith("250 ")
        assert site.master.command(b"DBSIZE") == b":1"  # the bucket, in the master
        # Replication is asynchronous: the failover is tested once the
        # replica has what the master had.
        wait_for(lambda: site.replica.command(b"DBSIZE") == b":1", 10.0, "replication")

        site.master.kill()
        pid = node.proc.pid
        refused = 0
        deadline = time.monotonic() + 30.0
        while True:  # fail closed until the Sentinel promotes the replica
            answer = rcpt_reply(port)
            if answer.startswith("250 "):
                break
            assert answer == NO_LIMITS
            refused += 1
            assert time.monotonic() < deadline, node.log
            time.sleep(0.2)
        assert refused >= 1  # the outage was seen, and answered as configured
        assert site.sentinel.master_port_now() == site.replica.port
        node.wait_log("shared state store unreachable .*mode=fail_closed")
        node.wait_log("shared state store reachable again")
        node.wait_log(f"redis master found [^\n]* address=127.0.0.1:{site.replica.port}")

        # The count went on in the new master: half before, half after, no more.
        for _ in range(RATE - half - 1):
            assert rcpt_reply(port).startswith("250 ")
        assert rcpt_reply(port) == HIGH_LOAD
        assert node.proc.pid == pid and node.proc.poll() is None
        assert site.replica.command(b"DBSIZE") == b":1"
    finally:
        node.kill()


def test_the_master_and_the_sentinels_each_get_their_own_login(
    tmp_path: Path, sites: Callable[..., Site]
) -> None:
    site = sites(password="m4ster-pw", sentinel_password="s3ntinel-pw", sentinel_user="watcher")
    sentinel_login = "\n    sentinel_username watcher\n    sentinel_password s3ntinel-pw"
    login = "\n    password m4ster-pw" + sentinel_login
    port = free_port()
    (tmp_path / "node").mkdir()
    node = Kittiwake(tmp_path / "node", config(port, site.sentinel.port, login))
    try:
        node.wait_ready()
        for _ in range(3):
            assert rcpt_reply(port).startswith("250 ")
        assert site.master.command(b"DBSIZE") == b":1"
        assert "unreachable" not in node.log
        assert "m4ster-pw" not in node.log and "s3ntinel-pw" not in node.log
    finally:
        node.kill()

    # The Sentinel refuses a wrong password of its own: fail closed, said in the log.
    login = (
        "\n    password m4ster-pw\n    sentinel_username watcher\n    sentinel_password m4ster-pw"
    )
    line = refused_outage(tmp_path / "wrong", site, login)
    # Which Sentinel refused, in a line of its own words (not redis-py's internals).
    assert f"Sentinel 127.0.0.1:{site.sentinel.port}: AuthenticationError" in line, line
    assert '(the login to a Sentinel failed: check sentinel_password)"' in line, line
    assert "redis.asyncio" not in line and len(line) < 400, line
    assert site.master.command(b"DBSIZE") == b":1"  # counted nothing more

    # No password for the master: the log says it is the master's login that failed.
    line = refused_outage(tmp_path / "nopass", site, sentinel_login)
    assert "the login to the Redis master failed: check password" in line, line


def test_a_sentinel_that_hangs_leaves_time_for_the_next(tmp_path: Path, site: Site) -> None:
    """The first Sentinel accepts connections and never answers (a host that
    drops packets, or a port that does not speak what is asked): within one
    decision the next Sentinel is asked and the master reached. When it is
    the only one, the outage line names the Sentinels that did not answer.
    A refusal because the store cannot answer is not logged as a limit reached."""
    with socket.socket() as hangs:
        hangs.bind(("127.0.0.1", 0))
        hangs.listen(64)  # connections complete in the kernel; nobody reads them
        hang_port = hangs.getsockname()[1]
        port = free_port()
        (tmp_path / "node").mkdir()
        text = config(port, site.sentinel.port).replace(
            "sentinel kwmaster ", f"sentinel kwmaster 127.0.0.1:{hang_port} "
        )
        node = Kittiwake(tmp_path / "node", text)
        try:
            node.wait_ready()
            for _ in range(3):
                assert rcpt_reply(port).startswith("250 "), node.log
            assert site.master.command(b"DBSIZE") == b":1"
            assert "unreachable" not in node.log
        finally:
            node.kill()

        port = free_port()
        (tmp_path / "alone").mkdir()
        text = config(port, hang_port)
        node = Kittiwake(tmp_path / "alone", text)
        try:
            node.wait_ready()
            assert rcpt_reply(port) == NO_LIMITS
            line = node.wait_log("shared state store unreachable [^\n]*")
            # Asked twice (a retry), it used up the decision's second: the
            # line names the Sentinels that were asked.
            assert f"from the Sentinels (127.0.0.1:{hang_port}) or the master" in line, line
            node.wait_log("smtp: limits unavailable src_ip=127.0.0.1")
            assert "smtp: limit reached" not in node.log
        finally:
            node.kill()


def refused_outage(workdir: Path, site: Site, login: str) -> str:
    """A node whose login is refused: its decision fails closed; its outage line."""
    port = free_port()
    workdir.mkdir()
    node = Kittiwake(workdir, config(port, site.sentinel.port, login))
    try:
        node.wait_ready()
        assert rcpt_reply(port) == NO_LIMITS
        return node.wait_log("shared state store unreachable [^\n]*")
    finally:
        node.kill()
