"""TLS: the `tls` and `tls_client` directives (docs/tls.md).

Strategy. A `tls` directive names a *certificate loader* module
(`tls.loader.file`, `tls.loader.self_signed`, or `&name` of one; see
`tls/loaders.py`) plus a few options. `ServerTLS` turns the loader's
pairs into one `ssl.SSLContext` per pair and hands out a single *front*
context whose SNI callback switches each handshake to the pair that matches
the requested name. The front context never changes identity, so a listener
may keep it forever; when the loader re-reads its files (every minute, from
its own background task), it tells its `ServerTLS`, which swaps in freshly
built per-pair contexts. `ClientTLS` is the outbound side (`tls_client`).

This file owns the policy (versions, ciphers, curves, tickets, SNI); where
certificates come from and how they are validated is the loaders' job.
"""

from __future__ import annotations

import functools
import os
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kittiwake import log
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.module import find as find_module
from kittiwake.tls.loaders import (
    ACME_UNSUPPORTED,
    LOADER_NAMESPACE,
    CertificateError,
    CertLoader,
    CertPair,
    global_path,
    load_chain,
    load_pair,
    read_pair,
)

if TYPE_CHECKING:
    from kittiwake.container import Container

_log = log.get("tls")


_VERSIONS: dict[str, ssl.TLSVersion] = {
    "tls1.0": ssl.TLSVersion.TLSv1,
    "tls1.1": ssl.TLSVersion.TLSv1_1,
    "tls1.2": ssl.TLSVersion.TLSv1_2,
    "tls1.3": ssl.TLSVersion.TLSv1_3,
}

