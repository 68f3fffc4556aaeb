"""`target.remote` through the real server, to real receiving servers.

kittiwake runs with `--debug.dnsoverride` pointing at the tests' DNS
server (fakedns.py) and `--debug.smtpport` at one high port, on which
receiving servers (mxsink.py) listen at 127.0.0.2, 127.0.0.3, ...: the
MX hosts of the test domains. One endpoint delivers straight to
`target.remote` (so the client sees its replies as they are), another one
through `target.queue` (retries, notices).

Domains and where their MX records point:

| domain | MX | receiver |
|---|---|---|
| pref.test | 10 mx-b, 5 mx-a | mx-a (127.0.0.2) first |
| fallback.test | 5 down (127.0.0.9, nothing listens), 10 mx-b | mx-b (127.0.0.3) |
| implicit.test | none; A 127.0.0.2 | mx-a |
| nullmx.test | `0 .` | refused 556 5.1.10 |
| servfail.test | SERVFAIL | stays queued, 451 |
| (anything else) | NXDOMAIN | 550 5.1.2; a DSN through the queue |
| tls.test | mx-tls (127.0.0.5), trusted certificate | over TLS |
| badcert.test | mx-bad (127.0.0.6), certificate of an unknown CA | over TLS all the same |
| a.test, b.test | mx-a, mx-b | one connection each |
| pol.test | 5 mx-a (plain text), 10 mx-tls | where a policy wants TLS |
| v6.test | mx-v6, AAAA ::1 only | over IPv6 (not with `force_ipv4`) |
| brokentls.test | mx-broken (127.0.0.8): STARTTLS answered, no handshake | in plain text |
| пример-a.test, пример-b.test | mx-a (SMTPUTF8), mx-b (told not to offer it) | UTF-8 or A-labels |

`mx_auth` is exercised with the test-only policy `test_policy`
(fakepolicy.py), which vouches for the levels its block says and refuses
what it is told to.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import fakepolicy  # noqa: F401  (test_policy, for the in-process test)
import pytest
import trustme
from fakedns import SERVFAIL, FakeDNS
from kw import Kittiwake, free_port, maildir_files
from mxsink import MXSink
from outbound import Outcome, deliver
from postfix import Postfix, instance_pids, masters, need_postfix, not_root
from queuetools import wait_for

from kittiwake.config.parser import parse_text
from kittiwake.container import Container, DebugFlags
from kittiwake.message import MsgMeta
from kittiwake.mx_auth.base import PolicyReport
from kittiwake.remote.target import RemoteTarget
from kittiwake.targets.base import DeliveryTarget
from kittiwake.tlsrpt import TLSAttempt

Start = Callable[..., Kittiwake]

#: Two internationalised domains, as DNS knows them (A-labels).
IDN_A = "пример-a.test".encode("idna").decode()
IDN_B = "пример-b.test".encode("idna").decode()

ADDRESSES = {
    "mx-a": "127.0.0.2",
    "mx-b": "127.0.0.3",
    "mx-tls": "127.0.0.5",
    "mx-bad": "127.0.0.6",
    "mx-broken": "127.0.0.8",
}


class World:
    """The DNS and the receiving servers every test here shares."""

    def __init__(self, ca: trustme.CA) -> None:
        self.port = free_port()
        self.ca = ca
        records: dict[tuple[str, str], list[str] | str] = {
            ("pref.test", "MX"): ["10 mx-b.test.", "5 mx-a.test."],
            ("fallback.test", "MX"): ["5 down.test.", "10 mx-b.test."],
            ("down.test", "A"): ["127.0.0.9"],
            ("implicit.test", "A"): ["127.0.0.2"],
            ("nullmx.test", "MX"): ["0 ."],
            ("servfail.test", "MX"): SERVFAIL,
            ("tls.test", "MX"): ["10 mx-tls.test."],
            ("badcert.test", "MX"): ["10 mx-bad.test."],
            ("a.test", "MX"): ["10 mx-a.test."],
            ("b.test", "MX"): ["10 mx-b.test."],
            ("reuse.test", "MX"): ["10 mx-b.test."],
            ("pol.test", "MX"): ["5 mx-a.test.", "10 mx-tls.test."],
            ("v6.test", "MX"): ["10 mx-v6.test."],
            ("brokentls.test", "MX"): ["10 mx-broken.test."],
            (IDN_A, "MX"): ["10 mx-a.test."],
            (IDN_B, "MX"): ["10 mx-b.test."],
            ("mx-v6.test", "AAAA"): ["::1"],
        }
        for name, ip in ADDRESSES.items():
            records[(f"{name}.test", "A")] = [ip]
        self.dns = FakeDNS(records)
        trusted = ca.issue_cert("mx-tls.test")
        good = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trusted.configure_cert(good)
        stranger = trustme.CA().issue_cert("mx-bad.test")
        bad = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        stranger.configure_cert(bad)
        self.sinks = {
            "mx-a": MXSink(ADDRESSES["mx-a"], self.port, name="mx-a.test"),
            "mx-b": MXSink(ADDRESSES["mx-b"], self.port, name="mx-b.test"),
            "mx-tls": MXSink(ADDRESSES["mx-tls"], self.port, tls=good, name="mx-tls.test"),
            "mx-bad": MXSink(ADDRESSES["mx-bad"], self.port, tls=bad, name="mx-bad.test"),
            "mx-v6": MXSink("::1", self.port, name="mx-v6.test"),
            "mx-broken": MXSink(
                ADDRESSES["mx-broken"], self.port, broken_tls=True, name="mx-broken.test"
            ),
        }

    def reset(self) -> None:
        for sink in self.sinks.values():
            sink.reset()

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self.dns.close()


@pytest.fixture(scope="module")
def world(ca: trustme.CA) -> Iterator[World]:
    made = World(ca)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def mx(world: World) -> World:
    world.reset()
    return world


def config(tmp: Path, world: World, cert: tuple[str, str], remote: str = "") -> str:
    ca_path = tmp / "ca.pem"
    world.ca.cert_pem.write_to_path(str(ca_path))
    return f"""
