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


_MAIL_PARAMS = Reply(501, (5, 5, 4), "Unable to parse MAIL ESMTP parameters")
_RCPT_PARAMS = Reply(501, (5, 5, 4), "Unable to parse RCPT ESMTP parameters")


def parse_mail(args: str, max_size: int) -> tuple[str, MailParams]:
    """The argument of MAIL: `FROM:<path> [params]` (docs/protocol.md)."""
    if args[:5].upper() != "FROM:":
        raise _address_reply(PathSyntaxError("no FROM:"), "sender")
    mailbox, rest = _path(args[5:], "sender")
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
    return mailbox, MailParams(size, body, smtputf8, requiretls, auth)


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
    """The argument of RCPT: `TO:<path> [params]` (docs/protocol.md)."""
    if args[:3].upper() != "TO:":
        raise _address_reply(PathSyntaxError("no TO:"), "recipient")
    mailbox, rest = _path(args[3:], "recipient")
    for key, _ in split_params(rest, _RCPT_PARAMS):
        if key in ("NOTIFY", "ORCPT"):
            raise ParseError(Reply(504, (5, 5, 4), f"{key} is not implemented"))
        raise ParseError(Reply(500, (5, 5, 4), "Unknown RCPT TO argument"))
    return mailbox


def valid_base64(text: str) -> bool:
    """SASL responses are base64; `=` alone stands for an empty response."""
    if text == "=":
        return True
    try:
        binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return True
