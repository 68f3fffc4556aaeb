"""The DNS checks and `require_tls` where SMTP cannot reach (docs/checks.md).

tests/e2e/test_dns_checks_e2e.py provokes every reply through the real server;
these cases cannot be: a permanent failure of the reverse lookup (our
resolver reports every DNS failure of a PTR query as temporary), senders
the MAIL grammar refuses but a rewritten sender may still be, and messages
kittiwake generates itself (no connection).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.checks.base import Check, CheckResult
from kittiwake.checks.dns import RequireMatchingRDNS, RequireMXRecord, same_host
from kittiwake.checks.require_tls import RequireTLS
from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container, DebugFlags
from kittiwake.dns import ReverseName
from kittiwake.message import ConnInfo, MsgMeta
from kittiwake.module import Endpoint, register, unregister

PROBE = "kw_dns_checks_probe"


class Probe(Endpoint):
    def configure(self, cfg: Directives) -> None:
        self.checks: list[Check] = cfg.modules("check", Check, "check")
        cfg.finish()

    def addresses(self) -> list[str]:
        return []


@pytest.fixture(autouse=True, scope="module")
def _probe() -> Iterator[None]:
    register(PROBE)(Probe)
    yield
    unregister(PROBE)


def build(tmp_path: Path, check: str) -> Check:
    text = f"{PROBE} {{\n check {check} {{\n fail_action reject\n }}\n}}\n"
    # Nothing listens there: these tests must not reach DNS.
    flags = DebugFlags(dns_override="127.0.0.1:9")
    container = Container(
        parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path), debug_flags=flags
    )
    container.build()
    (probe,) = container.endpoints
    assert isinstance(probe, Probe)
    return probe.checks[0]


def reply(result: CheckResult) -> str:
    assert result.reject and result.reason is not None
    return str(result.reason)


def answering(found: ReverseName) -> ConnInfo:
    async def reverse() -> ReverseName:
        return found

    return ConnInfo(remote_ip="192.0.2.1", helo="mx.example.net", reverse=reverse)


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (
            ReverseName(None, "YXDOMAIN", temporary=False),
            "550 5.7.25 DNS error during policy check",
        ),
        (ReverseName(None, "timeout", temporary=True), "450 4.7.25 DNS error during policy check"),
        (ReverseName(None), "550 5.7.25 No PTR record found"),
        (ReverseName("other.example"), "550 5.7.25 rDNS name does not match source hostname"),
    ],
)
async def test_rdns_replies(tmp_path: Path, found: ReverseName, expected: str) -> None:
    check = build(tmp_path, "require_matching_rdns")
    assert isinstance(check, RequireMatchingRDNS)
    state = await check.check_state(MsgMeta("m1", conn=answering(found)))
    result = await state.check_connection()
    assert reply(result) == expected
    assert result.reason is not None and result.reason.check_name == "require_matching_rdns"


async def test_rdns_skips_messages_without_a_client_or_a_lookup(tmp_path: Path) -> None:
    check = build(tmp_path, "require_matching_rdns")
    for conn in (None, ConnInfo(remote_ip="192.0.2.1", helo="mx.example.net")):
        state = await check.check_state(MsgMeta("m1", conn=conn))
        assert (await state.check_connection()).reason is None


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("postmaster", "501 5.1.8 No domain part in address"),
        ("no-at-sign", "501 5.1.8 Malformed sender address"),
        ("@example.org", "501 5.1.8 Malformed sender address"),
        # A name DNS cannot carry (a label past 63 octets): a permanent error.
        ("a@" + "x" * 64 + ".example", "550 5.7.0 DNS error during policy check"),
    ],
)
async def test_mx_record_sender_forms(tmp_path: Path, sender: str, expected: str) -> None:
    check = build(tmp_path, "require_mx_record")
    assert isinstance(check, RequireMXRecord)
    state = await check.check_state(MsgMeta("m1", conn=ConnInfo(remote_ip="192.0.2.1")))
    assert reply(await state.check_sender(sender)) == expected


async def test_require_tls_fails_messages_without_a_connection(tmp_path: Path) -> None:
    check = build(tmp_path, "require_tls")
    assert isinstance(check, RequireTLS)
    for conn in (None, ConnInfo(tls=False)):
        state = await check.check_state(MsgMeta("m1", conn=conn))
        assert reply(await state.check_connection()) == "550 5.7.1 TLS conversation required"
    state = await check.check_state(MsgMeta("m1", conn=ConnInfo(tls=True)))
    assert (await state.check_connection()).reason is None


def test_same_host() -> None:
    assert same_host("mx.example.org", "MX.Example.ORG.")
    assert same_host("xn--bcher-kva.example", "Bücher.example")
    assert not same_host("mx.example.org", "[192.0.2.1]")
    assert not same_host("mx.example.org", "")
