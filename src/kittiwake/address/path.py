"""The RFC 5321 path grammar: `MAIL FROM` and `RCPT TO` addresses.

Its own module because reading what the client sent is a different job
from deciding when two addresses are the same (`address.normalize`): this
one says exactly what is wrong with a path and which reply that earns, and
gives the `Address` model, the length limits and the internal form's
`split` and quoting everyone else builds on.

Strategy for parsing: almost every path a server sees is a plain ASCII
`atom@host.name`. One anchored regular expression accepts that shape and we
return at once; anything else (quotes, literals, UTF-8, source routes,
errors) falls to a careful parser whose only job is to be right and to say
exactly what is wrong.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from kittiwake.address.domain import _alabel, _canonical_literal_or_none, normalize_domain
from kittiwake.address.errors import (
    MailboxSyntaxError,
    NormalizationError,
    PathSyntaxError,
    PathTooLong,
    SMTPUTF8Required,
)

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
# rule validation lets 64 through.)
MAX_LABEL = 63
# RFC 5321 §4.5.3.1.3: 256 octets for a path including `<` and `>`. RELAXED
# to 512 octets of path content (brackets excluded) so that the largest
# local part and domain we accept (255 + 1 + 255) fit, with a little room
# for quoting. It is checked first, before any parsing, which bounds the
# work one command can cause.
MAX_PATH = 512
# RFC 3696 erratum 1690 (and maddy): 320 octets for an address in a
# routing rule (docs/address.md, "Routing rules").
MAX_RULE_ADDRESS = 320
#: Parsed paths and split addresses kept per text: the same senders and
#: recipients come back message after message, and each is parsed,
#: split and normalised several times on the way (results are immutable).
#: At most this many each, so at most a few megabytes whatever is sent.
_KEPT = 1024

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
# C0 controls and DEL are a syntax error anywhere in a path, quoted or not
# (docs/address.md). Lone surrogates come from undecodable bytes
# (`surrogateescape`): the path was not UTF-8.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_QUOTED_PAIR = re.compile(r"\\(.)")


def _octets(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def needs_smtputf8(text: str) -> bool:
    """Whether `text` may only travel in an SMTPUTF8 transaction.

    [quirk] U+0080 itself does not count, as in maddy (it compares with
    `> 0x80`; docs/address.md); everything above it does.
    """
    return not text.isascii() and max(text) > "\x80"


# --- Parsing paths -------------------------------------------------------


def parse_reverse_path(text: str, *, smtputf8: bool) -> Address:
    """Parse MAIL FROM's path content (what was inside `<` and `>`).

    `""` is the null path. A bare `postmaster` is refused: RFC 5321 allows
    it only as a recipient (RFC 5321 §4.5.1).
    """
    if not text:
        return NULL_ADDRESS
    return _parse_path(text, smtputf8=smtputf8, postmaster_ok=False)


def parse_forward_path(text: str, *, smtputf8: bool) -> Address:
    """Parse RCPT TO's path content. `postmaster` (any case) needs no domain."""
    if not text:
        raise PathSyntaxError("the null path <> is not a valid recipient")
    return _parse_path(text, smtputf8=smtputf8, postmaster_ok=True)


@functools.lru_cache(maxsize=_KEPT)
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
        if 0xD800 <= ord(ch) <= 0xDFFF:  # a lone surrogate: undecodable input
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
            raise MailboxSyntaxError("text after the closing quote of the local part")
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
        raise MailboxSyntaxError("backslash outside a quoted local part")
    if ch == '"':
        raise MailboxSyntaxError("quote inside an unquoted local part")
    raise MailboxSyntaxError(f"invalid character {ch!r} in the local part")


def _check_domain(domain: str, *, what: str = "domain") -> None:
    """Validate a domain or address literal; raise `MailboxSyntaxError`/`PathTooLong`.

    An unquoted second `@` lands here as a character of the domain, so
    `u@remote@local` is a syntax error and never the local mailbox
    `u@remote` (the old "percent hack" of source routing through a relay).
    """
    if not domain:
        raise MailboxSyntaxError(f"empty {what}")
    if domain.startswith("["):
        _check_literal(domain)
        return
    name = domain[:-1] if domain.endswith(".") else domain
    if not name:
        raise MailboxSyntaxError(f"{what} is only a dot")
    total = len(name)
    ascii_name = name.isascii()
    for label in name.split("."):
        if not label:
            raise MailboxSyntaxError(f"empty label in {what} (leading dot or '..')")
        bad = _BAD_LABEL_CHAR.search(label)
        if bad is not None:
            raise MailboxSyntaxError(f"invalid character {bad.group()!r} in {what}")
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
        raise MailboxSyntaxError("unterminated address literal")
    if _canonical_literal_or_none(domain) is None:
        tag, colon, _ = domain[1:-1].partition(":")
        if colon and tag.lower() != "ipv6":
            raise MailboxSyntaxError(f"unsupported address literal tag {tag!r}")
        raise MailboxSyntaxError(f"invalid address literal {domain!r}")


# --- Splitting and quoting -----------------------------------------------


@functools.lru_cache(maxsize=_KEPT)
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
    (docs/storage-maildir.md). A local part that starts with the separator has no
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
