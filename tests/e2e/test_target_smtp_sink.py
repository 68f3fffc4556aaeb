"""target.smtp against Postfix's `smtp-sink`: faults, and the parameters on the wire.

smtp-sink (Debian package `postfix`) offers PIPELINING, 8BITMIME and DSN but
not SMTPUTF8, SIZE or CHUNKING, so it is also the server without SMTPUTF8
and the DATA (not BDAT) path. Its dumps record the MAIL and RCPT arguments
it received.

Through the kittiwake process (what the original client is told):

* RCPT refused hard (`-f RCPT`) and soft (`-r RCPT`): passed through;
* a stalled RCPT reply (`-W RCPT:10`) with `command_timeout 1s`: `450
  4.4.2` within the timeout, not after the stall;
* the connection dropped after the final dot (`-q .`): `450 4.4.2`;
* a hard error after the dot (`-f .`): passed through;
* `421` to MAIL (`-Q MAIL`): `451`, and our client's session goes on;
* SMTPUTF8 without the extension: domains in A-labels, a non-ASCII local
  part refused with `550 5.6.7` (sender) / `553 5.6.7` (recipient).

* RET, ENVID, NOTIFY and ORCPT from the client passed on unchanged.

In this process (every form of the parameters, without a client to
parse them): RET, ENVID, NOTIFY and ORCPT xtext-encoded when DSN is
offered (a non-ASCII ORCPT as RFC 6533 utf-8-addr-xtext), none and
`dsn_passed` false when it is not (`-N`); BODY=8BITMIME only when
offered (`-8`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakedns import FakeDNS
from kw import Dialog, Kittiwake
from outbound import deliver, target
from sink import Sink

from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta, RcptDSN, SMTPOptions

SINKS = {
    "plain": (),
    "hard": ("-f", "RCPT"),
    "soft": ("-r", "RCPT"),
    "stall": ("-W", "RCPT:10"),
    "drop": ("-q", "."),
    "hardend": ("-f", "."),
    "bye": ("-Q", "MAIL"),
}


@pytest.fixture(scope="module")
def sinks() -> Iterator[dict[str, Sink]]:
    started: dict[str, Sink] = {}
    try:
        for name, options in SINKS.items():
            started[name] = Sink(*options)
        yield started
    finally:
        for sink in started.values():
            sink.close()


def upstream_conf(tmp: Path, sinks: dict[str, Sink]) -> str:
    blocks = "".join(
        f"""
    destination {name}.test {{
        deliver_to smtp tcp://127.0.0.1:{sink.port} {{
            starttls no
            command_timeout 1s
            submission_timeout 2s
        }}
    }}"""
        for name, sink in sinks.items()
    )
    return f"""
state_dir {tmp}/state
hostname up.example.com
tls off
smtp tcp://127.0.0.1:0 {{{blocks}
    default_destination {{
        reject 550 5.7.1 "No"
    }}
}}
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, sinks: dict[str, Sink]) -> Iterator[Kittiwake]:
    tmp = tmp_path_factory.mktemp("up")
    dns = FakeDNS({})
    server = Kittiwake(tmp, upstream_conf(tmp, sinks), args=("--debug.dnsoverride", dns.address))
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()
        dns.close()


MESSAGE = b"From: a@example.net\r\nSubject: sink\r\n\r\nHello.\r\n.dot\r\n"


