"""Reaching one destination domain: MX by MX, address by address, TLS if possible.

Strategy (docs/target-remote.md, "Connecting"): the MX hosts are tried in
the order `mx.py` gives. For each one:

1. every `mx_auth` policy's `check_mx` says how sure it is that the host is
   the domain's (the highest answer wins); a refusal skips the MX;
2. its addresses are dialled in turn (IPv6 first unless `force_ipv4`) on
   port 25, or `--debug.smtpport`; a refused or silent address moves on to
   the next one;
3. greeting and EHLO; when STARTTLS is offered it is used, with the
   certificate checked against the MX host name (RFC 7672 §1.3 explains
   why the name is the MX's, not the domain's). Opportunistic TLS (RFC
   7435) then prefers any encryption to none:
   * the certificate check failed: dial again and take TLS without the
     check (level `ENCRYPTED`);
   * the handshake failed otherwise: dial again and stay in plain text
     (level `NONE`);
   * the STARTTLS command itself was refused: this MX is given up;
4. every policy's `check_conn` judges the connection (`TLSState`, from
   `mx_auth.tlsinfo.tls_state`, the chain included), plain text too: that
   is how MTA-STS and DANE refuse a downgrade. A policy may raise the TLS
   level (DANE) or refuse (next MX);
5. a REQUIRETLS message (RFC 8689 §4.2.1) needs TLS `AUTHENTICATED` and an
   MX level of at least `MTASTS`, and an MX that advertises REQUIRETLS
   unless `relaxed_requiretls` lets the flag drop. A policy refusal of an
   MX that falls short of that too is a REQUIRETLS refusal.

Every MX that answered, or that a policy refused before the dial, is
given to the TLS report recorder as a `TLSAttempt` (RFC 8460 §4.3
result types; an MX that could not be reached at all had no TLS to
report), with the policies' reports as they stand after judging that MX
(DANE's names the MX's TLSA records). The result is how the negotiation
ended, or the failure a policy named when it refused (`misc[RESULT_TYPE]`;
`local_policy` names none: the negotiation's failure, else
"validation-failure"). A policy announced but unusable (an MTA-STS fetch
error: `PolicyReport.failure`) counts the attempt as that failure. A
REQUIRETLS refusal is the message's own demand, not a failure of the
domain's policy: the attempt is recorded as the negotiation went.

No usable MX: `No usable MXs, last err: ...`; its code is the last
refusal's when a policy refused (`451 4.7.5` for a DANE mismatch, ...),
else `451 4.4.0` when the last failure was temporary, `550 5.4.0` if not;
except that when a REQUIRETLS demand refused an MX, the message gets that
refusal (`550 5.7.30`) itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kittiwake import metrics
from kittiwake.dns import Resolver
from kittiwake.errors import SMTPError
from kittiwake.limits import Limits, Ticket
from kittiwake.log import Logger
from kittiwake.mx_auth.base import (
    RESULT_TYPE,
    DomainPolicy,
    MXCandidate,
    MXLevel,
    PolicyReport,
    TLSLevel,
    TLSState,
)
from kittiwake.mx_auth.tlsinfo import tls_state
from kittiwake.remote.mx import host_addresses, lookup_mx
from kittiwake.smtpclient.client import ClientSettings, SMTPClient
from kittiwake.smtpclient.endpoint import Endpoint
from kittiwake.smtpclient.errors import TLSHandshakeError
from kittiwake.tls.directive import ClientTLS
from kittiwake.tlsrpt import RESULT_TYPES, TLSAttempt

__all__ = [
    "REQUIRETLS_FAILED",
    "Connector",
    "DialSettings",
    "MXConn",
    "verify_result",
]

REQUIRETLS_FAILED = (5, 7, 30)
#: The RFC 8460 §4.3 policy type of an attempt no policy applied to.
NO_POLICY = "no-policy-found"
#: RFC 5321 §4.5.3.2.1: "Initial 220 Message: 5 Minutes".
GREETING_TIMEOUT = 300.0

#: OpenSSL X509_V_ERR_* codes -> the RFC 8460 §4.3.2 result type.
_VERIFY_RESULTS = {
    62: "certificate-host-mismatch",  # HOSTNAME_MISMATCH
    9: "certificate-expired",  # CERT_NOT_YET_VALID: outside its validity, as expired
    10: "certificate-expired",  # CERT_HAS_EXPIRED
    2: "certificate-not-trusted",  # UNABLE_TO_GET_ISSUER_CERT
    18: "certificate-not-trusted",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "certificate-not-trusted",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "certificate-not-trusted",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "certificate-not-trusted",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    27: "certificate-not-trusted",  # CERT_UNTRUSTED
}


def verify_result(code: int | None) -> str:
    """The RFC 8460 result type of a certificate check that failed with `code`."""
    return _VERIFY_RESULTS.get(code or 0, "validation-failure")


@dataclass(frozen=True, slots=True)
class DialSettings:
    """How `target.remote` dials and talks (one per module instance)."""

    hostname: str  # EHLO name, A-labels
    port: int = 25
    local_ip: str | None = None
    force_ipv4: bool = False
    tls: ClientTLS | None = None
    relaxed_requiretls: bool = True
    connect_timeout: float = 300.0
    command_timeout: float = 300.0
    submission_timeout: float = 300.0

    def client(self, *, verify: bool) -> ClientSettings:
        """The client settings of every MX connection (TLS is driven by `Connector`)."""
        return ClientSettings(
            hostname=self.hostname,
            starttls=False,  # driven here, with its fallbacks
            tls=self.tls,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            submission_timeout=self.submission_timeout,
            # Fixed, as in maddy: a slow greeting (tarpitting) is common.
            greeting_timeout=GREETING_TIMEOUT,
            local_ip=self.local_ip,
            verify=verify,
        )


@dataclass(eq=False)
class MXConn:
    """One connection to one MX host, with what is known about its security."""

    client: SMTPClient
    domain: str
    mx: MXCandidate
    address: str
    tls_level: TLSLevel
    mx_level: MXLevel
    #: Made with the domain's policies applied: only such a connection may
    #: serve another message from the pool.
    policed: bool = True
    transactions: int = 0  # messages sent over it (DATA accepted or not)
    #: The `mx` limits slot held while a delivery uses the connection.
    ticket: Ticket | None = field(default=None, repr=False)


class _Refused(Exception):
    """A policy refused this MX; `error` is its reply."""

    def __init__(self, error: SMTPError) -> None:
        super().__init__(str(error))
        self.error = error


class _GiveUp(Exception):
    """This MX cannot be used; do not try its other addresses."""

    def __init__(self, error: SMTPError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class _Opened:
    client: SMTPClient
    state: TLSState
    level: TLSLevel
    result: str  # the RFC 8460 result type of the TLS negotiation


class Connector:
    """Finds a usable connection for one destination domain."""

    def __init__(
        self,
        settings: DialSettings,
        resolver: Resolver,
        log: Logger,
        record: Callable[[TLSAttempt], None],
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.log = log
        self.record = record
        self.limits = limits

    async def connect(
        self,
        domain: str,
        policies: Sequence[DomainPolicy],
        *,
        requiretls: bool,
        msg_id: str,
    ) -> MXConn:
        """A connection to the first usable MX of `domain`; `SMTPError` if none is."""
        candidates = await lookup_mx(self.resolver, domain)
        last: SMTPError | None = None
        by_policy = False
        requiretls_refusal: SMTPError | None = None
        for mx in candidates:
            try:
                return await self._try_mx(mx, policies, requiretls, msg_id)
            except (SMTPError, _Refused) as failure:
                by_policy = isinstance(failure, _Refused)
                exc = failure.error if isinstance(failure, _Refused) else failure
                self.log.info(
                    "MX unusable",
                    msg_id=msg_id,
                    domain=domain,
                    mx=mx.host,
                    reply=str(exc),
                    reason=exc.reason,
                )
                last = exc
                if exc.enhanced == REQUIRETLS_FAILED:
                    requiretls_refusal = exc
        if requiretls_refusal is not None:
            raise requiretls_refusal
        assert last is not None  # lookup_mx never returns an empty list
        temporary = last.temporary
        code, enhanced = (451, (4, 4, 0)) if temporary else (550, (5, 4, 0))
        if by_policy:
            # A policy said why (docs/mx-auth.md): its code is the clearer one.
            code, enhanced = last.code, last.enhanced
        raise SMTPError(
            code,
            enhanced,
            f"No usable MXs, last err: {last.message}",
            reason=last.reason,
            misc=dict(last.misc),
        )

    async def _try_mx(
        self,
        mx: MXCandidate,
        policies: Sequence[DomainPolicy],
        requiretls: bool,
        msg_id: str,
    ) -> MXConn:
        """One MX: its policy checks, a dial, TLS, the connection checks.

        A policy's refusal comes out as `_Refused` (so the domain's error
        can keep its code); a REQUIRETLS message whose levels fall short
        anyway gets the REQUIRETLS refusal instead, which is permanent.
        """
        mx_level = MXLevel.NONE
        try:
            for policy in policies:
                mx_level = max(mx_level, await policy.check_mx(mx, mx_level))
        except SMTPError as exc:
            # Refused before any dial: a policy failure all the same (RFC 8460 §4.3).
            self._record(
                mx, None, _reports(policies), _policy_result(exc), exc.reason or exc.message
            )
            if requiretls and mx_level < MXLevel.MTASTS:
                raise _requiretls_error(f"MX {mx.host} refused: {exc.message}") from None
            raise _Refused(exc) from None
        addresses = await host_addresses(
            self.resolver, mx.host, force_ipv4=self.settings.force_ipv4
        )
        ticket = await self.limits.take_scoped("mx", mx.host) if self.limits else None
        try:
            opened, address = await self._dial_any(mx, addresses)
            level = opened.level
            try:
                for policy in policies:
                    level = max(level, await policy.check_conn(mx, mx_level, opened.state, level))
            except SMTPError as exc:
                result = _policy_result(exc, opened.result)
                self._record(mx, opened, _reports(policies), result, exc.reason or exc.message)
                await opened.client.quit()
                why = self._requiretls_problem(mx, opened.client, mx_level, level)
                if requiretls and why:
                    raise _requiretls_error(f"{why}; {exc.message}") from None
                raise _Refused(exc) from None
            reports = _reports(policies)
            # Usable published policies ask for an authenticated peer (RFC 8460
            # §4.3); without one, any TLS is what opportunistic TLS hopes for.
            demanding = any(not r.failure for r in reports)
            tls_ok = level >= TLSLevel.AUTHENTICATED or (opened.state.tls and not demanding)
            result = "success" if tls_ok else opened.result
            # REQUIRETLS is the message's demand, not the domain's policy: the
            # report says how the negotiation went, whatever the message needs.
            self._record(mx, opened, reports, result, opened.state.error)
            if requiretls:
                why = self._requiretls_problem(mx, opened.client, mx_level, level)
                if why:
                    await opened.client.quit()
                    raise _requiretls_error(why)
        except BaseException:
            if ticket is not None:
                await ticket.release()
            raise
        self.log.debug(
            "connected to MX",
            msg_id=msg_id,
            domain=mx.domain,
            mx=mx.host,
            address=address,
            tls=level.name.lower(),
            mx_level=mx_level.name.lower(),
        )
        conn = MXConn(opened.client, mx.domain, mx, address, level, mx_level, ticket=ticket)
        tls_level, mx_name = level.name.lower(), mx_level.name.lower()
        metrics.current().remote_connection(self.log.name, tls_level, mx_name)
        return conn

    def _requiretls_problem(
        self, mx: MXCandidate, client: SMTPClient, mx_level: MXLevel, level: TLSLevel
    ) -> str:
        """RFC 8689 §4.2.1: why the levels or the MX fall short of REQUIRETLS ("" if not)."""
        if level < TLSLevel.AUTHENTICATED:
            return f"TLS to {mx.host} is {level.name.lower()}, not authenticated"
        if mx_level < MXLevel.MTASTS:
            return f"MX {mx.host} is not authenticated (MTA-STS or DNSSEC)"
        if not client.capabilities.requiretls and not self.settings.relaxed_requiretls:
            return f"{mx.host} does not offer REQUIRETLS"
        return ""

    def _record(
        self,
        mx: MXCandidate,
        opened: _Opened | None,
        reports: tuple[PolicyReport, ...],
        result: str,
        detail: str,
    ) -> None:
        """Give the attempt to the TLS report recorder (docs/tls-report.md).

        A policy whose report has a `failure` (announced but not usable, e.g.
        an MTA-STS fetch error, or in `testing` mode letting through what it
        would refuse) counts the attempt as that failure; the other
        policies count it as it went.
        """
        failed = tuple(r for r in reports if r.failure)
        usable = tuple(r for r in reports if not r.failure)
        client = opened.client if opened is not None else None
        groups: list[tuple[tuple[PolicyReport, ...], str]] = [((r,), r.failure) for r in failed]
        groups.append((usable, result))
        for policies, outcome in groups:
            if policies or not failed:
                self.record(
                    TLSAttempt(
                        domain=mx.domain,
                        result=outcome,
                        policies=policies,
                        sending_ip=client.local_address if client is not None else "",
                        receiving_mx=mx.host,
                        receiving_ip=opened.state.address if opened is not None else "",
                        helo=client.helo_name if client is not None else "",
                        detail=detail,
                    )
                )

    async def _dial_any(self, mx: MXCandidate, addresses: list[str]) -> tuple[_Opened, str]:
        """The first address of `mx` that gives an SMTP session."""
        last: SMTPError | None = None
        for address in addresses:
            try:
                return await self._open(mx, address), address
            except _GiveUp as stop:
                raise stop.error from None
            except SMTPError as exc:
                self.log.debug(
                    "MX address unusable", mx=mx.host, address=address, reason=exc.reason
                )
                last = exc
        assert last is not None  # host_addresses never returns an empty list
        raise last

    async def _session(self, mx: MXCandidate, address: str, *, verify: bool) -> SMTPClient:
        endpoint = Endpoint("tcp", host=address, port=self.settings.port, name=mx.host)
        client = SMTPClient(endpoint, self.settings.client(verify=verify), self.log)
        await client.connect()
        return client

    async def _open(self, mx: MXCandidate, address: str) -> _Opened:
        """Dial one address and get the best TLS it allows (the fallbacks above)."""
        client = await self._session(mx, address, verify=True)
        if not client.capabilities.starttls:
            state = tls_state(address, None, error="STARTTLS not offered")
            return _Opened(client, state, TLSLevel.NONE, "starttls-not-supported")
        try:
            await client.starttls()
            return self._tls_opened(client, address, verified=True, error="", result="success")
        except TLSHandshakeError as exc:
            await client.quit()
            failure = exc
        except SMTPError as exc:  # STARTTLS refused: give this MX up
            await client.quit()
            raise _GiveUp(exc) from None
        result = verify_result(failure.verify_code)
        error = failure.reason
        if failure.verify_code is not None:
            self.log.info("certificate check failed, TLS without it", mx=mx.host, reason=error)
            client = await self._session(mx, address, verify=False)
            try:
                await client.starttls()
                return self._tls_opened(client, address, verified=False, error=error, result=result)
            except TLSHandshakeError as again:
                await client.quit()
                error = again.reason
            except SMTPError as exc:
                await client.quit()
                raise _GiveUp(exc) from None
        self.log.info("TLS failed, plain text", mx=mx.host, reason=error)
        client = await self._session(mx, address, verify=True)
        return _Opened(client, tls_state(address, None, error=error), TLSLevel.NONE, result)

    @staticmethod
    def _tls_opened(
        client: SMTPClient, address: str, *, verified: bool, error: str, result: str
    ) -> _Opened:
        # tls_state takes the whole chain the MX sent, which DANE-TA needs
        # (docs/mx-auth.md, "What Python's ssl cannot do for DANE-TA").
        state = tls_state(address, client.ssl_object, verified=verified, error=error)
        level = TLSLevel.AUTHENTICATED if verified else TLSLevel.ENCRYPTED
        return _Opened(client, state, level, result)


def _reports(policies: Sequence[DomainPolicy]) -> tuple[PolicyReport, ...]:
    """What the policies found, read after they judged the MX (DANE's is per MX).

    "no-policy-found" is left out: an attempt without policies is counted
    under it anyway (docs/tls-report.md), and it demands nothing.
    """
    found = (p.report for p in policies)
    return tuple(r for r in found if r is not None and r.policy_type != NO_POLICY)


def _requiretls_error(why: str) -> SMTPError:
    """RFC 8689 §4.2.1 makes it the message's failure, not the MX's: permanent."""
    return SMTPError(550, REQUIRETLS_FAILED, "REQUIRETLS: TLS requirements not met", reason=why)


def _policy_result(error: SMTPError, negotiated: str = "success") -> str:
    """The RFC 8460 result type a policy's refusal names (`misc[RESULT_TYPE]`).

    A policy that names none (`local_policy`) refused what the negotiation
    gave: its failure type if it had one, else "validation-failure", the
    general type (RFC 8460 §4.3.2.1).
    """
    named = error.misc.get(RESULT_TYPE)
    if isinstance(named, str) and named in RESULT_TYPES:
        return named
    return negotiated if negotiated != "success" else "validation-failure"
