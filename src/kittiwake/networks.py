"""IP networks in configuration: the types, parsing an entry, matching an
address, and writing an address with its port.

Several modules take lists of client networks (`proxy_protocol`'s trusted
proxies, the per-IP connection cap's exemptions, `auth_ratelimit`'s
exemptions, a DNSBL's `responses`); they all read and match them here, the
same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["Address", "Network", "host_port", "in_networks", "parse_network"]


def host_port(host: str, port: int) -> str:
    """HOST:PORT as an operator writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_network(entry: str, what: str = "address") -> Network:
    """An IP address (that one host) or a CIDR; host bits are ignored; `ValueError` names it.

    `what` names the entry in the error ("trusted address", ...).

    A bare IPv4 address means /32 and a bare IPv6 address /128 (maddy appends
    /32 to both, so `::1` would trust all of `::/32`: kittiwake deviates).
    """
    text = entry.strip()
    if not text or "%" in text:
        raise ValueError(f"invalid {what} {entry!r}: expected an IP address or CIDR")
    try:
        if "/" not in text:
            addr = ipaddress.ip_address(text)
            return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(
            f"invalid {what} {entry!r}: expected an IP address or CIDR ({exc})"
        ) from None


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    """Whether address `ip` is in one of `networks`; False if it is no address.

    A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: both forms count.
    """
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return False
    candidates: list[Address] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    return any(a.version == net.version and a in net for a in candidates for net in networks)
