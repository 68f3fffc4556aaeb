"""The `smtp`, `submission` and `lmtp` endpoint modules (docs/server.md, "Directives").

One class reads every directive; the three registered names differ only in
protocol (LMTP) and in submission's stricter rules. Directives the endpoint
does not know are its message pipeline's.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from typing import ClassVar

from kittiwake import address, log, metrics
from kittiwake.auth.base import PasswordAuth
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.config.values import ListenAddress, parse_listen_address
from kittiwake.limits import Limits, LimitsModule
from kittiwake.message.buffer import BufferSpec, default_buffer_spec, parse_buffer_directive
from kittiwake.message.header import MAX_FIELDS
from kittiwake.module import Endpoint, Module, Role, register
from kittiwake.networks import Network, host_port, parse_network
from kittiwake.pipeline.pipeline import Pipeline
from kittiwake.protocol import Settings
from kittiwake.server.auth_throttle import AuthThrottle, ThrottleSettings, parse_auth_ratelimit
from kittiwake.server.authenticate import Authenticator
from kittiwake.server.listener import Listener
from kittiwake.server.proxy_accept import ProxyConfig
from kittiwake.server.proxy_trust import TrustList
from kittiwake.server.session import Session
from kittiwake.server.session_config import ConnectionGate, EndpointKind, SessionConfig
from kittiwake.state.base import StateStore
from kittiwake.tables.base import Table
from kittiwake.tls.directive import ServerTLS, parse_server_tls

MiB = 1024 * 1024
#: The name of an endpoint's counters in a shared store (`state &NAME COUNTERS`).
_OWNER = re.compile(r"[A-Za-z0-9._/-]{1,64}")


class SMTPEndpoint(Endpoint):
    """ESMTP on port 25 (or wherever it is told to listen)."""

    kind: ClassVar[EndpointKind] = EndpointKind.SMTP
    tls_required: ClassVar[bool] = True
    #: With workers, the workers serve mail; the supervisor only configures it.
    roles: ClassVar[frozenset[Role]] = frozenset({Role.SINGLE, Role.WORKER})

    def configure(self, cfg: Directives) -> None:
        node = self._node = cfg.node
        self.listen = [self._parse_address(node, a) for a in self.inline_args]
        if not self.listen:
            raise node.error(f"{self.module_name}: at least one listen address is required")
        hostname = cfg.string("hostname", inherit=True, required=True)
        try:
            self.hostname = address.to_alabel_domain(hostname)
        except ValueError as exc:
            raise node.error(f"hostname {hostname!r} cannot be used: {exc}") from None
        self.tls: ServerTLS | None = cfg.custom(
            "tls",
            self._parse_tls,
            None,
            required=self.tls_required,
            inherit=True,
            hint=" (here or global; `tls off` for an endpoint without TLS)",
        )
        io_debug = cfg.boolean("io_debug", False)
        self.log.debug_enabled = cfg.boolean("debug", False, inherit=True)
        self.read_timeout = cfg.duration("read_timeout", 600.0)
        self.write_timeout = cfg.duration("write_timeout", 60.0)
        # How long sessions in progress may finish when the server stops
        # (docs/server.md): 10 s by default, the contract of `kittiwake run`;
        # maddy's default is 3 minutes, which a service manager rarely waits.
        self.grace = cfg.duration("shutdown_timeout", 10.0)
        max_message_size = cfg.size("max_message_size", 32 * MiB)
        self.max_header_size = cfg.size("max_header_size", MiB)
        # kittiwake's own: fields per header (docs/server.md, "Directives").
        self.max_header_fields = cfg.integer("max_header_fields", MAX_FIELDS, minimum=0)
        max_recipients = cfg.integer("max_recipients", 20000, minimum=0)
        self.max_received = cfg.integer("max_received", 50, minimum=0)
        self.max_logged_rcpt_errors = cfg.integer("max_logged_rcpt_errors", 5, minimum=0)
        self.defer_sender_reject = cfg.boolean("defer_sender_reject", True)
        max_line = cfg.integer("smtp_max_line_length", 4000, minimum=0)
        # kittiwake's own limits on sessions that hold resources without
        # progress (docs/server.md, "Timeouts"): commands between two
        # messages, and the slowest content transfer allowed.
        max_junk = cfg.integer("max_junk_commands", 100, minimum=0)
        self.min_data_rate = cfg.size("min_data_rate", 500)
        # kittiwake's own: protect the listener itself (docs/server.md).
        self.max_connections = cfg.integer("max_connections", 10000, minimum=0)
        self.max_connections_per_ip = cfg.integer("max_connections_per_ip", 100, minimum=0)
        #: Whether the block sets a cap itself (see `_gate_store`).
        self._caps_written = cfg.has("max_connections") or cfg.has("max_connections_per_ip")
        self.per_ip_exempt: tuple[Network, ...] = cfg.custom(
            "max_connections_per_ip_exempt", _parse_exempt, DEFAULT_EXEMPT
        )
        state_dir = self.container.globals.state_dir
        self._buffer_node = cfg.get("buffer")
        self.buffer: BufferSpec = (
            default_buffer_spec(state_dir)
            if self._buffer_node is None
            else self._parse_buffer(self._buffer_node, state_dir)
        )
        # kittiwake's own: the caps, auth_ratelimit and inline limits counted
        # in a shared store, across nodes (docs/state.md).
        self.state: StateStore | None = None
        self.state_owner = self._default_owner()
        cfg.custom("state", self._parse_state, None)
        self._choose_store()
        self._configure_auth(cfg)
        self.limits: Limits | None = cfg.module("limits", Limits, "", default_module="limits")
        if isinstance(self.limits, LimitsModule):
            self.limits.adopt(self.state, self.counters_owner)
        self.proxy: ProxyConfig | None = cfg.custom("proxy_protocol", self._parse_proxy, None)
        rest = cfg.finish(allow_unknown=True)
        self.pipeline = Pipeline(
            rest, self.container, block=node, hostname=self.hostname, first_pipeline=True
        )
        if any(a.scheme == "tls" for a in self.listen) and self.tls is None:
            raise node.error("can't bind on SMTPS endpoint without TLS configuration")
        self.settings = Settings(
            lmtp=self.kind is EndpointKind.LMTP,
            max_line_length=max_line,
            max_message_size=max_message_size,
            max_recipients=max_recipients,
            tls_available=self.tls is not None,
            auth_mechanisms=self.mechanisms,
            insecure_auth=self.insecure_auth,
            max_junk_commands=max_junk,
            dsn=self.pipeline.honours_dsn,
        )
        self.io_log: log.Logger | None = None
        if io_debug:
            self.io_log = log.Logger(f"{self.module_name}/io", debug=True)
            self.log.warn("io_debug is on: every byte of every session is logged")
        self._check_exposure()
        self.listener: Listener | None = None

    def _choose_store(self) -> None:
        """Where the caps and `auth_ratelimit` count, and under which name.

        `state &NAME` names a shared store. Without it, a server with worker
        processes counts in its host store, the supervisor's (docs/state.md,
        "The host store"), so the bounds hold for the whole server; the
        counters are named after the first listen address in full, so two
        endpoints on one port never share them. A single process counts
        in its own memory (`store` None: the caps in plain integers).
        """
        host = self.container.shared.host_state
        #: The store of the caps and `auth_ratelimit`; None: this process alone.
        self.store: StateStore | None = self.state
        #: What this endpoint's counters are called in `store`.
        self.counters_owner = self.state_owner
        #: The guess hash key every process shares (host store only).
        self.guess_key: bytes | None = None
        if self.state is None and host is not None:
            self.store = host.store
            self.counters_owner = self._host_owner()
            self.guess_key = host.guess_key

    def _gate_store(self) -> StateStore | None:
        """Where the connection caps count beyond this process.

        In the store `state &NAME` names, always. In the host store of a
        server with workers only when the block writes a cap: the
        defaults are safety valves for each process's descriptors and
        memory, which a per-process count protects, and counting them
        in the supervisor would cost a round trip for every connection
        (docs/limits.md, "Connection caps").
        """
        if self.state is not None or self._caps_written:
            return self.store
        return None

    def _configure_auth(self, cfg: Directives) -> None:
        """`auth` providers and how user names reach them (docs/server.md, "Authentication")."""
        providers: list[PasswordAuth] = cfg.modules("auth", PasswordAuth, "auth")
        sasl_login = cfg.boolean("sasl_login", False)
        # Without TLS there is no safe channel to wait for: AUTH in clear is
        # the only AUTH; LMTP talks to a local MTA (docs/server.md, "Authentication").
        insecure = cfg.boolean("insecure_auth", False)
        self.insecure_auth = insecure or self.tls is None or self.kind is EndpointKind.LMTP
        auth_map: Table | None = cfg.module("auth_map", Table, "table", inherit=True)
        normalize = cfg.enum("auth_map_normalize", address.NORMALIZERS, "auto", inherit=True)
        if self.kind is EndpointKind.SUBMISSION and not providers:
            raise self._node.error("auth. provider must be set for submission endpoint")
        # kittiwake's own: failed logins counted across connections (docs/auth.md,
        # "Password guessing"); the counters belong to this endpoint block.
        throttle = cfg.custom("auth_ratelimit", parse_auth_ratelimit, ThrottleSettings())
        self.mechanisms: tuple[str, ...] = ()
        self.authenticator: Authenticator | None = None
        self.auth_throttle: AuthThrottle | None = None
        if providers:
            self.mechanisms = ("PLAIN", "LOGIN") if sasl_login else ("PLAIN",)
            normalizer = address.get_normalizer(normalize)
            self.authenticator = Authenticator(providers, normalizer, auth_map, self.log)
            if throttle.enabled:
                self.auth_throttle = AuthThrottle(
                    throttle,
                    self.log,
                    normalize=normalizer,
                    store=self.store,
                    owner=self.counters_owner if self.store is not None else "",
                    guess_key=self.guess_key,
                )

    def _parse_state(self, node: Node) -> None:
        """`state &NAME [COUNTERS]`: the store, and the name of this endpoint's
        counters in it (default `KIND/PORT`, the same on every node that
        serves this endpoint on the same port; docs/state.md)."""
        if node.children is not None:
            raise ValueError("unexpected block")
        if not 1 <= len(node.args) <= 2 or not node.args[0].startswith("&"):
            raise ValueError("expected &NAME of a state block, and optionally a counter name")
        self.state = self.container.module_from_args(node, node.args[:1], None, StateStore, "state")
        if len(node.args) == 2:
            owner = node.args[1]
            if not _OWNER.fullmatch(owner):
                raise ValueError(f"invalid counter name {owner!r}: use letters, digits and _ . / -")
            self.state_owner = owner

    def _default_owner(self) -> str:
        first = self.listen[0]
        if first.scheme == "unix":
            return f"{self.kind}/" + re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(first.path))
        return f"{self.kind}/{first.port}"

    def _host_owner(self) -> str:
        """`KIND/HOST:PORT` (or `KIND/PATH`) of the first listen address: the
        endpoints of one server bind different sockets (container.py
        `_check_binds`; two of a kind on port 0 of one host would share)."""
        family, host, port = self.binds()[0]
        if family == "unix":
            return f"{self.kind}/{host}"
        return f"{self.kind}/{host_port(host, port)}"

    def _parse_proxy(self, node: Node) -> ProxyConfig:
        """`proxy_protocol [CIDR...] [{ trust CIDR...; tls ... }]` (docs/proxy.md)."""
        entries = list(node.args)
        tls: ServerTLS | None = None
        if node.children is not None:
            block = Directives(node, self.container)
            entries += [arg for trust in block.all("trust") for arg in trust.args]
            # No inheritance: the proxy channel's TLS is its own setting.
            tls = block.custom("tls", self._parse_tls, None)
            block.finish()
        try:
            trust = TrustList.parse(entries)
        except ValueError as exc:
            raise node.error(f"proxy_protocol: {exc}") from None
        return ProxyConfig(trust, tls=tls.context if tls is not None else None)

    def _parse_address(self, node: Node, text: str) -> ListenAddress:
        try:
            addr = parse_listen_address(text)
        except ValueError as exc:
            raise node.error(str(exc)) from None
        if self.kind is EndpointKind.LMTP and addr.scheme != "unix" and addr.port == 25:
            raise node.error(f"{text}: LMTP must not listen on port 25 (RFC 2033 §5)")
        return addr

    def binds(self) -> list[tuple[str, str, int]]:
        runtime_dir = self.container.globals.runtime_dir
        return [
            ("unix", os.path.abspath(os.path.join(runtime_dir, a.path)), 0)
            if a.scheme == "unix"
            else ("inet", a.host, a.port)
            for a in self.listen
        ]

    def _parse_tls(self, node: Node) -> ServerTLS | None:
        return parse_server_tls(node, self.container)

    @staticmethod
    def _parse_buffer(node: Node, state_dir: str) -> BufferSpec:
        try:
            return parse_buffer_directive(node.args, state_dir)
        except ValueError as exc:
            raise node.error(f"buffer: {exc}") from None

    def _check_exposure(self) -> None:
        public = [a for a in self.listen if a.scheme != "unix" and not a.host.startswith("127.")]
        if public and self.tls is None:
            self.log.warn("TLS is off on a non-local listener", addresses=len(public))

    def _tls_context(self) -> ssl.SSLContext | None:
        return self.tls.context() if self.tls is not None else None

    def _session_config(self) -> SessionConfig:
        # Submission clients are authenticated and Received does not name
        # them: their rDNS name is looked up only if a check asks for it.
        rdns_at_greeting = self.kind is not EndpointKind.SUBMISSION
        return SessionConfig(
            kind=self.kind,
            hostname=self.hostname,
            settings=self.settings,
            pipeline=self.pipeline,
            buffer=self.buffer,
            log=self.log,
            io_log=self.io_log,
            resolver=lambda: self.container.resolver,
            tls_context=self._tls_context(),
            read_timeout=self.read_timeout,
            write_timeout=self.write_timeout,
            max_header_size=self.max_header_size,
            max_header_fields=self.max_header_fields,
            min_data_rate=self.min_data_rate,
            max_received=self.max_received,
            defer_sender_reject=self.defer_sender_reject,
            max_logged_rcpt_errors=self.max_logged_rcpt_errors,
            authenticator=self.authenticator,
            auth_throttle=self.auth_throttle,
            gate=ConnectionGate(
                self.max_connections,
                self.max_connections_per_ip,
                self.per_ip_exempt,
                store=self._gate_store(),
                counters=(f"conn/{self.counters_owner}/total", f"conn/{self.counters_owner}/ip"),
            ),
            limits=self.limits,
            rdns_at_greeting=rdns_at_greeting,
            metrics=metrics.current().endpoint(self.log.name),
            conn_fields={"pid": os.getpid()} if self.container.role is Role.WORKER else {},
        )

    async def start(self) -> None:
        try:
            self.buffer.prepare()
        except ValueError as exc:
            raise (self._buffer_node or self._node).error(str(exc)) from None
        removed = await asyncio.to_thread(self.buffer.sweep)
        if removed:
            self.log.info(
                "removed buffer files of a process that died",
                count=removed,
                directory=self.buffer.directory,
            )
        config = self._session_config()
        config.metrics.watch_gate(config.gate)

        def make_session(
            sessions: set[Session], tls: bool, client: tuple[str, int] | None
        ) -> Session:
            return Session(config, sessions, tls=tls, client=client)

        self.listener = Listener(
            self.listen,
            runtime_dir=self.container.globals.runtime_dir,
            sockets=self.container.shared.sockets,
            tls_context=self._tls_context,
            make_session=make_session,
            handshake_timeout=self.read_timeout or None,
            proxy=self.proxy,
            log=self.log,
        )
        await self.listener.start()

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop(self.grace)

    def addresses(self) -> list[str]:
        return self.listener.bound() if self.listener is not None else []

    def listen_addresses(self) -> list[ListenAddress]:
        return list(self.listen)

    def inherit(self, previous: list[Module]) -> None:
        """A reload: failed logins counted so far still count (docs/reload.md).

        The counterpart is the endpoint of the same kind on the same
        addresses; one whose addresses changed starts afresh.
        """
        if self.auth_throttle is None:
            return
        for module in previous:
            if (
                isinstance(module, SMTPEndpoint)
                and module.module_name == self.module_name
                and sorted(module.binds()) == sorted(self.binds())
                and module.auth_throttle is not None
            ):
                self.auth_throttle.share_counters(module.auth_throttle)
                return

    def serving(self) -> list[tuple[str, str, int]]:
        return self.listener.binds() if self.listener is not None else []

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()

    async def drain(self, within: float) -> bool:
        return self.listener is None or await self.listener.drain(within)


@register("smtp")
class SMTP(SMTPEndpoint):
    pass


@register("submission")
class Submission(SMTPEndpoint):
    """Mail from a domain's own users: authentication first, header checked."""

    kind: ClassVar[EndpointKind] = EndpointKind.SUBMISSION


@register("lmtp")
class LMTP(SMTPEndpoint):
    """LMTP (RFC 2033): one reply per recipient; TLS optional."""

    kind: ClassVar[EndpointKind] = EndpointKind.LMTP
    tls_required: ClassVar[bool] = False


#: The client networks `max_connections_per_ip` does not count by default.
DEFAULT_EXEMPT: tuple[Network, ...] = (parse_network("127.0.0.0/8"), parse_network("::1"))


def _parse_exempt(node: Node) -> tuple[Network, ...]:
    """`max_connections_per_ip_exempt CIDR...`, or `none` to exempt nobody."""
    if node.children is not None:
        raise node.error(f"{node.name}: can't declare a block here")
    if node.args == ["none"]:
        return ()
    if not node.args:
        raise node.error(f"{node.name}: expected IP addresses or CIDRs, or none")
    try:
        return tuple(parse_network(arg) for arg in node.args)
    except ValueError as exc:
        raise node.error(f"{node.name}: {exc}") from None
