"""The PROXY protocol header (HAProxy, versions 1 and 2), without I/O.

A proxy in front of kittiwake (HAProxy, an AWS or GCP load balancer, ...)
opens each connection with one header that names the real client. From a
trusted proxy that header is mandatory and comes before anything we send
(docs/proxy.md), so the server feeds the first bytes of the
connection to a `ProxyParser` before the banner and gets back:

- `NEED_DATA`: the header is not complete yet; read more (within the
  deadline, which is the caller's: this module has no clock);
- a `ProxyResult`: the header, plus the bytes that followed it in the same
  read. Those belong to the SMTP session and must be fed to it;
- a `ProxyError`: the connection is closed without a banner.

Strategy: the parser holds at most one header's worth of bytes. The first
bytes decide the version: `PROXY ` is version 1 (a text line), the 12-byte
binary signature is version 2; anything that cannot become either is refused
as soon as it arrives, so a client that is not a proxy does not wait for the
deadline. Version 1 is one CRLF-ended line of at most 107 bytes; version 2 is
a 16-byte fixed part whose last two bytes give the length of the rest, and
that length is checked against a cap before waiting for it. Every check is
strict: a PROXY header is written by a program, never typed by a person, so
anything unusual is more likely an attack than a sloppy proxy.

Not honoured, by design: v1 `UNKNOWN`, v2 `LOCAL` (health checks), and
v2's unspecified and Unix families carry no usable client address. They are
valid headers whose `local` flag tells the caller to keep the real peer's
address. TLVs (v2's extensions) are skipped unread.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from kittiwake.protocol.connection import NEED_DATA, LocalProtocolError, _NeedData

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_LENGTH",
    "NEED_DATA",
    "V2_SIGNATURE",
    "Family",
    "ProxyError",
    "ProxyHeader",
    "ProxyParser",
    "ProxyResult",
    "parse_header",
]

#: Version 1: "PROXY TCP6 " + two longest IPv6 addresses + two ports + CRLF;
#: the specification's own bound, CRLF included.
MAX_V1_LENGTH = 107
#: Version 2's binary signature, chosen by HAProxy so that it cannot be the
#: start of any text protocol (it contains a NUL and `QUIT\n`).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature + version/command + family + 2-byte length
#: Largest accepted v2 length field (bytes after the fixed 16), so a whole
#: header is at most 536 bytes, Postfix's cap: room for the largest address
#: block (Unix, 216 bytes) and 320 bytes of TLVs, which is more than HAProxy's
#: usual TLVs (ALPN, authority, SSL details, unique ID) need.
MAX_V2_LENGTH = 536 - _V2_FIXED

_V1_PREFIX = b"PROXY "


class Family(enum.StrEnum):
    """The client's address family as the header states it."""

    TCP4 = "TCP4"
    TCP6 = "TCP6"
    UNIX = "UNIX"
    #: v1 `UNKNOWN`, v2 `LOCAL`, v2 unspecified family.
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the proxy told us about the connection it relays.

    `local` means "no client address here: use the real peer's": the
    addresses and ports are then `None`. Otherwise `source_ip` is the client
    (canonical text form, e.g. `2001:db8::1`; an IPv4-mapped IPv6 address in
    its IPv4 form) and `dest_ip` the address the client connected to on the
    proxy. `family` is what the header declared.
    """

    version: int
    family: Family
    local: bool
    source_ip: str | None = None
    source_port: int | None = None
    dest_ip: str | None = None
    dest_port: int | None = None


@dataclass(frozen=True, slots=True)
class ProxyResult:
    """A complete header and the bytes after it (the SMTP session's start)."""

    header: ProxyHeader
    rest: bytes


class ProxyError(Exception):
    """The peer sent something that is not a valid PROXY header.

    The message says what was wrong, for the log; the peer is told nothing
    (the connection is closed without a banner).
    """


class ProxyParser:
    """Reads one PROXY header from the first bytes of a connection.

    `feed(data)` with each chunk read from the socket, `feed(b"")` at end of
    file. It returns `NEED_DATA` until the header is complete, then a
    `ProxyResult`; it raises `ProxyError` for anything invalid, including end
    of file before the header is complete. After a result or an error the
    parser is finished: feeding it again is the caller's bug.
    """

    def __init__(self, *, max_v2_length: int = MAX_V2_LENGTH) -> None:
        self._buf = b""
        self._max_v2_length = max_v2_length
        self._done = False

    def feed(self, data: bytes) -> ProxyResult | _NeedData:
        if self._done:
            raise LocalProtocolError("the PROXY header has already been read")
        if not data:
            self._done = True
            raise ProxyError(
                "connection closed before a PROXY header"
                if not self._buf
                else "connection closed inside the PROXY header"
            )
        self._buf += data
        try:
            result = parse_header(self._buf, max_v2_length=self._max_v2_length)
        except ProxyError:
            self._done = True
            self._buf = b""
            raise
        if isinstance(result, ProxyResult):
            self._done = True
            self._buf = b""
        return result


def parse_header(data: bytes, *, max_v2_length: int = MAX_V2_LENGTH) -> ProxyResult | _NeedData:
    """Parse a header at the start of `data`: the stateless core of `ProxyParser`.

    `NEED_DATA` means `data` is a valid beginning but not yet a whole header.
    """
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data, max_v2_length)
    if data.startswith(_V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data) or _V1_PREFIX.startswith(data):
        return NEED_DATA  # too short to tell, and still the start of one form
    raise ProxyError(f"not a PROXY protocol header: {data[:16]!r}")


