"""email_localpart, email_localpart_optional and email_with_domain."""

from __future__ import annotations

import pytest
from table_harness import Harness

from kittiwake.tables.email import quote_local_part, valid_domain


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("user@example.org", "user"),
        ("First.Last@Example.ORG", "First.Last"),
        ('"john doe"@example.org', '"john doe"'),  # as written, quotes kept
        ('"a@b"@example.org', '"a@b"'),  # split at the last @
        ("postmaster", "postmaster"),
        ("PostMaster", "PostMaster"),
        ("user", None),
        ("@example.org", None),
        ("user@", None),
        ("", None),
    ],
)
async def test_email_localpart(kw: Harness, key: str, expected: str | None) -> None:
    t = await kw.table("email_localpart")
    assert await t.lookup(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("user@example.org", "user"),
        ("user", "user"),
        ("user@", "user@"),
        ("", ""),
    ],
)
async def test_email_localpart_optional(kw: Harness, key: str, expected: str) -> None:
    t = await kw.table("email_localpart_optional")
    assert await t.lookup(key) == expected


def test_email_localpart_takes_nothing(kw: Harness) -> None:
    assert kw.error("kw_probe {\n table email_localpart x\n}\n") == (
        "t.conf:2: table.email_localpart takes no arguments"
    )
    assert kw.error("kw_probe {\n table email_localpart {\n  x\n }\n}\n") == (
        "t.conf:3: unexpected directive: x"
    )


async def test_email_with_domain_one_and_many(kw: Harness) -> None:
    t = await kw.table("email_with_domain example.org example.com")
    assert await t.lookup("user") == "user@example.org"
    assert await t.lookup_multi("user") == ["user@example.org", "user@example.com"]


@pytest.mark.parametrize(
    ("local", "quoted"),
    [
        ("user", "user"),
        ("first.last", "first.last"),
        ("a+tag!#$%&'*/=?^_`{|}~-", "a+tag!#$%&'*/=?^_`{|}~-"),
        ("jöhn", "jöhn"),  # RFC 6531: UTF-8 is atext
        ("john doe", '"john doe"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("a@b", '"a@b"'),
        ("a,b", '"a,b"'),
        ("a..b", '"a..b"'),
        (".a", '".a"'),
        ("a.", '"a."'),
        ("", '""'),
    ],
)
def test_local_part_quoting(local: str, quoted: str) -> None:
    assert quote_local_part(local) == quoted


async def test_email_with_domain_quotes_the_key(kw: Harness) -> None:
    t = await kw.table("email_with_domain example.org example.com")
    assert await t.lookup_multi("john doe") == ['"john doe"@example.org', '"john doe"@example.com']


@pytest.mark.parametrize(
    ("domain", "ok"),
    [
        ("example.org", True),
        ("mx-1.example_2.org", True),
        ("localhost", True),
        ("bücher.example", True),
        ("xn--bcher-kva.example", True),
        ("", False),
        (".example.org", False),
        ("example..org", False),
        ("example.org.", False),
        ("exa mple.org", False),
        ("a" * 64 + ".org", False),
        ("a" * 63 + ".org", True),
        ("[192.0.2.1]", False),
    ],
)
def test_domain_validation(domain: str, ok: bool) -> None:
    assert valid_domain(domain) is ok


def test_email_with_domain_errors(kw: Harness) -> None:
    assert kw.error("kw_probe {\n\n table email_with_domain\n}\n") == (
        "t.conf:3: table.email_with_domain: at least one domain is required"
    )
    assert kw.error("kw_probe {\n table email_with_domain example.org exa..mple\n}\n") == (
        "t.conf:2: table.email_with_domain: invalid domain: exa..mple"
    )
