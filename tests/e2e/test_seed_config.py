"""The project's founding example `smtp` configuration runs as written.

`fixtures/seed-smtp.conf` is the complete `smtp` block that opens the seed
document kittiwake was started from, kept verbatim. Only what cannot be the
same on a test machine is replaced: the listen address (loopback, a port
chosen by the system) and the certificate paths (a trustme certificate).
Its `hostname example.org` is kept. Around it is only what it needs to
stand alone: a `state_dir` in tmp and the `storage.maildir` block it calls
`&local_mailboxes`. Its `auth pam` stays (PAM is installed; authentication
itself is not exercised here), and so do `dmarc yes` and the `endpoint rate
10` / `endpoint concurrency 500` limits that maddy itself refuses
(docs/limits.md, "Scopes": kittiwake takes `endpoint` as `all`).
"""

from __future__ import annotations

import re
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trustme
from fakedns import FakeDNS
from kw import LAUNCHER, Dialog, Kittiwake, env, maildir_files

Start = Callable[..., Kittiwake]

SEED = Path(__file__).resolve().parent / "fixtures" / "seed-smtp.conf"
#: The two lines of the example a test machine cannot use as they are.
LISTEN = "smtp tcp://0.0.0.0:25 {"
TLS = "    tls /etc/ssl/private/cert.pem /etc/ssl/private/pkey.key"


def seed_block(port: int, cert: str, key: str) -> str:
    """The example with its listen address and certificate paths replaced."""
    lines = SEED.read_text(encoding="utf-8").splitlines()
    assert lines.count(LISTEN) == 1 and lines.count(TLS) == 1
    swap = {LISTEN: f"smtp tcp://127.0.0.1:{port} {{", TLS: f"    tls {cert} {key}"}
    return "\n".join(swap.get(line, line) for line in lines) + "\n"


def seed_config(tmp: Path, port: int, cert: str, key: str) -> str:
    return f"""\
state_dir {tmp}/state
storage.maildir local_mailboxes {{
    path {tmp}/mail
    auto_create yes
}}

{seed_block(port, cert, key)}"""


def test_only_the_listen_address_and_the_certificate_change() -> None:
    original = SEED.read_text(encoding="utf-8").splitlines()
    ours = seed_block(0, "CERT", "KEY").splitlines()
    assert len(ours) == len(original)
    changed = [(a, b) for a, b in zip(original, ours, strict=True) if a != b]
    assert changed == [
        (LISTEN, "smtp tcp://127.0.0.1:0 {"),
        (TLS, "    tls CERT KEY"),
    ]


def test_seed_example_config_checks_runs_and_routes(
    kittiwake: Start,
    tmp_path: Path,
    dns: FakeDNS,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    cert, key = cert_files
    text = seed_config(tmp_path, 0, cert, key)
    (tmp_path / "check.conf").write_text(text)
    check = subprocess.run(
        [sys.executable, str(LAUNCHER), "config", "check", "-c", str(tmp_path / "check.conf")],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # `endpoint rate 10` and `endpoint concurrency 500` are accepted silently.
    assert "endpoint" not in check.stderr, check.stderr

    srv = kittiwake(text, args=("--debug.dnsoverride", dns.address))
    with Dialog(srv.port(), timeout=10) as d:
        assert d.reply() == ["220 example.org ESMTP Service Ready"]
        d.send(b"EHLO client.example\r\n")
        ehlo = d.reply()
        assert "250-STARTTLS" in ehlo  # the example's `tls` line
        # insecure_auth no and no TLS yet: AUTH is not offered in clear.
        assert not any("AUTH" in line for line in ehlo), ehlo
        # defer_sender_reject yes: MAIL is accepted, the routing happens at RCPT.
        assert d.cmd("MAIL FROM:<sender@example.net>").startswith("250 ")
        reply = d.cmd("RCPT TO:<x@elsewhere.example>")
        assert re.fullmatch(
            r"554 5\.7\.0 Message rejected due to a local policy \(msg ID = [0-9a-f]{8}\)", reply
        ), reply
        assert d.cmd("RCPT TO:<someone@example.org>").startswith("250 ")
        assert d.cmd("DATA").startswith("354")
        assert d.cmd("Subject: seed\r\n\r\nby the book\r\n.").startswith("250 2.0.0 OK: queued")
        assert d.cmd("QUIT").startswith("221 ")
    (message,) = maildir_files(tmp_path / "mail", "example.org", "someone")
    content = message.read_bytes()
    assert content.split(b"\n\n", 1)[1] == b"by the book\n"
    assert b" by example.org " in content.replace(b"\n ", b" ")
    assert not maildir_files(tmp_path / "mail", "elsewhere.example", "x")

    # After STARTTLS the example's `auth pam` is offered (insecure_auth no).
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with Dialog(srv.port(), timeout=10) as d:
        d.reply()
        d.cmd("EHLO client.example")
        assert d.cmd("STARTTLS").startswith("220 ")
        d.starttls(context)
        d.send(b"EHLO client.example\r\n")
        assert "250-AUTH PLAIN" in d.reply()

    # Another client (smtplib) sees the same routing.
    with smtplib.SMTP("127.0.0.1", srv.port(), timeout=10) as client:
        client.ehlo("client.example")
        refused = client.sendmail(
            "sender@example.net",
            ["someone@example.org", "x@elsewhere.example"],
            b"Subject: two\r\n\r\nsecond\r\n",
        )
    assert list(refused) == ["x@elsewhere.example"]
    assert refused["x@elsewhere.example"][0] == 554
    assert len(maildir_files(tmp_path / "mail", "example.org", "someone")) == 2
