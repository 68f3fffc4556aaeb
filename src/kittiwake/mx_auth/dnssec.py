"""`mx_auth { dnssec }`: an MX from a DNSSEC-validated answer gets MX level `dnssec`.

The target looks the MX records up; `MXCandidate.dnssec` says the answer
came with the AD bit. That bit is only believed from a validating
resolver on this host (`Resolver.ad_trusted`, docs/mx-auth.md): from
anywhere else it crossed the network unprotected and anyone on the path
could have set it. With an untrusted resolver the policy raises nothing,
and says so once at configuration time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kittiwake import log
from kittiwake.config.node import Node
from kittiwake.dns import Resolver
from kittiwake.mx_auth.base import MXCandidate, MXLevel, PolicyReport, TLSLevel, TLSState
from kittiwake.mx_auth.config import policy

if TYPE_CHECKING:
    from kittiwake.container import Container

__all__ = ["DNSSEC", "build_dnssec"]

_log = log.get("mx_auth/dnssec")


class DNSSEC:
    """The configured `dnssec` policy; stateless, so it is its own `DomainPolicy`."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def for_domain(self, domain: str) -> DNSSEC:
        return self

    @property
    def report(self) -> PolicyReport | None:
        return None  # RFC 8460 has no policy type for a validated MX alone

    async def check_mx(self, mx: MXCandidate, level: MXLevel) -> MXLevel:
        if mx.dnssec and self.resolver.ad_trusted:
            return max(level, MXLevel.DNSSEC)
        return level

    async def check_conn(
        self, mx: MXCandidate, mx_level: MXLevel, tls: TLSState, level: TLSLevel
    ) -> TLSLevel:
        return level


@policy("dnssec")
def build_dnssec(node: Node, container: Container) -> DNSSEC:
    """`dnssec` or `dnssec { }`: no settings."""
    if node.args or node.block:
        raise node.error("dnssec: the policy offers no settings")
    result = DNSSEC(container.resolver)
    if not result.resolver.ad_trusted:
        _log.warn(
            "dnssec: the DNS resolver is not on this host, so its DNSSEC answers cannot be "
            "trusted; no MX will reach level dnssec (docs/mx-auth.md)",
            file=node.file,
            line=node.line,
        )
    return result