def send(
    port: int,
    sender: str,
    rcpt: str,
    *,
    params: str = "",
    rcpt_params: str = "",
    data: bool = True,
) -> tuple[str, str]:
    """(RCPT reply, final reply or "")."""
    with Dialog(port) as d:
        assert d.reply()[-1].startswith("220 ")
        assert d.cmd("EHLO client.example.net").startswith("250 ")
        assert d.cmd(f"MAIL FROM:<{sender}>{params}").startswith("250 ")
        answer = d.cmd(f"RCPT TO:<{rcpt}>{rcpt_params}")
        final = ""
        if data and answer.startswith("250 "):
            assert d.cmd("DATA").startswith("354 ")
            d.send(MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\n")
            final = d.reply()[-1]
        assert d.cmd("NOOP").startswith("250 ")  # the session goes on
        return answer, final


# -- faults, as the original client sees them ---------------------------------------


def test_rcpt_refused(up: Kittiwake) -> None:
    hard, _ = send(up.port(), "a@example.net", "x@hard.test")
    soft, _ = send(up.port(), "a@example.net", "x@soft.test")
    assert hard.startswith("500 5.3.0 Error: command failed (msg ID = ")
    assert soft.startswith("450 4.3.0 Error: command failed (msg ID = ")


def test_stalled_reply_hits_the_command_timeout(up: Kittiwake) -> None:
    start = time.monotonic()
    answer, _ = send(up.port(), "a@example.net", "x@stall.test")
    elapsed = time.monotonic() - start
    assert answer.startswith("450 4.4.2 Network I/O error (msg ID = ")
    assert 0.9 < elapsed < 5, elapsed
    up.wait_log(r"detail=\"tcp://127\.0\.0\.1:\d+: no reply within 1s\"")


def test_connection_dropped_after_the_dot_is_temporary(
    up: Kittiwake, sinks: dict[str, Sink]
) -> None:
    answer, final = send(up.port(), "a@example.net", "x@drop.test")
    assert answer.startswith("250 ")
    assert final.startswith("450 4.4.2 Network I/O error (msg ID = ")
    up.wait_log(r"connection closed by the server \(1 replies missing\)")


def test_error_after_the_dot_passes_through(up: Kittiwake) -> None:
    answer, final = send(up.port(), "a@example.net", "x@hardend.test")
    assert answer.startswith("250 ")
    assert final.startswith("500 5.3.0 Error: command failed (msg ID = ")


def test_421_does_not_close_our_session(up: Kittiwake) -> None:
    """The downstream going away is not our session's end: 451, and NOOP still works."""
    answer, _ = send(up.port(), "a@example.net", "x@bye.test", data=False)
    assert answer.startswith("451 4.0.0 Server closing connection (msg ID = ")


def test_smtputf8_without_the_extension(up: Kittiwake, sinks: dict[str, Sink]) -> None:
    before = len(sinks["plain"].transactions())
    # IDN domains are written in A-labels.
    answer, final = send(up.port(), "a@bücher.example", "jörg@plain.test", params=" SMTPUTF8")
    assert answer.startswith("553 5.6.7 SMTPUTF8 is unsupported, cannot convert recipient address")
    answer, final = send(up.port(), "grüße@example.net", "x@plain.test", params=" SMTPUTF8")
    assert answer.startswith("550 5.6.7 SMTPUTF8 is unsupported, cannot convert sender address")
    answer, final = send(up.port(), "a@bücher.example", "x@plain.test", params=" SMTPUTF8")
    assert answer.startswith("250 ") and final.startswith("250 ")
    (sent,) = sinks["plain"].wait_transactions(before + 1)[before:]
    assert sent.mail_args == "<a@xn--bcher-kva.example>"  # no SMTPUTF8, no other parameter
    assert sent.rcpt_args == ["<x@plain.test>"]
    # The dump has LF line ends and an empty line after the message.
    assert sent.message.endswith(b"\n\nHello.\n.dot\n\n")


def test_dsn_parameters_from_the_client_are_passed_on(
    tmp_path: Path, sinks: dict[str, Sink]
) -> None:
    """RET, ENVID, NOTIFY and ORCPT given to kittiwake reach the next server unchanged.

    Through a queue: only an endpoint whose every path ends in a queue
    offers DSN (the queue is what can send the notices).
    """
    sink = sinks["plain"]
    conf = f"""
state_dir {tmp_path}/state
hostname up.example.com
tls off
smtp tcp://127.0.0.1:0 {{
    deliver_to queue relay {{
        target smtp tcp://127.0.0.1:{sink.port} {{
            starttls no
        }}
        initial_retry_time 100ms
    }}
}}
"""
    dns = FakeDNS({})
    server = Kittiwake(tmp_path, conf, args=("--debug.dnsoverride", dns.address))
    try:
        server.wait_ready()
        before = len(sink.transactions())
        answer, final = send(
            server.port(),
            "a@example.net",
            "x@plain.test",
            params=" RET=HDRS ENVID=QQ+2Bid",
            rcpt_params=" NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Orig+2Bx@plain.test",
        )
        assert answer.startswith("250 ") and final.startswith("250 ")
        (sent,) = sink.wait_transactions(before + 1)[before:]
    finally:
        server.kill()
        dns.close()
    assert sent.mail_args == "<a@example.net> RET=HDRS ENVID=QQ+2Bid"
    assert sent.rcpt_args == [
        "<x@plain.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Orig+2Bx@plain.test"
    ]


def test_a_relay_without_a_queue_does_not_offer_dsn(up: Kittiwake) -> None:
    """No queue, no notices it could send: DSN is not offered nor taken."""
    with Dialog(up.port()) as d:
        d.reply()
        d.send(b"EHLO client.example.net\r\n")
        assert "250-DSN" not in d.reply()
        assert d.cmd("MAIL FROM:<a@example.net> RET=HDRS") == "504 5.5.4 RET is not implemented"
        assert d.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
        assert d.cmd("RCPT TO:<x@plain.test> NOTIFY=NEVER") == "504 5.5.4 NOTIFY is not implemented"


# -- parameters, from this process -----------------------------------------------------


DSN_META = MsgMeta(
    id="dsn",
    smtp=SMTPOptions(size=1234, body="8BITMIME", dsn_ret="HDRS", dsn_envid="env+id=1"),
    original_rcpts={"final@example.org": "Original@Example.org"},
    rcpt_dsn={
        "Original@Example.org": RcptDSN(("SUCCESS", "DELAY"), ("rfc822", "Original@Example.org")),
        "b@example.org": RcptDSN(("NEVER",), None),
        "c@example.org": RcptDSN((), ("rfc822", "ü@bücher.example")),
    },
)


async def test_dsn_parameters_are_passed_on(tmp_path: Path, sinks: dict[str, Sink]) -> None:
    sink = sinks["plain"]
    before = len(sink.transactions())
    line = f"deliver_to smtp tcp://127.0.0.1:{sink.port} {{\n starttls no\n}}\n"
    async with target(line, tmp_path) as tgt:
        out = await deliver(
            tgt,
            DSN_META,
            "s@example.org",
            ["final@example.org", "b@example.org", "c@example.org"],
            "dsn",
            b"body\r\n",
        )
    assert out.body_error is None and all(e is None for e in out.rcpt_errors.values())
    assert out.dsn_passed
    (sent,) = sink.wait_transactions(before + 1)[before:]
    assert sent.mail_args == "<s@example.org> BODY=8BITMIME RET=HDRS ENVID=env+2Bid+3D1"
    assert sent.rcpt_args == [
        "<final@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Original@Example.org",
        "<b@example.org> NOTIFY=NEVER",
        "<c@example.org> ORCPT=utf-8;\\x{FC}@b\\x{FC}cher.example",
    ]


async def test_no_dsn_offered_no_parameters(tmp_path: Path) -> None:
    sink = Sink("-N", "-8")
    try:
        line = f"deliver_to smtp tcp://127.0.0.1:{sink.port} {{\n starttls no\n}}\n"
        async with target(line, tmp_path) as tgt:
            out = await deliver(
                tgt, DSN_META, "s@example.org", ["final@example.org"], "x", b"b\r\n"
            )
        assert out.body_error is None
        assert not out.dsn_passed
        (sent,) = sink.wait_transactions(1)
        assert sent.mail_args == "<s@example.org>"  # neither DSN nor BODY=8BITMIME
        assert sent.rcpt_args == ["<final@example.org>"]
    finally:
        sink.close()


async def test_lmtp_connection_lost_after_the_dot_fails_every_recipient(tmp_path: Path) -> None:
    """body_non_atomic: recipients the server never answered share the failure."""
    sink = Sink("-L", "-q", ".")
    try:
        line = f"deliver_to lmtp tcp://127.0.0.1:{sink.port}\n"
        rcpts = ["a@example.org", "b@example.org"]
        async with target(line, tmp_path) as tgt:
            out = await deliver(
                tgt, MsgMeta(id="l"), "s@example.org", rcpts, "x", b"b\r\n", non_atomic=True
            )
        assert list(out.statuses) == rcpts
        for error in out.statuses.values():
            assert isinstance(error, SMTPError)
            assert (error.code, error.enhanced, error.message) == (
                450,
                (4, 4, 2),
                "Network I/O error",
            )
            assert "2 replies missing" in error.reason
    finally:
        sink.close()
