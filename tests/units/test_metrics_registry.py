"""The metrics' pure parts: labels, the live registry, the collectors read at
scrape, the null object, and the `openmetrics` module's HTTP answers, with
its real server on loopback (docs/metrics.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kittiwake import metrics
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError, SMTPError
from kittiwake.limits import Limiter, Rule
from kittiwake.openmetrics import OpenMetrics, answer
from kittiwake.protocol.events import AutoReply, Data, Greeting, MailFrom
from kittiwake.server.endpoint import SMTPEndpoint
from kittiwake.server.session_config import ConnectionGate


def sample(live: metrics.LiveMetrics, name: str, **labels: str) -> float | None:
    """One sample's value from the registry, None when it is not there."""
    return live.registry.get_sample_value(name, labels)


@pytest.fixture
def live() -> Iterator[metrics.LiveMetrics]:
    """Fresh live metrics, installed for the test and removed after it."""
    fresh = metrics.LiveMetrics()
    metrics.install(fresh)
    try:
        yield fresh
    finally:
        metrics.install(None)


# --- labels ------------------------------------------------------------------------


def test_reply_class() -> None:
    assert [metrics.reply_class(c) for c in (220, 354, 451, 550, 999)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
    ]


def test_enhanced_text() -> None:
    assert metrics.enhanced_text((5, 7, 1)) == "5.7.1"
    assert metrics.enhanced_text(None) == ""


def test_command_label() -> None:
    assert metrics.command_label(Greeting("EHLO", "x")) == "EHLO"
    assert metrics.command_label(Greeting("LHLO", "x")) == "LHLO"
    assert metrics.command_label(Data()) == "DATA"
    assert metrics.command_label(AutoReply(())) == "other"
    assert metrics.command_label(object()) == ""


def test_message_result() -> None:
    refused = SMTPError(550, (5, 7, 1), "no")
    assert metrics.message_result([None], quarantine=False) == ("accepted", (2, 0, 0))
    assert metrics.message_result([None], quarantine=True) == ("quarantined", (2, 0, 0))
    assert metrics.message_result([refused], quarantine=False) == ("rejected", (5, 7, 1))
    # LMTP: one recipient delivered is an accepted message.
    assert metrics.message_result([refused, None], quarantine=False)[0] == "accepted"


def test_delivery_result() -> None:
    assert metrics.delivery_result(None) == "delivered"
    assert metrics.delivery_result(SMTPError(550, (5, 1, 1), "no")) == "permanent"
    assert metrics.delivery_result(SMTPError(451, (4, 4, 0), "later")) == "temporary"
    assert metrics.delivery_result(OSError("disk")) == "temporary"


def test_target_label_is_the_logger_name() -> None:
    class Named:
        class log:  # stands in for a module's Logger
            name = "storage.maildir/local"

    assert metrics.target_label(Named()) == "storage.maildir/local"
    assert metrics.target_label(object()) == "object"


# --- the null object --------------------------------------------------------------


def test_without_openmetrics_nothing_is_live() -> None:
    assert metrics.current().enabled is False
    endpoint = metrics.current().endpoint("smtp")
    assert endpoint is metrics.NULL_ENDPOINT
    # Every report is accepted and ignored.
    endpoint.command(MailFrom("a@b"))
    endpoint.reply(250)
    metrics.current().check_result("spf", "reject")


