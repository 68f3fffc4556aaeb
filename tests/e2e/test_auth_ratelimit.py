"""`auth_ratelimit` against the real server: failed logins counted across
connections, per client address and per user name (docs/auth.md,
"Password guessing").

Each guess opens a new connection, as an attacker would, so every failure
is its session's first and waits the session delay of 1 second. Clients
come from 127.0.0.2, 127.0.0.3, ... (all of 127/8 is loopback on Linux);
loopback is exempt by default, so the tests say `exempt none`.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import trustme
from kw import LAUNCHER, Dialog, Kittiwake, env, in_parallel

Start = Callable[..., Kittiwake]

PASSWORD = "correct horse"
HASH = "bcrypt:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4, b"2a")).decode()
THROTTLED = "454 4.7.0 Too many failed authentication attempts, try again later"
INVALID = "535 5.7.8 Invalid credentials"
OK = "235 2.0.0 Authentication succeeded"
#: The delay of a session's first failure, and how far a measurement may stray.
DELAY = 1.0
SLACK = 0.5


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def conf(tmp: Path, cert: tuple[str, str], ratelimit: str) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
tls file {cert[0]} {cert[1]}
auth.pass_table users {{
    table static {{
        entry me@example.org "{HASH}"
        entry you@example.org "{HASH}"
    }}
}}
submission tcp://127.0.0.1:0 {{
    auth &users
    auth_ratelimit {{
{ratelimit}
    }}
    deliver_to dummy
}}
"""


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def start(
    kittiwake: Start, tmp_path: Path, cert_files: tuple[str, str]
) -> Callable[[str], Kittiwake]:
    def run(ratelimit: str) -> Kittiwake:
        return kittiwake(conf(tmp_path, cert_files, ratelimit))

    return run


class Client:
    """Logs in on a new connection each time, from one source address."""

    def __init__(self, server: Kittiwake, context: ssl.SSLContext, source: str) -> None:
        self.port = server.port()
        self.context = context
        self.source = source

    def login(self, user: str, password: str) -> tuple[str, float]:
        """The reply to AUTH PLAIN on a fresh STARTTLS session, and how long it took."""
        with Dialog(self.port, source=self.source) as d:
            d.reply()
            d.cmd("EHLO client.example")
            assert d.cmd("STARTTLS").startswith("220")
            d.starttls(self.context)
            d.cmd("EHLO client.example")
            started = time.monotonic()
            reply = d.cmd("AUTH PLAIN " + plain(user, password))
            return reply, time.monotonic() - started


def test_an_address_is_locked_out_across_connections(
    start: Callable[[str], Kittiwake], client_tls: ssl.SSLContext
) -> None:
    """Issue 10: a new connection per guess no longer escapes the delays.

    The 4th attempt after 3 failures is refused even with the right
    password, and takes as long as a wrong one; other addresses are not
    affected; after the lockout the right password works again.
    """
    server = start("ip 3 1m\nusername 0\nlockout 4s\nexempt none")
    attacker = Client(server, client_tls, "127.0.0.2")
    for i in range(3):
        reply, took = attacker.login("me@example.org", f"guess{i}")
        assert reply == INVALID
    locked_at = time.monotonic()
    server.wait_log(
        r"authentication locked out scope=ip src_ip=127\.0\.0\.2 "
        r"username=me@example\.org failures=3 lockout=4"
    )
    right, right_took = attacker.login("me@example.org", PASSWORD)
    wrong, wrong_took = attacker.login("me@example.org", "guess9")
    assert right == wrong == THROTTLED
    assert abs(right_took - DELAY) < SLACK and abs(wrong_took - DELAY) < SLACK
    assert abs(right_took - wrong_took) < 0.2
    assert "authentication refused, locked out scope=ip" in server.log
    # Another address, same user: not locked (the user name limit is off).
    assert Client(server, client_tls, "127.0.0.3").login("me@example.org", PASSWORD)[0] == OK
    time.sleep(max(0.0, locked_at + 4.2 - time.monotonic()))
    reply, took = attacker.login("me@example.org", PASSWORD)
    assert reply == OK
    assert took < 0.5


def test_a_user_name_is_locked_for_new_addresses_only(
    start: Callable[[str], Kittiwake], client_tls: ssl.SSLContext
) -> None:
    """Guesses for one user from many addresses lock the user name, but not
    for an address that logged in as that user before, nor for other users."""
    server = start("ip 10 1m\nusername 3 1m\nlockout 30s\nexempt none")
    own_device = Client(server, client_tls, "127.0.0.9")
    assert own_device.login("me@example.org", PASSWORD)[0] == OK
    bots = [Client(server, client_tls, f"127.0.0.{n}") for n in (2, 3, 4)]
    replies: list[str] = []
    in_parallel(
        *(
            lambda b=b, i=i: replies.append(b.login("me@example.org", f"guess{i}")[0])
            for i, b in enumerate(bots)
        )
    )
    assert replies == [INVALID] * 3
    server.wait_log(r"authentication locked out scope=username src_ip=127\.0\.0\.[234] ")
    fresh = Client(server, client_tls, "127.0.0.5")
    reply, took = fresh.login("ME@example.org", PASSWORD)  # the name is normalised
    assert reply == THROTTLED
    assert abs(took - DELAY) < SLACK
    assert "authentication refused, locked out scope=username" in server.log
    assert fresh.login("you@example.org", PASSWORD)[0] == OK
    assert own_device.login("me@example.org", PASSWORD)[0] == OK


