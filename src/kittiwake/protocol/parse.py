"""The grammar of command arguments: where the path is, and ESMTP parameters.

Strategy: this module only finds the path inside a MAIL or RCPT argument and
reads the parameters after it; what a valid path is, and the reply for each
way it can be wrong, is `kittiwake.address`'s (one grammar, one reply table:
docs/address.md). Finding the path follows what clients in the field were
tested against (maddy's parser): angle brackets are optional, and without
them the path ends at the first space. A `>` or a space inside a quoted
local part does not end it. Errors are `ParseError`s carrying the reply, so
the connection can send it.
"""

from __future__ import annotations

import binascii

from kittiwake import address
from kittiwake.address import AddressError, PathSyntaxError, Role
from kittiwake.message.meta import RcptDSN
from kittiwake.message.xtext import decode_unitext, decode_xtext
from kittiwake.protocol import replies
from kittiwake.protocol.events import MailParams
from kittiwake.protocol.replies import Reply

MAX_UINT32 = 4294967295


class ParseError(Exception):
    """A client error with the reply that answers it."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _address_reply(exc: AddressError, role: Role) -> ParseError:
    error = exc.smtp_error(role)
    return ParseError(Reply(error.code, error.enhanced, error.message))


def split_path(text: str) -> tuple[str, str]:
    """Cut the path off the front of a MAIL/RCPT argument: (content, rest).

    With `<`, the content runs to the `>` that closes it; without, to the
    first space or tab. Quoted strings (with their backslash escapes) are
    skipped over whole. Raises `PathSyntaxError` for an unclosed `<` and
    for an empty path without brackets.
    """
    bracket = text.startswith("<")
    if '"' not in text:
        # No quoted local part, as nearly always: one search finds the end.
        if bracket:
            end = text.find(">")
            if end < 0:
                raise PathSyntaxError("unclosed '<'")
            return text[1:end], text[end + 1 :]
        end = len(text)
        for blank in " \t":
            found = text.find(blank, 0, end)
            if found >= 0:
                end = found
        if end == 0:
            raise PathSyntaxError("empty path")
        return text[:end], text[end:]
    start = i = 1 if bracket else 0
    n = len(text)
    quoted = False
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif bracket and c == ">":
            return text[start:i], text[i + 1 :]
        elif not bracket and c in " \t":
            break
        i += 1
    if bracket:
        raise PathSyntaxError("unclosed '<'")
    if i == 0:
        raise PathSyntaxError("empty path")
    return text[:i], text[i:]


def _path(args: str, role: Role) -> tuple[str, str]:
    """The path in internal form (`""` for `<>`) and the text after it."""
    try:
        content, rest = split_path(args.lstrip(" "))
        if role == "sender":
            parsed = address.parse_reverse_path(content, smtputf8=True)
        else:
            parsed = address.parse_forward_path(content, smtputf8=True)
    except AddressError as exc:
        raise _address_reply(exc, role) from None
    # The SMTPUTF8 rule is the server's to apply (address.clean_path): with
    # `defer_sender_reject` a sender's reply moves to the first RCPT.
    return str(parsed), rest


def split_params(text: str, err: Reply) -> list[tuple[str, str | None]]:
    """Whitespace-separated `KEY` or `KEY=VALUE`; keys upper-cased."""
    params: list[tuple[str, str | None]] = []
    for word in text.split():
        key, eq, value = word.partition("=")
        if eq and "=" in value:
            raise ParseError(err)
        if not key:
            raise ParseError(err)
        params.append((key.upper(), value if eq else None))
    return params


#: RFC 3461 §4.4: the ENVID value is at most 100 characters, §4.2: ORCPT 500.
MAX_ENVID = 100
MAX_ORCPT = 500
_NOTIFY_KINDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _dsn_error(key: str) -> ParseError:
    return ParseError(Reply(501, (5, 5, 4), f"Malformed {key} parameter value"))


def _once(seen: set[str], key: str, command: str) -> None:
    """RFC 3461 §4: a DSN parameter may appear once per command."""
    if key in seen:
        raise ParseError(Reply(501, (5, 5, 4), f"Duplicate {key} parameter in {command}"))
    seen.add(key)


def _parse_ret(value: str | None) -> str:
    ret = (value or "").upper()
    if ret not in ("FULL", "HDRS"):
        raise _dsn_error("RET")
    return ret


def _parse_envid(value: str | None) -> str:
    """ENVID: xtext of printable ASCII (RFC 3461 §4.4), kept decoded."""
    if not value or len(value) > MAX_ENVID:
        raise _dsn_error("ENVID")
    try:
        envid = decode_xtext(value)
    except ValueError:
        raise _dsn_error("ENVID") from None
    if not all(" " <= c <= "~" for c in envid):
        raise _dsn_error("ENVID")
    return envid


def _parse_notify(value: str | None) -> tuple[str, ...]:
    """NOTIFY: NEVER alone, or a list of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1)."""
    kinds = [k.upper() for k in (value or "").split(",")]
    if kinds == ["NEVER"]:
        return ("NEVER",)
    if not all(k in _NOTIFY_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise _dsn_error("NOTIFY")
    return tuple(k for k in ("SUCCESS", "FAILURE", "DELAY") if k in kinds)


def _parse_orcpt(value: str | None) -> tuple[str, str]:
    """ORCPT: `addr-type;xtext` (RFC 3461 §4.2), `utf-8` type per RFC 6533 §3."""
    addr_type, semi, encoded = (value or "").partition(";")
    if not semi or not encoded or not addr_type or len(value or "") > MAX_ORCPT:
        raise _dsn_error("ORCPT")
    if not all(c.isascii() and (c.isalnum() or c == "-") for c in addr_type):
        raise _dsn_error("ORCPT")
    try:
        if addr_type.lower() == "utf-8":
            original = decode_unitext(encoded)
        else:
            original = decode_xtext(encoded)
    except ValueError:
        raise _dsn_error("ORCPT") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in original):
        raise _dsn_error("ORCPT")
    return addr_type.lower(), original


_MAIL_PARAMS = Reply(501, (5, 5, 4), "Unable to parse MAIL ESMTP parameters")
_RCPT_PARAMS = Reply(501, (5, 5, 4), "Unable to parse RCPT ESMTP parameters")


def _not_offered(key: str) -> ParseError:
    """A DSN parameter where the extension is not offered (docs/protocol.md)."""
    return ParseError(Reply(504, (5, 5, 4), f"{key} is not implemented"))


def parse_mail(args: str, max_size: int, dsn: bool = True) -> tuple[str, MailParams]:
    """The argument of MAIL: `FROM:<path> [params]` (docs/protocol.md).

    `dsn`: whether RET and ENVID are taken (the DSN extension is offered).
    """
    if args[:5].upper() != "FROM:":
        raise _address_reply(PathSyntaxError("no FROM:"), "sender")
    mailbox, rest = _path(args[5:], "sender")
    size: int | None = None
    body = ""
    smtputf8 = requiretls = False
    auth: str | None = None
    ret: str | None = None
    envid: str | None = None
    seen: set[str] = set()
    for key, value in split_params(rest, _MAIL_PARAMS):
        if key == "SIZE":
            if not value or not value.isascii() or not value.isdigit() or int(value) > MAX_UINT32:
                raise ParseError(Reply(501, (5, 5, 4), "Unable to parse SIZE as an integer"))
            size = int(value)
            if max_size and size > max_size:
                raise ParseError(replies.SIZE_EXCEEDED_MAIL)
        elif key == "BODY":
            v = (value or "").upper()
            if v == "BINARYMIME":
                raise ParseError(Reply(504, (5, 5, 4), "BINARYMIME is not implemented"))
            if v not in ("7BIT", "8BITMIME"):
                raise ParseError(Reply(501, (5, 5, 4), "Unknown BODY value"))
            body = v
        elif key == "SMTPUTF8":
            smtputf8 = True
        elif key == "REQUIRETLS":
            requiretls = True
        elif key == "AUTH":
            auth = _parse_auth_param(value)
        elif key in ("RET", "ENVID") and not dsn:
            raise _not_offered(key)
        elif key == "RET":
            _once(seen, key, "MAIL")
            ret = _parse_ret(value)
        elif key == "ENVID":
            _once(seen, key, "MAIL")
            envid = _parse_envid(value)
        else:
            raise ParseError(Reply(500, (5, 5, 4), "Unknown MAIL FROM argument"))
    return mailbox, MailParams(size, body, smtputf8, requiretls, auth, ret, envid)


def _parse_auth_param(value: str | None) -> str:
    if value == "<>":
        return ""
    try:
        if not value:
            raise ValueError("empty")
        mailbox = decode_xtext(value)
    except ValueError:
        raise ParseError(Reply(500, (5, 5, 4), "Malformed AUTH parameter value")) from None
    local, at, domain = mailbox.rpartition("@")
    if not at or not local or not domain or any(c in mailbox for c in "<> \t"):
        raise ParseError(Reply(500, (5, 5, 4), "Malformed AUTH parameter mailbox"))
    return mailbox


def parse_rcpt(args: str, dsn: bool = True) -> tuple[str, RcptDSN | None]:
    """The argument of RCPT: `TO:<path> [params]` (docs/protocol.md).

    The RFC 3461 parameters come back as a `RcptDSN`, None when neither
    NOTIFY nor ORCPT was given.
    """
    if args[:3].upper() != "TO:":
        raise _address_reply(PathSyntaxError("no TO:"), "recipient")
    mailbox, rest = _path(args[3:], "recipient")
    notify: tuple[str, ...] = ()
    orcpt: tuple[str, str] | None = None
    seen: set[str] = set()
    for key, value in split_params(rest, _RCPT_PARAMS):
        if key in ("NOTIFY", "ORCPT") and not dsn:
            raise _not_offered(key)
        if key == "NOTIFY":
            _once(seen, key, "RCPT")
            notify = _parse_notify(value)
        elif key == "ORCPT":
            _once(seen, key, "RCPT")
            orcpt = _parse_orcpt(value)
        else:
            raise ParseError(Reply(500, (5, 5, 4), "Unknown RCPT TO argument"))
    return mailbox, RcptDSN(notify, orcpt) if seen else None


def valid_base64(text: str) -> bool:
    """SASL responses are base64; `=` alone stands for an empty response."""
    if text == "=":
        return True
    try:
        binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return True