def test_an_endpoint_without_openmetrics_reports_to_the_null_object(tmp_path: Path) -> None:
    conf = "hostname mx.example.org\ntls off\nsmtp tcp://127.0.0.1:0 { reject }\n"
    container = Container(parse_text(conf, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    container.build()
    (endpoint,) = container.endpoints
    assert isinstance(endpoint, SMTPEndpoint)
    assert endpoint._session_config().metrics is metrics.NULL_ENDPOINT


# --- the live metrics ---------------------------------------------------------------


def test_endpoint_counts(live: metrics.LiveMetrics) -> None:
    ep = live.endpoint("smtp")
    assert live.endpoint("smtp") is ep  # children are looked up once
    ep.command(Greeting("EHLO", "x"))
    ep.command(Greeting("EHLO", "x"))
    ep.command(Data())
    ep.reply(250)
    ep.reply(550)
    ep.failed_command("RCPT", 550, (5, 7, 1))
    ep.transaction_started()
    ep.message_done([None], quarantine=False)
    ep.message_done([SMTPError(554, (5, 7, 0), "no")], quarantine=False)
    ep.auth("failure")
    ep.auth("success")
    assert sample(live, "kittiwake_smtp_commands_total", module="smtp", command="EHLO") == 2
    assert sample(live, "kittiwake_smtp_commands_total", module="smtp", command="DATA") == 1
    assert sample(live, "kittiwake_smtp_replies_total", module="smtp", **{"class": "5xx"}) == 1
    failed = {"module": "smtp", "command": "RCPT", "smtp_code": "550", "smtp_enchcode": "5.7.1"}
    assert sample(live, "maddy_smtp_failed_commands_total", **failed) == 1
    assert sample(live, "maddy_smtp_started_transactions_total", module="smtp") == 1
    assert sample(live, "maddy_smtp_completed_transactions_total", module="smtp") == 1
    rejected = {"module": "smtp", "result": "rejected", "enhanced_code": "5.7.0"}
    assert sample(live, "kittiwake_smtp_messages_total", **rejected) == 1
    assert sample(live, "maddy_smtp_failed_logins_total", module="smtp") == 1
    assert sample(live, "kittiwake_smtp_auth_total", module="smtp", result="success") == 1


def test_connections_are_read_from_the_gate(live: metrics.LiveMetrics) -> None:
    gate = ConnectionGate(max_total=1, max_per_ip=1)
    live.endpoint("submission").watch_gate(gate)
    assert gate.enter()
    assert not gate.enter()  # past max_connections
    assert gate.enter_ip("192.0.2.1")
    assert not gate.enter_ip("192.0.2.1")  # past max_connections_per_ip
    assert sample(live, "kittiwake_smtp_connections_open", module="submission") == 1
    assert sample(live, "kittiwake_smtp_connections_total", module="submission") == 2
    capped = {"module": "submission", "cap": "max_connections"}
    assert sample(live, "kittiwake_smtp_connections_refused_total", **capped) == 1
    capped["cap"] = "max_connections_per_ip"
    assert sample(live, "kittiwake_smtp_connections_refused_total", **capped) == 1
    gate.leave()
    assert sample(live, "kittiwake_smtp_connections_open", module="submission") == 0


def test_check_results_feed_maddy_names(live: metrics.LiveMetrics) -> None:
    live.check_result("check.spf", "reject")
    live.check_result("check.spf", "pass")
    live.check_result("dnsbl", "quarantine")
    assert sample(live, "kittiwake_check_results_total", check="check.spf", result="pass") == 1
    assert sample(live, "maddy_check_reject_total", check="check.spf") == 1
    assert sample(live, "maddy_check_quarantined_total", check="dnsbl") == 1


def test_delivery_histogram(live: metrics.LiveMetrics) -> None:
    live.delivery("target.remote/out", "delivered", 0.2, 3)
    live.delivery("target.remote/out", "temporary", 40.0)
    assert (
        sample(
            live, "kittiwake_delivery_results_total", target="target.remote/out", result="delivered"
        )
        == 3
    )
    assert (
        sample(live, "kittiwake_delivery_duration_seconds_count", target="target.remote/out") == 2
    )
    bucket = {"target": "target.remote/out", "le": "0.25"}
    assert sample(live, "kittiwake_delivery_duration_seconds_bucket", **bucket) == 1


def test_queue_is_computed_at_scrape(live: metrics.LiveMetrics) -> None:
    state = {"length": 0, "oldest": None}

    def stats() -> metrics.QueueStats:
        return metrics.QueueStats(state["length"], state["oldest"])  # type: ignore[arg-type]

    live.add_queue("remote_queue", "/var/q", stats)
    assert sample(live, "maddy_queue_length", module="remote_queue", location="/var/q") == 0
    assert sample(live, "kittiwake_queue_oldest_age_seconds", module="remote_queue") == 0

    state.update(length=2, oldest=time.time() - 60)
    assert sample(live, "maddy_queue_length", module="remote_queue", location="/var/q") == 2
    age = sample(live, "kittiwake_queue_oldest_age_seconds", module="remote_queue")
    assert age is not None and 59 <= age < 70
    # A reload starts the new queue before the old one stops: the old one's
    # removal leaves its successor's report alone.
    live.remove_queue("remote_queue", lambda: metrics.QueueStats(0, None))
    assert sample(live, "maddy_queue_length", module="remote_queue", location="/var/q") == 2
    live.remove_queue("remote_queue", stats)
    assert sample(live, "maddy_queue_length", module="remote_queue", location="/var/q") is None


def test_limits_and_remote(live: metrics.LiveMetrics) -> None:
    live.limit_wait("ip")
    live.limit_refusal("ip")
    live.remote_connection("target.remote/out", "encrypted", "none")
    assert sample(live, "kittiwake_limit_waits_total", scope="ip") == 1
    assert sample(live, "kittiwake_limit_refusals_total", scope="ip") == 1
    level = {"module": "target.remote/out", "level": "encrypted"}
    assert sample(live, "maddy_remote_conns_tls_level_total", **level) == 1


async def test_limiter_reports_waits_and_refusals(live: metrics.LiveMetrics) -> None:
    limiter = Limiter([Rule("ip", "concurrency", "i.c", max_slots=1)])
    held = await limiter.take("192.0.2.1", "example.org")
    # Waits once (however often it retries), then is refused at the deadline.
    with pytest.raises(SMTPError):
        await limiter.take("192.0.2.1", "example.org", deadline_s=0.05)
    assert sample(live, "kittiwake_limit_waits_total", scope="ip") == 1
    assert sample(live, "kittiwake_limit_refusals_total", scope="ip") == 1

    async def release_soon() -> None:
        await asyncio.sleep(0.02)
        await held.release()

    releaser = asyncio.create_task(release_soon())
    await (await limiter.take("192.0.2.1", "example.org", deadline_s=2)).release()
    await releaser
    assert sample(live, "kittiwake_limit_waits_total", scope="ip") == 2
    assert sample(live, "kittiwake_limit_refusals_total", scope="ip") == 1


def test_registries_are_separate() -> None:
    one, two = metrics.LiveMetrics(), metrics.LiveMetrics()
    one.limit_wait("all")
    assert one.registry.get_sample_value("kittiwake_limit_waits_total", {"scope": "all"}) == 1
    assert two.registry.get_sample_value("kittiwake_limit_waits_total", {"scope": "all"}) is None


# --- HTTP ----------------------------------------------------------------------------


def test_answer(live: metrics.LiveMetrics) -> None:
    live.limit_wait("source")
    status, body, ctype = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", live)
    assert status == "200 OK" and ctype.startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "kittiwake_limit_waits" in names
    assert answer(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", live)[0] == "200 OK"
    assert answer(b"GET / HTTP/1.1\r\n\r\n", live)[0] == "404 Not Found"
    assert answer(b"GET /metricsx HTTP/1.1\r\n\r\n", live)[0] == "404 Not Found"
    assert answer(b"POST /metrics HTTP/1.1\r\n\r\n", live)[0] == "405 Method Not Allowed"
    assert answer(b"hello\r\n\r\n", live)[0] == "400 Bad Request"


async def _request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return reply


async def test_module_serves_on_loopback(tmp_path: Path) -> None:
    conf = f"state_dir {tmp_path}\nopenmetrics tcp://127.0.0.1:0 {{ }}\n"
    container = Container(parse_text(conf, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    try:
        container.build()
        module = container.endpoints[0]
        assert isinstance(module, OpenMetrics)
        assert metrics.current() is module.metrics
        await container.start()
        port = int(module.addresses()[0].rsplit(":", 1)[1])
        got = await _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"kittiwake_smtp_connections_open" in got or b"maddy_queue_length" in got
        head = await _request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        missing = await _request(port, b"GET /other HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
        too_long = await _request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
        assert too_long == b""  # closed without an answer
    finally:
        await container.stop()
        metrics.install(None)


def test_tls_address_is_refused(tmp_path: Path) -> None:
    conf = "openmetrics tls://127.0.0.1:9749 { }\n"
    container = Container(parse_text(conf, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    try:
        with pytest.raises(ConfigError, match="TLS is not offered"):
            container.build()
    finally:
        metrics.install(None)


def test_same_port_as_an_endpoint_is_refused(tmp_path: Path) -> None:
    conf = (
        "hostname mx.example.org\ntls off\n"
        "openmetrics tcp://127.0.0.1:2525 { }\n"
        "smtp tcp://127.0.0.1:2525 { reject }\n"
    )
    container = Container(parse_text(conf, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    try:
        with pytest.raises(ConfigError, match="already a listen address of openmetrics"):
            container.build()
    finally:
        metrics.install(None)
