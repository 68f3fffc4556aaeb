"""The `tls` and `tls_client` directives (docs/tls.md).

Every success case ends in a real TLS handshake between Python's `ssl` on
both ends of a socket pair (the server side in a thread), so what is tested
is the `SSLContext` a listener would get, not our own bookkeeping. The
certificates come from a throw-away `trustme` CA written to temporary files.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kittiwake import module as registry
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.module import Endpoint, Module
from kittiwake.tls import directive as tls
from kittiwake.tls import loaders as tls_loaders

CONF = "test.conf"


# -- fixtures -------------------------------------------------------------------


class _TLSEndpoint(Endpoint):
    """Stands in for smtp/submission: reads `tls` the way they do."""

    def configure(self, cfg: Directives) -> None:
        container = self.container
        self.tls = cfg.custom(
            "tls", lambda n: tls.parse_server_tls(n, container), None, inherit=True
        )
        cfg.finish()

    def addresses(self) -> list[str]:
        return list(self.inline_args)


class _NotALoader(Module):
    """A named block of the wrong kind, for `tls &name`."""


@pytest.fixture(autouse=True)
def _test_modules() -> Iterator[None]:
    registry.register("test.tls_endpoint")(_TLSEndpoint)
    registry.register("test.not_a_loader")(_NotALoader)
    yield
    registry.unregister("test.tls_endpoint")
    registry.unregister("test.not_a_loader")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


class Pair:
    """A certificate and key written to files, and the names they are for."""

    def __init__(
        self,
        ca: trustme.CA,
        directory: Path,
        *names: str,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> None:
        leaf = ca.issue_cert(*names, not_before=not_before, not_after=not_after)
        self.names = names
        self.cert = directory / f"{names[0].replace('*', '_')}.crt"
        self.key = directory / f"{names[0].replace('*', '_')}.key"
        self.cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        self.key.write_bytes(leaf.private_key_pem.bytes())

    def move_to(self, other: Pair) -> None:
        """Atomically make `other`'s files contain this pair (a renewal)."""
        for src, dst in ((self.key, other.key), (self.cert, other.cert)):
            tmp = dst.with_suffix(".new")
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, dst)


@pytest.fixture
def pair_a(ca: trustme.CA, tmp_path: Path) -> Pair:
    return Pair(ca, tmp_path, "a.example")


@pytest.fixture
def pair_b(ca: trustme.CA, tmp_path: Path) -> Pair:
    return Pair(ca, tmp_path, "b.example")


def build(text: str, tmp_path: Path) -> Container:
    """Parse `text` (plus a test endpoint unless it has one) and build it."""
    if "test.tls_endpoint" not in text:
        text += "\ntest.tls_endpoint tcp://127.0.0.1:0\n"
    container = Container(parse_text(text, CONF), config_file=CONF, cwd=str(tmp_path))
    container.build()
    return container


def server_tls(container: Container) -> tls.ServerTLS:
    endpoint = container.endpoints[0]
    assert isinstance(endpoint, _TLSEndpoint)
    assert isinstance(endpoint.tls, tls.ServerTLS)
    return endpoint.tls


def client_context(ca: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        ca.configure_trust(ctx)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Handshake:
    """What the client saw: the server's certificate, version and cipher."""

    def __init__(self, cert: x509.Certificate, version: str, cipher: str) -> None:
        self.cert = cert
        self.version = version
        self.cipher = cipher

    @property
    def names(self) -> list[str]:
        san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
            str(v) for v in san.get_values_for_type(x509.IPAddress)
        ]


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_name: str | None
) -> Handshake:
    """A full handshake over a socket pair; raises the client's SSLError."""
    srv, cli = socket.socketpair()
    srv.settimeout(10)
    cli.settimeout(10)
    server_errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(srv, server_side=True) as conn:
                conn.recv(1)  # wait for the client to finish and close
        except (ssl.SSLError, OSError) as exc:
            server_errors.append(exc)
        finally:
            srv.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(cli, server_hostname=server_name) as conn:
            der = conn.getpeercert(binary_form=True)
            version = conn.version()
            cipher = conn.cipher()
    finally:
        cli.close()
        thread.join(10)
    assert der is not None and version is not None and cipher is not None
    return Handshake(x509.load_der_x509_certificate(der), version, cipher[0])


