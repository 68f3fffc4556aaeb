"""The mail transaction side of a session: MAIL, RCPT, the content, delivery.

A transaction starts the pipeline at MAIL (or at the first RCPT with
`defer_sender_reject`), adds each recipient, streams the content into the
message's buffer (the header kept aside for parsing) and, at the end of
the data, hands header and buffer to the pipeline and commits. Only then is
`250` sent. Whatever happens, the buffer is removed before the final reply
and an uncommitted delivery is aborted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kittiwake import address
from kittiwake.errors import SMTPError
from kittiwake.limits import LimitsUnavailable
from kittiwake.log import Logger
from kittiwake.message import ConnInfo, MsgMeta, RcptDSN, SMTPOptions, new_msg_id
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import HeaderReader
from kittiwake.protocol import BodyEnd, Data, MailFrom, RcptTo, Reply
from kittiwake.protocol import replies as R
from kittiwake.protocol.events import MailParams
from kittiwake.server.errors import client_error
from kittiwake.server.session_config import EndpointKind
from kittiwake.server.submission import prepare_submission_header

if TYPE_CHECKING:
    from kittiwake.limits import Ticket
    from kittiwake.pipeline.pipeline import MessageDelivery
    from kittiwake.server.session import Session

AUTH_REQUIRED = Reply(530, (5, 7, 0), "Authentication required")


@dataclass
class Transaction:
    """One MAIL ... final reply exchange, as the session sees it."""

    mail_from: str
    params: MailParams
    msg_id: str = ""
    meta: MsgMeta | None = None
    delivery: MessageDelivery | None = None
    sender_started: bool = False
    sender_error: Reply | None = None
    #: accepted recipients: (as the client wrote it, clean form)
    rcpts: list[tuple[str, str]] = field(default_factory=list)
    buffer: Buffer | None = None
    header: HeaderReader | None = None
    body_error: SMTPError | None = None
    committed: bool = False
    ticket: Ticket | None = None  # what the endpoint's limits granted
    #: When MAIL came (`time.monotonic()`): the message line's delay.
    started: float = field(default_factory=time.monotonic)
    #: Recipients refused at RCPT, with the reply, for the message line
    #: (the first `MAX_LISTED`; `refused_count` counts them all).
    refused: list[str] = field(default_factory=list)
    refused_count: int = 0


class MailTransactions:
    """MAIL, RCPT, DATA/BDAT and delivery: the transaction side of a session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.cfg = session.cfg
        self.txn: Transaction | None = None
        self._rcpt_errors_logged = 0

    async def on_mail(self, event: MailFrom) -> None:
        if self.cfg.kind is EndpointKind.SUBMISSION and not self.session.conn.authenticated:
            self.cfg.metrics.failed_command("MAIL", AUTH_REQUIRED.code, AUTH_REQUIRED.enhanced)
            self.session.reply(AUTH_REQUIRED)  # RFC 4954 §6
            return
        txn = Transaction(event.address, event.params)
        if not self.cfg.defer_sender_reject:
            error = await self._start_sender(txn)
            if error is not None:
                # The old transaction (if any) stays as it was (docs/protocol.md).
                self.cfg.metrics.failed_command("MAIL", error.code, error.enhanced)
                self.session.reply(error)
                return
        await self.end()
        self.txn = txn
        self.session.reply(Reply(250, (2, 0, 0), f"Roger, accepting mail from <{event.address}>"))

    async def _start_sender(self, txn: Transaction) -> Reply | None:
        """Sender processing: ID, SMTPUTF8, clean form, limits, pipeline; the reply on failure."""
        txn.sender_started = True
        txn.msg_id = new_msg_id()
        sender = txn.mail_from
        try:
            clean = address.clean_path(sender, smtputf8=txn.params.smtputf8)
        except address.AddressError as exc:
            return Reply.from_error(exc.smtp_error("sender"))  # no msg ID (docs/server.md)
        if self.cfg.limits is not None:
            # One token/slot per transaction, held until it ends (docs/limits.md);
            # a limit waits up to 5 s, then 451 without msg ID (docs/limits.md).
            domain = clean.rpartition("@")[2] if "@" in clean else ""
            try:
                txn.ticket = await self.cfg.limits.take(self.session.peer_ip, domain)
            except Exception as exc:
                error = client_error(exc, self.cfg.log, "limits failed", msg_id=txn.msg_id)
                # A store that cannot answer is not a limit reached: the
                # store's own outage lines say why (docs/state.md).
                what = (
                    "limits unavailable" if isinstance(exc, LimitsUnavailable) else "limit reached"
                )
                self.cfg.log.info(what, src_ip=self.session.peer_ip, sender=sender)
                self.cfg.metrics.ratelimit_deferred()
                return Reply.from_error(error)
        txn.meta = MsgMeta(
            id=txn.msg_id,
            conn=self.conn_info(),
            smtp=SMTPOptions(
                size=txn.params.size,
                body=txn.params.body,
                smtputf8=txn.params.smtputf8,
                requiretls=txn.params.requiretls,
                auth=txn.params.auth,
                dsn_ret=txn.params.ret,
                dsn_envid=txn.params.envid,
            ),
            original_from=sender,
            dont_trace_sender=self.cfg.kind is EndpointKind.SUBMISSION,
        )
        try:
            txn.delivery = await self.cfg.pipeline.start(txn.meta, clean)
        except Exception as exc:
            error = client_error(exc, self.cfg.log, "MAIL FROM error", msg_id=txn.msg_id)
            self.cfg.log.info(
                "MAIL FROM error", msg_id=txn.msg_id, sender=sender, reason=error, **_detail(error)
            )
            await _release(txn)
            return Reply.from_error(error, txn.msg_id)
        self.cfg.log.info(
            "incoming message",
            msg_id=txn.msg_id,
            src_host=self.session.helo,
            src_ip=self.session.peer_ip or "unix",
            sender=sender,
        )
        self.cfg.metrics.transaction_started()
        return None

    def conn_info(self) -> ConnInfo:
        # RFC 3848: "S" for TLS, "A" for an authenticated client.
        proto = "LMTP" if self.cfg.kind is EndpointKind.LMTP else "ESMTP"
        if self.session.conn.tls:
            proto += "S"
        if self.session.auth_user is not None:
            proto += "A"
        return ConnInfo(
            remote_ip=self.session.peer_ip,
            remote_port=self.session.peer_port,
            helo=self.session.helo,
            tls=self.session.conn.tls,
            proto=proto,
            auth_user=self.session.auth_user,
            auth_password=self.session.auth_password,
            endpoint=self.cfg.kind,
            reverse=self.session.reverse_lookup,
            module_data=self.session.module_data,
        )

    async def on_rcpt(self, event: RcptTo) -> None:
        txn = self.txn
        assert txn is not None  # the core checked that MAIL was accepted
        if not txn.sender_started:
            txn.sender_error = await self._start_sender(txn)
        if txn.sender_error is not None:
            # Every RCPT of the transaction gets the same reply (docs/server.md, "Transactions").
            refused = txn.sender_error
            self.cfg.metrics.failed_command("RCPT", refused.code, refused.enhanced)
            self.session.reply(refused)
            return
        rcpt = event.address
        clean = ""
        earlier = None
        try:
            try:
                clean = address.clean_path(rcpt, smtputf8=txn.params.smtputf8)
            except address.AddressError as exc:
                raise exc.smtp_error("recipient") from None
            assert txn.delivery is not None and txn.meta is not None
            # Known before the targets see the recipient: one that relays
            # (target.smtp) passes NOTIFY and ORCPT on with its own RCPT.
            earlier = txn.meta.rcpt_dsn.get(clean)
            if event.dsn is not None:
                txn.meta.rcpt_dsn[clean] = event.dsn
            await txn.delivery.add_rcpt(clean)
        except Exception as exc:
            if txn.meta is not None and clean and event.dsn is not None:
                _restore(txn.meta.rcpt_dsn, clean, earlier)
            error = client_error(exc, self.cfg.log, "RCPT error", msg_id=txn.msg_id, rcpt=rcpt)
            self._log_rcpt_error(txn, rcpt, error)
            self.cfg.metrics.failed_command("RCPT", error.code, error.enhanced)
            txn.refused_count += 1
            if len(txn.refused) < MAX_LISTED:
                txn.refused.append(_outcome(rcpt, error))
            self.session.reply(Reply.from_error(error, txn.msg_id))
            return
        txn.rcpts.append((rcpt, clean))
        self.cfg.log.debug("RCPT ok", msg_id=txn.msg_id, rcpt=rcpt)
        self.session.reply(Reply(250, (2, 0, 0), f"I'll make sure <{rcpt}> gets this"))

    def _log_rcpt_error(self, txn: Transaction, rcpt: str, exc: SMTPError) -> None:
        """Log the first N RCPT errors of a session, then fall silent (docs/server.md)."""
        limit = self.cfg.max_logged_rcpt_errors
        if self._rcpt_errors_logged >= limit:
            return
        self._rcpt_errors_logged += 1
        self.cfg.log.info("RCPT error", msg_id=txn.msg_id, rcpt=rcpt, reason=exc, **_detail(exc))
        if self._rcpt_errors_logged == limit:
            self.cfg.log.info(
                "too many RCPT errors, possible dictionary attack",
                src_ip=self.session.peer_ip or "unix",
                msg_id=txn.msg_id,
            )

    async def on_data(self, event: Data) -> None:
        self.open_body()
        self.session.reply(R.START_DATA)

    def open_body(self) -> None:
        txn = self.txn
        assert txn is not None
        txn.header = HeaderReader(self.cfg.max_header_size, self.cfg.max_header_fields)
        try:
            txn.buffer = self.cfg.buffer.new()
        except Exception as exc:
            txn.body_error = client_error(exc, self.cfg.log, "buffer failed", msg_id=txn.msg_id)

    async def body_chunk(self, data: bytes) -> None:
        txn = self.txn
        if txn is None or txn.body_error is not None or txn.header is None:
            return
        try:
            if not txn.header.done:
                rest = txn.header.feed(data)
                if rest is None:
                    return
                data = rest
            if data and txn.buffer is not None:
                await txn.buffer.write(data)
        except Exception as exc:
            # The error waits for the end of the content: the client is
            # still sending, and the reply belongs after the final dot.
            txn.body_error = client_error(exc, self.cfg.log, "content failed", msg_id=txn.msg_id)

    async def on_body_end(self, event: BodyEnd) -> None:
        txn = self.txn
        assert txn is not None
        if not event.last:
            error = txn.body_error or (_too_large() if event.too_large else None)
            if error is None:
                self.session.reply(R.BDAT_CONTINUE)
                return
            self.cfg.metrics.failed_command("BDAT", error.code, error.enhanced)
            self.cfg.metrics.message_done([error], False)
            # The message ends here, refused: it has its line like any other.
            statuses: list[SMTPError | None] = [error] * max(1, len(txn.rcpts))
            self._log_message(txn, statuses, self.session.conn.content_size)
            self.session.answer_owed(error)
            await self.end()
            return
        # What came, for the message line; a delivered message's size is
        # recomputed below from what was stored (header as received, body).
        size = self.session.conn.content_size
        try:
            failure: SMTPError | None = None
            statuses = []
            try:
                statuses = await self._deliver(txn, event)
                size = _message_size(txn)
            except Exception as exc:
                failure = client_error(exc, self.cfg.log, "delivery failed", msg_id=txn.msg_id)
        finally:
            # The buffer is gone before the final reply (docs/buffer.md).
            if txn.buffer is not None:
                txn.buffer.remove()
        if failure is not None:
            self.cfg.log.info(
                "DATA error", msg_id=txn.msg_id, reason=failure, detail=failure.reason
            )
            statuses = [failure] * max(1, len(txn.rcpts))
            self.cfg.metrics.failed_command("DATA", failure.code, failure.enhanced)
        else:
            self._log_outcome(txn, statuses)
        self._log_message(txn, statuses, size)
        self.cfg.metrics.message_done(statuses, txn.meta is not None and txn.meta.quarantine)
        if self.cfg.kind is EndpointKind.LMTP:
            for (rcpt, _), status in zip(txn.rcpts, statuses, strict=True):
                self.session.reply(_lmtp_reply(rcpt, status, txn.msg_id))
        else:
            status = statuses[0] if statuses else None
            self.session.reply(R.QUEUED if status is None else Reply.from_error(status, txn.msg_id))
        await self.end()

    async def _deliver(self, txn: Transaction, event: BodyEnd) -> list[SMTPError | None]:
        """Finish the content and hand it to the pipeline; one status per recipient."""
        if event.too_large:
            raise _too_large()
        if txn.body_error is not None:
            raise txn.body_error
        assert txn.header is not None and txn.buffer is not None
        assert txn.delivery is not None and txn.meta is not None
        txn.header.finish()
        header = txn.header.header
        assert header is not None
        if self.cfg.kind is EndpointKind.SUBMISSION:
            prepare_submission_header(header, self.cfg.hostname)  # docs/submission.md
        await txn.buffer.finish()
        received = header.count("Received")
        if received > self.cfg.max_received:
            raise SMTPError(
                554,
                (5, 4, 6),
                f"Too many Received header fields ({received}), possible forwarding loop",
            )
        tls_required = header.get("TLS-Required")
        txn.meta.tls_not_required = tls_required is not None and tls_required.lower() == "no"
        if txn.meta.conn is not None:
            txn.meta.conn.rdns = await self.session.reverse_name()
        if self.cfg.kind is EndpointKind.LMTP:
            collector = _Statuses(self.cfg.log, txn.msg_id)
            await txn.delivery.body_non_atomic(collector, header, txn.buffer)
            await txn.delivery.commit()
            txn.committed = True
            result = [collector.get(clean) for _, clean in txn.rcpts]
        else:
            await txn.delivery.deliver(header, txn.buffer)
            txn.committed = True
            result = [None]
        return result

    def _log_outcome(self, txn: Transaction, statuses: list[SMTPError | None]) -> None:
        """One line per recipient the delivery failed for (LMTP: each has its own reply)."""
        if self.cfg.kind is not EndpointKind.LMTP:
            return
        for (rcpt, _), status in zip(txn.rcpts, statuses, strict=True):
            if status is not None:
                self.cfg.log.info(
                    "delivery failed",
                    msg_id=txn.msg_id,
                    rcpt=rcpt,
                    reason=status,
                    detail=status.reason,
                )

    def _log_message(self, txn: Transaction, statuses: list[SMTPError | None], size: int) -> None:
        """The one line that answers "did alice get it?" (docs/logging.md, "The message line").

        `accepted` when at least one recipient was taken, else `not
        accepted`; with the client (address, reverse name, EHLO name,
        login, TLS), the sender, every recipient with its reply (those
        refused at RCPT too), the size of the whole message as the client
        sent it (header and body) and the time since MAIL.
        """
        session = self.session
        # SMTP has one status for the whole message; LMTP one per recipient.
        if self.cfg.kind is not EndpointKind.LMTP:
            statuses = [statuses[0] if statuses else None] * len(txn.rcpts)
        results = [
            _outcome(rcpt, status) for (rcpt, _), status in zip(txn.rcpts, statuses, strict=False)
        ]
        delivered = statuses[: len(txn.rcpts)].count(None)
        refused = txn.refused + (
            [f"and {txn.refused_count - len(txn.refused)} more"]
            if txn.refused_count > len(txn.refused)
            else []
        )
        conn = txn.meta.conn if txn.meta is not None else None
        if delivered:
            session.accepted += 1
        else:
            session.not_accepted += 1
        self.cfg.log.info(
            "accepted" if delivered else "not accepted",
            msg_id=txn.msg_id,
            rcpts=delivered,
            size=size,
            delay=round(time.monotonic() - txn.started, 3),
            src_ip=session.peer_ip or "unix",
            src_rdns=(conn.rdns if conn is not None else None) or "",
            src_host=session.helo,
            auth=session.auth_user or "",
            tls=session.tls_description(),
            sender=txn.mail_from,
            to="; ".join(results),
            refused="; ".join(refused),
            conn_id=session.id,
        )

    async def end(self) -> None:
        """Forget the transaction; abort its deliveries unless committed."""
        txn, self.txn = self.txn, None
        if txn is None:
            return
        await _release(txn)
        if txn.buffer is not None:
            txn.buffer.remove()
        if txn.delivery is not None and not txn.committed:
            try:
                await txn.delivery.abort()
            except Exception as exc:
                self.cfg.log.error("abort failed", err=exc, msg_id=txn.msg_id)
            self.cfg.log.info("aborted", msg_id=txn.msg_id)
            self.cfg.metrics.transaction_aborted()


