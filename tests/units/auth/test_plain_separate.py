"""auth.plain_separate: user tables decide who exists, pass providers check passwords.

Password providers and failing tables are test modules registered here, so
each outcome (accept, refuse, temporary failure, crash) is injected
deterministically; one test uses a real `pass_table` over `table.file`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kittiwake.auth import hashing
from kittiwake.auth.base import InvalidCredentials, PasswordAuth, TemporaryAuthFailure
from kittiwake.auth.plain_separate import PlainSeparate
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.module import Module, register, unregister

FAKE_AUTH = "auth.test_ps_fake"
BROKEN_TABLE = "table.test_ps_broken"


class FakeAuth(Module):
    """`test_ps_fake ok|invalid|temporary|crash`: a provider with a fixed answer."""

    calls: list[tuple[str, str, str]] = []

    def configure(self, cfg: Directives) -> None:
        (self.mode,) = self.inline_args
        cfg.finish()

    async def auth_plain(self, username: str, password: str) -> None:
        FakeAuth.calls.append((self.mode, username, password))
        if self.mode == "invalid":
            raise InvalidCredentials("no")
        if self.mode == "temporary":
            raise TemporaryAuthFailure("backend down")
        if self.mode == "crash":
            raise RuntimeError("bug")


class BrokenTable(Module):
    """A table whose every lookup fails, like a database that went away."""

    async def lookup(self, key: str) -> str | None:
        raise RuntimeError("table backend down")


@pytest.fixture(autouse=True, scope="module")
def _fakes_registered() -> Iterator[None]:
    register(FAKE_AUTH)(FakeAuth)
    register(BROKEN_TABLE)(BrokenTable)
    yield
    unregister(FAKE_AUTH)
    unregister(BROKEN_TABLE)


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    FakeAuth.calls = []


class Builder:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.containers: list[Container] = []

    def configure(self, body: str, prelude: str = "") -> tuple[Container, Any]:
        text = f"{prelude}auth.plain_separate ps {{\n{body}}}\n"
        container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(self.dir))
        container.parse_globals()
        module = container.instance("ps", Node("test", ["ps"]), PasswordAuth)
        return container, module

    async def start(self, body: str, prelude: str = "") -> Any:
        container, module = self.configure(body, prelude)
        self.containers.append(container)
        await container.start()
        return module

    def error(self, body: str) -> str:
        with pytest.raises(ConfigError) as info:
            self.configure(body)
        return str(info.value)


@pytest.fixture
async def build(tmp_path: Path) -> AsyncIterator[Builder]:
    builder = Builder(tmp_path)
    yield builder
    for container in builder.containers:
        await container.stop()


async def test_user_tables_then_password(build: Builder) -> None:
    ps = await build.start(
        "  user static { entry alice@example.org x }\n"
        '  user static { entry bob "" }\n'
        "  pass test_ps_fake ok\n"
    )
    assert isinstance(ps, PlainSeparate)
    await ps.auth_plain("alice@example.org", "pw")
    await ps.auth_plain("bob", "pw")  # found with an empty value is found
    with pytest.raises(InvalidCredentials, match="user not found in tables"):
        await ps.auth_plain("carol", "pw")
    # The name goes through as the endpoint normalised it: no folding here.
    with pytest.raises(InvalidCredentials):
        await ps.auth_plain("Alice@example.org", "pw")
    assert [c[1] for c in FakeAuth.calls] == ["alice@example.org", "bob"]


async def test_without_user_tables_every_name_reaches_the_providers(build: Builder) -> None:
    ps = await build.start("  pass test_ps_fake ok\n")
    await ps.auth_plain("anyone", "pw")
    assert FakeAuth.calls == [("ok", "anyone", "pw")]
    assert await ps.lookup("anyone") == ""


async def test_providers_in_order_first_success_wins(build: Builder) -> None:
    ps = await build.start(
        "  pass test_ps_fake invalid\n  pass test_ps_fake ok\n  pass test_ps_fake crash\n"
    )
    await ps.auth_plain("u", "p")
    assert [c[0] for c in FakeAuth.calls] == ["invalid", "ok"]


async def test_all_refuse(build: Builder) -> None:
    ps = await build.start("  pass test_ps_fake invalid\n  pass test_ps_fake invalid\n")
    with pytest.raises(InvalidCredentials):
        await ps.auth_plain("u", "p")
    assert len(FakeAuth.calls) == 2


@pytest.mark.parametrize("failing", ["temporary", "crash"])
async def test_a_provider_that_could_not_decide_makes_it_temporary(
    build: Builder, failing: str
) -> None:
    # maddy would return the last provider's error (here: wrong password).
    ps = await build.start(f"  pass test_ps_fake {failing}\n  pass test_ps_fake invalid\n")
    with pytest.raises(TemporaryAuthFailure):
        await ps.auth_plain("u", "p")


async def test_user_table_failure_is_temporary(build: Builder) -> None:
    ps = await build.start("  user test_ps_broken\n  pass test_ps_fake ok\n")
    with pytest.raises(TemporaryAuthFailure):
        await ps.auth_plain("u", "p")
    assert FakeAuth.calls == []
    with pytest.raises(RuntimeError):
        await ps.lookup("u")  # as a table, the error is the caller's to handle


async def test_no_pass_provider_never_authenticates(build: Builder) -> None:
    # maddy accepts any password here; kittiwake refuses everyone.
    ps = await build.start("  user static { entry alice x }\n")
    with pytest.raises(InvalidCredentials):
        await ps.auth_plain("alice", "anything")


async def test_as_a_table(build: Builder) -> None:
    ps = await build.start(
        "  user static { entry alice x }\n  user &more\n  pass test_ps_fake ok\n",
        prelude="table.static more {\n  entry bob y\n}\n",
    )
    assert await ps.lookup("alice") == ""
    assert await ps.lookup("bob") == ""
    assert await ps.lookup("carol") is None


async def test_with_a_real_pass_table(build: Builder, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "alice: " + hashing.hash_password("pw", "bcrypt", hashing.HashOptions(bcrypt_cost=4)) + "\n"
    )
    ps = await build.start(
        f"  user static {{ entry alice x }}\n  pass pass_table file {passwd}\n  debug yes\n"
    )
    await ps.auth_plain("alice", "pw")
    with pytest.raises(InvalidCredentials):
        await ps.auth_plain("alice", "wrong")


def test_configuration_errors(build: Builder) -> None:
    assert "unexpected directive: users" in build.error("  users static {}\n")
    message = build.error("  pass table.static {}\n")
    assert message.endswith("cannot be used here: it is not an authentication provider")
    assert "unknown module: nosuch" in build.error("  pass nosuch\n")
    text = "auth.plain_separate ps extra {\n}\n"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf")
    container.parse_globals()
    (node,) = parse_text("auth plain_separate x\n")
    with pytest.raises(ConfigError, match="inline arguments are not used"):
        container.module_from_node(node, PasswordAuth, "auth")
