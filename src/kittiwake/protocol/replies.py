"""SMTP replies: one value type, rendered in one place.

Every reply but the banner, the EHLO list, 354 and 334 carries an enhanced
status code (RFC 2034); `Reply` keeps `enhanced=None` for those four. Texts
are str; when the transaction did not negotiate SMTPUTF8, characters above
U+007F are replaced by `?` (RFC 6531 §3.7.4.1) so a reply never puts raw
UTF-8 on a 7-bit session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kittiwake.errors import EnhancedCode, SMTPError

#: C0 controls and DEL become `?` in reply text; CR and LF a space.
_UNPRINTABLE = {c: "?" for c in (*range(32), 127)} | {13: " ", 10: " "}


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: EnhancedCode | None
    text: str | tuple[str, ...]
    #: The rendered bytes of a one-line ASCII reply, kept after the first
    #: `render`: the constant replies (`354`, `250 ... queued`) are sent
    #: for every message. Not compared, not copied by `replace`.
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_error(cls, err: SMTPError, msg_id: str = "") -> Reply:
        """The reply for an SMTPError; the message ID is appended when known."""
        text = err.message + (f" (msg ID = {msg_id})" if msg_id else "")
        return cls(err.code, err.enhanced, text)

    @property
    def positive(self) -> bool:
        return self.code < 400

    def render(self, utf8: bool = False) -> bytes:
        wire = self._wire
        if wire is not None:
            return wire
        text = self.text
        if type(text) is str and text.isprintable():
            # Nearly every reply: one clean line, made in one go (a third of the time).
            e = self.enhanced
            if e is None:
                line = f"{self.code} {text}\r\n"
            else:
                line = f"{self.code} {e[0]}.{e[1]}.{e[2]} {text}\r\n"
            if text.isascii():  # the same bytes with or without SMTPUTF8
                wire = line.encode("ascii")
                object.__setattr__(self, "_wire", wire)
                return wire
            return line.encode("utf-8" if utf8 else "ascii", "replace")
        lines = (text,) if isinstance(text, str) else text or ("",)
        ecode = "" if self.enhanced is None else "{}.{}.{} ".format(*self.enhanced)
        last = len(lines) - 1
        out = []
        for i, line in enumerate(lines):
            # A reply line never carries a line break or another control
            # character: a check's text or an echoed client argument must not
            # be able to inject a reply or reach a terminal raw.
            clean = line if line.isprintable() else line.translate(_UNPRINTABLE)
            out.append(f"{self.code}{' ' if i == last else '-'}{ecode}{clean}\r\n")
        text = "".join(out)
        # "replace" also stands for bytes the client sent that were not UTF-8
        # (decoded as lone surrogates): they become `?`, never an exception.
        return text.encode("utf-8" if utf8 else "ascii", "replace")

    def __str__(self) -> str:
        return self.render(utf8=True).decode("utf-8").rstrip("\r\n")


# Replies the core produces itself (docs/protocol.md lists when).
BAD_SYNTAX = Reply(500, (5, 5, 2), "Error: bad syntax")
BAD_COMMAND = Reply(501, (5, 5, 2), "Bad command")
TOO_MANY_ERRORS = Reply(500, (5, 5, 1), "Too many errors. Quiting now")
TOO_MANY_JUNK = Reply(421, (4, 7, 0), "Too many commands without a message, closing")
LINE_TOO_LONG = Reply(500, (5, 4, 0), "Too long line, closing connection")
NOOP = Reply(250, (2, 0, 0), "I have successfully done nothing")
VRFY = Reply(252, (2, 5, 0), "Cannot VRFY user, but will accept message")
RSET = Reply(250, (2, 0, 0), "Session reset")
BYE = Reply(221, (2, 0, 0), "Bye")
NEED_GREETING = Reply(503, (5, 5, 1), "Please introduce yourself first.")
NOT_LMTP = Reply(500, (5, 5, 1), "This is not a LMTP server")
IS_LMTP = Reply(500, (5, 5, 1), "This is a LMTP server, use LHLO")
HELO_ARG = Reply(501, (5, 5, 2), "Domain/address argument required for HELO")
HELO_BAD_ARG = Reply(501, (5, 5, 2), "Invalid domain/address argument")
START_DATA = Reply(354, None, "Go ahead. End your data with <CR><LF>.<CR><LF>")
READY_TLS = Reply(220, (2, 0, 0), "Ready to start TLS")
REQUIRETLS_WITHOUT_TLS = Reply(530, (5, 7, 10), "REQUIRETLS needs TLS: use STARTTLS first")
ALREADY_TLS = Reply(503, (5, 5, 1), "Already running in TLS")
NO_TLS = Reply(502, (5, 5, 1), "TLS not supported")
MISSING_MAIL = Reply(503, (5, 5, 1), "Missing MAIL FROM command.")
MISSING_RCPT = Reply(503, (5, 5, 1), "Missing RCPT TO command.")
DATA_ARGS = Reply(501, (5, 5, 4), "DATA command should not have any arguments")
BDAT_CONTINUE = Reply(250, (2, 0, 0), "Continue")
QUEUED = Reply(250, (2, 0, 0), "OK: queued")
SIZE_EXCEEDED_MAIL = Reply(552, (5, 3, 4), "Max message size exceeded")


def not_implemented(verb: str) -> Reply:
    return Reply(502, (5, 5, 1), f"{verb} command not implemented")


def unrecognized(verb: str) -> Reply:
    return Reply(500, (5, 5, 2), f"Syntax errors, {verb} command unrecognized")


def during_transfer(verb: str) -> Reply:
    return Reply(503, (5, 5, 1), f"{verb} not allowed during message transfer")


def ehlo(greeting: str, capabilities: list[str]) -> Reply:
    """The EHLO/LHLO reply: no enhanced codes, first line `Hello ARG` (docs/protocol.md)."""
    return Reply(250, None, (f"Hello {greeting}", *capabilities))
