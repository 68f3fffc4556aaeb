"""Where `kittiwake sendmail` hands its message over: the local server's endpoints.

Strategy: the configuration the server runs names its endpoints; sendmail
reads their listen addresses from the file's top level (after macros and
`import`s, as the server sees it) without configuring any module, so a
user who may read the file but not the TLS keys or the credentials
database it names can still send. Only endpoints that take mail without
authentication are candidates, unless `--auth-user` asks for a
`submission` endpoint instead (docs/sendmail.md, "Which endpoint"):

1. an `smtp` endpoint on a Unix socket, then an `lmtp` one (the socket's
   file permissions say who may use it);
2. an `smtp` endpoint on a loopback address, then an `lmtp` one;
3. an `smtp` or `lmtp` endpoint on a wildcard address (`0.0.0.0`, `::`),
   reached through the loopback address of its family.

`tls://` listeners (TLS from the first byte) and port 0 (a port chosen at
start, which no file records) are never candidates.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from kittiwake.config.node import Node
from kittiwake.config.values import ListenAddress, parse_listen_address

__all__ = ["Target", "from_config", "from_url"]


@dataclass(frozen=True, slots=True)
class Target:
    """One way to the server: SMTP or LMTP, over TCP or a Unix socket."""

    protocol: str  # "smtp" or "lmtp"
    host: str = ""
    port: int = 0
    path: str = ""  # a Unix socket, absolute
    endpoint: str = ""  # the configuration's endpoint module, or "--server"

    @property
    def loopback(self) -> bool:
        """Nobody but this host can be in between (TLS without certificate checks is fine)."""
        if self.path:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def __str__(self) -> str:
        if self.path:
            return f"{self.protocol}+unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"


_URL_SCHEMES = {
    "smtp": "smtp",
    "submission": "smtp",
    "lmtp": "lmtp",
    "smtp+unix": "smtp",
    "lmtp+unix": "lmtp",
}


def from_url(text: str, cwd: str) -> Target:
    """`--server`: `smtp://HOST:PORT`, `submission://HOST:PORT`, `lmtp://HOST:PORT`,
    `smtp+unix://PATH` or `lmtp+unix://PATH`; `ValueError` otherwise."""
    scheme, sep, rest = text.partition("://")
    protocol = _URL_SCHEMES.get(scheme.lower())
    if not sep or protocol is None or not rest:
        raise ValueError(
            f"invalid server {text!r}: expected smtp://HOST:PORT, lmtp://HOST:PORT,"
            " submission://HOST:PORT, smtp+unix://PATH or lmtp+unix://PATH"
        )
    if scheme.endswith("+unix"):
        return Target(protocol, path=os.path.abspath(os.path.join(cwd, rest)), endpoint="--server")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid server {text!r}: expected HOST:PORT with a port 1-65535")
    return Target(protocol, host=host, port=int(port), endpoint="--server")


def _target(name: str, address: ListenAddress, runtime_dir: str) -> tuple[int, Target] | None:
    """The candidate for one listen address, with its rank (lower first), or None."""
    protocol = "lmtp" if name == "lmtp" else "smtp"
    second = 1 if protocol == "lmtp" else 0
    if address.scheme == "unix":
        path = os.path.abspath(os.path.join(runtime_dir, address.path))
        return 0 + second, Target(protocol, path=path, endpoint=name)
    if address.scheme != "tcp" or address.port == 0:
        return None
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return None
    if ip.is_loopback:
        return 2 + second, Target(protocol, str(ip), address.port, endpoint=name)
    if ip.is_unspecified:
        host = "::1" if ip.version == 6 else "127.0.0.1"
        return 4 + second, Target(protocol, host, address.port, endpoint=name)
    return None


def from_config(nodes: list[Node], runtime_dir: str, *, auth: bool) -> list[Target]:
    """The candidates among the configuration's endpoints, best first.

    With `auth`, only `submission` endpoints (which insist on it), ranked
    the same way; without, only `smtp` and `lmtp` ones.
    """
    wanted = ("submission",) if auth else ("smtp", "lmtp")
    found: list[tuple[int, int, Target]] = []
    for node in nodes:
        if node.name not in wanted:
            continue
        for arg in node.args:
            try:
                address = parse_listen_address(arg)
            except ValueError:
                continue  # the server refuses to start with it anyway
            ranked = _target(node.name, address, runtime_dir)
            if ranked is not None:
                found.append((ranked[0], len(found), ranked[1]))
    return [target for _, _, target in sorted(found)]
