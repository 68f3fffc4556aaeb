"""The table capability.

A table answers `lookup(key)` with a value or `None` (not found); an empty
string is a found value. Keys are compared exactly: callers normalise them.
Lookups are coroutines because some tables touch disk or a database, and a
lookup must never block the event loop; in-memory tables simply return.
A lookup that fails (database down, ...) raises; the caller decides whether
that skips the table or defers the message.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kittiwake.module import capability


@capability("table")
@runtime_checkable
class Table(Protocol):
    async def lookup(self, key: str) -> str | None: ...


@capability("table with several values per key")
@runtime_checkable
class MultiTable(Protocol):
    async def lookup_multi(self, key: str) -> list[str]: ...


@capability("mutable table")
@runtime_checkable
class MutableTable(Protocol):
    async def keys(self) -> list[str]: ...

    async def set_key(self, key: str, value: str) -> None: ...

    async def remove_key(self, key: str) -> None: ...


async def lookup_all(table: Table, key: str) -> list[str]:
    """Every value for `key` (empty = not found), whatever kind of table."""
    if isinstance(table, MultiTable):
        return await table.lookup_multi(key)
    value = await table.lookup(key)
    return [] if value is None else [value]