# -- version 1 ---------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyResult | _NeedData:
    end = data.find(b"\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyError(f"PROXY v1 line longer than {MAX_V1_LENGTH} bytes")
        # A CR with something other than LF after it can never become a
        # valid line: refuse now rather than at the deadline.
        cr = data.find(b"\r")
        if 0 <= cr < len(data) - 1:
            raise ProxyError("PROXY v1 line has a CR not followed by LF")
        return NEED_DATA
    if end == 0 or data[end - 1] != 0x0D:
        raise ProxyError("PROXY v1 line ends with a bare LF")
    line = data[: end - 1]
    if b"\r" in line:
        raise ProxyError("PROXY v1 line has a CR not followed by LF")
    rest = data[end + 1 :]
    parts = line.split(b" ")
    proto = parts[1]
    if proto == b"UNKNOWN":
        # The specification: whatever follows UNKNOWN up to CRLF is ignored.
        return ProxyResult(ProxyHeader(1, Family.UNKNOWN, local=True), rest)
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyError(f"PROXY v1 unknown protocol {proto[:16]!r}")
    if len(parts) != 6:
        raise ProxyError(f"PROXY v1 {proto.decode()} needs 6 fields, got {len(parts)}")
    family = Family.TCP4 if proto == b"TCP4" else Family.TCP6
    src = _v1_address(parts[2], family)
    dst = _v1_address(parts[3], family)
    sport = _v1_port(parts[4])
    dport = _v1_port(parts[5])
    return ProxyResult(ProxyHeader(1, family, False, src, sport, dst, dport), rest)


def _v1_address(raw: bytes, family: Family) -> str:
    try:
        text = raw.decode("ascii")
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address
        if family is Family.TCP4:
            addr = ipaddress.IPv4Address(text)
        else:
            if "%" in text:  # a scope ID is local to the proxy's host
                raise ValueError("scoped address")
            addr = ipaddress.IPv6Address(text)
    except (UnicodeDecodeError, ValueError):
        raise ProxyError(f"PROXY v1 invalid {family.value} address {raw[:46]!r}") from None
    return _text(addr)


def _text(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text; an IPv4-mapped IPv6 address in its IPv4 form.

    A dual-stack proxy reports IPv4 clients as `::ffff:a.b.c.d`; the client
    is an IPv4 host, and SPF `ip4:`, the `ip` limit and the logs must see
    the same string as for a direct IPv4 connection.
    """
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _v1_port(raw: bytes) -> int:
    # Decimal, no sign, no leading zero (the specification's form), 0-65535.
    if not (1 <= len(raw) <= 5 and raw.isdigit() and raw.isascii()):
        raise ProxyError(f"PROXY v1 invalid port {raw[:8]!r}")
    if raw[0] == 0x30 and len(raw) > 1:
        raise ProxyError(f"PROXY v1 port with a leading zero {raw!r}")
    port = int(raw)
    if port > 65535:
        raise ProxyError(f"PROXY v1 port out of range {port}")
    return port


# -- version 2 ---------------------------------------------------------------

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
# Family/transport byte values the specification defines for a stream
# connection; the rest (datagrams, undefined nibbles) are refused.
_FAM_UNSPEC = 0x00
_FAM_TCP4 = 0x11
_FAM_TCP6 = 0x21
_FAM_UNIX_STREAM = 0x31
_ADDR_LEN = {_FAM_TCP4: 12, _FAM_TCP6: 36, _FAM_UNIX_STREAM: 216}


def _parse_v2(data: bytes, max_length: int) -> ProxyResult | _NeedData:
    if len(data) < _V2_FIXED:
        return NEED_DATA
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"PROXY v2 unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyError(f"PROXY v2 unknown command {command}")
    length = int.from_bytes(data[14:16], "big")
    if length > max_length:
        raise ProxyError(f"PROXY v2 header too long ({length} > {max_length} bytes)")
    total = _V2_FIXED + length
    if len(data) < total:
        return NEED_DATA
    rest = data[total:]
    if command == _CMD_LOCAL:
        # The proxy's own connection (a health check): the family and any
        # address block are to be ignored.
        return ProxyResult(ProxyHeader(2, Family.UNKNOWN, local=True), rest)
    if fam == _FAM_UNSPEC:
        return ProxyResult(ProxyHeader(2, Family.UNKNOWN, local=True), rest)
    need = _ADDR_LEN.get(fam)
    if need is None:
        raise ProxyError(f"PROXY v2 unsupported address family/transport 0x{fam:02x}")
    if length < need:
        raise ProxyError(f"PROXY v2 address block too short ({length} < {need} bytes)")
    block = data[_V2_FIXED : _V2_FIXED + need]
    if fam == _FAM_UNIX_STREAM:
        return ProxyResult(ProxyHeader(2, Family.UNIX, local=True), rest)
    size = 4 if fam == _FAM_TCP4 else 16
    src_raw, dst_raw = block[:size], block[size : 2 * size]
    ports = block[2 * size :]
    family = Family.TCP4 if fam == _FAM_TCP4 else Family.TCP6
    header = ProxyHeader(
        2,
        family,
        False,
        _text(ipaddress.ip_address(src_raw)),
        int.from_bytes(ports[:2], "big"),
        _text(ipaddress.ip_address(dst_raw)),
        int.from_bytes(ports[2:4], "big"),
    )
    return ProxyResult(header, rest)