def config_error(text: str, tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(text, tmp_path)
    assert info.value.file == CONF
    return info.value


# -- server side: loaders, SNI, options ------------------------------------------------


def test_sni_selects_among_pairs(ca: trustme.CA, tmp_path: Path) -> None:
    a = Pair(ca, tmp_path, "a.example")
    b = Pair(ca, tmp_path, "b.example")
    w = Pair(ca, tmp_path, "*.w.example")
    container = build(f"tls file {a.cert} {a.key} {b.cert} {b.key} {w.cert} {w.key}", tmp_path)
    ctx = server_tls(container).context()
    client = client_context(ca)
    assert handshake(ctx, client, "b.example").names == ["b.example"]
    assert handshake(ctx, client, "a.example").names == ["a.example"]
    # Case and a root dot do not matter (the client would not verify such a
    # name, so this one only looks).
    assert handshake(ctx, client_context(), "B.Example.").names == ["b.example"]
    assert handshake(ctx, client, "x.w.example").names == ["*.w.example"]
    # No SNI, or a name nobody has: the first pair.
    assert handshake(ctx, client_context(), None).names == ["a.example"]
    assert handshake(ctx, client_context(), "nobody.example").names == ["a.example"]


def test_context_defaults(pair_a: Pair, tmp_path: Path) -> None:
    ctx = server_tls(build(f"tls file {pair_a.cert} {pair_a.key}", tmp_path)).context()
    assert ctx.options & ssl.OP_NO_TICKET
    assert ctx.num_tickets == 0
    assert ctx.verify_mode == ssl.CERT_NONE  # no client certificates requested
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2  # documented deviation
    assert handshake(ctx, client_context(), "a.example").version == "TLSv1.3"


def test_protocols_pin_tls12(pair_a: Pair, tmp_path: Path, ca: trustme.CA) -> None:
    text = f"tls file {pair_a.cert} {pair_a.key} {{\n    protocols tls1.2 tls1.2\n}}"
    ctx = server_tls(build(text, tmp_path)).context()
    only13 = client_context(ca)
    only13.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError):
        handshake(ctx, only13, "a.example")
    assert handshake(ctx, client_context(ca), "a.example").version == "TLSv1.2"


def test_protocols_single_version(pair_a: Pair, tmp_path: Path, ca: trustme.CA) -> None:
    text = f"tls file {pair_a.cert} {pair_a.key} {{\n    protocols tls1.3\n}}"
    ctx = server_tls(build(text, tmp_path)).context()
    only12 = client_context(ca)
    only12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(ctx, only12, "a.example")
    assert handshake(ctx, client_context(ca), "a.example").version == "TLSv1.3"


