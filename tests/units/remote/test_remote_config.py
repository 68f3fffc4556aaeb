"""target.remote configuration: defaults, every directive, mistakes at FILE:LINE."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kittiwake.config.parser import parse_text
from kittiwake.container import Container, DebugFlags
from kittiwake.errors import ConfigError
from kittiwake.remote.target import RemoteTarget
from kittiwake.targets.base import DeliveryTarget
from kittiwake.tlsrpt.store import TLSReportStore, shared


def build(
    tmp: Path, block: str = "", top: str = "hostname mx.example.org\n", port: int | None = None
) -> RemoteTarget:
    text = f"state_dir {tmp}/state\n{top}"
    container = Container(
        parse_text(text, "top.conf"),
        config_file="top.conf",
        cwd=str(tmp),
        debug_flags=DebugFlags(smtp_port=port),
    )
    container.parse_globals()
    (node,) = parse_text(f"deliver_to remote {{\n{block}\n}}\n", "t.conf")
    target = container.module_from_node(node, DeliveryTarget, "target")
    assert isinstance(target, RemoteTarget)
    return target


def test_defaults(tmp_path: Path) -> None:
    remote = build(tmp_path)
    s = remote.settings
    assert s.hostname == "mx.example.org" and s.port == 25
    assert s.local_ip is None and not s.force_ipv4 and s.tls is None
    assert s.relaxed_requiretls and remote.requiretls_override
    assert (s.connect_timeout, s.command_timeout, s.submission_timeout) == (300.0, 300.0, 300.0)
    p = remote.pool.settings
    assert (p.reuse_limit, p.max_idle, p.idle_time) == (10, 5, 150.0)
    assert remote.policies == [] and remote.limits is None


def test_the_shared_tls_report_store_is_the_recorder_and_starts_nothing(tmp_path: Path) -> None:
    """Configuring (as `config check` does) makes the store: no thread, no file yet."""
    remote = build(tmp_path)
    assert isinstance(remote.recorder, TLSReportStore)
    assert remote.recorder is shared(remote.container)
    assert remote.recorder.directory == str(tmp_path / "state" / "tls_reports")
    assert not any(t.name == "kittiwake-tlsrpt" for t in threading.enumerate())
    assert not (tmp_path / "state" / "tls_reports").exists()


def test_every_directive(tmp_path: Path) -> None:
    remote = build(
        tmp_path,
        "hostname мой.example\n"
        "local_ip 192.0.2.1\n"
        "force_ipv4 yes\n"
        "tls_client { }\n"
        "mx_auth { }\n"
        "limits { destination concurrency 2\n mx rate 10 1m\n all rate 5\n }\n"
        "requiretls_override no\n"
        "relaxed_requiretls no\n"
        "conn_reuse_limit 3\n"
        "conn_max_idle_count 0\n"
        "conn_max_idle_time 10s\n"
        "connect_timeout 1m\ncommand_timeout 2m\nsubmission_timeout 12m\n",
        port=2525,
    )
    s = remote.settings
    assert s.hostname == "xn--i1afg.example"  # EHLO in A-labels ("мой")
    assert s.port == 2525  # --debug.smtpport
    assert s.local_ip == "192.0.2.1" and s.force_ipv4 and s.tls is not None
    assert not s.relaxed_requiretls and not remote.requiretls_override
    assert (s.connect_timeout, s.command_timeout, s.submission_timeout) == (60.0, 120.0, 720.0)
    p = remote.pool.settings
    assert (p.reuse_limit, p.max_idle, p.idle_time) == (3, 0, 10.0)
    assert remote.policies == []
    limiter = remote.limits.limiter  # type: ignore[union-attr]
    assert [(r.scope, r.kind) for r in limiter.scoped_rules] == [
        ("destination", "concurrency"),
        ("mx", "rate"),
    ]
    assert [(r.scope, r.kind) for r in limiter.rules] == [("all", "rate")]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("local_ip example.org", "local_ip: 'example.org' is not an IP address"),
        ("conn_reuse_limit 0", "conn_reuse_limit: must be at least 1, got 0"),
        ("conn_max_idle_time 0s", "conn_max_idle_time: must be greater than zero"),
        ("mx_auth { nosuch }", "mx_auth: unknown policy 'nosuch'"),
        ("mx_auth on", "mx_auth: takes a block of policies, or one &NAME of an mx_auth block"),
        ("frobnicate yes", "unexpected directive: frobnicate"),
    ],
)
def test_mistakes_at_their_line(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, block)
    assert message in str(caught.value)
    assert caught.value.file == "t.conf" and caught.value.line == 2


def test_hostname_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required directive: hostname"):
        build(tmp_path, top="")
