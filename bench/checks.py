"""What message authentication costs on the MX path: SPF, DKIM and DMARC on, against off.

Usage: python bench/checks.py [--sessions 50] [--seconds 10] [--json FILE]

Two kittiwake servers are measured one after the other with the same load:
`smtp-source` sends the same 10 KiB message, DKIM-signed (RSA 2048,
relaxed/relaxed, the usual signer's choice) by `bench.test`, from N
sessions at once to an `smtp` endpoint that discards it (`deliver_to
dummy`). The first runs no checks; the second runs `check { spf dkim }`
with DMARC on, so every message gets an SPF evaluation, a DKIM
verification (body hash, RSA verify) and a DMARC verdict, all passing.
DNS comes from `peers/dns_zone.py` on loopback and, after the warm-up,
from kittiwake's own cache, as on a busy MX. The target (issue 11): the
checks cost at most 25% of the discard rate, i.e. a ratio of at least 0.75.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import smtp_servers  # noqa: E402
from smtp_load import RECIPIENT, SENDER, Cell, measure, smtp_source  # noqa: E402
from smtp_servers import HOSTNAME, PEERS, Process, free_port, kittiwake  # noqa: E402

CHECKS = "check {\n    spf\n    dkim\n}\ndmarc yes"
SELECTOR = "bench"
TARGET_RATIO = 0.75


def signed_message(key: rsa.RSAPrivateKey, size: int) -> bytes:
    """A `size`-byte message from SENDER, signed for HOSTNAME, with CR LF line ends."""
    header = (
        f"From: Bench <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: checks benchmark\r\n"
        f"Message-ID: <bench@{HOSTNAME}>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * max(1, (size - len(header)) // len(line))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    message = header + b"\r\n" + body
    signature = dkim.sign(
        message,
        SELECTOR.encode(),
        HOSTNAME.encode(),
        pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"],
    )
    return signature + message


def zone(key: rsa.RSAPrivateKey) -> dict[str, list[str]]:
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()
    strings = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    return {
        "1.0.0.127.in-addr.arpa PTR": ["localhost."],
        f"{HOSTNAME} TXT": ['"v=spf1 ip4:127.0.0.0/8 -all"'],
        f"_dmarc.{HOSTNAME} TXT": ['"v=DMARC1; p=reject"'],
        f"{SELECTOR}._domainkey.{HOSTNAME} TXT": [strings],
    }


@contextlib.contextmanager
def dns_zone(work: Path, records: dict[str, list[str]]) -> Iterator[str]:
    path = work / "zone.json"
    path.write_text(json.dumps(records))
    port = free_port()
    cmd = [sys.executable, str(PEERS / "dns_zone.py"), "--port", str(port), "--zone", str(path)]
    proc = Process(cmd, work / "dns-zone.log")
    try:
        proc.wait_ready("dns-zone: listening on ")
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each server")
    parser.add_argument("--json", type=Path)
    smtp_servers.add_source_option(parser)
    args = parser.parse_args(argv)
    print(f"kittiwake: {smtp_servers.use_build(not args.source)}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with tempfile.TemporaryDirectory(prefix="kittiwake-bench-checks-") as tmp:
        work = Path(tmp)
        message = work / "message.eml"
        # smtp-source appends CR LF to each line it reads.
        message.write_bytes(signed_message(key, args.size).replace(b"\r\n", b"\n"))
        cell = Cell(args.sessions, args.size, 1, message)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        with dns_zone(work, zone(key)) as dns:
            for _ in range(args.rounds):
                for label, extra in (("off", ""), ("on", CHECKS)):
                    with kittiwake(label, work / label, durable=False, endpoint_extra=extra,
                                   dns=dns) as target:  # fmt: skip
                        smtp_source(target.port, 2, 40, args.size, False, message)  # warm up
                        time.sleep(0.5)
                        got = measure(target, cell, args.seconds, 100)
                        rates[label].append(got.rate)
                        log = (work / label / "kittiwake.log").read_text()
                        if label == "on" and "dkim=pass" not in log and "rejected" in log:
                            raise SystemExit(f"checks did not pass:\n{log[-2000:]}")
                        print(f"{label:>3}: {got.rate:8.0f} msgs/s ({got.messages} messages)")
    best = {label: max(values) for label, values in rates.items()}
    ratio = best["on"] / best["off"]
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(f"no checks:        {best['off']:8.0f} msgs/s (best of {args.rounds})")
    print(f"spf+dkim+dmarc:   {best['on']:8.0f} msgs/s (best of {args.rounds})")
    print(f"{verdict}  checks keep {ratio:.2f} of the discard rate (target >= {TARGET_RATIO})")
    if args.json is not None:
        args.json.write_text(json.dumps({"rates": rates, "ratio": ratio, "verdict": verdict}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
