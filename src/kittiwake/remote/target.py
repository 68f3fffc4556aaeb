"""`target.remote`: delivery to the recipients' own mail servers (docs/target-remote.md).

Strategy: a message's recipients are grouped by domain, and each domain
gets one SMTP connection for the message, set up at its first recipient:
an idle one from the pool (`pool.py`) or a new one found MX by MX
(`connect.py`). MAIL FROM goes out as soon as the connection is there,
then one RCPT TO per recipient of the domain; the MX's refusals come back
as that recipient's error, prefixed `MXHOST said: ` (a 552 becomes 452,
RFC 5321 §4.5.3.1.10). A domain that cannot be reached fails all its
recipients with the same error, found once per message.

The content goes to every domain at once (DATA in parallel).
`body_non_atomic` gives each recipient its domain's outcome; `body` fails
with the one error there was, or, when several domains failed, a summary
that warns of duplicates on a retry. `commit` and `abort` hand each
connection that is still healthy (RSET answered, under
`conn_reuse_limit`, not carrying a REQUIRETLS message) back to the pool,
and QUIT the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass, field

from kittiwake import address
from kittiwake.address import NormalizationError
from kittiwake.background import stop_task
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.errors import SMTPError
from kittiwake.limits import Limits, Ticket
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Module, register
from kittiwake.mx_auth.base import DomainPolicy, Policy
from kittiwake.mx_auth.config import parse_mx_auth
from kittiwake.protocol.client import ReplyReceived
from kittiwake.protocol.replies import Reply
from kittiwake.remote.connect import Connector, DialSettings, MXConn
from kittiwake.remote.pool import Pool, PoolSettings
from kittiwake.smtpclient.envelope import mail_params, rcpt_params, wire_path
from kittiwake.smtpclient.errors import reply_error
from kittiwake.targets.base import StatusCollector
from kittiwake.tls.directive import ClientTLS, parse_client_tls
from kittiwake.tlsrpt import Recorder, TLSAttempt
from kittiwake.tlsrpt.store import recorder

__all__ = ["RemoteDelivery", "RemoteTarget"]

DEFAULT_TIMEOUT = 300.0  # 5 minutes, each of the three timeouts
SMTP_PORT = 25

QUARANTINED = SMTPError(550, (5, 7, 0), "Refusing to deliver a quarantined message")
# The text is maddy's, typo included, so that replies match (docs/target-remote.md).
NO_DOMAIN = SMTPError(550, (5, 1, 1), "<postmaster> address it no supported")
LITERAL = SMTPError(550, (5, 1, 1), "IP address literals are not supported")
SENDER_NOT_ASCII = SMTPError(
    550, (5, 6, 7), "SMTPUTF8 is unsupported, cannot convert sender address"
)
RCPT_NOT_ASCII = SMTPError(
    553, (5, 6, 7), "SMTPUTF8 is unsupported, cannot convert recipient address"
)
TOO_BIG = SMTPError(552, (5, 3, 4), "Message size exceeds fixed maximum message size")


def _copy(error: SMTPError, reason: str = "") -> SMTPError:
    """A fresh copy of a constant error (an exception object gathers a traceback)."""
    return SMTPError(error.code, error.enhanced, error.message, reason=reason or error.reason)


def mx_said(reply: Reply, conn: MXConn, command: str) -> SMTPError:
    """The MX's negative reply as our error: `MXHOST said: TEXT`, codes kept."""
    error = reply_error(reply, conn.client.remote, command)
    if reply.code < 400:
        return error  # a protocol error (3xx to RCPT), not the MX's refusal
    return SMTPError(
        error.code,
        error.enhanced,
        f"{conn.mx.host} said: {error.message}",
        reason=error.reason,
        # The MX by name: a DSN's Remote-MTA (RFC 3464 §2.3.5) is "dns; HOST".
        misc={**error.misc, "mx": conn.mx.host, "remote_server": conn.mx.host},
    )


def temporary_552(error: SMTPError) -> SMTPError:
    """RFC 5321 §4.5.3.1.10: a 552 to RCPT means "too many recipients": try later."""
    if error.code != 552:
        return error
    _, subject, detail = error.enhanced
    return SMTPError(452, (4, subject, detail), error.message, reason=error.reason, misc=error.misc)


