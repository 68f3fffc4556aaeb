"""`state.redis` over TLS (`rediss://`): the server's certificate is verified.

A real `redis-server` listens with TLS on loopback, its certificate issued
by the test's own CA for `localhost`. docs/state.md says a `rediss://`
endpoint is verified with the system's CAs: the test gives the server
process its CA as the system's (`SSL_CERT_FILE`, which OpenSSL reads for
its default trust store) and checks that the limit counts in Redis through
TLS; then, started without it, that the certificate is refused and the
decision fails closed with the temporary reply, the reason in the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from kw import NO_LIMITS, Kittiwake, env, free_port, need_tool, rcpt_reply

from redisd import RedisServer


def config(port: int, tls_port: int, extra: str = "") -> str:
    return f"""hostname mx.example.org
state.redis shared {{
    endpoint rediss://localhost:{tls_port}/0
    key_prefix tlstest:{extra}
}}
smtp tcp://127.0.0.1:{port} {{
    tls off
    limits {{
        state &shared
        all rate 100 1m
    }}
    deliver_to dummy
}}
"""


@pytest.fixture
def redis_tls(tmp_path: Path, cert_files: tuple[str, str]) -> Iterator[RedisServer]:
    need_tool("redis-server", "redis-server")
    server = RedisServer(tmp_path / "redis", tls=cert_files)
    server.start()
    yield server
    server.kill()


@pytest.mark.parametrize("trust", ["SSL_CERT_FILE", "root_ca"])
def test_rediss_counts_in_redis_through_verified_tls(
    tmp_path: Path, redis_tls: RedisServer, ca: trustme.CA, trust: str
) -> None:
    """The test's CA trusted as the system's (`SSL_CERT_FILE`, the whole
    process), or for Redis alone beside the system's (`root_ca`)."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    (tmp_path / "node").mkdir()
    if trust == "root_ca":
        text, environ = config(port, redis_tls.tls_port, f"\n    root_ca {ca_file}"), None
    else:
        text, environ = config(port, redis_tls.tls_port), env(SSL_CERT_FILE=str(ca_file))
    node = Kittiwake(tmp_path / "node", text, environ=environ)
    try:
        node.wait_ready()
        for _ in range(3):
            assert rcpt_reply(port).startswith("250 ")
        # The bucket is in Redis, under the block's prefix (read on the plain port).
        assert redis_tls.command(b"DBSIZE") == b":1"
        assert "unreachable" not in node.log
    finally:
        node.kill()


def test_rediss_refuses_a_certificate_it_cannot_verify(
    tmp_path: Path, redis_tls: RedisServer
) -> None:
    port = free_port()
    (tmp_path / "node").mkdir()
    node = Kittiwake(tmp_path / "node", config(port, redis_tls.tls_port))
    try:
        node.wait_ready()
        assert rcpt_reply(port) == NO_LIMITS
        node.wait_log("shared state store unreachable .*(?i:certificate verify failed)")
        assert redis_tls.command(b"DBSIZE") == b":0"
    finally:
        node.kill()


@pytest.mark.parametrize("mismatch", ["plain to TLS", "TLS to plain"])
def test_a_tls_mismatch_is_named_in_the_outage_line(
    tmp_path: Path, redis_tls: RedisServer, mismatch: str
) -> None:
    """`redis://` to a port that speaks TLS, or `rediss://` to one that does not:
    the outage line says what the likely mistake is, not only the socket error."""
    port = free_port()
    (tmp_path / "node").mkdir()
    text = config(port, redis_tls.tls_port)
    if mismatch == "plain to TLS":
        text = text.replace("rediss://", "redis://")
        hint = r"\(is it a TLS port\? then rediss://\)"
    else:
        text = text.replace(
            f"rediss://localhost:{redis_tls.tls_port}", f"rediss://localhost:{redis_tls.port}"
        )
        hint = r"\(is it a TLS port\? if not, redis://\)"
    node = Kittiwake(tmp_path / "node", text)
    try:
        node.wait_ready()
        assert rcpt_reply(port) == NO_LIMITS
        node.wait_log("shared state store unreachable .*" + hint)
    finally:
        node.kill()
