"""`target.smtp` and `target.lmtp`: forwarding to other servers (docs/target-smtp.md).

Per message, one connection (no pooling): `start_delivery` tries the
endpoints in order until one answers (dial, greeting, EHLO/LHLO, STARTTLS
and EHLO again when `starttls` is on: never a clear-text fallback), then
authenticates (`auth`) and sends MAIL FROM. Each `add_rcpt` is one RCPT TO
whose reply is passed through (a 552 becomes 452, RFC 5321 §4.5.3.1.10);
`body` sends the content; `commit` and `abort` say QUIT and close.

With PIPELINING the MAIL reply is not waited for at `start_delivery`: it
is read together with the first RCPT's, which saves a round trip per
message. A refused MAIL is then every recipient's error, as it would have
been from `start_delivery` (the pipeline fails the recipients routed here
either way).

`target.lmtp` also implements `body_non_atomic`: an LMTP server answers the
content once per accepted recipient (RFC 2033 §4.2), and each answer is
that recipient's status; when the connection fails half-way, every
recipient not answered yet gets the failure.

After the transaction, `Delivery.dsn_passed` tells whether the downstream
offered DSN (RFC 3461): the RET/ENVID/NOTIFY/ORCPT parameters went with
the message, so the downstream now owes the success or failure reports and
the queue must not send a "relayed" DSN of its own.
"""

from __future__ import annotations

import contextlib

from kittiwake import address
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.config.redact import HIDDEN
from kittiwake.config.values import parse_bool
from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Module, register
from kittiwake.protocol.replies import Reply
from kittiwake.smtpclient.client import ClientSettings, SMTPClient
from kittiwake.smtpclient.endpoint import Endpoint, parse_endpoint
from kittiwake.smtpclient.envelope import mail_params, rcpt_params, wire_path
from kittiwake.smtpclient.errors import reply_error
from kittiwake.smtpclient.sasl import Mechanism
from kittiwake.targets.base import StatusCollector
from kittiwake.tls.directive import ClientTLS, parse_client_tls

__all__ = ["LMTPDelivery", "LMTPDownstream", "SMTPDelivery", "SMTPDownstream"]

DEFAULT_TIMEOUT = 300.0  # 5 minutes, each of the three timeouts

SENDER_NOT_ASCII = SMTPError(
    550, (5, 6, 7), "SMTPUTF8 is unsupported, cannot convert sender address"
)
RCPT_NOT_ASCII = SMTPError(
    553, (5, 6, 7), "SMTPUTF8 is unsupported, cannot convert recipient address"
)
AUTH_REQUIRED = SMTPError(530, (5, 7, 0), "Authentication is required")
TOO_BIG = SMTPError(552, (5, 3, 4), "Message size exceeds fixed maximum message size")
REQUIRETLS_UNSUPPORTED = SMTPError(550, (5, 7, 30), "REQUIRETLS support required")


# --- configuration -------------------------------------------------------------


#: `auth off` / `plain USER PASS` / `login USER PASS` / `forward` / `external`.
AuthSetting = tuple[str, Mechanism | None]


def _parse_auth(node: Node) -> AuthSetting:
    if node.children is not None:
        raise node.error("auth: unexpected block")
    args = node.args
    kind = args[0] if args else ""
    if kind in ("off", "forward", "external"):
        if len(args) != 1:
            raise node.error(f"auth {kind}: takes no other argument")
        return kind, Mechanism("EXTERNAL") if kind == "external" else None
    if kind in ("plain", "login"):
        if len(args) != 3:
            raise node.error(f"auth {kind}: expected a user name and a password")
        return kind, Mechanism(kind.upper(), args[1], args[2])
    raise node.error("auth: expected off, plain USER PASS, login USER PASS, forward or external")


def _ehlo_name(node: Node, name: str) -> str:
    """The `hostname` in A-labels (RFC 5321 §4.1.1.1 wants a domain the world can read)."""
    try:
        return address.to_alabel_domain(name)
    except (ValueError, UnicodeError) as exc:
        raise node.error(f"hostname: cannot be written in A-labels: {exc}") from None