#: maddy's (Go's) cipher-suite names -> OpenSSL's names for the same suites.
_CIPHERS: dict[str, str] = {
    "RSA-WITH-RC4128-SHA": "RC4-SHA",
    "RSA-WITH-3DES-EDE-CBC-SHA": "DES-CBC3-SHA",
    "RSA-WITH-AES128-CBC-SHA": "AES128-SHA",
    "RSA-WITH-AES256-CBC-SHA": "AES256-SHA",
    "RSA-WITH-AES128-CBC-SHA256": "AES128-SHA256",
    "RSA-WITH-AES128-GCM-SHA256": "AES128-GCM-SHA256",
    "RSA-WITH-AES256-GCM-SHA384": "AES256-GCM-SHA384",
    "ECDHE-ECDSA-WITH-RC4128-SHA": "ECDHE-ECDSA-RC4-SHA",
    "ECDHE-ECDSA-WITH-AES128-CBC-SHA": "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-WITH-AES256-CBC-SHA": "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-WITH-RC4128-SHA": "ECDHE-RSA-RC4-SHA",
    "ECDHE-RSA-WITH-3DES-EDE-CBC-SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "ECDHE-RSA-WITH-AES128-CBC-SHA": "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-WITH-AES256-CBC-SHA": "ECDHE-RSA-AES256-SHA",
    "ECDHE-ECDSA-WITH-AES128-CBC-SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-WITH-AES128-CBC-SHA256": "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-WITH-AES128-GCM-SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-WITH-AES128-GCM-SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-WITH-AES256-GCM-SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-WITH-AES256-GCM-SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-WITH-CHACHA20-POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-WITH-CHACHA20-POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}

#: maddy's curve names -> OpenSSL group names.
_CURVES: dict[str, str] = {
    "p256": "prime256v1",
    "p384": "secp384r1",
    "p521": "secp521r1",
    "X25519": "X25519",
}


# -- options shared by server and client ------------------------------------


@dataclass(frozen=True)
class TLSOptions:
    """`protocols`, `ciphers` and `curves`, already translated for OpenSSL.

    `None` everywhere means "the library's defaults". For the minimum
    version that is Python's TLS 1.2, not maddy's TLS 1.0: OpenSSL 3 at
    its usual security level refuses TLS 1.0/1.1 handshakes anyway, and
    claiming a minimum the library will not honour would mislead (see
    docs/tls.md).
    """

    min_version: ssl.TLSVersion | None = None
    max_version: ssl.TLSVersion | None = None
    #: An OpenSSL cipher string for TLS <= 1.2; TLS 1.3 suites are not
    #: configurable through Python's ssl and stay at the library defaults.
    ciphers: str | None = None
    #: One OpenSSL group: `SSLContext.set_ecdh_curve` accepts exactly one,
    #: and with OpenSSL 3 it *replaces* the group list, so the first curve
    #: of `curves` becomes the only one offered.
    curve: str | None = None

    def apply(self, ctx: ssl.SSLContext) -> None:
        if self.min_version is not None:
            with warnings.catch_warnings():
                # Python deprecates TLS 1.0/1.1; asking for them is the
                # operator's explicit choice, already warned about once.
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = self.min_version
                if self.max_version is not None:
                    ctx.maximum_version = self.max_version
        if self.ciphers is not None:
            ctx.set_ciphers(self.ciphers)
        if self.curve is not None:
            ctx.set_ecdh_curve(self.curve)


def _parse_protocols(node: Node) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    _no_block(node)
    if len(node.args) not in (1, 2):
        raise node.error("protocols: expected MIN MAX or a single version")
    versions = []
    for word in node.args:
        if word not in _VERSIONS:
            raise node.error(
                f"protocols: unknown TLS version {word!r} (expected {', '.join(_VERSIONS)})"
            )
        versions.append(_VERSIONS[word])
    low, high = versions[0], versions[-1]
    if low > high:
        raise node.error("protocols: the minimum version is above the maximum")
    if low < ssl.TLSVersion.TLSv1_2 and _old_versions_refused():
        _log.warn(
            "TLS 1.0/1.1 enabled, but the TLS library probably refuses them",
            library=ssl.OPENSSL_VERSION,
            level=_security_level(),
            file=node.file,
            line=node.line,
        )
    return low, high


def _parse_ciphers(node: Node) -> str | None:
    """Translate maddy's names; skip (with a warning) what OpenSSL lacks."""
    _no_block(node)
    if not node.args:
        raise node.error("ciphers: expected at least one cipher name")
    chosen: list[str] = []
    for name in node.args:
        openssl_name = _CIPHERS.get(name)
        if openssl_name is None:
            raise node.error(f"ciphers: unknown cipher {name!r}")
        if not _cipher_available(openssl_name):
            _log.warn(
                "cipher not offered by the TLS library, skipped",
                cipher=name,
                library=ssl.OPENSSL_VERSION,
                file=node.file,
                line=node.line,
            )
            continue
        if openssl_name not in chosen:
            chosen.append(openssl_name)
    if not chosen:
        _log.warn(
            "none of the listed ciphers is available; using the library defaults",
            file=node.file,
            line=node.line,
        )
        return None
    return ":".join(chosen)


@functools.cache
def _cipher_available(openssl_name: str) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(openssl_name)
    except ssl.SSLError:
        return False
    return any(c["name"] == openssl_name for c in ctx.get_ciphers())


@functools.cache
def _security_level() -> int:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).security_level


def _old_versions_refused() -> bool:
    """OpenSSL 3 at security level 1 or more cannot sign a TLS 1.0/1.1
    handshake (MD5+SHA-1 is below 80 bits), whatever the minimum version."""
    return ssl.OPENSSL_VERSION_INFO[0] >= 3 and _security_level() >= 1


def _parse_curves(node: Node) -> str:
    _no_block(node)
    if not node.args:
        raise node.error("curves: expected at least one curve name")
    for name in node.args:
        if name not in _CURVES:
            raise node.error(f"curves: unknown curve {name!r} (expected {', '.join(_CURVES)})")
    if len(node.args) > 1:
        _log.warn(
            "only the first curve is used: Python's ssl sets a single key-exchange group",
            curve=node.args[0],
            ignored=" ".join(node.args[1:]),
            file=node.file,
            line=node.line,
        )
    return _CURVES[node.args[0]]


def _parse_options(cfg: Directives) -> TLSOptions:
    versions = cfg.custom("protocols", _parse_protocols, None)
    return TLSOptions(
        min_version=versions[0] if versions else None,
        max_version=versions[1] if versions else None,
        ciphers=cfg.custom("ciphers", _parse_ciphers, None),
        curve=cfg.custom("curves", _parse_curves, None),
    )


def _no_block(node: Node) -> None:
    if node.children is not None:
        raise node.error(f"{node.name}: unexpected block")


# -- server side ------------------------------------------------------------------


