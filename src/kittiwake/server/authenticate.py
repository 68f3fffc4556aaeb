"""Checking a user name and password for an endpoint (docs/server.md, "Authentication").

The name is normalised (`auth_map_normalize`), optionally mapped
(`auth_map`), then offered to each provider in order; the first that
accepts wins. A provider that could not decide makes the whole attempt
temporary, unless a later provider accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kittiwake.auth.base import InvalidCredentials, PasswordAuth, TemporaryAuthFailure
from kittiwake.log import Logger
from kittiwake.tables.base import Table


@dataclass
class Authenticator:
    providers: list[PasswordAuth]
    normalize: Callable[[str], str]
    auth_map: Table | None
    log: Logger

    async def verify(self, username: str, password: str) -> str:
        """The mapped account name on success; raises an AuthError otherwise."""
        if not password:
            # Refused before any provider is asked (docs/server.md, "Authentication").
            raise InvalidCredentials("empty password")
        try:
            name = self.normalize(username)
        except ValueError:
            raise InvalidCredentials("user name cannot be normalised") from None
        if self.auth_map is not None:
            try:
                mapped = await self.auth_map.lookup(name)
            except Exception as exc:
                self.log.error("auth_map lookup failed", err=exc)
                raise TemporaryAuthFailure("auth_map lookup failed") from exc
            if mapped is None:
                raise InvalidCredentials("not in auth_map")
            name = mapped
        temporary: Exception | None = None
        for provider in self.providers:
            try:
                await provider.auth_plain(name, password)
            except InvalidCredentials:
                continue
            except TemporaryAuthFailure as exc:
                temporary = exc
                continue
            except Exception as exc:
                self.log.error("authentication provider failed", err=exc)
                temporary = exc
                continue
            return name
        if temporary is not None:
            raise TemporaryAuthFailure(str(temporary))
        raise InvalidCredentials("no provider accepted the credentials")
