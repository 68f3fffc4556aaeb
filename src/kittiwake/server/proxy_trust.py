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

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["Network", "TrustList", "in_networks", "parse_network"]


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
            networks.append(_parse_entry(entry))
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


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    """Whether address `ip` is in one of `networks`; False if it is no address.

    A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: both forms count.
    """
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    return any(a.version == net.version and a in net for a in candidates for net in networks)


def parse_network(entry: str) -> Network:
    """An IP address (one host) or a CIDR; `ValueError` with the entry named."""
    return _parse_entry(entry)


def _parse_entry(entry: str) -> Network:
    text = entry.strip()
    if not text or "%" in text:
        raise ValueError(f"invalid trusted address {entry!r}: expected an IP address or CIDR")
    try:
        if "/" not in text:
            # Deviation from maddy: the bare address itself, in both families.
            addr = ipaddress.ip_address(text)
            return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(
            f"invalid trusted address {entry!r}: expected an IP address or CIDR ({exc})"
        ) from None
