"""TLS certificate loaders: where a `tls` directive's certificates come from.

Strategy. A loader module (`tls.loader.file`, `tls.loader.self_signed`, or
a named block of one) owns certificate/key pairs as PEM bytes (`CertPair`),
each validated by `load_pair` at configuration time, so a bad file is a
`FILE:LINE` error before anything listens. Every minute a loader's own
background task looks at its source again; when the pairs change it calls
its listeners (a `ServerTLS` in `tls/directive.py`, which rebuilds its
per-pair contexts). A reload that fails keeps the old pairs and logs once.

This file knows nothing of TLS *options* or of `SSLContext` policy: that is
`tls/directive.py`, which imports from here and never the other way round.
What both need from certificates (reading a pair, `load_chain` into a
context) lives here because loaders must validate with exactly the code
that later loads.

Python's `ssl` module only loads certificates from files, so PEM bytes reach
OpenSSL through an anonymous memory file (`memfd`) where the platform has
one, else through a private temporary directory removed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kittiwake import log
from kittiwake.background import stop_task
from kittiwake.config.directives import Directives
from kittiwake.config.globals import PARSERS
from kittiwake.config.node import Node
from kittiwake.module import Module, capability, register

if TYPE_CHECKING:
    from kittiwake.container import Container

# The same logger as config/tls.py: operators see one "tls" source.
_log = log.get("tls")

#: The namespace of loader modules: `tls file` means `tls.loader.file`.
LOADER_NAMESPACE = "tls.loader"

#: How often loaders look at their files again (docs/tls.md, "Loaders").
RELOAD_INTERVAL = 60.0

#: `self_signed` certificates (docs/tls.md): valid 7 days, renewed with a day left.
SELF_SIGNED_DAYS = 7
RENEW_BEFORE = dt.timedelta(days=1)


def _no_block(node: Node) -> None:
    if node.children is not None:
        raise node.error(f"{node.name}: unexpected block")


# -- certificate pairs --------------------------------------------------------


class CertificateError(ValueError):
    """A certificate/key pair that cannot be used; `path` is the file at fault.

    Configuration code uses `path` to blame the right directive (`certs` or
    `keys`); the message already starts with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


@dataclass(frozen=True, eq=False)
class CertPair:
    """One certificate chain and its private key, validated.

    The PEM bytes are kept (not only the paths) so a reload can tell whether
    anything changed and a context can be rebuilt from exactly what was
    validated.
    """

    cert_pem: bytes
    key_pem: bytes
    #: Lower-case DNS names the certificate is for (SNI selection).
    names: tuple[str, ...]
    not_after: dt.datetime
    #: Where it came from, for logs: a path or "self-signed".
    source: str

    def matches(self, server_name: str) -> bool:
        """Whether the certificate covers `server_name` (one-label wildcards)."""
        if server_name in self.names:
            return True
        _, _, parent = server_name.partition(".")
        return bool(parent) and f"*.{parent}" in self.names


def load_pair(cert_pem: bytes, key_pem: bytes, cert_label: str, key_label: str) -> CertPair:
    """Check that the PEM data is a usable certificate chain and matching key.

    Raises `CertificateError` naming the file at fault. Encrypted keys are
    refused: a server must start unattended, and OpenSSL would otherwise
    prompt on the terminal.
    """
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateError(cert_label, "no PEM certificate found") from None
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(key_label, "encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(key_label, f"cannot read the private key ({exc})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateError(key_label, f"the key does not match the certificate {cert_label}")
    try:
        load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_pem, key_pem)
    except ssl.SSLError as exc:
        raise CertificateError(cert_label, f"rejected by the TLS library ({exc})") from None
    not_after = leaf.not_valid_after_utc
    if not_after < dt.datetime.now(dt.UTC):
        _log.warn("certificate has expired", path=cert_label, not_after=not_after.isoformat())
    return CertPair(cert_pem, key_pem, _dns_names(leaf), not_after, cert_label)


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(n.lower().rstrip(".") for n in names)


