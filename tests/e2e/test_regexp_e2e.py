"""`table.regexp` in the real server: an expression must never stall it.

Lookups run on the event loop, so a match that takes long stops every
session, not only the one that asked. `(x+x+)+y` is the classic case for a
backtracking engine: Python's `re` needs about half a second for 24 x's and
twice as long for each further x. RE2 takes time linear in the key, so a
recipient with a 250-character local part (the longest the address grammar
allows is 255 octets) is answered at once, and so is a second session
opened at the same moment. The expression sits in `destination_in`, which
the pipeline looks up for every RCPT; with the old `re` code the second
session never got its banner.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakedns import FakeDNS
from kw import LAUNCHER, Dialog, Kittiwake, env

Start = Callable[..., Kittiwake]

#: Generous: each reply here takes milliseconds with RE2; the old `re` code
#: needed about 2 s for 26 x's, doubling with each further x.
PROMPT = 2.0
LONG_LOCAL = "x" * 250


def config(tmp: Path, expression: str = "(x+x+)+y@example\\.org") -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
smtp tcp://127.0.0.1:0 {{
    tls off
    destination_in regexp "{expression}" {{
        reject 550 5.7.1 "Matched the expression"
    }}
    destination example.org {{
        deliver_to &mb
    }}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


@pytest.fixture
def server(kittiwake: Start, tmp_path: Path, dns: FakeDNS) -> Kittiwake:
    return kittiwake(config(tmp_path), args=("--debug.dnsoverride", dns.address))


def greeted(port: int) -> Dialog:
    d = Dialog(port, timeout=PROMPT + 3)
    assert d.reply()[-1].startswith("220 ")
    assert d.cmd("EHLO client.example").startswith("250 ")
    return d


def test_the_expression_is_consulted_at_rcpt(server: Kittiwake) -> None:
    with greeted(server.port()) as d:
        assert d.cmd("MAIL FROM:<sender@example.com>").startswith("250 ")
        assert d.cmd("RCPT TO:<xxy@example.org>").startswith("550 5.7.1 Matched the expression")
        assert d.cmd("RCPT TO:<user@example.org>").startswith("250 ")


def test_a_pathological_rcpt_stalls_no_session(server: Kittiwake) -> None:
    port = server.port()
    with greeted(port) as first:
        assert first.cmd("MAIL FROM:<sender@example.com>").startswith("250 ")
        started = time.monotonic()
        first.send(f"RCPT TO:<{LONG_LOCAL}@example.org>\r\n".encode())
        # A second client connects while the first one's lookup runs.
        with Dialog(port, timeout=PROMPT + 3) as second:
            assert second.reply()[-1].startswith("220 ")
            assert second.cmd("NOOP").startswith("250 ")
            second_done = time.monotonic() - started
        # No y anywhere: not matched, so it goes on to example.org.
        assert first.reply()[-1].startswith("250 ")
        first_done = time.monotonic() - started
        assert first.cmd("RCPT TO:<xxy@example.org>").startswith("550 5.7.1 Matched the expression")
    assert second_done < PROMPT, f"second session waited {second_done:.2f} s"
    assert first_done < PROMPT, f"the RCPT took {first_done:.2f} s"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("(a)\\1", "invalid escape sequence: \\1 (RE2 has no backreferences)"),
        ("(?=a)", "invalid perl operator: (?= (RE2 has no lookahead)"),
    ],
)
def test_config_check_refuses_what_re2_refuses(
    tmp_path: Path, expression: str, message: str
) -> None:
    conf = tmp_path / "kittiwake.conf"
    conf.write_text(config(tmp_path, expression))
    result = subprocess.run(
        [sys.executable, str(LAUNCHER), "config", "check", "-c", conf.name],
        check=False,
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected = f"kittiwake.conf:10: table.regexp: invalid regular expression: {message}\n"
    assert (result.returncode, result.stderr) == (2, expected)
