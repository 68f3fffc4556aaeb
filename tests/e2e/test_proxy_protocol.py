"""`proxy_protocol` (docs/proxy.md) against the real server, with headers written by hand.

Every test talks to a real `kittiwake run` over real sockets. The header is
built byte by byte here (v1 text, v2 binary with TLVs), so what is tested is
the wire format, not a library's idea of it. After each delivery the
Received field of the stored message says which address the server took
for the client: the one in the header when the peer is trusted, the real
peer's otherwise. A fake DNS server gives the proxied addresses PTR names,
so the Received field also shows that rDNS looked up the right address.

Trusted peer: 127.0.0.1 (the tests connect from it); untrusted: 127.0.0.2.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from fakedns import FakeDNS
from kw import Dialog, Kittiwake, maildir_files

Start = Callable[..., Kittiwake]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXIED4 = "203.0.113.7"
PROXIED6 = "2001:db8::7"
TRUSTED = "127.0.0.1"
UNTRUSTED = "127.0.0.2"
#: The server waits this long for a trusted peer's header (docs/proxy.md).
HEADER_DEADLINE = 5.0


# -- building headers ----------------------------------------------------------


def v1(src: str, dst: str = "127.0.0.1", sport: int = 40000, dport: int = 25) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


#: What HAProxy may add: ALPN, authority (SNI), NOOP padding, unique ID and
#: an SSL block with its own sub-TLVs (version, cipher).
SAMPLE_TLVS = (
    tlv(0x01, b"smtp")
    + tlv(0x02, b"mx.example.com")
    + tlv(0x04, b"\0" * 7)
    + tlv(0x05, bytes(range(16)))
    + tlv(0x20, b"\x01" + struct.pack("!I", 0) + tlv(0x21, b"TLSv1.3") + tlv(0x23, b"AES"))
)


def v2(command: int, family: int, payload: bytes, *, version: int = 2) -> bytes:
    """A v2 header: signature, version/command, family/transport, length, payload."""
    return (
        V2_SIGNATURE
        + bytes([(version << 4) | command, family])
        + struct.pack("!H", len(payload))
        + payload
    )


def v2_proxy(src: str, dst: str, sport: int = 40000, dport: int = 25, tlvs: bytes = b"") -> bytes:
    """v2 PROXY command over TCP, IPv4 (0x11) or IPv6 (0x21), with TLVs."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x11 if s.version == 4 else 0x21
    return v2(0x1, family, s.packed + d.packed + struct.pack("!HH", sport, dport) + tlvs)


V2_LOCAL = v2(0x0, 0x00, b"")


# -- the server ----------------------------------------------------------------


