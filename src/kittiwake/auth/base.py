"""The authentication capability (docs/auth.md).

A provider answers `auth_plain(username, password)`: it returns on success,
raises `InvalidCredentials` for an unknown user or a wrong password (the
client gets `535 5.7.8`), and `TemporaryAuthFailure` when it could not
decide (database or helper unreachable: `454 4.7.0`, so nobody is told
their password is wrong while the backend is down). Providers whose users
can be managed (`kittiwake creds`) also implement `UserDB`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kittiwake.errors import KittiwakeError
from kittiwake.module import capability


class AuthError(KittiwakeError):
    """Authentication did not succeed."""


class InvalidCredentials(AuthError):
    """Unknown user or wrong password; the same to the client, on purpose."""


class TemporaryAuthFailure(AuthError):
    """The provider could not check the credentials right now."""


@capability("authentication provider")
@runtime_checkable
class PasswordAuth(Protocol):
    async def auth_plain(self, username: str, password: str) -> None: ...


@capability("user database")
@runtime_checkable
class UserDB(Protocol):
    """Management used by `kittiwake creds`."""

    async def list_users(self) -> list[str]: ...

    async def create_user(
        self, username: str, password: str, *, scheme: str = "bcrypt"
    ) -> None: ...

    async def set_user_password(self, username: str, password: str) -> None: ...

    async def delete_user(self, username: str) -> None: ...