state_dir {tmp}/state
hostname sender.example.com
autogenerated_msg_domain example.com
tls file {cert[0]} {cert[1]}
target.remote remote {{
    tls_client {{
        root_ca {ca_path}
    }}
    connect_timeout 5s
{remote}
}}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
target.queue outq {{
    target &remote
    location {tmp}/queue
    initial_retry_time 300ms
    retry_time_scale 1
    max_tries 20
    post_init_delay 0s
    bounce {{
        destination sender.example {{ deliver_to &mb }}
        default_destination {{ reject 550 5.7.1 "No notices to strangers" }}
    }}
}}
smtp tcp://127.0.0.1:0 {{
    deliver_to &remote
}}
smtp tcp://127.0.0.1:0 {{
    tls off
    deliver_to &outq
}}
"""


def start(
    kittiwake: Start, tmp: Path, world: World, cert: tuple[str, str], remote: str = ""
) -> Kittiwake:
    return kittiwake(
        config(tmp, world, cert, remote),
        ready=2,
        args=(
            "--debug.dnsoverride",
            world.dns.address,
            "--debug.smtpport",
            str(world.port),
        ),
    )


def message(subject: str, body: str = "Hello over there.\r\n") -> bytes:
    return (
        f"From: <me@sender.example>\r\nTo: <you@elsewhere.test>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@sender.example>\r\n\r\n{body}"
    ).encode()


def send_direct(
    server: Kittiwake,
    rcpts: list[str],
    subject: str = "hello",
    *,
    sender: str = "me@sender.example",
) -> tuple[dict[str, tuple[int, bytes]], tuple[int, bytes] | None]:
    """One message to the direct endpoint: each RCPT's reply, and DATA's (None: no DATA)."""
    replies: dict[str, tuple[int, bytes]] = {}
    with smtplib.SMTP("127.0.0.1", server.port(0), timeout=30) as client:
        client.ehlo("client.example")
        code, text = client.mail(sender)
        assert code == 250, text
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            # The endpoint names the message in refusals: not the target's text.
            replies[rcpt] = (code, text.split(b" (msg ID = ")[0])
        if not any(code == 250 for code, _ in replies.values()):
            client.rset()
            return replies, None
        data = client.data(message(subject))
        return replies, data


def send_queued(server: Kittiwake, rcpts: list[str], subject: str = "queued") -> None:
    with smtplib.SMTP("127.0.0.1", server.port(1), timeout=30) as client:
        client.sendmail("me@sender.example", rcpts, message(subject))


def notices(tmp: Path) -> list[email.message.EmailMessage]:
    out = []
    for path in maildir_files(tmp / "mail", "sender.example", "me"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        out.append(msg)
    return out


# -- where the message goes -----------------------------------------------------


def test_lowest_preference_first(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["you@pref.test"], "preference")
    assert replies["you@pref.test"][0] == 250
    assert data is not None and data[0] == 250
    (got,) = mx.sinks["mx-a"].wait_messages(1)
    assert got.rcpts == ["you@pref.test"]
    assert got.mail_from == "me@sender.example"
    assert b"Subject: preference" in got.data
    assert not mx.sinks["mx-b"].messages
    assert not got.tls  # mx-a offers no STARTTLS: plain text


def test_next_mx_when_the_first_refuses_connections(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["you@fallback.test"], "fallback")
    assert replies["you@fallback.test"][0] == 250 and data is not None and data[0] == 250
    (got,) = mx.sinks["mx-b"].wait_messages(1)
    assert got.rcpts == ["you@fallback.test"]
    assert "MX unusable" in server.log and "mx=down.test" in server.log


def test_implicit_mx_is_the_domain_itself(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["you@implicit.test"], "implicit")
    assert replies["you@implicit.test"][0] == 250 and data is not None and data[0] == 250
    (got,) = mx.sinks["mx-a"].wait_messages(1)
    assert got.rcpts == ["you@implicit.test"]


def test_null_mx_is_refused(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["you@nullmx.test"])
    code, text = replies["you@nullmx.test"]
    assert (code, text.split(b" ", 1)[0]) == (556, b"5.1.10"), text
    assert b"null MX" in text
    assert data is None


def test_nxdomain_is_permanent_and_bounces_through_the_queue(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, _ = send_direct(server, ["you@nowhere.test"])
    code, text = replies["you@nowhere.test"]
    assert code == 550 and text.startswith(b"5.1.2 "), text
    send_queued(server, ["you@nowhere.test"], "to nowhere")
    found = wait_for(lambda: notices(tmp_path), message="DSN")
    assert isinstance(found, list) and len(found) == 1
    text_of = found[0].as_string()
    assert "you@nowhere.test" in text_of and "5.1.2" in text_of


def test_servfail_is_temporary_and_stays_queued(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, _ = send_direct(server, ["you@servfail.test"])
    code, text = replies["you@servfail.test"]
    assert code == 451 and text.startswith(b"4.4."), text
    send_queued(server, ["you@servfail.test"], "retry me")
    server.wait_log(r"not delivered .*rcpt=you@servfail\.test")
    queued = [p for p in (tmp_path / "queue").iterdir() if p.name != "lock"]
    assert queued, "the message left the queue"
    assert not notices(tmp_path)


# -- TLS ----------------------------------------------------------------------------


def test_starttls_with_a_trusted_certificate(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, "    debug yes")
    replies, data = send_direct(server, ["you@tls.test"], "secret")
    assert replies["you@tls.test"][0] == 250 and data is not None and data[0] == 250
    (got,) = mx.sinks["mx-tls"].wait_messages(1)
    assert got.tls
    assert b"Subject: secret" in got.data
    assert "tls=authenticated" in server.log


def test_untrusted_certificate_still_encrypted(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, "    debug yes")
    replies, data = send_direct(server, ["you@badcert.test"], "unverified")
    assert replies["you@badcert.test"][0] == 250 and data is not None and data[0] == 250
    (got,) = mx.sinks["mx-bad"].wait_messages(1)
    assert got.tls
    assert "certificate check failed, TLS without it" in server.log
    assert "tls=encrypted" in server.log
    # The first connection gave up at the handshake, the second one delivered.
    assert mx.sinks["mx-bad"].connections == 2


def test_failed_handshake_falls_back_to_plain_text(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, "    debug yes")
    replies, data = send_direct(server, ["you@brokentls.test"], "plain after all")
    assert replies["you@brokentls.test"][0] == 250, server.log
    assert data is not None and data[0] == 250
    (got,) = mx.sinks["mx-broken"].wait_messages(1)
    assert not got.tls
    assert mx.sinks["mx-broken"].connections == 2
    assert "TLS failed, plain text" in server.log and "tls=none" in server.log


# -- connections ----------------------------------------------------------------------


def test_two_domains_two_connections_one_per_domain(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, "    conn_max_idle_count 0")
    rcpts = ["x@a.test", "y@b.test", "z@a.test", "w@b.test", "v@a.test"]
    replies, data = send_direct(server, rcpts, "split")
    assert all(code == 250 for code, _ in replies.values()), replies
    assert data is not None and data[0] == 250
    (at_a,) = mx.sinks["mx-a"].wait_messages(1)
    (at_b,) = mx.sinks["mx-b"].wait_messages(1)
    assert at_a.rcpts == ["x@a.test", "z@a.test", "v@a.test"]
    assert at_b.rcpts == ["y@b.test", "w@b.test"]
    assert mx.sinks["mx-a"].connections == 1
    assert mx.sinks["mx-b"].connections == 1


def test_connections_are_reused_up_to_the_limit(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, "    conn_reuse_limit 3")
    for i in range(7):
        replies, data = send_direct(server, [f"u{i}@reuse.test"], f"reuse {i}")
        assert replies[f"u{i}@reuse.test"][0] == 250 and data is not None and data[0] == 250
    got = mx.sinks["mx-b"].wait_messages(7)
    assert len(got) == 7
    # 3 messages per connection: 1-3, 4-6, 7.
    assert [m.connection for m in got] == [1, 1, 1, 2, 2, 2, 3]
    assert mx.sinks["mx-b"].connections == 3


def test_idle_connections_are_closed_after_their_idle_time(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, "    conn_max_idle_time 1s")
    sink = mx.sinks["mx-b"]
    send_direct(server, ["u1@reuse.test"], "then idle")
    assert len(sink.wait_messages(1)) == 1
    assert sink.quits == 0  # kept for the next message
    wait_for(lambda: sink.quits == 1, timeout=5, message="QUIT of the idle connection")
    send_direct(server, ["u2@reuse.test"], "after the idle time")
    assert [m.connection for m in sink.wait_messages(2)] == [1, 2]


def test_the_pool_is_closed_when_the_server_stops(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    sink = mx.sinks["mx-b"]
    send_direct(server, ["u1@reuse.test"], "then stop")
    assert len(sink.wait_messages(1)) == 1
    assert sink.quits == 0
    assert server.stop() == 0  # SIGTERM
    wait_for(lambda: sink.quits == 1, timeout=5, message="QUIT at shutdown")


def test_without_pool_every_message_dials(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, "    conn_max_idle_count 0")
    for i in range(3):
        send_direct(server, [f"u{i}@reuse.test"], f"fresh {i}")
    assert len(mx.sinks["mx-b"].wait_messages(3)) == 3
    assert mx.sinks["mx-b"].connections == 3


@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelined"])
def test_a_pooled_connection_closed_by_the_mx_is_replaced(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], pipelining: bool
) -> None:
    """The MX goes away while our connection idles: the next message dials again
    (with PIPELINING, the loss shows only when MAIL and RCPT have been written)."""
    server = start(kittiwake, tmp_path, mx, cert_files)
    sink = mx.sinks["mx-b"]
    sink.pipelining = pipelining
    send_direct(server, ["u1@reuse.test"], "before")
    assert len(sink.wait_messages(1)) == 1
    sink.drop_connections()  # the idle connection kittiwake holds is cut
    replies, data = send_direct(server, ["u2@reuse.test"], "after")
    assert replies["u2@reuse.test"][0] == 250 and data is not None and data[0] == 250
    first, second = sink.wait_messages(2)
    assert second.rcpts == ["u2@reuse.test"]
    assert second.connection == first.connection + 1


# -- pipelining (RFC 2920) --------------------------------------------------------------


def test_mail_and_the_first_rcpt_go_in_one_write_to_an_mx_that_pipelines(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    sink = mx.sinks["mx-a"]
    sink.pipelining = True
    sink.rcpt_replies = {"gone@a.test": "550 5.1.1 No such user here"}
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["ok@a.test", "gone@a.test", "two@a.test"], "first")
    assert replies["ok@a.test"][0] == 250
    assert replies["gone@a.test"] == (550, b"5.1.1 mx-a.test said: No such user here")
    assert replies["two@a.test"][0] == 250
    assert data is not None and data[0] == 250
    # The first recipient refused, on a reused connection this time.
    sink.rcpt_replies = {"gone@a.test": "550 5.1.1 No such user here"}
    replies, data = send_direct(server, ["gone@a.test", "three@a.test"], "second")
    assert replies["gone@a.test"] == (550, b"5.1.1 mx-a.test said: No such user here")
    assert replies["three@a.test"][0] == 250 and data is not None and data[0] == 250
    first, second = sink.wait_messages(2)
    assert first.rcpts == ["ok@a.test", "two@a.test"] and second.rcpts == ["three@a.test"]
    assert second.connection == first.connection  # pooled
    assert (sink.pipelined, sink.unpipelined) == (2, 0)


def test_mail_waits_for_its_reply_when_the_mx_does_not_pipeline(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    sink = mx.sinks["mx-a"]
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["ok@a.test", "two@a.test"])
    assert [code for code, _ in replies.values()] == [250, 250]
    assert data is not None and data[0] == 250
    assert [m.rcpts for m in sink.wait_messages(1)] == [["ok@a.test", "two@a.test"]]
    assert (sink.pipelined, sink.unpipelined) == (0, 1)


@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelined"])
def test_a_refused_mail_from_refuses_every_recipient_of_that_domain(
    kittiwake: Start,
    tmp_path: Path,
    mx: World,
    cert_files: tuple[str, str],
    pipelining: bool,
) -> None:
    """With PIPELINING the first RCPT was already written: its answer (a 503)
    is read and dropped, and MAIL FROM's refusal is every recipient's."""
    sink = mx.sinks["mx-a"]
    sink.pipelining = pipelining
    sink.mail_reply = "550 5.7.1 Sender refused here"
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["one@a.test", "two@a.test"])
    refused = (550, b"5.7.1 mx-a.test said: Sender refused here")
    assert replies == {"one@a.test": refused, "two@a.test": refused}
    assert data is None
    sink.mail_reply = None  # the connection was not kept in that state: a new one works
    replies, data = send_direct(server, ["three@a.test"])
    assert replies["three@a.test"][0] == 250 and data is not None and data[0] == 250
    assert [m.rcpts for m in sink.wait_messages(1)] == [["three@a.test"]]
    assert sink.connections == 2


# -- replies --------------------------------------------------------------------------


def test_replies_passed_through_with_the_mx_name_and_552_as_452(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    sink = mx.sinks["mx-a"]
    sink.rcpt_replies = {
        "gone@a.test": "550 5.1.1 No such user here",
        "many@a.test": "552 5.5.3 Too many recipients",
    }
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["gone@a.test", "many@a.test", "ok@a.test"])
    assert replies["gone@a.test"] == (550, b"5.1.1 mx-a.test said: No such user here")
    assert replies["many@a.test"] == (452, b"4.5.3 mx-a.test said: Too many recipients")
    assert replies["ok@a.test"][0] == 250
    assert data is not None and data[0] == 250
    (got,) = sink.wait_messages(1)
    assert got.rcpts == ["ok@a.test"]


def test_content_refused_by_one_domain_or_by_several(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    """Behind an endpoint (one reply for the message): the one error, or a summary."""
    server = start(kittiwake, tmp_path, mx, cert_files)
    mx.sinks["mx-a"].data_reply = "554 5.7.1 Spam, go away"
    _, data = send_direct(server, ["x@a.test", "y@b.test"], "one refuses")
    assert data is not None
    assert (data[0], data[1].split(b" (msg ID")[0]) == (554, b"5.7.1 mx-a.test said: Spam, go away")
    assert [m.rcpts for m in mx.sinks["mx-b"].wait_messages(1)] == [["y@b.test"]]
    mx.sinks["mx-b"].data_reply = "451 4.3.0 Try later"
    _, data = send_direct(server, ["x@a.test", "y@b.test"], "both refuse")
    assert data is not None
    assert (data[0], data[1].split(b" (msg ID")[0]) == (
        451,
        b"4.0.0 Partial delivery failure, additional attempts may result in duplicates",
    )


def test_address_literal_and_no_domain_refused(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, _ = send_direct(server, ["you@[127.0.0.2]"])
    assert replies["you@[127.0.0.2]"] == (550, b"5.1.1 IP address literals are not supported")
    replies, _ = send_direct(server, ["postmaster"])
    assert replies["postmaster"] == (550, b"5.1.1 <postmaster> address it no supported")


def test_requiretls_refused_towards_a_plaintext_mx(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", server.port(0), timeout=30) as client:
        client.ehlo("client.example")
        client.starttls(context=context)
        client.ehlo("client.example")
        assert client.has_extn("requiretls")
        code, text = client.mail("me@sender.example", ["REQUIRETLS"])
        assert code == 250, text
        code, text = client.rcpt("you@a.test")
    assert code == 550 and text.startswith(b"5.7.30 "), text
    assert not mx.sinks["mx-a"].messages
    assert "not authenticated" in server.log


# -- through the queue -------------------------------------------------------------------


def test_queue_delivers_each_domain_and_bounces_only_the_refused(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    """body_non_atomic: each recipient gets its own domain's outcome."""
    mx.sinks["mx-a"].rcpt_replies = {"gone@a.test": "550 5.1.1 No such user here"}
    server = start(kittiwake, tmp_path, mx, cert_files)
    send_queued(server, ["gone@a.test", "ok@a.test", "ok@b.test", "x@nullmx.test"], "mixed")
    (at_a,) = mx.sinks["mx-a"].wait_messages(1)
    (at_b,) = mx.sinks["mx-b"].wait_messages(1)
    assert at_a.rcpts == ["ok@a.test"] and at_b.rcpts == ["ok@b.test"]
    found = wait_for(lambda: notices(tmp_path), message="DSN")
    assert isinstance(found, list) and len(found) == 1
    report = found[0].as_string()
    assert "gone@a.test" in report and "mx-a.test said: No such user here" in report
    assert "x@nullmx.test" in report and "5.1.10" in report
    assert "ok@a.test" not in report and "ok@b.test" not in report


