"""`table.regexp` (rewrite a key with a regular expression) and `table.identity`.

Strategy: configurations are written for maddy, whose expressions are Go's
`regexp` syntax, which is RE2. We match with RE2 itself (the `google-re2`
binding), so an expression means what it means in maddy, and a match takes
time linear in the length of the key. That matters because lookups run on
the event loop: with a backtracking engine, `(x+x+)+y` and one long
recipient address would stall every session.

What is left here is where RE2's Python binding (the C++ library) differs
from Go, and Go's template syntax for replacements:

- C++ accepts `\\C` (one byte, which can split a character); Go refuses it,
  and so do we.
- C++ accepts any letter in a group name; Go only `A-Z`, `a-z`, `0-9`, `_`.
- Go matches each invalid UTF-8 byte of a key as U+FFFD. Ours arrive as
  lone surrogates (bytes that did not decode), which the binding cannot
  encode, so each is matched as U+FFFD and groups are cut from the key as
  it was.
- Replacements use Go's `$1`, `${1}`, `$name`, `${name}`, `$$`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import re2

from kittiwake.config.directives import Directives
from kittiwake.module import Module, register


class RegexpSyntaxError(ValueError):
    """An expression that RE2 (as Go has it) would not accept."""


class _RE2Match(Protocol):
    def span(self, group: int = 0) -> tuple[int, int]: ...


class _RE2Pattern(Protocol):
    """The part of google-re2's compiled pattern used here (it has no stubs)."""

    @property
    def groups(self) -> int: ...

    @property
    def groupindex(self) -> Mapping[str, int]: ...

    def search(self, text: str) -> _RE2Match | None: ...

    def fullmatch(self, text: str) -> _RE2Match | None: ...


@dataclass(frozen=True, slots=True)
class Match:
    """A successful match: the key and each group's span (-1, -1 if unused)."""

    key: str
    spans: tuple[tuple[int, int], ...]
    names: Mapping[str, int]

    def group(self, index: int) -> str | None:
        start, end = self.spans[index]
        return None if start < 0 else self.key[start:end]


# Undecodable bytes (surrogateescape) and any other lone surrogate.
_UNDECODABLE = dict.fromkeys(range(0xD800, 0xE000), 0xFFFD)

# RE2's message -> a hint for people used to Perl or Python expressions.
_HINTS = {
    "invalid perl operator: (?=": "RE2 has no lookahead",
    "invalid perl operator: (?!": "RE2 has no lookahead",
    "invalid perl operator: (?<=": "RE2 has no lookbehind",
    "invalid perl operator: (?<!": "RE2 has no lookbehind",
    "pattern too large": "its compiled form exceeds RE2's 8 MiB limit",
} | {f"invalid escape sequence: \\{d}": "RE2 has no backreferences" for d in "123456789"}


class Regexp:
    """An RE2 expression with Go's syntax, compiled once."""

    def __init__(self, pattern: str, case_insensitive: bool = False) -> None:
        options = re2.Options()
        options.log_errors = False  # the error is ours to report, not stderr's
        options.case_sensitive = not case_insensitive  # maddy adds `(?i)`: the same
        try:
            compiled = re2.compile(pattern, options)
        except re2.error as exc:
            raise RegexpSyntaxError(_message(exc)) from None
        except UnicodeEncodeError:
            raise RegexpSyntaxError("invalid UTF-8") from None
        self._re = cast(_RE2Pattern, compiled)
        if _has_any_byte(pattern):
            raise RegexpSyntaxError("invalid escape sequence: \\C (any byte)")
        for name in self._re.groupindex:
            if not (name.isascii() and name.replace("_", "a").isalnum()):
                raise RegexpSyntaxError(f"invalid named capture: {name!r} (A-Z a-z 0-9 _ only)")
        self.groups = self._re.groups
        self.groupindex = dict(self._re.groupindex)

    def search(self, key: str) -> Match | None:
        return self._wrap(key, self._re.search(_probe(key)))

    def fullmatch(self, key: str) -> Match | None:
        return self._wrap(key, self._re.fullmatch(_probe(key)))

    def _wrap(self, key: str, m: _RE2Match | None) -> Match | None:
        if m is None:
            return None
        spans = tuple(m.span(i) for i in range(self.groups + 1))
        return Match(key, spans, self.groupindex)


def compile_re2(pattern: str, case_insensitive: bool = False) -> Regexp:
    """Compile a Go (RE2) expression; RegexpSyntaxError if Go would refuse it."""
    return Regexp(pattern, case_insensitive)


def _message(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else ""
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    for start, hint in _HINTS.items():
        if text.startswith(start):
            return f"{text} ({hint})"
    return text


def _has_any_byte(pattern: str) -> bool:
    """Whether a pattern RE2 has accepted uses `\\C` outside `\\Q...\\E`.

    Backslashes pair up the same way inside and outside classes (and RE2
    refuses `\\C` and `\\Q` inside one), so classes need no special care.
    """
    i = pattern.find("\\")
    while i >= 0:
        follower = pattern[i + 1 : i + 2]
        if follower == "C":
            return True
        if follower == "Q":
            # Like Go, the quoted text ends at the first `\E`, if any.
            end = pattern.find("\\E", i + 2)
            if end < 0:
                return False
            i = end
        i = pattern.find("\\", i + 2)
    return False


def _probe(key: str) -> str:
    """The key as RE2 may see it: one U+FFFD per lone surrogate, as Go reads
    an invalid byte, so offsets stay those of the key."""
    return key if key.isascii() else key.translate(_UNDECODABLE)


# -- Go's template expansion ------------------------------------------------------


def _is_name_char(ch: str) -> bool:
    # Go: unicode.IsLetter || unicode.IsDigit || '_'
    cat = unicodedata.category(ch)
    return ch == "_" or cat.startswith("L") or cat == "Nd"


def expand(template: str, match: Match) -> str:
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


def _group_text(match: Match, name: str) -> str:
    index: int | None = None
    # A number without a leading zero (and below Go's 1e8 cut-off) is an
    # index; anything else is a name (the leftmost group of that name).
    if name.isascii() and name.isdigit() and (name == "0" or name[0] != "0") and len(name) <= 8:
        index = int(name)
    else:
        index = match.names.get(name)
    if index is None or index >= len(match.spans):
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

    def _match(self, key: str) -> Match | None:
        # full_match wants the whole key to match. maddy pastes `^` and `$`
        # around the text, which would let `a|b` accept "ab..."; an anchored
        # match keeps a top-level alternation whole.
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
