"""The PROXY protocol header parser (v1 and v2) and the trust list.

Every valid form, every refusal (docs/proxy.md), one byte at a time as well
as all at once, bytes after the header kept, and random input never raising
anything but `ProxyError`."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.protocol.connection import NEED_DATA, LocalProtocolError
from kittiwake.protocol.proxy import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    Family,
    ProxyError,
    ProxyHeader,
    ProxyParser,
    ProxyResult,
    parse_header,
)
from kittiwake.server.proxy_trust import TrustList

SMTP = b"EHLO client.example\r\n"


def v2(cmd: int, fam: int, block: bytes, *, version: int = 2, length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | cmd, fam]) + struct.pack("!H", size) + block


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def parse(data: bytes) -> ProxyResult:
    result = ProxyParser().feed(data)
    assert isinstance(result, ProxyResult), result
    return result


def refused(data: bytes, *, eof: bool = False) -> str:
    parser = ProxyParser()
    with pytest.raises(ProxyError) as info:
        parser.feed(data)
        if eof:
            parser.feed(b"")
    return str(info.value)


TCP4 = ProxyHeader(1, Family.TCP4, False, "192.0.2.10", 56324, "198.51.100.1", 25)
UNKNOWN_V1 = ProxyHeader(1, Family.UNKNOWN, local=True)
LOCAL_V2 = ProxyHeader(2, Family.UNKNOWN, local=True)

VALID: list[tuple[bytes, ProxyHeader]] = [
    (b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25\r\n", TCP4),
    (
        b"PROXY TCP6 2001:DB8::a 2001:db8:0:0::1 0 65535\r\n",
        ProxyHeader(1, Family.TCP6, False, "2001:db8::a", 0, "2001:db8::1", 65535),
    ),
    (
        b"PROXY TCP6 ::ffff:192.0.2.10 ::1 1 2\r\n",
        ProxyHeader(1, Family.TCP6, False, "192.0.2.10", 1, "::1", 2),
    ),
    (b"PROXY UNKNOWN\r\n", UNKNOWN_V1),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", UNKNOWN_V1),
    (b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 16) + b"\r\n", UNKNOWN_V1),
    (
        v2(1, 0x11, inet4("192.0.2.10", "198.51.100.1", 56324, 25)),
        ProxyHeader(2, Family.TCP4, False, "192.0.2.10", 56324, "198.51.100.1", 25),
    ),
    (
        v2(1, 0x21, inet6("2001:db8::a", "2001:db8::1", 40000, 587)),
        ProxyHeader(2, Family.TCP6, False, "2001:db8::a", 40000, "2001:db8::1", 587),
    ),
    (
        v2(1, 0x21, inet6("::ffff:192.0.2.10", "::ffff:198.51.100.1", 1, 25)),
        ProxyHeader(2, Family.TCP6, False, "192.0.2.10", 1, "198.51.100.1", 25),
    ),
    (  # TLVs (ALPN, authority, unique ID) are skipped
        v2(
            1,
            0x11,
            inet4("192.0.2.10", "198.51.100.1", 56324, 25)
            + tlv(0x01, b"smtp")
            + tlv(0x02, b"mx.example.org")
            + tlv(0x05, b"\x00" * 40),
        ),
        ProxyHeader(2, Family.TCP4, False, "192.0.2.10", 56324, "198.51.100.1", 25),
    ),
    (v2(0, 0x00, b""), LOCAL_V2),  # LOCAL: a health check
    (v2(0, 0x11, inet4("192.0.2.10", "198.51.100.1", 1, 2)), LOCAL_V2),  # block ignored
    (v2(0, 0xFF, b"junk"), LOCAL_V2),  # LOCAL ignores the family byte
    (v2(1, 0x00, b""), LOCAL_V2),  # PROXY with an unspecified family
    (v2(1, 0x00, b"\x01\x02"), LOCAL_V2),
    (v2(1, 0x31, b"/run/a.sock".ljust(108, b"\0") * 2), ProxyHeader(2, Family.UNIX, True)),
]


@pytest.mark.parametrize(("data", "header"), VALID)
def test_valid_headers(data: bytes, header: ProxyHeader) -> None:
    assert parse(data) == ProxyResult(header, b"")


@pytest.mark.parametrize(("data", "header"), VALID)
def test_bytes_after_the_header_are_kept(data: bytes, header: ProxyHeader) -> None:
    assert parse(data + SMTP) == ProxyResult(header, SMTP)


@pytest.mark.parametrize(("data", "header"), VALID)
def test_one_byte_at_a_time_equals_all_at_once(data: bytes, header: ProxyHeader) -> None:
    whole = data + SMTP
    parser = ProxyParser()
    for i in range(len(whole)):
        result = parser.feed(whole[i : i + 1])
        if result is not NEED_DATA:
            assert isinstance(result, ProxyResult)
            assert i == len(data) - 1  # complete exactly at its last byte
            assert result.header == header
            assert result.rest + whole[i + 1 :] == SMTP
            return
    pytest.fail("the header never completed")


def test_the_longest_v1_line_is_accepted_and_one_more_byte_is_not() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 16) + b"\r\n"
    assert len(line) == MAX_V1_LENGTH
    assert parse(line).header == UNKNOWN_V1
    longer = line[:-2] + b"x\r\n"
    assert "longer than 107" in refused(longer)
    # Refused as soon as 107 bytes have come without an LF, not at EOF.
    assert "longer than 107" in refused(longer[:MAX_V1_LENGTH])
    parser = ProxyParser()
    assert parser.feed(longer[: MAX_V1_LENGTH - 1]) is NEED_DATA


@pytest.mark.parametrize(
    "data",
    [
        b"proxy TCP4 192.0.2.10 198.51.100.1 1 2\r\n",  # lowercase
        b"PROXY tcp4 192.0.2.10 198.51.100.1 1 2\r\n",
        b"PROXY TCP5 192.0.2.10 198.51.100.1 1 2\r\n",
        b"PROXY TCP6 192.0.2.10 198.51.100.1 1 2\r\n",  # IPv4 under TCP6
        b"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n",  # IPv6 under TCP4
        b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 99999\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 -1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 +1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 025 2\r\n",  # leading zero
        b"PROXY TCP4 192.0.2.10 198.51.100.1 123456 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1\r\n",  # 5 fields
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2 3\r\n",  # 7 fields
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2 \r\n",  # trailing space
        b"PROXY TCP4  192.0.2.10 198.51.100.1 1 2\r\n",  # double space
        b"PROXY TCP4\t192.0.2.10 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.010 198.51.100.1 1 2\r\n",  # octal-looking
        b"PROXY TCP4 192.0.2 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 h\xc3\xa9 198.51.100.1 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",  # scope ID
        b"PROXY TCP6 2001:db8::1 2001:db8:::2 1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2\n",  # bare LF
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2\r\r\n",
        b"PROXY TCP4 192.0.2.10\r198.51.100.1 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY \r\n",
        b"PROXY\r\n",
        b"PROXY  UNKNOWN\r\n",
        b"EHLO client.example\r\n",  # not a proxy: refused at once
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"\r\n\r\nQUIT\n",
        b"\r\n",
    ],
)
def test_malformed_v1_is_refused(data: bytes) -> None:
    if data == b"\r\n":  # a prefix of the v2 signature: only EOF decides
        assert ProxyParser().feed(data) is NEED_DATA
        refused(data, eof=True)
        return
    refused(data)


@pytest.mark.parametrize(
    "data",
    [
        b"P",
        b"PROXY",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25\r",
        V2_SIGNATURE[:5],
        V2_SIGNATURE,
        v2(1, 0x11, inet4("192.0.2.10", "198.51.100.1", 1, 2))[:20],
        v2(1, 0x11, inet4("192.0.2.10", "198.51.100.1", 1, 2), length=40),
    ],
)
def test_partial_header_then_eof_is_refused(data: bytes) -> None:
    parser = ProxyParser()
    assert parser.feed(data) is NEED_DATA
    with pytest.raises(ProxyError, match="closed inside"):
        parser.feed(b"")


def test_eof_before_anything_is_refused() -> None:
    with pytest.raises(ProxyError, match="closed before"):
        ProxyParser().feed(b"")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x00", "not a PROXY protocol header"),
        (v2(1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2), version=1), "unsupported version 1"),
        (v2(1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2), version=3), "unsupported version 3"),
        (v2(2, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2)), "unknown command 2"),
        (v2(0xF, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2)), "unknown command 15"),
        (v2(1, 0x12, inet4("1.2.3.4", "5.6.7.8", 1, 2)), "family/transport 0x12"),  # UDP
        (v2(1, 0x22, inet6("::1", "::2", 1, 2)), "family/transport 0x22"),
        (v2(1, 0x32, b"\0" * 216), "family/transport 0x32"),
        (v2(1, 0x10, inet4("1.2.3.4", "5.6.7.8", 1, 2)), "family/transport 0x10"),
        (v2(1, 0x41, b"\0" * 12), "family/transport 0x41"),
        (v2(1, 0x11, b"\0" * 11), "address block too short (11 < 12"),
        (v2(1, 0x21, inet4("1.2.3.4", "5.6.7.8", 1, 2)), "too short (12 < 36"),
        (v2(1, 0x31, b"\0" * 215), "too short (215 < 216"),
    ],
)
def test_malformed_v2_is_refused(data: bytes, why: str) -> None:
    assert why in refused(data)


def test_v2_over_the_length_cap_is_refused_before_waiting_for_it() -> None:
    fixed = v2(1, 0x11, b"", length=MAX_V2_LENGTH + 1)
    assert len(fixed) == 16
    assert "too long (521 > 520" in refused(fixed)
    at_cap = v2(1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2) + tlv(0xEE, b"\0" * 505))
    assert len(at_cap) == 536
    assert parse(at_cap).header.source_ip == "1.2.3.4"
    small = ProxyParser(max_v2_length=12)
    with pytest.raises(ProxyError, match="too long"):
        small.feed(at_cap[:16])


def test_a_finished_parser_refuses_more_data() -> None:
    parser = ProxyParser()
    parser.feed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(LocalProtocolError):
        parser.feed(b"more")
    broken = ProxyParser()
    with pytest.raises(ProxyError):
        broken.feed(b"junk")
    with pytest.raises(LocalProtocolError):
        broken.feed(b"more")


def test_a_second_proxy_line_is_session_data() -> None:
    # Only the first header is the proxy's; a second one is the client's
    # and goes to the SMTP session, where it is an unknown command.
    second = b"PROXY TCP4 203.0.113.9 198.51.100.1 1 25\r\n"
    result = parse(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25\r\n" + second)
    assert result.header == TCP4
    assert result.rest == second


def test_parse_header_is_stateless() -> None:
    assert parse_header(b"PROX") is NEED_DATA
    assert parse_header(V2_SIGNATURE + b"\x21") is NEED_DATA
    full = parse_header(b"PROXY UNKNOWN\r\nEHLO")
    assert full == ProxyResult(UNKNOWN_V1, b"EHLO")


# -- never anything but ProxyError -------------------------------------------

_PREFIXES = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE])


@settings(max_examples=400, deadline=None)
@given(prefix=_PREFIXES, body=st.binary(max_size=300), cuts=st.lists(st.integers(0, 320)))
def test_random_input_only_ever_raises_proxy_error(
    prefix: bytes, body: bytes, cuts: list[int]
) -> None:
    data = prefix + body
    whole = _outcome([data, b""])
    pieces = [data[a:b] for a, b in _spans(sorted(set(cuts)), len(data))]
    assert _outcome([*pieces, b""]) == whole


@settings(max_examples=300, deadline=None)
@given(
    cmd=st.integers(0, 15),
    fam=st.integers(0, 255),
    block=st.binary(max_size=260),
    version=st.integers(0, 15),
)
def test_random_v2_headers_only_ever_raise_proxy_error(
    cmd: int, fam: int, block: bytes, version: int
) -> None:
    data = v2(cmd, fam, block, version=version)
    assert _outcome([data + SMTP]) == _outcome([bytes([b]) for b in data + SMTP])


def _spans(cuts: list[int], n: int) -> list[tuple[int, int]]:
    points = [0, *(c for c in cuts if 0 < c < n), n]
    return list(itertools.pairwise(points))


def _outcome(chunks: list[bytes]) -> tuple[str, object]:
    """Feed chunks until a result or an error; what came of it."""
    parser = ProxyParser()
    fed = b""
    for chunk in chunks:
        try:
            result = parser.feed(chunk)
        except ProxyError:
            return ("error", None)
        fed += chunk
        if isinstance(result, ProxyResult):
            rest = b"".join(chunks)[len(fed) - len(result.rest) :]
            return ("ok", (result.header, rest))
    return ("need", None)


# -- trust list ----------------------------------------------------------------


def test_bare_addresses_are_single_hosts() -> None:
    trust = TrustList.parse(["192.0.2.1", "::1"])
    assert [str(n) for n in trust.networks] == ["192.0.2.1/32", "::1/128"]
    assert trust.trusts("192.0.2.1")
    assert not trust.trusts("192.0.2.2")
    assert trust.trusts("::1")
    assert not trust.trusts("::2")  # maddy's ::1 -> ::/32 would trust it


def test_cidrs_ignore_host_bits() -> None:
    trust = TrustList.parse(["192.168.0.1/24", "2001:db8::5/32"])
    assert [str(n) for n in trust.networks] == ["192.168.0.0/24", "2001:db8::/32"]
    assert trust.trusts("192.168.0.200")
    assert not trust.trusts("192.168.1.1")
    assert trust.trusts("2001:db8:ffff::1")


def test_mapped_and_scoped_peers_match_their_address() -> None:
    trust = TrustList.parse(["10.0.0.0/8", "fe80::/10"])
    assert trust.trusts("::ffff:10.1.2.3")
    assert trust.trusts("fe80::1%eth0")
    assert not trust.trusts("::ffff:11.1.2.3")


def test_empty_list_trusts_every_peer_and_unix_is_always_trusted() -> None:
    everyone = TrustList.parse([])
    assert everyone.trusts_everyone
    assert everyone.trusts("203.0.113.9") and everyone.trusts("2001:db8::1")
    some = TrustList.parse(["127.0.0.1"])
    assert not some.trusts_everyone
    assert some.trusts(None)  # a Unix-socket peer
    assert not some.trusts("not an address")


@pytest.mark.parametrize(
    "entry", ["", "example.org", "10.0.0.0/33", "::1/129", "1.2.3", "fe80::1%eth0", "10.0.0.0/x"]
)
def test_invalid_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="invalid trusted address"):
        TrustList.parse(["127.0.0.1", entry])
