"""Fetching an MTA-STS policy file over HTTPS (RFC 8461 §3.3).

Strategy. The fetch is one HTTP/1.1 GET on asyncio streams with the
standard `ssl` module, so it never blocks the event loop and needs no HTTP
library: a policy fetch is a single request with a tiny answer, and the
rules RFC 8461 sets (no redirects, no HTTP caching, a certificate valid
for `mta-sts.DOMAIN`, text/plain, a size limit) are easier to see enforced
in one short module than configured in a general client. The host name is
resolved through kittiwake's own resolver, so `--debug.dnsoverride`
reaches this lookup too, and the connection is made to the address with
SNI and certificate checks for the name.

Whatever goes wrong raises `FetchError`; its `kind` is the RFC 8460
result type a TLS report gives the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl

from kittiwake.dns import Answer, Resolver

__all__ = ["FETCH_TIMEOUT", "MAX_POLICY_SIZE", "FetchError", "fetch_policy", "policy_url"]

#: RFC 8461 §3.3 asks senders to bound the size; 64 KiB is its figure.
MAX_POLICY_SIZE = 64 * 1024
#: Everything (lookup, connection, handshake, answer) within this time.
FETCH_TIMEOUT = 60.0
_MAX_HEADER = 16 * 1024
_PATH = "/.well-known/mta-sts.txt"
# Strictly ASCII digits: int() would also take "0x1f", "1_0", "-5" or "²".
_STATUS = re.compile(r"[0-9]{3}")
_LENGTH = re.compile(r"[0-9]{1,10}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")


class FetchError(Exception):
    """The policy could not be fetched (`kind` says how, in RFC 8460 terms)."""

    def __init__(self, message: str, kind: str = "sts-policy-fetch-error") -> None:
        super().__init__(message)
        self.kind = kind


def policy_url(domain: str) -> str:
    """Where RFC 8461 §3.3 puts the policy of `domain`."""
    return f"https://mta-sts.{domain}{_PATH}"


async def fetch_policy(
    domain: str,
    resolver: Resolver,
    context: ssl.SSLContext,
    *,
    port: int = 443,
    time_limit: float = FETCH_TIMEOUT,
    limit: int = MAX_POLICY_SIZE,
) -> bytes:
    """The body of `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, or `FetchError`.

    `context` must verify certificates and host names (WebPKI); `port` is
    443 except in tests (`--debug.mtastsport`).
    """
    host = f"mta-sts.{domain}"
    try:
        async with asyncio.timeout(time_limit):
            return await _fetch(host, resolver, context, port, limit)
    except TimeoutError:
        raise FetchError(f"{policy_url(domain)}: no answer within {time_limit:g} s") from None


async def _fetch(
    host: str, resolver: Resolver, context: ssl.SSLContext, port: int, limit: int
) -> bytes:
    # A and AAAA apart: a server that fails one type still has the other.
    answers = await asyncio.gather(
        resolver.query(host, "A"), resolver.query(host, "AAAA"), return_exceptions=True
    )
    addresses = [str(r) for a in answers if isinstance(a, Answer) for r in a.records]
    if not addresses:
        errors = [str(a) for a in answers if isinstance(a, BaseException)]
        raise FetchError(f"{host}: {'; '.join(errors) or 'no address records'}")
    last: Exception | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(
                address, port, ssl=context, server_hostname=host
            )
        except ssl.SSLCertVerificationError as exc:
            # A certificate that fails is not a reason to try another address
            # of the same name: every one must present a valid certificate.
            raise FetchError(f"{host}: certificate: {exc.verify_message}") from None
        except (OSError, ssl.SSLError) as exc:
            last = exc
            continue
        try:
            return await _exchange(host, reader, writer, limit)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(2):
                    await writer.wait_closed()
    raise FetchError(f"{host}: cannot connect: {last}")


async def _exchange(
    host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
) -> bytes:
    request = (
        f"GET {_PATH} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\n"
        "User-Agent: kittiwake\r\nConnection: close\r\n\r\n"
    )
    try:
        writer.write(request.encode("ascii"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise FetchError(f"{host}: response header too long") from None
        except asyncio.IncompleteReadError:
            raise FetchError(f"{host}: connection closed before a response") from None
        if len(head) > _MAX_HEADER:
            raise FetchError(f"{host}: response header too long")
        status, headers = _parse_head(host, head)
        if status != 200:
            # RFC 8461 §3.3: redirects are not followed; nothing but 200 is a policy.
            raise FetchError(f"{host}: HTTP status {status}")
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "text/plain":
            raise FetchError(f"{host}: Content-Type {media or 'missing'!r}, not text/plain")
        return await _body(host, reader, headers, limit)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"{host}: {exc}") from None


def _parse_head(host: str, head: bytes) -> tuple[int, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise FetchError(f"{host}: undecodable response header") from None
    status_line, *lines = text[:-4].split("\r\n")
    parts = status_line.split(" ", 2)
    if (
        len(parts) < 2
        or parts[0] not in ("HTTP/1.1", "HTTP/1.0")
        or not _STATUS.fullmatch(parts[1])
    ):
        raise FetchError(f"{host}: not an HTTP/1.x response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[:1] in (" ", "\t"):
            raise FetchError(f"{host}: malformed response header line {line[:80]!r}")
        key = name.lower()
        if key in headers and key in ("content-length", "content-type", "transfer-encoding"):
            raise FetchError(f"{host}: repeated {name} header")
        headers[key] = value.strip()
    return int(parts[1]), headers


async def _body(
    host: str, reader: asyncio.StreamReader, headers: dict[str, str], limit: int
) -> bytes:
    too_big = FetchError(f"{host}: policy larger than {limit} bytes")
    encoding = headers.get("transfer-encoding", "").lower()
    if encoding:
        if encoding != "chunked":
            raise FetchError(f"{host}: unsupported Transfer-Encoding {encoding!r}")
        return await _chunked(host, reader, limit, too_big)
    length_text = headers.get("content-length")
    if length_text is not None:
        if _LENGTH.fullmatch(length_text) is None:
            raise FetchError(f"{host}: bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if length > limit:
            raise too_big
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise FetchError(f"{host}: policy cut short") from None
    # No length: the body would end with the connection, but asyncio's TLS
    # takes a connection cut without close_notify for a clean end, so a
    # policy cut short by an attacker (fewer mx lines) would look whole.
    # Policy hosts send a length or chunks; a body without either is refused.
    raise FetchError(f"{host}: no Content-Length and not chunked: the end cannot be trusted")


async def _chunked(
    host: str, reader: asyncio.StreamReader, limit: int, too_big: FetchError
) -> bytes:
    body = bytearray()
    try:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size_text = size_line[:-2].split(b";", 1)[0].strip(b" \t")
            if _CHUNK_SIZE.fullmatch(size_text) is None:
                raise FetchError(f"{host}: bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields, ignored
                return bytes(body)
            if len(body) + size > limit:
                raise too_big
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise FetchError(f"{host}: chunk not followed by CRLF")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise FetchError(f"{host}: chunked policy cut short") from None
