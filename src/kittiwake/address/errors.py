"""The ways an address can be unusable, and the one table of replies for them.

Its own module because every other part of the package raises these, and
the endpoint, the pipeline and the modules catch them. `REPLIES` below is
the only place the MAIL and RCPT replies for a bad address are written: the
protocol core answers syntax errors from it, the server answers the
SMTPUTF8 rule and normalisation failures from it (docs/address.md,
"Errors and replies").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from kittiwake.errors import EnhancedCode, SMTPError

if TYPE_CHECKING:
    from kittiwake.address.path import Address


#: Where the address came from: MAIL FROM (`sender`) or RCPT TO (`recipient`).
Role = Literal["sender", "recipient"]


# --- Errors --------------------------------------------------------------


class AddressError(ValueError):
    """An address is unusable; `reason` says why (for logs and operators)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def smtp_error(self, role: Role) -> SMTPError:
        """The reply for this failure at MAIL (`sender`) or RCPT (`recipient`).

        The client sees only the fixed text of `REPLIES`; `reason` goes to
        the log through `SMTPError.reason`.
        """
        for cls in type(self).__mro__:
            entry = REPLIES.get((cls, role))
            if entry is not None:
                code, enhanced, text = entry
                return SMTPError(code, enhanced, text, reason=self.reason)
        raise LookupError(f"no reply for {type(self).__name__} as {role}")  # pragma: no cover


class PathSyntaxError(AddressError):
    """The argument is not a path at all: a control character, no `@`, an
    unclosed `<`, a broken quoted string or source route, `<>` as a recipient."""


class MailboxSyntaxError(PathSyntaxError):
    """The path has the right shape, but its mailbox is not valid: a character
    no local part or domain may hold, an empty label, an address literal that
    is no IP address (`[300.1.1.1]`), a second unquoted `@`."""


class PathTooLong(PathSyntaxError):
    """A length limit is exceeded (docs/address.md, "Length limits")."""


class SMTPUTF8Required(AddressError):
    """The path is valid but non-ASCII, and the transaction did not say SMTPUTF8.

    Raised only after every syntax check passed; `address` holds the parse
    result when the parser raised it.
    """

    def __init__(self, reason: str, address: Address | None = None) -> None:
        super().__init__(reason)
        self.address = address


class NormalizationError(AddressError):
    """The address cannot be brought into a clean, lookup or storage form."""


# --- The replies -----------------------------------------------------------
#
# RFC 5321 §4.2.2 and RFC 3463: 501 is a syntax error in the argument; the
# enhanced code says what was wrong with it: 5.5.2 the command's syntax,
# 5.1.3/5.1.7 the recipient's/sender's mailbox syntax, 5.6.7 a non-ASCII
# address without SMTPUTF8 (RFC 6531 §3.7.4.1, §3.5), 5.1.2/5.1.7 a domain
# that cannot be normalised. RFC 5321 §4.5.3.1.10 names "501 Path too long".
# A more specific class is found first (`smtp_error` walks the class's MRO).

REPLIES: dict[tuple[type[AddressError], Role], tuple[int, EnhancedCode, str]] = {
    (PathSyntaxError, "sender"): (
        501, (5, 5, 2), "Was expecting MAIL arg syntax of FROM:<address>"
    ),
    (PathSyntaxError, "recipient"): (
        501, (5, 5, 2), "Was expecting RCPT arg syntax of TO:<address>"
    ),
    (MailboxSyntaxError, "sender"): (501, (5, 1, 7), "Bad sender address syntax"),
    (MailboxSyntaxError, "recipient"): (501, (5, 1, 3), "Bad recipient address syntax"),
    (PathTooLong, "sender"): (501, (5, 5, 2), "Path too long"),
    (PathTooLong, "recipient"): (501, (5, 5, 2), "Path too long"),
    (SMTPUTF8Required, "sender"): (550, (5, 6, 7), "SMTPUTF8 is required for non-ASCII senders"),
    (SMTPUTF8Required, "recipient"): (
        553, (5, 6, 7), "SMTPUTF8 is required for non-ASCII recipients"
    ),
    (NormalizationError, "sender"): (553, (5, 1, 7), "Unable to normalize the sender address"),
    (NormalizationError, "recipient"): (
        501, (5, 1, 2), "Unable to normalize the recipient address"
    ),
}  # fmt: skip
