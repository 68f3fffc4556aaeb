"""The one-domain server of README.md, run as written, sends mail out.

The configuration is taken from README.md itself (the fence after "A
server for one domain"), with only what a test must change: listeners on
loopback ports, files in the test's folder, the test CA's certificate. The
Internet is the tests' own: `--debug.dnsoverride` answers from fakedns.py,
`--debug.smtpport` sends every MX connection to receivers on 127.0.0.x,
and `--debug.mtastsport`/`--debug.mtastsca` serve MTA-STS policies from a
loopback HTTPS server. What it proves, as issue 13 asks:

* a user who submits on port 587 reaches another domain's MX: the message
  is signed with the domain's DKIM key, queued, sent over TLS;
* "securely where the destination asks for it": a domain whose MTA-STS
  policy is `enforce` gets nothing from an MX whose certificate is not
  valid; the message stays queued with the reason, for
  `kittiwake queue list`;
* mail from the Internet for the local domain is stored (port 25).
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trustme
from fakedns import FakeDNS, txt
from kw import LAUNCHER, Kittiwake, env, free_port, maildir_files
from mtasts_server import MTASTSServer, policy_text
from mxsink import MXSink
from queuetools import wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
ALICE = ("alice@example.org", "-p", "s3cret")


def readme_config() -> str:
    """The first `conf` fence after "A server for one domain" in README.md."""
    text = README.read_text()
    start = text.index("A server for one domain")
    found = re.search(r"```conf\n(.*?)```", text[start:], re.S)
    assert found is not None
    return found.group(1)


def adapted(tmp: Path, cert: tuple[str, str]) -> str:
    conf = readme_config()
    for old, new in (
        ("tcp://0.0.0.0:25", "tcp://127.0.0.1:0"),
        ("tcp://0.0.0.0:587", "tcp://127.0.0.1:0"),
        ("/etc/ssl/mx/fullchain.pem", cert[0]),
        ("/etc/ssl/mx/privkey.pem", cert[1]),
        ("/var/lib/kittiwake", str(tmp / "state")),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    return conf


def _two_sinks(context: ssl.SSLContext) -> tuple[int, MXSink, MXSink]:
    """Both MX sinks on one port (`--debug.smtpport` sets the port of every
    MX). A port free on 127.0.0.1 may be in use on 127.0.0.2 or .3 by a
    test running beside this one: then another port is tried."""
    for _ in range(20):
        port = free_port()
        try:
            remote = MXSink("127.0.0.2", port, tls=context, name="mx.remote.test")
        except OSError:
            continue
        try:
            sts_mx = MXSink("127.0.0.3", port, tls=context, name="mx.sts.test")
        except OSError:
            remote.close()
            continue
        return port, remote, sts_mx
    raise AssertionError("no port free on both 127.0.0.2 and 127.0.0.3")


def test_the_readme_server_sends_and_receives(
    kittiwake: Callable[..., Kittiwake],
    tmp_path: Path,
    ca: trustme.CA,
    cert_files: tuple[str, str],
) -> None:
    # The MX servers' certificates come from the test CA, which the README's
    # target.remote does not trust (no tls_client): TLS is encrypted, not
    # authenticated.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.remote.test", "mx.sts.test").configure_cert(context)
    port, remote, sts_mx = _two_sinks(context)
    policies = MTASTSServer(ca, ["sts.test"], tmp_path)
    policies.serve("sts.test", policy_text("enforce", "mx.sts.test"))
    dns = FakeDNS(
        {
            ("remote.test", "MX"): ["10 mx.remote.test."],
            ("mx.remote.test", "A"): ["127.0.0.2"],
            ("sts.test", "MX"): ["10 mx.sts.test."],
            ("mx.sts.test", "A"): ["127.0.0.3"],
            ("_mta-sts.sts.test", "TXT"): [txt("v=STSv1; id=20261207")],
            ("mta-sts.sts.test", "A"): ["127.0.0.1"],
            ("sender.test", "TXT"): [txt("v=spf1 ip4:127.0.0.0/8 -all")],
        }
    )
    try:
        server = kittiwake(
            adapted(tmp_path, cert_files),
            ready=2,
            args=(
                "--debug.dnsoverride",
                dns.address,
                "--debug.smtpport",
                str(port),
                "--debug.mtastsport",
                str(policies.port),
                "--debug.mtastsca",
                str(policies.ca_file),
            ),
        )
        mx_port, submission_port = (int(a.rpartition(":")[2]) for a in server.addresses)
        # No dead rule and nothing else to warn about in the README's file
        # (the debug flags' own warnings aside).
        warnings = [
            line
            for line in server.log.splitlines()
            if "warn" in line.split(" ", 2)[:2] and "debug flag" not in line
        ]
        assert warnings == [], warnings
        conf = server.config_path
        made = subprocess.run(
            [sys.executable, str(LAUNCHER), "creds", "create", "-c", str(conf), *ALICE],
            cwd=tmp_path,
            env=env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        client_tls = ssl.create_default_context(cafile=None)
        ca.configure_trust(client_tls)
        with smtplib.SMTP("127.0.0.1", submission_port, timeout=30) as s:
            s.starttls(context=client_tls)
            s.login("alice@example.org", "s3cret")
            for rcpt in ("bob@remote.test", "carol@sts.test"):
                s.sendmail(
                    "alice@example.org",
                    [rcpt],
                    f"From: alice@example.org\r\nTo: {rcpt}\r\nSubject: hello\r\n\r\nhi\r\n",
                )
        (sent,) = remote.wait_messages(1)
        assert sent.tls and sent.rcpts == ["bob@remote.test"]
        assert sent.mail_from == "alice@example.org"
        unfolded = re.sub(rb"\r\n[ \t]+", b" ", sent.data)
        assert re.search(rb"DKIM-Signature:.*d=example\.org;", unfolded)

        # sts.test asks for an authenticated MX: kept, with the reason.
        def waiting() -> list[dict[str, object]]:
            listed = subprocess.run(
                [sys.executable, str(LAUNCHER), "queue", "list", "--json", "-c", str(conf)],
                cwd=tmp_path,
                env=env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert listed.returncode == 0, listed.stderr
            entries = json.loads(listed.stdout)["entries"]
            return [e for e in entries if "MTA-STS" in str(e.get("last_error"))]

        (entry,) = wait_for(waiting, message="the MTA-STS refusal in the queue")
        assert str(entry["last_error"]).startswith("451 ")
        assert sts_mx.messages == []
        assert policies.requests == ["mta-sts.sts.test"]

        # From the Internet to the local domain: stored (SPF passes), in
        # the mailbox made as README.md says.
        for sub in ("cur", "new", "tmp"):
            (tmp_path / "state" / "maildir" / "example.org" / "alice" / sub).mkdir(parents=True)
        with smtplib.SMTP("127.0.0.1", mx_port, timeout=30) as s:
            s.ehlo("mail.sender.test")
            s.sendmail(
                "news@sender.test",
                ["alice@example.org"],
                b"From: news@sender.test\r\nSubject: in\r\n\r\nincoming\r\n",
            )
        (stored,) = maildir_files(tmp_path / "state" / "maildir", "example.org", "alice")
        assert b"incoming" in stored.read_bytes()
        assert b"spf=pass" in stored.read_bytes()
    finally:
        remote.close()
        sts_mx.close()
        policies.close()
        dns.close()
