"""`limits` (docs/limits.md) against the real server, from several client addresses.

Each test starts `kittiwake run` with a `limits` block and drives raw SMTP
dialogues from chosen loopback addresses (127.0.0.1, 127.0.0.2, ...). A
limit that is hit makes the transaction wait up to 5 s and then answers
`451 4.4.5 High load, try again later`; where a test needs several such
waits they run at once in threads, so the file stays well under a minute.

Most tests set `defer_sender_reject no`, so the ticket is taken at MAIL and
MAIL's reply shows the limit; `test_deferred_mode_applies_at_the_first_rcpt`
covers the default, where it is taken at the first RCPT.
"""

from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakedns import FakeDNS
from kw import Dialog, Kittiwake, in_parallel, maildir_files

Start = Callable[..., Kittiwake]

HIGH_LOAD = "451 4.4.5 High load, try again later"
#: The wait before the 451 (docs/limits.md), and the slack allowed around it.
DEADLINE = 5.0
EARLY, LATE = DEADLINE - 0.5, DEADLINE + 3.0
#: What "at once" means for a reply that must not wait for a limit.
PROMPT = 1.5
NO_DEFER = "    defer_sender_reject no"


def config(tmp: Path, limits: str, *, block: str = NO_DEFER, top: str = "") -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
{top}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    tls off
{block}
    {limits}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


@pytest.fixture
def start(kittiwake: Start, dns: FakeDNS) -> Callable[[str], Kittiwake]:
    def run(text: str, ready: int = 1) -> Kittiwake:
        return kittiwake(text, ready=ready, args=("--debug.dnsoverride", dns.address))

    return run


# -- helpers -------------------------------------------------------------------


class Client(Dialog):
    """A greeted session from one client address; `timed` measures a reply."""

    def __init__(
        self, port: int, source: str = "127.0.0.1", *, host: str = "127.0.0.1", banner: bool = True
    ) -> None:
        super().__init__(port, host=host, timeout=DEADLINE + 10, source=source)
        if banner:
            assert self.reply()[0].startswith("220 ")
            assert self.cmd("EHLO client.example").startswith("250 ")

    def timed(self, line: str) -> tuple[str, float]:
        started = time.monotonic()
        reply = self.cmd(line)
        return reply, time.monotonic() - started

    def mail(self, sender: str = "a@example.net") -> str:
        return self.cmd(f"MAIL FROM:<{sender}>")

    def finish(self, body: str = "hello") -> str:
        """RCPT, DATA and the content of the open transaction; the final reply."""
        assert self.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        assert self.cmd("DATA").startswith("354")
        return self.cmd(f"From: <a@example.net>\r\nSubject: t\r\n\r\n{body}\r\n.")


def accepted(reply: str, sender: str = "a@example.net") -> bool:
    return reply == f"250 2.0.0 Roger, accepting mail from <{sender}>"


