"""Lexer tests: docs/config-language.md, "Words, quotes and comments", rule by
rule, plus a differential check.

The differential test compares `tokenize` (a regex scanner tuned for speed)
with `reference_tokenize` below, a plain character loop written straight
from the rules in the docs, on random text made of the characters that
matter.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.config.lexer import WHITESPACE, Token, tokenize
from kittiwake.errors import ConfigError

# Go's unicode.IsSpace, written out independently of the implementation.
GO_SPACE = {
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
    *range(0x2000, 0x200B),
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
}  # fmt: skip


def texts(source: str) -> list[str]:
    return [t.text for t in tokenize(source)]


def positions(source: str) -> list[tuple[str, int, int]]:
    return [(t.text, t.line, t.end_line) for t in tokenize(source)]


# ------------------------------------------------------------ white space


def test_whitespace_constant_is_gos_set() -> None:
    assert {ord(c) for c in WHITESPACE} == GO_SPACE


def test_exactly_gos_whitespace_separates_tokens() -> None:
    candidates = [*range(0, 0x3100), 0xFEFF, 0xFFFD, 0x1F600, 0x10FFFF, 0x180E, 0xE000]
    for cp in candidates:
        ch = chr(cp)
        if ch in '#"' or 0xD800 <= cp < 0xE000:
            continue
        got = texts(f"a{ch}b")
        expected = ["a", "b"] if cp in GO_SPACE else [f"a{ch}b"]
        assert got == expected, hex(cp)


def test_python_isspace_extras_are_ordinary() -> None:
    for ch in "\x1c\x1d\x1e\x1f":
        assert ch.isspace()  # Python disagrees with Go here
        assert texts(f"x{ch}y z") == [f"x{ch}y", "z"]


def test_only_lf_counts_lines() -> None:
    assert positions("a\u2028b\x85c\vd\n e") == [
        ("a", 1, 1),
        ("b", 1, 1),
        ("c", 1, 1),
        ("d", 1, 1),
        ("e", 2, 2),
    ]


def test_crlf_and_lone_cr_outside_quotes_are_white_space() -> None:
    assert positions("a\r\nb\rc\r\n\r\nd") == [("a", 1, 1), ("b", 2, 2), ("c", 2, 2), ("d", 4, 4)]


def test_cr_inside_quotes_is_kept() -> None:
    assert positions('a "x\r\ny"\r\nb') == [("a", 1, 1), ("x\r\ny", 1, 2), ("b", 3, 3)]


def test_bom_is_skipped_only_at_the_start() -> None:
    assert texts("\ufeffa") == ["a"]
    assert texts("\ufeff\ufeffa") == ["\ufeffa"]
    assert texts("a \ufeffb") == ["a", "\ufeffb"]
    assert positions('\ufeff"q"') == [("q", 1, 1)]


# --------------------------------------------------------------- comments


def test_comment_mid_word() -> None:
    assert texts("pass#word rest\nnext") == ["pass", "next"]


def test_comment_runs_to_end_of_physical_line_only() -> None:
    assert positions("a # b\u2028c \\\nd") == [("a", 1, 1), ("d", 2, 2)]


def test_hash_inside_quotes_is_literal() -> None:
    assert texts('"a # b" c') == ["a # b", "c"]


def test_hash_right_after_closing_quote_is_a_comment() -> None:
    assert texts('"a"#b c\nd') == ["a", "d"]


def test_hash_inside_a_word_after_a_quote_char() -> None:
    assert texts('ab"c#d" e\nf') == ['ab"c', "f"]


# ----------------------------------------------------------------- quotes


def test_quoted_token_keeps_spaces_newlines_braces() -> None:
    assert positions('a "x y\n{ } #\nz" b\nc') == [
        ("a", 1, 1),
        ("x y\n{ } #\nz", 1, 3),
        ("b", 3, 3),
        ("c", 4, 4),
    ]


@pytest.mark.parametrize(
    ("source", "value"),
    [
        (r'"a\"b"', 'a"b'),
        (r'"a\\b"', r"a\\b"),
        (r'"a\nb"', r"a\nb"),
        (r'"a\\"', "a\\\\"),
        (r'"\\\""', '\\\\"'),
        (r'"\q\""', '\\q"'),
        ('"\\\n"', "\\\n"),
        (r'"\"\""', '""'),
    ],
)
def test_only_escaped_quote_is_an_escape(source: str, value: str) -> None:
    assert texts(source) == [value]


def test_quote_mid_word_is_literal() -> None:
    assert texts('ab"cd" x"y z"') == ['ab"cd"', 'x"y', 'z"']


def test_token_ends_at_closing_quote() -> None:
    assert texts('"abc"def "x""y" ""z') == ["abc", "def", "x", "y", "", "z"]


def test_empty_quotes() -> None:
    assert texts('"" a ""') == ["", "a", ""]
    assert texts('""') == [""]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ('"', 1),
        ('a\n  "abc', 2),
        ('a "x\ny" b\n\n"open\nmore\n', 4),
        ('"ends in escaped quote\\"', 1),
        ('"ends in backslash\\', 1),
        ('"ok" "', 1),
    ],
)
def test_unterminated_quote_reports_opening_line(source: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        tokenize(source, "f.conf")
    assert (info.value.file, info.value.line) == ("f.conf", line)
    assert info.value.message == "unterminated quoted string"


def test_quote_mid_word_never_opens_a_string() -> None:
    assert texts('a"') == ['a"']
    assert texts('a" b "c"') == ['a"', "b", "c"]


# ----------------------------------------------------------------- braces


def test_braces_are_plain_text_to_the_lexer() -> None:
    expected = ["{", "}", "{}", "a{", "}b", "{env:X}", "{", "}"]
    assert texts('{ } {} a{ }b {env:X} "{" "}"') == expected


def test_token_carries_file() -> None:
    (tok,) = tokenize("x", "some.conf")
    assert tok == Token("x", "some.conf", 1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tok.text = "y"  # type: ignore[misc]


def test_long_hostile_inputs_are_linear() -> None:
    tokenize('"' + "\\\\" * 200_000 + '"')
    with pytest.raises(ConfigError):
        tokenize('"' + '\\"' * 200_000)
    assert len(tokenize("a " * 100_000)) == 100_000


# ------------------------------------------------------- differential test


def reference_tokenize(text: str) -> list[tuple[str, int, int]]:
    """The documented rules as a character loop: slow, obvious, independent."""
    out: list[tuple[str, int, int]] = []
    i = 1 if text.startswith("\ufeff") else 0
    line = 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ord(ch) in GO_SPACE:
            line += ch == "\n"
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch == '"':
            start = line
            value: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise ConfigError("unterminated quoted string", "", start)
                c = text[i]
                if c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    value.append('"' if nxt == '"' else "\\" + nxt)
                    line += nxt == "\n"
                    i += 2
                elif c == "\\":
                    raise ConfigError("unterminated quoted string", "", start)
                elif c == '"':
                    i += 1
                    break
                else:
                    value.append(c)
                    line += c == "\n"
                    i += 1
            out.append(("".join(value), start, line))
        else:
            word: list[str] = []
            while i < n and ord(text[i]) not in GO_SPACE and text[i] != "#":
                word.append(text[i])
                i += 1
            out.append(("".join(word), line, line))
    return out


INTERESTING = st.lists(
    st.sampled_from([*'ab"\\#{}\n\r \t\x0b\x1c\u2028\xa0\ufeff$(=)é', '\\"', '""', "\r\n"]),
    max_size=60,
).map("".join)


@settings(max_examples=1500, deadline=None, database=None)
@given(INTERESTING)
def test_matches_reference_lexer(text: str) -> None:
    try:
        expected = reference_tokenize(text)
    except ConfigError as exc:
        with pytest.raises(ConfigError) as info:
            tokenize(text)
        assert info.value.line == exc.line
        return
    assert positions(text) == expected
