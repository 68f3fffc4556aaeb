"""AUTH on a session: the SASL exchange and what a failed guess costs.

The exchange itself is sans-IO (`protocol/sasl.py`); here the credentials
are checked through the endpoint's `Authenticator`, and each failure in a
session is answered after a growing delay, the fifth with `421` and a
closed connection, so a password cannot be guessed at line speed.

Across connections the endpoint's `AuthThrottle` counts failures per client
address and per user name (docs/auth.md, "Password guessing"). An attempt
from a locked address, or for a locked name, is not checked at all: it is
answered `454 4.7.0` after the same delay a wrong password gets, so neither
the reply nor its timing tells whether the password was right. When the
counters are in a shared store that cannot answer and the store fails
closed, the attempt is answered `454 4.7.0` at once, like a provider that
cannot decide.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kittiwake.auth.base import InvalidCredentials, TemporaryAuthFailure
from kittiwake.protocol import Auth, AuthLine, Reply
from kittiwake.protocol.sasl import INVALID, Challenge, Credentials, Done, Exchange, Step
from kittiwake.server.session_config import AUTH_MAX_FAILURES
from kittiwake.state.base import StoreUnavailable

if TYPE_CHECKING:
    from kittiwake.server.session import Session

AUTH_OK = Reply(235, (2, 0, 0), "Authentication succeeded")
AUTH_TEMPORARY = Reply(454, (4, 7, 0), "Temporary authentication failure")
AUTH_LOCKOUT = Reply(421, (4, 7, 0), "Too many authentication failures")
AUTH_THROTTLED = Reply(454, (4, 7, 0), "Too many failed authentication attempts, try again later")


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
        throttle = self.cfg.auth_throttle
        ip = self.session.peer_ip
        if throttle is not None:
            try:
                lockout = await throttle.check(ip, step.username)
            except StoreUnavailable:
                # A shared store that cannot say whether the client is
                # locked out, with fail_closed: as for a provider that
                # cannot decide (RFC 4954 §6; docs/state.md).
                self.cfg.metrics.auth("temporary")
                self.session.reply(AUTH_TEMPORARY)
                return
            if lockout is not None:
                # Fields in a fixed order, the address before the client's
                # text, so a log filter can anchor on it (docs/auth.md).
                self.cfg.log.info(
                    "authentication refused, locked out",
                    scope=lockout.scope,
                    src_ip=ip or "unix",
                    username=step.username,
                )
                self.cfg.metrics.auth("throttled")
                await self._auth_failed(AUTH_THROTTLED)
                return
        try:
            if authenticator is None or step.authzid_mismatch:
                raise InvalidCredentials("no provider, or authzid differs from authcid")
            account = await authenticator.verify(step.username, step.password)
        except TemporaryAuthFailure as exc:
            self.cfg.log.info(
                "authentication failed temporarily", username=step.username, reason=exc
            )
            self.cfg.metrics.auth("temporary")
            self.session.reply(AUTH_TEMPORARY)
            return
        except InvalidCredentials:
            self.cfg.log.info(
                "authentication failed",
                username=step.username,
                src_ip=ip or "unix",
                count=self.failures + 1,
            )
            if throttle is not None:
                await throttle.record_failure(ip, step.username, step.password)
            self.cfg.metrics.auth("failure")
            await self._auth_failed(INVALID)
            return
        if throttle is not None:
            await throttle.record_success(ip, step.username)
        # The name as the client sent it (docs/server.md, "Authentication").
        self.session.auth_user = step.username
        self.session.auth_password = step.password  # for `auth forward` only
        self.cfg.log.info(
            "authenticated", username=step.username, account=account, src_ip=self.session.peer_ip
        )
        self.cfg.metrics.auth("success")
        self.session.reply(AUTH_OK)

    async def _auth_failed(self, reply: Reply) -> None:
        """Answer a failure (`535`, or `454` when locked out) after the session's delay.

        Both kinds count towards the session's fifth-failure close, and both
        wait the same, so a locked-out guesser learns nothing from timing.
        """
        self.failures += 1
        n = self.failures
        # Answer what was already due, then make the guesser wait: the delay
        # is the same for an unknown user and a wrong password.
        await self.session.flush()
        await asyncio.sleep(self.cfg.auth_delay(n))
        if n >= AUTH_MAX_FAILURES:
            self.session.reply(AUTH_LOCKOUT)
            self.session.closing = True
        else:
            self.session.reply(reply)
