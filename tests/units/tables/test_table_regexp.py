"""table.regexp (RE2 expressions, Go templates) and table.identity."""

from __future__ import annotations

import re
import time

import pytest
from table_harness import Harness

from kittiwake.tables.regexp import Match, RegexpSyntaxError, compile_re2, expand


async def test_default_is_full_and_case_insensitive(kw: Harness) -> None:
    t = await kw.table(r'regexp "(.+)@example\.org" "$1"')
    assert await t.lookup("Joe@EXAMPLE.org") == "Joe"
    assert await t.lookup("joe@example.org.evil") is None  # full match
    assert await t.lookup("x") is None
    assert await t.lookup_multi("x") == []


async def test_partial_match_and_case_sensitive(kw: Harness) -> None:
    t = await kw.table(
        r'regexp "bounce-([a-z]+)" "$1" {' "\n full_match no\n case_insensitive no\n }"
    )
    assert await t.lookup("x-bounce-abc@example.org") == "abc"
    assert await t.lookup("BOUNCE-abc") is None


async def test_anchors_written_by_the_user_are_fine(kw: Harness) -> None:
    t = await kw.table(r'regexp "^a.*z$" "ok"')
    assert await t.lookup("abcz") == "ok"


async def test_full_match_covers_a_top_level_alternation(kw: Harness) -> None:
    # maddy pastes ^ and $ around the text ("^a|b$"), which would accept
    # "ab...": the whole key has to match here.
    t = await kw.table('regexp "a|b" "hit"')
    assert await t.lookup("a") == "hit"
    assert await t.lookup("b") == "hit"
    assert await t.lookup("ax") is None
    assert await t.lookup("xb") is None


async def test_no_replacement_returns_the_key(kw: Harness) -> None:
    t = await kw.table(r'regexp ".*-bounce\+.*@example\.com"')
    assert await t.lookup("list-bounce+x@example.com") == "list-bounce+x@example.com"
    assert await t.lookup_multi("list-bounce+x@example.com") == ["list-bounce+x@example.com"]
    assert await t.lookup("nope@example.com") is None


async def test_several_replacements_give_several_values(kw: Harness) -> None:
    t = await kw.table(r'regexp "(.+)@old\.org" "$1@new.org" "$1@other.org" "static"')
    assert await t.lookup("a@old.org") == "a@new.org"
    assert await t.lookup_multi("a@old.org") == ["a@new.org", "a@other.org", "static"]


@pytest.mark.parametrize("spelling", ["expand_placeholders", "expand_replaceholders"])
async def test_expansion_can_be_switched_off(kw: Harness, spelling: str) -> None:
    t = await kw.table(f'regexp "(.+)" "$1 and $$" {{\n {spelling} no\n }}')
    assert await t.lookup("x") == "$1 and $$"


def test_both_spellings_at_once_is_an_error(kw: Harness) -> None:
    text = (
        'kw_probe {\n table regexp "a" "b" {\n  expand_placeholders yes\n'
        "  expand_replaceholders yes\n }\n}\n"
    )
    assert kw.error(text) == (
        "t.conf:4: give only one of expand_placeholders and expand_replaceholders"
    )


