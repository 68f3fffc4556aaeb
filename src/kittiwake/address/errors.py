"""The ways an address can be unusable, and the reply each one gets.

Its own module because every other part of the package raises these, and
the endpoint, the pipeline and the modules catch them: one place holds the
kinds of failure and the replies smtp-endpoint.md §8/§9 fix for them, so
the reply texts live here once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from kittiwake.errors import SMTPError

if TYPE_CHECKING:
    from kittiwake.address.path import Address

__all__ = [
    "AddressError",
    "NormalizationError",
    "PathSyntaxError",
    "PathTooLong",
    "Role",
    "SMTPUTF8Required",
]

Role = Literal["sender", "recipient"]


# --- Errors --------------------------------------------------------------


class AddressError(ValueError):
    """An address is unusable; `reason` says why (for logs and operators).

    Subclasses carry the replies smtp-endpoint.md fixes for their kind of
    failure; see `smtp_error`.
    """

    # role -> (code, enhanced code, text): filled in by each subclass.
    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {}

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def smtp_error(self, role: Role) -> SMTPError:
        """The reply for this failure in a MAIL (`sender`) or RCPT (`recipient`).

        The client sees only the spec's fixed text; `reason` goes to the log
        through `SMTPError.reason`.
        """
        code, enhanced, text = self._replies[role]
        return SMTPError(code, enhanced, text, reason=self.reason)


class PathSyntaxError(AddressError):
    """The path is not valid RFC 5321 syntax (spec README settled question 3)."""

    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {
        "sender": (501, (5, 5, 2), "Was expecting MAIL arg syntax of FROM:<address>"),
        "recipient": (501, (5, 5, 2), "Was expecting RCPT arg syntax of TO:<address>"),
    }


class PathTooLong(PathSyntaxError):
    """A length limit above is exceeded; RFC 5321 §4.5.3.1.10 "501 Path too long"."""

    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {
        "sender": (501, (5, 5, 2), "Path too long"),
        "recipient": (501, (5, 5, 2), "Path too long"),
    }


class SMTPUTF8Required(AddressError):
    """The path is valid but non-ASCII, and the transaction did not say SMTPUTF8.

    Raised only after every syntax check passed, and `address` holds the
    parse result, so an endpoint that defers the sender's rejection
    (`defer_sender_reject`, smtp-endpoint.md §8.3) can keep the address and
    answer with this error later.
    """

    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {
        "sender": (550, (5, 6, 7), "SMTPUTF8 is required for non-ASCII senders"),
        "recipient": (553, (5, 6, 7), "SMTPUTF8 is required for non-ASCII recipients"),
    }

    def __init__(self, reason: str, address: Address) -> None:
        super().__init__(reason)
        self.address = address


class NormalizationError(AddressError):
    """The address cannot be brought into a clean, lookup or storage form."""

    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {
        "sender": (553, (5, 1, 7), "Unable to normalize the sender address"),
        "recipient": (501, (5, 1, 2), "Unable to normalize the recipient address"),
    }