def _server_context(options: TLSOptions) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # No session tickets (docs/tls.md, "Options"). OP_NO_TICKET covers TLS <= 1.2;
    # num_tickets = 0 stops OpenSSL's TLS 1.3 tickets as well.
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_NONE  # client certificates are never requested
    options.apply(ctx)
    return ctx


class ServerTLS:
    """A server `ssl.SSLContext` over a certificate loader, with SNI.

    `context()` always returns the same object, so listeners may keep it.
    It carries no certificate itself: OpenSSL (1.1.1 and later) calls the
    SNI callback for every ClientHello, with or without a server name, and
    the callback switches the connection to the context of the matching
    pair, the first pair when none matches.
    """

    def __init__(self, loader: CertLoader, options: TLSOptions) -> None:
        self.loader = loader
        self.options = options
        self._front = _server_context(options)
        self._front.sni_callback = self._on_client_hello
        self._entries = self._build(loader.certificates())
        loader.add_listener(self._rebuild)

    def context(self) -> ssl.SSLContext:
        return self._front

    def reload_if_changed(self) -> bool:
        """Ask the loader to re-read its source now (the loader's task does
        this every minute by itself)."""
        return self.loader.reload_if_changed()

    def select(self, server_name: str | None) -> CertPair:
        """The pair a client asking for `server_name` gets."""
        return self._select(server_name)[0]

    def _build(self, pairs: Sequence[CertPair]) -> list[tuple[CertPair, ssl.SSLContext]]:
        if not pairs:
            raise ValueError("the certificate loader has no certificate")
        entries = []
        for pair in pairs:
            ctx = _server_context(self.options)
            load_chain(ctx, pair.cert_pem, pair.key_pem)
            entries.append((pair, ctx))
        return entries

    def _rebuild(self) -> None:
        try:
            entries = self._build(self.loader.certificates())
        except (ValueError, ssl.SSLError) as exc:
            _log.error("cannot use the reloaded certificates, keeping the old ones", err=exc)
            return
        self._entries = entries  # one reference swap: handshakes see old or new

    def _select(self, server_name: str | None) -> tuple[CertPair, ssl.SSLContext]:
        entries = self._entries
        if server_name:
            wanted = server_name.lower().rstrip(".")
            for entry in entries:
                if entry[0].matches(wanted):
                    return entry
        return entries[0]

    def _on_client_hello(
        self, conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        conn.context = self._select(server_name)[1]


def parse_server_tls(node: Node, container: Container) -> ServerTLS | None:
    """A `tls` directive (global, endpoint or proxy_protocol block); None = off."""
    args = list(node.args)
    if args and args[0] == "off":
        if len(args) > 1 or node.children is not None:
            raise node.error("tls off: takes no other argument and no block")
        return None
    if args and args[0] in ("acme", f"{LOADER_NAMESPACE}.acme"):
        raise node.error(ACME_UNSUPPORTED)
    for child in node.block:
        if child.name == "loader" and child.args[:1] in (["acme"], [f"{LOADER_NAMESPACE}.acme"]):
            raise child.error(ACME_UNSUPPORTED)
    if args:
        args = _legacy_form(node, args, container)
    cfg = Directives(node, container)
    loader_node = cfg.get("loader")
    options = _parse_options(cfg)
    cfg.finish()
    loader: CertLoader
    if args:
        if loader_node is not None:
            raise loader_node.error("tls: the loader is already given as arguments of tls")
        # The block holds TLS options, not the loader's configuration.
        loader = container.module_from_args(
            node,
            args,
            None,
            CertLoader,
            LOADER_NAMESPACE,
        )
    elif loader_node is not None:
        if not loader_node.args:
            raise loader_node.error("loader: expected a loader module name or &name")
        loader = container.module_from_node(
            loader_node,
            CertLoader,
            LOADER_NAMESPACE,
        )
    else:
        raise node.error(
            "tls: expected off, a certificate loader (file, self_signed, &name) "
            "or a block with a loader directive"
        )
    try:
        return ServerTLS(loader, options)
    except (ValueError, ssl.SSLError) as exc:
        raise node.error(f"tls: {exc}") from None


def _legacy_form(node: Node, args: list[str], container: Container) -> list[str]:
    """`tls CERT KEY` (maddy < 0.5) -> `tls file CERT KEY`, with a warning.

    Relative paths in this old form resolve against the directory kittiwake
    was started from, where the "names an existing file" test looked.
    """
    first = args[0]
    if first.startswith("&"):
        return args
    if "/" not in first and (
        not os.path.isfile(os.path.join(container.cwd, first))
        or find_module(first, LOADER_NAMESPACE) is not None  # a loader name wins
    ):
        return args
    _log.warn(
        "deprecated syntax 'tls CERT KEY': write 'tls file CERT KEY'",
        file=node.file,
        line=node.line,
    )
    return ["file", *(os.path.abspath(os.path.join(container.cwd, a)) for a in args)]


# -- client side -------------------------------------------------------------------


class ClientTLS:
    """Outbound TLS settings (`tls_client`): contexts for SMTP clients.

    `context()` verifies the server against the system trust store plus the
    `root_ca` bundles; `context(verify=False)` is for opportunistic
    STARTTLS, where an unverifiable certificate still beats plain text.
    `context(check_hostname=False)` verifies the chain but no name, for a
    server reached without one (a Unix socket).
    """

    def __init__(
        self,
        options: TLSOptions | None = None,
        root_cas: Sequence[bytes] = (),
        client_pair: CertPair | None = None,
    ) -> None:
        self.options = options or TLSOptions()
        self.root_cas = list(root_cas)
        self.client_pair = client_pair
        self._verified = self._build(verify=True)
        self._unverified: ssl.SSLContext | None = None
        self._nameless: ssl.SSLContext | None = None

    def context(self, *, verify: bool = True, check_hostname: bool = True) -> ssl.SSLContext:
        if not verify:
            if self._unverified is None:
                self._unverified = self._build(verify=False)
            return self._unverified
        if not check_hostname:
            if self._nameless is None:
                self._nameless = self._build(verify=True, check_hostname=False)
            return self._nameless
        return self._verified

    def _build(self, *, verify: bool, check_hostname: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.options.apply(ctx)
        for bundle in self.root_cas:
            ctx.load_verify_locations(cadata=bundle.decode("ascii", "replace"))
        if self.client_pair is not None:
            load_chain(ctx, self.client_pair.cert_pem, self.client_pair.key_pem)
        if not verify or not check_hostname:
            ctx.check_hostname = False
        if not verify:
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def parse_client_tls(node: Node, container: Container) -> ClientTLS:
    """The global `tls_client { ... }` block."""
    if node.args:
        raise node.error("tls_client: takes no arguments, only a block")
    state_dir = global_path(container, "state_dir")

    def paths(n: Node) -> list[str]:
        _no_block(n)
        if not n.args:
            raise n.error(f"{n.name}: expected at least one path")
        return [os.path.join(state_dir, p) for p in n.args]

    cfg = Directives(node, container)
    options = _parse_options(cfg)
    root_node = cfg.get("root_ca")
    cert_node = cfg.get("cert")
    key_node = cfg.get("key")
    cfg.finish()
    bundles = (
        [] if root_node is None else [read_ca_bundle(root_node, path) for path in paths(root_node)]
    )
    pair = None
    if cert_node is not None or key_node is not None:
        if cert_node is None or key_node is None:
            present = cert_node or key_node
            assert present is not None
            raise present.error("tls_client: cert and key must be given together")
        for n in (cert_node, key_node):
            if len(n.args) != 1:
                raise n.error(f"{n.name}: expected exactly one path")
        cert, key = paths(cert_node)[0], paths(key_node)[0]
        try:
            pair = load_pair(*read_pair(cert, key), cert, key)
        except CertificateError as exc:
            blame = key_node if exc.path == key else cert_node
            raise blame.error(f"tls_client: {exc}") from None
    try:
        return ClientTLS(options, bundles, pair)
    except ssl.SSLError as exc:
        raise node.error(f"tls_client: {exc}") from None


def read_ca_bundle(node: Node, path: str) -> bytes:
    """A `root_ca` file's PEM certificates; a configuration error at `node` if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise node.error(f"root_ca: {path}: cannot read: {exc.strerror or exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise node.error(f"root_ca: {path}: not a PEM certificate bundle") from None
    return data


__all__ = [
    "ClientTLS",
    "ServerTLS",
    "TLSOptions",
    "parse_client_tls",
    "parse_server_tls",
    "read_ca_bundle",
]
