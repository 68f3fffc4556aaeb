"""kittiwake behind a real HAProxy (`send-proxy`, `send-proxy-v2`).

A real client (smtplib, swaks) connects from 127.0.0.5 to HAProxy, which
connects to kittiwake from 127.0.0.9 and opens with a PROXY header. The
Received field of the stored message must name the client, `[127.0.0.5]`,
never HAProxy's address. kittiwake trusts only 127.0.0.9, so a client that
reaches kittiwake directly cannot claim an address. HAProxy's own health
checks (`check-send-proxy`, `option smtpchk`) must pass too.
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from fakedns import FakeDNS
from haproxy import PROXY_SOURCE, HAProxy, Route
from kw import Kittiwake, maildir_files, need_tool

Start = Callable[..., Kittiwake]
CLIENT = "127.0.0.5"
KINDS = {"v1": "send-proxy", "v2": "send-proxy-v2"}


def config(tmp: Path, tls: str = "tls off") -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    {tls}
    proxy_protocol {{
        trust {PROXY_SOURCE}
    }}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


@pytest.fixture(autouse=True)
def _haproxy_installed() -> None:
    need_tool("haproxy", "haproxy")


@pytest.fixture
def ptr_dns() -> Iterator[FakeDNS]:
    server = FakeDNS(
        {
            ("5.0.0.127.in-addr.arpa", "PTR"): ["client5.example.test."],
            ("9.0.0.127.in-addr.arpa", "PTR"): ["haproxy.example.test."],
        }
    )
    try:
        yield server
    finally:
        server.close()


def received_fields(tmp: Path) -> list[str]:
    fields = []
    for path in maildir_files(tmp / "mail", "example.org", "user"):
        header = path.read_bytes().split(b"\n\n", 1)[0].decode()
        found = re.search(r"^Received: .*?(?=\n\S)", header, re.M | re.S)
        assert found, header
        fields.append(found.group(0).replace("\n ", " "))
    return fields


def client_part(proto: str = "ESMTP") -> str:
    return (
        r"^Received: from client\.example \(client5\.example\.test \[127\.0\.0\.5\]\)"
        rf" by mx\.example\.com \(envelope-sender <a@example\.net>\) with {proto} id "
    )


def routes(port: int, *, checks: bool = False) -> list[Route]:
    extra: tuple[str, ...] = ("option smtpchk",) if checks else ()
    check = " check check-send-proxy inter 200ms" if checks else ""
    return [
        Route(name, ("127.0.0.1", port), option + check, extra) for name, option in KINDS.items()
    ]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_received_names_the_client_not_haproxy(
    kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS, kind: str
) -> None:
    srv = kittiwake(config(tmp_path), args=("--debug.dnsoverride", ptr_dns.address))
    proxy = HAProxy(tmp_path / "haproxy", routes(srv.port()))
    try:
        proxy.start()
        with smtplib.SMTP(
            "127.0.0.1", proxy.port(kind), timeout=10, source_address=(CLIENT, 0)
        ) as client:
            client.ehlo("client.example")
            refused = client.sendmail(
                "a@example.net", ["user@example.org"], b"Subject: via haproxy\r\n\r\nhello\r\n"
            )
            assert refused == {}
    finally:
        proxy.stop()
    (field,) = received_fields(tmp_path)
    assert re.match(client_part(), field), field
    assert PROXY_SOURCE not in field and "haproxy.example.test" not in field
    srv.wait_log(r"incoming message .*src_ip=127\.0\.0\.5\b")
    assert "bad or missing PROXY header" not in srv.log


def test_swaks_starttls_through_haproxy_v2(
    kittiwake: Start,
    tmp_path: Path,
    ptr_dns: FakeDNS,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    # HAProxy in tcp mode relays the STARTTLS exchange untouched.
    swaks = need_tool("swaks", "swaks")
    cert, key = cert_files
    srv = kittiwake(
        config(tmp_path, tls=f"tls file {cert} {key}"),
        args=("--debug.dnsoverride", ptr_dns.address),
    )
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    proxy = HAProxy(tmp_path / "haproxy", routes(srv.port()))
    try:
        proxy.start()
        result = subprocess.run(
            [
                swaks,
                "--server",
                "127.0.0.1",
                "--port",
                str(proxy.port("v2")),
                "--local-interface",
                CLIENT,
                "--ehlo",
                "client.example",
                "--from",
                "a@example.net",
                "--to",
                "user@example.org",
                "--tls",
                "--tls-ca-path",
                str(ca_path),
                "--tls-verify",
                "--tls-sni",
                "localhost",
                "--body",
                "through haproxy",
                "--timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    (field,) = received_fields(tmp_path)
    assert re.match(client_part("ESMTPS"), field), field


def test_bad_header_from_the_proxy_address_is_refused(
    kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS
) -> None:
    # Whoever connects from the trusted address must send a header: a
    # malformed one written by hand gets no banner. The same bytes from the
    # client's address are only a bad command.
    srv = kittiwake(config(tmp_path), args=("--debug.dnsoverride", ptr_dns.address))
    malformed = (
        b"PROXY TCP4 127.0.0.5 127.0.0.1 4000\r\n",  # a port missing
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x00",  # v2 TCP4, no address block
    )
    for header in malformed:
        sock = socket.create_connection(
            ("127.0.0.1", srv.port()), timeout=10, source_address=(PROXY_SOURCE, 0)
        )
        try:
            sock.sendall(header)
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
        finally:
            sock.close()
        assert data == b"", data
    srv.wait_log(r"bad or missing PROXY header, closing peer=127\.0\.0\.9")
    with smtplib.SMTP("127.0.0.1", srv.port(), timeout=10, source_address=(CLIENT, 0)) as c:
        code, _ = c.docmd("PROXY", "TCP4 192.0.2.1 127.0.0.1 4000 25")
        assert code == 501
        c.ehlo("client.example")
        c.sendmail("a@example.net", ["user@example.org"], b"Subject: direct\r\n\r\nx\r\n")
    (field,) = received_fields(tmp_path)
    assert re.match(client_part(), field), field


def test_health_checks_with_proxy_headers_pass(
    kittiwake: Start, tmp_path: Path, ptr_dns: FakeDNS
) -> None:
    # `check-send-proxy`: HAProxy's SMTP checks (banner, HELO, expect 2xx)
    # open with a header too: v2 `LOCAL`, or a v1 line naming HAProxy
    # itself. kittiwake must answer them like any client.
    srv = kittiwake(config(tmp_path), args=("--debug.dnsoverride", ptr_dns.address))
    proxy = HAProxy(tmp_path / "haproxy", routes(srv.port(), checks=True))
    status: dict[str, str] = {}
    try:
        proxy.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = {
                row["pxname"]: f"{row['status']} {row['check_status']}"
                for row in proxy.stats()
                if row["svname"] == "kw"
            }
            if status == {"v1": "UP L7OK", "v2": "UP L7OK"}:
                break
            time.sleep(0.2)
        log = proxy.log
    finally:
        proxy.stop()
    assert status == {"v1": "UP L7OK", "v2": "UP L7OK"}, (status, log)
    assert "bad or missing PROXY header" not in srv.log, srv.log


def test_haproxy_encrypts_the_hop_to_kittiwake(
    kittiwake: Start,
    tmp_path: Path,
    ptr_dns: FakeDNS,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    # `server ... send-proxy-v2 ssl`: HAProxy sends the header in clear and
    # then TLS; kittiwake's `proxy_protocol { tls ... }` takes the same
    # order, and the session counts as TLS (Received says ESMTPS).
    cert, key = cert_files
    text = config(tmp_path).replace(
        f"trust {PROXY_SOURCE}\n", f"trust {PROXY_SOURCE}\n        tls file {cert} {key}\n"
    )
    srv = kittiwake(text, args=("--debug.dnsoverride", ptr_dns.address))
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server_options = f"send-proxy-v2 ssl verify required ca-file {ca_path} sni str(localhost)"
    proxy = HAProxy(
        tmp_path / "haproxy", [Route("v2tls", ("127.0.0.1", srv.port()), server_options)]
    )
    try:
        proxy.start()
        with smtplib.SMTP(
            "127.0.0.1", proxy.port("v2tls"), timeout=10, source_address=(CLIENT, 0)
        ) as client:
            client.ehlo("client.example")
            assert not client.has_extn("starttls")  # the hop is TLS already
            client.sendmail("a@example.net", ["user@example.org"], b"Subject: s\r\n\r\nx\r\n")
    finally:
        proxy.stop()
    (field,) = received_fields(tmp_path)
    assert re.match(client_part("ESMTPS"), field), field
