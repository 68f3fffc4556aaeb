"""The `mx_auth` block: each policy's directives and defaults, the order they are
asked in, `mx_auth &NAME`, and every mistake reported at its FILE:LINE."""

from __future__ import annotations

from pathlib import Path

import pytest

from kittiwake.config.parser import parse_text
from kittiwake.container import Container, DebugFlags
from kittiwake.errors import ConfigError, SMTPError
from kittiwake.mx_auth.base import (
    DomainPolicy,
    MXCandidate,
    MXLevel,
    Policy,
    PolicyReport,
    TLSLevel,
    TLSState,
)
from kittiwake.mx_auth.config import parse_mx_auth
from kittiwake.mx_auth.dane import DANE
from kittiwake.mx_auth.dnssec import DNSSEC
from kittiwake.mx_auth.local import LocalPolicy
from kittiwake.mx_auth.mtasts import MTASTS, STSDomain


def container(tmp: Path, top: str = "", flags: DebugFlags | None = None) -> Container:
    text = f"state_dir {tmp}/state\n{top}"
    c = Container(
        parse_text(text, "top.conf"),
        config_file="top.conf",
        cwd=str(tmp),
        debug_flags=flags or DebugFlags(dns_override="127.0.0.1:53"),
    )
    c.parse_globals()
    return c


def build(tmp: Path, text: str, top: str = "") -> list[Policy]:
    (node,) = parse_text(text, "t.conf")
    return parse_mx_auth(node, container(tmp, top))


def test_every_policy_and_the_order(tmp_path: Path) -> None:
    policies = build(
        tmp_path,
        """mx_auth {
    local_policy {
        min_tls_level authenticated
        min_mx_level mtasts
    }
    dnssec
    mtasts {
        cache ram
    }
    dane { }
    debug yes
}
""",
    )
    # As configured, local_policy last (it judges the levels the others reached).
    assert [type(p) for p in policies] == [DNSSEC, MTASTS, DANE, LocalPolicy]
    local = policies[-1]
    assert isinstance(local, LocalPolicy)
    assert (local.min_tls, local.min_mx) == (TLSLevel.AUTHENTICATED, MXLevel.MTASTS)
    sts = policies[1]
    assert isinstance(sts, MTASTS) and sts.cache.directory is None and sts.port == 443


def test_defaults(tmp_path: Path) -> None:
    sts, local = build(tmp_path, "mx_auth {\n    mtasts\n    local_policy\n}\n")
    assert isinstance(sts, MTASTS) and isinstance(local, LocalPolicy)
    assert sts.cache.directory == f"{tmp_path}/state/mtasts_cache"
    assert (local.min_tls, local.min_mx) == (TLSLevel.ENCRYPTED, MXLevel.NONE)
    (off,) = build(tmp_path, "mx_auth {\n    local_policy off\n}\n")
    assert isinstance(off, LocalPolicy) and (off.min_tls, off.min_mx) == (
        TLSLevel.NONE,
        MXLevel.NONE,
    )
    (absolute,) = build(tmp_path, "mx_auth {\n    mtasts {\n        fs_dir /var/sts\n    }\n}\n")
    assert isinstance(absolute, MTASTS) and absolute.cache.directory == "/var/sts"
    assert build(tmp_path, "mx_auth { }\n") == []


