"""The `mx_auth` policies against real DNS answers, a real HTTPS policy host and real TLS.

Each policy is built from configuration text exactly as `target.remote`
builds it (`parse_mx_auth`), with the process resolver pointed at the fake
DNS server (which sets the AD bit on chosen names) and, for MTA-STS, the
policy fetch pointed at a loopback HTTPS server with a test CA through the
test-only debug flags. Connections are real TLS handshakes with loopback
servers; `TLSState` comes from `mx_auth.tlsinfo.tls_state`, the helper the
target uses. The policies are then asked exactly as the target asks them
(mx_auth/base.py): `for_domain`, `check_mx` before dialling, `check_conn`
after the TLS attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fakedns import SERVFAIL, FakeDNS, txt
from mtasts_server import MTASTSServer, Response, policy_text

from kittiwake.config.parser import parse_text
from kittiwake.container import Container, DebugFlags
from kittiwake.errors import SMTPError
from kittiwake.mx_auth.base import (
    RESULT_TYPE,
    MXCandidate,
    MXLevel,
    Policy,
    TLSLevel,
    TLSState,
)
from kittiwake.mx_auth.config import parse_mx_auth
from kittiwake.mx_auth.dnssec import DNSSEC
from kittiwake.mx_auth.local import LocalPolicy
from kittiwake.mx_auth.mtasts import MTASTS
from kittiwake.mx_auth.tlsinfo import tls_state

DOMAIN = "example.test"
MX = "mx.example.test"
RAM = "mx_auth {\n    mtasts {\n        cache ram\n    }\n}\n"


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture
def fake_dns() -> Iterator[FakeDNS]:
    server = FakeDNS(
        {
            (f"mta-sts.{DOMAIN}", "A"): ["127.0.0.1"],
            ("mta-sts.other.test", "A"): ["127.0.0.1"],
        }
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def https(ca: trustme.CA, tmp_path: Path) -> Iterator[MTASTSServer]:
    server = MTASTSServer(ca, [DOMAIN, "other.test"], tmp_path)
    try:
        yield server
    finally:
        server.close()


def build(
    tmp: Path, dns: FakeDNS, text: str, https: MTASTSServer | RawHTTPS | None = None
) -> list[Policy]:
    """The policies of an `mx_auth` directive, built as target.remote builds them."""
    flags = DebugFlags(
        dns_override=dns.address,
        mtasts_port=https.port if https else None,
        mtasts_ca=str(https.ca_file) if https else None,
    )
    top = parse_text(f"state_dir {tmp}/state\n", "top.conf")
    container = Container(top, config_file="top.conf", cwd=str(tmp), debug_flags=flags)
    container.parse_globals()
    (node,) = parse_text(text, "t.conf")
    return parse_mx_auth(node, container)


def sts_record(dns: FakeDNS, policy_id: str, domain: str = DOMAIN) -> None:
    dns.set(f"_mta-sts.{domain}", "TXT", [txt(f"v=STSv1; id={policy_id}")])


def candidate(host: str = MX, *, dnssec: bool = False) -> MXCandidate:
    return MXCandidate(DOMAIN, host, 10, dnssec=dnssec)


# -- real TLS servers and handshakes ------------------------------------------------------


class TLSServer:
    """A loopback TLS server presenting `cert` (with its chain); it only handshakes."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read(1)
            except (OSError, ssl.SSLError):
                pass
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[tuple[TLSServer, trustme.LeafCert]]:
    """A server whose certificate for MX comes from an intermediate of the test CA."""
    cert = ca.create_child_ca().issue_cert(MX)
    server = TLSServer(cert)
    await server.start()
    try:
        yield server, cert
    finally:
        await server.close()


