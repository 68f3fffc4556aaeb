"""Header addresses as Go's `net/mail` reads them (RFC 5322 address-list).

Its own module because two callers need the same answer: submission
(`server/submission.py`) refuses a header whose address fields do not
parse, and `check.authorize_sender` reads the From and Sender addresses it
authorises. Both must agree with maddy, whose rules are Go's, so the same
clients get the same answers from both servers.

The address grammar is RFC 5322 as Go's `net/mail` reads it: no obsolete
routes, an addr-spec tried before a display name, empty list members
skipped, a group counting as its members. (`email.utils` accepts almost
anything and cannot be used to refuse.) The parser walks the string once
with an index; the only backtracking is Go's: a failed addr-spec is re-read
as a display name. Display names may hold RFC 2047 encoded-words, decoded
as Go's `mime.WordDecoder` does.

Field values are read as maddy's header library hands them to `net/mail`
(`field_value`): folded lines trimmed and joined with one space. A tab left
by folding would otherwise make a valid `Date` invalid, so the date grammar
(`kittiwake.message.maildate`) is fed the same way.

Pure functions: no I/O, nothing logged.
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
from dataclasses import dataclass

from kittiwake.message.header import Header

__all__ = [
    "AddressSyntaxError",
    "Mailbox",
    "field_value",
    "parse_address",
    "parse_address_list",
]


class AddressSyntaxError(ValueError):
    """A header address (list) that Go's `net/mail` would refuse; the text says why."""


# --- Reading field values ------------------------------------------------------


def field_value(header: Header, name: str) -> str:
    """The first `name` field's value, unfolded; `""` when absent or empty.

    Each line of the field is trimmed of spaces and tabs (a CR before the
    line end is dropped) and the non-empty lines are joined with one space,
    as go-message's `Header.Get` does. Bytes that are not UTF-8 become lone
    surrogates, which both grammars (addresses here, dates in
    `kittiwake.message.maildate`) refuse as Go refuses invalid UTF-8.
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
