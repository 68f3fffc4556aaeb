"""Paths and ESMTP parameters as the next server reads them, and endpoint addresses."""

from __future__ import annotations

import pytest

from kittiwake.message import MsgMeta, RcptDSN, SMTPOptions
from kittiwake.protocol.client import Capabilities
from kittiwake.smtpclient.endpoint import Endpoint, parse_endpoint
from kittiwake.smtpclient.envelope import mail_params, rcpt_params, wire_path

ALL = Capabilities.parse(["SIZE 1000", "8BITMIME", "SMTPUTF8", "DSN", "REQUIRETLS"])
NONE = Capabilities()


@pytest.mark.parametrize(
    ("addr", "utf8", "wire"),
    [
        ("", False, ""),
        ("user@example.org", False, "user@example.org"),
        ("postmaster", False, "postmaster"),
        ("john doe@example.org", False, '"john doe"@example.org'),
        ('a"b@example.org', False, '"a\\"b"@example.org'),
        ("a@b@example.org", False, '"a@b"@example.org'),
        ("user@bücher.example", False, "user@xn--bcher-kva.example"),
        ("user@bücher.example", True, "user@bücher.example"),
        ("jörg@bücher.example", True, "jörg@bücher.example"),
        ("user@[192.0.2.1]", False, "user@[192.0.2.1]"),
    ],
)
def test_wire_path(addr: str, utf8: bool, wire: str) -> None:
    assert wire_path(addr, smtputf8=utf8) == wire


@pytest.mark.parametrize("addr", ["jörg@example.org", "日本@bücher.example"])
def test_non_ascii_local_part_needs_smtputf8(addr: str) -> None:
    with pytest.raises(ValueError, match="non-ASCII local part"):
        wire_path(addr, smtputf8=False)


def test_orcpt_forms() -> None:
    """xtext for an ASCII address, the ASCII-only utf-8-addr-xtext otherwise."""
    ascii_ = RcptDSN((), ("rfc822", "a+b=c d@example.org"))
    assert rcpt_params(ascii_, ALL) == ["ORCPT=rfc822;a+2Bb+3Dc+20d@example.org"]
    utf8 = RcptDSN((), ("rfc822", "ü+1@x.example"))
    assert rcpt_params(utf8, ALL) == ["ORCPT=utf-8;\\x{FC}\\x{2B}1@x.example"]
    emoji = RcptDSN((), ("utf-8", "😀@x"))
    assert rcpt_params(emoji, ALL) == ["ORCPT=utf-8;\\x{1F600}@x"]


def test_mail_params_only_where_offered() -> None:
    meta = MsgMeta(
        id="m",
        smtp=SMTPOptions(
            size=500, body="8BITMIME", requiretls=True, dsn_ret="FULL", dsn_envid="id+1"
        ),
    )
    assert mail_params(meta, ALL, smtputf8=True) == [
        "SIZE=500",
        "BODY=8BITMIME",
        "SMTPUTF8",
        "REQUIRETLS",
        "RET=FULL",
        "ENVID=id+2B1",
    ]
    # REQUIRETLS is never dropped silently: the target refuses before that.
    assert mail_params(meta, NONE, smtputf8=False) == ["REQUIRETLS"]
    assert mail_params(MsgMeta(id="n"), ALL, smtputf8=False) == []


def test_rcpt_params() -> None:
    dsn = RcptDSN(("SUCCESS", "FAILURE"), ("rfc822", "Orig+x@example.org"))
    assert rcpt_params(dsn, ALL) == ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Orig+2Bx@example.org"]
    assert rcpt_params(dsn, NONE) == []
    assert rcpt_params(RcptDSN(), ALL) == []
    utf8 = RcptDSN((), ("utf-8", "a+b@example.org"))
    assert rcpt_params(utf8, ALL) == ["ORCPT=utf-8;a\\x{2B}b@example.org"]


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("tcp://127.0.0.1:25", Endpoint("tcp", "127.0.0.1", 25)),
        ("TCP://mx.example.org:2525", Endpoint("tcp", "mx.example.org", 2525)),
        ("tls://[2001:db8::1]:465", Endpoint("tls", "2001:db8::1", 465)),
        ("unix:///run/lmtp", Endpoint("unix", path="/run/lmtp")),
        ("unix://lmtp.sock", Endpoint("unix", path="/rt/lmtp.sock")),
    ],
)
def test_parse_endpoint(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(text, "/rt") == endpoint


def test_endpoint_forms() -> None:
    assert str(Endpoint("tls", "2001:db8::1", 465)) == "tls://[2001:db8::1]:465"
    assert Endpoint("tls", "h", 1).implicit_tls
    assert Endpoint("unix", path="/x").tls_name is None


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:25",
        "smtp://127.0.0.1:25",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:",
        "tcp://:25",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:65536",
        "tcp://127.0.0.1:2x",
        "tcp://[::1:25",
        "tcp://[::1]",
        "tcp://user@host:25",
        "tcp://a b:25",
        "unix://",
    ],
)
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text, "/rt")
