"""What the server counts, for the `openmetrics` module (docs/metrics.md).

Strategy: the code that does the work reports events (`connection opened`,
`command`, `check result`, `delivery finished`) to an object, and that object
decides what it costs. Without an `openmetrics` block the object is a null
one whose methods do nothing: a method call per event, no lock, no string
work, no registry. With one, `enable()` makes the process's `LiveMetrics` (a
`prometheus_client` registry of its own) and installs it, while the
configuration is read, so every module started afterwards reports to it.

Hot-path cost with metrics on: labelled children are looked up once and
kept (an endpoint's `EndpointMetrics` holds its own children, keyed by the
one varying label value), so a command is one dict lookup and one
`Counter.inc`. Queue length and age are not counted as they change but
computed from each queue's state when Prometheus scrapes.

Why not prometheus_client's global default registry: it is process-wide
shared state that every test in one interpreter would write into, and it
cannot be replaced. One `CollectorRegistry` per `LiveMetrics` (with the
process, platform and garbage-collector collectors added to it, which the
default registry would have had) keeps tests apart; the server itself makes
exactly one per process, so counters survive anything that rebuilds
modules.

Names: maddy's where maddy has the metric (`maddy_smtp_failed_logins`,
`maddy_check_reject`, ...), `kittiwake_` for ours. The Prometheus text format
writes every counter with a `_total` suffix; the Python client always adds
it, so maddy's counter `maddy_smtp_failed_logins` is scraped as
`maddy_smtp_failed_logins_total`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kittiwake.errors import SMTPError

__all__ = [
    "DELIVERY_BUCKETS",
    "NULL_ENDPOINT",
    "EndpointMetrics",
    "GateCounts",
    "LiveMetrics",
    "Metrics",
    "QueueStats",
    "command_label",
    "current",
    "delivery_result",
    "enable",
    "enhanced_text",
    "install",
    "message_result",
    "reply_class",
    "target_label",
]

#: Seconds: from a local Maildir write (milliseconds) to a slow remote MX.
DELIVERY_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
#: A shared state store answers in a round trip on the local network:
#: from half a millisecond up to its `timeout` (1 s by default).
STATE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_CLASSES = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def reply_class(code: int) -> str:
    """`250` -> `2xx`; anything outside 2..5 is `other`."""
    return _CLASSES.get(code // 100, "other")


def enhanced_text(enhanced: tuple[int, int, int] | None) -> str:
    """`(5, 7, 1)` -> `5.7.1`; none -> `""`."""
    return "" if enhanced is None else f"{enhanced[0]}.{enhanced[1]}.{enhanced[2]}"


def target_label(target: object) -> str:
    """A delivery target's label: `module/instance` as its logger is named."""
    log = getattr(target, "log", None)
    name = getattr(log, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(getattr(target, "module_name", "") or type(target).__name__)


@dataclass(frozen=True)
class QueueStats:
    """One queue at scrape time: entries waiting, and the oldest one's arrival."""

    length: int
    oldest_arrival: float | None  # Unix time; None when empty


# --- the null objects: what a server without `openmetrics` calls ------------------


class EndpointMetrics:
    """What one endpoint's sessions report; this base class ignores it all.

    Connections are not reported here: `ConnectionGate` counts them in plain
    integers, which the live metrics read at scrape (`watch_gate`).
    """

    def watch_gate(self, gate: GateCounts) -> None:
        """Expose `gate`'s counts (open, accepted, refused by cap) at scrape."""

    def command(self, event: object) -> None:
        """A command from the client, as the protocol core's event."""

    def reply(self, code: int) -> None:
        """A reply sent to the client."""

    def failed_command(self, verb: str, code: int, enhanced: tuple[int, int, int] | None) -> None:
        """MAIL, RCPT or DATA answered with an error."""

    def transaction_started(self) -> None:
        """A MAIL FROM was accepted into a transaction."""

    def transaction_aborted(self) -> None:
        """A transaction ended without its message being accepted."""

    def message_done(self, statuses: Sequence[SMTPError | None], quarantine: bool) -> None:
        """A message's content ended: one status per recipient (one for SMTP)."""

    def ratelimit_deferred(self) -> None:
        """A transaction refused with 451 by `limits`."""

    def auth(self, result: str) -> None:
        """An AUTH outcome: `success`, `failure`, `throttled` or `temporary`."""

    def tls(self, transport: asyncio.BaseTransport) -> None:
        """A session's transport; counted by TLS version if it is a TLS one."""


class GateCounts(Protocol):
    """What `ConnectionGate` counts (server/session_config.py)."""

    total: int
    opened: int
    refused: int
    refused_per_ip: int


NULL_ENDPOINT = EndpointMetrics()


class Metrics:
    """The process's metrics; this base class is the null one (no block)."""

    enabled = False

    def endpoint(self, module: str) -> EndpointMetrics:
        return NULL_ENDPOINT

    def check_result(self, check: str, result: str) -> None:
        """A check's verdict on one stage: pass, reject, quarantine, ignore, error."""

    def limit_wait(self, scope: str) -> None:
        """A transaction waits for a limit of `scope`."""

    def limit_refusal(self, scope: str) -> None:
        """A transaction waited for `scope` until the deadline and is refused."""

    def delivery(self, target: str, result: str, seconds: float, count: int = 1) -> None:
        """`count` recipients' delivery to `target` ended with `result`
        (`delivered`, `temporary`, `permanent`, `aborted`) after `seconds`."""

    def remote_connection(self, module: str, tls_level: str, mx_level: str) -> None:
        """`target.remote` connected to an MX with these security levels."""

    def state_call(self, store: str, result: str, seconds: float) -> None:
        """A shared state store was asked for a decision: `ok`, `failed`
        (an error or a timeout, after `seconds`) or `skipped` (not asked:
        in the retry window after a failure)."""

    def watch_state_store(self, store: str, unreachable: Callable[[], bool]) -> None:
        """Report at each scrape whether this process finds `store` unreachable
        (the last store started under that name is the one reported)."""

    def watch_maildir_agents(self, storage: str, running: Callable[[], int]) -> None:
        """Report at each scrape how many delivery agents `storage` runs (the
        last storage started under that name is the one reported)."""

    def maildir_agent_lost(self, storage: str) -> None:
        """A delivery agent of `storage` died, or was killed, holding a message."""

    def add_queue(self, module: str, location: str, stats: Callable[[], QueueStats]) -> None:
        """Report a queue's length and age at each scrape, until `remove_queue`."""

    def remove_queue(self, module: str, stats: Callable[[], QueueStats]) -> None:
        """Stop reporting a queue (it stopped), unless `module` is reported by
        another `stats` now: a reload starts the new queue before the old stops."""


class _Installed:
    """Holds the process's metrics (a slot, so no `global` statement)."""

    __slots__ = ("metrics",)

    def __init__(self) -> None:
        self.metrics: Metrics = _NULL


_NULL = Metrics()
_INSTALLED = _Installed()


def current() -> Metrics:
    """The installed metrics, the null ones unless `openmetrics` is configured."""
    return _INSTALLED.metrics


def install(metrics: Metrics | None) -> None:
    """Make `metrics` the process's (None: back to the null ones); for tests too."""
    _INSTALLED.metrics = metrics if metrics is not None else _NULL


def enable() -> LiveMetrics:
    """The process's live metrics, made and installed on first call."""
    installed = _INSTALLED.metrics
    if isinstance(installed, LiveMetrics):
        return installed
    # `_created` series mean something in OpenMetrics only; in the text
    # format they would double the series for nothing.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # not annotated upstream
    live = LiveMetrics(with_process=True)
    install(live)
    return live


# --- the live metrics --------------------------------------------------------------


def _error_result(exc: BaseException) -> str:
    code = getattr(exc, "code", 0)
    return "permanent" if isinstance(code, int) and code >= 500 else "temporary"


#: Event class name -> the `command` label (the core answers NOOP, VRFY,
#: HELP and malformed commands itself: `other`).
_VERBS = {
    "MailFrom": "MAIL",
    "RcptTo": "RCPT",
    "Data": "DATA",
    "Bdat": "BDAT",
    "Reset": "RSET",
    "Quit": "QUIT",
    "StartTLS": "STARTTLS",
    "Auth": "AUTH",
    "AutoReply": "other",
}


def command_label(event: object) -> str:
    """The `command` label of a protocol event; "" for what is no command."""
    verb = getattr(event, "verb", None)  # Greeting: HELO, EHLO or LHLO
    if isinstance(verb, str) and verb in ("HELO", "EHLO", "LHLO"):
        return verb
    return _VERBS.get(type(event).__name__, "")


def message_result(
    statuses: Sequence[SMTPError | None], quarantine: bool
) -> tuple[str, tuple[int, int, int] | None]:
    """A message's `result` and `enhanced_code` labels from its statuses.

    Accepted when any recipient was (LMTP may accept some), `quarantined`
    when accepted with the quarantine mark, else `rejected` with the first
    error's enhanced code.
    """
    if not statuses or any(status is None for status in statuses):
        return ("quarantined" if quarantine else "accepted"), (2, 0, 0)
    first = statuses[0]
    assert first is not None
    return "rejected", first.enhanced


class _LiveEndpoint(EndpointMetrics):
    """One endpoint's children of the live metrics, looked up once."""

    def __init__(self, live: LiveMetrics, module: str) -> None:
        self._live = live
        self._module = module
        self._started = live.started_transactions.labels(module)
        self._aborted = live.aborted_transactions.labels(module)
        self._completed = live.completed_transactions.labels(module)
        self._deferred = live.ratelimit_deferred.labels(module)
        self._failed_logins = live.failed_logins.labels(module)
        self._commands: dict[object, Counter | None] = {}
        self._replies: dict[int, Counter] = {}

    def watch_gate(self, gate: GateCounts) -> None:
        self._live.gates.gates.append((self._module, gate))

    def command(self, event: object) -> None:
        kind = event.__class__
        try:
            child = self._commands[kind]
        except KeyError:
            label = command_label(event)
            child = self._live.commands.labels(self._module, label) if label else None
            self._commands[kind] = child
        if child is not None:
            child.inc()

    def reply(self, code: int) -> None:
        child = self._replies.get(code)
        if child is None:
            child = self._live.replies.labels(self._module, reply_class(code))
            self._replies[code] = child
        child.inc()

    def failed_command(self, verb: str, code: int, enhanced: tuple[int, int, int] | None) -> None:
        self._live.failed_commands.labels(
            self._module, verb, str(code), enhanced_text(enhanced)
        ).inc()

    def transaction_started(self) -> None:
        self._started.inc()

    def transaction_aborted(self) -> None:
        self._aborted.inc()

    def message_done(self, statuses: Sequence[SMTPError | None], quarantine: bool) -> None:
        result, enhanced = message_result(statuses, quarantine)
        if result != "rejected":
            self._completed.inc()
        self._live.messages.labels(self._module, result, enhanced_text(enhanced)).inc()

    def ratelimit_deferred(self) -> None:
        self._deferred.inc()

    def auth(self, result: str) -> None:
        if result == "failure":
            self._failed_logins.inc()
        self._live.auth.labels(self._module, result).inc()

    def tls(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            version = ssl_object.version() or "unknown"
            self._live.tls_sessions.labels(self._module, version).inc()


class _GateCollector(Collector):
    """Connection counts of every endpoint, read from its gate at scrape."""

    def __init__(self) -> None:
        self.gates: list[tuple[str, GateCounts]] = []

    def collect(self) -> Iterable[Metric]:
        open_now = GaugeMetricFamily(
            "kittiwake_smtp_connections_open", "Client connections open now.", labels=["module"]
        )
        total = CounterMetricFamily(
            "kittiwake_smtp_connections",
            "Client connections, refused ones included.",
            labels=["module"],
        )
        refused = CounterMetricFamily(
            "kittiwake_smtp_connections_refused",
            "Client connections turned away by a connection cap.",
            labels=["module", "cap"],
        )
        sums: dict[str, list[int]] = {}
        for module, gate in self.gates:  # an endpoint restarted keeps adding up
            got = sums.setdefault(module, [0, 0, 0, 0])
            got[0] += gate.total
            got[1] += gate.opened + gate.refused
            got[2] += gate.refused
            got[3] += gate.refused_per_ip
        for module, (now, seen, capped, capped_ip) in sorted(sums.items()):
            open_now.add_metric([module], now)
            total.add_metric([module], seen)
            refused.add_metric([module, "max_connections"], capped)
            refused.add_metric([module, "max_connections_per_ip"], capped_ip)
        yield open_now
        yield total
        yield refused

    def describe(self) -> Iterable[Metric]:
        return []


class _QueueCollector(Collector):
    """Queue length and oldest-entry age, computed from each queue at scrape."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.queues: dict[str, tuple[str, Callable[[], QueueStats]]] = {}
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        length = GaugeMetricFamily(
            "maddy_queue_length", "Messages waiting in a queue.", labels=["module", "location"]
        )
        age = GaugeMetricFamily(
            "kittiwake_queue_oldest_age_seconds",
            "Age of a queue's oldest message (0 when the queue is empty).",
            labels=["module"],
        )
        now = self._clock()
        for module, (location, stats) in sorted(self.queues.items()):
            got = stats()
            length.add_metric([module, location], got.length)
            oldest = 0.0 if got.oldest_arrival is None else max(0.0, now - got.oldest_arrival)
            age.add_metric([module], oldest)
        yield length
        yield age

    def describe(self) -> Iterable[Metric]:
        return []


class LiveMetrics(Metrics):
    """Metrics kept in a `CollectorRegistry` of their own (`registry`)."""

    enabled = True

    def __init__(self, *, with_process: bool = False) -> None:
        #: With workers, the supervisor's way to fetch their samples for a
        #: scrape (supervise/metrics.py); None in a single process.
        self.gather: Callable[[], Awaitable[list[list[dict[str, Any]]]]] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ep = ["module"]
        self.commands = Counter(
            "kittiwake_smtp_commands", "Commands received.", [*ep, "command"], registry=r
        )
        self.replies = Counter(
            "kittiwake_smtp_replies", "Replies sent, by code class.", [*ep, "class"], registry=r
        )
        self.failed_commands = Counter(
            "maddy_smtp_failed_commands",
            "MAIL, RCPT and DATA commands answered with an error.",
            [*ep, "command", "smtp_code", "smtp_enchcode"],
            registry=r,
        )
        self.started_transactions = Counter(
            "maddy_smtp_started_transactions", "Mail transactions started.", ep, registry=r
        )
        self.completed_transactions = Counter(
            "maddy_smtp_completed_transactions",
            "Mail transactions whose message was accepted.",
            ep,
            registry=r,
        )
        self.aborted_transactions = Counter(
            "maddy_smtp_aborted_transactions",
            "Mail transactions that ended without an accepted message.",
            ep,
            registry=r,
        )
        self.messages = Counter(
            "kittiwake_smtp_messages",
            "Messages at the end of DATA/BDAT: accepted, quarantined or rejected.",
            [*ep, "result", "enhanced_code"],
            registry=r,
        )
        self.ratelimit_deferred = Counter(
            "maddy_smtp_ratelimit_deferred",
            "Transactions refused with 451 by a limit.",
            ep,
            registry=r,
        )
        self.failed_logins = Counter(
            "maddy_smtp_failed_logins", "AUTH attempts with wrong credentials.", ep, registry=r
        )
        self.auth = Counter(
            "kittiwake_smtp_auth",
            "AUTH outcomes: success, failure, throttled, temporary.",
            [*ep, "result"],
            registry=r,
        )
        self.tls_sessions = Counter(
            "kittiwake_smtp_tls_sessions",
            "Sessions that went over TLS (implicit or STARTTLS), by TLS version.",
            [*ep, "version"],
            registry=r,
        )
        self.check_reject = Counter(
            "maddy_check_reject", "Check verdicts that rejected.", ["check"], registry=r
        )
        self.check_quarantined = Counter(
            "maddy_check_quarantined", "Check verdicts that quarantined.", ["check"], registry=r
        )
        self.check_results = Counter(
            "kittiwake_check_results",
            "Check verdicts per stage: pass, reject, quarantine, ignore, error.",
            ["check", "result"],
            registry=r,
        )
        self.limit_waits = Counter(
            "kittiwake_limit_waits",
            "Times a transaction waited for a limit.",
            ["scope"],
            registry=r,
        )
        self.limit_refusals = Counter(
            "kittiwake_limit_refusals",
            "Transactions refused after waiting for a limit until the deadline.",
            ["scope"],
            registry=r,
        )
        self.deliveries = Counter(
            "kittiwake_delivery_results",
            "Recipients whose delivery to a target ended, by result.",
            ["target", "result"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "kittiwake_delivery_duration_seconds",
            "Time from the start of a delivery to its outcome.",
            ["target"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.remote_tls_level = Counter(
            "maddy_remote_conns_tls_level",
            "Outbound MX connections by TLS security level.",
            ["module", "level"],
            registry=r,
        )
        self.remote_mx_level = Counter(
            "maddy_remote_conns_mx_level",
            "Outbound MX connections by MX security level.",
            ["module", "level"],
            registry=r,
        )
        self.state_calls = Counter(
            "kittiwake_state_calls",
            "Decisions asked of a shared state store: ok, failed, skipped.",
            ["store", "result"],
            registry=r,
        )
        self.state_seconds = Histogram(
            "kittiwake_state_call_duration_seconds",
            "Time a shared state store took to answer a decision.",
            ["store"],
            buckets=STATE_BUCKETS,
            registry=r,
        )
        self.state_unreachable = Gauge(
            "kittiwake_state_unreachable",
            "Processes that find a shared state store unreachable now.",
            ["store"],
            registry=r,
        )
        self.maildir_agents = Gauge(
            "kittiwake_maildir_agents",
            "Maildir delivery agents running now.",
            ["storage"],
            registry=r,
        )
        self.maildir_agents_lost = Counter(
            "kittiwake_maildir_agents_lost",
            "Maildir delivery agents that died or were killed holding a message.",
            ["storage"],
            registry=r,
        )
        self._queues = _QueueCollector()
        r.register(self._queues)
        self.gates = _GateCollector()
        r.register(self.gates)
        if with_process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._endpoints: dict[str, _LiveEndpoint] = {}
        self._checks: dict[tuple[str, str], Counter] = {}

    def endpoint(self, module: str) -> EndpointMetrics:
        live = self._endpoints.get(module)
        if live is None:
            live = self._endpoints[module] = _LiveEndpoint(self, module)
        return live

    def check_result(self, check: str, result: str) -> None:
        key = (check, result)
        child = self._checks.get(key)
        if child is None:
            child = self._checks[key] = self.check_results.labels(check, result)
        child.inc()
        if result == "reject":
            self.check_reject.labels(check).inc()
        elif result == "quarantine":
            self.check_quarantined.labels(check).inc()

    def limit_wait(self, scope: str) -> None:
        self.limit_waits.labels(scope).inc()

    def limit_refusal(self, scope: str) -> None:
        self.limit_refusals.labels(scope).inc()

    def state_call(self, store: str, result: str, seconds: float) -> None:
        self.state_calls.labels(store, result).inc()
        if result != "skipped":
            self.state_seconds.labels(store).observe(seconds)

    def watch_state_store(self, store: str, unreachable: Callable[[], bool]) -> None:
        self.state_unreachable.labels(store).set_function(lambda: float(unreachable()))

    def watch_maildir_agents(self, storage: str, running: Callable[[], int]) -> None:
        self.maildir_agents.labels(storage).set_function(lambda: float(running()))

    def maildir_agent_lost(self, storage: str) -> None:
        self.maildir_agents_lost.labels(storage).inc()

    def delivery(self, target: str, result: str, seconds: float, count: int = 1) -> None:
        self.deliveries.labels(target, result).inc(count)
        self.delivery_seconds.labels(target).observe(seconds)

    def remote_connection(self, module: str, tls_level: str, mx_level: str) -> None:
        self.remote_tls_level.labels(module, tls_level).inc()
        self.remote_mx_level.labels(module, mx_level).inc()

    def add_queue(self, module: str, location: str, stats: Callable[[], QueueStats]) -> None:
        self._queues.queues[module] = (location, stats)

    def remove_queue(self, module: str, stats: Callable[[], QueueStats]) -> None:
        known = self._queues.queues.get(module)
        if known is not None and known[1] == stats:
            del self._queues.queues[module]


def delivery_result(error: BaseException | None) -> str:
    """`delivered`, or the error's kind: 5xx `permanent`, anything else `temporary`."""
    return "delivered" if error is None else _error_result(error)
