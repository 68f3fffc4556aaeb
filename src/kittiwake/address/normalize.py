"""When two addresses are the same: the clean, lookup and storage forms.

Its own module because this is policy over parsed addresses, not grammar:
the endpoint hands the pipeline the clean form, routing rules and tables
are keyed by the lookup form, and user and mailbox names use the PRECIS
storage forms (docs/address.md) chosen by configuration name. Routing-rule
keys (docs/address.md, "Routing rules") are here too, since a rule is valid exactly when it
normalises. The forms themselves are described in the package docstring.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable

from precis_i18n import get_profile
from precis_i18n.profile import Profile

from kittiwake.address.domain import normalize_domain
from kittiwake.address.errors import (
    AddressError,
    NormalizationError,
    PathSyntaxError,
    SMTPUTF8Required,
)
from kittiwake.address.path import (
    _BAD_LOCAL_CHAR,
    _BAD_PATH_CHAR,
    _QUOTED,
    _QUOTED_PAIR,
    MAX_LOCAL_PART,
    MAX_RULE_ADDRESS,
    _check_domain,
    _octets,
    needs_smtputf8,
    split,
)

__all__ = [
    "NORMALIZERS",
    "clean_address",
    "clean_path",
    "get_normalizer",
    "is_valid_address_rule",
    "is_valid_domain_rule",
    "normalize_address",
    "normalize_rule",
    "precis",
    "precis_casefold",
    "precis_casefold_email",
    "precis_email",
]

# --- Address forms -------------------------------------------------------


def _lower_local(local: str) -> str:
    if local.isascii():
        return local.lower()
    return unicodedata.normalize("NFC", local).lower()


@functools.lru_cache(maxsize=1024)  # immutable results, same addresses again
def clean_address(addr: str) -> str:
    """Clean form (docs/address.md): normalised domain, local part untouched.

    `""` (null sender) and bare `postmaster` stay as they are.
    """
    if not addr:
        return ""
    local, domain = split(addr)
    if not domain:
        return local
    return f"{local}@{normalize_domain(domain)}"


def clean_path(addr: str, *, smtputf8: bool) -> str:
    """The clean form of a path a client sent (internal form), for the pipeline.

    First the SMTPUTF8 rule: a non-ASCII address needs a transaction that
    said SMTPUTF8 (RFC 6531 §3.5); then the domain is normalised. Raises
    `SMTPUTF8Required` or `NormalizationError`, whose `smtp_error(role)` is
    the reply. The endpoint calls this when it processes MAIL and RCPT, not
    the protocol core, because `defer_sender_reject` moves the sender's
    reply to the first RCPT (docs/server.md).
    """
    if not smtputf8 and needs_smtputf8(addr):
        raise SMTPUTF8Required("non-ASCII address in a transaction without SMTPUTF8")
    return clean_address(addr)


@functools.lru_cache(maxsize=1024)  # immutable results, same addresses again
def normalize_address(addr: str) -> str:
    """Lookup form (docs/address.md): the key for rules and tables.

    Local part NFC then lowercase, domain as `normalize_domain`. `""` stays
    `""`; bare `postmaster` in any case becomes `postmaster`.
    """
    if not addr:
        return ""
    local, domain = split(addr)
    if not domain:
        return "postmaster"
    return f"{_lower_local(local)}@{normalize_domain(domain)}"


# --- Storage / user-name forms (docs/address.md) ----------------------------


@functools.cache
def _profile(name: str) -> Profile:
    # get_profile builds a new profile object on every call.
    return get_profile(name)


def _enforce(profile: str, text: str) -> str:
    try:
        return _profile(profile).enforce(text)
    except UnicodeError as exc:
        reason = exc.reason if isinstance(exc, UnicodeEncodeError) else str(exc)
        raise NormalizationError(f"PRECIS {profile} refuses {text!r}: {reason}") from exc


def precis_casefold(text: str) -> str:
    """Whole string through PRECIS UsernameCaseMapped (RFC 8265 §3.3)."""
    return _enforce("UsernameCaseMapped", text)


def precis(text: str) -> str:
    """Whole string through PRECIS UsernameCasePreserved (RFC 8265 §3.4)."""
    return _enforce("UsernameCasePreserved", text)


def _precis_email(addr: str, profile: str) -> str:
    local, domain = split(addr)
    local = _enforce(profile, local)
    if not domain:
        # Bare postmaster. (maddy returns "postmaster@" here.)
        return local
    return f"{local}@{normalize_domain(domain)}"


def precis_casefold_email(addr: str) -> str:
    """Local part through UsernameCaseMapped, domain as `normalize_domain`."""
    return _precis_email(addr, "UsernameCaseMapped")


def precis_email(addr: str) -> str:
    """Local part through UsernameCasePreserved, domain as `normalize_domain`."""
    return _precis_email(addr, "UsernameCasePreserved")


def _casefold(text: str) -> str:
    return text.lower()


def _noop(text: str) -> str:
    return text


def _auto(text: str) -> str:
    if _is_valid_address(text):
        return precis_casefold_email(text)
    return precis_casefold(text)


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "auto": _auto,
    "precis_casefold_email": precis_casefold_email,
    "precis_casefold": precis_casefold,
    "precis_email": precis_email,
    "precis": precis,
    "casefold": _casefold,
    "noop": _noop,
}
"""Normalisation functions by their configuration name (docs/address.md).

