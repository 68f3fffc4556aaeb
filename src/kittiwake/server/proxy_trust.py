"""Which peers may speak the PROXY protocol to an endpoint (docs/proxy.md).

A PROXY header rewrites the client address that checks, limits, rDNS,
Received and logs see, so honouring one from the wrong peer lets anybody
claim any address (and walk past SPF, DNSBLs and per-IP limits). The trust
list decides which peers must send a header; everybody else is a plain SMTP
client whose `PROXY` line is just an unknown command.

Entries are the `proxy_protocol` arguments plus its `trust` lines: an IP
address or a CIDR. A bare IPv4 address means /32 and a bare IPv6 address
/128 (maddy appends /32 to both, so `::1` trusts all of `::/32`; kittiwake
deviates). Host bits of a CIDR are ignored (`192.168.0.1/24` is
`192.168.0.0/24`), as maddy does. An empty list trusts every TCP peer, and
Unix-socket peers are always trusted: only a local process can reach them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kittiwake.networks import Network, in_networks, parse_network

__all__ = ["TrustList"]


@dataclass(frozen=True, slots=True)
class TrustList:
    """The trusted networks of one endpoint's `proxy_protocol`."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustList:
        """Parse trust entries; `ValueError` names the first invalid one.

        The caller (the endpoint) turns the ValueError into a ConfigError at
        the directive's line.
        """
        networks: list[Network] = []
        for entry in entries:
            networks.append(parse_network(entry, "trusted address"))
        return cls(tuple(networks))

    @property
    def trusts_everyone(self) -> bool:
        return not self.networks

    def trusts(self, peer_ip: str | None) -> bool:
        """Whether a peer must (and may) send a PROXY header.

        `peer_ip` is the socket's peer address, `None` for a Unix socket.
        An address that cannot be parsed is trusted only by an empty list.
        """
        if peer_ip is None or not self.networks:
            return True
        return in_networks(peer_ip, self.networks)