def read_pair(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    """Both files' bytes; an OSError becomes a CertificateError naming the path."""
    out = []
    for path in (cert_path, key_path):
        try:
            with open(path, "rb") as f:
                out.append(f.read())
        except OSError as exc:
            raise CertificateError(path, f"cannot read: {exc.strerror or exc}") from None
    return out[0], out[1]


def _refuse_password() -> bytes:
    # Never reached for keys that went through load_pair (it refuses
    # encrypted ones first); here so OpenSSL can never prompt on a terminal.
    raise ValueError("encrypted private keys are not supported")


_USE_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """`ctx.load_cert_chain` from bytes: the ssl module only reads files."""
    if _USE_MEMFD:
        fds = []
        try:
            for data in (cert_pem, key_pem):
                fd = os.memfd_create("kittiwake-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
            ctx.load_cert_chain(
                f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}", password=_refuse_password
            )
        finally:
            for fd in fds:
                os.close(fd)
        return
    # mkdtemp makes a 0700 directory; the files live only for the call.
    with tempfile.TemporaryDirectory(prefix="kittiwake-tls-") as tmp:
        paths = []
        for name, data in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            path = os.path.join(tmp, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(path)
        ctx.load_cert_chain(paths[0], paths[1], password=_refuse_password)


# -- self-signed certificates ---------------------------------------------------


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ValueError(f"invalid host name {name!r}") from None
    if not ascii_name or " " in ascii_name:
        raise ValueError(f"invalid host name {name!r}")
    return x509.DNSName(ascii_name)


def make_self_signed(names: Sequence[str], days: int) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 certificate for `names`, and its key, as PEM.

    A leaf only (not a CA), server-auth usage, valid from five minutes ago
    (clock skew) for `days` days. Raises ValueError for an unusable name.
    """
    sans = [_san_entry(n) for n in names]
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kittiwake self-signed")]
    if names and len(names[0]) <= 64:  # X.520 upper bound for a common name
        attrs.insert(0, x509.NameAttribute(NameOID.COMMON_NAME, names[0]))
    subject = x509.Name(attrs)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- loader modules -------------------------------------------------------------


@capability("TLS certificate loader")
@runtime_checkable
class CertLoader(Protocol):
    """Where certificates come from (`tls.loader.*`)."""

    def certificates(self) -> Sequence[CertPair]:
        """The current pairs, the first being the default (no SNI match)."""
        ...

    def reload_if_changed(self) -> bool:
        """Look at the source again; True if the pairs were replaced."""
        ...

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) after the pairs are replaced."""
        ...


class _LoaderBase(Module):
    """Pairs, listeners and the once-a-minute background reload."""

    reload_interval: ClassVar[float] = RELOAD_INTERVAL

    def __init__(self, container: Container, instance_name: str, inline_args: list[str]) -> None:
        super().__init__(container, instance_name, inline_args)
        self._pairs: list[CertPair] = []
        self._listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def certificates(self) -> Sequence[CertPair]:
        return list(self._pairs)

    def reload_if_changed(self) -> bool:
        return False

    def add_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _replace(self, pairs: list[CertPair]) -> None:
        self._pairs = pairs
        for callback in self._listeners:
            callback()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name=f"{self!r} reload")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                # In a thread: reading files must not stall sessions, even
                # when the certificates live on a slow network file system.
                await asyncio.to_thread(self.reload_if_changed)
            except Exception as exc:
                self.log.error("certificate reload failed", err=exc)


@register("tls.loader.file")
class FileLoader(_LoaderBase):
    """Certificate/key pairs from PEM files, re-read when they change.

    Inline: `file CERT KEY [CERT KEY ...]`. Block (named or `loader file
    { }`): `certs PATH...` and `keys PATH...`, matched in order.
    Certificate paths must be absolute (maddy's rule); a relative key path
    resolves against state_dir, where maddy's working directory is.
    """

    def __init__(self, container: Container, instance_name: str, inline_args: list[str]) -> None:
        super().__init__(container, instance_name, inline_args)
        self.paths: list[tuple[str, str]] = []
        #: Per pair, the (cert, key) bytes or error text that last failed,
        #: so a broken file is logged once, not every minute.
        self._failed: dict[int, object] = {}

    def configure(self, cfg: Directives) -> None:
        certs_node = cfg.get("certs")
        keys_node = cfg.get("keys")
        cfg.finish()
        where = [cfg.node, cfg.node]  # nodes to blame for cert / key paths
        if certs_node is not None or keys_node is not None:
            if self.inline_args:
                raise (certs_node or keys_node or cfg.node).error(
                    "tls file: give the paths as arguments or with certs/keys, not both"
                )
            if certs_node is None or keys_node is None:
                present = certs_node or keys_node
                assert present is not None
                raise present.error("tls file: certs and keys must be given together")
            for n in (certs_node, keys_node):
                _no_block(n)
                if not n.args:
                    raise n.error(f"{n.name}: expected at least one path")
            if len(certs_node.args) != len(keys_node.args):
                raise keys_node.error(
                    f"tls file: {len(certs_node.args)} certificates but {len(keys_node.args)} keys"
                )
            certs, keys = list(certs_node.args), list(keys_node.args)
            where = [certs_node, keys_node]
        else:
            if not self.inline_args:
                raise cfg.node.error("tls file: expected CERT KEY paths")
            if len(self.inline_args) % 2:
                raise cfg.node.error("tls file: an odd number of paths: expected CERT KEY pairs")
            certs, keys = self.inline_args[0::2], self.inline_args[1::2]
        for cert in certs:
            if not os.path.isabs(cert):
                raise where[0].error(f"tls file: the certificate path must be absolute: {cert}")
        state_dir = global_path(self.container, "state_dir")
        self.paths = [
            (cert, os.path.join(state_dir, key)) for cert, key in zip(certs, keys, strict=True)
        ]
        pairs = []
        for cert, key in self.paths:
            try:
                pairs.append(load_pair(*read_pair(cert, key), cert, key))
            except CertificateError as exc:
                blame = where[1] if exc.path == key else where[0]
                raise blame.error(f"tls file: {exc}") from None
        self._pairs = pairs

    def reload_if_changed(self) -> bool:
        """Re-read every pair; swap in the ones whose bytes changed and load.

        Reading a few kilobytes a minute is cheaper than being clever with
        modification times, and it cannot miss an edit made within the same
        timestamp tick. A pair that fails keeps its old certificate; each
        distinct failure is logged once, not every minute.
        """
        new: list[CertPair] = []
        changed = False
        for i, ((cert, key), old) in enumerate(zip(self.paths, self._pairs, strict=True)):
            try:
                cert_pem, key_pem = read_pair(cert, key)
            except CertificateError as exc:
                self._fail(i, str(exc), exc)
                new.append(old)
                continue
            if cert_pem == old.cert_pem and key_pem == old.key_pem:
                self._failed.pop(i, None)
                new.append(old)
                continue
            if self._failed.get(i) == (cert_pem, key_pem):
                new.append(old)
                continue
            try:
                pair = load_pair(cert_pem, key_pem, cert, key)
            except CertificateError as exc:
                self._fail(i, (cert_pem, key_pem), exc)
                new.append(old)
                continue
            self._failed.pop(i, None)
            new.append(pair)
            changed = True
            self.log.info(
                "certificate reloaded",
                path=cert,
                names=" ".join(pair.names),
                not_after=pair.not_after.isoformat(),
            )
        if changed:
            self._replace(new)
        return changed

    def _fail(self, i: int, signature: object, exc: CertificateError) -> None:
        if self._failed.get(i) != signature:
            self._failed[i] = signature
            self.log.error("cannot reload the certificate, keeping the old one", err=exc)


@register("tls.loader.self_signed")
class SelfSignedLoader(_LoaderBase):
    """An ECDSA P-256 certificate for the given names, valid 7 days.

    Arguments are the DNS names or IP addresses it is for; by default the
    global hostname, else `localhost`. [deviation] maddy makes a fresh one in
    memory at each start; kittiwake keeps it in `state_dir/tls/` and reuses
    it across restarts (docs/tls.md, "Loaders"), so clients that pin it on
    first use are not alarmed at every restart. It is renewed when less than
    a day remains, also while running. Files are written at start, never by
    `config check`.
    """

    def configure(self, cfg: Directives) -> None:
        cfg.finish()
        hostname = global_value(self.container, "hostname")
        self.names = list(self.inline_args) or [
            hostname if isinstance(hostname, str) else "localhost"
        ]
        digest = hashlib.sha256("\0".join(self.names).encode()).hexdigest()[:16]
        directory = os.path.join(global_path(self.container, "state_dir"), "tls")
        self._path = os.path.join(directory, f"self_signed-{digest}.pem")
        self._unsaved = False
        try:
            pair = self._load_saved()
            if pair is None:
                pair = self._generate()
                self._unsaved = True
        except ValueError as exc:
            raise cfg.node.error(f"tls self_signed: {exc}") from None
        self._pairs = [pair]

    def _load_saved(self) -> CertPair | None:
        """The saved pair, if it is readable and has more than a day left."""
        try:
            with open(self._path, "rb") as f:
                data = f.read()
            key_at = data.index(b"-----BEGIN PRIVATE KEY-----")
            pair = load_pair(data[:key_at], data[key_at:], self._path, self._path)
        except (OSError, ValueError, CertificateError):
            return None
        if pair.not_after - dt.datetime.now(dt.UTC) <= RENEW_BEFORE:
            return None
        return pair

    def _generate(self) -> CertPair:
        cert_pem, key_pem = make_self_signed(self.names, SELF_SIGNED_DAYS)
        return load_pair(cert_pem, key_pem, "self-signed", "self-signed")

    def _save(self) -> None:
        pair = self._pairs[0]
        try:
            os.makedirs(os.path.dirname(self._path), mode=0o700, exist_ok=True)
            _write_atomic(self._path, pair.cert_pem + pair.key_pem, 0o600)
        except OSError as exc:
            # Serving TLS matters more than reusing the certificate next time.
            self.log.warn("cannot save the self-signed certificate", path=self._path, reason=exc)
            return
        self._unsaved = False
        self.log.info("self-signed certificate saved", path=self._path, names=" ".join(self.names))

    async def start(self) -> None:
        if self._unsaved:
            await asyncio.to_thread(self._save)
        await super().start()

    def reload_if_changed(self) -> bool:
        if self._pairs[0].not_after - dt.datetime.now(dt.UTC) > RENEW_BEFORE:
            return False
        self._replace([self._generate()])
        self._save()
        self.log.info("self-signed certificate renewed", names=" ".join(self.names))
        return True


@register("tls.loader.acme")
class AcmeLoader(_LoaderBase):
    """maddy's ACME loader is out of scope; say so instead of 'unknown module'."""

    def configure(self, cfg: Directives) -> None:
        raise cfg.node.error(ACME_UNSUPPORTED)


ACME_UNSUPPORTED = "tls acme is not supported by kittiwake"


# -- globals that may be read before the container has parsed them -------------


def global_value(container: Container, name: str) -> object:
    """A global's value, parsing it here if its turn has not come yet.

    Globals are parsed in file order, so `tls` written above `hostname` or
    `state_dir` would otherwise see their defaults.
    """
    present, value = container.global_value(name)
    if present:
        return value
    for top in container.nodes:
        if top.name == name:
            return PARSERS[name](top, container)
    return None


def global_path(container: Container, name: str) -> str:
    """A path global (`state_dir`), else the container's default for it.

    Paths never come back unset: relative key and CA paths resolve against
    this, and a missing `state_dir` still has the default one.
    """
    value = global_value(container, name)
    if isinstance(value, str):
        return value
    return str(getattr(container.globals, name))


__all__ = [
    "ACME_UNSUPPORTED",
    "LOADER_NAMESPACE",
    "AcmeLoader",
    "CertLoader",
    "CertPair",
    "CertificateError",
    "FileLoader",
    "SelfSignedLoader",
    "global_path",
    "global_value",
    "load_chain",
    "load_pair",
    "make_self_signed",
    "read_pair",
]
