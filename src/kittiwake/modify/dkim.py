"""`modify.dkim`: sign outgoing mail with DKIM (RFC 6376, RFC 8463).

    modify {
        dkim example.org example.com default      # DOMAIN... SELECTOR
    }
    modify.dkim {
        domains example.org example.com
        selector default
        key_path dkim_keys/{domain}_{selector}.key
        oversign_fields From To Subject ...
        sign_fields List-Id ...
        header_canon relaxed
        body_canon relaxed
        sig_expiry 120h
        hash sha256
        newkey_algo rsa2048
        allow_multiple_from no
        sign_subdomains no
        require_sender_match off
    }

Keys (docs/modify.md, "Keys") are read when the configuration is read, so
`config check` finds a broken one; a missing one is made at start (never
by `config check`) in maddy's layout, with its DNS record beside it, by
`kittiwake.dkim.keys`.

Per message, at the body stage (docs/modify.md, "Which key signs"):

1. the signing domain is the envelope sender's as this modifier sees it
   (the first configured domain for `<>` and a bare `postmaster`; with
   `sign_subdomains`, `sub.TOP` signs as `TOP`);
2. no key for it: the message goes out unsigned, logged;
3. `require_sender_match` may forbid signing (From against MAIL FROM or
   the login name);
4. `d=` and `s=` are written in A-labels unless the message uses SMTPUTF8;
5. the signature (`kittiwake.dkim.sign`, in a worker thread) is put on top
   of the header, over every field added before it (Received, A-R).

A failure to sign fails the message with a temporary internal error:
sending it unsigned would break DMARC for its domain silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kittiwake.address import (
    AddressError,
    normalize_domain,
    split,
    to_alabel_domain,
)
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.dkim import keys
from kittiwake.dkim.body import Canon
from kittiwake.dkim.keys import KeyFileError, SigningKey
from kittiwake.dkim.sign import SignRequest, fields_to_sign, signature_value
from kittiwake.dkim.verify import dkimpy_headers
from kittiwake.errors import ConfigError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.message.mailaddr import AddressSyntaxError, field_value, parse_address_list
from kittiwake.modify.base import ModifierState, ModifierStateBase
from kittiwake.module import Module, register
from kittiwake.workers import run_in_worker

__all__ = ["OVERSIGN_DEFAULT", "SIGN_DEFAULT", "DKIMSigner"]

#: Signed once more than they occur, so none can be added (maddy's list).
OVERSIGN_DEFAULT = (
    "Subject",
    "Sender",
    "To",
    "Cc",
    "From",
    "Date",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "In-Reply-To",
    "Message-Id",
    "References",
    "Autocrypt",
    "Openpgp",
)
#: Signed as often as they occur: lists and relays may add more (maddy's list).
SIGN_DEFAULT = (
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Resent-To",
    "Resent-Sender",
    "Resent-Message-Id",
    "Resent-Date",
    "Resent-From",
    "Resent-Cc",
)
SENDER_MATCH = ("off", "envelope", "auth")
DAY = 86_400.0


def _sender_match(node: Node) -> tuple[str, ...]:
    if node.children is not None:
        raise node.error(f"{node.name}: can't declare block here")
    values = tuple(node.args)
    if not values:
        raise ValueError("expected off, envelope or auth")
    for value in values:
        if value not in SENDER_MATCH:
            raise ValueError(f"unknown value {value!r} (expected off, envelope or auth)")
    if "off" in values and len(values) > 1:
        raise ValueError("off cannot be combined with other values")
    return () if values == ("off",) else values


def _canon(cfg: Directives, name: str) -> Canon:
    return "simple" if cfg.enum(name, ("relaxed", "simple"), "relaxed") == "simple" else "relaxed"


@register("modify.dkim")
class DKIMSigner(Module):
    """The module: configuration, keys, and the signing of one message."""

    def configure(self, cfg: Directives) -> None:
        inline = self.inline_args
        if len(inline) == 1:
            raise cfg.node.error(f"{self.module_name}: at least two arguments required")
        self.log.debug_enabled = cfg.boolean("debug", default=self.log.debug_enabled, inherit=True)
        self.domains: list[str] = cfg.string_list("domains", default=list(inline[:-1]))
        selector = cfg.string("selector", default=inline[-1] if inline else "")
        template = cfg.string("key_path", default=keys.DEFAULT_KEY_PATH)
        self.oversign: list[str] = cfg.string_list("oversign_fields", list(OVERSIGN_DEFAULT))
        self.sign: list[str] = cfg.string_list("sign_fields", list(SIGN_DEFAULT))
        self.header_canon = _canon(cfg, "header_canon")
        self.body_canon = _canon(cfg, "body_canon")
        self.expiry = cfg.duration("sig_expiry", default=5 * DAY)
        cfg.enum("hash", ("sha256",), "sha256")
        self.newkey_algo = cfg.enum("newkey_algo", keys.ALGORITHMS, "rsa2048")
        self.allow_multiple_from = cfg.boolean("allow_multiple_from", default=False)
        self.sign_subdomains = cfg.boolean("sign_subdomains", default=False)
        self.sender_match: tuple[str, ...] = cfg.custom("require_sender_match", _sender_match, ())
        key_node = cfg.get("key_path") or cfg.node
        cfg.finish()

        if not self.domains:
            raise cfg.node.error(f"{self.module_name}: at least one domain is needed")
        if not selector:
            raise cfg.node.error(f"{self.module_name}: selector is not specified")
        if self.sign_subdomains and len(self.domains) > 1:
            raise cfg.node.error(
                f"{self.module_name}: only one domain is supported when sign_subdomains is enabled"
            )
        if "from" not in {name.lower() for name in (*self.oversign, *self.sign)}:
            raise cfg.node.error(
                f"{self.module_name}: From must be in oversign_fields or sign_fields "
                "(RFC 6376 §5.4)"
            )
        self.selector = selector
        self._key_node = key_node
        #: lookup form of a domain -> its key; filled at start for new keys.
        self.keys: dict[str, SigningKey] = {}
        #: (domain, path) of keys to make at start.
        self._missing: list[tuple[str, str]] = []
        for domain in self.domains:
            try:
                lookup = normalize_domain(domain)
                keys.record_name(domain, selector)
            except (AddressError, ValueError) as exc:
                raise cfg.node.error(
                    f"{self.module_name}: invalid domain {domain!r}: {exc}"
                ) from None
            path = keys.key_path(template, domain, selector, self.container.globals.state_dir)
            try:
                key, exposed = keys.load(path)
            except FileNotFoundError:
                self._missing.append((domain, path))
                continue
            except (KeyFileError, OSError) as exc:
                raise key_node.error(f"{self.module_name}: {exc}") from None
            if exposed:
                self.log.warn("key file is readable by other users", path=path)
            self.keys[lookup] = key

    async def start(self) -> None:
        for domain, path in self._missing:
            key = await asyncio.to_thread(keys.generate, self.newkey_algo)
            try:
                created = await asyncio.to_thread(keys.create_key_file, path, key)
                if not created:  # another process made it meanwhile
                    key, _ = await asyncio.to_thread(keys.load, path)
            except KeyFileError as exc:
                raise self._key_node.error(f"{self.module_name}: {exc}") from None
            except OSError as exc:
                raise ConfigError(
                    f"{self.module_name}: cannot create {path}: {exc.strerror or exc}",
                    self._key_node.file,
                    self._key_node.line,
                ) from None
            self.keys[normalize_domain(domain)] = key
            if created:
                self.log.info(
                    "generated a new DKIM key: publish its record as TXT at "
                    f"{self.selector}._domainkey.{to_alabel_domain(normalize_domain(domain))}",
                    algorithm=self.newkey_algo,
                    key=path,
                    record=keys.dns_path(path),
                )
        self._missing = []

    async def modifier_state(self, meta: MsgMeta) -> ModifierState:
        return _State(self, meta)

    def signing_domain(self, mail_from: str) -> str | None:
        """The lookup form of the domain whose key signs, or None if it cannot be read."""
        _, domain = split(mail_from) if mail_from else ("", "")
        if not domain:
            domain = self.domains[0]
        try:
            domain = normalize_domain(domain)
            if self.sign_subdomains:
                top = normalize_domain(self.domains[0])
                if domain.endswith("." + top):
                    domain = top
        except AddressError:
            return None
        return domain

    def sender_allowed(self, meta: MsgMeta, mail_from: str, header: Header) -> str:
        """Why `require_sender_match` forbids signing; "" when it allows it."""
        if not self.sender_match:
            return ""
        try:
            authors = parse_address_list(field_value(header, "From"))
        except AddressSyntaxError:
            return "From cannot be read"
        if not authors:
            return "no From address"
        if len(authors) > 1 and not self.allow_multiple_from:
            return "more than one From address"
        author = authors[0].address.lower()
        if "envelope" in self.sender_match and mail_from.lower() != author:
            return "From does not match MAIL FROM"
        if "auth" in self.sender_match:
            user = (meta.conn.auth_user if meta.conn else None) or ""
            local = split(author)[0]
            if not user or (user.lower() != (author if "@" in user else local)):
                return "From does not match the login name"
        return ""

    def request(self, meta: MsgMeta, domain: str, header: Header) -> SignRequest | None:
        key = self.keys.get(domain)
        if key is None:
            return None
        selector = self.selector
        if not meta.smtp.smtputf8:
            try:
                domain = to_alabel_domain(domain)
                selector = to_alabel_domain(selector)
            except (UnicodeError, ValueError):
                return None
        return SignRequest(
            domain=domain,
            selector=selector,
            key=key,
            header_canon=self.header_canon,
            body_canon=self.body_canon,
            fields=tuple(fields_to_sign(header, self.oversign, self.sign)),
            expiry=self.expiry,
        )


def _sign(headers: Sequence[Sequence[bytes]], body: Buffer, request: SignRequest) -> str:
    with body.open() as reader:
        return signature_value(headers, reader, request)


class _State(ModifierStateBase):
    """One message: remembers the sender, signs at the body stage."""

    def __init__(self, signer: DKIMSigner, meta: MsgMeta) -> None:
        self.signer = signer
        self.meta = meta
        self.mail_from = ""

    async def rewrite_sender(self, mail_from: str) -> str:
        self.mail_from = mail_from
        return mail_from

    async def rewrite_body(self, header: Header, body: Buffer) -> None:
        signer, meta = self.signer, self.meta
        domain = signer.signing_domain(self.mail_from)
        if domain is None:
            signer.log.info("not signed: unreadable sender domain", msg_id=meta.id)
            return
        request = signer.request(meta, domain, header)
        if request is None:
            signer.log.info("not signed: no key for domain", msg_id=meta.id, domain=domain)
            return
        refused = signer.sender_allowed(meta, self.mail_from, header)
        if refused:
            signer.log.info("not signed", msg_id=meta.id, domain=domain, reason=refused)
            return
        value = await run_in_worker(_sign, dkimpy_headers(header), body, request)
        header.add("DKIM-Signature", value, folded=False)
        signer.log.debug("signed", msg_id=meta.id, domain=request.domain, selector=request.selector)
