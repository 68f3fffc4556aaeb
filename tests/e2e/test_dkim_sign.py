"""`modify.dkim` through the real server: keys made at first start, messages
submitted through `submission` endpoints delivered signed, and the signatures
checked by dkimpy and by OpenDKIM's `opendkim-testmsg`, a verifier that shares
no code with kittiwake (docs/modify.md, "dkim").

`opendkim-testmsg` has no option for its DNS server: libopendkim asks the
servers of /etc/resolv.conf on port 53. So the test runs it in a private
mount namespace (`unshare --mount`, as root) where a resolv.conf of the
test's own names a FakeDNS listening on 127.53.53.53:53; nothing outside
that one process sees the change.
"""

from __future__ import annotations

import os
import re
import smtplib
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from dkimtools import MESSAGE, delivered_by, header_fields
from fakedns import FakeDNS, txt
from kw import Kittiwake, need_tool

Start = Callable[..., Kittiwake]
RESOLVER = "127.53.53.53"


@pytest.fixture
def dns53() -> Iterator[FakeDNS]:
    """A FakeDNS on port 53, for kittiwake and opendkim-testmsg alike."""
    if os.geteuid() != 0:
        pytest.fail("opendkim-testmsg needs root: a mount namespace and port 53", pytrace=False)
    server = FakeDNS({}, host=RESOLVER, port=53)
    try:
        yield server
    finally:
        server.close()