def test_local_ip_and_force_ipv4(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    """The connection leaves from `local_ip`; only A records are asked for."""
    mx.dns.queries.clear()
    remote = "    local_ip 127.0.0.7\n    force_ipv4 yes\n    debug yes"
    server = start(kittiwake, tmp_path, mx, cert_files, remote)
    replies, data = send_direct(server, ["you@a.test"], "from .7")
    assert replies["you@a.test"][0] == 250 and data is not None and data[0] == 250
    assert len(mx.sinks["mx-a"].wait_messages(1)) == 1
    assert mx.sinks["mx-a"].peers == ["127.0.0.7"]
    asked = [q for q in mx.dns.queries if q[0] == "mx-a.test."]
    assert asked == [("mx-a.test.", "A")]


def test_ipv6_unless_force_ipv4(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    replies, data = send_direct(server, ["you@v6.test"], "over v6")
    assert replies["you@v6.test"][0] == 250 and data is not None and data[0] == 250
    (got,) = mx.sinks["mx-v6"].wait_messages(1)
    assert got.rcpts == ["you@v6.test"]
    server.kill()
    server = start(kittiwake, tmp_path, mx, cert_files, "    force_ipv4 yes")
    replies, _ = send_direct(server, ["you@v6.test"])
    assert replies["you@v6.test"] == (550, b"5.4.0 No usable MXs, last err: MX host has no address")
    assert len(mx.sinks["mx-v6"].messages) == 1


def test_utf8_where_offered_else_a_labels(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    mx.sinks["mx-b"].smtputf8 = False
    server = start(kittiwake, tmp_path, mx, cert_files)
    with smtplib.SMTP("127.0.0.1", server.port(0), timeout=30) as client:
        rcpts = ["you@пример-a.test", "you@пример-b.test"]
        refused = client.sendmail("me@sender.example", rcpts, message("idn"), ["SMTPUTF8"])
    assert refused == {}
    (at_a,) = mx.sinks["mx-a"].wait_messages(1)
    (at_b,) = mx.sinks["mx-b"].wait_messages(1)
    assert at_a.rcpts == ["you@пример-a.test"] and "SMTPUTF8" in at_a.mail_params
    assert at_b.rcpts == [f"you@{IDN_B}"] and "SMTPUTF8" not in at_b.mail_params


def test_postfix_smtpd_accepts_what_the_queue_sends(
    kittiwake: Start, tmp_path: Path, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """A real MTA as the MX: Postfix's smtpd takes the message (held in its queue)."""
    need_postfix()
    reason = not_root()
    if reason:
        pytest.skip(reason)
    records: dict[tuple[str, str], list[str] | str] = {
        ("postfix.test", "MX"): ["10 pf.test."],
        ("pf.test", "A"): ["127.0.0.1"],
    }
    dns = FakeDNS(records)
    pf = Postfix(
        {
            "smtpd_recipient_restrictions": "check_recipient_access static:HOLD",
            # Held before any delivery; were it not, nothing would leave.
            "default_transport": "discard:held by the test",
        },
        keep_log=tmp_path / "maillog",
    )
    try:
        pf.start()
        world = _PostfixWorld(dns, pf.port, ca)
        server = start(kittiwake, tmp_path, world, cert_files)  # type: ignore[arg-type]
        send_queued(server, ["someone@postfix.test", "other@postfix.test"], "to postfix")
        held = pf.wait_queue(lambda q: len(q) == 1)
        (entry,) = held
        assert entry["queue_name"] == "hold"
        assert entry["sender"] == "me@sender.example"
        got = sorted(r["address"] for r in entry["recipients"])
        assert got == ["other@postfix.test", "someone@postfix.test"]
        wait_for(lambda: not [p for p in (tmp_path / "queue").iterdir() if p.name != "lock"])
        assert not notices(tmp_path)
    finally:
        pf.close()
        dns.close()
        assert masters(pf.config_dir) == [] and instance_pids(pf.config_dir) == []


class _PostfixWorld:
    """What `start` needs of a `World`: the DNS, the port, the CA."""

    def __init__(self, dns: FakeDNS, port: int, ca: trustme.CA) -> None:
        self.dns = dns
        self.port = port
        self.ca = ca


# -- mx_auth policies and REQUIRETLS ------------------------------------------------------

STRICT = "    mx_auth {\n        test_policy {\n            refuse_plaintext\n        }\n    }"
#: A policy that vouches for MX hosts (as MTA-STS would) and for TLS (as DANE would).
VOUCHING = (
    "    mx_auth {\n        test_policy {\n            mx_level mtasts\n"
    "            tls_level authenticated\n        }\n    }"
)


def send_requiretls(server: Kittiwake, ca: trustme.CA, rcpt: str) -> tuple[int, bytes, int]:
    """A REQUIRETLS message over STARTTLS: the RCPT reply and the DATA reply's code."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", server.port(0), timeout=30) as client:
        client.ehlo("client.example")
        client.starttls(context=context)
        client.ehlo("client.example")
        assert client.has_extn("requiretls")
        code, text = client.mail("me@sender.example", ["REQUIRETLS"])
        assert code == 250, text
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text.split(b" (msg ID = ")[0], 0
        data_code, _ = client.data(message("requiretls"))
        return code, text, data_code


def test_a_policy_refusal_skips_to_the_next_mx(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, STRICT)
    replies, data = send_direct(server, ["you@pol.test"], "policy")
    assert replies["you@pol.test"][0] == 250 and data is not None and data[0] == 250
    (got,) = mx.sinks["mx-tls"].wait_messages(1)
    assert got.tls
    assert not mx.sinks["mx-a"].messages
    assert "TLS is required (test policy)" in server.log


def test_no_usable_mx_gives_the_last_error(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, STRICT)
    replies, _ = send_direct(server, ["you@a.test"])
    assert replies["you@a.test"] == (
        451,
        b"4.7.1 No usable MXs, last err: TLS is required (test policy)",
    )
    assert not mx.sinks["mx-a"].messages


def test_tls_required_no_turns_the_policies_off(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    """RFC 8689 §5: `TLS-Required: No` (seen at receipt: through the queue)."""
    server = start(kittiwake, tmp_path, mx, cert_files, STRICT)
    with smtplib.SMTP("127.0.0.1", server.port(1), timeout=30) as client:
        client.sendmail("me@sender.example", ["you@a.test"], b"TLS-Required: No\r\n" + message("x"))
        client.sendmail("me@sender.example", ["them@a.test"], message("strict"))
    (got,) = mx.sinks["mx-a"].wait_messages(1)
    assert got.rcpts == ["you@a.test"] and not got.tls
    server.wait_log(r"not delivered .*rcpt=them@a\.test")
    assert [m.rcpts for m in mx.sinks["mx-a"].messages] == [["you@a.test"]]


def test_requiretls_override_no_keeps_the_policies(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, STRICT + "\n    requiretls_override no")
    with smtplib.SMTP("127.0.0.1", server.port(1), timeout=30) as client:
        client.sendmail("me@sender.example", ["you@a.test"], b"TLS-Required: No\r\n" + message("x"))
    server.wait_log(r"not delivered .*rcpt=you@a\.test")
    assert not mx.sinks["mx-a"].messages


def test_requiretls_delivered_when_the_levels_are_reached(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    mx.sinks["mx-tls"].requiretls = True
    server = start(kittiwake, tmp_path, mx, cert_files, VOUCHING)
    assert send_requiretls(server, ca, "you@tls.test")[::2] == (250, 250)
    (got,) = mx.sinks["mx-tls"].wait_messages(1)
    assert got.tls and "REQUIRETLS" in got.mail_params


def test_relaxed_requiretls_drops_the_flag_for_an_mx_without_it(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files, VOUCHING)
    assert send_requiretls(server, ca, "you@tls.test")[::2] == (250, 250)
    (got,) = mx.sinks["mx-tls"].wait_messages(1)
    assert got.tls and "REQUIRETLS" not in got.mail_params


def test_strict_requiretls_refuses_an_mx_without_it(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    remote = VOUCHING + "\n    relaxed_requiretls no"
    server = start(kittiwake, tmp_path, mx, cert_files, remote)
    code, text, _ = send_requiretls(server, ca, "you@tls.test")
    assert (code, text) == (550, b"5.7.30 REQUIRETLS: TLS requirements not met")
    assert not mx.sinks["mx-tls"].messages


def test_requiretls_refuses_an_unverified_certificate(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """Encrypted is not enough: a certificate the policies do not vouch for either."""
    remote = "    mx_auth {\n        test_policy {\n            mx_level mtasts\n        }\n    }"
    server = start(kittiwake, tmp_path, mx, cert_files, remote)
    code, text, _ = send_requiretls(server, ca, "you@badcert.test")
    assert (code, text) == (550, b"5.7.30 REQUIRETLS: TLS requirements not met")
    assert not mx.sinks["mx-bad"].messages


# -- TLS reports -------------------------------------------------------------------------


class _Attempts:
    """A `Recorder` that keeps what it is given."""

    def __init__(self) -> None:
        self.attempts: list[TLSAttempt] = []

    def record(self, attempt: TLSAttempt) -> None:
        self.attempts.append(attempt)


def test_every_connection_is_recorded_for_tls_reports(tmp_path: Path, mx: World) -> None:
    """In this process, so the test can be the recorder: one attempt per MX connection."""
    ca_path = tmp_path / "ca.pem"
    mx.ca.cert_pem.write_to_path(str(ca_path))
    block = (
        f"deliver_to remote {{\n tls_client {{\n  root_ca {ca_path}\n }}\n"
        " mx_auth {\n  test_policy {\n   refuse_mx mx-a.test\n  }\n }\n}\n"
    )
    rcpts = ["a@tls.test", "b@badcert.test", "c@pol.test", "d@b.test"]

    async def run() -> tuple[Outcome, list[TLSAttempt]]:
        text = f"state_dir {tmp_path}/state\nhostname sender.example.com\n"
        flags = DebugFlags(dns_override=mx.dns.address, smtp_port=mx.port)
        container = Container(
            parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path), debug_flags=flags
        )
        container.parse_globals()
        (node,) = parse_text(block, "t.conf")
        target = container.module_from_node(node, DeliveryTarget, "target")
        assert isinstance(target, RemoteTarget)
        recorder = _Attempts()
        target.recorder = recorder
        await container.start()
        try:
            meta = MsgMeta(id="tlsrpt01")
            out = await deliver(
                target, meta, "me@sender.example", rcpts, "reported", b"Hi\r\n", non_atomic=True
            )
        finally:
            await container.stop()
        return out, recorder.attempts

    out, attempts = asyncio.run(run())
    assert out.statuses == dict.fromkeys(rcpts)  # all delivered
    refused = [a for a in attempts if a.result == "sts-policy-invalid"]
    assert [(a.domain, a.receiving_mx, a.receiving_ip) for a in refused] == [
        ("pol.test", "mx-a.test", "")  # refused before any dial
    ]
    by_domain = {a.domain: a for a in attempts if a not in refused}
    assert sorted(by_domain) == ["b.test", "badcert.test", "pol.test", "tls.test"]
    assert len(attempts) == 5
    good = by_domain["tls.test"]
    assert (good.result, good.receiving_mx, good.receiving_ip) == (
        "success",
        "mx-tls.test",
        "127.0.0.5",
    )
    assert good.helo == "mx-tls.test" and good.sending_ip == "127.0.0.1"
    assert good.policies == (
        PolicyReport("sts", "tls.test", ("version: STSv1", "mode: enforce"), ("*.test",)),
    )
    assert by_domain["badcert.test"].result == "certificate-not-trusted"
    assert by_domain["pol.test"].receiving_mx == "mx-tls.test"
    plain = by_domain["b.test"]
    assert (plain.result, plain.receiving_ip) == ("starttls-not-supported", "127.0.0.3")


# -- limits ------------------------------------------------------------------------------


def test_destination_limit_per_recipient_domain(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str]
) -> None:
    """One message per hour to each domain: the second to a.test waits, then 451."""
    remote = "    limits {\n        destination rate 1 1h\n    }"
    server = start(kittiwake, tmp_path, mx, cert_files, remote)
    replies, data = send_direct(server, ["one@a.test"], "first")
    assert replies["one@a.test"][0] == 250 and data is not None and data[0] == 250
    replies, _ = send_direct(server, ["two@a.test"], "second")
    assert replies["two@a.test"] == (451, b"4.4.5 High load, try again later")
    replies, data = send_direct(server, ["three@b.test"], "elsewhere")
    assert replies["three@b.test"][0] == 250 and data is not None and data[0] == 250
    assert [m.rcpts for m in mx.sinks["mx-a"].messages] == [["one@a.test"]]
    assert len(mx.sinks["mx-b"].wait_messages(1)) == 1
