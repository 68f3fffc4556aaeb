"""A small DNS server on loopback for end-to-end tests, answering like a resolver.

Answers from a dict of (name, type) -> list of record texts (zone-file
syntax, as `dns.rrset.from_text_list` reads them). Behaves like the
recursive resolver kittiwake would normally ask:

* a name with records of other types only gets an empty answer (NODATA);
  a name with no records at all gets NXDOMAIN; both carry an SOA in the
  authority section so the negative answer has a TTL (RFC 2308);
* CNAME chains are followed within the data, and a loop is SERVFAIL;
* the value "SERVFAIL" answers that rcode, "TIMEOUT" never answers;
* UDP answers larger than the client's EDNS payload (512 without EDNS)
  are truncated, and the same port answers over TCP, so big records
  (a 16 kbit DKIM key) travel the way they do in the field;
* answers about the names in `secure` (a name: every type; or a
  (name, type) pair) carry the AD bit, as a validating resolver sets it
  for a DNSSEC-signed zone; a CNAME chain is secure only if every name
  in it is. Nothing else does, so DNSSEC and DANE can be tested both ways.

Used with kittiwake's `--debug.dnsoverride 127.0.0.1:PORT`, so no test ever
depends on (or leaks to) a real resolver. `queries` records every question.
"""

from __future__ import annotations

import socket
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

SERVFAIL = "SERVFAIL"
TIMEOUT = "TIMEOUT"
_SOA = "ns.test. hostmaster.test. 1 3600 600 86400 {ttl}"


def txt(*values: str | bytes) -> str:
    """A TXT record's zone text: each value cut into strings of 255 bytes, in order.

    No value gives one empty string. Bytes other than printable ASCII are
    written as `\\DDD` escapes, so UTF-8, invalid UTF-8 and control
    characters reach the client exactly as given.
    """
    parts: list[bytes] = []
    for value in values:
        raw = value.encode() if isinstance(value, str) else value
        parts.extend(raw[i : i + 255] for i in range(0, len(raw), 255))
    return " ".join(_quoted(p) for p in parts or [b""])


def _quoted(part: bytes) -> str:
    return (
        '"'
        + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03d}" for b in part)
        + '"'
    )


class FakeDNS:
    def __init__(
        self,
        records: dict[tuple[str, str], list[str] | str],
        *,
        ttl: int = 300,
        negative_ttl: int = 60,
        host: str = "127.0.0.1",
        port: int = 0,
        secure: set[str | tuple[str, str]] | None = None,
    ) -> None:
        """`host`, `port`: where to listen (a tool that only asks port 53 needs one).

        `secure`: the names (or (name, type) pairs) answered with the AD bit.
        """
        self.ttl = ttl
        self.secure: set[str | tuple[str, str]] = set()
        for entry in secure or ():
            self.set_secure(entry)
        self.negative_ttl = negative_ttl
        self.records: dict[tuple[str, str], list[str] | str] = {}
        for (name, rtype), value in records.items():
            self.set(name, rtype, value)
        self.queries: list[tuple[str, str]] = []
        self.sock, self.tcp = _bind_pair(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set(self, name: str, rtype: str, value: list[str] | str | None) -> None:
        """Add, replace or (with None) remove the records of one (name, type)."""
        key = (_key(name), rtype.upper())
        if value is None:
            self.records.pop(key, None)
        else:
            self.records[key] = value

    def set_secure(self, entry: str | tuple[str, str], secure: bool = True) -> None:
        """Answer a name (every type) or a (name, type) with the AD bit, or (False) without."""
        key: str | tuple[str, str] = (
            _key(entry) if isinstance(entry, str) else (_key(entry[0]), entry[1].upper())
        )
        if secure:
            self.secure.add(key)
        else:
            self.secure.discard(key)

    def _is_secure(self, name: str, rtype: str) -> bool:
        return name in self.secure or (name, rtype) in self.secure

    # -- serving ------------------------------------------------------------

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._reply(data, tcp=False)
            if reply is None:
                continue
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                return

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._tcp_client, args=(conn,), daemon=True).start()

    def _tcp_client(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            while True:
                head = _recv_exactly(conn, 2)
                if head is None:
                    return
                data = _recv_exactly(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                reply = self._reply(data, tcp=True)
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return
        finally:
            conn.close()

    def _reply(self, data: bytes, *, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        response = self._answer(query)
        if response is None:
            return None
        wire = response.to_wire(max_size=65535)
        if tcp:
            return wire
        limit = max(512, query.payload) if query.edns >= 0 else 512
        if len(wire) <= limit:
            return wire
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.TC
        return truncated.to_wire()

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        question = query.question[0]
        name = question.name.to_text().lower()
        rtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rtype))
        seen: set[str] = set()
        secure = self._is_secure(name, rtype)
        while True:
            secure = secure and self._is_secure(name, rtype)
            value = self.records.get((name, rtype))
            if value == TIMEOUT:
                return None
            if value == SERVFAIL:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            if value is not None:
                response.answer.append(
                    dns.rrset.from_text_list(name, self.ttl, "IN", rtype, list(value))
                )
                if secure:
                    response.flags |= dns.flags.AD
                return response
            cname = self.records.get((name, "CNAME"))
            if rtype != "CNAME" and isinstance(cname, list) and cname:
                if name in seen:  # a CNAME loop: what resolvers answer
                    response.answer.clear()
                    response.set_rcode(dns.rcode.SERVFAIL)
                    return response
                seen.add(name)
                response.answer.append(
                    dns.rrset.from_text_list(name, self.ttl, "IN", "CNAME", cname)
                )
                name = _key(cname[0])
                continue
            break
        exists = any(n == name for n, _ in self.records)
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = _SOA.format(ttl=self.negative_ttl)
        response.authority.append(
            dns.rrset.from_text_list("test.", self.negative_ttl, "IN", "SOA", [soa])
        )
        if secure:  # an authenticated denial of existence
            response.flags |= dns.flags.AD
        return response

    def close(self) -> None:
        # Stop the threads before closing their sockets: they may be mid-reply.
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.sock.close()
        self.tcp.close()


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same port of `host` (`port`, or a free one).

    A port free for UDP may be in use for TCP (an outgoing connection's
    ephemeral port): with `port` 0, try others until one is free for both.
    """
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, port))
        except OSError:
            tcp.close()
            raise
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((host, tcp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
            continue
        tcp.listen(16)
        tcp.settimeout(0.2)
        udp.settimeout(0.2)
        return udp, tcp
    raise OSError("no loopback port free for both UDP and TCP")


def _key(name: str) -> str:
    """A name as a question shows it: absolute, lowercase, odd bytes escaped (`\\032`)."""
    return dns.name.from_text(name.rstrip(".") + ".").to_text().lower()


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
