"""`test_policy`: a throw-away `mx_auth` policy for `target.remote` tests.

The real policies (MTA-STS, DANE, ...) are built elsewhere; this one
exercises the hooks `target.remote` calls, with behaviour set in its block:

```
mx_auth {
    test_policy {
        mx_level mtasts          # what check_mx vouches for (none|mtasts|dnssec)
        tls_level authenticated  # what check_conn vouches for over TLS
        refuse_plaintext         # check_conn refuses a connection without TLS
        refuse_mx HOST...        # check_mx refuses these MX hosts
    }
}
```

Refusals carry the RFC 8460 result type in `misc["tlsrpt_result"]`, the way
`target.remote` reads it. Importing this module registers the policy; only
`launcher.py` and the tests that build a target in their own process do.
"""

from __future__ import annotations

from dataclasses import dataclass

from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.container import Container
from kittiwake.errors import SMTPError
from kittiwake.mx_auth.base import (
    MXCandidate,
    MXLevel,
    PolicyReport,
    TLSLevel,
    TLSState,
)
from kittiwake.mx_auth.config import policy


@dataclass(frozen=True)
class _Settings:
    mx_level: MXLevel
    tls_level: TLSLevel
    refuse_plaintext: bool
    refuse_mx: tuple[str, ...]


class _ForDomain:
    def __init__(self, settings: _Settings, domain: str) -> None:
        self.settings = settings
        self.domain = domain

    @property
    def report(self) -> PolicyReport | None:
        return PolicyReport("sts", self.domain, ("version: STSv1", "mode: enforce"), ("*.test",))

    async def check_mx(self, mx: MXCandidate, level: MXLevel) -> MXLevel:
        if mx.host in self.settings.refuse_mx:
            raise SMTPError(
                550,
                (5, 7, 0),
                "Failed to establish the MX record authenticity (test policy)",
                reason=f"{mx.host} refused by test_policy",
                misc={"tlsrpt_result": "sts-policy-invalid"},
            )
        return max(level, self.settings.mx_level)

    async def check_conn(
        self, mx: MXCandidate, mx_level: MXLevel, tls: TLSState, level: TLSLevel
    ) -> TLSLevel:
        if not tls.tls:
            if self.settings.refuse_plaintext:
                raise SMTPError(
                    451,
                    (4, 7, 1),
                    "TLS is required (test policy)",
                    reason=f"{mx.host}: {tls.error}",
                    misc={"tlsrpt_result": "starttls-not-supported"},
                )
            return level
        if tls.peer_cert is None:
            raise SMTPError(451, (4, 7, 0), "TLS without a certificate (test policy)")
        return max(level, self.settings.tls_level)


class FakePolicy:
    def __init__(self, settings: _Settings) -> None:
        self.settings = settings

    async def for_domain(self, domain: str) -> _ForDomain:
        return _ForDomain(self.settings, domain)


@policy("test_policy")
def build(node: Node, container: Container) -> FakePolicy:
    cfg = Directives(node, container)
    mx_level = cfg.enum("mx_level", ("none", "mtasts", "dnssec"), "none")
    tls_level = cfg.enum("tls_level", ("none", "encrypted", "authenticated"), "none")
    refuse_plaintext = cfg.has("refuse_plaintext")
    cfg.all("refuse_plaintext")
    refuse = cfg.get("refuse_mx")
    cfg.finish()
    return FakePolicy(
        _Settings(
            MXLevel[mx_level.upper()],
            TLSLevel[tls_level.upper()],
            refuse_plaintext,
            tuple(refuse.args) if refuse is not None else (),
        )
    )
