"""Choosing the source and destination block of an address (docs/pipeline.md).

One implementation of the matching rules, called by the message pipeline
for every message and by `kittiwake explain` (docs/cli.md), so that what
explain answers is what the server does: `source_in`/`destination_in`
tables in configuration order, then the exact address rule, then the
domain rule, then the default block ("Selecting a block"). A table whose
lookup fails is skipped; the caller is told, to log or to report it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from kittiwake.address import AddressError, normalize_address, split
from kittiwake.errors import SMTPError
from kittiwake.pipeline.config import DestinationBlock, RoutingConfig, SourceBlock
from kittiwake.tables.base import Table

__all__ = [
    "LookupFailed",
    "Match",
    "domain_of",
    "pick",
    "select_destination",
    "select_source",
]

B = TypeVar("B")

#: Told about a table lookup that failed (the table, the key, the error).
LookupFailed = Callable[[Table, str, Exception], None]


@dataclass(frozen=True, slots=True)
class Match(Generic[B]):
    """The block an address selected, and why.

    `how` is `table` (a `*_in` table has the key), `address` (an exact
    address rule), `domain` (a domain rule) or `default`; `key` is the
    lookup form that was compared.
    """

    block: B
    how: str
    key: str
    table: Table | None = None


async def pick(
    tables: Iterable[tuple[Table, B]],
    rules: Mapping[str, B],
    default: B,
    key: str,
    on_error: LookupFailed,
) -> Match[B]:
    """Tables, then the exact address, then the domain, then the default."""
    for table, block in tables:
        try:
            found = await table.lookup(key) is not None
        except Exception as exc:
            on_error(table, key, exc)
            continue
        if found:
            return Match(block, "table", key, table)
    by_address = rules.get(key)
    if by_address is not None:
        return Match(by_address, "address", key)
    by_domain = rules.get(domain_of(key))
    if by_domain is not None:
        return Match(by_domain, "domain", key)
    return Match(default, "default", key)


async def select_source(
    routing: RoutingConfig, mail_from: str, on_error: LookupFailed
) -> Match[SourceBlock]:
    """The source block of a sender (after the root modifiers)."""
    try:
        key = normalize_address(mail_from)
    except AddressError as exc:
        raise SMTPError(
            501, (5, 1, 7), "Unable to normalize the sender address", reason=exc.reason
        ) from None
    return await pick(routing.tables, routing.rules, routing.default, key, on_error)


async def select_destination(
    source: SourceBlock, rcpt: str, on_error: LookupFailed
) -> Match[DestinationBlock]:
    """The destination block of a recipient (after root and source modifiers)."""
    try:
        key = normalize_address(rcpt)
    except AddressError as exc:
        raise SMTPError(
            553, (5, 1, 2), "Unable to normalize the recipient address", reason=exc.reason
        ) from None
    return await pick(source.tables, source.rules, source.default, key, on_error)


def domain_of(key: str) -> str:
    """The domain of a lookup-form address; `""` for `<>` and bare postmaster."""
    if not key:
        return ""
    try:
        return split(key)[1]
    except AddressError:
        return ""
