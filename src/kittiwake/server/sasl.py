"""AUTH on a session: the SASL exchange and what a failed guess costs.

The exchange itself is sans-IO (`protocol/sasl.py`); here the credentials
are checked through the endpoint's `Authenticator`, and each failure in a
session is answered after a growing delay, the fifth with `421` and a
closed connection, so a password cannot be guessed at line speed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kittiwake.auth.base import InvalidCredentials, TemporaryAuthFailure
from kittiwake.protocol import Auth, AuthLine, Reply
from kittiwake.protocol.sasl import INVALID, Challenge, Credentials, Done, Exchange, Step
from kittiwake.server.session_config import AUTH_MAX_FAILURES

if TYPE_CHECKING:
    from kittiwake.server.session import Session

AUTH_OK = Reply(235, (2, 0, 0), "Authentication succeeded")
AUTH_TEMPORARY = Reply(454, (4, 7, 0), "Temporary authentication failure")
AUTH_LOCKOUT = Reply(421, (4, 7, 0), "Too many authentication failures")


class SASLHandling:
    """AUTH: the SASL exchange, checking credentials, slowing guessers down."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.cfg = session.cfg
        self.exchange: Exchange | None = None
        self.failures = 0

    async def on_auth(self, event: Auth) -> None:
        self.exchange = Exchange(event.mechanism, event.initial)
        await self._step(self.exchange.start())

    async def on_auth_line(self, event: AuthLine) -> None:
        assert self.exchange is not None
        await self._step(self.exchange.respond(event.line))

    async def _step(self, step: Step) -> None:
        if isinstance(step, Challenge):
            self.session.reply(Reply(334, None, step.text))
            return
        self.exchange = None
        if isinstance(step, Done):
            self.session.reply(step.reply)
            return
        await self._check_credentials(step)

    async def _check_credentials(self, step: Credentials) -> None:
        authenticator = self.cfg.authenticator
        try:
            if authenticator is None or step.authzid_mismatch:
                raise InvalidCredentials("no provider, or authzid differs from authcid")
            account = await authenticator.verify(step.username, step.password)
        except TemporaryAuthFailure as exc:
            self.cfg.log.info(
                "authentication failed temporarily", username=step.username, reason=exc
            )
            self.session.reply(AUTH_TEMPORARY)
            return
        except InvalidCredentials:
            await self._auth_failed(step.username)
            return
        # The name as the client sent it (docs/server.md, "Authentication").
        self.session.auth_user = step.username
        self.cfg.log.info(
            "authenticated", username=step.username, account=account, src_ip=self.session.peer_ip
        )
        self.session.reply(AUTH_OK)

    async def _auth_failed(self, username: str) -> None:
        self.failures += 1
        n = self.failures
        self.cfg.log.info(
            "authentication failed",
            username=username,
            src_ip=self.session.peer_ip or "unix",
            count=n,
        )
        # Answer what was already due, then make the guesser wait: the delay
        # is the same for an unknown user and a wrong password.
        await self.session.flush()
        await asyncio.sleep(self.cfg.auth_delay(n))
        if n >= AUTH_MAX_FAILURES:
            self.session.reply(AUTH_LOCKOUT)
            self.session.closing = True
        else:
            self.session.reply(INVALID)