def config(
    tmp: Path,
    *,
    proxy: str = "proxy_protocol {\n        trust 127.0.0.1 ::1/128\n    }",
    listen: str = "tcp://127.0.0.1:0",
    tls: str = "tls off",
    block: str = "",
) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
smtp {listen} {{
    {tls}
    {proxy}
{block}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


@pytest.fixture
def ptr_dns() -> Iterator[FakeDNS]:
    """PTR names for the real peer and for both proxied addresses."""
    v6 = ipaddress.ip_address(PROXIED6).reverse_pointer
    server = FakeDNS(
        {
            ("1.0.0.127.in-addr.arpa", "PTR"): ["client.example.test."],
            (ipaddress.ip_address(PROXIED4).reverse_pointer, "PTR"): ["proxied.example.test."],
            (v6, "PTR"): ["proxied6.example.test."],
        }
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxied(kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS) -> Kittiwake:
    """A plain `tcp://` endpoint trusting 127.0.0.1 and ::1."""
    return kittiwake(config(tmp_path), args=("--debug.dnsoverride", ptr_dns.address))


# -- talking -------------------------------------------------------------------


def received(tmp: Path, count: int = 1) -> list[str]:
    """The Received field of each stored message, unfolded, oldest first."""
    messages = [p.read_bytes() for p in maildir_files(tmp / "mail", "example.org", "user")]
    assert len(messages) == count, messages
    fields = []
    for message in messages:
        header = message.split(b"\n\n", 1)[0].decode()
        found = re.search(r"^Received: .*?(?=\n\S)", header, re.M | re.S)
        assert found, header
        fields.append(found.group(0).replace("\n ", " "))
    return fields


def deliver(d: Dialog, *, greeted: bool = False, tag: str = "hi") -> None:
    """Banner (unless already read), EHLO, one message to user@example.org, QUIT."""
    if not greeted:
        assert d.reply()[0].startswith("220 mx.example.com ESMTP"), "no banner"
    assert d.cmd("EHLO client.example").startswith("250 ")
    assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
    assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
    assert d.cmd("DATA").startswith("354")
    reply = d.cmd(f"Subject: {tag}\r\n\r\n{tag}\r\n.")
    assert reply.startswith("250 2.0.0 OK: queued"), reply
    assert d.cmd("QUIT").startswith("221 ")


def from_part(rdns: str | None, ip: str) -> str:
    """The `from HELO (RDNS [IP])` part of the Received field (docs/server.md, "Received")."""
    inner = f"{re.escape(rdns)} " if rdns else ""
    return rf"^Received: from client\.example \({inner}\[{re.escape(ip)}\]\) by mx\.example\.com "


def everything(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Read until the server closes; (what it sent, seconds it took)."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {timeout} s; got {data!r}") from None
    return data, time.monotonic() - started


def connect(port: int, source: str = TRUSTED) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- honoured headers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "rdns", "ip"),
    [
        (v1(PROXIED4), "proxied.example.test", PROXIED4),
        (v1(PROXIED6, "2001:db8::25"), "proxied6.example.test", PROXIED6),
        (v2_proxy(PROXIED4, "192.0.2.25", tlvs=SAMPLE_TLVS), "proxied.example.test", PROXIED4),
        (v2_proxy(PROXIED6, "2001:db8::25", tlvs=SAMPLE_TLVS), "proxied6.example.test", PROXIED6),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v2-ipv4-tlvs", "v2-ipv6-tlvs"],
)
def test_header_names_the_client(
    proxied: Kittiwake, tmp_path: Path, header: bytes, rdns: str, ip: str
) -> None:
    with Dialog(proxied.port(), source=TRUSTED, timeout=10) as d:
        d.send(header)
        deliver(d)
    (field,) = received(tmp_path)
    assert re.match(from_part(rdns, ip), field), field
    assert "127.0.0.1" not in field
    # Logs see the proxied client too (docs/proxy.md).
    proxied.wait_log(rf"incoming message .*src_ip={re.escape(ip)}\b")


def test_ipv4_mapped_client_is_shown_dotted(proxied: Kittiwake, tmp_path: Path) -> None:
    # An IPv4-mapped IPv6 address is written in dotted form (docs/server.md, "Received").
    with Dialog(proxied.port(), source=TRUSTED, timeout=10) as d:
        d.send(v1(f"::ffff:{PROXIED4}", "::ffff:127.0.0.1"))
        deliver(d)
    (field,) = received(tmp_path)
    assert re.match(r"^Received: from client\.example \((\S+ )?\[203\.0\.113\.7\]\) ", field), field


def test_ipv6_proxy_peer(kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS) -> None:
    # The proxy itself reached over IPv6 and trusted as ::1/128.
    srv = kittiwake(
        config(
            tmp_path,
            listen="tcp://[::1]:0",
            proxy="proxy_protocol {\n        trust ::1/128\n    }",
        ),
        args=("--debug.dnsoverride", ptr_dns.address),
    )
    with Dialog(srv.port(), host="::1", timeout=10) as d:
        d.send(v2_proxy(PROXIED4, "192.0.2.25", tlvs=SAMPLE_TLVS))
        deliver(d)
    (field,) = received(tmp_path)
    assert re.match(from_part("proxied.example.test", PROXIED4), field), field


@pytest.mark.parametrize(
    "header",
    [V2_LOCAL, b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 203.0.113.7 127.0.0.1 40000 25\r\n"],
    ids=["v2-local", "v1-unknown", "v1-unknown-with-addresses"],
)
def test_local_and_unknown_keep_the_real_peer(
    proxied: Kittiwake, tmp_path: Path, header: bytes
) -> None:
    with Dialog(proxied.port(), source=TRUSTED, timeout=10) as d:
        d.send(header)
        deliver(d)
    (field,) = received(tmp_path)
    assert re.match(from_part("client.example.test", "127.0.0.1"), field), field


def test_v2_unix_family_keeps_the_real_peer(proxied: Kittiwake, tmp_path: Path) -> None:
    # AF_UNIX/STREAM (0x31): two 108-byte paths; no IP to take.
    paths = b"/run/client.sock".ljust(108, b"\0") + b"/run/kw.sock".ljust(108, b"\0")
    with Dialog(proxied.port(), source=TRUSTED, timeout=10) as d:
        d.send(v2(0x1, 0x31, paths))
        deliver(d)
    (field,) = received(tmp_path)
    assert re.match(from_part("client.example.test", "127.0.0.1"), field), field


@pytest.mark.parametrize(
    "header", [v1(PROXIED4), v2_proxy(PROXIED4, "192.0.2.25", tlvs=SAMPLE_TLVS)], ids=["v1", "v2"]
)
def test_header_and_smtp_in_one_segment(proxied: Kittiwake, tmp_path: Path, header: bytes) -> None:
    # The bytes after the header belong to the session (docs/proxy.md): an eager
    # client's EHLO and whole pipelined envelope arrive with the header.
    with Dialog(proxied.port(), source=TRUSTED, timeout=10) as d:
        d.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        d.send(
            header
            + b"EHLO client.example\r\nMAIL FROM:<a@example.net>\r\n"
            + b"RCPT TO:<user@example.org>\r\nDATA\r\n"
        )
        assert d.reply()[0].startswith("220 mx.example.com ESMTP")
        assert d.reply()[-1].startswith("250 ")
        assert d.reply() == ["250 2.0.0 Roger, accepting mail from <a@example.net>"]
        assert d.reply() == ["250 2.0.0 I'll make sure <user@example.org> gets this"]
        assert d.reply()[0].startswith("354")
        assert d.cmd("Subject: one\r\n\r\none segment\r\n.").startswith("250 ")
        d.cmd("QUIT")
    (field,) = received(tmp_path)
    assert re.match(from_part("proxied.example.test", PROXIED4), field), field


def test_second_proxy_line_is_part_of_the_session(proxied: Kittiwake, tmp_path: Path) -> None:
    # Only the first header is the proxy's; a second one in the same
    # segment is the client's first command line, and a bad one.
    with Dialog(proxied.port(), source=TRUSTED, timeout=10) as d:
        d.send(v1(PROXIED4) + v1("198.51.100.1"))
        assert d.reply()[0].startswith("220 mx.example.com ESMTP")
        assert d.reply() == ["501 5.5.2 Bad command"]
        deliver(d, greeted=True)
    (field,) = received(tmp_path)
    assert re.match(from_part("proxied.example.test", PROXIED4), field), field


# -- who is trusted ------------------------------------------------------------


def test_untrusted_peer_proxy_line_is_a_bad_command(proxied: Kittiwake, tmp_path: Path) -> None:
    # From an untrusted peer no header is expected; a PROXY line is answered
    # like any bad command (`PROXY` has no space as its 5th character) and
    # the session goes on with the real address (docs/proxy.md).
    with Dialog(proxied.port(), source=UNTRUSTED, timeout=10) as d:
        assert d.reply()[0].startswith("220 mx.example.com ESMTP")  # no header asked for
        assert d.cmd(v1(PROXIED4).decode().strip()) == "501 5.5.2 Bad command"
        deliver(d, greeted=True)
    (field,) = received(tmp_path)
    assert re.match(from_part(None, UNTRUSTED), field), field
    assert PROXIED4 not in field


def test_untrusted_peer_proxy_line_is_logged(proxied: Kittiwake) -> None:
    # Never honoured, but logged, with the real peer's address (docs/proxy.md).
    with Dialog(proxied.port(), source=UNTRUSTED, timeout=10) as d:
        assert d.reply()[0].startswith("220 ")
        assert d.cmd(v1(PROXIED4).decode().strip()).startswith("501 ")
        assert d.cmd("QUIT").startswith("221 ")
    proxied.wait_log(r"PROXY header from an untrusted peer ignored src_ip=127\.0\.0\.2\b")
    assert PROXIED4 not in proxied.log


def test_header_from_an_untrusted_peer_sent_first_is_not_honoured(
    kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS
) -> None:
    # maddy's case: the trust list names somebody else; the very same
    # header, sent before the banner, is just a bad command line.
    srv = kittiwake(
        config(tmp_path, proxy="proxy_protocol {\n        trust fe80::bad/128\n    }"),
        args=("--debug.dnsoverride", ptr_dns.address),
    )
    with Dialog(srv.port(), source=TRUSTED, timeout=10) as d:
        d.send(v1(PROXIED4))
        assert d.reply()[0].startswith("220 mx.example.com ESMTP")
        assert d.reply() == ["501 5.5.2 Bad command"]
        deliver(d, greeted=True)
    (field,) = received(tmp_path)
    assert re.match(from_part("client.example.test", "127.0.0.1"), field), field
    assert PROXIED4 not in srv.log


def test_arguments_and_trust_lines_both_count(
    kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS
) -> None:
    proxy = "proxy_protocol 127.0.0.2 {\n        trust 127.0.0.3/32\n    }"
    srv = kittiwake(config(tmp_path, proxy=proxy), args=("--debug.dnsoverride", ptr_dns.address))
    for source in ("127.0.0.2", "127.0.0.3"):
        with Dialog(srv.port(), source=source, timeout=10) as d:
            d.send(v1(PROXIED4))
            deliver(d, tag=source)
    with Dialog(srv.port(), source="127.0.0.4", timeout=10) as d:  # neither: plain SMTP
        deliver(d, tag="untrusted")
    fields = received(tmp_path, 3)
    assert sum(bool(re.match(from_part("proxied.example.test", PROXIED4), f)) for f in fields) == 2
    assert sum(bool(re.match(from_part(None, "127.0.0.4"), f)) for f in fields) == 1


def test_empty_list_trusts_every_peer(kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS) -> None:
    srv = kittiwake(
        config(tmp_path, proxy="proxy_protocol"), args=("--debug.dnsoverride", ptr_dns.address)
    )
    sock = connect(srv.port(), "127.0.0.9")
    try:
        sock.sendall(b"EHLO client.example\r\n")  # a header is required: none came
        data, _ = everything(sock, 10)
    finally:
        sock.close()
    assert data == b""
    with Dialog(srv.port(), source="127.0.0.9", timeout=10) as d:
        d.send(v1(PROXIED4))
        deliver(d)
    (field,) = received(tmp_path)
    assert re.match(from_part("proxied.example.test", PROXIED4), field), field


# -- bad headers: closed without a banner ---------------------------------------


BAD_HEADERS = {
    "not-a-header": b"EHLO client.example\r\n",
    "http": b"GET / HTTP/1.0\r\n\r\n",
    "v1-bad-address": b"PROXY TCP4 203.0.113.300 127.0.0.1 40000 25\r\n",
    "v1-family-mismatch": b"PROXY TCP4 2001:db8::7 127.0.0.1 40000 25\r\n",
    "v1-unknown-protocol": b"PROXY UDP4 203.0.113.7 127.0.0.1 40000 25\r\n",
    "v1-missing-port": b"PROXY TCP4 203.0.113.7 127.0.0.1 40000\r\n",
    "v1-port-out-of-range": b"PROXY TCP4 203.0.113.7 127.0.0.1 70000 25\r\n",
    "v1-bare-lf": b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\n",
    "v1-lower-case": b"proxy TCP4 203.0.113.7 127.0.0.1 40000 25\r\n",
    "v1-over-long": b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
    "v1-over-long-no-end": b"PROXY TCP6 " + b"f" * 200,
    "v2-version-3": v2(0x1, 0x11, bytes(12), version=3),
    "v2-unknown-command": v2(0x7, 0x11, bytes(12)),
    "v2-unknown-family": v2(0x1, 0x51, bytes(12)),
    "v2-short-address-block": v2(0x1, 0x11, bytes(4)),
    "v2-over-long": v2(0x1, 0x11, bytes(12) + tlv(0x04, bytes(600))),
    # Only the fixed part, announcing too much: refused without waiting.
    "v2-over-long-announced": V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 600),
}


def test_bad_headers_close_without_a_banner(proxied: Kittiwake) -> None:
    for name, header in BAD_HEADERS.items():
        sock = connect(proxied.port())
        try:
            sock.sendall(header)
            data, took = everything(sock, 10)
        finally:
            sock.close()
        assert data == b"", (name, data)  # not even a banner
        assert took < HEADER_DEADLINE - 1, (name, took)  # refused at once, no deadline wait
    proxied.wait_log(r"bad or missing PROXY header, closing peer=127\.0\.0\.1")
    assert "ESMTP" not in proxied.log
    # The listener is still fine afterwards.
    with Dialog(proxied.port(), source=TRUSTED, timeout=10) as d:
        d.send(v1(PROXIED4))
        assert d.reply()[0].startswith("220 ")


def test_partial_or_missing_header_times_out(proxied: Kittiwake) -> None:
    # Three clients at once, so the 5 s deadline is waited for only once.
    cases = {
        "nothing": b"",
        "v1-partial": b"PROXY TCP4 203.0.113.7 127.0.0",
        "v2-signature-only": V2_SIGNATURE,
        "v2-partial-payload": v2_proxy(PROXIED4, "192.0.2.25")[:20],
    }
    results: dict[str, tuple[bytes, float] | BaseException] = {}

    def client(name: str, data: bytes) -> None:
        sock = connect(proxied.port())
        try:
            started = time.monotonic()
            if data:
                sock.sendall(data)
            got, _ = everything(sock, HEADER_DEADLINE + 5)
            results[name] = (got, time.monotonic() - started)
        except BaseException as exc:
            results[name] = exc
        finally:
            sock.close()

    threads = [threading.Thread(target=client, args=item) for item in cases.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HEADER_DEADLINE + 10)
    for name in cases:
        result = results[name]
        assert not isinstance(result, BaseException), (name, result)
        data, took = result
        assert data == b"", (name, data)
        assert HEADER_DEADLINE - 0.5 <= took <= HEADER_DEADLINE + 3, (name, took)
    # The log says why, also when nothing came at all (it used to say reason="").
    proxied.wait_log(
        r"bad or missing PROXY header, closing peer=127\.0\.0\.1 "
        r"reason=\"no PROXY header within \d+ s\""
    )
    assert 'reason=""' not in proxied.log


# -- TLS behind the proxy ------------------------------------------------------


class MemoryTLS:
    """A TLS client over a raw socket through memory BIOs.

    Unlike `ssl.SSLSocket` it lets the first flight (the ClientHello) go out
    in the same `send` as bytes written before it: the PROXY header. Has
    the `sendall`/`recv`/`close` that `Dialog` uses.
    """

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, prefix: bytes) -> None:
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._in, self._out, server_hostname="localhost")
        self._prefix = prefix
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        data, self._prefix = self._prefix + self._out.read(), b""
        if data:
            self.raw.sendall(data)

    def _fill(self) -> None:
        chunk = self.raw.recv(65536)
        if chunk:
            self._in.write(chunk)
        else:
            self._in.write_eof()

    def sendall(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self.obj.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except ssl.SSLZeroReturnError:
                return b""

    def close(self) -> None:
        self.raw.close()


EHLO_TLS = [
    "250-Hello client.example",
    "250-PIPELINING",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-CHUNKING",
    "250-SMTPUTF8",
    "250-REQUIRETLS",
    "250-SIZE 33554432",
    "250 LIMITS RCPTMAX=20000",
]


def deliver_tls(d: Dialog) -> None:
    assert d.reply()[0].startswith("220 mx.example.com ESMTP")
    d.send(b"EHLO client.example\r\n")
    # The session is TLS already: no STARTTLS offered, REQUIRETLS is.
    assert d.reply() == EHLO_TLS
    assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
    assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
    assert d.cmd("DATA").startswith("354")
    assert d.cmd("Subject: tls\r\n\r\nsecret\r\n.").startswith("250 ")
    assert d.cmd("QUIT").startswith("221 ")


def test_tls_listener_header_in_clear_then_handshake(
    kittiwake: Start,
    tmp_path: Path,
    ptr_dns: FakeDNS,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    cert, key = cert_files
    srv = kittiwake(
        config(tmp_path, listen="tls://127.0.0.1:0", tls=f"tls file {cert} {key}"),
        args=("--debug.dnsoverride", ptr_dns.address),
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    # Header, then (in a later segment) the handshake, as HAProxy does it.
    with Dialog(srv.port(), source=TRUSTED, timeout=10) as d:
        d.send(v2_proxy(PROXIED4, "192.0.2.25", tlvs=SAMPLE_TLVS))
        d.starttls(context)
        assert isinstance(d.sock, ssl.SSLSocket) and d.sock.version() is not None
        deliver_tls(d)
    # Header and ClientHello in one segment: nothing after the header is lost.
    with Dialog(srv.port(), source=TRUSTED, timeout=10) as d:
        assert isinstance(d.sock, socket.socket)
        d.sock = MemoryTLS(d.sock, context, v1(PROXIED6, "2001:db8::25"))  # type: ignore[assignment]
        deliver_tls(d)
    fields = received(tmp_path, 2)
    assert sum(bool(re.match(from_part("proxied.example.test", PROXIED4), f)) for f in fields) == 1
    assert sum(bool(re.match(from_part("proxied6.example.test", PROXIED6), f)) for f in fields) == 1
    assert all(" with ESMTPS id " in f for f in fields), fields


def test_tls_listener_without_header_gets_nothing(
    kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS, cert_files: tuple[str, str]
) -> None:
    # maddy expected the header inside TLS; kittiwake wants it in clear
    # (docs/proxy.md, "TLS"), so a ClientHello first is a bad header.
    cert, key = cert_files
    srv = kittiwake(
        config(tmp_path, listen="tls://127.0.0.1:0", tls=f"tls file {cert} {key}"),
        args=("--debug.dnsoverride", ptr_dns.address),
    )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = connect(srv.port())
    try:
        with (
            pytest.raises((ssl.SSLError, OSError)),
            context.wrap_socket(sock, server_hostname="localhost") as wrapped,
        ):
            wrapped.recv(100)
    finally:
        sock.close()
    srv.wait_log(r"bad or missing PROXY header, closing peer=127\.0\.0\.1")


def test_proxy_channel_tls_on_a_tcp_listener(
    kittiwake: Start,
    tmp_path: Path,
    ptr_dns: FakeDNS,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    cert, key = cert_files
    proxy = f"proxy_protocol {{\n        trust 127.0.0.1\n        tls file {cert} {key}\n    }}"
    srv = kittiwake(config(tmp_path, proxy=proxy), args=("--debug.dnsoverride", ptr_dns.address))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with Dialog(srv.port(), source=TRUSTED, timeout=10) as d:
        d.send(v1(PROXIED4))
        d.starttls(context)
        deliver_tls(d)
    with Dialog(srv.port(), source=TRUSTED, timeout=10) as d:
        assert isinstance(d.sock, socket.socket)
        d.sock = MemoryTLS(d.sock, context, v2_proxy(PROXIED6, "2001:db8::25"))  # type: ignore[assignment]
        deliver_tls(d)
    # An untrusted peer is not the proxy: plain SMTP with the endpoint's own
    # `tls off` (no TLS at all), no header expected.
    with Dialog(srv.port(), source=UNTRUSTED, timeout=10) as d:
        deliver(d)
    fields = received(tmp_path, 3)
    assert sum(bool(re.match(from_part("proxied.example.test", PROXIED4), f)) for f in fields) == 1
    assert sum(bool(re.match(from_part("proxied6.example.test", PROXIED6), f)) for f in fields) == 1
    untrusted = [f for f in fields if re.match(from_part(None, UNTRUSTED), f)]
    assert len(untrusted) == 1 and " with ESMTP id " in untrusted[0], fields
