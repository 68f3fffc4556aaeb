"""The module system: registration, named instances, references, inheritance,
configuration errors with their lines, and the start/stop order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest

from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.module import Endpoint, Module, capability, register, unregister

EVENTS: list[str] = []


@capability("greeter")
@runtime_checkable
class Greeter(Protocol):
    def greet(self) -> str: ...


class GreeterModule(Module):
    def configure(self, cfg: Directives) -> None:
        self.text = cfg.string("text", default="hi")
        self.uses = cfg.modules("use", Greeter, "test")
        self.fail_start = cfg.boolean("fail_start", default=False)
        self.fail_stop = cfg.boolean("fail_stop", default=False)
        cfg.finish()
        EVENTS.append(f"configure {self.instance_name or self.text}")

    def greet(self) -> str:
        return self.text + "".join("+" + u.greet() for u in self.uses)

    async def start(self) -> None:
        if self.fail_start:
            raise OSError("cannot start")
        EVENTS.append(f"start {self.instance_name or self.text}")

    async def stop(self) -> None:
        EVENTS.append(f"stop {self.instance_name or self.text}")
        if self.fail_stop:
            raise OSError("cannot stop")


class PlainModule(Module):
    """Provides no capability: referencing it as a greeter is an error."""


class FakeEndpoint(Endpoint):
    def configure(self, cfg: Directives) -> None:
        self.hostname = cfg.string("hostname", inherit=True, required=True)
        self.debug = cfg.boolean("debug", default=False, inherit=True)
        self.greeters = cfg.modules("greeter", Greeter, "test")
        self.timeout = cfg.duration("read_timeout", default=600.0)
        self.size = cfg.size("max_message_size", default=32 * 1024 * 1024)
        self.count = cfg.integer("max_received", default=50, minimum=1)
        self.rest = cfg.finish(allow_unknown=self.hostname == "forwarding")

    def addresses(self) -> list[str]:
        return list(self.inline_args)

    async def start(self) -> None:
        EVENTS.append("start endpoint")

    async def stop(self) -> None:
        EVENTS.append("stop endpoint")


@pytest.fixture(autouse=True)
def modules() -> Iterator[None]:
    register("test.greeter")(GreeterModule)
    register("test.plain")(PlainModule)
    register("test.endpoint")(FakeEndpoint)
    EVENTS.clear()
    yield
    for name in ("test.greeter", "test.plain", "test.endpoint"):
        unregister(name)


def build(text: str, tmp_path: Path | None = None) -> Container:
    c = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path or "/x"))
    c.build()
    return c


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        build(text)
    return str(info.value)


def test_endpoint_reads_its_directives_and_inherits_globals() -> None:
    c = build(
        "hostname mx.example.org\n"
        "debug yes\n"
        "test.endpoint tcp://127.0.0.1:2525 tcp://[::1]:2525 {\n"
        "  read_timeout 1m 30s\n"
        "  max_message_size 3M 5K\n"
        "}\n"
    )
    (ep,) = c.endpoints
    assert isinstance(ep, FakeEndpoint)
    assert ep.hostname == "mx.example.org"
    assert ep.debug is True
    assert ep.timeout == 90.0
    assert ep.size == 3 * 1024 * 1024 + 5 * 1024
    assert ep.count == 50
    assert ep.addresses() == ["tcp://127.0.0.1:2525", "tcp://[::1]:2525"]


def test_block_value_beats_global_and_explicit_no_is_inherited() -> None:
    c = build(
        "hostname global.example\ndebug no\n"
        "test.endpoint tcp://127.0.0.1:1 { hostname local.example }\n"
    )
    ep = c.endpoints[0]
    assert isinstance(ep, FakeEndpoint)
    assert (ep.hostname, ep.debug) == ("local.example", False)


def test_missing_required_directive_is_reported_at_block_header() -> None:
    assert error_of("\n\ntest.endpoint tcp://127.0.0.1:1 {\n}\n") == (
        "t.conf:3: missing required directive: hostname"
    )


def test_named_block_is_configured_once_and_shared() -> None:
    c = build(
        "hostname h\n"
        "test.greeter g1 { text one }\n"
        "test.endpoint tcp://127.0.0.1:1 { greeter &g1 }\n"
        "test.endpoint tcp://127.0.0.1:2 { greeter &g1 }\n"
    )
    a, b = c.endpoints
    assert isinstance(a, FakeEndpoint) and isinstance(b, FakeEndpoint)
    assert a.greeters[0] is b.greeters[0]
    assert EVENTS.count("configure g1") == 1


def test_aliases_name_the_same_instance() -> None:
    c = build(
        "hostname h\n"
        "test.greeter g1 g2 g3 { text one }\n"
        "test.endpoint tcp://127.0.0.1:1 { greeter &g3\n greeter &g1 }\n"
    )
    ep = c.endpoints[0]
    assert isinstance(ep, FakeEndpoint)
    assert ep.greeters[0] is ep.greeters[1]


def test_block_without_name_is_named_after_its_module() -> None:
    c = build(
        "hostname h\ntest.greeter { }\ntest.endpoint tcp://127.0.0.1:1 { greeter &test.greeter }\n"
    )
    ep = c.endpoints[0]
    assert isinstance(ep, FakeEndpoint)
    assert ep.greeters[0].greet() == "hi"


def test_inline_definitions_use_the_namespace_first() -> None:
    c = build(
        "hostname h\n"
        "test.endpoint tcp://127.0.0.1:1 {\n"
        "  greeter greeter { text a }\n"
        "  greeter test.greeter { text b }\n"
        "  greeter greeter\n"
        "}\n"
    )
    ep = c.endpoints[0]
    assert isinstance(ep, FakeEndpoint)
    assert [g.greet() for g in ep.greeters] == ["a", "b", "hi"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "hostname h\ntest.greeter g1 { }\ntest.greeter g1 { }\n"
            "test.endpoint tcp://127.0.0.1:1 { greeter &g1 }\n",
            "t.conf:3: config block named g1 already exists",
        ),
        (
            "hostname h\ntest.greeter g1 g2 { }\ntest.greeter g2 { }\n"
            "test.endpoint tcp://127.0.0.1:1 { greeter &g1 }\n",
            "t.conf:3: config block named g2 already exists",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n greeter &nope\n}\n",
            "t.conf:3: unknown configuration block: nope",
        ),
        (
            "hostname h\ntest.greeter g1 { }\n\ntest.endpoint tcp://127.0.0.1:1 { }\n",
            "t.conf:2: unused configuration block g1 (test.greeter)",
        ),
        (
            "hostname h\ntest.plain p { }\ntest.endpoint tcp://127.0.0.1:1 {\n greeter &p\n}\n",
            "t.conf:4: greeter: module test.plain (p) cannot be used here: it is not a greeter",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n greeter plain\n}\n",
            "t.conf:3: greeter: module test.plain (plain) cannot be used here: it is not a greeter",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n greeter nope\n}\n",
            "t.conf:3: unknown module: nope (namespace: test)",
        ),
        (
            "hostname h\ntest.greeter g { }\n"
            "test.endpoint tcp://127.0.0.1:1 {\n greeter &g extra\n}\n",
            "t.conf:4: greeter: exactly one argument is required to use an existing config "
            "block (&name), and no block",
        ),
        (
            "hostname h\ntest.greeter g { }\n"
            "test.endpoint tcp://127.0.0.1:1 {\n greeter &g { text x }\n}\n",
            "t.conf:4: greeter: exactly one argument is required to use an existing config "
            "block (&name), and no block",
        ),
        (
            "hostname h\ntest.greeter g1 { use &g2 }\ntest.greeter g2 {\n use &g1\n}\n"
            "test.endpoint tcp://127.0.0.1:1 { greeter &g1 }\n",
            "t.conf:4: reference cycle: g1 refers back to itself",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n greeter endpoint\n}\n",
            "t.conf:3: endpoint is an endpoint and cannot be used here",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n  bogus 1\n}\n",
            "t.conf:3: unexpected directive: bogus",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n"
            " read_timeout 1m\n read_timeout 2m\n}\n",
            "t.conf:4: duplicate directive: read_timeout",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n read_timeout 10\n}\n",
            "t.conf:3: read_timeout: invalid duration '10': use a number with a unit "
            "(h, m, s, ms, us, ns)",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n max_received 0\n}\n",
            "t.conf:3: max_received: must be at least 1, got 0",
        ),
        (
            "hostname h\ntest.endpoint tcp://127.0.0.1:1 {\n debug { }\n}\n",
            "t.conf:3: debug: unexpected block",
        ),
        ("hostname h\ntest.greeter g { }\n", "t.conf: at least one endpoint should be configured"),
        (
            "hostname h\nfrobnicate x { }\ntest.endpoint tcp://127.0.0.1:1 { }\n",
            "t.conf:2: unknown module or global directive: frobnicate",
        ),
        (
            "hostname h\nhostname i\ntest.endpoint tcp://127.0.0.1:1 { }\n",
            "t.conf:2: duplicate global directive: hostname",
        ),
        (
            "debug maybe\ntest.endpoint tcp://127.0.0.1:1 { }\n",
            "t.conf:1: debug: invalid boolean 'maybe': use yes or no",
        ),
        (
            "hostname h\nlog off stderr\ntest.endpoint tcp://127.0.0.1:1 { }\n",
            "t.conf:2: log: 'off' cannot be combined with other targets",
        ),
        (
            "hostname h\nlog_format xml\ntest.endpoint tcp://127.0.0.1:1 { }\n",
            "t.conf:2: log_format: expected one of: text, json",
        ),
        (
            "hostname h\ntest.greeter g\ntest.endpoint tcp://127.0.0.1:1 { greeter &g }\n",
            "t.conf:2: test.greeter: a configuration block { ... } is required",
        ),
    ],
)
def test_configuration_errors_name_file_and_line(text: str, message: str) -> None:
    assert error_of(text) == message


def test_globals_are_typed_and_paths_resolve_against_the_startup_directory(
    tmp_path: Path,
) -> None:
    c = build(
        "state_dir data\nhostname mx.example.org\nlog_format json\n"
        "test.endpoint tcp://127.0.0.1:1 { }\n",
        tmp_path,
    )
    g = c.globals
    assert g.state_dir == str(tmp_path / "data")
    assert g.runtime_dir == str(tmp_path / "data" / "run")
    assert (g.hostname, g.log_format, g.debug) == ("mx.example.org", "json", False)
    assert c.state_path("credentials.db") == str(tmp_path / "data" / "credentials.db")


def test_default_directories(tmp_path: Path) -> None:
    c = build("hostname h\ntest.endpoint tcp://127.0.0.1:1 { }\n", tmp_path)
    assert c.globals.state_dir == str(tmp_path / "kittiwake-data")
    assert c.globals.runtime_dir == str(tmp_path / "kittiwake-data" / "run")
    c.prepare_dirs()
    assert (os.stat(c.globals.state_dir).st_mode & 0o777) == 0o700
    assert os.path.isdir(c.globals.runtime_dir)


async def test_modules_start_in_dependency_order_and_stop_in_reverse() -> None:
    c = build(
        "hostname h\n"
        "test.greeter outer { use &inner }\n"
        "test.greeter inner { text in }\n"
        "test.endpoint tcp://127.0.0.1:1 { greeter &outer }\n"
    )
    EVENTS.clear()
    await c.start()
    assert EVENTS == ["start inner", "start outer", "start endpoint"]
    EVENTS.clear()
    await c.stop()
    assert EVENTS == ["stop endpoint", "stop outer", "stop inner"]


async def test_a_failed_start_stops_what_had_started() -> None:
    c = build(
        "hostname h\n"
        "test.greeter a { }\n"
        "test.greeter b { fail_start yes }\n"
        "test.endpoint tcp://127.0.0.1:1 { greeter &a\n greeter &b }\n"
    )
    EVENTS.clear()
    with pytest.raises(OSError, match="cannot start"):
        await c.start()
    assert EVENTS == ["start a", "stop b", "stop a"]


async def test_a_failed_stop_does_not_keep_others_running() -> None:
    c = build(
        "hostname h\nlog off\n"
        "test.greeter a { }\n"
        "test.greeter b { fail_stop yes }\n"
        "test.endpoint tcp://127.0.0.1:1 { greeter &a\n greeter &b }\n"
    )
    await c.start()
    EVENTS.clear()
    await c.stop()
    assert EVENTS == ["stop endpoint", "stop b", "stop a"]


def test_unknown_directives_can_be_forwarded() -> None:
    c = build("test.endpoint tcp://127.0.0.1:1 {\n hostname forwarding\n deliver_to x\n}\n")
    ep = c.endpoints[0]
    assert isinstance(ep, FakeEndpoint)
    assert [(n.name, n.args, n.line) for n in ep.rest] == [("deliver_to", ["x"], 3)]