def opendkim(message: bytes, tmp: Path) -> tuple[int, str]:
    """`opendkim-testmsg` verifying `message`: (exit status, what it printed)."""
    tool = need_tool("opendkim-testmsg", "opendkim-tools")
    unshare = need_tool("unshare", "util-linux")
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {RESOLVER}\noptions timeout:2 attempts:1\n")
    script = f"mount --bind {resolv} /etc/resolv.conf && exec {tool}"
    result = subprocess.run(
        [unshare, "--mount", "sh", "-c", script],
        input=message,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")


def dkimpy(message: bytes, dns: FakeDNS) -> bool:
    """dkimpy verifying every signature, its keys read from the FakeDNS data."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        records = dns.records.get((name.decode().lower(), "TXT"))
        if not isinstance(records, list):
            return None
        return b"".join(re.findall(rb'"((?:[^"\\]|\\.)*)"', records[0].encode()))

    verifier = dkim.DKIM(message)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    return count > 0 and all(verifier.verify(idx=i, dnsfunc=lookup) for i in range(count))


def submit(port: int, message: bytes, sender: str = "alice@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.example.net")
        client.login(sender, "password")
        client.sendmail(sender, ["user@example.com"], message)


def publish(dns: FakeDNS, state: Path, path: str, name: str) -> str:
    record = (state / path).read_text()
    dns.set(name, "TXT", [txt(record)])
    return record


CONFIG = """
state_dir {tmp}/state
hostname mx.example.com
tls off
storage.maildir mail {{
    path {tmp}/maildir
    auto_create yes
}}
submission tcp://127.0.0.1:0 {{
    auth dummy
    modify {{
        dkim example.org default
    }}
    deliver_to &mail
}}
submission tcp://127.0.0.1:0 {{
    auth dummy
    modify {{
        dkim {{
            domains example.org
            selector ed
            key_path keys/{{selector}}.{{domain}}.pem
            newkey_algo ed25519
            header_canon simple
            body_canon simple
            sig_expiry 1h
            oversign_fields From Subject Date
            sign_fields To Message-ID
        }}
    }}
    deliver_to &mail
}}
submission tcp://127.0.0.1:0 {{
    auth dummy
    modify {{
        dkim {{
            domains example.org
            selector rs
            header_canon simple
            body_canon simple
        }}
    }}
    deliver_to &mail
}}
submission tcp://127.0.0.1:0 {{
    auth dummy
    modify {{
        dkim {{
            domains example.org
            selector er
            newkey_algo ed25519
        }}
    }}
    deliver_to &mail
}}
"""


def test_signed_on_submission_and_verified_by_others(
    kittiwake: Start, tmp_path: Path, dns53: FakeDNS
) -> None:
    old = os.umask(0o022)
    try:
        srv = kittiwake(
            CONFIG.format(tmp=tmp_path), ready=4, args=("--debug.dnsoverride", dns53.address)
        )
    finally:
        os.umask(old)
    state = tmp_path / "state"
    rsa_key = state / "dkim_keys" / "example.org_default.key"
    assert stat.S_IMODE(rsa_key.stat().st_mode) == 0o600
    assert rsa_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    record = publish(
        dns53, state, "dkim_keys/example.org_default.dns", "default._domainkey.example.org"
    )
    assert record.startswith("v=DKIM1; k=rsa; p=MII")
    record = publish(dns53, state, "keys/ed.example.org.pem.dns", "ed._domainkey.example.org")
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", record)
    publish(dns53, state, "dkim_keys/example.org_rs.dns", "rs._domainkey.example.org")
    publish(dns53, state, "dkim_keys/example.org_er.dns", "er._domainkey.example.org")
    srv.wait_log(r"generated a new DKIM key: publish its record as TXT at default\._domainkey")

    body = MESSAGE + b"a line with trailing space  \r\n\r\n\r\n"
    rsa_copy = delivered_by(lambda: submit(srv.port(0), body), tmp_path / "maildir")
    ed_copy = delivered_by(lambda: submit(srv.port(1), body), tmp_path / "maildir")
    for copy, tags in (
        (rsa_copy, "a=rsa-sha256; c=relaxed/relaxed"),
        (ed_copy, "a=ed25519-sha256; c=simple/simple"),
    ):
        (signature,) = header_fields(copy, "DKIM-Signature")
        assert signature.startswith(f"v=1; {tags}; d=example.org;"), signature
        assert "q=" not in signature and "l=" not in signature
        crlf = copy.replace(b"\n", b"\r\n")
        assert dkimpy(crlf, dns53)
        assert opendkim(copy, tmp_path) == (0, "")
        # And a change is noticed by both (the test would pass on a verifier that says yes).
        altered = crlf.replace(b"Subject: Hello", b"Subject: Hullo")
        assert not dkimpy(altered, dns53)
        status, text = opendkim(altered, tmp_path)
        assert status != 0 and "Bad signature" in text

    (rsa_sig,) = header_fields(rsa_copy, "DKIM-Signature")
    h = re.search(r"h=([^;]+);", rsa_sig)
    assert h is not None
    names = [n.strip() for n in h[1].split(":")]
    # Oversigned: one more than present (Subject x2, From x2, To x2 ...); List-* absent.
    assert names.count("Subject") == 2 and names.count("From") == 2 and names.count("Cc") == 1
    assert "List-Id" not in names
    t = int(re.search(r"t=(\d+);", rsa_sig)[1])  # type: ignore[index]
    x = int(re.search(r"x=(\d+);", rsa_sig)[1])  # type: ignore[index]
    assert x - t == 120 * 3600
    (ed_sig,) = header_fields(ed_copy, "DKIM-Signature")
    h = re.search(r"h=([^;]+);", ed_sig)
    assert h is not None
    assert [n.strip() for n in h[1].split(":")] == [
        "From",
        "From",
        "Subject",
        "Subject",
        "Date",
        "Date",
        "To",
        "Message-ID",
    ]
    assert int(re.search(r"x=(\d+);", ed_sig)[1]) - int(re.search(r"t=(\d+);", ed_sig)[1]) == 3600  # type: ignore[index]
    # The signature is on top and covers what the pipeline added below it.
    lines = ed_copy.split(b"\n")
    first = next(i for i, line in enumerate(lines) if line.startswith(b"DKIM-Signature:"))
    assert (
        lines[first + 1 :].index(next(line for line in lines if line.startswith(b"Received:"))) >= 0
    )

    # A restart reads the keys it made, and signs with the same ones.
    srv.kill()
    srv = kittiwake(
        CONFIG.format(tmp=tmp_path), ready=4, args=("--debug.dnsoverride", dns53.address)
    )
    copy = delivered_by(lambda: submit(srv.port(0), MESSAGE), tmp_path / "maildir")
    assert opendkim(copy, tmp_path) == (0, "")
    assert "generated a new DKIM key" not in srv.log
