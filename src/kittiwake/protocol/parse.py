"""The grammar of command arguments: paths and ESMTP parameters.

Strategy: parsing follows what maddy's engine (go-smtp) accepts, since that
is what clients in the field were tested against (spec/smtp-endpoint.md
§8.1): angle brackets optional, source routes skipped, quoted local parts
unquoted, the domain taken up to white space or `>`. On top of it kittiwake
refuses control bytes and unclosed brackets (settled question 3), because a
path with a CR or NUL in it can only be an attack on whatever reads it next.
Errors are `ParseError`s carrying the reply, so the connection can send it.
"""

from __future__ import annotations

import binascii

from kittiwake.protocol import replies
from kittiwake.protocol.events import MailParams
from kittiwake.protocol.replies import Reply

MAX_UINT32 = 4294967295


class ParseError(Exception):
    """A client error with the reply that answers it."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


_LOCAL_FORBIDDEN = frozenset('()<>[]:;\\,"@ \t')


def _has_control(text: str) -> bool:
    return any(c < " " or c == "\x7f" or "\udc80" <= c <= "\udcff" for c in text)


def parse_path(text: str, *, allow_null: bool, allow_postmaster: bool) -> tuple[str, str]:
    """Parse a MAIL/RCPT path at the start of `text`; return (address, rest).

    `address` is `""` for the null path and `local@domain` otherwise (quotes
    and escapes of a quoted local part removed). Raises ValueError.
    """
    pos = 0
    n = len(text)
    bracket = text.startswith("<")
    if bracket:
        pos = 1
        if text.startswith(">", pos):
            if not allow_null:
                raise ValueError("null path not allowed")
            return "", text[pos + 1 :]
        if text.startswith("@", pos):  # source route <@a,@b:user@dom> is skipped
            colon = text.find(":", pos)
            if colon < 0:
                raise ValueError("unterminated source route")
            pos = colon + 1
    # local part
    if text.startswith('"', pos):
        pos += 1
        chars = []
        while True:
            if pos >= n:
                raise ValueError("unterminated quoted local part")
            c = text[pos]
            if c == "\\":
                if pos + 1 >= n:
                    raise ValueError("unterminated quoted local part")
                chars.append(text[pos + 1])
                pos += 2
                continue
            pos += 1
            if c == '"':
                break
            chars.append(c)
        local = "".join(chars)
    else:
        start = pos
        while pos < n and text[pos] not in _LOCAL_FORBIDDEN:
            pos += 1
        local = text[start:pos]
    if not text.startswith("@", pos):
        # RFC 5321 §4.5.1: <postmaster> without a domain must be accepted.
        if (
            allow_postmaster
            and bracket
            and local.lower() == "postmaster"
            and text.startswith(">", pos)
        ):
            if _has_control(local):
                raise ValueError("control character in path")
            return local, text[pos + 1 :]
        raise ValueError("missing domain")
    pos += 1
    start = pos
    while pos < n and text[pos] not in " \t>":
        pos += 1
    domain = text[start:pos]
    if not local or not domain:
        raise ValueError("empty local part or domain")
    if bracket:
        if not text.startswith(">", pos):
            raise ValueError("unclosed '<'")
        pos += 1
    address = f"{local}@{domain}"
    if _has_control(address):
        raise ValueError("control character in path")
    return address, text[pos:]


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


def decode_xtext(value: str) -> str:
    """RFC 3461 §4 xtext: `+XX` hex escapes; raise ValueError when malformed."""
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            hx = value[i + 1 : i + 3]
            if len(hx) != 2 or not all(h in "0123456789ABCDEFabcdef" for h in hx):
                raise ValueError("bad xtext escape")
            out.append(chr(int(hx, 16)))
            i += 3
            continue
        if not "!" <= c <= "~" or c == "=":
            raise ValueError("bad xtext character")
        out.append(c)
        i += 1
    return "".join(out)


_MAIL_SYNTAX = Reply(501, (5, 5, 2), "Was expecting MAIL arg syntax of FROM:<address>")
_RCPT_SYNTAX = Reply(501, (5, 5, 2), "Was expecting RCPT arg syntax of TO:<address>")
_MAIL_PARAMS = Reply(501, (5, 5, 4), "Unable to parse MAIL ESMTP parameters")
_RCPT_PARAMS = Reply(501, (5, 5, 4), "Unable to parse RCPT ESMTP parameters")


def parse_mail(args: str, max_size: int) -> tuple[str, MailParams]:
    """The argument of MAIL: `FROM:<path> [params]` (spec §8.1)."""
    if args[:5].upper() != "FROM:":
        raise ParseError(_MAIL_SYNTAX)
    try:
        address, rest = parse_path(args[5:].lstrip(" "), allow_null=True, allow_postmaster=False)
    except ValueError:
        raise ParseError(_MAIL_SYNTAX) from None
    size: int | None = None
    body = ""
    smtputf8 = requiretls = False
    auth: str | None = None
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
        elif key in ("RET", "ENVID"):
            raise ParseError(Reply(504, (5, 5, 4), f"{key} is not implemented"))
        else:
            raise ParseError(Reply(500, (5, 5, 4), "Unknown MAIL FROM argument"))
    return address, MailParams(size, body, smtputf8, requiretls, auth)


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


def parse_rcpt(args: str) -> str:
    """The argument of RCPT: `TO:<path> [params]` (spec §9)."""
    if args[:3].upper() != "TO:":
        raise ParseError(_RCPT_SYNTAX)
    try:
        address, rest = parse_path(args[3:].lstrip(" "), allow_null=False, allow_postmaster=True)
    except ValueError:
        raise ParseError(_RCPT_SYNTAX) from None
    for key, _ in split_params(rest, _RCPT_PARAMS):
        if key in ("NOTIFY", "ORCPT"):
            raise ParseError(Reply(504, (5, 5, 4), f"{key} is not implemented"))
        raise ParseError(Reply(500, (5, 5, 4), "Unknown RCPT TO argument"))
    return address


def valid_base64(text: str) -> bool:
    """SASL responses are base64; `=` alone stands for an empty response."""
    if text == "=":
        return True
    try:
        binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return True
