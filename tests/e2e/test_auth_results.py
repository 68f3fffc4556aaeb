"""Authentication-Results fields that claim our authserv-id are removed (RFC 8601 §5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kw import Dialog, Kittiwake, free_port

Start = Callable[..., Kittiwake]


def config(tmp: Path, kind: str) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
{kind} tcp://127.0.0.1:{free_port()} {{
    tls off
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


MESSAGE = (
    b"Authentication-Results: MX.Example.COM; dkim=pass header.d=bank.example\r\n"
    b"Authentication-Results: mx.example.com;\r\n spf=pass smtp.mailfrom=bank.example\r\n"
    b"Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=friend.example\r\n"
    b"From: ceo@bank.example\r\nSubject: wire the money\r\n\r\ntrust me\r\n.\r\n"
)


@pytest.mark.parametrize(("kind", "kept"), [("smtp", 1), ("lmtp", 3)])
def test_forged_results_are_removed(kittiwake: Start, tmp_path: Path, kind: str, kept: int) -> None:
    """Only we speak for mx.example.com; an LMTP client is our own MTA and may."""
    server = kittiwake(config(tmp_path, kind))
    greeting = "LHLO" if kind == "lmtp" else "EHLO"
    with Dialog(server.port(), timeout=10) as d:
        assert d.reply()[0].startswith("220 ")
        assert d.cmd(f"{greeting} client.example").startswith("250 ")
        assert d.cmd("MAIL FROM:<ceo@bank.example>").startswith("250 ")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")
        assert d.cmd("DATA").startswith("354 ")
        d.send(MESSAGE)
        assert d.reply()[-1].startswith("250 ")
    (stored,) = (tmp_path / "mail" / "example.org" / "user" / "new").iterdir()
    fields = [
        line
        for line in stored.read_bytes().split(b"\n")
        if line.lower().startswith(b"authentication-results:")
    ]
    assert len(fields) == kept, fields
    assert any(b"relay.example.net" in f for f in fields)
