"""Throw-away modules for end-to-end tests of the process around the endpoints.

`test.echo` is a real listening endpoint: it binds every `tcp://HOST:PORT`
address given as its arguments and answers each line with the same line.
That is enough to test the command line, readiness, signals and logging in
a real process before the SMTP endpoints exist. `test.table` is a named
block that does nothing, so references and unused blocks can be tested.

Importing this module registers them all (with `test.crash`, `test.hold`,
`test.check` and `test.dkim`, further down); only `launcher.py` does, so the real
server never sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from kittiwake.config.directives import Directives
from kittiwake.config.values import ListenAddress, parse_listen_address
from kittiwake.module import Endpoint, Module, register
from kittiwake.tables.base import Table


@register("test.table")
class FakeTable(Module):
    """A table that knows nothing; only its place in the configuration matters."""

    async def lookup(self, key: str) -> str | None:
        return None


@register("test.echo")
class EchoEndpoint(Endpoint):
    """Line echo over TCP.

    Directives: `grace DURATION` (how long `stop` waits for open connections,
    default the endpoint default of 10 s), `table MODULE` (any table, only
    resolved, never used) and `fail_on_start` (start raises an unexpected
    error, to test how the command reports bugs).
    """

    def configure(self, cfg: Directives) -> None:
        self.listen: list[ListenAddress] = []
        for arg in self.inline_args:
            try:
                address = parse_listen_address(arg)
            except ValueError as exc:
                raise cfg.node.error(f"{arg}: {exc}") from None
            if address.scheme != "tcp":
                raise cfg.node.error(f"{arg}: test.echo only listens on tcp://")
            self.listen.append(address)
        if not self.listen:
            raise cfg.node.error("test.echo: at least one listen address is required")
        self.grace = cfg.duration("grace", default=self.grace)
        self.table = cfg.module("table", Table, "table")
        self.fail_on_start = cfg.boolean("fail_on_start", default=False)
        cfg.finish()
        self._servers: list[asyncio.Server] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        if self.fail_on_start:
            raise RuntimeError("test.echo was asked to fail on start")
        for address in self.listen:
            server = await asyncio.start_server(self._accept, address.host, address.port)
            self._servers.append(server)

    def addresses(self) -> list[str]:
        found = []
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                found.append(f"tcp://{f'[{host}]' if ':' in host else host}:{port}")
        return found

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._sessions.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._sessions:
            self.log.info("waiting for open connections", count=len(self._sessions))
            await asyncio.wait(set(self._sessions), timeout=self.grace)
        for writer in list(self._writers):
            writer.write(b"bye\n")
            writer.close()
        for task in list(self._sessions):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()


class _CrashDelivery:
    """Accepts recipients, then fails with an error that carries no SMTP reply."""

    async def add_rcpt(self, rcpt: str) -> None:
        return None

    async def body(self, header: object, body: object) -> None:
        raise RuntimeError("crash target: simulated internal failure")

    async def commit(self) -> None:
        return None

    async def abort(self) -> None:
        return None


@register("test.crash")
class CrashTarget(Module):
    """A delivery target whose body stage raises: internal errors must become 451."""

    async def start_delivery(self, meta: object, mail_from: str) -> _CrashDelivery:
        return _CrashDelivery()


class _HoldDelivery:
    """Holds the body stage until a file exists, then succeeds (keeping nothing)."""

    def __init__(self, target: HoldTarget) -> None:
        self.target = target
        self.rcpts: list[str] = []

    async def add_rcpt(self, rcpt: str) -> None:
        self.rcpts.append(rcpt)

    async def body(self, header: object, body: object) -> None:
        await asyncio.to_thread(self.target.note, "started", self.rcpts)
        while not await asyncio.to_thread(os.path.exists, self.target.release):  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def commit(self) -> None:
        await asyncio.to_thread(self.target.note, "delivered", self.rcpts)

    async def abort(self) -> None:
        return None


@register("test.hold")
class HoldTarget(Module):
    """`test.hold { release FILE; journal FILE }`: a downstream that takes its time.

    Each delivery appends `started RCPTS` to the journal when its body
    stage begins, waits until the release file exists, then appends
    `delivered RCPTS` at commit: a test sees an attempt in flight and
    counts deliveries.
    """

    def configure(self, cfg: Directives) -> None:
        self.release = cfg.string("release")
        self.journal = cfg.string("journal")
        cfg.finish()

    def note(self, what: str, rcpts: list[str]) -> None:
        with open(self.journal, "a") as f:
            f.write(f"{what} {' '.join(rcpts)}\n")

    async def start_delivery(self, meta: object, mail_from: str) -> _HoldDelivery:
        return _HoldDelivery(self)


class _FakeCheckState:
    """Rejects at the configured stage; passes every other stage."""

    def __init__(self, owner: FakeCheck, meta: object) -> None:
        self.owner = owner
        self.conn = getattr(meta, "conn", None)

    async def check_connection(self) -> object:
        return self.owner.result("connection", self.conn)

    async def check_sender(self, mail_from: str) -> object:
        return self.owner.result("sender", self.conn)

    async def check_rcpt(self, rcpt: str) -> object:
        return self.owner.result("rcpt", self.conn)

    async def check_body(self, header: object, body: object) -> object:
        return self.owner.result("body", self.conn)

    async def close(self) -> None:
        return None


@register("test.check")
class FakeCheck(Module):
    """A check for end-to-end tests: `stage early|sender|rcpt|body`, the reply
    it rejects with (`code`, `enhanced`, `message`), and `unless_tls` to pass
    clients that use TLS."""

    def configure(self, cfg: Directives) -> None:
        from kittiwake.errors import SMTPError

        self.stage = cfg.enum("stage", ["early", "sender", "rcpt", "body"], "sender")
        code = cfg.integer("code", 550)
        enhanced = tuple(int(p) for p in cfg.string("enhanced", "5.7.1").split("."))
        message = cfg.string("message", "Rejected by the test check")
        self.unless_tls = cfg.boolean("unless_tls", False)
        cfg.finish()
        self.error = SMTPError(code, enhanced, message)  # type: ignore[arg-type]

    def result(self, stage: str, conn: object) -> object:
        from kittiwake.checks.base import CheckResult

        if stage != self.stage or (self.unless_tls and getattr(conn, "tls", False)):
            return CheckResult()
        return CheckResult(reject=True, reason=self.error)

    async def check_state(self, meta: object) -> _FakeCheckState:
        return _FakeCheckState(self, meta)

    async def check_early(self, conn: object) -> object:
        return self.result("early", conn)


class _FakeDKIMState:
    """dkim=pass for a From domain the module lists, dkim=none otherwise."""

    def __init__(self, owner: FakeDKIM) -> None:
        self.owner = owner

    async def check_connection(self) -> object:
        from kittiwake.checks.base import CheckResult

        return CheckResult()

    async def check_sender(self, mail_from: str) -> object:
        return await self.check_connection()

    async def check_rcpt(self, rcpt: str) -> object:
        return await self.check_connection()

    async def check_body(self, header: object, body: object) -> object:
        from kittiwake.checks.base import AuthResult, CheckResult
        from kittiwake.dmarc import from_domain
        from kittiwake.message.header import Header

        assert isinstance(header, Header)
        domain = from_domain(header).lower()
        if domain in self.owner.passing:
            entry = AuthResult("dkim", "pass", {"header.d": domain})
        else:
            entry = AuthResult("dkim", "none")
        return CheckResult(auth_results=[entry])

    async def close(self) -> None:
        return None


@register("test.dkim")
class FakeDKIM(Module):
    """A stand-in for a DKIM check, so that the pipeline's DMARC runs beside
    `check.spf` (`dmarc_input`, docs/pipeline.md "DMARC"): `pass DOMAIN...`
    lists the From domains whose mail it says is signed."""

    dmarc_input = "dkim"

    def configure(self, cfg: Directives) -> None:
        self.passing = {d.lower() for d in cfg.string_list("pass", [])}
        cfg.finish()

    async def check_state(self, meta: object) -> _FakeDKIMState:
        return _FakeDKIMState(self)