async def handshake(port: int, host: str, ca: trustme.CA | None) -> TLSState:
    """Connect as target.remote does: verified against `ca` if given, else unverified."""
    context = ssl.create_default_context()
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        ca.configure_trust(context)
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=host
        )
    except ssl.SSLCertVerificationError as exc:
        return tls_state("127.0.0.1", None, error=exc.verify_message)
    state = tls_state("127.0.0.1", writer.get_extra_info("ssl_object"), verified=ca is not None)
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, ssl.SSLError):
        pass
    return state


def spki_sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def cert_sha256(pem: bytes) -> str:
    return hashlib.sha256(
        x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    ).hexdigest()


def no_tls() -> TLSState:
    return TLSState("127.0.0.1", False, error="STARTTLS not offered")


# -- MTA-STS ---------------------------------------------------------------------------


async def test_mtasts_enforce(
    tmp_path: Path,
    fake_dns: FakeDNS,
    https: MTASTSServer,
    ca: trustme.CA,
    tls_server: tuple[TLSServer, trustme.LeafCert],
) -> None:
    sts_record(fake_dns, "20260101")
    https.serve(DOMAIN, policy_text("enforce", MX, "*.backup.example.test"))
    (sts,) = build(tmp_path, fake_dns, RAM, https)
    policy = await sts.for_domain(DOMAIN)
    assert policy.report is not None and policy.report.policy_type == "sts"
    assert policy.report.mx_host == (MX, "*.backup.example.test")
    assert "mode: enforce" in policy.report.policy_string

    assert await policy.check_mx(candidate(), MXLevel.NONE) is MXLevel.MTASTS
    assert await policy.check_mx(candidate("b1.backup.example.test"), MXLevel.NONE) is (
        MXLevel.MTASTS
    )
    for outsider in ("evil.example.net", "a.b1.backup.example.test", "backup.example.test"):
        with pytest.raises(SMTPError) as refused:
            await policy.check_mx(candidate(outsider), MXLevel.NONE)
        assert str(refused.value) == (
            "550 5.7.0 Failed to establish the MX record authenticity (MTA-STS)"
        )

    server, _ = tls_server
    verified = await handshake(server.port, MX, ca)
    assert verified.tls and verified.verified
    level = await policy.check_conn(candidate(), MXLevel.MTASTS, verified, TLSLevel.AUTHENTICATED)
    assert level is TLSLevel.AUTHENTICATED

    # The certificate is not valid for this name: the target goes on unverified.
    failed = await handshake(server.port, "other-name.example.test", ca)
    assert not failed.tls and "mismatch" in failed.error.lower()
    unverified = await handshake(server.port, "other-name.example.test", None)
    assert unverified.tls and not unverified.verified
    for state, result in ((unverified, "sts-webpki-invalid"), (no_tls(), "starttls-not-supported")):
        with pytest.raises(SMTPError) as refused:
            await policy.check_conn(candidate(), MXLevel.MTASTS, state, TLSLevel.ENCRYPTED)
        assert (refused.value.code, refused.value.enhanced) == (451, (4, 7, 1))
        assert refused.value.message.endswith("(MTA-STS)")
        assert refused.value.misc[RESULT_TYPE] == result
    assert https.requests == [f"mta-sts.{DOMAIN}"]  # one fetch for the whole delivery


async def test_mtasts_testing_and_none_only_log(
    tmp_path: Path, fake_dns: FakeDNS, https: MTASTSServer
) -> None:
    sts_record(fake_dns, "t1")
    https.serve(DOMAIN, policy_text("testing", MX))
    sts_record(fake_dns, "n1", "other.test")
    https.serve("other.test", policy_text("none"))
    (sts,) = build(tmp_path, fake_dns, RAM, https)
    testing = await sts.for_domain(DOMAIN)
    assert await testing.check_mx(candidate(), MXLevel.NONE) is MXLevel.MTASTS
    assert await testing.check_mx(candidate("evil.example.net"), MXLevel.NONE) is MXLevel.NONE
    assert await testing.check_conn(candidate(), MXLevel.NONE, no_tls(), TLSLevel.NONE) is (
        TLSLevel.NONE
    )
    none = await sts.for_domain("other.test")
    assert await none.check_mx(candidate("evil.example.net"), MXLevel.NONE) is MXLevel.NONE
    assert await none.check_conn(candidate(), MXLevel.NONE, no_tls(), TLSLevel.NONE) is (
        TLSLevel.NONE
    )


