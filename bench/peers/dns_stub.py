"""A loopback DNS stub for kittiwake under benchmark: `127.x` has a name, nothing else exists.

kittiwake looks up the client's PTR name for every session (the Received
header wants it) through its own resolver, which reads /etc/resolv.conf
and not /etc/hosts. Left alone, a benchmark would send thousands of
queries to whatever nameserver the machine has; started with
`--debug.dnsoverride 127.0.0.1:PORT` it asks this process instead, so all
traffic stays on loopback and each answer costs about what a local caching
resolver's would.

Answers: a PTR query for `*.127.in-addr.arpa` gets `localhost.`; any other
question gets NXDOMAIN. One thread, one UDP socket, no recursion. Run as
`python bench/peers/dns_stub.py --port PORT`; it prints
`dns-stub: listening on 127.0.0.1:PORT` once bound and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys

READY = "dns-stub: listening on "
PTR = 12
CLASS_IN = 1
TTL = 3600
LOCALHOST = b"\x09localhost\x00"
LOOPBACK_ZONE = (b"127", b"in-addr", b"arpa")


def _question(packet: bytes) -> tuple[list[bytes], int, int, int] | None:
    """Labels, type, class and end offset of the first question; None if malformed."""
    labels: list[bytes] = []
    pos = 12
    while pos < len(packet):
        length = packet[pos]
        if length == 0:
            if pos + 5 > len(packet):
                return None
            qtype, qclass = struct.unpack_from("!HH", packet, pos + 1)
            return labels, qtype, qclass, pos + 5
        if length > 63:  # no compression pointers in a question we accept
            return None
        labels.append(packet[pos + 1 : pos + 1 + length].lower())
        pos += 1 + length
    return None


def answer(packet: bytes) -> bytes | None:
    """The reply to one query packet, or None to ignore it."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack_from("!HHH", packet)
    if flags & 0x8000 or qdcount != 1:  # a response, or not exactly one question
        return None
    parsed = _question(packet)
    if parsed is None:
        return None
    labels, qtype, qclass, end = parsed
    question = packet[12:end]
    rd = flags & 0x0100
    found = qtype == PTR and qclass == CLASS_IN and tuple(labels[-3:]) == LOOPBACK_ZONE
    if not found:
        header = struct.pack("!HHHHHH", ident, 0x8400 | rd | 0x0003, 1, 0, 0, 0)  # NXDOMAIN
        return header + question
    header = struct.pack("!HHHHHH", ident, 0x8400 | rd, 1, 1, 0, 0)  # authoritative
    record = struct.pack("!HHHIH", 0xC00C, PTR, CLASS_IN, TTL, len(LOCALHOST)) + LOCALHOST
    return header + question + record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="loopback DNS stub for benchmarks")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write(f"{READY}127.0.0.1:{args.port}\n")
    sys.stdout.flush()
    try:
        while True:
            packet, peer = sock.recvfrom(512)
            reply = answer(packet)
            if reply is not None:
                sock.sendto(reply, peer)
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
