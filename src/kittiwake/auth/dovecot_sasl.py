"""`auth.dovecot_sasl`: let a Dovecot auth server check passwords (docs/auth.md).

Strategy: speak the client side of Dovecot's auth protocol (version 1.x:
tab-separated lines ending in LF). At start one connection checks that the
server answers and offers PLAIN or LOGIN; failing that the configuration
is refused, since every login would fail. Each attempt then opens its own
connection (as maddy does; Dovecot ignores the client PID on `auth-client`
sockets, so parallel connections from one process are fine), reads the
server's handshake, sends `VERSION`/`CPID` and one `AUTH` request:

* PLAIN when offered, with the credentials as initial response;
* otherwise LOGIN, answering the first `CONT` with the user name and the
  second with the password.

`OK` accepts. `FAIL` rejects, unless it carries `temp` (Dovecot 2.2) or
`code=temp_fail` (2.3): then the backend behind Dovecot is unreachable and
the attempt is a temporary failure. Connection errors, protocol errors and
an attempt that takes longer than `timeout` (30 s; Dovecot itself delays
failures by about two seconds) are temporary too.

Requests say `service=SMTP`, `secured` (Dovecot then allows plaintext
mechanisms whatever `disable_plaintext_auth` says: the endpoint has
already decided whether AUTH is allowed) and `no-penalty`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from dataclasses import dataclass, field

from kittiwake.auth.base import InvalidCredentials, TemporaryAuthFailure
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.config.values import ListenAddress, parse_listen_address
from kittiwake.errors import KittiwakeError
from kittiwake.module import Module, register

SERVICE = "SMTP"
#: Handshake lines accepted before DONE; a real server sends about ten.
MAX_HANDSHAKE_LINES = 256
#: LOGIN exchanges: the user name, then the password.
MAX_CONT = 2

_UNESCAPE = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}


class DovecotProtocolError(KittiwakeError):
    """The server said something this client does not understand."""


def split_line(line: str) -> list[str]:
    """A received line split at tabs, with Dovecot's \\x01 escapes undone."""
    fields: list[str] = []
    for raw in line.split("\t"):
        if "\x01" not in raw:
            fields.append(raw)
            continue
        out: list[str] = []
        chars = iter(raw)
        for c in chars:
            if c == "\x01":
                nxt = next(chars, "")
                out.append(_UNESCAPE.get(nxt, nxt))
            else:
                out.append(c)
        fields.append("".join(out))
    return fields


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the server announced: protocol version and mechanisms with flags."""

    version: tuple[int, int]
    mechanisms: dict[str, frozenset[str]] = field(default_factory=dict)

    def usable(self) -> list[str]:
        """Mechanisms a client may use (not `private`), by upper-case name."""
        return [m for m, flags in self.mechanisms.items() if "private" not in flags]


class _Connection:
    """One client connection: a handshake, then requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, endpoint: ListenAddress) -> _Connection:
        if endpoint.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(endpoint.path)
        else:
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def send(self, *fields: str) -> None:
        # Everything sent is a keyword, a number or base64: nothing to escape.
        assert not any(c in f for f in fields for c in "\t\n\r\x01")
        self.writer.write(("\t".join(fields) + "\n").encode("ascii"))
        await self.writer.drain()

    async def receive(self) -> list[str]:
        try:
            line = await self.reader.readline()
        except ValueError:  # asyncio's line length limit
            raise DovecotProtocolError("line too long") from None
        if not line.endswith(b"\n"):
            raise DovecotProtocolError("connection closed by the server")
        return split_line(line[:-1].decode("utf-8", "replace"))

    async def handshake(self) -> Handshake:
        """Send ours, read the server's up to DONE."""
        await self.send("VERSION", "1", "1")
        await self.send("CPID", str(os.getpid()))
        version: tuple[int, int] | None = None
        mechanisms: dict[str, frozenset[str]] = {}
        for _ in range(MAX_HANDSHAKE_LINES):
            fields = await self.receive()
            command = fields[0]
            if command == "DONE":
                if version is None:
                    raise DovecotProtocolError("no VERSION in the handshake")
                return Handshake(version, mechanisms)
            if command == "VERSION":
                if len(fields) < 3 or not all(f.isdigit() for f in fields[1:3]):
                    raise DovecotProtocolError("malformed VERSION line")
                version = (int(fields[1]), int(fields[2]))
                if version[0] != 1:
                    raise DovecotProtocolError(f"unsupported protocol version {fields[1]}")
            elif command == "MECH" and len(fields) >= 2:
                mechanisms[fields[1].upper()] = frozenset(f.lower() for f in fields[2:])
            # SPID, CUID, COOKIE and anything newer are of no use here.
        raise DovecotProtocolError("handshake does not end")

    async def authenticate(self, mechanism: str, username: str, password: str) -> list[str]:
        """Run one request; return the final OK or FAIL line's fields."""
        request = ["AUTH", "1", mechanism, f"service={SERVICE}", "secured", "no-penalty"]
        if mechanism == "PLAIN":
            plain = f"\0{username}\0{password}".encode("utf-8", "surrogateescape")
            request.append("resp=" + base64.b64encode(plain).decode("ascii"))
        answers = [username, password]
        await self.send(*request)
        for _ in range(MAX_CONT + 1):
            fields = await self.receive()
            if len(fields) < 2 or fields[1] != "1":
                raise DovecotProtocolError(f"unexpected reply {fields[0]!r}")
            if fields[0] in ("OK", "FAIL"):
                return fields
            if fields[0] != "CONT" or mechanism == "PLAIN" or not answers:
                raise DovecotProtocolError(f"unexpected reply {fields[0]!r}")
            answer = answers.pop(0).encode("utf-8", "surrogateescape")
            await self.send("CONT", "1", base64.b64encode(answer).decode("ascii"))
        raise DovecotProtocolError("too many CONT rounds")


