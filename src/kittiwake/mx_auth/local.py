"""`mx_auth { local_policy { min_tls_level L; min_mx_level L } }`: our own minimums.

Runs after every other policy (mx_auth/config.py orders it last) and
judges the levels they reached: an MX below `min_mx_level` is refused
before dialling, a connection below `min_tls_level` after the TLS
attempt. Both refusals are temporary (451): the levels depend on DNS and
on the peer's certificate, either of which may be repaired, and a
message kept in the queue can still go out then.

Defaults: `min_tls_level encrypted`, `min_mx_level none` (a plain
connection is refused, an unverified certificate is accepted);
`local_policy off` sets both to `none`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.errors import SMTPError
from kittiwake.mx_auth.base import MXCandidate, MXLevel, PolicyReport, TLSLevel, TLSState
from kittiwake.mx_auth.config import policy

if TYPE_CHECKING:
    from kittiwake.container import Container

__all__ = ["LocalPolicy", "build_local_policy"]

TLS_BELOW = "TLS is not available or unauthenticated but required"
MX_BELOW = "Failed to establish the MX record authenticity"

_TLS_LEVELS = {level.name.lower(): level for level in TLSLevel}
_MX_LEVELS = {level.name.lower(): level for level in MXLevel}


class LocalPolicy:
    """The configured minimums; stateless, so it is its own `DomainPolicy`."""

    def __init__(
        self, min_tls: TLSLevel = TLSLevel.ENCRYPTED, min_mx: MXLevel = MXLevel.NONE
    ) -> None:
        self.min_tls = min_tls
        self.min_mx = min_mx

    async def for_domain(self, domain: str) -> LocalPolicy:
        return self

    @property
    def report(self) -> PolicyReport | None:
        return None  # a local rule, nothing the destination published

    async def check_mx(self, mx: MXCandidate, level: MXLevel) -> MXLevel:
        if level < self.min_mx:
            raise SMTPError(
                451,
                (4, 7, 0),
                MX_BELOW,
                reason=f"MX level {level.name.lower()}, {self.min_mx.name.lower()} required",
                misc={"mx_level": level.name.lower()},
            )
        return level

    async def check_conn(
        self, mx: MXCandidate, mx_level: MXLevel, tls: TLSState, level: TLSLevel
    ) -> TLSLevel:
        if level < self.min_tls:
            # The cause (no STARTTLS, a failed handshake, an unchecked
            # certificate) is in the message too: it is what `kittiwake queue
            # list` and the sender's notice show.
            raise SMTPError(
                451,
                (4, 7, 1),
                f"{TLS_BELOW}: {tls.error}" if tls.error else TLS_BELOW,
                reason=tls.error
                or f"TLS level {level.name.lower()}, {self.min_tls.name.lower()} required",
                misc={"tls_level": level.name.lower()},
            )
        return level


@policy("local_policy")
def build_local_policy(node: Node, container: Container) -> LocalPolicy:
    """`local_policy [off] [{ min_tls_level L; min_mx_level L }]`."""
    if node.args:
        if node.args != ["off"] or node.children is not None:
            raise node.error("local_policy: the only argument is 'off', without a block")
        return LocalPolicy(TLSLevel.NONE, MXLevel.NONE)
    cfg = Directives(node, container)
    min_tls = cfg.enum("min_tls_level", list(_TLS_LEVELS), "encrypted")
    min_mx = cfg.enum("min_mx_level", list(_MX_LEVELS), "none")
    cfg.finish()
    return LocalPolicy(_TLS_LEVELS[min_tls], _MX_LEVELS[min_mx])
