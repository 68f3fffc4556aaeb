"""`auth.plain_separate`: who exists from tables, whose password from providers.

For operators: docs/auth.md, "auth.plain_separate".

```
auth.plain_separate {
    user file /etc/kittiwake/allowed_users    # repeatable, optional
    pass &local_authdb                        # repeatable
}
```

A user must be found in at least one `user` table (when there are any), then
the `pass` providers are tried in order and the first that accepts wins. The
user name is used as the endpoint passes it: the endpoint has already
normalised it (`auth_map_normalize`), and the module adds nothing (maddy's
documentation says otherwise, its code does the same as here).

Two deliberate differences from maddy, both about failing safely:

* With no `pass` provider maddy accepts *any* password for a user found in
  the tables (its loop over providers ends without an error). Here nobody
  is authenticated, and a warning at start-up says why.
* When no provider accepts, maddy returns the last provider's error. Here
  the attempt is temporary (454) if any provider could not decide, as the
  endpoint does across its own providers, so a user is not told their
  password is wrong because one backend was down.
"""

from __future__ import annotations

from kittiwake.auth.base import InvalidCredentials, PasswordAuth, TemporaryAuthFailure
from kittiwake.config.directives import Directives
from kittiwake.module import Module, register
from kittiwake.tables.base import Table


@register("auth.plain_separate")
class PlainSeparate(Module):
    """User existence from tables, password checks from other providers."""

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error("plain_separate: inline arguments are not used")
        # maddy's `debug` switch: our log level is global, so it is only accepted.
        cfg.boolean("debug", False)
        self.user_tables: list[Table] = cfg.modules("user", Table, "table")
        self.providers: list[PasswordAuth] = cfg.modules("pass", PasswordAuth, "auth")
        cfg.finish()
        if not self.providers:
            self.log.warn("no pass providers configured: every authentication will fail")

    async def _user_known(self, username: str) -> bool:
        """Whether some user table has the name (True when there are no tables)."""
        if not self.user_tables:
            return True
        for table in self.user_tables:
            if await table.lookup(username) is not None:
                return True
        return False

    async def auth_plain(self, username: str, password: str) -> None:
        try:
            known = await self._user_known(username)
        except Exception as exc:
            self.log.error("user table lookup failed", username=username, err=exc)
            raise TemporaryAuthFailure("user table lookup failed") from exc
        if not known:
            raise InvalidCredentials("user not found in tables")
        temporary: Exception | None = None
        for provider in self.providers:
            try:
                await provider.auth_plain(username, password)
            except InvalidCredentials:
                continue
            except TemporaryAuthFailure as exc:
                temporary = exc
            except Exception as exc:
                self.log.error("password provider failed", username=username, err=exc)
                temporary = exc
            else:
                return
        if temporary is not None:
            raise TemporaryAuthFailure(str(temporary)) from temporary
        raise InvalidCredentials("no password provider accepted the credentials")

    async def lookup(self, key: str) -> str | None:
        """As a table: "" when the user exists in the user tables; errors propagate."""
        return "" if await self._user_known(key) else None


__all__ = ["PlainSeparate"]