@register("target.smtp")
class SMTPDownstream(Module):
    """`target.smtp [ENDPOINT...] { targets ...; starttls; auth; tls_client; ... }`."""

    lmtp = False

    def configure(self, cfg: Directives) -> None:
        node = cfg.node
        self.log.debug_enabled = cfg.boolean("debug", default=self.log.debug_enabled, inherit=True)
        for old in cfg.all("require_tls"):
            self.log.warn(
                "require_tls is deprecated and ignored: use starttls",
                file=old.file,
                line=old.line,
            )
        attempt = cfg.custom("attempt_starttls", self._attempt_starttls, None)
        starttls = cfg.boolean("starttls", default=not self.lmtp)
        if attempt is not None:
            starttls = attempt
        hostname = cfg.string("hostname", inherit=True)
        targets_node = cfg.get("targets")
        off: AuthSetting = ("off", None)
        self.auth_kind, self.mechanism = cfg.custom("auth", _parse_auth, off)
        # `plain USER PASS`: the password is not printed (`config show`).
        cfg.hide("auth", lambda args: args[:2] + [HIDDEN] * len(args[2:]))
        tls = cfg.custom(
            "tls_client",
            lambda n: parse_client_tls(n, self.container),
            None,
            inherit=True,
        )
        timeouts = [
            cfg.duration(name, DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT  # 0 = the default, as maddy
            for name in ("connect_timeout", "command_timeout", "submission_timeout")
        ]
        cfg.finish()
        self.endpoints = self._endpoints(node, targets_node)
        self.settings = ClientSettings(
            hostname=_ehlo_name(node, hostname),
            lmtp=self.lmtp,
            starttls=starttls,
            tls=tls if isinstance(tls, ClientTLS) else None,
            connect_timeout=timeouts[0],
            command_timeout=timeouts[1],
            submission_timeout=timeouts[2],
        )

    def _attempt_starttls(self, node: Node) -> bool:
        self.log.warn(
            "attempt_starttls is deprecated: it means starttls",
            file=node.file,
            line=node.line,
        )
        if node.children is not None:
            raise node.error("attempt_starttls: unexpected block")
        return parse_bool(node.args)

    def _endpoints(self, node: Node, targets: Node | None) -> list[Endpoint]:
        """`targets` first, then the inline arguments (maddy appends them)."""
        runtime_dir = self.container.globals.runtime_dir
        found = []
        sources: list[tuple[Node, str]] = []
        if targets is not None:
            sources += [(targets, text) for text in targets.args]
        sources += [(node, text) for text in self.inline_args]
        for where, text in sources:
            try:
                found.append(parse_endpoint(text, runtime_dir))
            except ValueError as exc:
                raise where.error(f"{self.module_name}: {exc}") from None
        if not found:
            raise node.error(f"{self.module_name}: at least one target endpoint is required")
        return found

    # -- delivery target ---------------------------------------------------------

    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> SMTPDelivery:
        mechanism = self._mechanism_for(meta)
        client = await self._connect(meta)
        try:
            if mechanism is not None:
                await client.authenticate(mechanism)
            delivery = (LMTPDelivery if self.lmtp else SMTPDelivery)(self, meta, client)
            await delivery.mail(mail_from)
        except Exception:
            await client.quit()
            raise
        except BaseException:  # cancelled: no time for a goodbye
            client.close()
            raise
        return delivery

    def _mechanism_for(self, meta: MsgMeta) -> Mechanism | None:
        """`auth forward` uses the client's own credentials, which must exist."""
        if self.auth_kind != "forward":
            return self.mechanism
        conn = meta.conn
        if conn is None or not conn.auth_user or not conn.auth_password:
            raise SMTPError(
                AUTH_REQUIRED.code,
                AUTH_REQUIRED.enhanced,
                AUTH_REQUIRED.message,
                reason="auth forward: the client did not authenticate",
            )
        return Mechanism("PLAIN", conn.auth_user, conn.auth_password)

    async def _connect(self, meta: MsgMeta) -> SMTPClient:
        """The first endpoint that answers; all failing: the last one's error."""
        last: SMTPError | None = None
        for endpoint in self.endpoints:
            client = SMTPClient(endpoint, self.settings, self.log)
            try:
                await client.connect()
            except SMTPError as exc:
                self.log.info(
                    "downstream server unusable",
                    endpoint=str(endpoint),
                    msg_id=meta.id,
                    reply=str(exc),
                    reason=exc.reason,
                )
                last = exc
                continue
            return client
        assert last is not None
        raise last


@register("target.lmtp")
class LMTPDownstream(SMTPDownstream):
    """`target.lmtp`: the same over LMTP (LHLO; one reply per recipient)."""

    lmtp = True


# --- deliveries ------------------------------------------------------------------


class SMTPDelivery:
    """One message over one connection."""

    def __init__(self, target: SMTPDownstream, meta: MsgMeta, client: SMTPClient) -> None:
        self._target = target
        self._meta = meta
        self._client = client
        self._utf8 = False
        self._mail_pending = False
        self._mail_error: SMTPError | None = None
        self._rcpts: list[str] = []
        self._paths: list[str] = []  # the same recipients as written on the wire
        self._closed = False
        #: The downstream offered DSN, so the DSN parameters went with the message.
        self.dsn_passed = False

    @property
    def rcpts(self) -> list[str]:
        """Recipients the downstream accepted, in order, as given to add_rcpt."""
        return list(self._rcpts)

    async def mail(self, mail_from: str) -> None:
        """MAIL FROM; with PIPELINING, its reply is read with the first RCPT's."""
        client, meta = self._client, self._meta
        caps = client.capabilities
        self._utf8 = caps.smtputf8 and (meta.smtp.smtputf8 or address.needs_smtputf8(mail_from))
        try:
            path = wire_path(mail_from, smtputf8=self._utf8)
        except ValueError as exc:
            raise _with_reason(SENDER_NOT_ASCII, f"{client.remote}: {exc}") from None
        if meta.smtp.size and caps.size and meta.smtp.size > caps.size:
            raise _with_reason(TOO_BIG, f"SIZE={meta.smtp.size}, {client.remote} takes {caps.size}")
        if meta.smtp.requiretls and not (client.tls and caps.requiretls):
            raise _with_reason(
                REQUIRETLS_UNSUPPORTED, f"{client.remote} cannot take REQUIRETLS (RFC 8689)"
            )
        params = mail_params(meta, caps, smtputf8=self._utf8)
        self.dsn_passed = caps.dsn
        await client.send(client.conn.mail(path, params))
        self._mail_pending = True
        if not caps.pipelining:
            await self._mail_reply()
            if self._mail_error is not None:
                raise self._mail_error

    async def _mail_reply(self) -> None:
        self._mail_pending = False
        answer = await self._client.read_reply()
        if not answer.ok:
            self._mail_error = reply_error(answer.reply, self._client.remote, "MAIL FROM")

    async def add_rcpt(self, rcpt: str) -> None:
        if self._mail_error is not None:
            raise self._mail_error
        if rcpt in self._rcpts:
            return  # the contract: duplicates are accepted silently
        client = self._client
        client.check_usable()
        try:
            path = wire_path(rcpt, smtputf8=self._utf8)
        except ValueError as exc:
            raise _with_reason(RCPT_NOT_ASCII, f"{client.remote}: {exc}") from None
        params = rcpt_params(self._meta.dsn_for(rcpt), client.capabilities)
        await client.send(client.conn.rcpt(path, params))
        if self._mail_pending:
            await self._mail_reply()
        if self._mail_error is not None:
            # The RCPT's own reply (a 503, or none from a server that went
            # away with a 421) says nothing more.
            with contextlib.suppress(SMTPError):
                await client.read_reply()
            raise self._mail_error
        answer = await client.read_reply()
        if not answer.ok:
            raise _temporary_552(reply_error(answer.reply, client.remote, "RCPT TO"))
        self._rcpts.append(rcpt)
        self._paths.append(path)

    def _check_size(self, header: bytes, body: Buffer) -> None:
        limit = self._client.capabilities.size
        size = len(header) + len(body)
        if limit and size > limit:
            raise _with_reason(TOO_BIG, f"{size} bytes, {self._client.remote} takes {limit}")

    async def body(self, header: Header, body: Buffer) -> None:
        """Send the content; the downstream's reply to it is the outcome."""
        replies: list[Reply] = []
        await self._send(header, body, replies)
        failures = [r for r in replies if r.code >= 400]
        if failures:
            raise self._combined(failures, len(replies))

    async def _send(self, header: Header, body: Buffer, replies: list[Reply]) -> None:
        """Send the content; the final replies go into `replies`, even on a failure."""
        self._client.check_usable()
        data = header.to_bytes()
        self._check_size(data, body)
        try:
            await self._client.send_message(data, body, replies)
        finally:
            if self._target.lmtp:
                replies[:] = [_unnamed(r, p) for r, p in zip(replies, self._paths, strict=False)]

    def _combined(self, failures: list[Reply], total: int) -> SMTPError:
        """One error for the whole message (SMTP: the one reply)."""
        errors = [reply_error(r, self._client.remote, "end of data") for r in failures]
        if len(errors) == 1:
            return errors[0]
        temporary = any(e.temporary for e in errors)
        return SMTPError(
            451 if temporary else 550,
            (4, 0, 0) if temporary else (5, 0, 0),
            f"Delivery failed for {len(errors)} of {total} recipients downstream",
            reason="; ".join(e.reason for e in errors),
        )

    async def commit(self) -> None:
        """The downstream has the message already: say goodbye."""
        await self._finish()
        self._target.log.info(
            "delivered",
            msg_id=self._meta.id,
            remote=self._client.remote,
            rcpts=",".join(self._rcpts),
        )

    async def abort(self) -> None:
        await self._finish()

    async def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.quit()


class LMTPDelivery(SMTPDelivery):
    """Over LMTP: one status per recipient (RFC 2033 §4.2)."""

    async def body_non_atomic(self, status: StatusCollector, header: Header, body: Buffer) -> None:
        rcpts = list(self._rcpts)
        replies: list[Reply] = []
        failure: SMTPError | None = None
        try:
            await self._send(header, body, replies)
        except SMTPError as exc:
            failure = exc
        remote = self._client.remote
        for i, rcpt in enumerate(rcpts):
            if i < len(replies):
                reply = replies[i]
                error = reply_error(reply, remote, "end of data") if reply.code >= 400 else None
                status.set_status(rcpt, error)
            else:
                # Every recipient not answered before the failure shares it.
                status.set_status(rcpt, failure)


def _unnamed(reply: Reply, path: str) -> Reply:
    """The reply without the `<recipient>` an LMTP server puts in front of it.

    RFC 2033 servers name the recipient each reply is for; the LMTP
    endpoint that passes the reply on names it again, so the copy goes.
    """
    lines = (reply.text,) if isinstance(reply.text, str) else reply.text
    first = lines[0] if lines else ""
    named = f"<{path}>"
    if first[: len(named)].lower() != named.lower():
        return reply
    return Reply(reply.code, reply.enhanced, (first[len(named) :].lstrip(), *lines[1:]))


def _with_reason(error: SMTPError, reason: str) -> SMTPError:
    """A fresh copy of a constant error, with what the log should say."""
    return SMTPError(error.code, error.enhanced, error.message, reason=reason)


def _temporary_552(error: SMTPError) -> SMTPError:
    """RFC 5321 §4.5.3.1.10: a 552 to RCPT means "too many recipients": try later."""
    if error.code != 552:
        return error
    _, subject, detail = error.enhanced
    return SMTPError(452, (4, subject, detail), error.message, reason=error.reason, misc=error.misc)
