"""`table.regexp` (rewrite a key with a regular expression) and `table.identity`.

Strategy: configurations are written for maddy, whose expressions are Go's
RE2 syntax, while we match with Python's `re`. Most expressions mean the
same in both, but not all: Go's `$` is the end of the text (Python's also
matches before a final newline), Go's `\\d`/`\\w`/`\\s`/`\\b` are ASCII-only, Go
lets `(?i)` appear anywhere, knows `\\z`, `\\Q...\\E`, `\\x{263a}`,
`[[:alpha:]]`, `(?<name>...)` and the ungreedy flag `U`, and treats a `{`
that does not start a repeat count as a literal. So the expression is
rewritten token by token into an equivalent Python one, and what RE2 would
refuse (backreferences, lookaround, possessive and nested repeats, Unicode
`\\p` classes we cannot express) is refused with a configuration error
rather than silently meaning something else.

Replacements use Go's template syntax (`$1`, `${1}`, `$name`, `${name}`,
`$$`), which differs from Python's `\\1`, so expansion is done here too.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from dataclasses import dataclass, replace

from kittiwake.config.directives import Directives
from kittiwake.module import Module, register

_MAX_RUNE = 0x10FFFF
_MAX_REPEAT = 1000  # RE2 refuses larger repeat counts

Ranges = list[tuple[int, int]]

_DIGIT: Ranges = [(0x30, 0x39)]
_SPACE: Ranges = [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]
_WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_PERL = {"d": _DIGIT, "s": _SPACE, "w": _WORD}
_POSIX: dict[str, Ranges] = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": [(0x30, 0x39)],
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": _WORD,
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
# RE2's \\b and \\B look at ASCII word characters only (Python's at Unicode
# ones), and are not affected by (?i).
_W = "[0-9A-Za-z_]"
_ASCII_BOUNDARY = f"(?-i:(?<={_W})(?!{_W})|(?<!{_W})(?={_W}))"
_ASCII_NON_BOUNDARY = f"(?-i:(?<={_W})(?={_W})|(?<!{_W})(?!{_W}))"
_REPEAT = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")


class RegexpSyntaxError(ValueError):
    """An expression that RE2 or Python would not accept."""


def _normalise(ranges: Ranges) -> Ranges:
    merged: Ranges = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _complement(ranges: Ranges) -> Ranges:
    result: Ranges = []
    nxt = 0
    for lo, hi in _normalise(ranges):
        if lo > nxt:
            result.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_RUNE:
        result.append((nxt, _MAX_RUNE))
    return result


def _lit(cp: int) -> str:
    """One code point as a Python pattern atom that is literal anywhere."""
    ch = chr(cp)
    if ch.isascii() and ch.isalnum():
        return ch
    if 0x21 <= cp < 0x7F:
        return "\\" + ch
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _class(ranges: Ranges, negate: bool = False) -> str:
    """A Python character class for `ranges`, every member escaped.

    Escaping everything keeps Python from reading `[[`, `--`, `&&`, `||` or
    `~~` as its (future) set operations.
    """
    ranges = _normalise(ranges)
    if not ranges:
        # Python has no empty class: "nothing" and "anything" spelled out.
        return "[\\x00-\\U0010ffff]" if negate else "[^\\x00-\\U0010ffff]"
    body = "".join(_lit(lo) if lo == hi else f"{_lit(lo)}-{_lit(hi)}" for lo, hi in ranges)
    return "[" + ("^" if negate else "") + body + "]"


@dataclass(frozen=True, slots=True)
class _Flags:
    i: bool = False
    m: bool = False
    s: bool = False
    U: bool = False  # Go's ungreedy mode: swaps the meaning of `x*` and `x*?`

    def scope(self) -> str:
        """A Python scoped-flags group opener stating every flag we manage."""
        on = "".join(f for f in "ims" if getattr(self, f))
        off = "".join(f for f in "ims" if not getattr(self, f))
        return f"(?{on}{'-' + off if off else ''}:"


@dataclass(slots=True)
class _Frame:
    outer: _Flags  # flags to restore at the closing parenthesis
    scopes: int = 0  # flag groups we opened inside this group for `(?flags)`


class _Translator:
    """RE2 (Go) pattern -> Python `re` pattern; see the module docstring."""

    def __init__(self, pattern: str, case_insensitive: bool) -> None:
        self.p = pattern
        self.i = 0
        self.out: list[str] = []
        self.flags = _Flags(i=case_insensitive)
        self.stack = [_Frame(self.flags)]
        # What the last emitted item was, to refuse repeats RE2 refuses:
        # "none" (start, after `(` or `|`), "atom", "quant" (a repeat that may
        # still take a lazy `?`), "lazy" (a repeat that took it).
        self.last = "none"

    def fail(self, message: str) -> RegexpSyntaxError:
        return RegexpSyntaxError(f"{message} (at offset {self.i} in {self.p!r})")

    def run(self) -> str:
        p = self.p
        while self.i < len(p):
            c = p[self.i]
            if c == "\\":
                self.escape()
            elif c == "[":
                self.i += 1
                self.atom(self.char_class())
            elif c == "(":
                self.open_group()
            elif c == ")":
                self.close_group()
            elif c == "|":
                self.i += 1
                frame = self.stack[-1]
                self.out.append(")" * frame.scopes + "|")
                if frame.scopes:
                    # `(?i)` lasts to the end of the group, across `|`.
                    self.out.append(self.flags.scope())
                    frame.scopes = 1
                self.last = "none"
            elif c in "*+?":
                self.i += 1
                self.repeat(c)
            elif c == "{":
                m = _REPEAT.match(p, self.i)
                if m is None:
                    self.i += 1
                    self.atom("\\{")  # not a repeat count: RE2 reads a literal
                    continue
                lo, hi = int(m.group(1)), m.group(3)
                if lo > _MAX_REPEAT or (hi and int(hi) > _MAX_REPEAT):
                    raise self.fail("invalid repeat count (at most 1000)")
                if hi and int(hi) < lo:
                    raise self.fail("invalid repeat count (max below min)")
                self.i = m.end()
                self.repeat(m.group(0))
            elif c == "$":
                self.i += 1
                # Without (?m) RE2's `$` is the very end; Python's `$` would
                # also match before a trailing newline.
                self.atom("$" if self.flags.m else "\\Z")
            elif c in "^.":
                self.i += 1
                self.atom(c)
            else:
                self.i += 1
                self.atom(c)
        if len(self.stack) > 1:
            raise self.fail("missing closing )")
        self.out.append(")" * self.stack[0].scopes)
        return "".join(self.out)

    # -- pieces -------------------------------------------------------------

    def atom(self, text: str) -> None:
        self.out.append(text)
        self.last = "atom"

    def repeat(self, op: str) -> None:
        if self.last in ("quant", "lazy"):
            if op == "?" and self.last == "quant":
                # The lazy marker of the previous repeat, not a new repeat:
                # flip the laziness emitted with it.
                self.out[-1] = "" if self.out[-1] else "?"
                self.last = "lazy"
                return
            raise self.fail(f"invalid nested repetition operator {op!r}")
        if self.last == "none":
            raise self.fail(f"missing argument to repetition operator {op!r}")
        # In ungreedy mode a plain repeat is lazy and `x*?` is greedy.
        self.out.append(op)
        self.out.append("?" if self.flags.U else "")
        self.last = "quant"

    def open_group(self) -> None:
        p, start = self.p, self.i
        self.i += 1
        outer = self.flags
        if not p.startswith("?", self.i):
            self.stack.append(_Frame(outer))
            self.out.append("(")
            self.last = "none"
            return
        self.i += 1
        for prefix in ("P<", "<"):
            if p.startswith(prefix, self.i) and not p.startswith(("<=", "<!"), self.i):
                end = p.find(">", self.i)
                if end < 0:
                    raise self.fail("missing > after capture group name")
                name = p[self.i + len(prefix) : end]
                if not name or not all(ch == "_" or (ch.isascii() and ch.isalnum()) for ch in name):
                    raise self.fail(f"invalid capture group name {name!r}")
                self.i = end + 1
                self.stack.append(_Frame(outer))
                self.out.append(f"(?P<{name}>")
                self.last = "none"
                return
        # Flags: (?flags) for the rest of the group, or (?flags:re).
        on: set[str] = set()
        off: set[str] = set()
        negated = False
        seen_after_sign = False
        while self.i < len(p) and p[self.i] in "imsU-":
            ch = p[self.i]
            if ch == "-":
                if negated:
                    raise self.fail("invalid flags: two '-'")
                negated, seen_after_sign = True, False
            else:
                (off if negated else on).add(ch)
                seen_after_sign = True
            self.i += 1
        if self.i >= len(p) or p[self.i] not in ":)":
            what = p[start : self.i + 1]
            raise self.fail(f"unsupported group syntax {what!r} (RE2 has no lookaround, etc.)")
        if negated and not seen_after_sign:
            raise self.fail("invalid flags: nothing after '-'")
        changes = {f: True for f in on} | {f: False for f in off}
        new = replace(self.flags, **changes)
        closer = p[self.i]
        self.i += 1
        if closer == ":":
            self.stack.append(_Frame(outer))
            self.flags = new
            self.out.append(new.scope())
        else:
            if not on and not off:
                raise self.fail("empty flag group (?)")
            self.flags = new
            self.out.append(new.scope())
            self.stack[-1].scopes += 1
        self.last = "none"

    def close_group(self) -> None:
        if len(self.stack) == 1:
            raise self.fail("unexpected )")
        self.i += 1
        frame = self.stack.pop()
        self.out.append(")" * frame.scopes + ")")
        self.flags = frame.outer
        self.last = "atom"

    def escape(self) -> None:
        p = self.p
        if self.i + 1 >= len(p):
            raise self.fail("trailing backslash")
        c = p[self.i + 1]
        if c == "Q":
            end = p.find("\\E", self.i + 2)
            text = p[self.i + 2 :] if end < 0 else p[self.i + 2 : end]
            self.i = len(p) if end < 0 else end + 2
            if text:
                self.out.append("".join(_lit(ord(ch)) for ch in text))
                self.last = "atom"
            return
        simple = {"z": "\\Z", "A": "\\A", "b": _ASCII_BOUNDARY, "B": _ASCII_NON_BOUNDARY}
        if c in simple:
            self.i += 2
            self.atom(simple[c])
            return
        if c.lower() in _PERL:
            self.i += 2
            self.atom(_class(_PERL[c.lower()], negate=c.isupper()))
            return
        if c in "pP":
            raise self.fail(f"Unicode classes \\{c} are not supported")
        if c == "C":
            raise self.fail("\\C (any byte) is not supported")
        self.i += 1
        self.atom(_lit(self.escaped_char()))

    def escaped_char(self) -> int:
        """The code point of an escape; `self.i` is just after the backslash."""
        p = self.p
        c = p[self.i]
        self.i += 1
        named = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
        if c in named:
            return named[c]
        if "0" <= c <= "7":
            digits = c
            # A lone \1..\7 would be a backreference, which RE2 refuses.
            if c != "0" and not (self.i < len(p) and "0" <= p[self.i] <= "7"):
                raise self.fail(f"backreferences (\\{c}) are not supported")
            while len(digits) < 3 and self.i < len(p) and "0" <= p[self.i] <= "7":
                digits += p[self.i]
                self.i += 1
            return int(digits, 8)
        if c in "89":
            raise self.fail(f"backreferences (\\{c}) are not supported")
        if c == "x":
            if p.startswith("{", self.i):
                end = p.find("}", self.i)
                digits = p[self.i + 1 : end] if end > 0 else ""
                if not digits or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    raise self.fail("invalid \\x{...} escape")
                value = int(digits, 16)
                if value > _MAX_RUNE:
                    raise self.fail("\\x{...} escape out of range")
                self.i = end + 1
                return value
            digits = p[self.i : self.i + 2]
            if len(digits) != 2 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail("invalid \\x escape: two hex digits expected")
            self.i += 2
            return int(digits, 16)
        if c.isascii() and not c.isalnum():
            return ord(c)
        raise self.fail(f"invalid escape sequence \\{c}")

    def char_class(self) -> str:
        """Translate `[...]`; `self.i` is just after the `[`."""
        p = self.p
        negate = p.startswith("^", self.i)
        if negate:
            self.i += 1
        ranges: Ranges = []
        first = True
        while True:
            if self.i >= len(p):
                raise self.fail("missing closing ]")
            c = p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if p.startswith("[:", self.i):
                end = p.find(":]", self.i + 2)
                if end >= 0:
                    name = p[self.i + 2 : end]
                    neg = name.startswith("^")
                    posix = _POSIX.get(name.lstrip("^"))
                    if posix is None:
                        raise self.fail(f"invalid character class [:{name}:]")
                    ranges.extend(_complement(posix) if neg else posix)
                    self.i = end + 2
                    continue
            if c == "\\" and self.i + 1 < len(p) and p[self.i + 1].lower() in _PERL:
                name = p[self.i + 1]
                cls = _PERL[name.lower()]
                ranges.extend(_complement(cls) if name.isupper() else cls)
                self.i += 2
                continue
            if c == "\\" and self.i + 1 < len(p) and p[self.i + 1] in "pP":
                raise self.fail(f"Unicode classes \\{p[self.i + 1]} are not supported")
            lo = self.class_char()
            if self.i + 1 < len(p) and p[self.i] == "-" and p[self.i + 1] != "]":
                self.i += 1
                hi = self.class_char()
                if hi < lo:
                    raise self.fail("invalid character class range")
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        return _class(ranges, negate)

    def class_char(self) -> int:
        c = self.p[self.i]
        if c == "\\":
            if self.i + 1 >= len(self.p):
                raise self.fail("trailing backslash")
            self.i += 1
            return self.escaped_char()
        self.i += 1
        return ord(c)


def translate(pattern: str, case_insensitive: bool = False) -> str:
    """Rewrite a Go RE2 expression as an equivalent Python one."""
    return _Translator(pattern, case_insensitive).run()


def compile_re2(pattern: str, case_insensitive: bool = False) -> re.Pattern[str]:
    """Compile an RE2 expression; RegexpSyntaxError if it cannot be used."""
    translated = translate(pattern, case_insensitive)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(translated, re.IGNORECASE if case_insensitive else 0)
    except (re.error, FutureWarning, DeprecationWarning) as exc:
        msg = exc.msg if isinstance(exc, re.error) else str(exc)
        raise RegexpSyntaxError(f"{msg} (in {pattern!r})") from None


# -- Go's template expansion ------------------------------------------------------


def _is_name_char(ch: str) -> bool:
    # Go: unicode.IsLetter || unicode.IsDigit || '_'
    cat = unicodedata.category(ch)
    return ch == "_" or cat.startswith("L") or cat == "Nd"


def expand(template: str, match: re.Match[str]) -> str:
    """Expand `$1`, `${1}`, `$name`, `${name}` and `$$` the way Go does.

    `$name` takes the longest run of letters, digits and `_`, so `$1x` is the
    group named `1x` (use `${1}x`). An unknown group or one that did not take
    part in the match expands to nothing. A `$` not followed by a valid
    reference is kept as it is.
    """
    out: list[str] = []
    rest = template
    while True:
        before, dollar, rest = rest.partition("$")
        out.append(before)
        if not dollar:
            break
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        braced = rest.startswith("{")
        body = rest[1:] if braced else rest
        n = 0
        while n < len(body) and _is_name_char(body[n]):
            n += 1
        if n == 0 or (braced and not body.startswith("}", n)):
            out.append("$")  # malformed: the `$` is plain text
            continue
        name = body[:n]
        rest = body[n + 1 :] if braced else body[n:]
        out.append(_group_text(match, name))
    return "".join(out)


def _group_text(match: re.Match[str], name: str) -> str:
    index: int | None = None
    # A number without a leading zero (and below Go's 1e8 cut-off) is an
    # index; anything else is a name.
    if name.isascii() and name.isdigit() and (name == "0" or name[0] != "0") and len(name) <= 8:
        index = int(name)
    else:
        index = match.re.groupindex.get(name)
    if index is None or index > (match.re.groups or 0):
        return ""
    return match.group(index) or ""


@register("table.regexp")
class RegexpTable(Module):
    """`regexp REGEX [REPLACEMENT...] { full_match; case_insensitive; expand_placeholders }`."""

    def configure(self, cfg: Directives) -> None:
        if not self.inline_args:
            raise cfg.node.error(
                f"{self.module_name}: expected a regular expression and optional replacements"
            )
        self.full_match = cfg.boolean("full_match", True)
        case_insensitive = cfg.boolean("case_insensitive", True)
        # maddy documents expand_placeholders but its code reads
        # expand_replaceholders; both spellings are accepted here.
        spellings = [n for n in ("expand_placeholders", "expand_replaceholders") if cfg.has(n)]
        if len(spellings) > 1:
            raise cfg.all(spellings[1])[0].error(
                "give only one of expand_placeholders and expand_replaceholders"
            )
        self.expand_placeholders = cfg.boolean(
            spellings[0] if spellings else "expand_placeholders", True
        )
        cfg.finish()
        pattern, *self.replacements = self.inline_args
        try:
            self.regexp = compile_re2(pattern, case_insensitive)
        except RegexpSyntaxError as exc:
            raise cfg.node.error(f"{self.module_name}: invalid regular expression: {exc}") from None

    def _match(self, key: str) -> re.Match[str] | None:
        # full_match wants the whole key to match; fullmatch also keeps a
        # top-level alternation (`a|b`) whole, which textual ^...$ would not.
        return self.regexp.fullmatch(key) if self.full_match else self.regexp.search(key)

    async def lookup_multi(self, key: str) -> list[str]:
        match = self._match(key)
        if match is None:
            return []
        if not self.replacements:
            return [key]  # documented behaviour: a match check
        if not self.expand_placeholders:
            return list(self.replacements)
        return [expand(r, match) for r in self.replacements]

    async def lookup(self, key: str) -> str | None:
        values = await self.lookup_multi(key)
        return values[0] if values else None


@register("table.identity")
class IdentityTable(Module):
    """`identity`: every key maps to itself (the default `auth_map`)."""

    async def lookup(self, key: str) -> str | None:
        return key
