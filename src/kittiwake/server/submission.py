"""Submission header preprocessing (spec/smtp-endpoint.md §13).

A message from an authenticated user is a message the user's client wrote,
so before it leaves we make sure its header is one other servers will take:
a `Message-Id` and a `Date` are added when missing, and the address fields
and the date that are there must parse. The rules are maddy's, which are Go's
`net/mail` rules, so the same clients get the same answers from both
servers.

Strategy. Everything here is a pure function of the header (and the clock
and a random UUID for the fields we add): no I/O, nothing logged; a failure
is an `SMTPError` the session turns into the reply. All checks run before
anything is added, so a refused header is left exactly as it was; a passing
header gets at most two new fields on top and every original byte kept.

The address grammar is RFC 5322 as Go's `net/mail` reads it: no obsolete
routes, an addr-spec tried before a display name, empty list members
skipped, a group counting as its members. (`email.utils` accepts almost
anything and cannot be used to refuse.) The parser walks the string once
with an index; the only backtracking is Go's: a failed addr-spec is re-read
as a display name. The date grammar is the union of maddy's layouts: one
regular expression plus the range checks of Go's `time.Parse`.

Field values are read as maddy's header library hands them to `net/mail`
(`field_value`): folded lines trimmed and joined with one space. A tab left
by folding would otherwise make a valid `Date` invalid.
"""

from __future__ import annotations

import base64
import binascii
import encodings
import encodings.aliases
import functools
import ipaddress
import pkgutil
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from kittiwake.errors import SMTPError
from kittiwake.header import Header

__all__ = [
    "AddressSyntaxError",
    "DateSyntaxError",
    "MailDate",
    "Mailbox",
    "field_value",
    "format_date",
    "parse_address",
    "parse_address_list",
    "parse_date",
    "prepare_submission_header",
]


class AddressSyntaxError(ValueError):
    """A header address (list) that Go's `net/mail` would refuse; the text says why."""


class DateSyntaxError(ValueError):
    """A `Date` value none of maddy's date layouts accepts."""


# --- Reading field values ------------------------------------------------------


def field_value(header: Header, name: str) -> str:
    """The first `name` field's value, unfolded; `""` when absent or empty.

    Each line of the field is trimmed of spaces and tabs (a CR before the
    line end is dropped) and the non-empty lines are joined with one space,
    as go-message's `Header.Get` does. Bytes that are not UTF-8 become lone
    surrogates, which both grammars below refuse as Go refuses invalid UTF-8.
    """
    key = name.lower()
    for f in header:
        if f.name.lower() == key:
            _, _, raw = f.raw.partition(b":")
            text = raw.decode("utf-8", "surrogateescape")
            lines = (line.removesuffix("\r").strip(" \t") for line in text.split("\n"))
            return " ".join(line for line in lines if line)
    return ""


