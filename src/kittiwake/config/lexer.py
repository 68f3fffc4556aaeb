"""Split configuration text into tokens, the way maddy's lexer does.

Strategy: one compiled regular expression recognises the four things that can
start at a given position outside quotes: a bare word, a complete quoted
string, a comment, or a lone `"` (a quote that never closes). `finditer`
skips everything the pattern cannot match, and white space is exactly the
set of characters that no alternative accepts, so the gaps it skips are the
separators. Every quantifier is possessive, so a failing match never
backtracks and lexing stays linear even on hostile input such as a megabyte
of `"\\\\`. Line numbers come from counting `\\n` between consecutive token
starts with `str.count`, which keeps the per-character work in C.

The rules follow maddy (docs/config-language.md, "Words, quotes and
comments"), quirks included:

* white space is Go's `unicode.IsSpace`, which is narrower than Python's
  `str.isspace` (U+001C..U+001F are ordinary characters here);
* `#` starts a comment anywhere outside quotes, even inside a word;
* `"` opens a quoted token only as the first character of a token, and
  inside quotes only `\\"` is an escape (any other backslash is kept);
* a closing quote ends the token even when text follows without a space;
* braces are not special to the lexer at all: the parser compares token
  text, and quoting is forgotten, so `"{"` behaves like `{`.

The single deviation: an unterminated quote is an error at the line where it
opened, where maddy silently swallows the rest of the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kittiwake.errors import ConfigError

__all__ = ["WHITESPACE", "Token", "tokenize"]

# Go's unicode.IsSpace: the Latin-1 spaces plus the White_Space property.
WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)

_WS_CLASS = r"\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

_LEX = re.compile(
    # A bare word: anything up to white space or a comment. A '"' inside the
    # word is literal; one at the start makes it a quoted token instead.
    rf'(?P<word>[^{_WS_CLASS}#"][^{_WS_CLASS}#]*+)'
    # A quoted token: runs of ordinary characters and backslash pairs.
    r'|"(?P<quoted>[^"\\]*+(?:\\.[^"\\]*+)*+)"'
    r"|(?P<comment>#[^\n]*+)"
    # Only reached when the quoted alternative failed: no closing quote.
    r'|(?P<open>")',
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Token:
    """One word of the configuration and where it came from.

    `end_line` differs from `line` only for a quoted token that spans lines;
    the parser needs it because the next token belongs to the same directive
    when it starts on the line where this one *ends*.
    """

    text: str
    file: str
    line: int
    end_line: int


def tokenize(text: str, file: str = "<string>") -> list[Token]:
    """Lex a whole file; raises ConfigError only for an unterminated quote."""
    start = 1 if text.startswith("\ufeff") else 0
    tokens: list[Token] = []
    append = tokens.append
    line = 1
    counted = start  # newlines before this offset are already in `line`
    count = text.count
    for m in _LEX.finditer(text, start):
        kind = m.lastgroup
        if kind == "comment":
            continue
        pos = m.start()
        line += count("\n", counted, pos)
        counted = pos
        if kind == "word":
            append(Token(m.group(), file, line, line))
        elif kind == "quoted":
            body = m.group("quoted")
            value = body.replace('\\"', '"') if "\\" in body else body
            append(Token(value, file, line, line + body.count("\n")))
        else:
            raise ConfigError("unterminated quoted string", file, line)
    return tokens