def test_a_success_does_not_reset_the_address_count(
    start: Callable[[str], Kittiwake], client_tls: ssl.SSLContext
) -> None:
    """Otherwise one valid account would let an address guess without end."""
    server = start("ip 3 1m\nusername 0\nlockout 30s\nexempt none")
    client = Client(server, client_tls, "127.0.0.2")
    assert client.login("you@example.org", "guess1")[0] == INVALID
    assert client.login("you@example.org", "guess2")[0] == INVALID
    assert client.login("me@example.org", PASSWORD)[0] == OK
    assert client.login("you@example.org", "guess3")[0] == INVALID
    assert client.login("you@example.org", PASSWORD)[0] == THROTTLED


def test_a_repeated_wrong_password_counts_once(
    start: Callable[[str], Kittiwake], client_tls: ssl.SSLContext
) -> None:
    """A mail client retrying a stale password is not a guesser."""
    server = start("ip 2 1m\nusername 2 1m\nlockout 30s\nexempt none")
    client = Client(server, client_tls, "127.0.0.2")
    in_parallel(*(lambda: client.login("me@example.org", "old password") for _ in range(4)))
    assert server.log.count("authentication failed") == 4
    assert "locked out" not in server.log
    assert client.login("me@example.org", PASSWORD)[0] == OK


def test_exempt_addresses_are_not_counted(
    start: Callable[[str], Kittiwake], client_tls: ssl.SSLContext
) -> None:
    server = start("ip 1 1m\nusername 0\nexempt 127.0.0.2")
    exempt = Client(server, client_tls, "127.0.0.2")
    counted = Client(server, client_tls, "127.0.0.3")
    in_parallel(
        lambda: exempt.login("me@example.org", "guess1"),
        lambda: exempt.login("me@example.org", "guess2"),
        lambda: counted.login("me@example.org", "guess3"),
    )
    assert exempt.login("me@example.org", PASSWORD)[0] == OK
    assert counted.login("me@example.org", PASSWORD)[0] == THROTTLED


def test_loopback_is_exempt_by_default(
    start: Callable[[str], Kittiwake], client_tls: ssl.SSLContext
) -> None:
    """A webmail on the same host must not lock out all of its users."""
    server = start("ip 1 1m\nusername 0")
    client = Client(server, client_tls, "127.0.0.2")
    in_parallel(*(lambda i=i: client.login("me@example.org", f"guess{i}") for i in range(3)))
    assert client.login("me@example.org", PASSWORD)[0] == OK


def test_zero_turns_the_limits_off(
    start: Callable[[str], Kittiwake], client_tls: ssl.SSLContext
) -> None:
    server = start("ip 0\nusername 0\nexempt none")
    client = Client(server, client_tls, "127.0.0.2")
    in_parallel(*(lambda i=i: client.login("me@example.org", f"guess{i}") for i in range(4)))
    assert client.login("me@example.org", PASSWORD)[0] == OK


# -- configuration errors --------------------------------------------------------

BAD = {
    "not-a-number": ("ip ten 10m", 0, "ip: invalid number of failures 'ten': expected an integer"),
    "negative": ("username -1", 0, "username: invalid number of failures -1: must not be "
                 "negative (0 = off)"),
    "zero-window": ("ip 10 0s", 0, "ip: invalid window: must be greater than zero"),
    "bad-window": ("ip 10 soon", 0, "ip: invalid window: invalid duration 'soon': use a number "
                   "with a unit (h, m, s, ms, us, ns)"),
    "too-many-args": ("ip 10 10m 5", 0, "ip: expected FAILURES [WINDOW], for example 10 10m"),
    "zero-lockout": ("lockout 0", 0, "lockout: must be greater than zero"),
    "bad-exempt": ("exempt 10.0.0.0/8 300.1.1.1", 0,
                   "exempt: invalid address '300.1.1.1': expected an IP address or CIDR"),
    "none-and-more": ("exempt none ::1", 0, "exempt: none cannot be combined with addresses"),
    "unknown": ("ip 10\nbogus 1", 1, "unexpected directive: bogus"),
    "duplicate": ("ip 10\nip 20", 1, "duplicate directive: ip"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_are_file_line_errors(
    tmp_path: Path, cert_files: tuple[str, str], case: str
) -> None:
    lines, offset, message = BAD[case]
    text = conf(tmp_path, cert_files, lines)
    line = block_line(text) + 1 + offset
    assert config_check(tmp_path, text) == (2, f"kittiwake.conf:{line}: {message}\n")


def test_arguments_instead_of_a_block_are_an_error(
    tmp_path: Path, cert_files: tuple[str, str]
) -> None:
    text = conf(tmp_path, cert_files, "ip 10").replace(
        "    auth_ratelimit {\nip 10\n    }", "    auth_ratelimit 10 10m {\n    }"
    )
    assert config_check(tmp_path, text) == (
        2,
        f"kittiwake.conf:{block_line(text)}: auth_ratelimit: takes no arguments: "
        "write its settings in a block { ... }\n",
    )


def block_line(text: str) -> int:
    """The line of the `auth_ratelimit` directive."""
    (line,) = (n for n, s in enumerate(text.split("\n"), 1) if "auth_ratelimit" in s)
    return line


def config_check(tmp: Path, text: str) -> tuple[int, str]:
    """`kittiwake config check` on `text`: its exit status and stderr."""
    (tmp / "kittiwake.conf").write_text(text)
    result = subprocess.run(
        [sys.executable, str(LAUNCHER), "config", "check", "-c", "kittiwake.conf"],
        check=False,
        cwd=tmp,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stderr
