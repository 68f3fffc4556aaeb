"""The metadata of one queue entry, and its JSON form on disk (`ID.meta`).

A `Record` is everything the queue must remember about a message between
attempts and across restarts (docs/target-queue.md, "On disk"): the
envelope, the message's options and DSN requests, the recipients still to
try with their tries and last error, the notices (DSNs) owed but not yet
handed to the bounce pipeline, the attempt times, and the size and SHA-256
of the header and body files, so a truncated or damaged entry is found
before it is sent. Connection facts are not kept: they die with the
session.

Reading is strict. Every field is checked for its type and range, and
anything unexpected raises `CorruptEntry`: the entry is then put aside
(quarantined) rather than half-understood, since a misread recipient list
could send a message to the wrong people or not at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta, RcptDSN, SMTPOptions

__all__ = [
    "ID_PATTERN",
    "Action",
    "CorruptEntry",
    "FileSum",
    "Notice",
    "Rcpt",
    "Record",
    "StoredError",
]

#: Queue entry IDs: 16 lowercase hex digits (64 random bits).
ID_PATTERN = re.compile(r"[0-9a-f]{16}\Z")
FORMAT_VERSION = 1


class CorruptEntry(Exception):
    """An entry whose files cannot be trusted; it is quarantined, not sent."""


class Action:
    """RFC 3464 §2.3.3 actions the queue reports."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    ALL = (FAILED, DELAYED, DELIVERED, RELAYED)


@dataclass(frozen=True, slots=True)
class StoredError:
    """The SMTP facts of a delivery error: what a DSN and `queue list` show."""

    code: int
    enhanced: tuple[int, int, int]
    message: str
    #: The next hop that gave the reply (`tcp://HOST:PORT`), when one did:
    #: the DSN's Remote-MTA.
    remote: str | None = None

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @classmethod
    def of(cls, exc: BaseException) -> StoredError:
        """The stored form of any error a target raised.

        Only an `SMTPError` says whether it is permanent; anything else
        (a bug, an I/O failure, a lost connection) is temporary, stored as
        `451 4.0.0 Internal server error` so it is retried, never bounced
        for a passing fault.
        """
        if isinstance(exc, SMTPError):
            remote = exc.misc.get("remote_server") if exc.misc else None
            return cls(exc.code, exc.enhanced, exc.message, str(remote) if remote else None)
        return cls(451, (4, 0, 0), "Internal server error")

    def __str__(self) -> str:
        return f"{self.code} {'.'.join(map(str, self.enhanced))} {self.message}"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "code": self.code,
            "enhanced": list(self.enhanced),
            "message": self.message,
        }
        if self.remote is not None:
            doc["remote"] = self.remote
        return doc

    @classmethod
    def from_json(cls, raw: object) -> StoredError:
        d = _dict(raw, "error")
        code = _int(d, "code", 200, 599)
        enhanced = d.get("enhanced")
        if (
            not isinstance(enhanced, list)
            or len(enhanced) != 3
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in enhanced)
        ):
            raise CorruptEntry("error: enhanced must be three integers")
        enhanced_code = (enhanced[0], enhanced[1], enhanced[2])
        return cls(code, enhanced_code, _str(d, "message"), _opt_str(d, "remote"))


@dataclass(slots=True)
class Rcpt:
    """One recipient still to be delivered."""

    addr: str
    tries: int = 0
    last_error: StoredError | None = None
    #: A "delayed" DSN was handed over for this recipient (at most one).
    delay_notified: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "addr": self.addr,
            "tries": self.tries,
            "last_error": self.last_error.to_json() if self.last_error else None,
            "delay_notified": self.delay_notified,
        }

    @classmethod
    def from_json(cls, raw: object) -> Rcpt:
        d = _dict(raw, "rcpt")
        error = d.get("last_error")
        return cls(
            addr=_str(d, "addr", empty=False),
            tries=_int(d, "tries", 0),
            last_error=None if error is None else StoredError.from_json(error),
            delay_notified=_bool(d, "delay_notified"),
        )