def failure_is_temporary(fields: list[str]) -> bool:
    """Whether a FAIL line says the server could not decide."""
    for item in fields[2:]:
        key, _, value = item.partition("=")
        if key == "temp" or (key == "code" and value == "temp_fail"):
            return True
    return False


def failure_reason(fields: list[str]) -> str:
    for item in fields[2:]:
        key, _, value = item.partition("=")
        if key == "reason":
            return value
    return ""


@register("auth.dovecot_sasl")
class DovecotSASL(Module):
    """`dovecot_sasl ENDPOINT` or `dovecot_sasl { endpoint ENDPOINT }`."""

    #: Seconds one attempt (connect, handshake, request) may take.
    timeout: float = 30.0

    def configure(self, cfg: Directives) -> None:
        if len(self.inline_args) > 1:
            raise cfg.node.error(f"{self.module_name}: expected at most one argument")
        if cfg.has("debug"):
            self.log.debug_enabled = cfg.boolean("debug")
        endpoint_node = cfg.get("endpoint")
        cfg.finish()
        where: Node = cfg.node
        if endpoint_node is not None:
            if self.inline_args:
                raise endpoint_node.error(
                    f"{self.module_name}: the endpoint is given both as an argument and "
                    "in the block; give it once"
                )
            if endpoint_node.children is not None or len(endpoint_node.args) != 1:
                raise endpoint_node.error("endpoint: expected exactly one address")
            text, where = endpoint_node.args[0], endpoint_node
        elif self.inline_args:
            text = self.inline_args[0]
        else:
            raise cfg.node.error(f"{self.module_name}: missing server endpoint")
        try:
            self.endpoint = parse_listen_address(text)
        except ValueError as exc:
            raise where.error(f"{self.module_name}: invalid server endpoint: {exc}") from None
        if self.endpoint.scheme not in ("unix", "tcp"):
            raise where.error(f"{self.module_name}: use a unix:// or tcp:// endpoint")
        self._node = where
        self.mechanisms: list[str] = []

    async def start(self) -> None:
        """Check the server once: it must answer and offer PLAIN or LOGIN."""
        try:
            async with asyncio.timeout(self.timeout):
                conn = await _Connection.open(self.endpoint)
                try:
                    handshake = await conn.handshake()
                finally:
                    await conn.close()
        except (OSError, TimeoutError, DovecotProtocolError) as exc:
            why = str(exc) or type(exc).__name__
            raise self._node.error(
                f"{self.module_name}: unable to contact server {self.endpoint}: {why}"
            ) from None
        self.mechanisms = handshake.usable()
        if not {"PLAIN", "LOGIN"} & set(self.mechanisms):
            raise self._node.error(
                f"{self.module_name}: server {self.endpoint} offers neither PLAIN nor LOGIN "
                f"(offers: {', '.join(self.mechanisms) or 'nothing'})"
            )
        self.log.debug("server ready", endpoint=str(self.endpoint), mechanisms=self.mechanisms)

    async def auth_plain(self, username: str, password: str) -> None:
        if "\0" in username or "\0" in password:
            # PLAIN separates its fields with NUL: no field may contain one.
            raise InvalidCredentials("NUL in the credentials")
        try:
            async with asyncio.timeout(self.timeout):
                fields = await self._attempt(username, password)
        except TimeoutError:
            self.log.error("server did not answer in time", endpoint=str(self.endpoint))
            raise TemporaryAuthFailure("dovecot auth server timed out") from None
        except (OSError, DovecotProtocolError) as exc:
            self.log.error("server unusable", err=exc, endpoint=str(self.endpoint))
            raise TemporaryAuthFailure("dovecot auth server unreachable") from None
        if fields[0] == "OK":
            self.log.debug("authenticated", username=username)
            return
        reason = failure_reason(fields)
        if failure_is_temporary(fields):
            self.log.error("server could not decide", username=username, reason=reason)
            raise TemporaryAuthFailure("dovecot auth server could not decide")
        self.log.debug("authentication failed", username=username, reason=reason)
        raise InvalidCredentials("rejected by the dovecot auth server")

    async def _attempt(self, username: str, password: str) -> list[str]:
        conn = await _Connection.open(self.endpoint)
        try:
            handshake = await conn.handshake()
            usable = handshake.usable()
            if "PLAIN" in usable:
                mechanism = "PLAIN"
            elif "LOGIN" in usable:
                mechanism = "LOGIN"
            else:
                raise DovecotProtocolError("server offers neither PLAIN nor LOGIN any more")
            return await conn.authenticate(mechanism, username, password)
        finally:
            await conn.close()
