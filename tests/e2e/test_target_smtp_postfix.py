"""target.smtp relaying into Postfix's real `smtpd`.

Postfix (Debian package `postfix`, a private instance on a loopback port,
see postfix.py) receives the message from `target.smtp` over STARTTLS,
with its certificate verified against the test CA, and delivers it over
LMTP into a kittiwake process that stores it in a Maildir. Postfix offers
CHUNKING, SMTPUTF8 and DSN, so the message goes as BDAT chunks, a UTF-8
recipient goes as it is, and the DSN parameters go along: Postfix itself
then sends the success notification the sender asked for (NOTIFY=SUCCESS),
with the ENVID and ORCPT we passed, which proves they arrived intact.

The target runs in this process, so the test sets the metadata exactly;
everything it talks to is real.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from kw import Kittiwake, maildir_files
from outbound import Outcome, deliver, target
from postfix import Postfix, instance_pids, masters, need_postfix, not_root

from kittiwake.message import MsgMeta, RcptDSN, SMTPOptions

Start = Callable[..., Kittiwake]


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Postfix]]:
    need_postfix()
    reason = not_root()
    if reason:
        pytest.skip(reason)
    made: list[Postfix] = []

    def make(settings: dict[str, str]) -> Postfix:
        made.append(Postfix(settings, keep_log=tmp_path / f"maillog-{len(made)}"))
        return made[-1]

    try:
        yield make
    finally:
        for instance in made:
            instance.close()
        for instance in made:
            assert masters(instance.config_dir) == [] and instance_pids(instance.config_dir) == []


def lmtp_conf(tmp: Path, run: Path) -> str:
    return f"""
state_dir {tmp}/state
runtime_dir {run}
hostname store.example.com
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
lmtp unix://lmtp.sock {{
    deliver_to &mb
}}
"""


BODY = b"Through Postfix.\r\n.leading dot\r\n.\r\nlast\r\n"


async def relay(port: int, ca_file: Path, tmp: Path) -> Outcome:
    """The message, from this process, with a DSN request for `one`."""
    meta = MsgMeta(
        id="viapostfix",
        smtp=SMTPOptions(smtputf8=True, dsn_ret="HDRS", dsn_envid="envelope-42"),
        rcpt_dsn={
            "one@example.org": RcptDSN(("SUCCESS",), ("rfc822", "first+orig@example.org")),
        },
    )
    line = (
        f"deliver_to smtp tcp://127.0.0.1:{port} {{\n"
        f"    tls_client {{\n        root_ca {ca_file}\n    }}\n}}\n"
    )
    async with target(line, tmp) as tgt:
        return await deliver(
            tgt, meta, "sender@example.org", ["one@example.org", "jörg@example.org"], "pf", BODY
        )


def test_relay_into_postfix_smtpd(
    postfix: Callable[[dict[str, str]], Postfix],
    kittiwake: Start,
    tmp_path: Path,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    pf = postfix({})
    run = pf.shared_dir("run", setgid=True)
    kittiwake(lmtp_conf(tmp_path, run))
    cert = pf.write_file("cert.pem", Path(cert_files[0]).read_bytes())
    key = pf.write_file("key.pem", Path(cert_files[1]).read_bytes())
    pf.settings.update(
        {
            "transport_maps": f"inline:{{ example.org=lmtp:unix:{run / 'lmtp.sock'} }}",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_loglevel": "1",
            # kittiwake's LMTP offers DSN too; hidden from Postfix, the success
            # notification is Postfix's own to send, which is what shows here
            # that our parameters reached it.
            "lmtp_discard_lhlo_keywords": "dsn",
        }
    )
    pf.start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    out = asyncio.run(relay(pf.port, ca_file, tmp_path / "client"))
    assert out.body_error is None, out.body_error
    assert out.rcpt_errors == {"one@example.org": None, "jörg@example.org": None}
    assert out.dsn_passed

    pf.wait_log(r"TLS connection established from [^\n]*127\.0\.0\.1")
    pf.wait_log(r"to=<one@example\.org>, [^\n]*status=sent")
    pf.wait_log(r"to=<jörg@example\.org>, [^\n]*status=sent")
    mail = tmp_path / "mail"
    for user in ("one", "jörg"):
        (path,) = maildir_files(mail, "example.org", user)
        stored = path.read_bytes()
        assert stored.endswith(b"\n\nThrough Postfix.\n.leading dot\n.\nlast\n")
        assert b"Subject: pf\n" in stored
        # Postfix's Received: SMTPUTF8 (the transaction asked for it) over TLS.
        assert re.search(rb"by relay\.example\.net \(Postfix\) with UTF8SMTPS id", stored)

    # Postfix honours NOTIFY=SUCCESS: its notification carries our ENVID and ORCPT.
    pf.wait_queue_empty()
    (dsn_path,) = maildir_files(mail, "example.org", "sender")
    dsn = dsn_path.read_bytes()
    assert b"Return-Path: <>\n" in dsn
    assert b"Original-Envelope-Id: envelope-42" in dsn
    assert b"Original-Recipient: rfc822;first+orig@example.org" in dsn
    assert re.search(rb"Action: (delivered|relayed)", dsn)
