"""Submission header preprocessing (docs/submission.md).

A message from an authenticated user is a message the user's client wrote,
so before it leaves we make sure its header is one other servers will take:
a `Message-Id` and a `Date` are added when missing, and the address fields
and the date that are there must parse. The rules are maddy's, which are Go's
`net/mail` rules, so the same clients get the same answers from both
servers.

Strategy. Everything here is a pure function of the header (and the clock
and a random UUID for the fields we add): no I/O, nothing logged; a failure
is an `SMTPError` the session turns into the reply. All checks run before
anything is added, so a refused header is left exactly as it was; a passing
header gets at most two new fields on top and every original byte kept.

The grammars live in their own modules, shared with `check.authorize_sender`:
addresses and field values in `kittiwake.message.mailaddr`, dates in
`kittiwake.message.maildate`. This module only applies them in maddy's order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from kittiwake.errors import SMTPError
from kittiwake.message.header import Header
from kittiwake.message.mailaddr import (
    AddressSyntaxError,
    field_value,
    parse_address,
    parse_address_list,
)
from kittiwake.message.maildate import DateSyntaxError, format_date, parse_date

__all__ = ["prepare_submission_header"]


def _invalid(text: str, *, reason: str = "", **misc: object) -> SMTPError:
    misc["modifier"] = "submission_prepare"
    return SMTPError(554, (5, 6, 0), text, reason=reason, misc=misc)


def prepare_submission_header(
    header: Header, hostname_alabel: str, *, now: datetime | None = None
) -> None:
    """Apply the seven steps of docs/submission.md ("The steps") to `header`, in order.

    Raises the step's `SMTPError` (554) for the first failing step and then
    leaves `header` untouched. Otherwise adds, when missing,
    `Message-Id: <UUID@HOSTNAME>` (step 1) and `Date:` (step 7) on top, so
    the header reads `Date`, `Message-Id`, then the original fields byte for
    byte. Only the first field of each name counts; an empty one is absent
    (and is replaced by the one we add).
    `now` (default: the current time) dates a message that has no `Date`.
    """
    # 1. Message-Id. Made first, like maddy, but added only once all passed.
    message_id: str | None = None
    if not field_value(header, "Message-ID"):
        try:
            message_id = f"<{uuid.uuid4()}@{hostname_alabel}>"
        except (OSError, NotImplementedError) as exc:  # no randomness source
            raise SMTPError(
                554, (5, 0, 0), "Internal server error", reason=f"Message-ID generation: {exc}"
            ) from None

    # 2. From must be there.
    from_value = field_value(header, "From")
    if not from_value:
        raise _invalid("Message does not contains a From header field")

    # 3. Sender: exactly one address.
    sender = field_value(header, "Sender")
    if sender:
        try:
            parse_address(sender)
        except AddressSyntaxError as exc:
            raise _invalid("Invalid address in Sender", reason=str(exc), addr=sender) from None

    # 4. Recipient-ish fields: address lists.
    for name in ("To", "Cc", "Bcc", "Reply-To"):
        value = field_value(header, name)
        if value:
            try:
                parse_address_list(value)
            except AddressSyntaxError as exc:
                raise _invalid(f"Invalid address in {name}", reason=str(exc), addr=value) from None

    # 5. From: an address list.
    try:
        authors = parse_address_list(from_value)
    except AddressSyntaxError as exc:
        raise _invalid("Invalid address in From", reason=str(exc), addr=from_value) from None

    # 6. Several authors need a Sender (RFC 5322 §3.6.2).
    if len(authors) > 1 and not sender:
        raise _invalid("Missing Sender header field", **{"from": from_value})

    # 7. Date: must parse if present, else we date the message.
    date_value = field_value(header, "Date")
    new_date: str | None = None
    if date_value:
        try:
            parse_date(date_value)
        except DateSyntaxError as exc:
            raise _invalid("Malformed Date header", reason=str(exc), date=date_value) from None
    else:
        new_date = format_date(now if now is not None else datetime.now(UTC))

    # Prepending: Message-Id first, so Date ends up above it.
    if message_id is not None:
        _set_on_top(header, "Message-Id", message_id)
    if new_date is not None:
        _set_on_top(header, "Date", new_date)


def _set_on_top(header: Header, name: str, value: str) -> None:
    """Add `name: value` on top, replacing fields of that name (all empty ones).

    We add a field only when its first occurrence is missing or empty; an
    empty one (and any later one) is removed, as maddy's `Header.Set` does,
    so the message does not end up with two `Date` or `Message-ID` fields
    (RFC 5322 §3.6 allows one).
    """
    key = name.lower()
    header.fields[:] = [f for f in header.fields if f.name.lower() != key]
    header.add(name, value, folded=False)
