"""What every session of one endpoint shares: its settings and its caps.

The endpoint builds one `SessionConfig` when it starts; sessions only read
it. `ConnectionGate` is the one piece of shared mutable state: the counts
behind `max_connections` and `max_connections_per_ip`.

Strategy for the caps: the process always counts its own connections, in
plain integers checked synchronously as a connection arrives (the cheapest
way, and what protects this process's file descriptors whatever happens
elsewhere). With an endpoint `state &NAME` the same caps are also taken as
slots of the shared store, one decision per connection, so that they hold
across every node serving the endpoint (docs/state.md); with worker
processes and no `state`, a cap the endpoint block writes is taken in the
supervisor's host store, so that it holds across the workers (the
defaults count per worker). A node's own count
is never above the shared one, so the local check refuses nothing the
shared one would let in; it still holds when the store is unreachable and
fails open.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kittiwake.log import Logger
from kittiwake.message.buffer import BufferSpec
from kittiwake.metrics import NULL_ENDPOINT, EndpointMetrics
from kittiwake.networks import Network, in_networks
from kittiwake.protocol import Reply, Settings
from kittiwake.state.base import Grant, Slot, StateStore

if TYPE_CHECKING:
    from kittiwake.dns import Resolver
    from kittiwake.limits import Limits
    from kittiwake.pipeline.pipeline import Pipeline
    from kittiwake.server.auth_throttle import AuthThrottle
    from kittiwake.server.authenticate import Authenticator

#: The n-th failed AUTH of a session is answered after min(2^(n-1), 8)
#: seconds; the 5th closes the session (docs/server.md, "Authentication").
AUTH_MAX_FAILURES = 5
AUTH_MAX_DELAY = 8.0


class EndpointKind(enum.StrEnum):
    """Which of the three endpoint modules a session belongs to.

    A `StrEnum`, so the value is also the module's configuration name and
    what `ConnInfo.endpoint` tells checks and logs.
    """

    SMTP = "smtp"
    SUBMISSION = "submission"
    LMTP = "lmtp"


#: Client addresses whose `ConnectionGate.counts` answer is kept.
_MEMO_SIZE = 4096


@dataclass
class ConnectionGate:
    """Caps on simultaneous connections, in all and per client IP.

    Shared by the sessions of one endpoint. Past a cap a new connection is
    told `421 4.7.0` and closed before any dialogue, so one client cannot
    use up the server and everybody else is still served. 0 = no cap.
    Unix-socket clients have no IP and only count towards the total.
    """

    max_total: int = 10000
    max_per_ip: int = 100
    #: Client networks the per-IP cap does not apply to (loopback by default:
    #: a local relay or webmail may open many sessions, like Postfix's
    #: mynetworks).
    exempt: tuple[Network, ...] = ()
    total: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    #: Counts for the metrics (docs/metrics.md), read when they are scraped:
    #: connections let in, and turned away by each cap.
    opened: int = 0
    refused: int = 0
    refused_per_ip: int = 0
    #: `counts` per client address: parsing an address costs more than the
    #: rest of accepting a connection, and clients come back. Bounded.
    _counted: dict[str, bool] = field(default_factory=dict, repr=False)

    def enter(self) -> bool:
        if self.max_total and self.total >= self.max_total:
            self.refused += 1
            return False
        self.total += 1
        self.opened += 1
        return True

    def leave(self) -> None:
        self.total -= 1

    def counts(self, ip: str) -> bool:
        """Whether the per-IP cap applies to a client at `ip`."""
        if not self.max_per_ip:
            return False
        known = self._counted.get(ip)
        if known is None:
            if len(self._counted) >= _MEMO_SIZE:
                self._counted.clear()
            known = self._counted[ip] = not in_networks(ip, self.exempt)
        return known

    def enter_ip(self, ip: str) -> bool:
        count = self.per_ip.get(ip, 0)
        if self.max_per_ip and count >= self.max_per_ip:
            self.refused_per_ip += 1
            return False
        self.per_ip[ip] = count + 1
        return True

    def leave_ip(self, ip: str) -> None:
        count = self.per_ip.pop(ip, 0) - 1
        if count > 0:
            self.per_ip[ip] = count

    # -- across nodes --------------------------------------------------------------

    #: The store both caps are also counted in (a shared one, or the host
    #: store of a server with workers); None: this process only.
    store: StateStore | None = None
    #: Counter names in `store`: (`max_connections`, `max_connections_per_ip`).
    counters: tuple[str, str] = ("conn/total", "conn/ip")

    async def enter_shared(self, ip: str | None) -> Grant:
        """Take the caps' slots in `store` for one connection; one decision.

        `ip`: the client's address when the per-IP cap applies to it, else
        None. Raises `StoreUnavailable`. `Grant.refused` is 0 for the total
        cap, 1 for the per-IP one (counted here for the metrics).
        """
        assert self.store is not None
        wanted: list[Slot] = []
        if self.max_total:
            wanted.append(Slot(self.counters[0], "", self.max_total))
        if ip is not None and self.max_per_ip:
            wanted.append(Slot(self.counters[1], ip, self.max_per_ip))
        if not wanted:
            return Grant()
        grant = await self.store.acquire(wanted)
        if grant.refused >= 0:
            if wanted[grant.refused].counter == self.counters[0]:
                self.refused += 1
                grant.refused = 0
            else:
                self.refused_per_ip += 1
                grant.refused = 1
        return grant


@dataclass
class SessionConfig:
    """What every session of one endpoint shares (built by the endpoint)."""

    kind: EndpointKind
    hostname: str  # A-label form
    settings: Settings
    pipeline: Pipeline
    buffer: BufferSpec
    log: Logger
    io_log: Logger | None
    #: The process's resolver, for the reverse lookup of the client; asked
    #: for when first needed, since it is made on first use (docs/dns.md).
    #: None: clients are never looked up.
    resolver: Callable[[], Resolver] | None
    tls_context: ssl.SSLContext | None
    read_timeout: float
    write_timeout: float
    max_header_size: int
    max_header_fields: int
    min_data_rate: int  # bytes per second over a whole message; 0 = none
    max_received: int
    defer_sender_reject: bool
    max_logged_rcpt_errors: int
    authenticator: Authenticator | None = None
    #: Failed AUTH counted across connections (`auth_ratelimit`); None = off.
    auth_throttle: AuthThrottle | None = None
    gate: ConnectionGate = field(default_factory=ConnectionGate)
    limits: Limits | None = None
    #: Start the reverse lookup at the greeting (smtp, lmtp); otherwise only
    #: when a check asks for the name (submission: Received does not show it).
    rdns_at_greeting: bool = True
    #: Seconds of delay for the n-th failed AUTH (tests may shorten it).
    auth_delay: Callable[[int], float] = lambda n: min(2.0 ** (n - 1), AUTH_MAX_DELAY)
    #: Where sessions report what they count (docs/metrics.md); does nothing
    #: without an `openmetrics` block.
    metrics: EndpointMetrics = NULL_ENDPOINT
    #: Extra fields of the `connection opened` line: a worker process's
    #: `pid`, so the log shows which worker took a client (docs/workers.md).
    conn_fields: dict[str, object] = field(default_factory=dict)

    @property
    def banner(self) -> Reply:
        proto = "LMTP" if self.kind is EndpointKind.LMTP else "ESMTP"
        return Reply(220, None, f"{self.hostname} {proto} Service Ready")