class Pending:
    """A command whose reply is awaited in the background (a blocked MAIL)."""

    def __init__(self, client: Client, line: str) -> None:
        self.reply: str | None = None
        self.at = 0.0
        self.sent = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(client, line))
        self._thread.start()

    def _run(self, client: Client, line: str) -> None:
        self.reply = client.cmd(line)
        self.at = time.monotonic()

    def waiting(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> tuple[str | None, float]:
        """The reply and when it came (monotonic)."""
        self._thread.join(DEADLINE + 10)
        return self.reply, self.at


def stored_bodies(tmp: Path) -> list[bytes]:
    return sorted(
        p.read_bytes().split(b"\n\n", 1)[1]
        for p in maildir_files(tmp / "mail", "example.org", "user")
    )


def close_all(*clients: Dialog) -> None:
    for c in clients:
        c.close()


# -- rate ----------------------------------------------------------------------


def test_all_rate_at_the_bound_and_past_it(start: Callable[..., Kittiwake], tmp_path: Path) -> None:
    srv = start(config(tmp_path, "limits {\n        all rate 3 1h\n    }"))
    clients = [Client(srv.port(), f"127.0.0.{i}") for i in (1, 2, 3, 4)]
    try:
        # `all`: one bucket whatever the client: 3 tokens for 3 addresses.
        for c in clients[:3]:
            reply, took = c.timed("MAIL FROM:<a@example.net>")
            assert accepted(reply) and took < PROMPT, (reply, took)
        assert clients[0].finish() == "250 2.0.0 OK: queued"
        # Tokens are spent for good: ending a transaction gives none back.
        assert clients[1].cmd("RSET") == "250 2.0.0 Session reset"
        reply, took = clients[3].timed("MAIL FROM:<a@example.net>")
        assert reply == HIGH_LOAD  # temporary, no msg ID (docs/server.md, "Transactions")
        assert EARLY <= took <= LATE, took
        # The session goes on: a refused MAIL opens no transaction.
        assert clients[3].cmd("RCPT TO:<user@example.org>").startswith("503 ")
        assert clients[3].cmd("NOOP").startswith("250 ")
    finally:
        close_all(*clients)
    srv.wait_log(r"limit reached .*scope=all kind=rate")
    assert stored_bodies(tmp_path) == [b"hello\n"]


def test_rate_wait_shorter_than_the_deadline_succeeds(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    # 2 tokens every 2 s: the third transaction waits for the refill (under
    # the 5 s deadline) and then goes through.
    srv = start(config(tmp_path, "limits {\n        all rate 2 2s\n    }"))
    with Client(srv.port()) as c:
        for _ in range(2):
            assert accepted(c.mail())
            assert c.cmd("RSET").startswith("250 ")
        reply, took = c.timed("MAIL FROM:<a@example.net>")
        assert accepted(reply), reply
        assert 0.8 <= took <= 3.5, took
        assert c.finish() == "250 2.0.0 OK: queued"
    assert "limit reached" not in srv.log


# -- concurrency ---------------------------------------------------------------


def test_second_mail_on_one_connection_waits_then_451(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    # maddy's case: the first transaction holds the only slot; the second
    # MAIL cannot get it and is answered 451 after about 5 s.
    srv = start(config(tmp_path, "limits {\n        all concurrency 1\n    }"))
    with Client(srv.port()) as c:
        assert accepted(c.mail())
        reply, took = c.timed("MAIL FROM:<b@example.net>")
        assert reply == HIGH_LOAD and EARLY <= took <= LATE, (reply, took)
        # The old transaction stays as it was (docs/server.md, "Transactions")
        # and completes.
        assert c.finish("first") == "250 2.0.0 OK: queued"
        # Its end released the slot: the next MAIL is answered at once.
        reply, took = c.timed("MAIL FROM:<b@example.net>")
        assert accepted(reply, "b@example.net") and took < PROMPT, (reply, took)
        assert c.finish("second") == "250 2.0.0 OK: queued"
    assert stored_bodies(tmp_path) == [b"first\n", b"second\n"]


def test_endpoint_concurrency_slot_passes_to_a_waiting_client(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    # `endpoint` is kittiwake's synonym of `all` (docs/limits.md, "Scopes").
    srv = start(config(tmp_path, "limits {\n        endpoint concurrency 1\n    }"))
    a, b = Client(srv.port(), "127.0.0.2"), Client(srv.port(), "127.0.0.3")
    try:
        assert accepted(a.mail())
        waiting = Pending(b, "MAIL FROM:<b@example.net>")
        time.sleep(1.0)
        assert waiting.waiting(), waiting.reply  # blocked behind a's transaction
        assert a.finish() == "250 2.0.0 OK: queued"
        released = time.monotonic()
        reply, at = waiting.result()
        assert accepted(reply or "", "b@example.net"), reply
        assert at - released < PROMPT, at - released  # woken by the release, not the deadline
        assert at - waiting.sent < DEADLINE - 1
        # Now b holds it: a new transaction of a's waits for b's RSET.
        again = Pending(a, "MAIL FROM:<a@example.net>")
        time.sleep(0.5)
        assert again.waiting()
        assert b.cmd("RSET").startswith("250 ")
        reply, _ = again.result()
        assert accepted(reply or ""), reply
    finally:
        close_all(a, b)


def test_ip_concurrency_is_per_client_address(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    # maddy's case: one slot per client address.
    srv = start(config(tmp_path, "limits {\n        ip concurrency 1\n    }"))
    one, two = Client(srv.port(), "127.0.0.1"), Client(srv.port(), "127.0.0.2")
    one_again, three = Client(srv.port(), "127.0.0.1"), Client(srv.port(), "127.0.0.3")
    try:
        for c in (one, two):
            reply, took = c.timed("MAIL FROM:<a@example.net>")
            assert accepted(reply) and took < PROMPT, (reply, took)
        # 127.0.0.1's slot is taken, on this connection and on any other;
        # 127.0.0.3 is not affected meanwhile.
        same, other, fresh = in_parallel(
            lambda: one.timed("MAIL FROM:<b@example.net>"),
            lambda: one_again.timed("MAIL FROM:<c@example.net>"),
            lambda: three.timed("MAIL FROM:<d@example.net>"),
        )
        for reply, took in (same, other):
            assert reply == HIGH_LOAD and EARLY <= took <= LATE, (reply, took)
        assert accepted(fresh[0], "d@example.net") and fresh[1] < PROMPT, fresh
        assert one.finish() == "250 2.0.0 OK: queued"
        assert accepted(one_again.mail("c@example.net"), "c@example.net")
    finally:
        close_all(one, two, one_again, three)
    srv.wait_log(r"limit reached .*scope=ip kind=concurrency key=127\.0\.0\.1")
    assert "key=127.0.0.2" not in srv.log and "key=127.0.0.3" not in srv.log


class UnixClient(Dialog):
    """A raw session over a Unix socket."""

    def __init__(self, path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(DEADLINE + 10)
            sock.connect(str(path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._buf = b""


def test_unix_socket_client_counts_as_127_0_0_1(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    # For the `ip` scope a Unix-socket client is 127.0.0.1 (docs/limits.md, "Scopes").
    text = config(tmp_path, "limits {\n        ip concurrency 1\n    }").replace(
        "smtp tcp://127.0.0.1:0 {\n    tls off", "lmtp tcp://127.0.0.1:0 unix://lmtp.sock {"
    )
    text = text.replace("state_dir", f"runtime_dir {tmp_path}/run\nstate_dir", 1)
    srv = start(text, ready=2)
    port = next(int(a.rsplit(":", 1)[1]) for a in srv.addresses if a.startswith("tcp://"))
    clients: list[Dialog] = []
    try:
        clients.append(UnixClient(tmp_path / "run" / "lmtp.sock"))
        clients += [Client(port, source, banner=False) for source in ("127.0.0.1", "127.0.0.2")]
        for c in clients:
            assert c.reply()[0].startswith("220 ")
            assert c.cmd("LHLO client.example").startswith("250 ")
        by_unix, from_1, from_2 = clients
        assert isinstance(from_1, Client) and isinstance(from_2, Client)
        assert accepted(by_unix.cmd("MAIL FROM:<a@example.net>"))
        reply, took = from_2.timed("MAIL FROM:<a@example.net>")
        assert accepted(reply) and took < PROMPT, (reply, took)
        waiting = Pending(from_1, "MAIL FROM:<a@example.net>")
        time.sleep(1.0)
        assert waiting.waiting()  # 127.0.0.1's slot is the Unix client's
        assert by_unix.cmd("RSET").startswith("250 ")
        reply, _ = waiting.result()
        assert accepted(reply or ""), reply
    finally:
        close_all(*clients)


def test_source_concurrency_per_sender_domain_and_the_null_sender(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    srv = start(config(tmp_path, "limits {\n        source concurrency 1\n    }"))
    clients = [Client(srv.port(), f"127.0.0.{i}") for i in range(1, 6)]
    holder, same_domain, other_domain, null1, null2 = clients
    try:
        assert accepted(holder.mail("a@one.example"), "a@one.example")
        assert accepted(null1.mail(""), "")
        # Same domain (normalised: case does not matter) and a second null
        # sender both wait for the deadline; the key of `<>` is "".
        blocked_domain, blocked_null, other = in_parallel(
            lambda: same_domain.timed("MAIL FROM:<b@ONE.Example>"),
            lambda: null2.timed("MAIL FROM:<>"),
            lambda: other_domain.timed("MAIL FROM:<c@two.example>"),
        )
        for reply, took in (blocked_domain, blocked_null):
            assert reply == HIGH_LOAD and EARLY <= took <= LATE, (reply, took)
        assert accepted(other[0], "c@two.example") and other[1] < PROMPT, other
        # The null sender's slot ends with its transaction; the next `<>`
        # gets it at once.
        assert null1.cmd("RSET").startswith("250 ")
        reply, took = null2.timed("MAIL FROM:<>")
        assert accepted(reply, "") and took < PROMPT, (reply, took)
        assert null2.finish("bounce") == "250 2.0.0 OK: queued"
    finally:
        close_all(*clients)
    srv.wait_log(r"limit reached .*scope=source kind=concurrency key=one\.example")
    srv.wait_log(r"limit reached .*scope=source kind=concurrency key=\"\" ")


def test_destination_scope_is_accepted_and_a_no_op(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    limits = "limits {\n        destination concurrency 1\n        destination rate 1 1h\n    }"
    srv = start(config(tmp_path, limits))
    a, b = Client(srv.port(), "127.0.0.2"), Client(srv.port(), "127.0.0.3")
    try:
        # Two transactions to the same destination at once, then more:
        # nothing waits.
        for c in (a, b):
            reply, took = c.timed("MAIL FROM:<a@example.net>")
            assert accepted(reply) and took < PROMPT
            assert c.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        for c, body in ((a, "a1"), (b, "b1"), (a, "a2"), (b, "b2")):
            if body.endswith("2"):
                assert accepted(c.mail())
                assert c.cmd("RCPT TO:<user@example.org>").startswith("250 ")
            assert c.cmd("DATA").startswith("354")
            reply, took = c.timed(f"Subject: d\r\n\r\n{body}\r\n.")
            assert reply == "250 2.0.0 OK: queued" and took < PROMPT
    finally:
        close_all(a, b)
    assert stored_bodies(tmp_path) == [b"a1\n", b"a2\n", b"b1\n", b"b2\n"]
    assert "limit reached" not in srv.log


def test_deferred_mode_applies_at_the_first_rcpt(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    # defer_sender_reject yes (the default): MAIL takes nothing, the first
    # RCPT takes the slot.
    srv = start(config(tmp_path, "limits {\n        all concurrency 1\n    }", block=""))
    a, b = Client(srv.port(), "127.0.0.2"), Client(srv.port(), "127.0.0.3")
    try:
        assert accepted(a.mail())  # holds nothing yet
        reply, took = b.timed("MAIL FROM:<b@example.net>")
        assert accepted(reply, "b@example.net") and took < PROMPT
        reply, took = b.timed("RCPT TO:<user@example.org>")
        assert reply.startswith("250 ") and took < PROMPT, (reply, took)  # b has the slot
        reply, took = a.timed("RCPT TO:<user@example.org>")
        assert reply == HIGH_LOAD and EARLY <= took <= LATE, (reply, took)
        # Every further RCPT of that transaction gets the same reply, at once
        # (docs/server.md, "Transactions").
        reply, took = a.timed("RCPT TO:<other@example.org>")
        assert reply == HIGH_LOAD and took < PROMPT, (reply, took)
        assert b.cmd("DATA").startswith("354")
        assert b.cmd("Subject: b\r\n\r\nb\r\n.") == "250 2.0.0 OK: queued"
        # The failure does not stick past the transaction (maddy's does).
        assert a.cmd("RSET").startswith("250 ")
        assert accepted(a.mail())
        assert a.finish("a") == "250 2.0.0 OK: queued"
    finally:
        close_all(a, b)
    assert stored_bodies(tmp_path) == [b"a\n", b"b\n"]


def test_shared_block_is_one_counter_for_two_endpoints(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    # smtp on 127.0.0.1 and submission on 127.0.0.2 share `limits shared`;
    # a third endpoint on 127.0.0.3 has the same rule inline: its own counter.
    pipeline = """
    destination example.org {
        deliver_to &mb
    }
    default_destination {
        reject 550 5.7.1 "Relaying denied"
    }"""
    text = f"""
state_dir {tmp_path}/state
hostname mx.example.com
limits shared {{
    all rate 2 1h
}}
storage.maildir mb {{
    path {tmp_path}/mail
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    tls off
    defer_sender_reject no
    limits &shared{pipeline}
}}
submission tcp://127.0.0.2:0 {{
    tls off
    auth dummy
    defer_sender_reject no
    limits &shared{pipeline}
}}
smtp tcp://127.0.0.3:0 {{
    tls off
    defer_sender_reject no
    limits {{
        all rate 2 1h
    }}{pipeline}
}}
"""
    srv = start(text, ready=3)
    ports = {a.split("//")[1].rsplit(":", 1)[0]: int(a.rsplit(":", 1)[1]) for a in srv.addresses}
    clients: list[Client] = []
    try:
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            clients.append(Client(ports[host], host=host))
        smtp, sub, private = clients
        token = base64.b64encode(b"\0someone\0secret").decode()
        assert sub.cmd(f"AUTH PLAIN {token}").startswith("235 ")
        assert accepted(smtp.mail())  # token 1 of the shared bucket
        assert smtp.finish("smtp") == "250 2.0.0 OK: queued"
        assert accepted(sub.mail("someone@example.org"), "someone@example.org")  # token 2
        assert sub.finish("submission") == "250 2.0.0 OK: queued"

        def two_private() -> list[tuple[str, float]]:
            timings = []
            for _ in range(2):
                timings.append(private.timed("MAIL FROM:<p@example.net>"))
                assert private.cmd("RSET").startswith("250 ")
            return timings

        # The shared bucket is empty on both endpoints; the inline one is not.
        over_smtp, over_sub, private_replies = in_parallel(
            lambda: smtp.timed("MAIL FROM:<a@example.net>"),
            lambda: sub.timed("MAIL FROM:<someone@example.org>"),
            two_private,
        )
        for reply, took in (over_smtp, over_sub):
            assert reply == HIGH_LOAD and EARLY <= took <= LATE, (reply, took)
        for reply, took in private_replies:
            assert accepted(reply, "p@example.net") and took < PROMPT, (reply, took)
    finally:
        close_all(*clients)
    assert stored_bodies(tmp_path) == [b"smtp\n", b"submission\n"]


def reset_on_close(c: Dialog) -> None:
    """Make `close` send a reset (SO_LINGER 0): the client just vanishes."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_concurrency_released_when_a_client_vanishes(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    srv = start(config(tmp_path, "limits {\n        all concurrency 1\n    }"))
    clients = [Client(srv.port(), f"127.0.0.{i}") for i in range(2, 7)]
    gone, rude, nxt, ghost, last = clients
    try:
        # Mid-DATA, then a reset: no QUIT, no FIN.
        assert accepted(gone.mail())
        assert gone.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        assert gone.cmd("DATA").startswith("354")
        gone.send(b"Subject: half\r\n\r\nhalf a body\r\n")
        waiting = Pending(rude, "MAIL FROM:<r@example.net>")
        time.sleep(0.5)
        assert waiting.waiting()
        reset_on_close(gone)
        gone.close()
        vanished = time.monotonic()
        reply, at = waiting.result()
        assert accepted(reply or "", "r@example.net"), reply
        assert at - vanished < PROMPT, at - vanished
        # Mid-envelope, then an ordinary close without QUIT: the next client
        # (not waiting yet) gets the slot at once.
        assert rude.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        rude.close()
        time.sleep(0.3)
        reply, took = nxt.timed("MAIL FROM:<n@example.net>")
        assert accepted(reply, "n@example.net") and took < PROMPT, (reply, took)
        assert nxt.finish("whole") == "250 2.0.0 OK: queued"
        # A client that vanishes while its MAIL waits for the slot: the wait
        # goes on (docs/limits.md), takes the slot when it frees, and the dead
        # session gives it back, so nothing leaks.
        assert accepted(nxt.mail())
        ghost.send(b"MAIL FROM:<g@example.net>\r\n")
        time.sleep(0.3)
        reset_on_close(ghost)
        ghost.close()
        time.sleep(0.3)
        assert nxt.cmd("RSET").startswith("250 ")
        time.sleep(0.3)
        reply, took = last.timed("MAIL FROM:<l@example.net>")
        assert accepted(reply, "l@example.net") and took < PROMPT, (reply, took)
    finally:
        close_all(*clients)
    assert stored_bodies(tmp_path) == [b"whole\n"]  # the half message was dropped
    srv.wait_log(r"incoming message .*src_ip=127\.0\.0\.5 sender=g@example\.net")
    assert len(re.findall(r"\baborted msg_id=", srv.log)) >= 2, srv.log


# -- connection caps behind a proxy --------------------------------------------


def proxy_header(src: str) -> bytes:
    return f"PROXY TCP4 {src} 127.0.0.1 40000 25\r\n".encode()


def proxied(port: int, src: str) -> Client:
    """A connection from 127.0.0.1 (the trusted proxy) naming `src`."""
    c = Client(port, "127.0.0.1", banner=False)
    c.send(proxy_header(src))
    return c


def test_connection_caps_count_the_proxied_client(
    start: Callable[..., Kittiwake], tmp_path: Path
) -> None:
    block = (
        "    defer_sender_reject no\n    max_connections_per_ip 2\n"
        "    proxy_protocol {\n        trust 127.0.0.1\n    }"
    )
    srv = start(config(tmp_path, "limits {\n        ip concurrency 1\n    }", block=block))
    first, second = proxied(srv.port(), "203.0.113.7"), proxied(srv.port(), "203.0.113.7")
    third = proxied(srv.port(), "203.0.113.7")
    other = proxied(srv.port(), "203.0.113.8")
    try:
        for c in (first, second):
            assert c.reply()[0].startswith("220 ")
        # All four come from 127.0.0.1: only the proxied address counts.
        assert third.reply() == ["421 4.7.0 Too many connections, try again later"]
        assert third.closed()
        assert other.reply()[0].startswith("220 ")
        for c in (first, second, other):
            assert c.cmd("EHLO client.example").startswith("250 ")
        srv.wait_log(r"per-IP connection limit reached src_ip=203\.0\.113\.7")
        # `ip` limits see the proxied address too: .8 is free, .7 is held.
        assert accepted(first.mail())
        reply, took = other.timed("MAIL FROM:<o@example.net>")
        assert accepted(reply, "o@example.net") and took < PROMPT, (reply, took)
        waiting = Pending(second, "MAIL FROM:<s@example.net>")
        time.sleep(1.0)
        assert waiting.waiting()
        assert first.cmd("RSET").startswith("250 ")
        reply, _ = waiting.result()
        assert accepted(reply or "", "s@example.net"), reply
        # A freed connection slot is usable again.
        assert first.cmd("QUIT").startswith("221 ")
        first.close()
        time.sleep(0.3)
        again = proxied(srv.port(), "203.0.113.7")
        try:
            assert again.reply()[0].startswith("220 ")
        finally:
            again.close()
    finally:
        close_all(first, second, third, other)
    assert "src_ip=127.0.0.1" not in srv.log
