"""Handing delivery status notifications to the `bounce` pipeline.

`progress.py` decides which notices an entry owes and records them in its
metadata; this module turns them into RFC 3464 reports (`kittiwake.dsn`)
and submits each as a message kittiwake generates itself: no connection
information, `MAIL FROM:<>`, one `RCPT TO` - the stored envelope sender of
the original message - through the `bounce` pipeline, which routes it like
any message (a local mailbox, or back through a queue).

One report per kind and entry at a time: the failures of an attempt
together, the delays together, the successes together, so a sender reads
one message per event rather than one per recipient.

Strategy (never lose a notice, never loop on one). A notice leaves the
metadata only once the pipeline has committed it. If the report cannot be
built or the pipeline fails temporarily (or in a way that says nothing),
the notice stays and the entry is kept on disk for another try later,
even when it has no recipient left (docs/target-queue.md, "When a notice
cannot be sent"). If the pipeline refuses it permanently (a 5xx, such as a
`reject` for senders it will not write to), that is the pipeline's
decision: the notice is dropped and the refusal logged.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kittiwake import dsn
from kittiwake import log as _log
from kittiwake.durable import FILE_MODE, NEW_FILE, write_all
from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta, SMTPOptions, new_msg_id
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.queue.record import Action, Notice, Record
from kittiwake.queue.store import BODY, TMP, Store
from kittiwake.targets.base import DeliveryTarget

__all__ = ["Notifier", "parse_stored_header"]

T = TypeVar("T")
RunInThread = Callable[..., Awaitable[Any]]

#: The groups a report covers: one report per group and hand-over.
_GROUPS = ((Action.FAILED,), (Action.DELAYED,), (Action.DELIVERED, Action.RELAYED))


def parse_stored_header(data: bytes) -> Header:
    """A stored header file (with its empty last line) as a `Header`."""
    if data.endswith(b"\r\n"):
        data = data[:-2]
    return Header.parse(data)


def _when(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC)


@dataclass
class Notifier:
    """Builds the reports of one queue and submits them to its bounce pipeline."""

    bounce: DeliveryTarget
    store: Store
    run: RunInThread
    hostname: str
    autogen_domain: str
    log: _log.Logger

    async def send(self, record: Record, notices: list[Notice]) -> tuple[list[Notice], bool]:
        """Submit `notices`; the ones now settled, and whether some must wait.

        Settled: handed over, or refused for good by the pipeline. The rest
        stay owed (the bool is True then).
        """
        settled: list[Notice] = []
        waiting = False
        for actions in _GROUPS:
            group = [n for n in notices if n.action in actions]
            if not group:
                continue
            try:
                dsn_id = await self._submit(record, group)
            except SMTPError as exc:
                if exc.temporary:
                    waiting = True
                    self._failed(record, group, exc, "temporary")
                    continue
                self._failed(record, group, exc, "refused for good, dropped")
                settled.extend(group)
                continue
            except Exception as exc:
                waiting = True
                self._failed(record, group, exc, "will try again")
                continue
            self.log.info(
                "notice sent",
                queue_id=record.id,
                msg_id=record.msg_id,
                dsn_msg_id=dsn_id,
                action=group[0].action,
                rcpts=len(group),
            )
            settled.extend(group)
        return settled, waiting

    def _failed(self, record: Record, group: list[Notice], exc: Exception, what: str) -> None:
        """Log a notice the bounce pipeline did not take.

        A reply from the pipeline (a `reject` for strangers, a full disk) is
        a policy or operating outcome: a warning naming the reply and the
        address; anything else is a bug, logged as an error with its place.
        """
        fields: dict[str, object] = {
            "queue_id": record.id,
            "msg_id": record.msg_id,
            "action": group[0].action,
            "to": record.sender,
        }
        if isinstance(exc, SMTPError):
            self.log.warn(f"notice not sent: {what}", reply=str(exc), reason=exc.reason, **fields)
        else:
            self.log.error(f"notice not sent: {what}", err=exc, **fields)

    async def _submit(self, record: Record, group: list[Notice]) -> str:
        report = self._report(record, group)
        header, path, size = await self.run(self._write, record, report)
        try:
            return await self._deliver(record, header, Buffer.from_file(path, size))
        finally:
            await self.run(_unlink, path)

    def _report(self, record: Record, group: list[Notice]) -> dsn.Report:
        return dsn.Report(
            reporting_mta=self.hostname,
            msg_id=record.id,
            sender=record.sender,
            arrival=_when(record.arrival),
            recipients=[self._recipient(record, n) for n in group],
            envid=record.smtp.dsn_envid,
            received_from_mta=record.client_helo,
            smtputf8=record.smtp.smtputf8,
            return_full=(record.smtp.dsn_ret or "").upper() == "FULL",
        )

    @staticmethod
    def _recipient(record: Record, notice: Notice) -> dsn.RecipientReport:
        error = notice.error
        return dsn.RecipientReport(
            recipient=record.original(notice.rcpt),
            action=notice.action,
            status=error.enhanced if error is not None else (2, 0, 0),
            diagnostic=str(error) if error is not None else None,
            original=record.dsn_for(notice.rcpt).orcpt,
            remote_mta=_remote_host(error.remote) if error is not None else None,
            last_attempt=_when(notice.at),
            will_retry_until=_when(notice.retry_until) if notice.retry_until else None,
        )

    def _write(self, record: Record, report: dsn.Report) -> tuple[Header, str, int]:
        """Build the report and write its body to a scratch file (worker thread).

        Both read the original's files: the header always, the body when
        the sender asked for it back (RET=FULL), which may be large, so the
        report is streamed to disk, never held in memory.
        """
        header = parse_stored_header(self.store.read_header(record))
        body = None
        if report.return_full:
            body = Buffer.from_file(self.store.path(record.id, BODY), record.body.size)
        message = dsn.build(report, header, body, autogen_domain=self.autogen_domain)
        path = os.path.join(self.store.location, f"{record.id}.dsn-{secrets.token_hex(4)}{TMP}")
        fd = os.open(path, NEW_FILE, FILE_MODE)
        size = 0
        try:
            for chunk in message.chunks():
                write_all(fd, chunk)
                size += len(chunk)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        os.close(fd)
        return message.header, path, size

    async def _deliver(self, record: Record, header: Header, body: Buffer) -> str:
        meta = MsgMeta(
            id=new_msg_id(),
            smtp=SMTPOptions(smtputf8=record.smtp.smtputf8, requiretls=record.smtp.requiretls),
        )
        delivery = await self.bounce.start_delivery(meta, "")
        try:
            await delivery.add_rcpt(record.sender)
            await delivery.body(header, body)
            await delivery.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await delivery.abort()
            raise
        return meta.id


def _remote_host(remote: str | None) -> str | None:
    """The host of a next hop `tcp://HOST:PORT` / `tls://...`, for Remote-MTA.

    A bare name is an MX host already (target.remote names the MX it
    talked to). None for a Unix socket (a local program, no MTA name) or
    no hop at all.
    """
    if remote and "://" not in remote:
        return remote
    if not remote or not remote.startswith(("tcp://", "tls://")):
        return None
    host = remote.split("://", 1)[1].rpartition(":")[0]
    return host.strip("[]") or None


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
