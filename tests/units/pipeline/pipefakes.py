"""Fake modules for pipeline tests, registered as real modules (like maddy's testutils).

* `target.test NAME` / `target.test_partial NAME`: delivery targets that
  record what they get; errors are injected per start, per recipient, per
  body, per recipient at body time (partial), per commit, per abort.
* `check.test NAME`: a check whose per-stage results are scripted from the
  test and whose calls are recorded per state.
* `modify.test NAME { sender A B; rcpt A B C; header N V }`: a modifier.
* `table.test_broken`: a table whose lookups fail.
* `kw_pipe`: an endpoint that builds its pipeline like the real ones
  (unknown directives -> `Pipeline(..., first_pipeline=True)`).

Every fake is found by its name in `FAKES` (the block name, or the first
inline argument), and appends to `EVENTS`, so a test can assert the order of
calls across modules.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kittiwake.checks.base import CheckResult
from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import SMTPError
from kittiwake.message import ConnInfo, MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Endpoint, Module, register, unregister
from kittiwake.pipeline.pipeline import MessageDelivery, Pipeline
from kittiwake.targets.base import StatusCollector

FAKES: dict[str, Any] = {}
EVENTS: list[str] = []

FIXED_NOW = dt.datetime(2024, 3, 5, 10, 0, 0, tzinfo=dt.UTC)


def err(code: int = 550, enh: tuple[int, int, int] = (5, 1, 1), text: str = "No") -> SMTPError:
    return SMTPError(code, enh, text)


def _name(module: Module) -> str:
    return module.instance_name or (module.inline_args[0] if module.inline_args else "anon")


# --- targets ---------------------------------------------------------------------


@dataclass
class FakeDelivery:
    target: FakeTarget
    meta: MsgMeta
    mail_from: str
    rcpts: list[str] = field(default_factory=list)
    header: bytes | None = None
    data: bytes | None = None
    committed: bool = False
    aborted: int = 0

    async def add_rcpt(self, rcpt: str) -> None:
        EVENTS.append(f"{self.target.name} rcpt {rcpt}")
        error = self.target.rcpt_err.get(rcpt)
        if error is not None:
            raise error
        self.rcpts.append(rcpt)

    async def body(self, header: Header, body: Buffer) -> None:
        EVENTS.append(f"{self.target.name} body")
        if self.target.body_err is not None:
            raise self.target.body_err
        self._keep(header, body)

    def _keep(self, header: Header, body: Buffer) -> None:
        self.header = header.to_bytes()
        with body.open() as f:
            self.data = f.read()

    async def commit(self) -> None:
        EVENTS.append(f"{self.target.name} commit")
        if self.target.commit_err is not None:
            raise self.target.commit_err
        self.committed = True
        self.target.committed.append(self)

    async def abort(self) -> None:
        EVENTS.append(f"{self.target.name} abort")
        self.aborted += 1
        if self.target.abort_err is not None:
            raise self.target.abort_err


@dataclass
class FakePartialDelivery(FakeDelivery):
    async def body_non_atomic(self, status: StatusCollector, header: Header, body: Buffer) -> None:
        EVENTS.append(f"{self.target.name} body_non_atomic")
        if self.target.body_err is not None:
            raise self.target.body_err
        self._keep(header, body)
        for rcpt in self.rcpts:
            if rcpt in self.target.partial_err:
                status.set_status(rcpt, self.target.partial_err[rcpt])


@dataclass
class FakeOneStepDelivery(FakeDelivery):
    async def body_and_commit(self, header: Header, body: Buffer) -> None:
        EVENTS.append(f"{self.target.name} body_and_commit")
        if self.target.body_err is not None:
            raise self.target.body_err
        self._keep(header, body)
        if self.target.commit_err is not None:
            raise self.target.commit_err
        self.committed = True
        self.target.committed.append(self)


class FakeTarget(Module):
    partial = False
    one_step = False

    def configure(self, cfg: Directives) -> None:
        self.name = _name(self)
        cfg.finish()
        FAKES[self.name] = self
        self.start_err: Exception | None = None
        self.rcpt_err: dict[str, Exception] = {}
        self.body_err: Exception | None = None
        self.partial_err: dict[str, Exception | None] = {}
        self.commit_err: Exception | None = None
        self.abort_err: Exception | None = None
        self.started: list[FakeDelivery] = []
        self.committed: list[FakeDelivery] = []

    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> FakeDelivery:
        EVENTS.append(f"{self.name} start {mail_from}")
        if self.start_err is not None:
            raise self.start_err
        cls = FakePartialDelivery if self.partial else FakeDelivery
        if self.one_step:
            cls = FakeOneStepDelivery
        delivery = cls(self, meta, mail_from)
        self.started.append(delivery)
        return delivery


class FakePartialTarget(FakeTarget):
    partial = True


class FakeOneStepTarget(FakeTarget):
    one_step = True


# --- checks ----------------------------------------------------------------------

Scripted = CheckResult | Exception


class FakeCheckState:
    def __init__(self, check: FakeCheck, number: int) -> None:
        self.check = check
        self.number = number

    async def _answer(self, stage: str, arg: str, scripted: Scripted | None) -> CheckResult:
        check = self.check
        check.calls.append((self.number, stage, arg))
        EVENTS.append(f"{check.name} {stage} {arg}".rstrip())
        delay = check.delay.get(stage)
        if delay:
            await asyncio.sleep(delay)
            EVENTS.append(f"{check.name} {stage} done")
        check.finished.append(stage)
        if isinstance(scripted, Exception):
            raise scripted
        return scripted if scripted is not None else CheckResult()

    async def check_connection(self) -> CheckResult:
        return await self._answer("connection", "", self.check.connection)

    async def check_sender(self, mail_from: str) -> CheckResult:
        return await self._answer("sender", mail_from, self.check.sender)

    async def check_rcpt(self, rcpt: str) -> CheckResult:
        return await self._answer("rcpt", rcpt, self.check.rcpt.get(rcpt))

    async def check_body(self, header: Header, body: Buffer) -> CheckResult:
        self.check.seen_headers.append(header.to_bytes())
        return await self._answer("body", "", self.check.body)

    async def close(self) -> None:
        self.check.closed += 1


class FakeCheck(Module):
    def configure(self, cfg: Directives) -> None:
        self.name = _name(self)
        kind = cfg.optional_string("dmarc_input")
        if kind is not None:
            self.dmarc_input = kind
        cfg.finish()
        FAKES[self.name] = self
        self.connection: Scripted | None = None
        self.sender: Scripted | None = None
        self.rcpt: dict[str, Scripted] = {}
        self.body: Scripted | None = None
        self.state_err: Exception | None = None
        self.delay: dict[str, float] = {}
        self.calls: list[tuple[int, str, str]] = []
        self.finished: list[str] = []
        self.seen_headers: list[bytes] = []
        self.created = 0
        self.closed = 0

    async def check_state(self, meta: MsgMeta) -> FakeCheckState:
        if self.state_err is not None:
            raise self.state_err
        self.created += 1
        return FakeCheckState(self, self.created)

    def stages(self) -> list[tuple[str, str]]:
        return [(stage, arg) for _, stage, arg in self.calls]


# --- modifiers -------------------------------------------------------------------


class FakeModState:
    def __init__(self, mod: FakeModifier) -> None:
        self.mod = mod

    async def rewrite_sender(self, mail_from: str) -> str:
        EVENTS.append(f"{self.mod.name} sender {mail_from}")
        if "sender" in self.mod.errors:
            raise self.mod.errors["sender"]
        return self.mod.senders.get(mail_from, mail_from)

    async def rewrite_rcpt(self, rcpt: str) -> list[str]:
        EVENTS.append(f"{self.mod.name} rcpt {rcpt}")
        if "rcpt" in self.mod.errors:
            raise self.mod.errors["rcpt"]
        return list(self.mod.rcpts.get(rcpt, [rcpt]))

    async def rewrite_body(self, header: Header, body: Buffer) -> None:
        EVENTS.append(f"{self.mod.name} body")
        if "body" in self.mod.errors:
            raise self.mod.errors["body"]
        for name, value in self.mod.fields:
            header.add(name, value)

    async def close(self) -> None:
        self.mod.closed += 1


class FakeModifier(Module):
    def configure(self, cfg: Directives) -> None:
        self.name = _name(self)
        self.senders = {n.args[0]: n.args[1] for n in cfg.all("sender")}
        self.rcpts = {n.args[0]: list(n.args[1:]) for n in cfg.all("rcpt")}
        self.fields = [(n.args[0], n.args[1]) for n in cfg.all("header")]
        cfg.finish()
        FAKES[self.name] = self
        self.errors: dict[str, Exception] = {}
        self.state_err: Exception | None = None
        self.created = 0
        self.closed = 0

    async def modifier_state(self, meta: MsgMeta) -> FakeModState:
        if self.state_err is not None:
            raise self.state_err
        self.created += 1
        return FakeModState(self)


# --- tables ----------------------------------------------------------------------


class BrokenTable(Module):
    def configure(self, cfg: Directives) -> None:
        cfg.finish()
        self.calls = 0

    async def lookup(self, key: str) -> str | None:
        self.calls += 1
        raise OSError("database is down")


# --- the endpoint ----------------------------------------------------------------


class PipeProbe(Endpoint):
    def configure(self, cfg: Directives) -> None:
        hostname = cfg.string("hostname", default="mx.example.com", inherit=True)
        rest = cfg.finish(allow_unknown=True)
        self.pipeline = Pipeline(
            rest, self.container, block=cfg.node, hostname=hostname, first_pipeline=True
        )
        self.pipeline.clock = lambda: FIXED_NOW

    def addresses(self) -> list[str]:
        return []


MODULES: dict[str, type[Module]] = {
    "target.test": FakeTarget,
    "target.test_partial": FakePartialTarget,
    "target.test_one_step": FakeOneStepTarget,
    "check.test": FakeCheck,
    "modify.test": FakeModifier,
    "table.test_broken": BrokenTable,
    "kw_pipe": PipeProbe,
}


def register_all() -> None:
    for name, cls in MODULES.items():
        register(name)(cls)


def unregister_all() -> None:
    for name in MODULES:
        unregister(name)


# --- building and driving ----------------------------------------------------------


def build(text: str, tmp: Path, file: str = "t.conf") -> Pipeline:
    """Configure `text` (one kw_pipe endpoint) and return its pipeline."""
    container = Container(parse_text(text, file), config_file=file, cwd=str(tmp))
    container.build()
    endpoint = container.endpoints[0]
    assert isinstance(endpoint, PipeProbe)
    return endpoint.pipeline


def pipe(body: str, tmp: Path, *, before: str = "") -> Pipeline:
    """`kw_pipe { BODY }` with optional top-level blocks before it."""
    return build(f"{before}\nkw_pipe tcp://127.0.0.1:0 {{\n{body}\n}}\n", tmp)


def meta(sender: str = "sender@example.org", **kw: Any) -> MsgMeta:
    conn = kw.pop(
        "conn",
        ConnInfo(remote_ip="127.0.0.1", helo="mx.example.org", rdns="mx.example.org"),
    )
    return MsgMeta(id="0f3a91c2", conn=conn, original_from=sender, **kw)


async def buffer(data: bytes = b"foobar\r\n") -> Buffer:
    buf = Buffer.ram()
    await buf.write(data)
    await buf.finish()
    return buf


def header(text: bytes = b"From: a@example.org\r\nSubject: hi\r\n") -> Header:
    return Header.parse(text)


class Statuses:
    """A StatusCollector that insists on at most one call per recipient."""

    def __init__(self) -> None:
        self.got: dict[str, Exception | None] = {}

    def set_status(self, rcpt: str, error: Exception | None) -> None:
        assert rcpt not in self.got, f"second status for {rcpt}"
        self.got[rcpt] = error


async def deliver(
    pipeline: Pipeline,
    sender: str,
    rcpts: list[str],
    *,
    m: MsgMeta | None = None,
    hdr: Header | None = None,
    data: bytes = b"foobar\r\n",
) -> MessageDelivery:
    """A whole SMTP transaction that is expected to succeed."""
    delivery = await pipeline.start(m or meta(sender), sender)
    for rcpt in rcpts:
        await delivery.add_rcpt(rcpt)
    await delivery.body(hdr or header(), await buffer(data))
    await delivery.commit()
    return delivery
