"""The seed document's example `smtp` configuration runs as written.

`/work/shared/seed/smtp-endpoint.md` opens with a complete `smtp` block.
It is copied here verbatim except for what cannot be the same on a test
machine: the listen address (loopback, a port chosen by the system) and
the certificate paths (a trustme certificate). Its `hostname example.org`
is kept. Around it is only what it needs to stand alone: a `state_dir` in
tmp and the `storage.maildir` block it calls `&local_mailboxes`. Its `auth
pam` stays (PAM is installed; authentication itself is not exercised
here), and so do `dmarc yes` and the `endpoint rate 10` / `endpoint
concurrency 500` limits that maddy itself refuses (spec §16: kittiwake
takes `endpoint` as `all`).
"""

from __future__ import annotations

import re
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from fakedns import FakeDNS
from kw import LAUNCHER, Dialog, Kittiwake, env, maildir_files

Start = Callable[..., Kittiwake]

#: The seed's block; the listen address, {cert} and {key} are the only
#: substitutions.
SEED_BLOCK = """\
smtp tcp://127.0.0.1:{port} {{
    hostname example.org
    tls {cert} {key}
    io_debug no
    debug no
    insecure_auth no
    sasl_login no
    read_timeout 10m
    write_timeout 1m
    max_message_size 32M
    max_header_size 1M
    auth pam
    defer_sender_reject yes
    dmarc yes
    smtp_max_line_length 4000
    limits {{
        endpoint rate 10
        endpoint concurrency 500
    }}

    # Example pipeline ocnfiguration.
    destination example.org {{
        deliver_to &local_mailboxes
    }}
    default_destination {{
        reject
    }}
}}
"""


def seed_config(tmp: Path, port: int, cert: str, key: str) -> str:
    return f"""\
state_dir {tmp}/state
storage.maildir local_mailboxes {{
    path {tmp}/mail
    auto_create yes
}}

{SEED_BLOCK.format(port=port, cert=cert, key=key)}"""


def test_seed_block_is_the_documents() -> None:
    # Guard against drift: the block above is the document's, line for
    # line, but for the substituted ones.
    seed = Path("/work/shared/seed/smtp-endpoint.md")
    if not seed.exists():
        pytest.skip("the seed documents are not beside this checkout")
    document = re.search(r"```\n(smtp tcp://0\.0\.0\.0:25 \{.*?\n\})\n```", seed.read_text(), re.S)
    assert document is not None
    ours = SEED_BLOCK.format(port=0, cert="CERT", key="KEY").splitlines()
    theirs = document.group(1).splitlines()
    assert len(ours) == len(theirs)
    changed = [(a, b) for a, b in zip(theirs, ours, strict=True) if a != b]
    assert changed == [
        ("smtp tcp://0.0.0.0:25 {", "smtp tcp://127.0.0.1:0 {"),
        (
            "    tls /etc/ssl/private/cert.pem /etc/ssl/private/pkey.key",
            "    tls CERT KEY",
        ),
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
        assert "250-STARTTLS" in ehlo  # the seed's `tls` line
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

    # After STARTTLS the seed's `auth pam` is offered (insecure_auth no).
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
