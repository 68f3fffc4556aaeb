"""`check.authorize_sender`: may the authenticated user send as this address?

    check.authorize_sender {
        user_to_email identity      # user -> addresses, domains or "*"
        prepare_email identity      # address -> canonical address(es)
        check_header yes
        unauth_action reject
        no_match_action reject
        malformed_action reject     # default: whatever err_action says
        err_action reject
        auth_normalize auto
        from_normalize auto
    }

Algorithm (docs/checks.md, "How an address is judged"), for an address E
and the session's raw authentication identity U:

1. no U: `unauth_action` (530 5.7.0);
2. E' = from_normalize(E), U' = auth_normalize(U); a failure is an
   `err_action` (553 5.1.7, resp. 535 5.7.8);
3. P = prepare_email's values for E' (none found: [E']); A = user_to_email's
   values for U'; a lookup failure is an `err_action` (454 4.7.0);
4. E is authorised if some p in P and a in A have a == p, a == domain(p)
   or a == "*" - plain string comparison, so table values must already be in
   normalised form; else `no_match_action` (553 5.7.0).

The sender stage checks MAIL FROM. The body stage (with `check_header`)
checks the header: exactly one From address, read with the same grammar as
submission uses (`kittiwake.message.mailaddr`); the message passes if that
address is authorised, or else a different Sender address is; otherwise it
gets `no_match_action`. A From or Sender that cannot be used is a
`malformed_action`. Messages kittiwake generates itself (no connection)
are not checked.

maddy documents `malformed_action` but its code refuses the directive and
uses `err_action` for malformed fields. We accept it, and without it
fall back to `err_action`, so a maddy configuration behaves the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kittiwake.address import NORMALIZERS, get_normalizer, split
from kittiwake.checks.base import (
    OK,
    CheckAction,
    CheckResult,
    CheckState,
    CheckStateBase,
    action_directive,
)
from kittiwake.config.directives import Directives
from kittiwake.errors import EnhancedCode, SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.message.mailaddr import (
    AddressSyntaxError,
    field_value,
    parse_address,
    parse_address_list,
)
from kittiwake.module import Module, register
from kittiwake.tables.base import Table, lookup_all

__all__ = ["AuthorizeSender"]

NAME = "check.authorize_sender"
REJECT = CheckAction("reject")


def _failure(code: int, enhanced: EnhancedCode, text: str, reason: str = "") -> CheckResult:
    """An unjudged failure; the configured action decides what it does."""
    return CheckResult(reason=SMTPError(code, enhanced, text, check_name=NAME, reason=reason))


def _authorised(prepared: Sequence[str], allowed: Sequence[str]) -> bool:
    """Whether a value of `allowed` is one of the addresses, its domain, or `*`.

    Raises `NormalizationError` for a prepared address without `@` (the
    policy cannot be evaluated: the caller answers 454). A bare `postmaster`
    has no domain and so matches only itself or `*` (maddy would also let an
    empty table value match it).
    """
    wanted = set(allowed)
    for address in prepared:
        _, domain = split(address)
        if address in wanted or "*" in wanted or (domain and domain in wanted):
            return True
    return False


@register(NAME)
class AuthorizeSender(Module):
    """The module: configuration and the authorisation of one address."""

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        self.check_header = cfg.boolean("check_header", default=True)
        # None means `identity`: every key is its own (single) value.
        self.prepare_email: Table | None = cfg.module("prepare_email", Table, "table")
        self.user_to_email: Table | None = cfg.module("user_to_email", Table, "table")
        self.unauth_action = cfg.custom("unauth_action", action_directive, REJECT)
        self.no_match_action = cfg.custom("no_match_action", action_directive, REJECT)
        self.err_action = cfg.custom("err_action", action_directive, REJECT)
        malformed: CheckAction | None = cfg.custom("malformed_action", action_directive, None)
        self.malformed_action = malformed if malformed is not None else self.err_action
        self.auth_normalize: Callable[[str], str] = get_normalizer(
            cfg.enum("auth_normalize", NORMALIZERS, "auto")
        )
        self.from_normalize: Callable[[str], str] = get_normalizer(
            cfg.enum("from_normalize", NORMALIZERS, "auto")
        )
        cfg.finish()

    async def check_state(self, meta: MsgMeta) -> CheckState:
        return _State(self, meta)

    async def authorize(self, meta: MsgMeta, user: str, email: str) -> CheckResult:
        """Steps 1-4 of the module docstring for one address; OK if authorised."""
        if not user:
            return self.unauth_action.apply(_failure(530, (5, 7, 0), "Authentication required"))
        try:
            email_norm = self.from_normalize(email)
        except ValueError as exc:
            return self.err_action.apply(
                _failure(553, (5, 1, 7), "Unable to normalize sender address", str(exc))
            )
        try:
            user_norm = self.auth_normalize(user)
        except ValueError as exc:
            return self.err_action.apply(
                _failure(535, (5, 7, 8), "Unable to normalize authorization username", str(exc))
            )
        try:
            prepared: list[str] = []
            if self.prepare_email is not None:
                prepared = await lookup_all(self.prepare_email, email_norm)
            if not prepared:
                prepared = [email_norm]
            allowed = [user_norm]
            if self.user_to_email is not None:
                allowed = await lookup_all(self.user_to_email, user_norm)
            self.log.debug(
                "authorization lookup",
                msg_id=meta.id,
                user=user_norm,
                prepared=prepared,
                allowed=allowed,
            )
            ok = _authorised(prepared, allowed)
        except Exception as exc:  # a table failed, or its answer is unusable
            return self.err_action.apply(
                _failure(454, (4, 7, 0), "Internal error during policy check", repr(exc))
            )
        if not ok:
            return self.no_match_action.apply(
                _failure(553, (5, 7, 0), "Unauthorized use of sender address")
            )
        return OK

    def malformed(self, text: str, reason: str = "") -> CheckResult:
        return self.malformed_action.apply(_failure(550, (5, 7, 0), text, reason))


class _State(CheckStateBase):
    """One message: MAIL FROM at the sender stage, From/Sender at the body stage."""

    def __init__(self, check: AuthorizeSender, meta: MsgMeta) -> None:
        self.check = check
        self.meta = meta

    def _user(self) -> str | None:
        """The raw authentication identity; None for a locally generated message."""
        conn = self.meta.conn
        if conn is None:
            self.check.log.info("skipping locally generated message", msg_id=self.meta.id)
            return None
        return conn.auth_user or ""

    async def check_sender(self, mail_from: str) -> CheckResult:
        user = self._user()
        if user is None:
            return OK
        return await self.check.authorize(self.meta, user, mail_from)

    async def check_body(self, header: Header, body: Buffer) -> CheckResult:
        check = self.check
        if not check.check_header:
            return OK
        user = self._user()
        if user is None:
            return OK
        from_value = field_value(header, "From")
        if not from_value:
            return check.malformed("Missing From header")
        try:
            authors = parse_address_list(from_value)
        except AddressSyntaxError as exc:
            return check.malformed("Malformed From header", str(exc))
        if not authors:
            return check.malformed("Malformed From header", "no address in From")
        if len(authors) > 1:
            return check.malformed("Multiple From addresses are not allowed")
        author = authors[0].address

        sender = ""
        sender_value = field_value(header, "Sender")
        if sender_value:
            try:
                sender = parse_address(sender_value).address
            except AddressSyntaxError as exc:
                return check.malformed("Malformed Sender header", str(exc))

        if (await check.authorize(self.meta, user, author)).reason is None:
            return OK
        if (
            sender
            and sender != author
            and (await check.authorize(self.meta, user, sender)).reason is None
        ):
            return OK
        return check.no_match_action.apply(
            _failure(553, (5, 7, 0), "Unauthorized use of sender address")
        )