async def test_mtasts_without_record_applies_nothing(
    tmp_path: Path, fake_dns: FakeDNS, https: MTASTSServer
) -> None:
    (sts,) = build(tmp_path, fake_dns, RAM, https)
    policy = await sts.for_domain(DOMAIN)
    assert policy.report is not None and policy.report.policy_type == "no-policy-found"
    assert await policy.check_mx(candidate("anything.example.net"), MXLevel.NONE) is MXLevel.NONE
    assert await policy.check_conn(candidate(), MXLevel.NONE, no_tls(), TLSLevel.NONE) is (
        TLSLevel.NONE
    )
    # Two v=STSv1 records: no policy either (RFC 8461 §3.1); other TXT records are ignored.
    fake_dns.set(
        f"_mta-sts.{DOMAIN}",
        "TXT",
        [txt("v=STSv1; id=a"), txt("v=STSv1; id=b"), txt("v=spf1 -all")],
    )
    https.serve(DOMAIN, policy_text("enforce", MX))
    (sts,) = build(tmp_path, fake_dns, RAM, https)
    policy = await sts.for_domain(DOMAIN)
    assert await policy.check_mx(candidate("anything.example.net"), MXLevel.NONE) is MXLevel.NONE
    assert https.requests == []


@pytest.mark.parametrize(
    ("response", "failure"),
    [
        (Response(b"", status=301, headers={"Location": "https://elsewhere.test/"}), "fetch"),
        (Response(b"", status=404), "fetch"),
        (Response(policy_text("enforce", MX), content_type="text/html"), "fetch"),
        (Response(policy_text("enforce", MX), content_type=None), "fetch"),
        (Response(policy_text("enforce", MX) + b"#" * 70_000), "fetch"),
        (Response(b"version: STSv1\nmode: enforce\nmax_age: 86400\n"), "invalid"),  # no mx
        (Response(b"version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n"), "invalid"),
        (Response(b"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n"), "invalid"),
        (Response(b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n"), "invalid"),
    ],
    ids=["redirect", "404", "html", "no-type", "too-big", "no-mx", "v2", "mode", "age"],
)
async def test_mtasts_bad_policy_hosts_mean_no_policy(
    tmp_path: Path,
    fake_dns: FakeDNS,
    https: MTASTSServer,
    response: Response,
    failure: str,
) -> None:
    sts_record(fake_dns, "x1")
    https.serve(DOMAIN, response)
    (sts,) = build(tmp_path, fake_dns, RAM, https)
    policy = await sts.for_domain(DOMAIN)
    assert policy.report is not None
    kind = "sts-policy-fetch-error" if failure == "fetch" else "sts-policy-invalid"
    assert (policy.report.policy_type, policy.report.failure) == ("sts", kind)
    assert await policy.check_mx(candidate("evil.example.net"), MXLevel.NONE) is MXLevel.NONE
    # The failure is remembered: the next delivery does not fetch again at once.
    await sts.for_domain(DOMAIN)
    assert https.requests == [f"mta-sts.{DOMAIN}"]


@pytest.mark.parametrize(("framing", "usable"), [("chunked", True), ("close", False)])
async def test_mtasts_body_framings(
    tmp_path: Path, fake_dns: FakeDNS, https: MTASTSServer, framing: str, usable: bool
) -> None:
    """Chunks are read; a body that only ends with the connection is refused:
    a cut TLS connection cannot be told from a finished one here."""
    sts_record(fake_dns, "f1")
    https.serve(DOMAIN, Response(policy_text("enforce", MX), framing=framing))
    (sts,) = build(tmp_path, fake_dns, RAM, https)
    policy = await sts.for_domain(DOMAIN)
    expected = MXLevel.MTASTS if usable else MXLevel.NONE
    assert await policy.check_mx(candidate(), MXLevel.NONE) is expected


async def test_mtasts_certificate_and_time_are_checked(
    tmp_path: Path, fake_dns: FakeDNS, https: MTASTSServer
) -> None:
    sts_record(fake_dns, "c1")
    https.serve(DOMAIN, policy_text("enforce", MX))
    # Without the test CA, the policy host's certificate is not trusted.
    flags_less = build(tmp_path, fake_dns, RAM)
    (sts,) = flags_less
    assert isinstance(sts, MTASTS)
    sts.port = https.port
    policy = await sts.for_domain(DOMAIN)
    assert policy.report is not None and policy.report.failure == "sts-policy-fetch-error"
    # A host that answers too slowly.
    https.serve(DOMAIN, Response(policy_text("enforce", MX), delay=1.5))
    (slow,) = build(tmp_path, fake_dns, RAM, https)
    assert isinstance(slow, MTASTS)
    slow.timeout = 0.5
    policy = await slow.for_domain(DOMAIN)
    assert policy.report is not None and policy.report.failure == "sts-policy-fetch-error"
    assert await policy.check_mx(candidate("evil.example.net"), MXLevel.NONE) is MXLevel.NONE


async def test_mtasts_fs_cache_survives_and_follows_the_id(
    tmp_path: Path, fake_dns: FakeDNS, https: MTASTSServer
) -> None:
    sts_record(fake_dns, "v1")
    https.serve(DOMAIN, policy_text("enforce", MX))
    config = "mx_auth {\n    mtasts\n}\n"  # fs, in STATE_DIR/mtasts_cache
    (first,) = build(tmp_path, fake_dns, config, https)
    await first.for_domain(DOMAIN)
    stored = json.loads((tmp_path / "state" / "mtasts_cache" / DOMAIN).read_text())
    assert stored["id"] == "v1" and "mode: enforce" in stored["policy"]

    # A restart (a new policy object): the policy comes from the disk, even
    # with the TXT record gone and the policy host failing (RFC 8461 §5.1).
    fake_dns.set(f"_mta-sts.{DOMAIN}", "TXT", None)
    https.serve(DOMAIN, Response(b"", status=500))
    (second,) = build(tmp_path, fake_dns, config, https)
    policy = await second.for_domain(DOMAIN)
    with pytest.raises(SMTPError):
        await policy.check_mx(candidate("evil.example.net"), MXLevel.NONE)
    fake_dns.set(f"_mta-sts.{DOMAIN}", "TXT", SERVFAIL)
    (third,) = build(tmp_path, fake_dns, config, https)
    policy = await third.for_domain(DOMAIN)
    with pytest.raises(SMTPError):
        await policy.check_mx(candidate("evil.example.net"), MXLevel.NONE)
    assert https.requests == [f"mta-sts.{DOMAIN}"]

    # A new id: fetched again; while that fails, the cached policy holds.
    sts_record(fake_dns, "v2")
    (fourth,) = build(tmp_path, fake_dns, config, https)
    policy = await fourth.for_domain(DOMAIN)
    assert len(https.requests) == 2
    with pytest.raises(SMTPError):
        await policy.check_mx(candidate("evil.example.net"), MXLevel.NONE)
    # Once it works, the new policy replaces the old one.
    https.serve(DOMAIN, policy_text("testing", "evil.example.net"))
    (fifth,) = build(tmp_path, fake_dns, config, https)
    policy = await fifth.for_domain(DOMAIN)
    assert await policy.check_mx(candidate("evil.example.net"), MXLevel.NONE) is MXLevel.MTASTS
    assert json.loads((tmp_path / "state" / "mtasts_cache" / DOMAIN).read_text())["id"] == "v2"


async def test_mtasts_policy_in_use_is_refreshed_in_the_background(
    tmp_path: Path, fake_dns: FakeDNS, https: MTASTSServer
) -> None:
    sts_record(fake_dns, "r1")
    https.serve(DOMAIN, policy_text("enforce", MX, max_age=2))
    (sts,) = build(tmp_path, fake_dns, "mx_auth {\n    mtasts\n}\n", https)
    await sts.for_domain(DOMAIN)
    path = tmp_path / "state" / "mtasts_cache" / DOMAIN
    first = json.loads(path.read_text())["fetched"]
    await sts.for_domain(DOMAIN)  # young: no fetch
    assert len(https.requests) == 1
    await asyncio.sleep(1.1)  # past half of max_age
    policy = await sts.for_domain(DOMAIN)  # answered from the cache at once...
    assert await policy.check_mx(candidate(), MXLevel.NONE) is MXLevel.MTASTS
    for _ in range(100):  # ...while the policy is fetched again
        if len(https.requests) == 2 and json.loads(path.read_text())["fetched"] > first:
            break
        await asyncio.sleep(0.05)
    assert len(https.requests) == 2
    assert json.loads(path.read_text())["fetched"] > first


async def test_mtasts_expired_cache_is_not_used(
    tmp_path: Path, fake_dns: FakeDNS, https: MTASTSServer
) -> None:
    sts_record(fake_dns, "e1")
    https.serve(DOMAIN, policy_text("enforce", MX, max_age=0))
    (sts,) = build(tmp_path, fake_dns, "mx_auth {\n    mtasts\n}\n", https)
    await sts.for_domain(DOMAIN)
    fake_dns.set(f"_mta-sts.{DOMAIN}", "TXT", None)
    (later,) = build(tmp_path, fake_dns, "mx_auth {\n    mtasts\n}\n", https)
    policy = await later.for_domain(DOMAIN)
    assert policy.report is not None and policy.report.policy_type == "no-policy-found"
    assert await policy.check_mx(candidate("evil.example.net"), MXLevel.NONE) is MXLevel.NONE


async def test_mtasts_concurrent_deliveries_share_one_fetch(
    tmp_path: Path, fake_dns: FakeDNS, https: MTASTSServer
) -> None:
    sts_record(fake_dns, "s1")
    https.serve(DOMAIN, Response(policy_text("enforce", MX), delay=0.3))
    (sts,) = build(tmp_path, fake_dns, RAM, https)
    policies = await asyncio.gather(*(sts.for_domain(DOMAIN) for _ in range(10)))
    assert all(p.report == policies[0].report for p in policies)
    assert https.requests == [f"mta-sts.{DOMAIN}"]


class RawHTTPS:
    """A TLS server for mta-sts.DOMAIN that answers any request with `payload` as it is.

    `abort`: end with a TCP reset-like close, without TLS close_notify.
    """

    def __init__(self, ca: trustme.CA, tmp: Path, payload: bytes, *, abort: bool) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(f"mta-sts.{DOMAIN}").configure_cert(self.context)
        self.ca_file = tmp / "raw-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.payload = payload
        self.abort = abort
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.payload)
                await writer.drain()
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            if self.abort:
                writer.transport.abort()
            else:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]