# --- Addresses (Go net/mail) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One address: the display name (encoded-words decoded) and `local@domain`.

    The local part is unquoted (`"john doe"@x` gives `john doe@x`), the
    kittiwake internal form; a domain literal keeps its brackets.
    """

    name: str
    address: str


def parse_address_list(text: str) -> list[Mailbox]:
    """Every address of an RFC 5322 address-list, groups flattened.

    Empty members (`a@b,,c@d`, a leading or trailing comma) are skipped
    (RFC 5322 §4.4 obs-addr-list); an empty group contributes nothing, so the
    list may be empty. Raises `AddressSyntaxError`.
    """
    return _AddressParser(text).address_list()


def parse_address(text: str) -> Mailbox:
    """Exactly one address (a group holding exactly one also counts, as in Go)."""
    return _AddressParser(text).single_address()


def _is_surrogate(ch: str) -> bool:
    # Lone surrogates only come from undecodable bytes (`surrogateescape`).
    return "\ud800" <= ch <= "\udfff"


def _is_vchar(ch: str) -> bool:
    """RFC 5322 VCHAR, widened to every non-ASCII character by RFC 6532."""
    return "!" <= ch <= "~" or (ch >= "\x80" and not _is_surrogate(ch))


def _is_qtext(ch: str) -> bool:
    return ch not in '\\"' and _is_vchar(ch)


def _is_dtext(ch: str) -> bool:
    return ch not in "[]\\" and _is_vchar(ch)


# Runs of atext (RFC 5322 §3.2.3, plus non-ASCII), with or without dots.
_NON_ASCII = "\x80-\ud7ff\ue000-\U0010ffff"
_ATEXT = re.compile(rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_NON_ASCII}]+")
_DOT_ATEXT = re.compile(rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-.{_NON_ASCII}]+")


class _CharsetError(AddressSyntaxError):
    """An encoded-word in a charset we cannot decode."""


# RFC 2047 "Q": printable ASCII (and CR, LF, tab) with `=XX` escapes, `_` a space.
_Q_TEXT = re.compile(r"(?:[\t\n\r -<>-~]|=[0-9A-Fa-f]{2})*")
_Q_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def _q_decode(text: str) -> bytes | None:
    """The bytes of "Q" text; None when malformed (the word is then plain text)."""
    if _Q_TEXT.fullmatch(text) is None:
        return None
    raw = text.encode("ascii").replace(b"_", b" ")
    return _Q_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _decode_word(word: str) -> tuple[str, bool]:
    """(text, was an encoded-word) for one atom, as Go's `mime.WordDecoder` reads it.

    Anything not shaped `=?charset?B|Q?text?=` with exactly four `?`, or
    whose text does not decode, is an ordinary word. A well-formed word in a
    charset we cannot decode raises `_CharsetError`. Go itself knows only
    UTF-8, ISO-8859-1 and US-ASCII here and refuses every other charset;
    we decode any charset Python has a codec for [deviation], so a name in
    windows-1252 or ISO-2022-JP does not get a message refused.
    """
    if len(word) < 8 or not word.startswith("=?") or not word.endswith("?="):
        return word, False
    if word.count("?") != 4:
        return word, False
    charset, _, rest = word[2:-2].partition("?")
    encoding, _, text = rest.partition("?")
    if not charset or len(encoding) != 1:
        return word, False
    content: bytes | None
    if encoding in "bB":
        try:
            content = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            content = None
    elif encoding in "qQ":
        content = _q_decode(text)
    else:
        content = None
    if content is None:
        return word, False
    key = encodings.normalize_encoding(charset.lower())
    if key in _known_charsets():
        try:
            # Decoded under the canonical name: Python caches every codec
            # name it is asked for, and the client chooses this one.
            return content.decode(key, "replace"), True
        except Exception:  # a binary codec (base64_codec), or one without "replace"
            pass
    raise _CharsetError(f"charset not supported: {charset!r}")


@functools.cache
def _known_charsets() -> frozenset[str]:
    """Codec names and aliases Python ships, normalised (`utf_8`, `latin_1`, ...).

    A fixed set, so no client-chosen name ever reaches the codec registry,
    whose lookup imports modules and remembers misses without bound.
    """
    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    names.update(m.name for m in pkgutil.iter_modules(encodings.__path__))
    return frozenset(names)


class _AddressParser:
    """One pass over a header value; `i` is the read position.

    Methods follow Go's `addrParser`: a method that fails leaves `i` where
    the caller can rely on it (Go restores its position after a failed
    addr-spec, and a failed atom or quoted-string consumes nothing).
    """

    __slots__ = ("i", "s")

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    # -- primitives ---------------------------------------------------------

    def _empty(self) -> bool:
        return self.i >= len(self.s)

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _consume(self, ch: str) -> bool:
        if self.i < len(self.s) and self.s[self.i] == ch:
            self.i += 1
            return True
        return False

    def _skip_space(self) -> None:
        s, i = self.s, self.i
        while i < len(s) and s[i] in " \t":
            i += 1
        self.i = i

    def _cfws(self) -> None:
        """Skip white space and comments; an unclosed comment is an error."""
        self._skip_space()
        while self._consume("("):
            if self._comment() is None:
                raise AddressSyntaxError("misformatted parenthetical comment")
            self._skip_space()

    def _comment(self) -> str | None:
        """The text of a comment whose `(` was consumed; None if never closed."""
        s, i, depth = self.s, self.i, 1
        out: list[str] = []
        while i < len(s):
            ch = s[i]
            if ch == "\\" and i + 1 < len(s):
                i += 1
                ch = s[i]
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    self.i = i + 1
                    return "".join(out)
            out.append(ch)
            i += 1
        self.i = i
        return None

    def _atom(self, *, dot: bool, permissive: bool) -> str:
        """An atom (`dot`: dot-atom). Dots are placed freely only if `permissive`."""
        m = (_DOT_ATEXT if dot else _ATEXT).match(self.s, self.i)
        end = m.end() if m else self.i
        if end < len(self.s) and _is_surrogate(self.s[end]):  # Go stops on bad UTF-8
            raise AddressSyntaxError("invalid UTF-8 in address")
        if m is None:
            raise AddressSyntaxError("expected an atom")
        atom = m.group()
        self.i = end
        if not permissive:
            if atom.startswith(".") or atom.endswith("."):
                raise AddressSyntaxError("leading or trailing dot in atom")
            if ".." in atom:
                raise AddressSyntaxError("double dot in atom")
        return atom

    def _quoted_string(self) -> str:
        """The content of the quoted-string at `i` (which is `"`), unescaped."""
        s, i = self.s, self.i + 1
        out: list[str] = []
        escaped = False
        while True:
            if i >= len(s):
                raise AddressSyntaxError("unclosed quoted-string")
            ch = s[i]
            if _is_surrogate(ch):
                raise AddressSyntaxError("invalid UTF-8 in quoted-string")
            if escaped:
                if not (_is_vchar(ch) or ch in " \t"):
                    raise AddressSyntaxError(f"bad character {ch!r} in quoted-string")
                out.append(ch)
                escaped = False
            elif _is_qtext(ch) or ch in " \t":
                out.append(ch)
            elif ch == '"':
                break
            elif ch == "\\":
                escaped = True
            else:
                raise AddressSyntaxError(f"bad character {ch!r} in quoted-string")
            i += 1
        self.i = i + 1
        return "".join(out)

    def _domain_literal(self) -> str:
        """`[dtext]` holding an IPv4 address or `IPv6:` and an IP address."""
        s = self.s
        i = self.i + 1  # past '['
        start = i
        while True:
            if i >= len(s):
                raise AddressSyntaxError("unclosed domain-literal")
            ch = s[i]
            if ch == "]":
                break
            if not _is_dtext(ch):
                raise AddressSyntaxError(f"bad character {ch!r} in domain-literal")
            i += 1
        dtext = s[start:i]
        self.i = i + 1
        if not _literal_ip_ok(dtext):
            raise AddressSyntaxError(f"invalid IP address in domain-literal: {dtext!r}")
        return f"[{dtext}]"

    # -- grammar ------------------------------------------------------------

    def _addr_spec(self) -> str:
        """`local@domain`, or AddressSyntaxError with the position restored."""
        start = self.i
        try:
            self._skip_space()
            if self._empty():
                raise AddressSyntaxError("no addr-spec")
            if self._peek() == '"':
                local = self._quoted_string()
                if not local:
                    raise AddressSyntaxError("empty quoted string in addr-spec")
            else:
                local = self._atom(dot=True, permissive=False)
            if not self._consume("@"):
                raise AddressSyntaxError("missing @ in addr-spec")
            self._skip_space()
            if self._empty():
                raise AddressSyntaxError("no domain in addr-spec")
            if self._peek() == "[":
                domain = self._domain_literal()
            else:
                domain = self._atom(dot=True, permissive=False)
        except AddressSyntaxError:
            self.i = start
            raise
        return f"{local}@{domain}"

    def _phrase(self) -> str:
        """A display name: words (atoms, quoted strings, encoded-words).

        Like Go, a word that fails to parse ends the phrase; that is an
        error only when no word came before it.
        """
        words: list[str] = []
        prev_encoded = False
        failure: AddressSyntaxError | None = None
        while True:
            if words:
                self._cfws()
            self._skip_space()
            if self._empty():
                break
            try:
                if self._peek() == '"':
                    word, encoded = self._quoted_string(), False
                else:
                    word, encoded = _decode_word(self._atom(dot=True, permissive=True))
            except AddressSyntaxError as exc:
                failure = exc
                break
            if prev_encoded and encoded:
                words[-1] += word  # RFC 2047 §6.2: no space between encoded-words
            else:
                words.append(word)
            prev_encoded = encoded
        if failure is not None and not words:
            raise AddressSyntaxError(f"missing word in phrase: {failure}")
        return " ".join(words)

    def _display_name_comment(self) -> str:
        """`a@b (Name)`: the comment after a bare addr-spec is its display name."""
        self._consume("(")
        comment = self._comment()
        if comment is None:
            raise AddressSyntaxError("misformatted parenthetical comment")
        words = [w for w in re.split(r"[ \t]+", comment) if w]
        return " ".join(_decode_word(w)[0] for w in words)

    def _address(self, *, handle_group: bool) -> list[Mailbox]:
        """mailbox / group; an addr-spec is tried first, then name-addr."""
        self._skip_space()
        if self._empty():
            raise AddressSyntaxError("no address")
        try:
            spec = self._addr_spec()
        except AddressSyntaxError:
            pass
        else:
            self._skip_space()
            name = self._display_name_comment() if self._peek() == "(" else ""
            return [Mailbox(name, spec)]
        name = "" if self._peek() == "<" else self._phrase()
        self._skip_space()
        if handle_group and self._consume(":"):
            return self._group_list()
        if not self._consume("<"):
            if _DOT_ATEXT.fullmatch(name) or not name:
                raise AddressSyntaxError("missing '@' or angle-addr")
            raise AddressSyntaxError("no angle-addr")
        spec = self._addr_spec()
        if not self._consume(">"):
            raise AddressSyntaxError("unclosed angle-addr")
        return [Mailbox(name, spec)]

    def _group_list(self) -> list[Mailbox]:
        """The members of a group whose `name:` was read, up to its `;`.

        Groups do not nest, and empty members are not skipped here (Go).
        """
        group: list[Mailbox] = []
        self._skip_space()
        if self._consume(";"):
            self._cfws()
            return group
        while True:
            self._skip_space()
            group.extend(self._address(handle_group=False))
            self._cfws()
            if self._consume(";"):
                self._cfws()
                return group
            if not self._consume(","):
                raise AddressSyntaxError("expected comma")

    def address_list(self) -> list[Mailbox]:
        found: list[Mailbox] = []
        while True:
            self._skip_space()
            if self._consume(","):
                continue  # empty member
            found.extend(self._address(handle_group=True))
            self._cfws()
            if self._empty():
                return found
            if self._peek() != ",":
                raise AddressSyntaxError("expected comma")
            while self._consume(","):
                self._skip_space()
            if self._empty():
                return found

    def single_address(self) -> Mailbox:
        found = self._address(handle_group=True)
        self._cfws()
        if not self._empty():
            raise AddressSyntaxError(f"expected single address, got {self.s[self.i :]!r}")
        if not found:
            raise AddressSyntaxError("empty group")
        if len(found) > 1:
            raise AddressSyntaxError("group with multiple addresses")
        return found[0]


def _literal_ip_ok(dtext: str) -> bool:
    """Go's test: `IPv6:` + any IP address, or an IPv4 (or IPv4-mapped) address.

    Zone indexes (`%eth0`) are refused, as Go's `net.ParseIP` refuses them.
    """
    tagged = dtext.startswith("IPv6:")
    text = dtext[5:] if tagged else dtext
    if "%" in text:
        return False
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if tagged or isinstance(ip, ipaddress.IPv4Address):
        return True
    return ip.ipv4_mapped is not None


# --- Dates (maddy's layouts over Go's time.Parse) --------------------------------


@dataclass(frozen=True, slots=True)
class MailDate:
    """The fields of a parsed `Date`; `zone` as written (`+0100`, `EST`, `GMT+5`).

    Not a `datetime`: Go accepts years 0000 and 2-digit years become
    1969-2068, and an alphabetic zone's offset is not known here anyway.
    """

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    zone: str


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY_KEYS = frozenset(d.lower() for d in _DAYS)
_MONTH_KEYS = {m.lower(): n for n, m in enumerate(_MONTHS, start=1)}

# One trailing comment: the first run of spaces/tabs before a `(`, to the end,
# if the value ends with `)`.
_TRAILING_COMMENT = re.compile(r"[ \t]+\(.*\)\Z")
# `[Mon, ]D Jan YYYY HH:MM[:SS[.frac]] ZONE`. A layout space matches one or
# more spaces (never a tab); without a weekday one space may precede the
# day (Go's `_2`). A 2-digit year is two characters for Go's `atoi`, which
# takes a sign (`-5`); a 4-digit one must start with a digit.
_DATE = re.compile(
    r"(?:(?P<dow>[A-Za-z]{3}), +| ?)"
    r"(?P<day>[0-9]{1,2}) +(?P<mon>[A-Za-z]{3}) +"
    r"(?:(?P<year4>[0-9]{4})|(?P<year2>[0-9]{2}|[+-][0-9])) +"
    r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:[.,][0-9]+)?)? +"
    r"(?P<zone>\S+)\Z"
)


def parse_date(text: str) -> MailDate:
    """Check and split a `Date` value the way maddy does; `DateSyntaxError` if bad.

    One trailing ` (comment)` is removed first. Fractional seconds are
    accepted and dropped (Go's `time.Parse` does so for any layout with
    seconds); the weekday is checked for spelling only; the day must exist in
    its month. Names of days and months are matched in any case.
    """
    value = _TRAILING_COMMENT.sub("", text, count=1)
    m = _DATE.match(value)
    if m is None:
        raise DateSyntaxError(f"date {text!r} could not be parsed")
    dow = m.group("dow")
    if dow is not None and dow.lower() not in _DAY_KEYS:
        raise DateSyntaxError(f"unknown day of week {dow!r}")
    month = _MONTH_KEYS.get(m.group("mon").lower())
    if month is None:
        raise DateSyntaxError(f"unknown month {m.group('mon')!r}")
    year4 = m.group("year4")
    if year4 is not None:
        year = int(year4)
    else:
        short = int(m.group("year2"))
        year = short + (1900 if short >= 69 else 2000)
    day, hour, minute = int(m.group("day")), int(m.group("hour")), int(m.group("minute"))
    second = int(m.group("second") or 0)
    if hour >= 24 or minute >= 60 or second >= 60:
        raise DateSyntaxError(f"time of day out of range in {text!r}")
    if not 1 <= day <= _days_in(month, year):
        raise DateSyntaxError(f"day out of range in {text!r}")
    zone = m.group("zone")
    if not _zone_ok(zone):
        raise DateSyntaxError(f"unrecognised time zone {zone!r}")
    return MailDate(year, month, day, hour, minute, second, zone)


def _days_in(month: int, year: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _zone_ok(zone: str) -> bool:
    """Whether Go's `time.Parse` takes `zone` for `-0700` or for `MST`.

    `±hhmm` with hh ≤ 24 and mm ≤ 60 (Go's bounds); `UTC`; `GMT` with an
    optional signed hour offset up to 23; a bare signed offset up to 23 of at
    least two digits (`+05`); three upper-case letters, four or five ending
    in `T`, `WITA`, or the mixed-case `ChST` and `MeST`.
    """
    digits = zone[1:]
    if len(zone) == 5 and zone[0] in "+-" and digits.isascii() and digits.isdigit():
        return int(digits[:2]) <= 24 and int(digits[2:]) <= 60
    if zone.startswith(("UTC", "GMT", "+", "-")):
        m = _ZONE_OFFSET.fullmatch(zone)
        hours = m and (m.group(1) or m.group(2))
        return m is not None and (not hours or int(hours) <= 23)
    return _ZONE_NAME.fullmatch(zone) is not None


_ZONE_OFFSET = re.compile(r"UTC|GMT(?:[+-]([0-9]+))?|[+-]([0-9]{2,})")
_ZONE_NAME = re.compile(r"ChST|MeST|WITA|[A-Z]{3}T?|[A-Z]{4}T")


def format_date(moment: datetime) -> str:
    """`Thu, 1 Jan 1970 00:00:00 +0000`: UTC, English names, day not zero-padded.

    A naive `moment` is taken to be UTC already.
    """
    t = moment if moment.tzinfo is None else moment.astimezone(UTC)
    return (
        f"{_DAYS[t.weekday()]}, {t.day} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} +0000"
    )


# --- The submission steps --------------------------------------------------------


def _invalid(text: str, *, reason: str = "", **misc: object) -> SMTPError:
    misc["modifier"] = "submission_prepare"
    return SMTPError(554, (5, 6, 0), text, reason=reason, misc=misc)


def prepare_submission_header(
    header: Header, hostname_alabel: str, *, now: datetime | None = None
) -> None:
    """Apply spec/smtp-endpoint.md §13 steps 1-7 to `header`, in order.

    Raises the step's `SMTPError` (554) for the first failing step and then
    leaves `header` untouched. Otherwise adds, when missing,
    `Message-Id: <UUID@HOSTNAME>` (step 1) and `Date:` (step 7) on top, so
    the header reads `Date`, `Message-Id`, then the original fields byte for
    byte. Only the first field of each name counts; an empty one is absent
    (and is replaced by the one we add).
    `now` (default: the current time) dates a message that has no `Date`.
    """
    # 1. Message-Id. Made first, like maddy, but added only once all passed.
    message_id: str | None = None
    if not field_value(header, "Message-ID"):
        try:
            message_id = f"<{uuid.uuid4()}@{hostname_alabel}>"
        except (OSError, NotImplementedError) as exc:  # no randomness source
            raise SMTPError(
                554, (5, 0, 0), "Internal server error", reason=f"Message-ID generation: {exc}"
            ) from None

    # 2. From must be there.
    from_value = field_value(header, "From")
    if not from_value:
        raise _invalid("Message does not contains a From header field")

    # 3. Sender: exactly one address.
    sender = field_value(header, "Sender")
    if sender:
        try:
            parse_address(sender)
        except AddressSyntaxError as exc:
            raise _invalid("Invalid address in Sender", reason=str(exc), addr=sender) from None

    # 4. Recipient-ish fields: address lists.
    for name in ("To", "Cc", "Bcc", "Reply-To"):
        value = field_value(header, name)
        if value:
            try:
                parse_address_list(value)
            except AddressSyntaxError as exc:
                raise _invalid(f"Invalid address in {name}", reason=str(exc), addr=value) from None

    # 5. From: an address list.
    try:
        authors = parse_address_list(from_value)
    except AddressSyntaxError as exc:
        raise _invalid("Invalid address in From", reason=str(exc), addr=from_value) from None

    # 6. Several authors need a Sender (RFC 5322 §3.6.2).
    if len(authors) > 1 and not sender:
        raise _invalid("Missing Sender header field", **{"from": from_value})

    # 7. Date: must parse if present, else we date the message.
    date_value = field_value(header, "Date")
    new_date: str | None = None
    if date_value:
        try:
            parse_date(date_value)
        except DateSyntaxError as exc:
            raise _invalid("Malformed Date header", reason=str(exc), date=date_value) from None
    else:
        new_date = format_date(now if now is not None else datetime.now(UTC))

    # Prepending: Message-Id first, so Date ends up above it.
    if message_id is not None:
        _set_on_top(header, "Message-Id", message_id)
    if new_date is not None:
        _set_on_top(header, "Date", new_date)


def _set_on_top(header: Header, name: str, value: str) -> None:
    """Add `name: value` on top, replacing fields of that name (all empty ones).

    We add a field only when its first occurrence is missing or empty; an
    empty one (and any later one) is removed, as maddy's `Header.Set` does,
    so the message does not end up with two `Date` or `Message-ID` fields
    (RFC 5322 §3.6 allows one).
    """
    key = name.lower()
    header.fields[:] = [f for f in header.fields if f.name.lower() != key]
    header.add(name, value, folded=False)
