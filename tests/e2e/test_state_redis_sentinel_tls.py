"""`state.redis` with `sentinel` and `tls yes`: TLS to the Sentinels and to the master.

Real processes on loopback, all the Debian package's `redis-server`: a
master and its replica, replicating over TLS, and a Sentinel that listens
with TLS and watches them over TLS (tests/redisd.py). Every certificate is
issued by the test's own CA for `localhost` and `127.0.0.1`, the address
the Sentinel announces. docs/state.md says `tls yes` verifies the
Sentinels' and the master's certificates with the system's CAs and those
of `root_ca`: the node is given the test's CA in `root_ca`, counts in the
master, and after the master is killed, counts on in the promoted replica,
reached over TLS at the address the Sentinel now names. Started without
the CA, the same configuration refuses the certificate and fails closed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from kw import NO_LIMITS, Kittiwake, free_port, need_tool, rcpt_reply

from redisd import RedisSentinel, RedisServer, wait_for

PREFIX = "sentineltls:"


def config(port: int, sentinel_tls_port: int, extra: str = "") -> str:
    return f"""hostname mx.example.org
state.redis shared {{
    sentinel {RedisSentinel.MASTER} 127.0.0.1:{sentinel_tls_port}
    tls yes
    key_prefix {PREFIX}{extra}
}}
smtp tcp://127.0.0.1:{port} {{
    tls off
    limits {{
        state &shared
        all rate 100 1h
    }}
    deliver_to dummy
}}
"""


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def tls_site(
    tmp_path: Path, cert_files: tuple[str, str], ca_file: str
) -> Iterator[tuple[RedisServer, RedisServer, RedisSentinel]]:
    """A master, its replica and a Sentinel, all speaking TLS to each other."""
    need_tool("redis-server", "redis-server")
    started: list[RedisServer] = []
    try:
        master = RedisServer(tmp_path / "master", tls=cert_files, tls_ca=ca_file)
        started.append(master.start())
        follow = ["--replicaof", "127.0.0.1", str(master.tls_port)]
        replica = RedisServer(tmp_path / "replica", tls=cert_files, tls_ca=ca_file, args=follow)
        started.append(replica.start())
        sentinel = RedisSentinel(
            tmp_path / "sentinel", master.tls_port, tls=cert_files, tls_ca=ca_file
        )
        started.append(sentinel.start())
        wait_for(lambda: sentinel.replicas() == 1, 15.0, "the Sentinel sees the replica")
        yield master, replica, sentinel
    finally:
        for server in reversed(started):
            server.kill()


def test_tls_to_the_sentinel_and_the_master_through_a_failover(
    tmp_path: Path, tls_site: tuple[RedisServer, RedisServer, RedisSentinel], ca_file: str
) -> None:
    master, replica, sentinel = tls_site
    port = free_port()
    (tmp_path / "node").mkdir()
    # The test's CA for Redis alone (`root_ca`), not the process's (SSL_CERT_FILE).
    text = config(port, sentinel.tls_port, f"\n    root_ca {ca_file}")
    node = Kittiwake(tmp_path / "node", text)
    try:
        node.wait_ready()
        # The master as the Sentinel announces it: its TLS port.
        node.wait_log(
            f"redis master found master={RedisSentinel.MASTER} address=127.0.0.1:{master.tls_port}"
        )
        for _ in range(3):
            assert rcpt_reply(port).startswith("250 ")
        assert master.command(b"DBSIZE") == b":1"  # the bucket, in the master
        wait_for(lambda: replica.command(b"DBSIZE") == b":1", 10.0, "replication over TLS")

        master.kill()
        refused = 0
        deadline = time.monotonic() + 30.0
        while not (answer := rcpt_reply(port)).startswith("250 "):
            assert answer == NO_LIMITS, answer  # failing closed meanwhile
            refused += 1
            assert time.monotonic() < deadline, node.log
            time.sleep(0.2)
        assert refused >= 1
        assert sentinel.master_port_now() == replica.tls_port
        node.wait_log(f"redis master found [^\n]* address=127.0.0.1:{replica.tls_port}")
        assert replica.command(b"DBSIZE") == b":1"  # the same bucket, counted on
        assert node.proc.poll() is None
    finally:
        node.kill()


def test_a_sentinel_certificate_it_cannot_verify_fails_closed(
    tmp_path: Path, tls_site: tuple[RedisServer, RedisServer, RedisSentinel]
) -> None:
    _, _, sentinel = tls_site
    port = free_port()
    (tmp_path / "node").mkdir()
    node = Kittiwake(tmp_path / "node", config(port, sentinel.tls_port))  # no CA given
    try:
        node.wait_ready()
        assert rcpt_reply(port) == NO_LIMITS
        node.wait_log("shared state store unreachable [^\n]*certificate verify failed")
        assert "redis master found" not in node.log
    finally:
        node.kill()


def test_a_tls_sentinel_without_tls_yes_gets_a_hint(
    tmp_path: Path, tls_site: tuple[RedisServer, RedisServer, RedisSentinel]
) -> None:
    """`tls yes` forgotten: the TLS Sentinel resets the plain connection, and
    the outage line says what that usually means."""
    _, _, sentinel = tls_site
    port = free_port()
    (tmp_path / "node").mkdir()
    text = config(port, sentinel.tls_port).replace("    tls yes\n", "")
    node = Kittiwake(tmp_path / "node", text)
    try:
        node.wait_ready()
        assert rcpt_reply(port) == NO_LIMITS
        node.wait_log(
            r"shared state store unreachable [^\n]*reset by peer[^\n]*"
            r"\(is it a TLS port\? then tls yes\)"
        )
    finally:
        node.kill()
