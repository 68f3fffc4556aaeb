"""Mailbox addresses: parsing SMTP paths, IDNA, case folding, sub-addresses.

Every part of kittiwake that touches an envelope address goes through this
module, so "what is an address" and "when are two addresses the same" are
answered in one place.

Forms of an address (pipeline.md §4.1):

* **internal form** - what `Address.__str__` gives and what the pipeline,
  checks and targets pass around: the local part *unquoted* (`"john doe"@x`
  is `john doe@x`), so the same mailbox has one spelling however the client
  quoted it. `split` therefore cuts at the *last* `@`. `quote_local_part`
  (and `Address.wire`) turn it back into RFC 5321 syntax for the wire.
* **clean form** (`clean_address`) - domain in U-labels, NFC, lowercase;
  local part untouched. What the endpoint hands the pipeline.
* **lookup form** (`normalize_address`) - clean form plus a NFC-lowercased
  local part. Keys of routing rules and tables.
* **storage forms** (`NORMALIZERS`) - PRECIS and friends (auth.md §1.3),
  for user names and mailbox names.

Errors are `AddressError` (a `ValueError`) subclasses with a `reason` for
the log. `AddressError.smtp_error(role)` gives the reply smtp-endpoint.md
§8/§9 fixes for that kind of failure at MAIL or RCPT, so the reply texts
live here once. (The pipeline's own normalisation failures use other codes,
pipeline.md §4.2/§4.3, and build their replies themselves.)

Strategy for parsing: almost every path a server sees is a plain ASCII
`atom@host.name`. One anchored regular expression accepts that shape and we
return at once; anything else (quotes, literals, UTF-8, source routes,
errors) falls to a careful parser whose only job is to be right and to say
exactly what is wrong.

This module performs no I/O and may be used by the sans-IO protocol core.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from precis_i18n import get_profile
from precis_i18n.profile import Profile

from kittiwake.errors import SMTPError

__all__ = [
    "MAX_DOMAIN",
    "MAX_LABEL",
    "MAX_LOCAL_PART",
    "MAX_PATH",
    "MAX_RULE_ADDRESS",
    "NORMALIZERS",
    "NULL_ADDRESS",
    "Address",
    "AddressError",
    "NormalizationError",
    "PathSyntaxError",
    "PathTooLong",
    "Role",
    "SMTPUTF8Required",
    "clean_address",
    "get_normalizer",
    "is_valid_address_rule",
    "is_valid_domain_rule",
    "needs_smtputf8",
    "normalize_address",
    "normalize_domain",
    "normalize_rule",
    "parse_forward_path",
    "parse_reverse_path",
    "precis",
    "precis_casefold",
    "precis_casefold_email",
    "precis_email",
    "quote_local_part",
    "split",
    "split_subaddress",
    "to_alabel_domain",
    "to_ulabel_domain",
]

# --- Length limits -------------------------------------------------------
#
# RFC 5321 §4.5.3.1 sets minimum maxima that a server must accept; it also
# says (§4.5.3.1) to avoid limits where possible. maddy enforces none.
#
# RFC 5321 §4.5.3.1.1 says 64 octets for a local part. We RELAX it to 255:
# longer local parts are real (VERP and SRS return paths, bulk senders'
# bounce addresses such as `bounces+<id>-<hash>-user=example.org@...`), and
# rejecting them loses mail an operator expects to get. 255 is the longest
# file-name component on common file systems, so a local part we accept can
# still name a Maildir directory. Measured in UTF-8 octets, unquoted.
MAX_LOCAL_PART = 255
# RFC 5321 §4.5.3.1.2: 255 octets for a domain, FOLLOWED - measured on the
# A-label form without a trailing dot, since that is what DNS carries.
MAX_DOMAIN = 255
# RFC 1035 §2.3.4: 63 octets per label (A-label form), FOLLOWED. (maddy's
# rule validation lets 64 through, pipeline.md §4.1.)
MAX_LABEL = 63
# RFC 5321 §4.5.3.1.3: 256 octets for a path including `<` and `>`. RELAXED
# to 512 octets of path content (brackets excluded) so that the largest
# local part and domain we accept (255 + 1 + 255) fit, with a little room
# for quoting. It is checked first, before any parsing, which bounds the
# work one command can cause.
MAX_PATH = 512
# RFC 3696 erratum 1690 (and maddy): 320 octets for an address in a
# routing rule (pipeline.md §4.1).
MAX_RULE_ADDRESS = 320

Role = Literal["sender", "recipient"]


# --- Errors --------------------------------------------------------------


class AddressError(ValueError):
    """An address is unusable; `reason` says why (for logs and operators).

    Subclasses carry the replies smtp-endpoint.md fixes for their kind of
    failure; see `smtp_error`.
    """

    # role -> (code, enhanced code, text): filled in by each subclass.
    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {}

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def smtp_error(self, role: Role) -> SMTPError:
        """The reply for this failure in a MAIL (`sender`) or RCPT (`recipient`).

        The client sees only the spec's fixed text; `reason` goes to the log
        through `SMTPError.reason`.
        """
        code, enhanced, text = self._replies[role]
        return SMTPError(code, enhanced, text, reason=self.reason)


class PathSyntaxError(AddressError):
    """The path is not valid RFC 5321 syntax (spec README settled question 3)."""

    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {
        "sender": (501, (5, 5, 2), "Was expecting MAIL arg syntax of FROM:<address>"),
        "recipient": (501, (5, 5, 2), "Was expecting RCPT arg syntax of TO:<address>"),
    }


class PathTooLong(PathSyntaxError):
    """A length limit above is exceeded; RFC 5321 §4.5.3.1.10 "501 Path too long"."""

    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {
        "sender": (501, (5, 5, 2), "Path too long"),
        "recipient": (501, (5, 5, 2), "Path too long"),
    }


class SMTPUTF8Required(AddressError):
    """The path is valid but non-ASCII, and the transaction did not say SMTPUTF8.

    Raised only after every syntax check passed, and `address` holds the
    parse result, so an endpoint that defers the sender's rejection
    (`defer_sender_reject`, smtp-endpoint.md §8.3) can keep the address and
    answer with this error later.
    """

    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {
        "sender": (550, (5, 6, 7), "SMTPUTF8 is required for non-ASCII senders"),
        "recipient": (553, (5, 6, 7), "SMTPUTF8 is required for non-ASCII recipients"),
    }

    def __init__(self, reason: str, address: Address) -> None:
        super().__init__(reason)
        self.address = address


class NormalizationError(AddressError):
    """The address cannot be brought into a clean, lookup or storage form."""

    _replies: ClassVar[dict[str, tuple[int, tuple[int, int, int], str]]] = {
        "sender": (553, (5, 1, 7), "Unable to normalize the sender address"),
        "recipient": (501, (5, 1, 2), "Unable to normalize the recipient address"),
    }


# --- The model -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed path: unquoted local part and domain as the client wrote it.

    The null reverse path has both empty; the bare `postmaster` recipient
    (RFC 5321 §4.1.1.3) has an empty domain and its local part as written.
    The domain is not normalised here, because the Received field wants it
    as sent and normalisation can fail with its own reply.
    """

    local: str
    domain: str

    @property
    def is_null(self) -> bool:
        return not self.local

    @property
    def is_postmaster(self) -> bool:
        """The domain-less `<postmaster>` recipient."""
        return bool(self.local) and not self.domain

    def __str__(self) -> str:
        """Internal form: `local@domain`, unquoted; `""` for the null path."""
        if not self.domain:
            return self.local
        return f"{self.local}@{self.domain}"

    def wire(self) -> str:
        """RFC 5321 form (without angle brackets), quoting the local part if needed."""
        if not self.domain:
            return self.local
        return f"{quote_local_part(self.local)}@{self.domain}"

    def clean(self) -> str:
        """Clean form (see `clean_address`); raises `NormalizationError`."""
        if not self.domain:
            return self.local
        return f"{self.local}@{normalize_domain(self.domain)}"


