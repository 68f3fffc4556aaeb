"""Fixtures for end-to-end tests: the real server process and a test CA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from fakedns import FakeDNS
from kw import Kittiwake


@pytest.fixture
def kittiwake(tmp_path: Path) -> Iterator[Callable[..., Kittiwake]]:
    """Start `kittiwake run` on a configuration text; every process is killed after."""
    started: list[Kittiwake] = []

    def start(
        config: str, *, ready: int = 1, args: tuple[str, ...] = (), unprivileged: bool = False
    ) -> Kittiwake:
        server = Kittiwake(tmp_path, config, args=args, unprivileged=unprivileged)
        started.append(server)
        server.wait_ready(ready)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    """A certificate for `localhost` and its key, as absolute file paths."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        with open(cert_path, "ab") as f:
            f.write(pem.bytes())
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    """A DNS server for `--debug.dnsoverride`: 127.0.0.1 has a PTR name."""
    server = FakeDNS({("1.0.0.127.in-addr.arpa", "PTR"): ["client.example.test."]})
    try:
        yield server
    finally:
        server.close()
