"""A loopback DNS server answering from a small zone file, for benchmarks with checks.

`python bench/peers/dns_zone.py --port PORT --zone ZONE.json` serves the
records of ZONE.json (`{"name TYPE": ["record text", ...]}`, zone-file
syntax per record) over UDP, answering NXDOMAIN for names it does not
know and an empty answer for known names without the asked type. It prints
`dns-zone: listening on 127.0.0.1:PORT` once bound and stops on SIGTERM.
Responses are built with dnspython, which kittiwake depends on anyway.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

READY = "dns-zone: listening on "
TTL = 3600


def load(path: str) -> dict[tuple[str, str], list[str]]:
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    zone: dict[tuple[str, str], list[str]] = {}
    for key, records in raw.items():
        name, rtype = key.rsplit(" ", 1)
        zone[(name.lower().rstrip(".") + ".", rtype.upper())] = list(records)
    return zone


def answer(zone: dict[tuple[str, str], list[str]], data: bytes) -> bytes | None:
    try:
        query = dns.message.from_wire(data)
    except Exception:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    question = query.question[0]
    name = question.name.to_text().lower()
    rtype = dns.rdatatype.to_text(question.rdtype)
    records = zone.get((name, rtype))
    if records:
        response.answer.append(dns.rrset.from_text_list(name, TTL, "IN", rtype, records))
    elif not any(n == name for n, _ in zone):
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire(max_size=65535)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--zone", required=True)
    args = parser.parse_args()
    zone = load(args.zone)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{READY}127.0.0.1:{args.port}", flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        reply = answer(zone, data)
        if reply is not None:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    sys.exit(main())