_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
_POLICY = policy_text("enforce", MX)


@pytest.mark.parametrize(
    ("payload", "abort", "usable"),
    [
        (_OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(_POLICY) + _POLICY, False, True),
        (
            b"HTTP/1.0 200\r\nContent-type: TEXT/PLAIN\r\nContent-Length: 68\r\n\r\n" + _POLICY,
            False,
            True,
        ),
        (b"HTTP/1.0 200\r\nContent-type: text/plain\r\n\r\n" + _POLICY, False, False),
        (b"HTTP/1.0 200\r\nContent-type: text/plain\r\n\r\n" + _POLICY, True, False),
        (_OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", False, False),
        (_OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nversi", False, False),
        (_OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY", False, False),
        (_OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nabc\r\n", False, False),
        (_OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n", False, False),
        (_OK_HEAD + b"Transfer-Encoding: gzip\r\n\r\n" + _POLICY, False, False),
        (_OK_HEAD + b"Content-Length: \xb2\r\n\r\n" + _POLICY, False, False),
        (_OK_HEAD + b"Content-Length: 500\r\n\r\n" + _POLICY, False, False),
        (_OK_HEAD + b"Content-Length: -1\r\n\r\n" + _POLICY, False, False),
        (_OK_HEAD + b"Content-Type: text/plain\r\n\r\n" + _POLICY, False, False),
        (_OK_HEAD + b" folded: header\r\n\r\n" + _POLICY, False, False),
        (_OK_HEAD + b"X: " + b"x" * 70_000 + b"\r\n\r\n" + _POLICY, False, False),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False, False),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plainx\r\n\r\n" + _POLICY, False, False),
        (b"", False, False),
    ],
    ids=[
        "length",
        "http10",
        "eof",
        "eof-without-close-notify",
        "chunk-size",
        "chunk-cut",
        "chunk-crlf",
        "chunk-negative",
        "chunk-0x",
        "gzip",
        "length-superscript",
        "length-cut",
        "length-bad",
        "two-types",
        "folded",
        "huge-header",
        "not-http",
        "type-prefix",
        "nothing",
    ],
)
async def test_mtasts_fetch_reads_http_strictly(
    tmp_path: Path,
    fake_dns: FakeDNS,
    ca: trustme.CA,
    payload: bytes,
    abort: bool,
    usable: bool,
) -> None:
    sts_record(fake_dns, "r1")
    raw = RawHTTPS(ca, tmp_path, payload, abort=abort)
    await raw.start()
    try:
        (sts,) = build(tmp_path, fake_dns, RAM, raw)
        policy = await sts.for_domain(DOMAIN)
    finally:
        assert raw.server is not None
        raw.server.close()
    assert policy.report is not None
    assert (policy.report.failure == "") is usable, policy.report
    level = MXLevel.MTASTS if usable else MXLevel.NONE
    assert await policy.check_mx(candidate(), MXLevel.NONE) is level


# -- DANE -------------------------------------------------------------------------------


def tlsa(dns: FakeDNS, *records: str, secure: bool = True, host: str = MX) -> None:
    name = f"_25._tcp.{host}"
    dns.set(name, "TLSA", list(records))
    dns.set_secure(name, secure)


async def test_dane_ee_matching_and_not(
    tmp_path: Path, fake_dns: FakeDNS, tls_server: tuple[TLSServer, trustme.LeafCert]
) -> None:
    server, cert = tls_server
    leaf = cert.cert_chain_pems[0].bytes()
    (dane,) = build(tmp_path, fake_dns, "mx_auth {\n    dane\n}\n")
    state = await handshake(server.port, MX, None)  # opportunistic: not verified
    assert state.tls and not state.verified and len(state.peer_chain) == 2

    tlsa(fake_dns, f"3 1 1 {spki_sha256(leaf)}")
    policy = await dane.for_domain(DOMAIN)
    assert await policy.check_mx(candidate(dnssec=True), MXLevel.NONE) is MXLevel.NONE
    level = await policy.check_conn(candidate(dnssec=True), MXLevel.NONE, state, TLSLevel.ENCRYPTED)
    assert level is TLSLevel.AUTHENTICATED
    assert policy.report is not None and policy.report.policy_type == "tlsa"
    assert policy.report.policy_string == (f"3 1 1 {spki_sha256(leaf)}",)

    # Full certificate, SHA-256: matches too.
    tlsa(fake_dns, f"3 0 1 {cert_sha256(leaf)}", host="mx2.example.test")
    mx2 = candidate("mx2.example.test", dnssec=True)
    await policy.check_mx(mx2, MXLevel.NONE)
    assert await policy.check_conn(mx2, MXLevel.NONE, state, TLSLevel.ENCRYPTED) is (
        TLSLevel.AUTHENTICATED
    )

    # Records for another key: this MX is refused, for now (451).
    tlsa(fake_dns, "3 1 1 " + "ab" * 32, host="mx3.example.test")
    mx3 = candidate("mx3.example.test", dnssec=True)
    policy = await dane.for_domain(DOMAIN)
    with pytest.raises(SMTPError) as refused:
        await policy.check_conn(mx3, MXLevel.NONE, state, TLSLevel.ENCRYPTED)
    assert str(refused.value) == "451 4.7.5 No TLSA record matches the server certificate (DANE)"
    assert refused.value.misc[RESULT_TYPE] == "tlsa-invalid"
    # TLSA records and no TLS: refused too.
    with pytest.raises(SMTPError) as refused:
        await policy.check_conn(candidate(dnssec=True), MXLevel.NONE, no_tls(), TLSLevel.NONE)
    assert str(refused.value) == "451 4.7.1 TLS is required but unavailable or failed (DANE)"
    assert refused.value.misc[RESULT_TYPE] == "starttls-not-supported"


async def test_dane_needs_dnssec_for_mx_and_tlsa(
    tmp_path: Path, fake_dns: FakeDNS, tls_server: tuple[TLSServer, trustme.LeafCert]
) -> None:
    server, _ = tls_server
    (dane,) = build(tmp_path, fake_dns, "mx_auth {\n    dane { }\n}\n")
    state = await handshake(server.port, MX, None)
    # Not matching, but the answer is not validated: as if there were none.
    tlsa(fake_dns, "3 1 1 " + "ab" * 32, secure=False)
    policy = await dane.for_domain(DOMAIN)
    for mx in (candidate(dnssec=True), candidate(dnssec=False)):
        assert await policy.check_conn(mx, MXLevel.NONE, state, TLSLevel.ENCRYPTED) is (
            TLSLevel.ENCRYPTED
        )
        assert await policy.check_conn(mx, MXLevel.NONE, no_tls(), TLSLevel.NONE) is TLSLevel.NONE
    # Validated TLSA, but the MX name came from an unvalidated answer.
    tlsa(fake_dns, "3 1 1 " + "ab" * 32, host="mx4.example.test")
    insecure_mx = candidate("mx4.example.test", dnssec=False)
    assert await policy.check_conn(insecure_mx, MXLevel.NONE, state, TLSLevel.ENCRYPTED) is (
        TLSLevel.ENCRYPTED
    )
    # A validated "no such record": nothing required.
    fake_dns.set_secure("_25._tcp.mx5.example.test")
    mx5 = candidate("mx5.example.test", dnssec=True)
    assert await policy.check_conn(mx5, MXLevel.NONE, no_tls(), TLSLevel.NONE) is TLSLevel.NONE
    # The lookup fails: DANE can be neither applied nor ruled out.
    fake_dns.set("_25._tcp.mx6.example.test", "TLSA", SERVFAIL)
    with pytest.raises(SMTPError) as refused:
        await policy.check_conn(
            candidate("mx6.example.test", dnssec=True), MXLevel.NONE, state, TLSLevel.ENCRYPTED
        )
    assert (refused.value.code, refused.value.enhanced) == (451, (4, 7, 5))
    assert policy.report is not None and policy.report.failure == "dnssec-invalid"


async def test_dane_unusable_records_still_require_tls(
    tmp_path: Path, fake_dns: FakeDNS, tls_server: tuple[TLSServer, trustme.LeafCert]
) -> None:
    server, cert = tls_server
    leaf = cert.cert_chain_pems[0].bytes()
    (dane,) = build(tmp_path, fake_dns, "mx_auth {\n    dane\n}\n")
    state = await handshake(server.port, MX, None)
    # PKIX-EE(1) is not usable for SMTP (RFC 7672 §3.1.3), even when it matches.
    tlsa(fake_dns, f"1 1 1 {spki_sha256(leaf)}")
    policy = await dane.for_domain(DOMAIN)
    mx = candidate(dnssec=True)
    assert await policy.check_conn(mx, MXLevel.NONE, state, TLSLevel.ENCRYPTED) is (
        TLSLevel.ENCRYPTED
    )
    with pytest.raises(SMTPError):
        await policy.check_conn(mx, MXLevel.NONE, no_tls(), TLSLevel.NONE)


async def test_dane_ta_with_the_chain_python_hands_over(
    tmp_path: Path, fake_dns: FakeDNS, ca: trustme.CA
) -> None:
    intermediate = ca.create_child_ca()
    cert = intermediate.issue_cert(MX)
    server = TLSServer(cert)
    await server.start()
    try:
        state = await handshake(server.port, MX, None)
        other = await handshake(server.port, "whatever.test", None)  # SNI changes nothing
    finally:
        await server.close()
    issuer = cert.cert_chain_pems[1].bytes()
    (dane,) = build(tmp_path, fake_dns, "mx_auth {\n    dane\n}\n")
    tlsa(fake_dns, f"2 0 1 {cert_sha256(issuer)}")
    tlsa(fake_dns, f"2 1 2 {hashlib.sha512(_spki(issuer)).hexdigest()}", host="mx7.example.test")
    policy = await dane.for_domain(DOMAIN)
    assert await policy.check_conn(
        candidate(dnssec=True), MXLevel.NONE, state, TLSLevel.ENCRYPTED
    ) is (TLSLevel.AUTHENTICATED)
    assert other.peer_chain == state.peer_chain
    # DANE-TA checks the name: the certificate is for MX, not for mx7.
    with pytest.raises(SMTPError) as refused:
        await policy.check_conn(
            candidate("mx7.example.test", dnssec=True), MXLevel.NONE, state, TLSLevel.ENCRYPTED
        )
    assert refused.value.enhanced == (4, 7, 5)
    # Without the chain (only the leaf), DANE-TA cannot match.
    leaf_only = TLSState("127.0.0.1", True, peer_cert=state.peer_cert)
    with pytest.raises(SMTPError):
        await policy.check_conn(candidate(dnssec=True), MXLevel.NONE, leaf_only, TLSLevel.ENCRYPTED)


def _spki(pem: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# -- DNSSEC and the whole chain of policies ----------------------------------------------


async def test_dnssec_level_from_a_validated_mx_answer(tmp_path: Path, fake_dns: FakeDNS) -> None:
    """The MX answer's AD bit, as the target reads it, decides the level; the
    policies run in the target's order, local_policy judging last."""
    fake_dns.set(DOMAIN, "MX", ["10 mx.example.test."])
    fake_dns.set("insecure.test", "MX", ["10 mx.insecure.test."])
    fake_dns.set_secure(DOMAIN)
    text = "mx_auth {\n    local_policy {\n        min_mx_level dnssec\n    }\n    dnssec\n}\n"
    policies = build(tmp_path, fake_dns, text)
    dnssec, local = policies  # local_policy is always asked last
    assert isinstance(dnssec, DNSSEC) and isinstance(local, LocalPolicy)
    resolver = dnssec.resolver
    assert resolver.ad_trusted
    for domain, secure in ((DOMAIN, True), ("insecure.test", False)):
        answer = await resolver.query(domain, "MX")
        assert answer.secure is secure
        ((pref, host),) = answer.records
        assert isinstance(pref, int) and isinstance(host, str)
        mx = MXCandidate(domain, host, pref, dnssec=answer.secure and resolver.ad_trusted)
        level = await (await dnssec.for_domain(domain)).check_mx(mx, MXLevel.NONE)
        assert level is (MXLevel.DNSSEC if secure else MXLevel.NONE)
        judge = await local.for_domain(domain)
        if secure:
            assert await judge.check_mx(mx, level) is MXLevel.DNSSEC
        else:
            with pytest.raises(SMTPError) as refused:
                await judge.check_mx(mx, level)
            assert str(refused.value) == "451 4.7.0 Failed to establish the MX record authenticity"
