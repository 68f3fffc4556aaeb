"""The asyncio client against scripted loopback servers: timeouts, TLS, hostile peers.

Each test runs a small server that misbehaves in one exact way (says
nothing, injects a reply after STARTTLS, never reads, streams an endless
line, ...) and checks which `SMTPError` the client turns it into, and
that it does so within its timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from kittiwake import log
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.protocol.client import Limits
from kittiwake.smtpclient import ClientSettings, Endpoint, Mechanism, SMTPClient
from kittiwake.targets.base import DeliveryTarget
from kittiwake.tls.directive import ClientTLS

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
EHLO = b"250-server\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, context: ssl.SSLContext | None = None, path: str = ""
) -> AsyncIterator[int]:
    """A loopback server (TCP, or Unix at `path`) running `handler` per connection;
    every connection ends with it."""
    tasks: set[asyncio.Task[None]] = set()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (Exception, asyncio.CancelledError):
            pass  # the client hung up, or the test is over: either way, done
        finally:
            writer.transport.abort()

    if path:
        server = await asyncio.start_unix_server(guarded, path)
    else:
        server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=context)
    try:
        yield 0 if path else server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def client(port: int, **settings: object) -> SMTPClient:
    values: dict[str, object] = {
        "hostname": "client.example",
        "starttls": False,
        "connect_timeout": 1.0,
        "command_timeout": 0.3,
        "submission_timeout": 0.3,
    }
    values.update(settings)
    return SMTPClient(
        Endpoint("tcp", "127.0.0.1", port),
        ClientSettings(**values),  # type: ignore[arg-type]
        log.get("test"),
    )


async def lines(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    return [await reader.readline() for _ in range(count)]


async def connect_error(c: SMTPClient) -> SMTPError:
    with pytest.raises(SMTPError) as caught:
        await c.connect()
    return caught.value


# -- connecting -----------------------------------------------------------------------


async def test_silent_server_times_out_on_the_greeting() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with serving(silent) as port:
        start = time.monotonic()
        error = await connect_error(client(port))
    assert time.monotonic() - start < 2
    assert (error.code, error.enhanced, error.message) == (450, (4, 4, 2), "Network I/O error")
    assert "no reply within 0.3s" in error.reason


async def test_connect_timeout() -> None:
    # A listener whose backlog is full drops new SYNs: connecting hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(5):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        start = time.monotonic()
        error = await connect_error(client(port, connect_timeout=0.5))
        assert 0.4 < time.monotonic() - start < 3
        assert (error.code, error.enhanced) == (451, (4, 4, 1))
        assert error.message == "Could not connect to the downstream server"
        assert "no connection within 0.5s" in error.reason
    finally:
        for s in [*fillers, listener]:
            s.close()


async def test_refused_greeting_passes_through() -> None:
    seen: list[bytes] = []

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.3.2 Not now\r\n")
        seen.append(await reader.readline())
        writer.write(b"221 bye\r\n")
        await reader.read()

    async with serving(busy) as port:
        error = await connect_error(client(port))
    assert (error.code, error.enhanced, error.message) == (554, (5, 3, 2), "Not now")
    assert seen == [b"QUIT\r\n"]  # RFC 5321 §3.1: no EHLO after a 554 greeting


async def test_helo_when_ehlo_is_unknown() -> None:
    seen: list[bytes] = []

    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old server\r\n")
        for answer in (b"502 what?\r\n", b"250 hi\r\n", b"250 ok\r\n", b"221 bye\r\n"):
            seen.append(await reader.readline())
            writer.write(answer)
        await reader.read()

    async with serving(old) as port:
        c = client(port)
        await c.connect()
        assert not c.capabilities.keywords
        assert (await c.ask(c.conn.mail("a@b.example"))).ok
        await c.quit()
    assert seen == [
        b"EHLO client.example\r\n",
        b"HELO client.example\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"QUIT\r\n",
    ]


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ClientTLS]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    return server, ClientTLS(root_cas=[ca.cert_pem.bytes()])


def starttls_server(after_220: bytes, *, handshake: ssl.SSLContext | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx\r\n")
        await reader.readline()
        writer.write(b"250-mx\r\n250 STARTTLS\r\n")
        await reader.readline()
        writer.write(b"220 2.0.0 go ahead\r\n" + after_220)
        if handshake is not None:
            await writer.start_tls(handshake)
            await reader.readline()
            writer.write(b"250-mx\r\n250 AUTH PLAIN\r\n")
            await reader.readline()
            writer.write(b"221 bye\r\n")
        await reader.read()

    return handler


async def test_starttls_verified(tls: tuple[ssl.SSLContext, ClientTLS]) -> None:
    context, client_tls = tls
    async with serving(starttls_server(b"", handshake=context)) as port:
        c = client(port, starttls=True, tls=client_tls)
        await c.connect()
        assert c.tls
        assert c.capabilities.auth == {"PLAIN"}  # the list after TLS, not before
        await c.quit()


async def test_reply_injected_after_starttls_is_refused(
    tls: tuple[ssl.SSLContext, ClientTLS],
) -> None:
    async with serving(starttls_server(b"250-mx\r\n250 AUTH PLAIN\r\n")) as port:
        error = await connect_error(client(port, starttls=True, tls=tls[1]))
    assert (error.code, error.enhanced) == (451, (4, 5, 0))
    assert "after its STARTTLS reply" in error.reason


async def test_stalled_handshake_times_out(tls: tuple[ssl.SSLContext, ClientTLS]) -> None:
    async with serving(starttls_server(b"")) as port:
        start = time.monotonic()
        error = await connect_error(client(port, starttls=True, tls=tls[1]))
    assert time.monotonic() - start < 3
    assert (error.code, error.enhanced) == (451, (4, 7, 0))
    assert error.message == "TLS handshake with the downstream server failed"


async def test_certificate_for_another_name(tls: tuple[ssl.SSLContext, ClientTLS]) -> None:
    context, client_tls = tls
    async with serving(starttls_server(b"", handshake=context)) as port:
        c = SMTPClient(
            Endpoint("tcp", "localhost", port),  # the certificate names 127.0.0.1 only
            ClientSettings(hostname="client.example", tls=client_tls, command_timeout=2),
            log.get("test"),
        )
        error = await connect_error(c)
    assert (error.code, error.enhanced) == (451, (4, 7, 0))
    assert "localhost" in error.reason


async def test_implicit_tls(tls: tuple[ssl.SSLContext, ClientTLS]) -> None:
    context, client_tls = tls

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx\r\n")
        await reader.readline()
        writer.write(b"250 mx\r\n")
        await reader.readline()
        writer.write(b"221 bye\r\n")
        await reader.read()

    async with serving(greet, context) as port:
        c = SMTPClient(
            Endpoint("tls", "127.0.0.1", port),
            ClientSettings(hostname="client.example", tls=client_tls, command_timeout=2),
            log.get("test"),
        )
        await c.connect()
        await c.quit()


# -- AUTH ------------------------------------------------------------------------------


def auth_server(replies: list[bytes], seen: list[bytes]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx\r\n")
        await reader.readline()
        writer.write(EHLO)
        for reply in replies:
            seen.append(await reader.readline())
            writer.write(reply)
        await reader.read()

    return handler


@pytest.mark.parametrize(
    ("mechanism", "replies", "expected"),
    [
        (
            Mechanism("PLAIN", "user", "pä ss"),
            [b"235 2.7.0 ok\r\n"],
            [b"AUTH PLAIN " + base64.b64encode("\0user\0pä ss".encode()) + b"\r\n"],
        ),
        (
            Mechanism("LOGIN", "user", "pass"),
            [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", b"235 2.7.0 ok\r\n"],
            [b"AUTH LOGIN\r\n", b"dXNlcg==\r\n", b"cGFzcw==\r\n"],
        ),
    ],
)
async def test_auth_mechanisms(
    mechanism: Mechanism, replies: list[bytes], expected: list[bytes]
) -> None:
    seen: list[bytes] = []
    async with serving(auth_server(replies, seen)) as port:
        c = client(port)
        await c.connect()
        await c.authenticate(mechanism)
        c.close()
    assert seen == expected


async def test_endless_challenges_are_cancelled() -> None:
    seen: list[bytes] = []
    replies = [b"334 more\r\n"] * 4 + [b"501 5.0.0 cancelled\r\n"]
    async with serving(auth_server(replies, seen)) as port:
        c = client(port)
        await c.connect()
        with pytest.raises(SMTPError) as caught:
            await c.authenticate(Mechanism("LOGIN", "u", "p"))
        c.close()
    # LOGIN answers two challenges; the third and fourth get `*` (cancel).
    assert seen == [b"AUTH LOGIN\r\n", b"dQ==\r\n", b"cA==\r\n", b"*\r\n", b"*\r\n"]
    assert (caught.value.code, caught.value.enhanced) == (451, (4, 7, 0))


async def test_a_server_that_never_stops_challenging() -> None:
    seen: list[bytes] = []
    async with serving(auth_server([b"334 more\r\n"] * 10, seen)) as port:
        c = client(port)
        await c.connect()
        with pytest.raises(SMTPError, match="Authentication with the downstream server failed"):
            await c.authenticate(Mechanism("PLAIN", "u", "p"))
        c.close()
    assert seen[1:] == [b"*\r\n"] * 4


async def test_mechanism_not_offered_sends_nothing() -> None:
    seen: list[bytes] = []
    async with serving(auth_server([], seen)) as port:
        c = client(port)
        await c.connect()
        with pytest.raises(SMTPError, match="Authentication with the downstream server failed"):
            await c.authenticate(Mechanism("EXTERNAL"))
        c.close()
    assert seen == []


# -- hostile or slow servers -------------------------------------------------------------------


async def test_endless_greeting_line_is_bounded() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ")
        for _ in range(2000):
            writer.write(b"x" * 1024)
            await writer.drain()

    async with serving(flood) as port:
        c = client(port, limits=Limits(max_line_length=4096), command_timeout=5)
        error = await connect_error(c)
    assert (error.code, error.enhanced) == (451, (4, 5, 0))
    assert "longer than 4096" in error.reason
    assert c.conn.pending_input == 0


def data_server(*, read_body: bool, delay: float = 0.0) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx\r\n")
        await reader.readline()
        writer.write(b"250 mx\r\n")
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):  # MAIL, RCPT, DATA
            await reader.readline()
            writer.write(reply)
        if not read_body:
            await asyncio.sleep(10)
            return
        await reader.readuntil(b"\r\n.\r\n")
        await asyncio.sleep(delay)
        writer.write(b"250 2.0.0 queued\r\n")
        await reader.read()

    return handler


async def message(c: SMTPClient, body: bytes) -> list[object]:
    await c.connect()
    await c.send(c.conn.mail("a@b.example") + c.conn.rcpt("c@d.example"))
    await c.read_reply()
    await c.read_reply()  # MAIL and RCPT, pipelined
    buf = Buffer.ram()
    await buf.write(body)
    await buf.finish()
    replies: list[object] = []
    try:
        await c.send_message(b"Subject: x\r\n\r\n", buf, replies)  # type: ignore[arg-type]
    finally:
        c.close()
    return replies


async def test_server_that_stops_reading_cannot_block_us() -> None:
    async with serving(data_server(read_body=False)) as port:
        start = time.monotonic()
        with pytest.raises(SMTPError) as caught:
            await message(client(port), b"y" * 78 + b"\r\n" * 1 + b"z" * (48 * 1024 * 1024))
    assert time.monotonic() - start < 5
    assert (caught.value.code, caught.value.enhanced) == (450, (4, 4, 2))
    assert "write blocked for 0.3s" in caught.value.reason


async def test_submission_timeout_is_its_own() -> None:
    async with serving(data_server(read_body=True, delay=0.6)) as port:
        # Slower than command_timeout, faster than submission_timeout: fine.
        replies = await message(client(port, submission_timeout=3.0), b"body\r\n")
        assert [str(r) for r in replies] == ["250 2.0.0 queued"]
        with pytest.raises(SMTPError) as caught:
            await message(client(port, command_timeout=3.0, submission_timeout=0.2), b"b\r\n")
    assert "no reply within 0.2s" in caught.value.reason


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "lmtp.sock")

    async def lmtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 lmtp\r\n")
        assert await reader.readline() == b"LHLO client.example\r\n"
        writer.write(b"250 lmtp\r\n")
        await reader.readline()
        writer.write(b"221 bye\r\n")
        await reader.read()

    async with serving(lmtp, path=path):
        c = SMTPClient(
            Endpoint("unix", path=path),
            ClientSettings(hostname="client.example", lmtp=True, starttls=False),
            log.get("test"),
        )
        await c.connect()
        await c.quit()


# -- the target's own size check ------------------------------------------------------------


def size_server(seen: list[bytes]) -> Handler:
    """Offers SIZE 100; records the commands (content as one line per message)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx\r\n")
        await reader.readline()
        writer.write(b"250-mx\r\n250 SIZE 100\r\n")
        while line := await reader.readline():
            seen.append(line)
            if line == b"DATA\r\n":
                writer.write(b"354 go\r\n")
                seen.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(b"250 2.0.0 queued\r\n")
            elif line == b"QUIT\r\n":
                writer.write(b"221 bye\r\n")
            else:
                writer.write(b"250 ok\r\n")

    return handler