NULL_ADDRESS = Address("", "")

# --- Character classes ---------------------------------------------------

# RFC 5322 §3.2.3 atext plus `.`, which makes a dot-string; every printable
# non-ASCII character joins it under RFC 6531 §3.3. Dots are not checked for
# placement: `a..b` and `a.` are outside RFC 5321, but some large mobile
# carriers have issued such addresses for years and maddy accepts them.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_FAST_PATH = re.compile(
    rf"([{_ATEXT}.]{{1,{MAX_LOCAL_PART}}})@"
    rf"((?:[A-Za-z0-9_\-]{{1,{MAX_LABEL}}}\.)*[A-Za-z0-9_\-]{{1,{MAX_LABEL}}}\.?)"
)
_BAD_LOCAL_CHAR = re.compile(rf"[^{_ATEXT}.\x80-\U0010ffff]")
# Host names: letters, digits, `-`; `_` too, because it occurs in real host
# names and refusing it would only lose mail. Leading or trailing `-` is not
# refused for the same reason. Non-ASCII is allowed here and caught by the
# SMTPUTF8 rule.
_BAD_LABEL_CHAR = re.compile(r"[^A-Za-z0-9_\-\x80-\U0010ffff]")
# Settled question 3: C0 controls and DEL are a syntax error anywhere in a
# path, quoted or not. Lone surrogates come from undecodable bytes
# (`surrogateescape`): the path was not UTF-8.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# C0 and C1 controls, DEL, surrogates: what a decoded A-label must not hold.
_BAD_ULABEL_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_QUOTED_PAIR = re.compile(r"\\(.)")


