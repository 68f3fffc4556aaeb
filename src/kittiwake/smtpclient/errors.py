"""What a failure talking to another server becomes: always an `SMTPError`.

The table (docs/target-smtp.md, "Errors"): the other server's replies pass
through with their code, enhanced code and text; everything that is not a
reply is ours to name, and always temporary, because the message itself is
not at fault when a network, a certificate or a server misbehaves:

* refused, unreachable, no answer to connect: `451 4.4.1`;
* the endpoint's name does not resolve: `450 4.4.4 DNS error`;
* read/write failure, timeout, connection closed: `450 4.4.2 Network I/O error`;
* TLS handshake or certificate failure: `451 4.7.0`;
* a reply that breaks the protocol: `451 4.5.0`.

Client-visible texts never name the endpoint, a file or an OS error: those
go to `reason` and `misc`, which only the log shows.
"""

from __future__ import annotations

from kittiwake.errors import SMTPError
from kittiwake.protocol.replies import Reply

__all__ = [
    "TLSHandshakeError",
    "connect_error",
    "dns_error",
    "network_error",
    "protocol_error",
    "reply_error",
    "reply_text",
    "tls_error",
]


def reply_text(reply: Reply) -> str:
    """The reply's text on one line (multi-line texts joined with spaces)."""
    lines = (reply.text,) if isinstance(reply.text, str) else reply.text
    return " ".join(line.strip() for line in lines).strip()


def reply_error(reply: Reply, remote: str, command: str) -> SMTPError:
    """The downstream's negative reply, passed through as it is.

    A missing enhanced code becomes `X.0.0` of the reply's class (RFC 3463
    §3.1: "other undefined status"). A positive code where a negative one
    was expected (a 3xx to RCPT) is a protocol error. A 421 (the
    downstream is closing) becomes 451: passed on as it is, it would tell
    our own client that *we* are closing (RFC 5321 §3.8).
    """
    if reply.code < 400:
        return protocol_error(remote, f"unexpected {reply.code} reply to {command}")
    enhanced = reply.enhanced or (reply.code // 100, 0, 0)
    text = reply_text(reply) or "No reason given"
    return SMTPError(
        451 if reply.code == 421 else reply.code,
        enhanced,
        text,
        reason=f"{remote} said: {reply.code} {text} (in reply to {command})",
        misc={"remote_server": remote},
    )


def connect_error(remote: str, why: str) -> SMTPError:
    return SMTPError(
        451,
        (4, 4, 1),
        "Could not connect to the downstream server",
        reason=f"connecting to {remote}: {why}",
        misc={"remote_server": remote},
    )


def dns_error(remote: str, why: str) -> SMTPError:
    return SMTPError(
        450,
        (4, 4, 4),
        "DNS error",
        reason=f"resolving {remote}: {why}",
        misc={"remote_server": remote},
    )


def network_error(remote: str, why: str) -> SMTPError:
    return SMTPError(
        450,
        (4, 4, 2),
        "Network I/O error",
        reason=f"{remote}: {why}",
        misc={"remote_server": remote},
    )


def tls_error(remote: str, why: str) -> SMTPError:
    return SMTPError(
        451,
        (4, 7, 0),
        "TLS handshake with the downstream server failed",
        reason=f"TLS with {remote}: {why}",
        misc={"remote_server": remote},
    )


class TLSHandshakeError(SMTPError):
    """A TLS handshake that failed, with what made it fail.

    `verify_code` is OpenSSL's certificate verification result when the
    failure was the certificate check (X509_V_ERR_*), None for any other
    handshake failure: opportunistic TLS falls back differently for the two
    (docs/target-remote.md, "Connecting").
    """

    def __init__(self, remote: str, why: str, verify_code: int | None = None) -> None:
        super().__init__(
            451,
            (4, 7, 0),
            "TLS handshake with the downstream server failed",
            reason=f"TLS with {remote}: {why}",
            misc={"remote_server": remote},
        )
        self.verify_code = verify_code


def protocol_error(remote: str, why: str) -> SMTPError:
    return SMTPError(
        451,
        (4, 5, 0),
        "Protocol error from the downstream server",
        reason=f"{remote}: {why}",
        misc={"remote_server": remote},
    )