def build_target(tmp: Path, port: int, block: str = "") -> DeliveryTarget:
    text = f"state_dir {tmp}\nhostname client.example\n"
    container = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp))
    container.parse_globals()
    line = f"deliver_to smtp tcp://127.0.0.1:{port} {{\n starttls no\n {block}\n}}\n"
    (node,) = parse_text(line, "t.conf")
    return container.module_from_node(node, DeliveryTarget, "target")


async def test_no_command_after_a_timeout(tmp_path: Path) -> None:
    """A late reply must never be taken for the next command's: the connection is done."""
    seen: list[bytes] = []

    async def slow_rcpt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx\r\n")
        await reader.readline()
        writer.write(b"250-mx\r\n250 PIPELINING\r\n")
        while line := await reader.readline():
            seen.append(line)
            if line.startswith(b"RCPT"):
                await asyncio.sleep(0.6)  # past command_timeout
            writer.write(b"250 2.1.5 ok\r\n")

    async with serving(slow_rcpt) as port:
        target = build_target(tmp_path, port, "command_timeout 300ms")
        delivery = await target.start_delivery(MsgMeta(id="t"), "a@example.org")
        with pytest.raises(SMTPError) as first:
            await delivery.add_rcpt("b@example.org")
        await asyncio.sleep(0.5)  # the late reply arrives meanwhile
        with pytest.raises(SMTPError) as second:
            await delivery.add_rcpt("c@example.org")
        await delivery.abort()
    assert second.value is first.value  # the same failure, nothing sent
    assert (second.value.code, second.value.enhanced) == (450, (4, 4, 2))
    assert seen == [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.org>\r\n"]


@pytest.mark.parametrize("size", [100, 101])
async def test_message_size_at_and_past_the_advertised_limit(tmp_path: Path, size: int) -> None:
    """The header plus the body may be exactly SIZE bytes; one more is refused unsent."""
    seen: list[bytes] = []
    async with serving(size_server(seen)) as port:
        target = build_target(tmp_path, port)
        header = Header()
        header.add("Subject", "s", folded=False)  # 12 bytes + the empty line: 14
        body = Buffer.ram()
        await body.write(b"x" * (size - 14))
        await body.finish()
        delivery = await target.start_delivery(MsgMeta(id="size"), "a@example.org")
        await delivery.add_rcpt("b@example.org")
        if size <= 100:
            await delivery.body(header, body)
            await delivery.commit()
            assert seen[-2].endswith(b"x" * (size - 14) + b"\r\n.\r\n")
        else:
            with pytest.raises(SMTPError) as caught:
                await delivery.body(header, body)
            await delivery.abort()
            assert (caught.value.code, caught.value.enhanced) == (552, (5, 3, 4))
            assert b"DATA\r\n" not in seen
        assert seen[-1] == b"QUIT\r\n"