def test_test_only_flags_reach_mtasts(tmp_path: Path, ca_file: str) -> None:
    (node,) = parse_text("mx_auth {\n    mtasts\n}\n", "t.conf")
    c = container(tmp_path, flags=DebugFlags(mtasts_port=8443, mtasts_ca=ca_file))
    (sts,) = parse_mx_auth(node, c)
    assert isinstance(sts, MTASTS) and sts.port == 8443


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    import trustme

    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def test_named_block(tmp_path: Path) -> None:
    top = "mx_auth outbound {\n    dnssec\n    local_policy off\n}\n"
    c = container(tmp_path, top)
    (node,) = parse_text("mx_auth &outbound\n", "t.conf")
    first = parse_mx_auth(node, c)
    assert [type(p) for p in first] == [DNSSEC, LocalPolicy]
    # A second target using it gets the same policy objects (one cache).
    assert parse_mx_auth(node, c) == first


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("mx_auth {\n    starttls_everywhere\n}\n", "t.conf:2: mx_auth: unknown policy"),
        ("mx_auth {\n    dane\n    dane\n}\n", "t.conf:3: mx_auth: dane is given twice"),
        ("mx_auth {\n    dane yes\n}\n", "t.conf:2: dane: the policy offers no settings"),
        ("mx_auth {\n    dnssec {\n        x 1\n    }\n}\n", "t.conf:2: dnssec: the policy"),
        ("mx_auth {\n    mtasts on\n}\n", "t.conf:2: mtasts: no arguments allowed"),
        (
            "mx_auth {\n    mtasts {\n        cache disk\n    }\n}\n",
            "t.conf:3: cache: expected one of: fs, ram",
        ),
        (
            "mx_auth {\n    mtasts {\n        max_age 1\n    }\n}\n",
            "t.conf:3: unexpected directive: max_age",
        ),
        (
            "mx_auth {\n    local_policy {\n        min_tls_level high\n    }\n}\n",
            "t.conf:3: min_tls_level: expected one of: none, encrypted, authenticated",
        ),
        (
            "mx_auth {\n    local_policy {\n        min_mx_level dane\n    }\n}\n",
            "t.conf:3: min_mx_level: expected one of: none, mtasts, dnssec",
        ),
        ("mx_auth {\n    local_policy on\n}\n", "t.conf:2: local_policy: the only argument"),
        ("mx_auth {\n    debug maybe\n}\n", "t.conf:2: debug:"),
        ("mx_auth yes\n", "t.conf:1: mx_auth: takes a block of policies, or one &NAME"),
        ("mx_auth &a &b\n", "t.conf:1: mx_auth: takes a block"),
        ("mx_auth &nowhere\n", "t.conf:1: unknown configuration block: nowhere"),
    ],
)
def test_mistakes(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build(tmp_path, text)
    assert str(exc.value).startswith(error), str(exc.value)


# -- local_policy judging levels ---------------------------------------------------------


MX = MXCandidate("example.test", "mx.example.test", 10)
PLAIN = TLSState("192.0.2.1", False, error="no STARTTLS")


async def test_local_policy_minimums() -> None:
    default = await LocalPolicy().for_domain("example.test")
    assert default.report is None
    assert await default.check_mx(MX, MXLevel.NONE) is MXLevel.NONE
    with pytest.raises(SMTPError) as refused:
        await default.check_conn(MX, MXLevel.NONE, PLAIN, TLSLevel.NONE)
    assert str(refused.value) == (
        "451 4.7.1 TLS is not available or unauthenticated but required: no STARTTLS"
    )
    assert refused.value.reason == "no STARTTLS"
    assert await default.check_conn(MX, MXLevel.NONE, PLAIN, TLSLevel.ENCRYPTED) is (
        TLSLevel.ENCRYPTED
    )

    strict = LocalPolicy(TLSLevel.AUTHENTICATED, MXLevel.DNSSEC)
    for level in (MXLevel.NONE, MXLevel.MTASTS):
        with pytest.raises(SMTPError) as refused:
            await strict.check_mx(MX, level)
        assert str(refused.value) == "451 4.7.0 Failed to establish the MX record authenticity"
    assert await strict.check_mx(MX, MXLevel.DNSSEC) is MXLevel.DNSSEC
    with pytest.raises(SMTPError):
        await strict.check_conn(MX, MXLevel.DNSSEC, PLAIN, TLSLevel.ENCRYPTED)
    assert await strict.check_conn(MX, MXLevel.DNSSEC, PLAIN, TLSLevel.AUTHENTICATED) is (
        TLSLevel.AUTHENTICATED
    )

    off = LocalPolicy(TLSLevel.NONE, MXLevel.NONE)
    assert await off.check_conn(MX, MXLevel.NONE, PLAIN, TLSLevel.NONE) is TLSLevel.NONE


async def test_dnssec_trusts_only_a_loopback_resolver(tmp_path: Path) -> None:
    secure = MXCandidate("example.test", "mx.example.test", 10, dnssec=True)
    (local,) = build(tmp_path, "mx_auth {\n    dnssec\n}\n")
    assert await (await local.for_domain("example.test")).check_mx(secure, MXLevel.NONE) is (
        MXLevel.DNSSEC
    )
    assert await (await local.for_domain("example.test")).check_mx(MX, MXLevel.NONE) is (
        MXLevel.NONE
    )
    (node,) = parse_text("mx_auth {\n    dnssec\n    dane\n}\n", "t.conf")
    remote = container(tmp_path, flags=DebugFlags(dns_override="192.0.2.53:53"))
    dnssec, dane = parse_mx_auth(node, remote)
    assert await (await dnssec.for_domain("example.test")).check_mx(secure, MXLevel.NONE) is (
        MXLevel.NONE
    )
    # DANE is off too: no TLSA lookup, nothing required.
    domain = await dane.for_domain("example.test")
    assert await domain.check_mx(secure, MXLevel.NONE) is MXLevel.NONE
    assert await domain.check_conn(secure, MXLevel.NONE, PLAIN, TLSLevel.NONE) is TLSLevel.NONE


async def test_every_policy_keeps_the_contract(tmp_path: Path) -> None:
    """What target.remote relies on: `Policy.for_domain` gives a `DomainPolicy`."""
    text = "mx_auth {\n    dane\n    dnssec\n    local_policy\n    mtasts\n}\n"
    built = build(tmp_path, text)
    assert all(isinstance(p, Policy) for p in built)
    assert [type(p) for p in built] == [DANE, DNSSEC, MTASTS, LocalPolicy]
    for p in built:
        if not isinstance(p, MTASTS):  # it would look its TXT record up: made below
            assert isinstance(await p.for_domain("example.test"), DomainPolicy)
    sts = STSDomain("example.test", None, PolicyReport("no-policy-found", "example.test"))
    assert isinstance(sts, DomainPolicy)