@dataclass(frozen=True, slots=True)
class Notice:
    """A DSN owed for one recipient and not yet handed to the bounce pipeline.

    Kept in the metadata until the hand-over succeeds, so a bounce
    pipeline that fails (or a crash) never loses the notice (the entry
    stays, docs/target-queue.md, "When a notice cannot be sent").
    """

    rcpt: str
    action: str
    #: The error that caused a failed or delayed notice; None for success.
    error: StoredError | None
    #: When the attempt this notice reports on ended (Unix time).
    at: float
    #: For "delayed": until when retries go on (Unix time).
    retry_until: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rcpt": self.rcpt,
            "action": self.action,
            "error": self.error.to_json() if self.error else None,
            "at": self.at,
            "retry_until": self.retry_until,
        }

    @classmethod
    def from_json(cls, raw: object) -> Notice:
        d = _dict(raw, "notice")
        action = _str(d, "action")
        if action not in Action.ALL:
            raise CorruptEntry(f"notice: unknown action {action!r}")
        error = d.get("error")
        until = d.get("retry_until")
        return cls(
            rcpt=_str(d, "rcpt", empty=False),
            action=action,
            error=None if error is None else StoredError.from_json(error),
            at=_float(d, "at"),
            retry_until=None if until is None else _float(d, "retry_until"),
        )


@dataclass(frozen=True, slots=True)
class FileSum:
    """Size and SHA-256 of a header or body file, checked before it is sent."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, raw: object, what: str) -> FileSum:
        d = _dict(raw, what)
        digest = _str(d, "sha256")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise CorruptEntry(f"{what}: sha256 is not 64 hex digits")
        return cls(_int(d, "size", 0), digest)


@dataclass(slots=True)
class Record:
    """One queued message (docs/target-queue.md, "On disk")."""

    id: str
    msg_id: str
    #: The envelope sender as the target got it (after rewriting); "" = null.
    sender: str
    #: The envelope sender exactly as the client gave it.
    original_sender: str
    rcpts: list[Rcpt]
    header: FileSum
    body: FileSum
    arrival: float
    smtp: SMTPOptions = field(default_factory=SMTPOptions)
    original_rcpts: dict[str, str] = field(default_factory=dict)
    rcpt_dsn: dict[str, RcptDSN] = field(default_factory=dict)
    quarantine: bool = False
    tls_not_required: bool = False
    dont_trace_sender: bool = False
    #: The client's EHLO name, for the DSN's Received-From-MTA; None for
    #: mail kittiwake made and for submission (whose client is not traced).
    client_helo: str | None = None
    first_attempt: float | None = None
    last_attempt: float | None = None
    notices: list[Notice] = field(default_factory=list)
    #: Failed hand-overs of the notices in `notices` so far (their retry delay).
    notice_tries: int = 0

    # -- views ----------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.header.size + self.body.size

    def meta(self, attempt_id: str) -> MsgMeta:
        """A fresh `MsgMeta` for one attempt: no connection, as for local mail."""
        return MsgMeta(
            id=attempt_id,
            smtp=replace(self.smtp),  # a copy: a target may change its own
            original_from=self.original_sender,
            original_rcpts=dict(self.original_rcpts),
            quarantine=self.quarantine,
            dont_trace_sender=self.dont_trace_sender,
            tls_not_required=self.tls_not_required,
            rcpt_dsn=dict(self.rcpt_dsn),
        )

    def dsn_for(self, rcpt: str) -> RcptDSN:
        """The RFC 3461 parameters of a final recipient (as `MsgMeta.dsn_for`)."""
        return self.rcpt_dsn.get(self.original(rcpt), _NO_DSN)

    def original(self, rcpt: str) -> str:
        """The address the client gave for final recipient `rcpt`."""
        return self.original_rcpts.get(rcpt, rcpt)

    # -- JSON -------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        doc = {
            "version": FORMAT_VERSION,
            "id": self.id,
            "msg_id": self.msg_id,
            "sender": self.sender,
            "original_sender": self.original_sender,
            "rcpts": [r.to_json() for r in self.rcpts],
            "notices": [n.to_json() for n in self.notices],
            "notice_tries": self.notice_tries,
            "original_rcpts": self.original_rcpts,
            "rcpt_dsn": {
                addr: {"notify": list(d.notify), "orcpt": list(d.orcpt) if d.orcpt else None}
                for addr, d in self.rcpt_dsn.items()
            },
            "smtp": {
                "size": self.smtp.size,
                "body": self.smtp.body,
                "smtputf8": self.smtp.smtputf8,
                "requiretls": self.smtp.requiretls,
                "auth": self.smtp.auth,
                "dsn_ret": self.smtp.dsn_ret,
                "dsn_envid": self.smtp.dsn_envid,
            },
            "quarantine": self.quarantine,
            "tls_not_required": self.tls_not_required,
            "dont_trace_sender": self.dont_trace_sender,
            "client_helo": self.client_helo,
            "arrival": self.arrival,
            "first_attempt": self.first_attempt,
            "last_attempt": self.last_attempt,
            "header": self.header.to_json(),
            "body": self.body.to_json(),
        }
        # One line, no indent: with `indent` json falls back to its pure-Python
        # encoder, several times slower, and this runs for every accepted
        # message (`kittiwake queue show --json` is the readable form).
        return json.dumps(doc, ensure_ascii=False, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, expected_id: str) -> Record:
        """Parse and check an `ID.meta` file; raise `CorruptEntry` if anything is off."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptEntry(f"metadata is not JSON: {exc}") from None
        d = _dict(doc, "metadata")
        if d.get("version") != FORMAT_VERSION:
            raise CorruptEntry(f"unknown metadata version {d.get('version')!r}")
        if _str(d, "id") != expected_id:
            raise CorruptEntry("metadata names another entry")
        rcpts = [Rcpt.from_json(r) for r in _list(d, "rcpts")]
        notices = [Notice.from_json(n) for n in _list(d, "notices")]
        if not rcpts and not notices:
            raise CorruptEntry("neither recipients nor notices")
        smtp = _dict(d.get("smtp"), "smtp")
        size = smtp.get("size")
        return cls(
            id=expected_id,
            msg_id=_str(d, "msg_id"),
            sender=_str(d, "sender"),
            original_sender=_str(d, "original_sender"),
            rcpts=rcpts,
            notices=notices,
            notice_tries=_int(d, "notice_tries", 0),
            header=FileSum.from_json(d.get("header"), "header"),
            body=FileSum.from_json(d.get("body"), "body"),
            arrival=_float(d, "arrival"),
            smtp=SMTPOptions(
                size=None if size is None else _int(smtp, "size", 0),
                body=_str(smtp, "body"),
                smtputf8=_bool(smtp, "smtputf8"),
                requiretls=_bool(smtp, "requiretls"),
                auth=_opt_str(smtp, "auth"),
                dsn_ret=_opt_str(smtp, "dsn_ret"),
                dsn_envid=_opt_str(smtp, "dsn_envid"),
            ),
            original_rcpts=_str_map(d, "original_rcpts"),
            rcpt_dsn={k: _rcpt_dsn(v) for k, v in _dict(d.get("rcpt_dsn"), "rcpt_dsn").items()},
            quarantine=_bool(d, "quarantine"),
            tls_not_required=_bool(d, "tls_not_required"),
            dont_trace_sender=_bool(d, "dont_trace_sender"),
            client_helo=_opt_str(d, "client_helo"),
            first_attempt=_opt_float(d, "first_attempt"),
            last_attempt=_opt_float(d, "last_attempt"),
        )