def _match(pattern: str, key: str) -> Match:
    m = compile_re2(pattern, True).fullmatch(key)
    assert m is not None
    return m


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$1", "joe"),
        ("${1}", "joe"),
        ("$1x", ""),  # Go: the longest name, "1x", is no group here
        ("${1}x", "joex"),
        ("$user", "joe"),
        ("${user}.x", "joe.x"),
        ("$user.x", "joe.x"),  # '.' ends a name
        ("$user_x", ""),  # '_' does not
        ("$dom", "example.org"),
        ("$0", "joe+tag@example.org"),
        ("$01", ""),  # a leading zero makes it a name, not group 1
        ("$3", "tag"),
        ("$4", ""),  # did not take part in the match
        ("$9", ""),  # no such group
        ("$nope", ""),
        ("$$1", "$1"),
        ("a$$$1", "a$joe"),
        ("$", "$"),
        ("cost: $ 5", "cost: $ 5"),
        ("${", "${"),
        ("${user", "${user"),
        ("${}", "${}"),
        ("$é", ""),  # a letter: a (missing) name, not text
        ("no dollars", "no dollars"),
    ],
)
def test_go_template_expansion(template: str, expected: str) -> None:
    m = _match(r"(?P<user>[a-z]+)(\+(tag))?(x)?@(?P<dom>.+)", "joe+tag@example.org")
    assert expand(template, m) == expected


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("a$", "a\n", False),  # RE2 $ is the end of the text
        ("(?m)a$", "a", True),
        (r"a\z", "a", True),
        ("(?-i)abc", "ABC", False),
        ("(?-i)a(?i)b", "aB", True),
        ("(?-i)a(?i)b", "AB", False),
        ("(?-i:a)b", "aB", True),
        ("x(?-i)y|z", "Z", False),  # the flag lasts across | in its group
        ("x(?-i)y|z", "z", True),
        ("(a(?-i)b)c", "abC", True),  # ... but ends with its group
        ("(a(?-i)b)c", "aBc", False),
        (r"[[:digit:]]+", "123", True),
        (r"[[:^digit:]]+", "abc", True),
        (r"[[:alpha:]_-]+", "a_b-c", True),
        (r"\d", "\u0663", False),  # \d is ASCII in RE2
        (r"\w+", "é", False),
        (r"\s", "\u00a0", False),
        (r".*\bx\b.*", "éxé", True),  # \b looks at ASCII word characters
        (r".*\bx\b.*", "axa", False),
        (r"a\Bb", "ab", True),
        (r"[\d]", "7", True),
        (r"[^\D]", "7", True),
        (r"[^\D]", "x", False),
        (r"\Qa.b*\E", "a.b*", True),
        (r"\Qa.b*\E", "axb", False),
        (r"\x{263a}", "\u263a", True),
        (r"\x41", "a", True),
        (r"\101", "A", True),  # octal
        ("a{,2}", "a{,2}", True),  # not a repeat count in RE2
        ("a{2}", "aa", True),
        ("{", "{", True),
        ("(?<name>x)", "x", True),
        ("(?s).", "\n", True),
        (".", "\n", False),
        ("[]a]+", "]a", True),
        ("[a-]+", "a-", True),
        ("[&&~~|]+", "&~|", True),  # not Python's set operations
        # Unicode classes, refused before RE2
        (r"\p{Greek}+", "αβγ", True),
        (r"\p{Greek}", "a", False),
        (r"[\p{Greek}x]+", "x\u03b1", True),
        (r"\pL+", "aéЖ", True),
        (r"\pL", "1", False),
        (r"\PL", "1", True),
        (r"\p{^Greek}", "a", True),
        (r"\pN", "\u0663", True),
        (r"\p{Han}", "\u6f22", True),
        (r"[[:alpha:]]", "é", False),  # POSIX classes are ASCII
        (r"[[:alpha:]]+", "aZ", True),
        ("(?i)k", "\u212a", True),  # Kelvin sign folds to k
        ("(?)a", "a", True),  # an empty flag group, valid in Go
        (r"(?i)\Q.É\E", ".é", True),
        (r"a\z", "a\n", False),
        ("(?s:a.)b", "a\nb", True),
        ("(?m)^b", "a\nb", False),  # fullmatch: the whole key, not a line
    ],
)
def test_re2_meaning_is_kept(pattern: str, key: str, matches: bool) -> None:
    assert (compile_re2(pattern, True).fullmatch(key) is not None) is matches


def test_ungreedy_flag() -> None:
    m = compile_re2("(?U)(a+)(a*)", False).fullmatch("aaa")
    assert m is not None and (m.group(1), m.group(2)) == ("a", "aa")
    m = compile_re2("(?U)(a+?)(a*)", False).fullmatch("aaa")
    assert m is not None and (m.group(1), m.group(2)) == ("aaa", "")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", r"invalid escape sequence: \1 (RE2 has no backreferences)"),
        ("(?=a)", "invalid perl operator: (?= (RE2 has no lookahead)"),
        ("a(?!b)", "(RE2 has no lookahead)"),
        ("(?<=a)b", "invalid perl operator: (?<= (RE2 has no lookbehind)"),
        ("(?<!a)b", "(RE2 has no lookbehind)"),
        ("(?P=n)", "invalid perl operator"),
        ("(?x)a", "invalid perl operator"),
        ("a**", "bad repetition operator: **"),
        ("a*+", "bad repetition operator"),
        ("a++", "bad repetition operator"),
        ("a{2}{3}", "bad repetition operator"),
        ("*a", "no argument for repetition operator"),
        ("(a", "missing )"),
        ("a)", "unexpected )"),
        ("[a", "missing ]"),
        ("[z-a]", "invalid character class range"),
        ("[[:nope:]]", "invalid character class range: [:nope:]"),
        (r"\p{Nope}", "invalid character class range"),
        ("a{1001}", "invalid repetition size"),
        ("(a{100}){100}", "invalid repetition size"),  # Go: the product counts
        (r"\Z", "invalid escape sequence"),
        (r"\i", "invalid escape sequence"),
        (r"\C", r"invalid escape sequence: \C"),  # C++ RE2 takes it, Go does not
        (r"a\Cb", r"\C (any byte)"),
        (r"\Q\E\C", r"\C (any byte)"),
        (r"\\\C", r"\C (any byte)"),
        ("(?P<é>a)", "invalid named capture"),  # C++ RE2 takes it, Go does not
        ("(?<a-b>a)", "invalid named capture"),
        ("(?i-)", "invalid perl operator"),
        ("x\\", "trailing \\"),
        (r"(?i)\pL{1000}", "pattern too large"),
    ],
)
def test_rejected_patterns(pattern: str, reason: str) -> None:
    with pytest.raises(RegexpSyntaxError, match=re.escape(reason)):
        compile_re2(pattern)