# --- configuration ---------------------------------------------------------------


def _parse_ip(node: Node) -> str:
    if node.children is not None or len(node.args) != 1:
        raise node.error("local_ip: expected one IP address")
    try:
        return str(ipaddress.ip_address(node.args[0]))
    except ValueError:
        raise node.error(f"local_ip: {node.args[0]!r} is not an IP address") from None


def _ehlo_name(node: Node, name: str) -> str:
    """The `hostname` in A-labels (RFC 5321 §4.1.1.1 wants a domain the world can read)."""
    try:
        return address.to_alabel_domain(name)
    except (ValueError, UnicodeError) as exc:
        raise node.error(f"hostname: cannot be written in A-labels: {exc}") from None


@register("target.remote")
class RemoteTarget(Module):
    """`target.remote { hostname; local_ip; force_ipv4; tls_client; mx_auth; limits; ... }`."""

    #: Where each TLS attempt goes (docs/tls-report.md); None records nothing.
    recorder: Recorder | None = None

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        node = cfg.node
        hostname = cfg.string("hostname", inherit=True)
        local_ip = cfg.custom("local_ip", _parse_ip, None)
        force_ipv4 = cfg.boolean("force_ipv4", default=False)
        tls = cfg.custom(
            "tls_client", lambda n: parse_client_tls(n, self.container), None, inherit=True
        )
        self.policies: list[Policy] = cfg.custom(
            "mx_auth", lambda n: parse_mx_auth(n, self.container), []
        )
        self.limits: Limits | None = cfg.module("limits", Limits, "", default_module="limits")
        self.requiretls_override = cfg.boolean("requiretls_override", default=True)
        relaxed = cfg.boolean("relaxed_requiretls", default=True)
        pool = PoolSettings(
            reuse_limit=cfg.integer("conn_reuse_limit", 10, minimum=1),
            max_idle=cfg.integer("conn_max_idle_count", 5, minimum=0),
            idle_time=cfg.duration("conn_max_idle_time", 150.0, positive=True),
        )
        timeouts = [
            cfg.duration(name, DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT  # 0 = the default, as maddy
            for name in ("connect_timeout", "command_timeout", "submission_timeout")
        ]
        cfg.finish()
        self.settings = DialSettings(
            hostname=_ehlo_name(node, hostname),
            port=self.container.debug_flags.smtp_port or SMTP_PORT,
            local_ip=local_ip,
            force_ipv4=force_ipv4,
            tls=tls if isinstance(tls, ClientTLS) else None,
            relaxed_requiretls=relaxed,
            connect_timeout=timeouts[0],
            command_timeout=timeouts[1],
            submission_timeout=timeouts[2],
        )
        # The process's one store: making it starts no thread and writes no
        # file (`config check` builds this module too); the first attempt does.
        self.recorder = recorder(self.container)
        self.pool: Pool[MXConn] = Pool(pool)
        self._sweeper: asyncio.Task[None] | None = None
        self._connector: Connector | None = None

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        await stop_task(self._sweeper)
        self._sweeper = None
        await self._close(self.pool.drain())

    async def _sweep(self) -> None:
        """QUIT pooled connections once they have been idle too long."""
        period = max(0.05, min(self.pool.settings.idle_time / 2, 30.0))
        while True:
            await asyncio.sleep(period)
            await self._close(self.pool.expired())

    async def _close(self, conns: list[MXConn]) -> None:
        if conns:
            await asyncio.gather(*(c.client.quit() for c in conns))

    @property
    def connector(self) -> Connector:
        if self._connector is None:
            self._connector = Connector(
                self.settings, self.container.resolver, self.log, self._record, self.limits
            )
        return self._connector

    def _record(self, attempt: TLSAttempt) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.record(attempt)
        except Exception as exc:  # reports must never cost a delivery
            self.log.error("cannot record a TLS attempt", err=exc, domain=attempt.domain)

    # -- connections -------------------------------------------------------------------

    async def acquire(self, domain: str, meta: MsgMeta, *, policed: bool) -> MXConn:
        """A pooled connection to `domain` if one is usable for `meta`, else a new one."""
        if meta.smtp.requiretls or not policed:
            return await self._fresh(domain, meta, policed=policed)
        while True:
            conn, stale = self.pool.take(domain)
            await self._close(stale)
            if conn is None:
                return await self._fresh(domain, meta, policed=policed)
            if conn.client.alive:
                if self.limits is not None:
                    try:
                        conn.ticket = await self.limits.take_scoped("mx", conn.mx.host)
                    except BaseException:
                        await conn.client.quit()
                        raise
                self.log.debug("reusing connection", msg_id=meta.id, domain=domain, mx=conn.mx.host)
                return conn
            await conn.client.quit()

    async def _fresh(self, domain: str, meta: MsgMeta, *, policed: bool) -> MXConn:
        policies: list[DomainPolicy] = []
        if policed:
            policies = [await p.for_domain(domain) for p in self.policies]
        conn = await self.connector.connect(
            domain, policies, requiretls=meta.smtp.requiretls, msg_id=meta.id
        )
        conn.policed = policed
        return conn

    async def release(self, conn: MXConn, *, reusable: bool) -> None:
        """Back to the pool when healthy (RSET answered), else QUIT."""
        ticket, conn.ticket = conn.ticket, None
        if ticket is not None:
            await ticket.release()
        client = conn.client
        if reusable and conn.policed and client.alive:
            try:
                answer = await client.ask(client.conn.rset())
            except SMTPError:
                answer = None
            if answer is not None and answer.ok:
                await self._close(self.pool.give(conn.domain, conn, conn.transactions))
                return
        await client.quit()

    # -- delivery target -------------------------------------------------------------

    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> RemoteDelivery:
        ticket: Ticket | None = None
        if self.limits is not None and mail_from:
            # A null sender is a notice (DSN): never held back (maddy does the same).
            try:
                _, domain = address.split(mail_from)
            except NormalizationError:
                domain = ""
            ip = meta.conn.remote_ip if meta.conn is not None else None
            ticket = await self.limits.take(ip, domain)
        return RemoteDelivery(self, meta, mail_from, ticket)


# --- deliveries ----------------------------------------------------------------------


@dataclass(eq=False)
class _Domain:
    """One destination domain of one message: its connection and recipients."""

    name: str
    conn: MXConn
    ticket: Ticket | None
    utf8: bool = False
    rcpts: list[str] = field(default_factory=list)
    #: The outcome of the content: None delivered, else the error.
    result: SMTPError | None = None
    sent: bool = False


class RemoteDelivery:
    """One message to the MX hosts of its recipients' domains."""

    def __init__(
        self, target: RemoteTarget, meta: MsgMeta, mail_from: str, ticket: Ticket | None
    ) -> None:
        self._target = target
        self._meta = meta
        self._mail_from = mail_from
        self._ticket = ticket
        self._domains: dict[str, _Domain | SMTPError] = {}
        self._rcpt_domain: dict[str, str] = {}
        #: `TLS-Required: No` (RFC 8689 §5) with `requiretls_override`: no policies.
        self._policed = not (meta.tls_not_required and target.requiretls_override)
        self._done = False
        #: Every MX took the DSN parameters (RFC 3461), so the queue owes no "relayed".
        self.dsn_passed = False

    async def add_rcpt(self, rcpt: str) -> None:
        if self._meta.quarantine:
            raise _copy(QUARANTINED)
        if rcpt in self._rcpt_domain:
            return  # the contract: duplicates are accepted silently
        domain = _domain_of(rcpt)
        entry, answer = await self._domain(domain, rcpt)
        if answer is None:  # not sent with MAIL FROM: on its own
            client = entry.conn.client
            command = self._rcpt_command(entry, rcpt)
            client.check_usable()
            answer = await client.ask(command)
        if not answer.ok:
            raise temporary_552(mx_said(answer.reply, entry.conn, "RCPT TO"))
        entry.rcpts.append(rcpt)
        self._rcpt_domain[rcpt] = domain

    def _rcpt_command(self, entry: _Domain, rcpt: str) -> bytes:
        """RCPT TO as the domain's MX can take it; the reply is owed from now on."""
        conn = entry.conn
        try:
            path = wire_path(rcpt, smtputf8=entry.utf8)
        except ValueError as exc:
            raise _copy(RCPT_NOT_ASCII, f"{conn.mx.host}: {exc}") from None
        params = rcpt_params(self._meta.dsn_for(rcpt), conn.client.capabilities)
        return conn.client.conn.rcpt(path, params)

    async def _domain(self, domain: str, rcpt: str) -> tuple[_Domain, ReplyReceived | None]:
        """The domain's connection with MAIL FROM done; its failure, once per message.

        On a new connection to an MX that offers PIPELINING (RFC 2920) the
        first recipient's RCPT goes in the same write as MAIL FROM: one
        round trip less per message and domain. Its answer is returned
        then, else None (the caller sends the RCPT).
        """
        found = self._domains.get(domain)
        if isinstance(found, SMTPError):
            raise found.with_traceback(None)
        if found is not None:
            return found, None
        try:
            entry, answer = await self._open(domain, rcpt)
        except SMTPError as exc:
            self._target.log.info(
                "domain unreachable",
                msg_id=self._meta.id,
                domain=domain,
                reply=str(exc),
                reason=exc.reason,
            )
            self._domains[domain] = exc
            raise
        self._domains[domain] = entry
        return entry, answer

    async def _open(self, domain: str, rcpt: str) -> tuple[_Domain, ReplyReceived | None]:
        target = self._target
        limits = target.limits
        ticket = await limits.take_scoped("destination", domain) if limits else None
        try:
            while True:
                conn = await target.acquire(domain, self._meta, policed=self._policed)
                entry = _Domain(domain, conn, ticket)
                try:
                    answer = await self._mail(entry, rcpt)
                except SMTPError:
                    reused = conn.transactions > 0
                    await target.release(conn, reusable=False)
                    if reused and conn.client.failure is not None:
                        continue  # a pooled connection that died idle: another one
                    raise
                return entry, answer
        except BaseException:
            if ticket is not None:
                await ticket.release()
            raise

    async def _mail(self, entry: _Domain, rcpt: str) -> ReplyReceived | None:
        """MAIL FROM on the domain's connection (the parameters its MX can take).

        With PIPELINING, `rcpt`'s RCPT TO is written with it and its answer
        returned; a refused MAIL FROM is raised either way (the RCPT's
        answer to it, a 503, is read and dropped)."""
        meta, conn = self._meta, entry.conn
        client = conn.client
        caps = client.capabilities
        mail_from = self._mail_from
        entry.utf8 = caps.smtputf8 and (meta.smtp.smtputf8 or address.needs_smtputf8(mail_from))
        try:
            path = wire_path(mail_from, smtputf8=entry.utf8)
        except ValueError as exc:
            raise _copy(SENDER_NOT_ASCII, f"{conn.mx.host}: {exc}") from None
        if meta.smtp.size and caps.size and meta.smtp.size > caps.size:
            raise _copy(TOO_BIG, f"SIZE={meta.smtp.size}, {conn.mx.host} takes {caps.size}")
        params = mail_params(meta, caps, smtputf8=entry.utf8)
        if not caps.requiretls:
            # Only reached with relaxed_requiretls (connect.py refused the MX
            # otherwise): the flag is dropped, the TLS levels were still required.
            params = [p for p in params if p != "REQUIRETLS"]
        client.check_usable()
        command = client.conn.mail(path, params)
        follow = b""
        if caps.pipelining:
            # A recipient the MX cannot take (not ASCII) is refused on its own, later.
            with contextlib.suppress(SMTPError):
                follow = self._rcpt_command(entry, rcpt)
        if not follow:
            answer = await client.ask(command)
            if not answer.ok:
                raise mx_said(answer.reply, conn, "MAIL FROM")
            return None
        await client.send(command + follow)
        answer = await client.read_reply()
        if not answer.ok:
            with contextlib.suppress(SMTPError):
                await client.read_reply()
            raise mx_said(answer.reply, conn, "MAIL FROM")
        return await client.read_reply()

    def _with_rcpts(self) -> list[_Domain]:
        return [d for d in self._domains.values() if isinstance(d, _Domain) and d.rcpts]

    async def _send(self, entry: _Domain, header: bytes, body: Buffer) -> None:
        """DATA (or BDAT) to one domain; the outcome goes into `entry.result`."""
        conn = entry.conn
        client = conn.client
        replies: list[Reply] = []
        limit = client.capabilities.size
        size = len(header) + len(body)
        if limit and size > limit:
            entry.result = _copy(TOO_BIG, f"{size} bytes, {conn.mx.host} takes {limit}")
            return
        try:
            client.check_usable()
            conn.transactions += 1
            entry.sent = True
            await client.send_message(header, body, replies)
        except SMTPError as exc:
            entry.result = exc
            return
        except Exception as exc:  # a bug or the body buffer: not the other domains' business
            self._target.log.error("sending failed", err=exc, msg_id=self._meta.id)
            entry.result = SMTPError(
                451, (4, 3, 0), "Internal server error", reason=f"{type(exc).__name__}: {exc}"
            )
            return
        failed = next((r for r in replies if r.code >= 400), None)
        if failed is not None:
            entry.result = mx_said(failed, conn, "end of data")

    async def _send_all(self, header: Header, body: Buffer) -> list[_Domain]:
        domains = self._with_rcpts()
        data = header.to_bytes()
        await asyncio.gather(*(self._send(d, data, body) for d in domains))
        self.dsn_passed = bool(domains) and all(d.conn.client.capabilities.dsn for d in domains)
        for d in domains:
            if d.result is not None:
                self._target.log.info(
                    "not delivered",
                    msg_id=self._meta.id,
                    domain=d.name,
                    mx=d.conn.mx.host,
                    reply=str(d.result),
                    reason=d.result.reason,
                )
        return domains

    async def body(self, header: Header, body: Buffer) -> None:
        if self._meta.quarantine:
            raise _copy(QUARANTINED)
        domains = await self._send_all(header, body)
        errors = [d.result for d in domains if d.result is not None]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            temporary = any(e.temporary for e in errors)
            raise SMTPError(
                451 if temporary else 550,
                (4, 0, 0) if temporary else (5, 0, 0),
                "Partial delivery failure, additional attempts may result in duplicates",
                reason="; ".join(f"{e.reason or e.message}" for e in errors),
            )

    async def body_non_atomic(self, status: StatusCollector, header: Header, body: Buffer) -> None:
        if self._meta.quarantine:
            for rcpt in self._rcpt_domain:
                status.set_status(rcpt, _copy(QUARANTINED))
            return
        for entry in await self._send_all(header, body):
            for rcpt in entry.rcpts:
                status.set_status(rcpt, entry.result)

    async def commit(self) -> None:
        delivered = [d for d in self._with_rcpts() if d.sent and d.result is None]
        await self._finish()
        for d in delivered:  # one line per destination domain: who got it, from which MX
            self._target.log.info(
                "delivered",
                msg_id=self._meta.id,
                mx=d.conn.mx.host,
                tls=d.conn.client.tls,
                rcpts=",".join(d.rcpts),
            )

    async def abort(self) -> None:
        await self._finish()

    async def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        entries = [d for d in self._domains.values() if isinstance(d, _Domain)]
        requiretls = self._meta.smtp.requiretls
        await asyncio.gather(
            *(self._target.release(d.conn, reusable=not requiretls) for d in entries)
        )
        for d in entries:
            if d.ticket is not None:
                await d.ticket.release()
        if self._ticket is not None:
            await self._ticket.release()


def _domain_of(rcpt: str) -> str:
    """The recipient's domain as DNS needs it (A-labels, lowercase), or the refusal."""
    try:
        _, domain = address.split(rcpt)
    except NormalizationError:
        domain = ""
    if not domain:
        raise _copy(NO_DOMAIN)
    if domain.startswith("["):
        raise _copy(LITERAL)
    with contextlib.suppress(ValueError, UnicodeError):
        return address.to_alabel_domain(domain).lower().rstrip(".")
    raise SMTPError(550, (5, 1, 2), "Invalid destination domain", reason=domain)