_NO_DSN = RcptDSN()


# --- strict readers ------------------------------------------------------------


def _dict(raw: object, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise CorruptEntry(f"{what}: expected an object")
    return raw


def _list(d: dict[str, Any], key: str) -> list[Any]:
    value = d.get(key)
    if not isinstance(value, list):
        raise CorruptEntry(f"{key}: expected a list")
    return value


def _str(d: dict[str, Any], key: str, *, empty: bool = True) -> str:
    value = d.get(key)
    if not isinstance(value, str) or (not empty and not value):
        raise CorruptEntry(f"{key}: expected a string")
    return value


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    return None if d.get(key) is None else _str(d, key)


def _int(d: dict[str, Any], key: str, low: int = 0, high: int | None = None) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise CorruptEntry(f"{key}: expected an integer of at least {low}")
    if high is not None and value > high:
        raise CorruptEntry(f"{key}: expected at most {high}")
    return value


def _float(d: dict[str, Any], key: str) -> float:
    value = d.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise CorruptEntry(f"{key}: expected a time")
    return float(value)


def _opt_float(d: dict[str, Any], key: str) -> float | None:
    return None if d.get(key) is None else _float(d, key)


def _bool(d: dict[str, Any], key: str) -> bool:
    value = d.get(key)
    if not isinstance(value, bool):
        raise CorruptEntry(f"{key}: expected true or false")
    return value


def _str_map(d: dict[str, Any], key: str) -> dict[str, str]:
    m = _dict(d.get(key), key)
    if not all(isinstance(v, str) for v in m.values()):
        raise CorruptEntry(f"{key}: expected strings")
    return dict(m)


def _rcpt_dsn(raw: object) -> RcptDSN:
    d = _dict(raw, "rcpt_dsn")
    notify = _list(d, "notify")
    if not all(isinstance(n, str) for n in notify):
        raise CorruptEntry("rcpt_dsn: notify must be strings")
    orcpt = d.get("orcpt")
    if orcpt is not None and (
        not isinstance(orcpt, list) or len(orcpt) != 2 or not all(isinstance(p, str) for p in orcpt)
    ):
        raise CorruptEntry("rcpt_dsn: orcpt must be [type, address]")
    return RcptDSN(tuple(notify), (orcpt[0], orcpt[1]) if orcpt else None)
