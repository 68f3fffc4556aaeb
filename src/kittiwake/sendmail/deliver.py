"""One SMTP or LMTP transaction with the local server, and the sendmail exit status it ends with.

Strategy: a command-line program may block, so this is Python's `smtplib`
(one connection, one transaction) rather than the server's asyncio client.
Two things `smtplib` does not do are done here: SMTP over a Unix socket
(`_UnixSMTP`), and LMTP's one reply per accepted recipient after the
content (RFC 2033 §4.2; `smtplib.LMTP.data` reads only the first).

The exit status follows sendmail's `sysexits.h` codes, so scripts that
check them keep working (docs/sendmail.md, "Exit status"): a temporary
refusal anywhere is `EX_TEMPFAIL` (75) and, before the content, nothing is
sent (the transaction is reset), so running the command again is safe; a
recipient refused for good is `EX_NOUSER` (67), the others still get the
message; no server to talk to is `EX_UNAVAILABLE` (69).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from kittiwake.sendmail.endpoint import Target

__all__ = [
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_NOINPUT",
    "EX_NOUSER",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "Outcome",
    "Submission",
    "deliver",
]

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78

#: Seconds any one read or write with the server may take.
TIMEOUT = 120.0


@dataclass
class Submission:
    """What to hand over, and how to introduce ourselves."""

    sender: str
    rcpts: list[str]
    data: bytes  # CRLF line ends, not dot-stuffed
    hostname: str  # for EHLO
    eight_bit: bool = False
    smtputf8: bool = False  # an address is not ASCII
    auth: tuple[str, str] | None = None  # user name, password


@dataclass
class Outcome:
    """The exit status and what to tell the user on stderr."""

    status: int
    messages: list[str] = field(default_factory=list)


class _UnixSMTP(smtplib.SMTP):
    """SMTP over a Unix socket: `smtplib` only knows it for LMTP."""

    def __init__(self, path: str, *, local_hostname: str, timeout: float) -> None:
        self._path = path
        super().__init__("localhost", 25, local_hostname=local_hostname, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        return sock


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split("\n"))


def _open(target: Target, hostname: str, timeout: float) -> smtplib.SMTP:
    if target.path:
        if target.protocol == "lmtp":
            return smtplib.LMTP(target.path, local_hostname=hostname, timeout=timeout)
        return _UnixSMTP(target.path, local_hostname=hostname, timeout=timeout)
    cls = smtplib.LMTP if target.protocol == "lmtp" else smtplib.SMTP
    return cls(target.host, target.port, local_hostname=hostname, timeout=timeout)


def deliver(targets: Sequence[Target], job: Submission, *, timeout: float = TIMEOUT) -> Outcome:
    """Hand `job` to the first target that answers; the exit status and messages."""
    unreachable: list[str] = []
    for target in targets:
        try:
            conn = _open(target, job.hostname, timeout)
        except smtplib.SMTPConnectError as exc:  # it answered, but not with 220
            status = EX_TEMPFAIL if 400 <= exc.smtp_code < 500 else EX_UNAVAILABLE
            return Outcome(status, [f"{target}: {exc.smtp_code} {_text(exc.smtp_error)}"])
        except (OSError, smtplib.SMTPException) as exc:
            unreachable.append(f"{target}: {_reason(exc)}")
            continue
        try:
            return _transaction(conn, target, job)
        except smtplib.SMTPServerDisconnected as exc:
            return Outcome(EX_TEMPFAIL, [f"{target}: connection lost: {_reason(exc)}"])
        except TimeoutError:
            return Outcome(EX_TEMPFAIL, [f"{target}: no answer within {timeout:g} seconds"])
        except OSError as exc:
            return Outcome(EX_TEMPFAIL, [f"{target}: {_reason(exc)}"])
        finally:
            conn.close()
    if not targets:
        return Outcome(EX_UNAVAILABLE, ["no endpoint to hand the message to (docs/sendmail.md)"])
    return Outcome(EX_UNAVAILABLE, ["cannot reach the mail server: " + "; ".join(unreachable)])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _class(code: int) -> int:
    return code // 100


def _transaction(conn: smtplib.SMTP, target: Target, job: Submission) -> Outcome:
    """EHLO (STARTTLS, AUTH), MAIL, RCPT..., DATA; QUIT. Raises only for a lost connection."""
    try:
        conn.ehlo_or_helo_if_needed()
        if job.auth is not None:
            _authenticate(conn, target, job.auth)
    except smtplib.SMTPResponseException as exc:
        return _refused(exc.smtp_code, exc.smtp_error, f"{target}: ", EX_UNAVAILABLE)
    except smtplib.SMTPNotSupportedError as exc:
        return Outcome(EX_UNAVAILABLE, [f"{target}: {exc}"])
    options: list[str] = []
    if job.eight_bit and conn.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
    if job.smtputf8:
        if not conn.has_extn("smtputf8"):
            return Outcome(EX_DATAERR, [f"{target}: non-ASCII addresses need SMTPUTF8"])
        options.append("SMTPUTF8")
    code, reply = conn.mail(job.sender, options)
    if _class(code) != 2:
        return _refused(code, reply, f"sender <{job.sender}>: ", EX_UNAVAILABLE)
    accepted: list[str] = []
    outcome = Outcome(EX_OK)
    for rcpt in job.rcpts:
        code, reply = conn.rcpt(rcpt)
        if _class(code) == 2:
            accepted.append(rcpt)
        else:
            _add(outcome, _refused(code, reply, f"<{rcpt}>: ", EX_NOUSER))
    if outcome.status == EX_TEMPFAIL or not accepted:
        # Nothing sent: running the command again later sends it once.
        conn.rset()
        _quit(conn)
        return outcome
    lmtp = target.protocol == "lmtp"
    replies = _data(conn, job.data, len(accepted) if lmtp else 1)
    for rcpt, (final, text) in zip(accepted if lmtp else [""], replies, strict=True):
        if _class(final) != 2:
            who = f"<{rcpt}>: " if rcpt else ""
            _add(outcome, _refused(final, text, who, EX_NOUSER if who else EX_DATAERR))
    _quit(conn)
    return outcome


def _data(conn: smtplib.SMTP, data: bytes, count: int) -> list[tuple[int, bytes | str]]:
    """The `count` replies to the content: one per accepted recipient (LMTP), or one."""
    try:
        first = conn.data(data)
    except smtplib.SMTPDataError as exc:  # DATA itself refused
        return [(exc.smtp_code, exc.smtp_error)] * count
    return [first, *(conn.getreply() for _ in range(count - 1))]


def _authenticate(conn: smtplib.SMTP, target: Target, auth: tuple[str, str]) -> None:
    """STARTTLS when offered (certificates checked unless the server is on this host), AUTH."""
    if conn.has_extn("starttls"):
        context = ssl.create_default_context()
        if target.loopback:
            # Only this host is between us and the server; its certificate is
            # often self-signed (the embedded default makes one).
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn.starttls(context=context)
        conn.ehlo()
    conn.login(*auth)


def _refused(code: int, reply: bytes | str, who: str, permanent: int) -> Outcome:
    status = EX_TEMPFAIL if _class(code) == 4 else permanent
    return Outcome(status, [f"{who}{code} {_text(reply)}"])


def _add(outcome: Outcome, more: Outcome) -> None:
    """Combine: a temporary failure wins (the user should try again), then the first permanent."""
    outcome.messages.extend(more.messages)
    if more.status == EX_TEMPFAIL or outcome.status == EX_OK:
        outcome.status = more.status


def _quit(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        pass  # everything that mattered has its reply