@pytest.mark.parametrize("pattern", [r"\\C", r"\Q\C\E", r"[\\C]", r"\QC\E\\C"])
def test_a_literal_backslash_c_is_fine(pattern: str) -> None:
    compile_re2(pattern)


def test_group_names_as_go_has_them() -> None:
    m = _match("(?P<1x>a)(?<y_2>b)", "ab")
    assert expand("$1x.${y_2}.$1", m) == "a.b.a"
    # The same name twice: Go's $name is the leftmost group of that name.
    m = _match("(?P<n>a)?(?P<n>b)", "b")
    assert expand("[$n]", m) == "[]"
    assert expand("[$2]", m) == "[b]"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('table regexp "(a)\\1" "x"', r"invalid escape sequence: \1 (RE2 has no backreferences)"),
        ('table regexp "(?=a)a"', "invalid perl operator: (?= (RE2 has no lookahead)"),
        ('table regexp "a\\C"', r"invalid escape sequence: \C (any byte)"),
        ('table regexp "(?P<é>a)"', "invalid named capture: 'é' (A-Z a-z 0-9 _ only)"),
    ],
)
def test_bad_pattern_is_a_config_error_at_its_line(kw: Harness, line: str, message: str) -> None:
    err = kw.error(f"kw_probe {{\n\n {line}\n}}\n")
    assert err == f"t.conf:3: table.regexp: invalid regular expression: {message}"


# -- linear time ----------------------------------------------------------------
# Python's backtracking `re` needs about 0.5 s for `(x+x+)+y` against 24 x's
# and doubles with each further x; RE2 is linear in the key.


@pytest.mark.parametrize("full_match", ["yes", "no"])
async def test_nested_repeats_take_linear_time(kw: Harness, full_match: str) -> None:
    t = await kw.table(f'regexp "(x+x+)+y" "hit" {{\n full_match {full_match}\n }}')
    key = "x" * 50_000
    start = time.perf_counter()
    assert await t.lookup(key) is None
    assert await t.lookup(key + "y") == "hit"
    assert await t.lookup(key + "@example.org") is None
    assert time.perf_counter() - start < 0.5


def test_nested_repeats_capture_in_linear_time() -> None:
    start = time.perf_counter()
    m = compile_re2("((x+x+)+)(y?)").fullmatch("x" * 50_000)
    assert m is not None and m.group(1) == "x" * 50_000 and m.group(3) == ""
    assert time.perf_counter() - start < 0.5


# -- keys with bytes that were not UTF-8 ------------------------------------------


async def test_undecodable_bytes_match_as_u_fffd(kw: Harness) -> None:
    # The server decodes commands with surrogateescape: 0xff becomes U+DCFF.
    key = "us\udcffer@example.org"
    t = await kw.table(r'regexp "(.+)@(example\.org)" "$1" "${2}"')
    assert await t.lookup_multi(key) == ["us\udcffer", "example.org"]
    t = await kw.table(r'regexp "us\x{FFFD}er@.*"')
    assert await t.lookup(key) == key
    t = await kw.table(r'regexp "us.er@.*"')
    assert await t.lookup(key) == key
    t = await kw.table(r'regexp "user@.*"')
    assert await t.lookup(key) is None


def test_regexp_needs_an_expression(kw: Harness) -> None:
    assert kw.error("kw_probe {\n table regexp\n}\n") == (
        "t.conf:2: table.regexp: expected a regular expression and optional replacements"
    )


def test_regexp_unknown_directive(kw: Harness) -> None:
    assert kw.error('kw_probe {\n table regexp "a" {\n  full yes\n }\n}\n') == (
        "t.conf:3: unexpected directive: full"
    )


async def test_identity(kw: Harness) -> None:
    t = await kw.table("identity")
    assert await t.lookup("Any Key") == "Any Key"
    assert await t.lookup("") == ""
    assert kw.error("kw_probe {\n table identity x\n}\n") == (
        "t.conf:2: table.identity takes no arguments"
    )
