"""Where an outgoing connection goes: `tcp://`, `tls://` and `unix://` (docs/client.md).

Unlike a listen address, a downstream endpoint may name its host (it is
resolved at each connection, through the system resolver, off the event
loop), and a relative Unix socket path is inside `runtime_dir`, as maddy
resolves it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

__all__ = ["Endpoint", "parse_endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """`scheme` is `tcp` (plain, STARTTLS possible), `tls` (implicit TLS) or `unix`."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    #: The name the server's certificate must carry when `host` is an
    #: address (an MX host dialled at one of its addresses).
    name: str = ""

    @property
    def implicit_tls(self) -> bool:
        return self.scheme == "tls"

    @property
    def tls_name(self) -> str | None:
        """The name the server's certificate must carry (None over a Unix socket)."""
        return self.name or self.host or None

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(text: str, runtime_dir: str) -> Endpoint:
    """Read `tcp://HOST:PORT`, `tls://HOST:PORT` or `unix://PATH`; ValueError if bad."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"invalid endpoint {text!r}: expected tcp://HOST:PORT, tls:// or unix://")
    scheme = scheme.lower()
    if scheme == "unix":
        if not rest:
            raise ValueError(f"invalid endpoint {text!r}: missing socket path")
        return Endpoint("unix", path=os.path.join(runtime_dir, rest))
    if scheme not in ("tcp", "tls"):
        raise ValueError(f"unsupported scheme {scheme!r} in {text!r} (use tcp, tls or unix)")
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise ValueError(f"invalid endpoint {text!r}: unclosed '['")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"invalid endpoint {text!r}: {host!r} is not an IPv6 address"
            ) from None
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = rest.rpartition(":")
        if not host or any(c in host for c in "/:@[] ") or not host.isprintable():
            raise ValueError(f"invalid endpoint {text!r}: expected HOST:PORT")
    if not port_text:
        raise ValueError(f"invalid endpoint {text!r}: port is required")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {text!r}")
    return Endpoint(scheme, host=host, port=int(port_text))
