"""Domains: IDNA labels, address literals, the lookup form of a domain.

Its own module because a domain is compared, stored and shown in more
forms than the rest of an address: U-labels for comparison and for SMTPUTF8
peers, A-labels for everyone else and for Maildir directory names, and a
canonical spelling of address literals. The path grammar (`address.path`)
uses the encoder to measure labels; the address forms
(`address.normalize`) build on `normalize_domain`.

IDNA here is lenient like maddy's Go profile: plain punycode (RFC 3492),
with no IDNA2008 code point or bidi validation, but refusing decoded labels
that would alias an ASCII name or hold control characters.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from kittiwake.address.errors import NormalizationError

__all__ = ["normalize_domain", "to_alabel_domain", "to_ulabel_domain"]

# --- Domains and IDNA ----------------------------------------------------

# C0 and C1 controls, DEL, surrogates: what a decoded A-label must not hold.
_BAD_ULABEL_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _canonical_literal_or_none(domain: str) -> str | None:
    """`[1.2.3.4]` / `[ipv6:2001:db8::1]`, or None if `domain` is no valid literal."""
    inner = domain[1:-1]
    tag, colon, value = inner.partition(":")
    try:
        if not colon:
            return f"[{ipaddress.IPv4Address(inner)}]"
        if tag.lower() == "ipv6" and "%" not in value:
            return f"[ipv6:{ipaddress.IPv6Address(value).compressed}]"
    except ValueError:
        pass
    return None


def _alabel(label: str) -> str:
    """A-label of one non-ASCII label: NFC, lowercase, then punycode (RFC 3492).

    Lenient like maddy's Go IDNA profile: no IDNA2008 code point or bidi
    validation, only the encoding.
    """
    folded = unicodedata.normalize("NFC", label).lower()
    if folded.isascii():  # e.g. KELVIN SIGN: NFC makes it a plain K
        return folded
    return "xn--" + folded.encode("punycode").decode("ascii")


def _ulabel(label: str) -> str | None:
    """U-label of one `xn--` label, or None when it is not a usable A-label.

    Lenient (plain punycode, docs/address.md), but refuses results that
    would alias or break things: empty, pure ASCII (`xn--abc-` would equal
    `abc`), and control or surrogate code points.
    """
    try:
        decoded = label[4:].lower().encode("ascii").decode("punycode")
    except UnicodeError:
        return None
    if not decoded or decoded.isascii():
        return None
    if _BAD_ULABEL_CHAR.search(decoded):
        return None
    return decoded


def to_ulabel_domain(domain: str, *, strict: bool = True) -> str:
    """Decode every `xn--` label to Unicode and apply NFC. Case is kept.

    For showing a name to an SMTPUTF8 peer (Received, docs/server.md
    §12.2). A label that does not decode raises `NormalizationError`, or with
    `strict=False` is kept as written - maddy's fallback when it only needs
    something to compare.
    """
    if domain.startswith("[") or (domain.isascii() and "xn--" not in domain.lower()):
        return domain
    labels = domain.split(".")
    for i, label in enumerate(labels):
        if label[:4].lower() == "xn--":
            decoded = _ulabel(label)
            if decoded is None:
                if strict:
                    raise NormalizationError(f"invalid A-label {label!r} in {domain!r}")
                continue
            labels[i] = decoded
    return unicodedata.normalize("NFC", ".".join(labels))


def normalize_domain(domain: str, *, strict: bool = True) -> str:
    """Lookup form of a domain: U-labels, NFC, lowercase, no trailing dot.

    docs/address.md. Lowercasing is `str.lower` (simple, like Go's
    `strings.ToLower`), not full case folding. Address literals get a
    canonical spelling (`[IPv6:2001:DB8:0::1]` -> `[ipv6:2001:db8::1]`) so
    that they compare equal however they were written. The trailing root dot
    is dropped here and therefore in the clean form too: RFC 5321 has no use
    for it and targets should not see two spellings of one domain.

    Raises `NormalizationError` for an empty domain, a bad address literal
    or an `xn--` label that does not decode; with `strict=False` it never
    raises and keeps what it cannot convert (lowercased) - for comparisons.
    """
    if domain.startswith("["):
        canonical = _canonical_literal_or_none(domain) if domain.endswith("]") else None
        if canonical is not None:
            return canonical
        if strict:
            raise NormalizationError(f"invalid address literal {domain!r}")
        return domain.lower()
    if not domain and strict:
        raise NormalizationError("empty domain")
    if domain.isascii():
        lowered = domain.lower()
        if "xn--" not in lowered:
            return lowered[:-1] if lowered.endswith(".") else lowered
    unicode = to_ulabel_domain(domain, strict=strict).lower()
    return unicode[:-1] if unicode.endswith(".") else unicode


def to_alabel_domain(domain: str) -> str:
    """Encode every non-ASCII label as an A-label (`xn--...`).

    For peers without SMTPUTF8 (Received, EHLO; docs/server.md) and
    for Maildir directory names (docs/storage-maildir.md). Non-ASCII labels are NFC-
    and lower-cased first (an A-label of an upper-case label would be a
    different name); ASCII labels are left as written, so feed it the result
    of `normalize_domain` when a canonical form is wanted. Address literals
    and the trailing dot are kept.
    """
    if domain.isascii():
        return domain
    return ".".join(label if label.isascii() else _alabel(label) for label in domain.split("."))
