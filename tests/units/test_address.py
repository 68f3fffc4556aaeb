"""kittiwake.address: path parsing, IDNA, the address forms, rules.

Mostly tables: each row is one case from docs/address.md or the RFCs, so a failure
names the input. Limits are tested at the limit and one past it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kittiwake.address import (
    MAX_DOMAIN,
    MAX_LABEL,
    MAX_LOCAL_PART,
    MAX_PATH,
    NULL_ADDRESS,
    REPLIES,
    Address,
    AddressError,
    MailboxSyntaxError,
    NormalizationError,
    PathSyntaxError,
    PathTooLong,
    SMTPUTF8Required,
    clean_address,
    clean_path,
    get_normalizer,
    is_valid_address_rule,
    is_valid_domain_rule,
    needs_smtputf8,
    normalize_address,
    normalize_domain,
    normalize_rule,
    parse_forward_path,
    parse_reverse_path,
    precis_casefold_email,
    quote_local_part,
    split,
    split_subaddress,
    to_alabel_domain,
    to_ulabel_domain,
)
from kittiwake.errors import SMTPError


def _domain_of(octets: int) -> str:
    """An ASCII domain of exactly `octets` octets, labels of at most 63."""
    labels: list[str] = []
    left = octets
    while left > MAX_LABEL:
        take = min(MAX_LABEL, left - 2)  # leave a dot and one octet for the last label
        labels.append("a" * take)
        left -= take + 1
    labels.append("b" * left)
    domain = ".".join(labels)
    assert len(domain) == octets
    return domain


D255 = _domain_of(MAX_DOMAIN)
D256 = _domain_of(MAX_DOMAIN + 1)

# --- valid paths -----------------------------------------------------------

# (path content, smtputf8, local, domain)
VALID = [
    ("user@example.org", False, "user", "example.org"),
    ("User.Name@Example.ORG", False, "User.Name", "Example.ORG"),  # case kept
    ("!#$%&'*+-/=?^_`{|}~@x.org", False, "!#$%&'*+-/=?^_`{|}~", "x.org"),
    ("user+tag@example.org", False, "user+tag", "example.org"),
    ('"john doe"@example.org', False, "john doe", "example.org"),
    ('"john.doe"@example.org', False, "john.doe", "example.org"),
    (r'"a\"b"@x.org', False, 'a"b', "x.org"),
    (r'"a\\b"@x.org', False, "a\\b", "x.org"),
    (r'"\a"@x.org', False, "a", "x.org"),  # a needless escape is still an escape
    ('"a@b"@x.org', False, "a@b", "x.org"),
    ('"(),:;<>[]"@x.org', False, "(),:;<>[]", "x.org"),
    ("user@[192.0.2.1]", False, "user", "[192.0.2.1]"),
    ("user@[IPv6:2001:db8::1]", False, "user", "[IPv6:2001:db8::1]"),
    ("user@[ipv6:::ffff:192.0.2.1]", False, "user", "[ipv6:::ffff:192.0.2.1]"),
    ("user@example.org.", False, "user", "example.org."),  # lenient: trailing dot
    ("user@mail_host.example.org", False, "user", "mail_host.example.org"),
    ("user@localhost", False, "user", "localhost"),
    ("a..b@x.org", False, "a..b", "x.org"),  # lenient: carriers' dotted names
    (".a.@x.org", False, ".a.", "x.org"),
    ("@relay.example:user@x.org", False, "user", "x.org"),  # source route dropped
    ("@a.example,@b.example:user@x.org", False, "user", "x.org"),
    ("user@xn--9ca.example.com", False, "user", "xn--9ca.example.com"),
    ("ѣ@example.org", True, "ѣ", "example.org"),
    ("用户@例子.广告", True, "用户", "例子.广告"),
    ('"ü ü"@x.org', True, "ü ü", "x.org"),
    ("user@E\u0301.example.org", True, "user", "E\u0301.example.org"),  # as sent
    ("a\x80b@x.org", False, "a\x80b", "x.org"),  # [quirk] U+0080 needs no SMTPUTF8
    # Limits, at the limit.
    ("l" * MAX_LOCAL_PART + "@x.org", False, "l" * MAX_LOCAL_PART, "x.org"),
    ("é" * 127 + "a@x.org", True, "é" * 127 + "a", "x.org"),  # 255 octets
    ("u@" + D255, False, "u", D255),
    ("u@" + D255 + ".", False, "u", D255 + "."),
    ("u@" + "a" * MAX_LABEL + ".org", False, "u", "a" * MAX_LABEL + ".org"),
]


@pytest.mark.parametrize(("text", "utf8", "local", "domain"), VALID)
def test_valid_forward_path(text: str, utf8: bool, local: str, domain: str) -> None:
    assert parse_forward_path(text, smtputf8=utf8) == Address(local, domain)


@pytest.mark.parametrize(("text", "utf8", "local", "domain"), VALID)
def test_valid_reverse_path(text: str, utf8: bool, local: str, domain: str) -> None:
    assert parse_reverse_path(text, smtputf8=utf8) == Address(local, domain)


def test_null_reverse_path() -> None:
    addr = parse_reverse_path("", smtputf8=False)
    assert addr is NULL_ADDRESS
    assert addr.is_null and not addr.is_postmaster
    assert str(addr) == "" and addr.wire() == "" and addr.clean() == ""


@pytest.mark.parametrize("text", ["postmaster", "POSTMASTER", "PostMaster"])
def test_postmaster_recipient_needs_no_domain(text: str) -> None:
    addr = parse_forward_path(text, smtputf8=False)
    assert addr == Address(text, "")
    assert addr.is_postmaster and not addr.is_null
    assert str(addr) == text
    assert normalize_address(str(addr)) == "postmaster"


@pytest.mark.parametrize("text", ["postmaster", "Postmaster"])
def test_postmaster_sender_needs_a_domain(text: str) -> None:
    with pytest.raises(PathSyntaxError, match="only valid as a recipient"):
        parse_reverse_path(text, smtputf8=False)


def test_postmaster_with_domain_is_an_ordinary_address() -> None:
    addr = parse_reverse_path("postmaster@example.org", smtputf8=False)
    assert addr == Address("postmaster", "example.org")
    assert not addr.is_postmaster


# --- invalid paths ---------------------------------------------------------

# (path content, smtputf8, error type, part of the reason)
INVALID: list[tuple[str, bool, type[AddressError], str]] = [
    # Control bytes anywhere (docs/address.md).
    ("us\x00er@x.org", False, PathSyntaxError, "U+0000"),
    ("us\x07er@x.org", False, PathSyntaxError, "U+0007"),
    ("user\t@x.org", False, PathSyntaxError, "U+0009"),
    ("user@x.org\r", False, PathSyntaxError, "U+000D"),
    ("user@x\n.org", False, PathSyntaxError, "U+000A"),
    ("us\x7fer@x.org", False, PathSyntaxError, "U+007F"),
    ('"a\x01b"@x.org', False, PathSyntaxError, "U+0001"),
    ('"a\\\x01"@x.org', False, PathSyntaxError, "U+0001"),
    ("us\x1fer@x.org", True, PathSyntaxError, "U+001F"),
    ("us\udcffer@x.org", True, PathSyntaxError, "not valid UTF-8"),
    # Local part.
    ("@x.org", False, PathSyntaxError, "empty local part"),
    ('""@x.org', False, PathSyntaxError, "empty local part"),
    ("john doe@x.org", False, MailboxSyntaxError, "invalid character ' '"),
    ("a,b@x.org", False, MailboxSyntaxError, "invalid character ','"),
    ("a(b)@x.org", False, MailboxSyntaxError, "invalid character '('"),
    ("a\\b@x.org", False, MailboxSyntaxError, "backslash"),
    ('a"b"@x.org', False, MailboxSyntaxError, "quote inside"),
    ('"ab@x.org', False, PathSyntaxError, "unterminated"),
    ('"ab\\"@x.org', False, PathSyntaxError, "unterminated"),
    ('"ab"c@x.org', False, MailboxSyntaxError, "after the closing quote"),
    ('"ab"', False, PathSyntaxError, "missing '@'"),
    ("user", False, PathSyntaxError, "missing '@'"),
    ("postmaster@", False, MailboxSyntaxError, "empty domain"),
    # Domain.
    ("user@", False, MailboxSyntaxError, "empty domain"),
    ("user@.", False, MailboxSyntaxError, "only a dot"),
    ("user@.x.org", False, MailboxSyntaxError, "empty label"),
    ("user@x..org", False, MailboxSyntaxError, "empty label"),
    ("user@x.org..", False, MailboxSyntaxError, "empty label"),
    ("user@x y.org", False, MailboxSyntaxError, "invalid character ' '"),
    ("user@x@y.org", False, MailboxSyntaxError, "invalid character '@'"),
    ("user@x.org>", False, MailboxSyntaxError, "invalid character '>'"),
    ("user@x/y.org", False, MailboxSyntaxError, "invalid character '/'"),
    # Address literals.
    ("user@[192.0.2.1", False, MailboxSyntaxError, "unterminated address literal"),
    ("user@[192.0.2]", False, MailboxSyntaxError, "invalid address literal"),
    ("user@[192.0.2.256]", False, MailboxSyntaxError, "invalid address literal"),
    ("user@[192.000.2.1]", False, MailboxSyntaxError, "invalid address literal"),
    ("user@[IPv6:2001:db8::g]", False, MailboxSyntaxError, "invalid address literal"),
    ("user@[IPv6:192.0.2.1]", False, MailboxSyntaxError, "invalid address literal"),
    ("user@[IPv6:fe80::1%eth0]", False, MailboxSyntaxError, "invalid address literal"),
    ("user@[2001:db8::1]", False, MailboxSyntaxError, "unsupported address literal tag"),
    ("user@[x-tag:abc]", False, MailboxSyntaxError, "unsupported address literal tag"),
    ("user@[]", False, MailboxSyntaxError, "invalid address literal"),
    # Source routes.
    ("@:user@x.org", False, PathSyntaxError, "malformed source route"),
    ("@a,b:user@x.org", False, PathSyntaxError, "malformed source route"),
    ("@a..b:user@x.org", False, MailboxSyntaxError, "source route domain"),
    ("@a.example", False, PathSyntaxError, "empty local part"),
    # SMTPUTF8.
    ("ѣ@example.org", False, SMTPUTF8Required, "SMTPUTF8"),
    ("user@例子.广告", False, SMTPUTF8Required, "SMTPUTF8"),
    ("user@E\u0301.example.org", False, SMTPUTF8Required, "SMTPUTF8"),
    ('"ü"@x.org', False, SMTPUTF8Required, "SMTPUTF8"),
    ("a\x81b@x.org", False, SMTPUTF8Required, "SMTPUTF8"),
    # Limits, one past.
    ("l" * (MAX_LOCAL_PART + 1) + "@x.org", False, PathTooLong, "local part longer"),
    ("é" * 128 + "@x.org", True, PathTooLong, "local part longer"),  # 256 octets
    ("u@" + D256, False, PathTooLong, "domain longer"),
    ("u@" + "a" * (MAX_LABEL + 1) + ".org", False, PathTooLong, "label longer"),
    ("u@" + "é" * 60 + ".org", True, PathTooLong, "label longer"),  # long A-label
]


@pytest.mark.parametrize(("text", "utf8", "error", "reason"), INVALID)
def test_invalid_path(text: str, utf8: bool, error: type[AddressError], reason: str) -> None:
    for parse in (parse_forward_path, parse_reverse_path):
        with pytest.raises(error) as info:
            parse(text, smtputf8=utf8)
        assert type(info.value) is error
        assert reason in info.value.reason


def test_path_length_limit() -> None:
    # A quoted local part of 254 characters (256 with quotes), "@", and a
    # domain of 255: exactly MAX_PATH octets; one more character is too long
    # even though the local part and the domain are each within their limits.
    at_limit = '"' + "a" * 254 + '"@' + D255
    assert len(at_limit) == MAX_PATH
    assert parse_forward_path(at_limit, smtputf8=False).local == "a" * 254
    past = '"' + "a" * 255 + '"@' + D255
    with pytest.raises(PathTooLong, match="path longer"):
        parse_forward_path(past, smtputf8=False)


def test_utf8_domain_is_measured_as_alabels() -> None:
    label = "é" * 57  # "xn--" + 59 punycode characters = 63 octets
    assert len(to_alabel_domain(label)) == MAX_LABEL
    assert parse_forward_path(f"u@{label}.org", smtputf8=True).domain == f"{label}.org"
    with pytest.raises(PathTooLong):
        parse_forward_path(f"u@{label}é.org", smtputf8=True)


def test_smtputf8_error_keeps_the_parsed_address() -> None:
    with pytest.raises(SMTPUTF8Required) as info:
        parse_reverse_path("ѣ@Example.org", smtputf8=False)
    assert info.value.address == Address("ѣ", "Example.org")


def test_null_path_is_no_recipient() -> None:
    with pytest.raises(PathSyntaxError, match="null path"):
        parse_forward_path("", smtputf8=True)


# --- replies ---------------------------------------------------------------

# (error, role, code, enhanced, text): the table of docs/address.md.
_SENDER_UTF8 = "SMTPUTF8 is required for non-ASCII senders"
_RCPT_UTF8 = "SMTPUTF8 is required for non-ASCII recipients"
REPLIES_TESTED = [
    (PathSyntaxError("x"), "sender", 501, (5, 5, 2),
     "Was expecting MAIL arg syntax of FROM:<address>"),
    (PathSyntaxError("x"), "recipient", 501, (5, 5, 2),
     "Was expecting RCPT arg syntax of TO:<address>"),
    (MailboxSyntaxError("x"), "sender", 501, (5, 1, 7), "Bad sender address syntax"),
    (MailboxSyntaxError("x"), "recipient", 501, (5, 1, 3), "Bad recipient address syntax"),
    (PathTooLong("x"), "sender", 501, (5, 5, 2), "Path too long"),
    (PathTooLong("x"), "recipient", 501, (5, 5, 2), "Path too long"),
    (SMTPUTF8Required("x", NULL_ADDRESS), "sender", 550, (5, 6, 7), _SENDER_UTF8),
    (SMTPUTF8Required("x", NULL_ADDRESS), "recipient", 553, (5, 6, 7), _RCPT_UTF8),
    (NormalizationError("x"), "sender", 553, (5, 1, 7),
     "Unable to normalize the sender address"),
    (NormalizationError("x"), "recipient", 501, (5, 1, 2),
     "Unable to normalize the recipient address"),
]  # fmt: skip


@pytest.mark.parametrize(("error", "role", "code", "enhanced", "text"), REPLIES_TESTED)
def test_smtp_replies(
    error: AddressError, role: str, code: int, enhanced: tuple[int, int, int], text: str
) -> None:
    reply = error.smtp_error(role)  # type: ignore[arg-type]
    assert isinstance(reply, SMTPError)
    assert (reply.code, reply.enhanced, reply.message) == (code, enhanced, text)
    assert reply.reason == "x"  # the detail goes to the log, not the client


def test_every_reply_of_the_table_is_tested() -> None:
    tested = {(type(error), role) for error, role, *_ in REPLIES_TESTED}
    assert tested == set(REPLIES)


def test_errors_are_value_errors() -> None:
    for cls in (PathSyntaxError, MailboxSyntaxError, PathTooLong, SMTPUTF8Required):
        assert issubclass(cls, ValueError)
    assert issubclass(NormalizationError, ValueError)


@pytest.mark.parametrize(
    ("addr", "utf8", "result"),
    [
        ("user@Example.ORG.", False, "user@example.org"),
        ("ѣ@example.org", True, "ѣ@example.org"),
        ("ѣ@example.org", False, SMTPUTF8Required),
        ("user@xn--zz.example", False, NormalizationError),
        ("PostMaster", False, "PostMaster"),
        ("", False, ""),
    ],
)
def test_clean_path(addr: str, utf8: bool, result: str | type[Exception]) -> None:
    """The SMTPUTF8 rule first, then the clean form (what the server calls)."""
    if isinstance(result, str):
        assert clean_path(addr, smtputf8=utf8) == result
    else:
        with pytest.raises(result):
            clean_path(addr, smtputf8=utf8)


# --- the address forms -----------------------------------------------------

NORMALIZE_DOMAIN = [
    ("example.org", "example.org"),
    ("Example.ORG", "example.org"),
    ("example.org.", "example.org"),
    ("xn--9ca.example.com", "é.example.com"),
    ("XN--9CA.Example.COM", "é.example.com"),
    ("xn--y9qa.invalid", "凱凱.invalid"),
    ("E\u0301.EXAMPLE.com", "é.example.com"),  # NFC, then lowercase
    ("É.example.com", "é.example.com"),
    ("xn--bcher-kva.example", "bücher.example"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("[IPv6:2001:DB8:0:0::1]", "[ipv6:2001:db8::1]"),
]


@pytest.mark.parametrize(("domain", "expected"), NORMALIZE_DOMAIN)
def test_normalize_domain(domain: str, expected: str) -> None:
    assert normalize_domain(domain) == expected


@pytest.mark.parametrize(
    "domain", ["xn--zz.example", "xn--abc-.example", "xn--.example", "xn--ab.example", "", "[1.2]"]
)
def test_normalize_domain_refuses_bad_alabels(domain: str) -> None:
    with pytest.raises(NormalizationError):
        normalize_domain(domain)


def test_normalize_domain_lenient_keeps_bad_alabels() -> None:
    assert normalize_domain("XN--ZZ.Example.", strict=False) == "xn--zz.example"
    assert normalize_domain("xn--zz.xn--9ca", strict=False) == "xn--zz.é"
    assert normalize_domain("[1.2]", strict=False) == "[1.2]"
    assert normalize_domain("", strict=False) == ""


ALABEL = [
    ("example.org", "example.org"),
    ("Example.ORG", "Example.ORG"),  # ASCII labels as written
    ("é.example.com", "xn--9ca.example.com"),
    ("É.example.com", "xn--9ca.example.com"),
    ("E\u0301.example.com", "xn--9ca.example.com"),
    ("凱凱.invalid", "xn--y9qa.invalid"),  # an IDN HELO in Received
    ("bücher.example.", "xn--bcher-kva.example."),
    ("[IPv6:::1]", "[IPv6:::1]"),
]


@pytest.mark.parametrize(("domain", "expected"), ALABEL)
def test_to_alabel_domain(domain: str, expected: str) -> None:
    assert to_alabel_domain(domain) == expected


def test_to_ulabel_domain_keeps_case() -> None:
    assert to_ulabel_domain("xn--y9qa.Invalid") == "凱凱.Invalid"
    assert to_ulabel_domain("Mx.Example.com") == "Mx.Example.com"
    assert to_ulabel_domain("E\u0301.x") == "É.x"
    with pytest.raises(NormalizationError):
        to_ulabel_domain("xn--zz.x")
    assert to_ulabel_domain("xn--zz.x", strict=False) == "xn--zz.x"


def test_alabel_round_trip() -> None:
    for domain in ("é.example.com", "凱凱.invalid", "bücher.example"):
        assert normalize_domain(to_alabel_domain(domain)) == domain


CLEAN = [
    ("", ""),
    ("postmaster", "postmaster"),
    ("PostMaster", "PostMaster"),  # stays as is (docs/address.md)
    ("foo@E\u0301.example.org", "foo@é.example.org"),  # NFC before lowercasing
    ("Foo.Bar@EXAMPLE.org", "Foo.Bar@example.org"),  # local part untouched
    ("E\u0301@x.org", "E\u0301@x.org"),
    ("user@xn--9ca.example.com.", "user@é.example.com"),
    ("a@b@Example.org", "a@b@example.org"),
]


@pytest.mark.parametrize(("addr", "expected"), CLEAN)
def test_clean_address(addr: str, expected: str) -> None:
    assert clean_address(addr) == expected


def test_address_clean_method() -> None:
    assert Address("Foo", "E\u0301.ORG").clean() == "Foo@é.org"
    assert Address("postmaster", "").clean() == "postmaster"
    with pytest.raises(NormalizationError):
        Address("foo", "xn--zz.org").clean()


LOOKUP = [
    ("", ""),
    ("postmaster", "postmaster"),
    ("POSTMASTER", "postmaster"),
    ("User@Example.ORG", "user@example.org"),
    ("X@E\u0301.EXAMPLE.com", "x@é.example.com"),  # docs/address.md
    ("x@xn--9ca.example.com", "x@é.example.com"),
    ("E\u0301X@x.org", "éx@x.org"),  # local part: NFC, then lowercase
    ("Ünïcode@x.org.", "ünïcode@x.org"),
    ("a@b@x.org", "a@b@x.org"),
    ("postmaster@Example.org", "postmaster@example.org"),
]


@pytest.mark.parametrize(("addr", "expected"), LOOKUP)
def test_normalize_address(addr: str, expected: str) -> None:
    assert normalize_address(addr) == expected


@pytest.mark.parametrize("addr", ["user", "@x.org", "user@", "postmaster2", "u@xn--zz.org"])
def test_normalize_address_errors(addr: str) -> None:
    with pytest.raises(NormalizationError):
        normalize_address(addr)


def test_lookup_form_matches_across_spellings() -> None:
    # docs/address.md: A-/U-label-, NFC- and case-insensitive matching.
    rule = normalize_rule("é.example.com")
    for rcpt in ("x@xn--9ca.example.com", "X@E\u0301.EXAMPLE.com", "x@É.Example.Com."):
        assert split(normalize_address(rcpt))[1] == rule


SPLIT = [
    ("user@example.org", ("user", "example.org")),
    ("a@b@example.org", ("a@b", "example.org")),
    ("postmaster", ("postmaster", "")),
    ("PostMaster", ("PostMaster", "")),
]


@pytest.mark.parametrize(("addr", "expected"), SPLIT)
def test_split(addr: str, expected: tuple[str, str]) -> None:
    assert split(addr) == expected


@pytest.mark.parametrize("addr", ["", "user", "@x", "x@"])
def test_split_errors(addr: str) -> None:
    with pytest.raises(NormalizationError):
        split(addr)


SUBADDRESS = [
    ("user+tag", "+", ("user", "tag")),
    ("user", "+", ("user", "")),
    ("user+", "+", ("user", "")),
    ("a+b+c", "+", ("a", "b+c")),
    ("+user", "+", ("+user", "")),  # kept whole (docs/storage-maildir.md)
    ("Local+x", "+", ("Local", "x")),
    ("user-tag", "-", ("user", "tag")),
    ("user--tag", "--", ("user", "tag")),
]


@pytest.mark.parametrize(("local", "sep", "expected"), SUBADDRESS)
def test_split_subaddress(local: str, sep: str, expected: tuple[str, str]) -> None:
    assert split_subaddress(local, sep) == expected


def test_split_subaddress_needs_a_separator() -> None:
    with pytest.raises(ValueError):
        split_subaddress("a+b", "")


QUOTE = [
    ("john", "john"),
    ("john.doe", "john.doe"),
    ("ünï", "ünï"),
    ("john doe", '"john doe"'),
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ("a@b", '"a@b"'),
    ("a..b", '"a..b"'),  # accepted unquoted on input, written correctly
    (".a", '".a"'),
    ("a.", '"a."'),
    ("", '""'),
]


@pytest.mark.parametrize(("local", "expected"), QUOTE)
def test_quote_local_part(local: str, expected: str) -> None:
    assert quote_local_part(local) == expected
    if local:
        assert parse_forward_path(expected + "@x.org", smtputf8=True).local == local


def test_quote_local_part_refuses_controls() -> None:
    with pytest.raises(ValueError):
        quote_local_part("a\nb")


def test_address_forms() -> None:
    addr = parse_forward_path('"john doe"@Example.org', smtputf8=False)
    assert str(addr) == "john doe@Example.org"
    assert addr.wire() == '"john doe"@Example.org'


def test_needs_smtputf8() -> None:
    assert not needs_smtputf8("plain@example.org")
    assert not needs_smtputf8("\x80")  # [quirk]
    assert needs_smtputf8("\x81")
    assert needs_smtputf8("ѣ@example.org")


# --- storage / user-name forms (docs/address.md) ---------------------------

NORMALIZERS_TABLE = [
    ("precis_casefold_email", "Ünïcode@XN--9CA.Example.com", "ünïcode@é.example.com"),
    ("precis_casefold_email", "User+Tag@Example.ORG.", "user+tag@example.org"),
    ("precis_casefold_email", "\uff21\uff22\uff23@x.org", "abc@x.org"),  # fullwidth ABC
    ("precis_casefold_email", "PostMaster", "postmaster"),
    ("precis_casefold", "ΣΑΣ", "σας"),
    ("precis_casefold", "Ünïcode", "ünïcode"),
    ("precis_email", "Ünïcode@X.ORG", "Ünïcode@x.org"),
    ("precis", "User", "User"),
    ("casefold", "User@Example.ORG", "user@example.org"),
    ("noop", "User@Example.ORG", "User@Example.ORG"),
    ("auto", "User@Example.ORG", "user@example.org"),
    ("auto", "UserName", "username"),
]


@pytest.mark.parametrize(("name", "value", "expected"), NORMALIZERS_TABLE)
def test_normalizers(name: str, value: str, expected: str) -> None:
    assert get_normalizer(name)(value) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("precis_casefold", ""),
        ("precis_casefold", "user name"),
        ("precis_casefold", "a\x07"),
        ("precis", "a b"),
        ("precis_casefold_email", "john doe@x.org"),
        ("precis_casefold_email", "no-at-sign"),
        ("precis_casefold_email", "u@xn--zz.org"),
        ("auto", "user name"),
    ],
)
def test_normalizer_errors(name: str, value: str) -> None:
    with pytest.raises(NormalizationError):
        get_normalizer(name)(value)


def test_unknown_normalizer() -> None:
    with pytest.raises(ValueError, match="unknown normalization function 'upper'"):
        get_normalizer("upper")


def test_maildir_mailbox_name() -> None:
    # `Local+x@Example.ORG` -> example.org / local (docs/storage-maildir.md).
    local, domain = split(precis_casefold_email("Local+x@Example.ORG"))
    assert (split_subaddress(local)[0], to_alabel_domain(domain)) == ("local", "example.org")
    local, domain = split(precis_casefold_email("Ü@E\u0301.org"))
    assert (local, to_alabel_domain(domain)) == ("ü", "xn--9ca.org")


# --- routing rules (docs/address.md) -------------------------------------

RULES = [
    ("example.org", "example.org"),
    ("Example.ORG.", "example.org"),
    ("é.example.com", "é.example.com"),
    ("XN--9CA.example.com", "é.example.com"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("postmaster", "postmaster"),
    ("PostMaster", "postmaster"),
    ("User@Example.ORG", "user@example.org"),
    ("user@é.example.com", "user@é.example.com"),
    ('"John Doe"@example.org', "john doe@example.org"),
    ("l" * 64 + "@" + _domain_of(255), "l" * 64 + "@" + _domain_of(255)),  # 320 octets
]


@pytest.mark.parametrize(("rule", "key"), RULES)
def test_valid_rules(rule: str, key: str) -> None:
    assert normalize_rule(rule) == key
    assert is_valid_domain_rule(rule) or is_valid_address_rule(rule)


BAD_RULES = [
    "",
    ".",
    "..",
    ".example.org",
    "example..org",
    "exa mple.org",
    "*.example.org",
    "a" * 64 + ".org",
    _domain_of(256),
    "xn--zz.org",
    "@example.",
    "@example.org",
    "user@",
    "user name@example.org",
    "user@example..org",
    '""@example.org',
    "l" * 65 + "@" + _domain_of(255),  # 321 octets
]


@pytest.mark.parametrize("rule", BAD_RULES)
def test_invalid_rules(rule: str) -> None:
    with pytest.raises(AddressError):
        normalize_rule(rule)
    assert not is_valid_domain_rule(rule)
    assert not is_valid_address_rule(rule)


def test_rule_kinds() -> None:
    assert is_valid_domain_rule("example.org") and not is_valid_address_rule("example.org")
    assert is_valid_address_rule("u@example.org") and not is_valid_domain_rule("u@example.org")
    assert is_valid_address_rule("postmaster")


# --- properties ------------------------------------------------------------

_path_alphabet = st.sampled_from(
    [*'abcXYZ09.@"\\[]:,<> +-_!\x00\x07\x7f\x80\x81éѣ凱\u0301\ud800', "xn--", "IPv6:"]
)
_paths = st.one_of(st.text(max_size=80), st.lists(_path_alphabet, max_size=40).map("".join))


@given(text=_paths, utf8=st.booleans())
def test_parse_raises_only_address_errors(text: str, utf8: bool) -> None:
    for parse in (parse_forward_path, parse_reverse_path):
        try:
            addr = parse(text, smtputf8=utf8)
        except AddressError as exc:
            assert exc.reason
            continue
        # Whatever parses can be written back and parses to the same thing.
        if addr.domain:
            assert parse(addr.wire(), smtputf8=True) == addr


def _lenient(text: str) -> str:
    return normalize_domain(text, strict=False)


@given(text=_paths)
def test_normalisation_raises_only_normalization_errors(text: str) -> None:
    funcs: list[Callable[[str], str]] = [
        normalize_address,
        clean_address,
        normalize_domain,
        to_ulabel_domain,
        *(get_normalizer(name) for name in ("auto", "precis_casefold_email", "precis_email")),
    ]
    for func in funcs:
        try:
            func(text)
        except NormalizationError:
            pass
    _lenient(text)  # never raises
    to_ulabel_domain(text, strict=False)


@given(
    local=st.text(
        st.characters(min_codepoint=0x20, codec="utf-8", exclude_characters="\x7f"),
        min_size=1,
        max_size=40,
    )
)
def test_quoting_round_trip(local: str) -> None:
    quoted = quote_local_part(local)
    assert parse_forward_path(quoted + "@example.org", smtputf8=True).local == local


@given(label=st.text(st.characters(min_codepoint=0xA0, codec="utf-8"), min_size=1))
def test_alabels_decode_back(label: str) -> None:
    folded = unicodedata.normalize("NFC", label).lower()
    alabel = to_alabel_domain(label)
    assert alabel.isascii()
    if folded.isascii():
        assert alabel == folded
    else:
        assert to_ulabel_domain(alabel) == unicodedata.normalize("NFC", folded)


def test_kept_parses_are_bounded_and_answer_as_fresh_ones() -> None:
    """Parsed paths and normal forms are kept per text, 1,024 of each at
    most: at the bound all are kept, past it the oldest go, and a kept
    answer is the one a fresh parse gives (kittiwake/address/path.py)."""
    from kittiwake.address import normalize, path

    kept = (path._parse_path, path.split, normalize.clean_address, normalize.normalize_address)
    for cache in kept:
        cache.cache_clear()
    texts = [f"user{i}@Example.ORG" for i in range(path._KEPT + 1)]
    for text in texts[: path._KEPT]:
        parse_forward_path(text, smtputf8=False)
        normalize_address(text)
        clean_path(text, smtputf8=False)
    assert all(cache.cache_info().currsize == path._KEPT for cache in kept)
    parse_forward_path(texts[-1], smtputf8=False)
    normalize_address(texts[-1])
    assert path._parse_path.cache_info().currsize == path._KEPT  # one went, one came
    again = parse_forward_path(texts[0], smtputf8=False)  # gone: parsed afresh
    assert (again.local, again.domain) == ("user0", "Example.ORG")
    assert normalize_address(texts[5]) == "user5@example.org"  # kept
    assert clean_path(texts[5], smtputf8=False) == "user5@example.org"
    with pytest.raises(AddressError):  # errors are never kept
        parse_forward_path("bad address@", smtputf8=False)
    with pytest.raises(AddressError):
        parse_forward_path("bad address@", smtputf8=False)
