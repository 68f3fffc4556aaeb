"""A tiny authoritative DNS server on loopback for end-to-end tests.

Answers from a dict of (name, type) -> list of record texts; names it does
not know get NXDOMAIN, and names mapped to "SERVFAIL" get that rcode. Used
with kittiwake's `--debug.dnsoverride 127.0.0.1:PORT`, so no test ever
depends on (or leaks to) a real resolver.
"""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

SERVFAIL = "SERVFAIL"


class FakeDNS:
    def __init__(self, records: dict[tuple[str, str], list[str] | str]) -> None:
        self.records = {
            (name.lower().rstrip(".") + ".", t.upper()): v for (name, t), v in records.items()
        }
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            try:
                self.sock.sendto(self._answer(query).to_wire(), peer)
            except OSError:
                return

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower()
        rtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rtype))
        value = self.records.get((name, rtype))
        if value == SERVFAIL:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif value is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.answer.append(dns.rrset.from_text_list(name, 300, "IN", rtype, list(value)))
        return response

    def close(self) -> None:
        # Stop the thread before closing its socket: it may be mid-reply.
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
