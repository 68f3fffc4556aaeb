"""Tables that take addresses apart and put them together.

`email_localpart` turns `user@example.org` into `user`, so a table keyed by
user names can answer for addresses; `email_with_domain` goes the other way,
and with several domains fans one user name out into several addresses
(1:N aliases, `authorize_sender` for users without an address as login).
"""

from __future__ import annotations

from kittiwake.config.directives import Directives
from kittiwake.module import Module, register

# RFC 5322 §3.2.3 atext without the letters and digits; RFC 6531 §3.3 adds
# every non-ASCII character.
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")


def split_address(addr: str) -> tuple[str, str] | None:
    """(local part, domain) split at the last `@`, or None if not an address.

    Deliberately naive, like maddy's `address.Split`: the local part is
    returned as written (quotes included). The special recipient
    `postmaster` (RFC 5321 §4.1.1.3) is an address without a domain.
    """
    if addr.casefold() == "postmaster":  # Go strings.EqualFold
        return addr, ""
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain


def _is_atext(ch: str) -> bool:
    return (ch.isascii() and ch.isalnum()) or ch in _ATEXT_SPECIALS or not ch.isascii()


def quote_local_part(local: str) -> str:
    """`local` as an RFC 5321 §4.1.2 Local-part, quoted only if it must be.

    A Dot-string (atoms of atext joined by single dots) stays as it is;
    anything else becomes a Quoted-string with `\\` and `"` escaped. maddy
    only quotes for a fixed list of specials, so it leaves `a..b` or `.a`
    unquoted, which are not valid local parts.
    """
    atoms = local.split(".")
    if all(atom and all(_is_atext(ch) for ch in atom) for atom in atoms):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def valid_domain(domain: str) -> bool:
    """A DNS domain name usable after `@` (U-labels or A-labels).

    Stricter than maddy (which accepts anything its IDNA library can
    encode): every label must be 1-63 octets in A-label form and, in ASCII,
    made of letters, digits, `-` and `_`.
    """
    if not domain or len(domain) > 253:
        return False
    for label in domain.split("."):
        if not label:
            return False
        if label.isascii():
            ascii_label = label
        else:
            try:
                ascii_label = label.encode("idna").decode("ascii")
            except UnicodeError:
                return False
        if len(ascii_label) > 63:
            return False
        if not all(ch.isalnum() or ch in "-_" for ch in ascii_label):
            return False
    return True


class _LocalPart(Module):
    keep_non_addresses = False

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(f"{self.module_name} takes no arguments")
        cfg.finish()

    async def lookup(self, key: str) -> str | None:
        parts = split_address(key)
        if parts is None:
            return key if self.keep_non_addresses else None
        return parts[0]


@register("table.email_localpart")
class EmailLocalpartTable(_LocalPart):
    """`email_localpart`: the local part; anything not an address is not found."""


@register("table.email_localpart_optional")
class EmailLocalpartOptionalTable(_LocalPart):
    """`email_localpart_optional`: like `email_localpart`, other keys unchanged."""

    keep_non_addresses = True


@register("table.email_with_domain")
class EmailWithDomainTable(Module):
    """`email_with_domain DOMAIN...`: the key as a local part at each domain."""

    def configure(self, cfg: Directives) -> None:
        if not self.inline_args:
            raise cfg.node.error(f"{self.module_name}: at least one domain is required")
        for domain in self.inline_args:
            if not valid_domain(domain):
                raise cfg.node.error(f"{self.module_name}: invalid domain: {domain}")
        self.domains = list(self.inline_args)
        cfg.finish()

    async def lookup(self, key: str) -> str | None:
        # A single value can only name one address: the first domain's.
        return f"{quote_local_part(key)}@{self.domains[0]}"

    async def lookup_multi(self, key: str) -> list[str]:
        local = quote_local_part(key)
        return [f"{local}@{domain}" for domain in self.domains]