def test_protocols_tls10_is_honoured_with_a_warning(
    pair_a: Pair, tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    text = f"tls file {pair_a.cert} {pair_a.key} {{\n    protocols tls1.0 tls1.3\n}}"
    ctx = server_tls(build(text, tmp_path)).context()  # no DeprecationWarning escapes
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1
    if ssl.OPENSSL_VERSION_INFO[0] >= 3 and ctx.security_level >= 1:
        assert "TLS 1.0/1.1 enabled, but the TLS library probably refuses them" in (
            capsys.readouterr().err
        )
    assert handshake(ctx, client_context(ca), "a.example").version == "TLSv1.3"


def test_ciphers_and_curves(
    pair_a: Pair, tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        f"tls file {pair_a.cert} {pair_a.key} {{\n"
        "    protocols tls1.2\n"
        "    ciphers RSA-WITH-RC4128-SHA ECDHE-ECDSA-WITH-AES256-GCM-SHA384\n"
        "    curves p384 X25519\n"
        "}"
    )
    ctx = server_tls(build(text, tmp_path)).context()
    err = capsys.readouterr().err
    assert "cipher not offered by the TLS library, skipped cipher=RSA-WITH-RC4128-SHA" in err
    assert "only the first curve is used" in err
    hs = handshake(ctx, client_context(ca), "a.example")
    assert hs.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
    # The chosen curve is the only group offered: a client limited to
    # X25519 (listed second, so dropped) cannot agree on one.
    x25519 = client_context(ca)
    x25519.set_ecdh_curve("X25519")
    with pytest.raises(ssl.SSLError):
        handshake(ctx, x25519, "a.example")


def test_unavailable_ciphers_fall_back_to_defaults(
    pair_a: Pair, tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    text = f"tls file {pair_a.cert} {pair_a.key} {{\n    ciphers RSA-WITH-RC4128-SHA\n}}"
    ctx = server_tls(build(text, tmp_path)).context()
    assert "using the library defaults" in capsys.readouterr().err
    assert handshake(ctx, client_context(ca), "a.example").version == "TLSv1.3"


def test_loader_in_block(pair_a: Pair, tmp_path: Path, ca: trustme.CA) -> None:
    text = f"tls {{\n    loader file {pair_a.cert} {pair_a.key}\n    protocols tls1.2 tls1.3\n}}"
    ctx = server_tls(build(text, tmp_path)).context()
    assert handshake(ctx, client_context(ca), "a.example").names == ["a.example"]


def test_named_loader_block(pair_a: Pair, pair_b: Pair, tmp_path: Path, ca: trustme.CA) -> None:
    text = (
        "tls.loader.file certs {\n"
        f"    certs {pair_a.cert} {pair_b.cert}\n"
        f"    keys {pair_a.key} {pair_b.key}\n"
        "}\n"
        "tls &certs\n"
    )
    ctx = server_tls(build(text, tmp_path)).context()
    assert handshake(ctx, client_context(ca), "b.example").names == ["b.example"]


def test_loader_block_inside_tls(pair_a: Pair, tmp_path: Path, ca: trustme.CA) -> None:
    text = (
        "tls {\n"
        "    loader file {\n"
        f"        certs {pair_a.cert}\n"
        f"        keys {pair_a.key}\n"
        "    }\n"
        "}"
    )
    ctx = server_tls(build(text, tmp_path)).context()
    assert handshake(ctx, client_context(ca), "a.example").names == ["a.example"]


def test_relative_key_resolves_against_state_dir(pair_a: Pair, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.replace(pair_a.key, state / "a.key")
    # tls written before state_dir: the order of globals must not matter.
    text = f"tls file {pair_a.cert} a.key\nstate_dir {state}\n"
    assert server_tls(build(text, tmp_path)).select("a.example").names == ("a.example",)


def test_legacy_form(
    pair_a: Pair, tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = server_tls(build(f"tls {pair_a.cert} {pair_a.key}", tmp_path)).context()
    assert "deprecated syntax" in capsys.readouterr().err
    assert handshake(ctx, client_context(ca), "a.example").names == ["a.example"]
    # A bare file name counts when the file exists (relative to the start dir).
    container = build("tls a.example.crt a.example.key", tmp_path)
    assert server_tls(container).select(None).names == ("a.example",)
    # ... but a loader's name stays a loader even if such a file exists.
    (tmp_path / "self_signed").write_text("")
    assert server_tls(build("tls self_signed", tmp_path)).select(None).source == "self-signed"


def test_tls_off_and_inheritance(pair_a: Pair, tmp_path: Path) -> None:
    text = (
        f"tls file {pair_a.cert} {pair_a.key}\n"
        "test.tls_endpoint tcp://127.0.0.1:1\n"
        "test.tls_endpoint tcp://127.0.0.1:2 {\n    tls off\n}\n"
    )
    container = build(text, tmp_path)
    inherited, off = container.endpoints
    assert isinstance(inherited, _TLSEndpoint) and isinstance(off, _TLSEndpoint)
    assert isinstance(inherited.tls, tls.ServerTLS)
    assert off.tls is None
    container = build("tls off", tmp_path)
    endpoint = container.endpoints[0]
    assert isinstance(endpoint, _TLSEndpoint) and endpoint.tls is None


# -- reloading ----------------------------------------------------------------------


def test_reload_picks_up_changed_files(
    pair_a: Pair, pair_b: Pair, tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    st = server_tls(build(f"tls file {pair_a.cert} {pair_a.key}", tmp_path))
    ctx = st.context()
    client = client_context()
    assert st.reload_if_changed() is False
    pair_b.move_to(pair_a)
    assert st.reload_if_changed() is True
    assert st.context() is ctx  # listeners may keep the context
    assert handshake(ctx, client, "a.example").names == ["b.example"]
    assert st.reload_if_changed() is False

    # A broken renewal (new certificate, old key) keeps the old pair, logs once.
    capsys.readouterr()
    Pair(ca, tmp_path, "c.example").cert.replace(pair_a.cert)
    assert st.reload_if_changed() is False
    assert st.reload_if_changed() is False
    err = capsys.readouterr().err
    assert err.count("keeping the old one") == 1
    assert "does not match the certificate" in err
    assert handshake(ctx, client, "a.example").names == ["b.example"]

    # A vanished file is the same: old pair kept.
    pair_a.cert.unlink()
    assert st.reload_if_changed() is False
    assert "cannot read" in capsys.readouterr().err
    assert handshake(ctx, client, "a.example").names == ["b.example"]


async def test_background_reload(
    pair_a: Pair, pair_b: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_loaders.FileLoader, "reload_interval", 0.01)
    container = build(f"tls file {pair_a.cert} {pair_a.key}", tmp_path)
    st = server_tls(container)
    await container.start()
    try:
        pair_b.move_to(pair_a)
        for _ in range(500):
            if st.select(None).names == ("b.example",):
                break
            await asyncio.sleep(0.01)
        assert st.select(None).names == ("b.example",)
    finally:
        await container.stop()


# -- self-signed ----------------------------------------------------------------------


def test_self_signed(tmp_path: Path) -> None:
    st = server_tls(build("tls self_signed mx.example 127.0.0.1", tmp_path))
    hs = handshake(st.context(), client_context(), "mx.example")
    assert hs.names == ["mx.example", "127.0.0.1"]
    key = hs.cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    life = hs.cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6, hours=23) < life <= dt.timedelta(days=7)


def test_self_signed_default_names(tmp_path: Path) -> None:
    # hostname written after tls: still the default name.
    st = server_tls(build("tls self_signed\nhostname mx.example\n", tmp_path))
    assert st.select(None).names == ("mx.example",)
    st = server_tls(build("tls self_signed", tmp_path))
    assert st.select(None).names == ("localhost",)


async def test_self_signed_is_saved_at_start_and_reused(tmp_path: Path) -> None:
    first = build("tls self_signed", tmp_path)
    one = server_tls(first).select(None)
    saved = list((tmp_path / "kittiwake-data" / "tls").glob("self_signed-*.pem"))
    assert saved == []  # configuring (config check) writes nothing
    first.prepare_dirs()
    await first.start()
    await first.stop()
    (path,) = (tmp_path / "kittiwake-data" / "tls").glob("self_signed-*.pem")
    assert os.stat(path).st_mode & 0o777 == 0o600
    two = server_tls(build("tls self_signed", tmp_path)).select(None)
    assert two.cert_pem == one.cert_pem
    # Other names make another certificate.
    other = server_tls(build("tls self_signed other.example", tmp_path)).select(None)
    assert other.cert_pem != one.cert_pem


def test_self_signed_near_expiry_is_not_reused(tmp_path: Path) -> None:
    cert_pem, key_pem = tls_loaders.make_self_signed(["localhost"], 1)  # a day left at most
    saved = tmp_path / "kittiwake-data" / "tls" / f"self_signed-{_digest('localhost')}.pem"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(cert_pem + key_pem)
    fresh = server_tls(build("tls self_signed", tmp_path)).select(None)
    assert fresh.cert_pem != cert_pem
    assert fresh.not_after - dt.datetime.now(dt.UTC) > dt.timedelta(days=6)


def _digest(*names: str) -> str:
    return hashlib.sha256("\0".join(names).encode()).hexdigest()[:16]


# -- errors ---------------------------------------------------------------------------


def test_error_odd_number_of_paths(pair_a: Pair, tmp_path: Path) -> None:
    err = config_error(f"\ntls file {pair_a.cert} {pair_a.key} {pair_a.cert}", tmp_path)
    assert err.line == 2
    assert "odd number of paths" in err.message


def test_error_relative_cert_path(pair_a: Pair, tmp_path: Path) -> None:
    err = config_error(f"\n\ntls file a.example.crt {pair_a.key}", tmp_path)
    assert err.line == 3
    assert "must be absolute: a.example.crt" in err.message


def test_error_unknown_cipher(pair_a: Pair, tmp_path: Path) -> None:
    text = f"tls file {pair_a.cert} {pair_a.key} {{\n    ciphers RSA-WITH-NULL-SHA\n}}"
    err = config_error(text, tmp_path)
    assert (err.line, err.message) == (2, "ciphers: unknown cipher 'RSA-WITH-NULL-SHA'")


def test_error_unknown_curve(pair_a: Pair, tmp_path: Path) -> None:
    text = f"tls file {pair_a.cert} {pair_a.key} {{\n    curves p256 P384\n}}"
    err = config_error(text, tmp_path)
    assert err.line == 2
    assert "unknown curve 'P384'" in err.message


def test_error_duplicate_option(pair_a: Pair, tmp_path: Path) -> None:
    text = (
        f"tls file {pair_a.cert} {pair_a.key} {{\n"
        "    protocols tls1.2\n"
        "    curves p256\n"
        "    protocols tls1.3\n"
        "}"
    )
    err = config_error(text, tmp_path)
    assert (err.line, err.message) == (4, "duplicate directive: protocols")


def test_error_missing_file(pair_a: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "missing.crt"
    err = config_error(f"tls file {missing} {pair_a.key}", tmp_path)
    assert err.line == 1
    assert f"{missing}: cannot read" in err.message


def test_error_key_mismatch(pair_a: Pair, pair_b: Pair, tmp_path: Path) -> None:
    err = config_error(f"\ntls file {pair_a.cert} {pair_b.key}", tmp_path)
    assert err.line == 2
    assert f"{pair_b.key}: the key does not match the certificate {pair_a.cert}" in err.message


def test_error_key_mismatch_blames_keys_line(pair_a: Pair, pair_b: Pair, tmp_path: Path) -> None:
    text = (
        "tls {\n"
        "    loader file {\n"
        f"        certs {pair_a.cert}\n"
        f"        keys {pair_b.key}\n"
        "    }\n"
        "}"
    )
    assert config_error(text, tmp_path).line == 4


def test_error_encrypted_key(pair_a: Pair, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pair_a.key.read_bytes(), password=None)
    pair_a.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    err = config_error(f"tls file {pair_a.cert} {pair_a.key}", tmp_path)
    assert "encrypted private keys are not supported" in err.message


def test_error_not_a_certificate(pair_a: Pair, tmp_path: Path) -> None:
    err = config_error(f"tls file {pair_a.key} {pair_a.key}", tmp_path)
    assert f"{pair_a.key}: no PEM certificate found" in err.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("tls acme {\n    email postmaster@example.org\n}", 1),
        ("tls {\n    loader acme\n}", 2),
        ("tls.loader.acme le {\n}\ntls &le", 1),
    ],
)
def test_error_acme(text: str, line: int, tmp_path: Path) -> None:
    err = config_error(text, tmp_path)
    assert (err.line, err.message) == (line, "tls acme is not supported by kittiwake")


def test_error_reference_to_non_loader(tmp_path: Path) -> None:
    err = config_error("test.not_a_loader thing {\n}\n\ntls &thing", tmp_path)
    assert err.line == 4
    assert "not a TLS certificate loader" in err.message


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("tls", 1, "expected off, a certificate loader"),
        ("tls {\n    protocols tls1.2\n}", 1, "expected off, a certificate loader"),
        ("tls off now", 1, "tls off: takes no other argument"),
        ("tls off {\n}", 1, "tls off: takes no other argument"),
        ("tls file", 1, "expected CERT KEY paths"),
        ("tls nosuchloader", 1, "unknown module: nosuchloader (namespace: tls.loader)"),
        ("tls &nosuch", 1, "unknown configuration block: nosuch"),
        ("tls self_signed {\n    bogus 1\n}", 2, "unexpected directive: bogus"),
        ("tls self_signed 'bad name'", 1, "invalid host name"),
        ("tls self_signed {\n    protocols tls1.4\n}", 2, "unknown TLS version 'tls1.4'"),
        ("tls self_signed {\n    protocols tls1.3 tls1.2\n}", 2, "minimum version is above"),
        ("tls self_signed {\n    protocols\n}", 2, "expected MIN MAX"),
        ("tls self_signed {\n    ciphers\n}", 2, "expected at least one cipher"),
        ("tls self_signed {\n    curves p256 {\n    }\n}", 2, "curves: unexpected block"),
        ("tls self_signed {\n    loader file /a /b\n}", 2, "already given as arguments"),
        ("tls {\n    loader\n}", 2, "loader: expected a loader module name"),
    ],
)
def test_errors_server(body: str, line: int, message: str, tmp_path: Path) -> None:
    err = config_error(body.replace("'", '"'), tmp_path)
    assert err.line == line
    assert message in err.message


def test_errors_certs_keys_block(pair_a: Pair, tmp_path: Path) -> None:
    text = f"tls {{\n    loader file {{\n        certs {pair_a.cert} {pair_a.cert}\n"
    err = config_error(text + f"        keys {pair_a.key}\n    }}\n}}", tmp_path)
    assert (err.line, err.message) == (4, "tls file: 2 certificates but 1 keys")
    err = config_error(text + "    }\n}", tmp_path)
    assert (err.line, err.message) == (3, "tls file: certs and keys must be given together")
    text = f"tls {{\n    loader file {pair_a.cert} {pair_a.key} {{\n        certs {pair_a.cert}\n"
    err = config_error(text + f"        keys {pair_a.key}\n    }}\n}}", tmp_path)
    assert "not both" in err.message


# -- tls_client ------------------------------------------------------------------------


def test_tls_client_default_context_verifies(pair_a: Pair, tmp_path: Path, ca: trustme.CA) -> None:
    client = tls.ClientTLS()
    st = server_tls(build(f"tls file {pair_a.cert} {pair_a.key}", tmp_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(st.context(), client.context(), "a.example")
    assert handshake(st.context(), client.context(verify=False), "a.example").names == ["a.example"]


def test_tls_client_root_ca_and_cert(pair_a: Pair, tmp_path: Path, ca: trustme.CA) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client_pair = Pair(ca, tmp_path, "client.example")
    text = (
        f"tls file {pair_a.cert} {pair_a.key}\n"
        "tls_client {\n"
        f"    root_ca {ca_file}\n"
        f"    cert {client_pair.cert}\n"
        f"    key {client_pair.key}\n"
        "    protocols tls1.2 tls1.3\n"
        "    curves p256\n"
        "}\n"
    )
    container = build(text, tmp_path)
    present, client = container.global_value("tls_client")
    assert present and isinstance(client, tls.ClientTLS)
    assert client.client_pair is not None
    assert client.client_pair.names == ("client.example",)
    hs = handshake(server_tls(container).context(), client.context(), "a.example")
    assert hs.names == ["a.example"]
    with pytest.raises(ssl.SSLCertVerificationError):  # the name is still checked
        handshake(server_tls(container).context(), client.context(), "b.example")


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("tls_client x {\n}", 1, "takes no arguments"),
        ("tls_client {\n    cert /x.pem\n}", 2, "cert and key must be given together"),
        ("tls_client {\n\n    key /x.pem\n}", 3, "cert and key must be given together"),
        ("tls_client {\n    root_ca /nonexistent/ca.pem\n}", 2, "cannot read"),
        ("tls_client {\n    ciphers NOPE\n}", 2, "unknown cipher 'NOPE'"),
        ("tls_client {\n    curves p255\n}", 2, "unknown curve 'p255'"),
        ("tls_client {\n    curves p256\n    curves p384\n}", 3, "duplicate directive: curves"),
        ("tls_client {\n    verify no\n}", 2, "unexpected directive: verify"),
        ("tls_client {\n    cert /a /b\n    key /c\n}", 2, "expected exactly one path"),
    ],
)
def test_errors_client(body: str, line: int, message: str, tmp_path: Path) -> None:
    err = config_error(body, tmp_path)
    assert err.line == line
    assert message in err.message


def test_error_client_root_ca_not_pem(pair_a: Pair, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    err = config_error(f"tls_client {{\n    root_ca {pair_a.cert} {bad}\n}}", tmp_path)
    assert err.line == 2
    assert f"{bad}: not a PEM certificate bundle" in err.message


def test_error_client_key_mismatch(pair_a: Pair, pair_b: Pair, tmp_path: Path) -> None:
    text = f"tls_client {{\n    cert {pair_a.cert}\n    key {pair_b.key}\n}}"
    err = config_error(text, tmp_path)
    assert err.line == 3
    assert "does not match" in err.message


# -- the loaders as modules ---------------------------------------------------------------


def test_loaders_are_registered() -> None:
    assert registry.find("file", "tls.loader") is tls_loaders.FileLoader
    assert registry.find("self_signed", "tls.loader") is tls_loaders.SelfSignedLoader


def test_pem_through_temporary_files(
    pair_a: Pair, tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback for platforms without memfd works the same."""
    monkeypatch.setattr(tls_loaders, "_USE_MEMFD", False)
    ctx = server_tls(build(f"tls file {pair_a.cert} {pair_a.key}", tmp_path)).context()
    assert handshake(ctx, client_context(ca), "a.example").names == ["a.example"]


def test_nodes_built_by_hand(pair_a: Pair, tmp_path: Path) -> None:
    """parse_server_tls needs nothing but a Node and a container."""
    container = Container([], cwd=str(tmp_path))
    node = Node("tls", ["file", str(pair_a.cert), str(pair_a.key)], None, "x.conf", 7)
    st = tls.parse_server_tls(node, container)
    assert st is not None and st.select("a.example").names == ("a.example",)
    assert tls.parse_server_tls(Node("tls", ["off"]), container) is None