#: Recipients refused at RCPT that the message line names one by one.
MAX_LISTED = 20


def _outcome(rcpt: str, status: SMTPError | None) -> str:
    """`rcpt: 250 2.0.0` or `rcpt: CODE X.Y.Z`: one recipient's result in the message line."""
    if status is None:
        return f"{rcpt}: 250 2.0.0"
    enhanced = ".".join(str(n) for n in status.enhanced)
    return f"{rcpt}: {status.code} {enhanced}"


class _Statuses:
    """Collects per-recipient outcomes from body_non_atomic (LMTP)."""

    def __init__(self, log: Logger, msg_id: str) -> None:
        self._errors: dict[str, Exception | None] = {}
        self._log = log
        self._msg_id = msg_id

    def set_status(self, rcpt: str, error: Exception | None) -> None:
        self._errors.setdefault(rcpt, error)

    def get(self, rcpt: str) -> SMTPError | None:
        error = self._errors.get(rcpt)
        if error is None:
            return None
        return client_error(error, self._log, "delivery failed", msg_id=self._msg_id, rcpt=rcpt)


async def _release(txn: Transaction) -> None:
    """Give back the transaction's limits (idempotent)."""
    ticket, txn.ticket = txn.ticket, None
    if ticket is not None:
        await ticket.release()