Each raises `NormalizationError` for input its form cannot hold.
"""


def get_normalizer(name: str) -> Callable[[str], str]:
    """The function for a configuration value such as `precis_casefold_email`."""
    try:
        return NORMALIZERS[name]
    except KeyError:
        known = ", ".join(NORMALIZERS)
        raise ValueError(f"unknown normalization function {name!r} (known: {known})") from None


# --- Routing rules (docs/address.md) --------------------------------


def _is_valid_domain(domain: str) -> bool:
    try:
        _check_domain(domain)
    except PathSyntaxError:
        return False
    return True


def _is_valid_address(addr: str) -> bool:
    """maddy's `address.Valid`: ≤320 octets, a usable local part and domain."""
    if _octets(addr) > MAX_RULE_ADDRESS:
        return False
    try:
        local, domain = split(addr)
    except NormalizationError:
        return False
    if not domain:
        return True  # bare postmaster
    if local.startswith('"'):
        quoted = _QUOTED.fullmatch(local)
        if quoted is None or not quoted.group(1) or _BAD_PATH_CHAR.search(local):
            return False
    elif _BAD_LOCAL_CHAR.search(local) or _octets(local) > MAX_LOCAL_PART:
        return False
    return _is_valid_domain(domain)


def _unquote_rule(rule: str) -> str:
    """`"john doe"@example.org` -> `john doe@example.org` (the internal form)."""
    if rule.startswith('"'):
        quoted = _QUOTED.match(rule)
        if quoted is not None and rule[quoted.end() : quoted.end() + 1] == "@":
            return _QUOTED_PAIR.sub(r"\1", quoted.group(1)) + rule[quoted.end() :]
    return rule


def normalize_rule(rule: str) -> str:
    """The lookup-form key of a `source`/`destination` rule, or `AddressError`.

    A rule with `@` is an address rule, anything else a domain rule (bare
    `postmaster` comes out as `postmaster` either way). The result must be a
    valid domain or address (docs/address.md); otherwise the pipeline
    reports "invalid ... match rule".
    """
    if "@" in rule:
        if not _is_valid_address(rule):
            raise NormalizationError(f"{rule!r} is not a valid address")
        key = normalize_address(_unquote_rule(rule))
    else:
        key = normalize_domain(rule)
        if not _is_valid_domain(key):
            raise NormalizationError(f"{rule!r} is not a valid domain")
    return key


def is_valid_domain_rule(rule: str) -> bool:
    """Whether `rule` (no `@`) normalises to a valid domain."""
    if "@" in rule:
        return False
    try:
        normalize_rule(rule)
    except AddressError:
        return False
    return True


def is_valid_address_rule(rule: str) -> bool:
    """Whether `rule` normalises to a valid address (bare `postmaster` is one)."""
    if "@" not in rule:
        return rule.lower() == "postmaster"
    try:
        normalize_rule(rule)
    except AddressError:
        return False
    return True
