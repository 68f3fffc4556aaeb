"""`auth.pass_table`: passwords checked against hashes kept in a table (docs/auth.md).

```
auth.pass_table local_authdb { table sql_table { driver sqlite3; dsn credentials.db; ... } }
auth pass_table file /etc/kittiwake/passwd      # inline: the arguments define the table
```

The table maps a user name, normalised with PRECIS UsernameCaseMapped (the
whole string, `@domain` included), to an entry `ALGO:REST` (see
`auth/hashing.py`). A maddy credentials database therefore works unchanged.

Strategy for verification: nothing about the outcome may show in the reply
*or its timing*. An unknown user costs one hash verification against a dummy
entry of the same algorithm and cost as the real entries (the cost class of
the last real entry seen, bcrypt cost 10 until then), so "no such user" and
"wrong password" take the same time. Hashing runs in a worker thread so the
event loop keeps serving other sessions meanwhile.

One deliberate difference from maddy: a table lookup that *fails* (database
down or locked) raises `TemporaryAuthFailure`, so the endpoint answers 454
instead of telling the user their password is wrong (maddy answers 535).

When the table is mutable (`table.sql_table`, `table.sql_query` with the
update queries), the module is also the user database `kittiwake creds`
manages.
"""

from __future__ import annotations

import asyncio

from kittiwake.address import NormalizationError, precis_casefold
from kittiwake.auth import hashing
from kittiwake.auth.base import InvalidCredentials, TemporaryAuthFailure
from kittiwake.config.directives import Directives
from kittiwake.errors import KittiwakeError
from kittiwake.module import Module, register
from kittiwake.tables.base import MutableTable, Table
from kittiwake.tables.static import StaticTable


class UserDBError(KittiwakeError):
    """A management operation (`kittiwake creds`) that could not be done."""


@register("auth.pass_table")
class PassTable(Module):
    """Password authentication over a table of hashes; also a table and a user DB."""

    table: Table

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            # `pass_table TABLE [ARGS] [{...}]`: everything after the module
            # name, block included, defines the table (as in maddy).
            self.table = self.container.module_from_args(
                cfg.node, self.inline_args, cfg.node.children, Table, "table"
            )
        else:
            table = cfg.module("table", Table, "table", required=True)
            assert table is not None  # required=True raises instead
            self.table = table
            cfg.finish()
        self._cost_class = hashing.DEFAULT_COST_CLASS
        self._dummies: dict[str, str] = {}
        if isinstance(self.table, StaticTable):
            # Password hashes written in the configuration: hidden like
            # passwords (an offline guesser needs no more).
            self.table.hide_values()

    # -- authentication ---------------------------------------------------------------

    async def auth_plain(self, username: str, password: str) -> None:
        try:
            key = precis_casefold(username)
        except NormalizationError:
            # Such a name can never have been stored (create_user normalises).
            raise InvalidCredentials("user name cannot be normalised") from None
        try:
            stored = await self.table.lookup(key)
        except Exception as exc:
            self.log.error("credentials lookup failed", username=key, err=exc)
            raise TemporaryAuthFailure("credentials lookup failed") from exc
        if stored is None:
            await self._verify_dummy(password)
            raise InvalidCredentials("unknown user")
        try:
            ok = await asyncio.to_thread(hashing.verify_password, password, stored)
        except hashing.HashFormatError as exc:
            # The entry is broken; retrying will not help, the operator must fix it.
            self.log.error("unusable credentials entry", username=key, reason=str(exc))
            raise InvalidCredentials("unusable credentials entry") from None
        cost = hashing.cost_class(stored)
        if cost is not None:
            self._cost_class = cost
        if not ok:
            raise InvalidCredentials("wrong password")

    async def _verify_dummy(self, password: str) -> None:
        """Spend what verifying a real entry would, and throw the result away."""
        cost = self._cost_class
        dummy = self._dummies.get(cost)
        if dummy is None:
            # Making a bcrypt dummy is itself one hash; this first time only,
            # the attempt costs two.
            dummy = await asyncio.to_thread(hashing.dummy_entry, cost)
            self._dummies[cost] = dummy
        await asyncio.to_thread(hashing.verify_password, password, dummy)

    # -- as a table ---------------------------------------------------------------------

    async def lookup(self, key: str) -> str | None:
        """The stored entry for the normalised `key`; errors propagate."""
        try:
            normalised = precis_casefold(key)
        except NormalizationError:
            return None
        return await self.table.lookup(normalised)

    # -- management (UserDB) ----------------------------------------------------------

    def _mutable(self) -> MutableTable:
        if not isinstance(self.table, MutableTable):
            raise UserDBError(
                f"{self.module_name}: table is not mutable, no management functionality available"
            )
        return self.table

    def _key(self, username: str, what: str) -> str:
        try:
            return precis_casefold(username)
        except NormalizationError as exc:
            raise UserDBError(f"{self.module_name}: {what} {username} (raw): {exc}") from None

    async def _exists(self, key: str, what: str) -> bool:
        try:
            return await self.table.lookup(key) is not None
        except Exception as exc:
            raise UserDBError(f"{self.module_name}: {what} {key}: {exc}") from exc

    async def _hash(self, key: str, what: str, password: str, scheme: str) -> str:
        try:
            return await asyncio.to_thread(hashing.hash_password, password, scheme)
        except ValueError as exc:
            raise UserDBError(f"{self.module_name}: {what} {key}: {exc}") from None

    async def _store(self, table: MutableTable, key: str, what: str, value: str) -> None:
        try:
            await table.set_key(key, value)
        except Exception as exc:
            raise UserDBError(f"{self.module_name}: {what} {key}: {exc}") from exc

    async def list_users(self) -> list[str]:
        table = self._mutable()
        try:
            return await table.keys()
        except Exception as exc:
            raise UserDBError(f"{self.module_name}: list users: {exc}") from exc

    async def create_user(
        self, username: str, password: str, *, scheme: str = hashing.DEFAULT_SCHEME
    ) -> None:
        """Store a new user; an existing one is an error, never overwritten."""
        table = self._mutable()
        if scheme not in hashing.SCHEMES:
            raise UserDBError(f"{self.module_name}: unknown hash function: {scheme}")
        key = self._key(username, "create user")
        if await self._exists(key, "create user"):
            raise UserDBError(f"{self.module_name}: credentials for {key} already exist")
        value = await self._hash(key, "create user", password, scheme)
        await self._store(table, key, "create user", value)

    async def set_user_password(self, username: str, password: str) -> None:
        """Replace a user's entry with a fresh bcrypt (cost 10) hash, as maddy does.

        Unlike maddy, an unknown user is an error: a typo in the name must
        not silently create a second account.
        """
        table = self._mutable()
        key = self._key(username, "set password")
        if not await self._exists(key, "set password"):
            raise UserDBError(f"{self.module_name}: no credentials for {key}")
        value = await self._hash(key, "set password", password, hashing.BCRYPT)
        await self._store(table, key, "set password", value)

    async def delete_user(self, username: str) -> None:
        """Remove a user; an unknown one is an error (maddy silently succeeds)."""
        table = self._mutable()
        key = self._key(username, "delete user")
        if not await self._exists(key, "delete user"):
            raise UserDBError(f"{self.module_name}: no credentials for {key}")
        try:
            await table.remove_key(key)
        except Exception as exc:
            raise UserDBError(f"{self.module_name}: delete user {key}: {exc}") from exc


__all__ = ["PassTable", "UserDBError"]