def _detail(error: SMTPError) -> dict[str, str]:
    """The check that refused and the log-only reason behind a reply, when known."""
    fields = {"check": error.check_name} if error.check_name else {}
    if error.reason:
        fields["detail"] = error.reason
    return fields


def _too_large() -> SMTPError:
    return SMTPError(552, (5, 3, 4), "Maximum message size exceeded")


def _message_size(txn: Transaction) -> int:
    """Octets of the message as received: header, blank line, body."""
    header = txn.header.header if txn.header is not None else None
    head = sum(len(f.raw) for f in header) + 2 if header is not None else 0
    return head + (len(txn.buffer) if txn.buffer is not None else 0)


def _lmtp_reply(rcpt: str, status: SMTPError | None, msg_id: str) -> Reply:
    """RFC 2033 §4.2 per-recipient reply, naming the recipient as the client did."""
    if status is None:
        return Reply(250, (2, 0, 0), f"<{rcpt}> OK: queued")
    text = f"<{rcpt}> {status.message} (msg ID = {msg_id})"
    return Reply(status.code, status.enhanced, text)


def _restore(table: dict[str, RcptDSN], key: str, earlier: RcptDSN | None) -> None:
    """Undo a refused RCPT's DSN parameters: an earlier accepted RCPT's stay."""
    if earlier is None:
        table.pop(key, None)
    else:
        table[key] = earlier