def _octets(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def needs_smtputf8(text: str) -> bool:
    """Whether `text` may only travel in an SMTPUTF8 transaction.

    [quirk] U+0080 itself does not count, as in maddy (it compares with
    `> 0x80`, smtp-endpoint.md §9); everything above it does.
    """
    return not text.isascii() and max(text) > "\x80"


# --- Parsing paths -------------------------------------------------------


def parse_reverse_path(text: str, *, smtputf8: bool) -> Address:
    """Parse MAIL FROM's path content (what was inside `<` and `>`).

    `""` is the null path. A bare `postmaster` is refused: RFC 5321 allows
    it only as a recipient (smtp-endpoint.md §8.1).
    """
    if not text:
        return NULL_ADDRESS
    return _parse_path(text, smtputf8=smtputf8, postmaster_ok=False)


def parse_forward_path(text: str, *, smtputf8: bool) -> Address:
    """Parse RCPT TO's path content. `postmaster` (any case) needs no domain."""
    if not text:
        raise PathSyntaxError("the null path <> is not a valid recipient")
    return _parse_path(text, smtputf8=smtputf8, postmaster_ok=True)


def _parse_path(text: str, *, smtputf8: bool, postmaster_ok: bool) -> Address:
    match = _FAST_PATH.fullmatch(text)
    if match is not None:
        domain = match.group(2)
        if len(domain) - domain.endswith(".") <= MAX_DOMAIN:
            return Address(match.group(1), domain)
    return _parse_path_slow(text, smtputf8=smtputf8, postmaster_ok=postmaster_ok)


def _parse_path_slow(text: str, *, smtputf8: bool, postmaster_ok: bool) -> Address:
    if _octets(text) > MAX_PATH:
        raise PathTooLong(f"path longer than {MAX_PATH} octets")
    bad = _BAD_PATH_CHAR.search(text)
    if bad is not None:
        ch = bad.group()
        if "\ud800" <= ch <= "\udfff":
            raise PathSyntaxError("path is not valid UTF-8")
        raise PathSyntaxError(f"control character U+{ord(ch):04X} in path")

    if text.lower() == "postmaster":
        if postmaster_ok:
            return Address(text, "")
        raise PathSyntaxError("postmaster without a domain is only valid as a recipient")

    rest = text
    if rest.startswith("@"):
        rest = _skip_source_route(rest)

    if rest.startswith('"'):
        quoted = _QUOTED.match(rest)
        if quoted is None:
            raise PathSyntaxError("unterminated quoted local part")
        local = _QUOTED_PAIR.sub(r"\1", quoted.group(1))
        at = quoted.end()
        if at == len(rest):
            raise PathSyntaxError("missing '@' and domain after the local part")
        if rest[at] != "@":
            raise PathSyntaxError("text after the closing quote of the local part")
    else:
        at = rest.find("@")
        if at < 0:
            raise PathSyntaxError("missing '@' and domain")
        local = rest[:at]
        _check_dot_string(local)
    if not local:
        raise PathSyntaxError("empty local part")
    if _octets(local) > MAX_LOCAL_PART:
        raise PathTooLong(f"local part longer than {MAX_LOCAL_PART} octets")

    domain = rest[at + 1 :]
    _check_domain(domain)

    address = Address(local, domain)
    if not smtputf8 and (needs_smtputf8(local) or needs_smtputf8(domain)):
        raise SMTPUTF8Required("non-ASCII address without SMTPUTF8", address)
    return address


def _skip_source_route(text: str) -> str:
    """Drop an RFC 5321 §4.1.2 A-d-l (`@a,@b:`); §C says to ignore it.

    The route's domains are plain domains (no literals), so the first `:`
    ends it.
    """
    route, colon, rest = text.partition(":")
    if not colon:
        raise PathSyntaxError("empty local part")
    for hop in route.split(","):
        if not hop.startswith("@") or len(hop) == 1:
            raise PathSyntaxError("malformed source route")
        _check_domain(hop[1:], what="source route domain")
    return rest


def _check_dot_string(local: str) -> None:
    bad = _BAD_LOCAL_CHAR.search(local)
    if bad is None:
        return
    ch = bad.group()
    if ch == "\\":
        raise PathSyntaxError("backslash outside a quoted local part")
    if ch == '"':
        raise PathSyntaxError("quote inside an unquoted local part")
    raise PathSyntaxError(f"invalid character {ch!r} in the local part")


def _check_domain(domain: str, *, what: str = "domain") -> None:
    """Validate a domain or address literal; raise `PathSyntaxError`/`PathTooLong`."""
    if not domain:
        raise PathSyntaxError(f"empty {what}")
    if domain.startswith("["):
        _check_literal(domain)
        return
    name = domain[:-1] if domain.endswith(".") else domain
    if not name:
        raise PathSyntaxError(f"{what} is only a dot")
    total = len(name)
    ascii_name = name.isascii()
    for label in name.split("."):
        if not label:
            raise PathSyntaxError(f"empty label in {what} (leading dot or '..')")
        bad = _BAD_LABEL_CHAR.search(label)
        if bad is not None:
            raise PathSyntaxError(f"invalid character {bad.group()!r} in {what}")
        if ascii_name or label.isascii():
            size = len(label)
        else:
            size = len(_alabel(label))
            total += size - len(label)
        if size > MAX_LABEL:
            raise PathTooLong(f"{what} label longer than {MAX_LABEL} octets")
    if total > MAX_DOMAIN:
        raise PathTooLong(f"{what} longer than {MAX_DOMAIN} octets")


def _check_literal(domain: str) -> None:
    """RFC 5321 §4.1.3 address literals: `[IPv4]` and `[IPv6:...]`.

    General literals (`[tag:...]`) need a registered tag, and IPv6 is the
    only one there is, so any other tag is refused. Scope ids (`%eth0`) and
    IPv4 octets with leading zeros are refused (`ipaddress` semantics).
    """
    if not domain.endswith("]"):
        raise PathSyntaxError("unterminated address literal")
    if _canonical_literal_or_none(domain) is None:
        tag, colon, _ = domain[1:-1].partition(":")
        if colon and tag.lower() != "ipv6":
            raise PathSyntaxError(f"unsupported address literal tag {tag!r}")
        raise PathSyntaxError(f"invalid address literal {domain!r}")


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


# --- Splitting and quoting -----------------------------------------------


def split(addr: str) -> tuple[str, str]:
    """(local part, domain) of an internal-form address, cut at the last `@`.

    The last `@`, because an unquoted local part may itself contain `@`
    (`"a@b"@example.org` is `a@b@example.org` internally). Bare `postmaster`
    (any case) gives `(addr, "")`. Raises `NormalizationError` when there is
    no `@`, or the local part or domain is empty.
    """
    if len(addr) == 10 and addr.lower() == "postmaster":
        return addr, ""
    local, at, domain = addr.rpartition("@")
    if not at:
        raise NormalizationError(f"no '@' in {addr!r}")
    if not local:
        raise NormalizationError(f"empty local part in {addr!r}")
    if not domain:
        raise NormalizationError(f"empty domain in {addr!r}")
    return local, domain


def split_subaddress(local: str, sep: str = "+") -> tuple[str, str]:
    """(base, tag) of a local part: `user+tag` -> `("user", "tag")`.

    Cut at the *first* separator, so `a+b+c` is user `a` with tag `b+c`
    (targets.md §7.2). A local part that starts with the separator has no
    tag (`+x` stays whole), and so has one without it: the tag is then
    `""`, as it is for `user+`.
    """
    if not sep:
        raise ValueError("the sub-address separator must not be empty")
    base, found, tag = local.partition(sep)
    if not found or not base:
        return local, ""
    return base, tag


def quote_local_part(local: str) -> str:
    """`local` as an RFC 5321 §4.1.2 Local-part: a dot-string, or quoted.

    Quoting is needed for anything that is not atoms joined by single dots
    (so `a..b` is quoted even though we accept it unquoted on input: strict
    receivers do not). Control characters cannot be written at all.
    """
    if local and not _BAD_LOCAL_CHAR.search(local) and "" not in local.split("."):
        return local
    if _BAD_PATH_CHAR.search(local):
        raise ValueError(f"local part {local!r} has a control character: cannot be quoted")
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- Domains and IDNA ----------------------------------------------------


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

    Lenient (plain punycode, pipeline.md §4.1), but refuses results that
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

    For showing a name to an SMTPUTF8 peer (Received, smtp-endpoint.md
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

    pipeline.md §4.1. Lowercasing is `str.lower` (simple, like Go's
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

    For peers without SMTPUTF8 (Received, EHLO, smtp-endpoint.md §12.2) and
    for Maildir directory names (targets.md §7.2). Non-ASCII labels are NFC-
    and lower-cased first (an A-label of an upper-case label would be a
    different name); ASCII labels are left as written, so feed it the result
    of `normalize_domain` when a canonical form is wanted. Address literals
    and the trailing dot are kept.
    """
    if domain.isascii():
        return domain
    return ".".join(label if label.isascii() else _alabel(label) for label in domain.split("."))


# --- Address forms -------------------------------------------------------


def _lower_local(local: str) -> str:
    if local.isascii():
        return local.lower()
    return unicodedata.normalize("NFC", local).lower()


def clean_address(addr: str) -> str:
    """Clean form (pipeline.md §4.1): normalised domain, local part untouched.

    `""` (null sender) and bare `postmaster` stay as they are.
    """
    if not addr:
        return ""
    local, domain = split(addr)
    if not domain:
        return local
    return f"{local}@{normalize_domain(domain)}"


def normalize_address(addr: str) -> str:
    """Lookup form (pipeline.md §4.1): the key for rules and tables.

    Local part NFC then lowercase, domain as `normalize_domain`. `""` stays
    `""`; bare `postmaster` in any case becomes `postmaster`.
    """
    if not addr:
        return ""
    local, domain = split(addr)
    if not domain:
        return "postmaster"
    return f"{_lower_local(local)}@{normalize_domain(domain)}"


# --- Storage / user-name forms (auth.md §1.3) ----------------------------


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
"""Normalisation functions by their configuration name (auth.md §1.3).

Each raises `NormalizationError` for input its form cannot hold.
"""


def get_normalizer(name: str) -> Callable[[str], str]:
    """The function for a configuration value such as `precis_casefold_email`."""
    try:
        return NORMALIZERS[name]
    except KeyError:
        known = ", ".join(NORMALIZERS)
        raise ValueError(f"unknown normalization function {name!r} (known: {known})") from None


# --- Routing rules (pipeline.md §4.1, §2.2) ------------------------------


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
    valid domain or address (pipeline.md §4.1); otherwise the pipeline
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
