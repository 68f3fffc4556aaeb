"""`modify.dkim` built from configuration text through a real `Container`
(docs/modify.md, "dkim"): configuration errors, keys made at start only,
which messages are signed and with which domain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import dkim as dkimpy
import pytest

from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.message import ConnInfo, MsgMeta, SMTPOptions
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.modify.base import Modifier
from kittiwake.modify.dkim import DKIMSigner
from kittiwake.module import Endpoint, register, unregister

PROBE = "kw_dkim_probe"


class Probe(Endpoint):
    def configure(self, cfg: Directives) -> None:
        self.mods: list[Modifier] = cfg.modules("modify", Modifier, "modify")
        cfg.finish()

    def addresses(self) -> list[str]:
        return []


@pytest.fixture(autouse=True, scope="module")
def _probe() -> Iterator[None]:
    register(PROBE)(Probe)
    yield
    unregister(PROBE)


def _container(tmp: Path, line: str) -> Container:
    text = f"state_dir {tmp}/state\n{PROBE} {{\n    modify {line}\n}}\n"
    return Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp))


Build = Callable[[str], Awaitable[DKIMSigner]]


@pytest.fixture
async def build(tmp_path: Path) -> AsyncIterator[Build]:
    made: list[Container] = []

    async def make(line: str) -> DKIMSigner:
        container = _container(tmp_path, line)
        container.build()
        container.prepare_dirs()
        await container.start()
        made.append(container)
        (probe,) = container.endpoints
        assert isinstance(probe, Probe)
        (signer,) = probe.mods
        assert isinstance(signer, DKIMSigner)
        return signer

    yield make
    for c in made:
        await c.stop()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("dkim example.org", "at least two arguments required"),
        ("dkim {\n selector s\n}", "at least one domain is needed"),
        ("dkim {\n domains example.org\n}", "selector is not specified"),
        (
            "dkim a.example b.example s {\n sign_subdomains yes\n}",
            "only one domain is supported when sign_subdomains is enabled",
        ),
        (
            "dkim example.org s {\n oversign_fields Subject\n sign_fields To\n}",
            "From must be in oversign_fields or sign_fields",
        ),
        ("dkim example.org s {\n require_sender_match off auth\n}", "off cannot be combined"),
        ("dkim example.org s {\n require_sender_match sender\n}", "unknown value 'sender'"),
        ("dkim example.org s {\n hash sha1\n}", "expected one of: sha256"),
        ("dkim example.org s {\n newkey_algo rsa1024\n}", "expected one of: rsa2048"),
        ("dkim example.org s {\n header_canon nofws\n}", "expected one of: relaxed, simple"),
    ],
)
def test_configuration_errors(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _container(tmp_path, line).build()


def test_a_broken_key_is_an_error_at_its_line_and_config_check_makes_no_key(
    tmp_path: Path,
) -> None:
    _container(tmp_path, "dkim example.org s").build()  # what config check does
    assert not (tmp_path / "state" / "dkim_keys").exists()
    (tmp_path / "bad.key").write_text("junk")
    container = _container(tmp_path, f"dkim example.org s {{\n key_path {tmp_path}/bad.key\n}}")
    with pytest.raises(ConfigError) as info:
        container.build()
    assert str(info.value).startswith("t.conf:4: modify.dkim: ")
    assert "not a PEM private key" in str(info.value)


def _meta(*, smtputf8: bool = False, user: str | None = None) -> MsgMeta:
    return MsgMeta(
        id="0f3a91c2",
        conn=ConnInfo(remote_ip="192.0.2.1", auth_user=user),
        smtp=SMTPOptions(smtputf8=smtputf8),
    )


async def _sign(
    signer: DKIMSigner, sender: str, head: bytes, meta: MsgMeta | None = None
) -> Header:
    header = Header.parse(head)
    body = Buffer.ram()
    await body.write(b"Hello\r\n")
    await body.finish()
    state = await signer.modifier_state(meta or _meta())
    assert await state.rewrite_sender(sender) == sender
    await state.rewrite_body(header, body)
    return header


HEAD = b"From: alice@example.org\r\nSubject: hi\r\n"


def _d(header: Header) -> str | None:
    value = header.get("DKIM-Signature")
    if value is None:
        return None
    tags = dkimpy.util.parse_tag_value(value.encode())
    return str(tags[b"d"].decode())


async def test_domain_choice(build: Build) -> None:
    signer = await build("dkim example.org example.net sel")
    assert _d(await _sign(signer, "alice@Example.ORG", HEAD)) == "example.org"
    assert _d(await _sign(signer, "bob@example.net", HEAD)) == "example.net"
    assert _d(await _sign(signer, "", HEAD)) == "example.org"  # <>: the first domain
    assert _d(await _sign(signer, "postmaster", HEAD)) == "example.org"
    assert _d(await _sign(signer, "eve@other.example", HEAD)) is None  # no key: unsigned
    assert _d(await _sign(signer, "eve@sub.example.org", HEAD)) is None


async def test_sign_subdomains_and_idna(build: Build) -> None:
    signer = await build("dkim bücher.example sel {\n sign_subdomains yes\n}")
    assert _d(await _sign(signer, "a@mail.bücher.example", HEAD)) == "xn--bcher-kva.example"
    header = await _sign(signer, "a@bücher.example", HEAD, _meta(smtputf8=True))
    assert _d(header) == "bücher.example"  # SMTPUTF8 messages keep U-labels


@pytest.mark.parametrize(
    ("match", "sender", "user", "from_", "signed"),
    [
        ("envelope", "alice@example.org", None, "Alice <ALICE@example.org>", True),
        ("envelope", "bob@example.org", None, "alice@example.org", False),
        ("auth", "x@example.org", "alice@example.org", "alice@example.org", True),
        ("auth", "x@example.org", "alice", "alice@example.org", True),
        ("auth", "x@example.org", "bob", "alice@example.org", False),
        ("auth", "x@example.org", None, "alice@example.org", False),
        ("envelope auth", "alice@example.org", "alice", "alice@example.org", True),
        ("envelope", "alice@example.org", None, "alice@example.org, bob@example.org", False),
        ("envelope", "alice@example.org", None, "undisclosed:;", False),
    ],
)
async def test_require_sender_match(
    build: Build, match: str, sender: str, user: str | None, from_: str, signed: bool
) -> None:
    signer = await build(f"dkim example.org sel {{\n require_sender_match {match}\n}}")
    head = f"From: {from_}\r\nSubject: hi\r\n".encode()
    header = await _sign(signer, sender, head, _meta(user=user))
    assert (header.get("DKIM-Signature") is not None) is signed


async def test_allow_multiple_from_compares_the_first(build: Build) -> None:
    signer = await build(
        "dkim example.org sel {\n require_sender_match envelope\n allow_multiple_from yes\n}"
    )
    head = b"From: alice@example.org, bob@example.org\r\nSubject: hi\r\n"
    assert _d(await _sign(signer, "alice@example.org", head)) == "example.org"
    assert _d(await _sign(signer, "bob@example.org", head)) is None


async def test_no_expiry(build: Build) -> None:
    signer = await build("dkim example.org sel {\n sig_expiry 0\n}")
    value = (await _sign(signer, "a@example.org", HEAD)).get("DKIM-Signature")
    assert value is not None and "x=" not in value and "t=" in value
