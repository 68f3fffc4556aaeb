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
4. every policy's `check_conn` judges the connection (`TLSState`), and may
   raise the TLS level (DANE) or refuse (next MX);
5. a REQUIRETLS message (RFC 8689 §4.2.1) needs TLS `AUTHENTICATED` and an
   MX level of at least `MTASTS`, and an MX that advertises REQUIRETLS
   unless `relaxed_requiretls` lets the flag drop.

Every MX that answered, or that a policy refused before the dial, is
given to the TLS report recorder as one `TLSAttempt` (RFC 8460 §4.3
result types; an MX that could not be reached at all had no TLS to
report): how the negotiation ended, or the failure a
policy named when it refused (in `SMTPError.misc["tlsrpt_result"]`, else
"validation-failure"), before the dial or after. A REQUIRETLS refusal is
the message's own demand, not a failure of the domain's policy: the
attempt is recorded as the negotiation went. No usable MX: `No usable MXs,
last err: ...`, `451 4.4.0` when the last failure was temporary, else
`550 5.4.0`; except that when a REQUIRETLS demand was what refused the
MX hosts, the message gets that refusal (`550 5.7.30`) itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kittiwake.dns import Resolver
from kittiwake.errors import SMTPError
from kittiwake.limits import Limits, Ticket
from kittiwake.log import Logger
from kittiwake.mx_auth.base import (
    DomainPolicy,
    MXCandidate,
    MXLevel,
    PolicyReport,
    TLSLevel,
    TLSState,
)
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
        reports = tuple(r for r in (p.report for p in policies) if r is not None)
        last: SMTPError | None = None
        requiretls_refusal: SMTPError | None = None
        for mx in candidates:
            try:
                return await self._try_mx(mx, policies, reports, requiretls, msg_id)
            except SMTPError as exc:
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
        raise SMTPError(
            451 if temporary else 550,
            (4, 4, 0) if temporary else (5, 4, 0),
            f"No usable MXs, last err: {last.message}",
            reason=last.reason,
            misc=dict(last.misc),
        )

    async def _try_mx(
        self,
        mx: MXCandidate,
        policies: Sequence[DomainPolicy],
        reports: tuple[PolicyReport, ...],
        requiretls: bool,
        msg_id: str,
    ) -> MXConn:
        mx_level = MXLevel.NONE
        try:
            for policy in policies:
                mx_level = max(mx_level, await policy.check_mx(mx, mx_level))
        except SMTPError as exc:
            # Refused before any dial: a policy failure all the same (RFC 8460 §4.3).
            self.record(
                TLSAttempt(
                    domain=mx.domain,
                    result=_policy_result(exc),
                    policies=reports,
                    receiving_mx=mx.host,
                    detail=exc.reason or exc.message,
                )
            )
            raise
        addresses = await host_addresses(
            self.resolver, mx.host, force_ipv4=self.settings.force_ipv4
        )
        ticket = await self.limits.take_scoped("mx", mx.host) if self.limits else None
        try:
            opened, address = await self._dial_any(mx, addresses, reports)
            level = opened.level
            try:
                for policy in policies:
                    level = max(level, await policy.check_conn(mx, mx_level, opened.state, level))
            except SMTPError as exc:
                self._record(mx, opened, reports, _policy_result(exc), exc.reason or exc.message)
                await opened.client.quit()
                raise
            authenticated = level >= TLSLevel.AUTHENTICATED
            tls_ok = authenticated or (opened.state.tls and not reports)
            result = "success" if tls_ok else opened.result
            # REQUIRETLS is the message's demand, not the domain's policy: the
            # report says how the negotiation went, whatever the message needs.
            self._record(mx, opened, reports, result, opened.state.error)
            if requiretls:
                try:
                    self._check_requiretls(mx, opened.client, mx_level, level)
                except SMTPError:
                    await opened.client.quit()
                    raise
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
        return conn

    def _check_requiretls(
        self, mx: MXCandidate, client: SMTPClient, mx_level: MXLevel, level: TLSLevel
    ) -> None:
        """RFC 8689 §4.2.1: the levels REQUIRETLS demands, and the MX's support."""
        why = ""
        if level < TLSLevel.AUTHENTICATED:
            why = f"TLS to {mx.host} is {level.name.lower()}, not authenticated"
        elif mx_level < MXLevel.MTASTS:
            why = f"MX {mx.host} is not authenticated (MTA-STS or DNSSEC)"
        elif not client.capabilities.requiretls and not self.settings.relaxed_requiretls:
            why = f"{mx.host} does not offer REQUIRETLS"
        if why:
            raise SMTPError(
                550, REQUIRETLS_FAILED, "REQUIRETLS: TLS requirements not met", reason=why
            )

    def _record(
        self,
        mx: MXCandidate,
        opened: _Opened,
        reports: tuple[PolicyReport, ...],
        result: str,
        detail: str,
    ) -> None:
        self.record(
            TLSAttempt(
                domain=mx.domain,
                result=result,
                policies=reports,
                sending_ip=opened.client.local_address,
                receiving_mx=mx.host,
                receiving_ip=opened.state.address,
                helo=opened.client.helo_name,
                detail=detail,
            )
        )

    async def _dial_any(
        self, mx: MXCandidate, addresses: list[str], reports: tuple[PolicyReport, ...]
    ) -> tuple[_Opened, str]:
        """The first address of `mx` that gives an SMTP session."""
        last: SMTPError | None = None
        for address in addresses:
            try:
                return await self._open(mx, address, reports), address
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

    async def _open(
        self, mx: MXCandidate, address: str, reports: tuple[PolicyReport, ...]
    ) -> _Opened:
        """Dial one address and get the best TLS it allows (the fallbacks above)."""
        client = await self._session(mx, address, verify=True)
        if not client.capabilities.starttls:
            state = TLSState(address, tls=False, error="STARTTLS not offered")
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
        return _Opened(client, TLSState(address, tls=False, error=error), TLSLevel.NONE, result)

    @staticmethod
    def _tls_opened(
        client: SMTPClient, address: str, *, verified: bool, error: str, result: str
    ) -> _Opened:
        tls = client.ssl_object
        cert = tls.getpeercert(binary_form=True) if tls is not None else None
        cipher = tls.cipher() if tls is not None else None
        state = TLSState(
            address,
            tls=True,
            verified=verified,
            error=error,
            peer_cert=cert,
            # Python's ssl gives the chain only from 3.13 (get_unverified_chain).
            peer_chain=_chain(tls) or ((cert,) if cert else ()),
            version=(tls.version() or "") if tls is not None else "",
            cipher=cipher[0] if cipher else "",
        )
        level = TLSLevel.AUTHENTICATED if verified else TLSLevel.ENCRYPTED
        return _Opened(client, state, level, result)


def _policy_result(error: SMTPError) -> str:
    """The RFC 8460 result type a policy's refusal names (`misc["tlsrpt_result"]`).

    A policy that does not name one gets "validation-failure", the general
    type (RFC 8460 §4.3.2.1).
    """
    named = error.misc.get("tlsrpt_result")
    return named if isinstance(named, str) and named in RESULT_TYPES else "validation-failure"


def _chain(tls: object) -> tuple[bytes, ...]:
    """The chain the peer sent, leaf first, where the ssl module can say (3.13+)."""
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is None:
        return ()
    try:
        chain = getter()
    except (ValueError, OSError):
        return ()
    out: list[bytes] = []
    for cert in chain or ():
        # 2 is _ssl.ENCODING_DER (X509_FILETYPE_ASN1).
        der = cert.public_bytes(2) if hasattr(cert, "public_bytes") else cert
        if isinstance(der, bytes):
            out.append(der)
    return tuple(out)
