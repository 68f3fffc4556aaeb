"""`TLSState` from a finished handshake, for `target.remote` (mx_auth/base.py).

DANE-TA needs the certificate chain the server sent, which Python's `ssl`
gives publicly only from 3.13 (`SSLObject.get_unverified_chain`); on 3.11
and 3.12 the same method exists on the private `_sslobj`. This is the one
place that reaches for it, and it degrades to the leaf alone (DANE-EE
still works, DANE-TA cannot match) if the method is missing.
"""

from __future__ import annotations

import _ssl
import ssl
from collections.abc import Sequence

from kittiwake.mx_auth.base import TLSState

__all__ = ["peer_chain", "tls_state"]


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The certificates the peer sent (DER, leaf first), unverified; () if unknown."""
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        inner = getattr(ssl_object, "_sslobj", None)
        getter = getattr(inner, "get_unverified_chain", None)
    chain: Sequence[object] | None = None
    if getter is not None:
        try:
            chain = getter()
        except (ValueError, OSError):  # no handshake (any more): the leaf, if any
            chain = None
        if chain:
            der = [_der(cert) for cert in chain]
            if all(der):
                return tuple(d for d in der if d is not None)
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


def _der(cert: object) -> bytes | None:
    if isinstance(cert, bytes):
        return cert
    public_bytes = getattr(cert, "public_bytes", None)
    if public_bytes is None:
        return None
    data = public_bytes(_ssl.ENCODING_DER)
    return data if isinstance(data, bytes) else None


def tls_state(
    address: str,
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
    *,
    verified: bool = False,
    error: str = "",
) -> TLSState:
    """What `check_conn` needs to know about one connection.

    `ssl_object` None: no TLS (not offered, or failed and the target went
    on in plain text; `error` says why). `verified`: the handshake used a
    verifying context with the MX name (`ClientTLS.context()`).
    """
    if ssl_object is None:
        return TLSState(address, False, error=error)
    chain = peer_chain(ssl_object)
    cipher = ssl_object.cipher()
    return TLSState(
        address,
        True,
        verified=verified,
        error=error,
        peer_cert=chain[0] if chain else None,
        peer_chain=chain,
        version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
    )
