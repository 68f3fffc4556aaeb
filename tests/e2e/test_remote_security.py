"""Outbound transport security end to end: real `mx_auth` policies in `target.remote`.

The real server process delivers, directly or through `target.queue`, to
receiving servers (mxsink.py) on 127.0.1.x at the `--debug.smtpport` port,
finding them through the tests' DNS server (fakedns.py, which sets the AD
bit on the names marked secure, and listens on loopback so kittiwake
believes it). MTA-STS policies are served over HTTPS by mtasts_server.py,
reached through `--debug.mtastsport` and trusted through `--debug.mtastsca`.
Nothing here is a stand-in policy: the `mx_auth` block names `mtasts`, `dnssec`,
`dane` and `local_policy` as an operator would (docs/mx-auth.md).

| domain | policy | MX (receiver) |
|---|---|---|
| sts-good.test | MTA-STS enforce: mx-good | mx-good: certificate of the trusted test CA |
| sts-unlisted.test | MTA-STS enforce: mx-good | 5 mx-unlisted (valid, not listed), 10 mx-good |
| sts-plain.test | MTA-STS enforce: mx-plain | mx-plain: no STARTTLS |
| sts-testing.test | MTA-STS testing: mx-plain | mx-plain |
| sts-testing-unlisted.test | MTA-STS testing: mx-good | mx-unlisted |
| sts-badcert.test | MTA-STS enforce: mx-dane | mx-dane: certificate of an unknown CA |
| sts-broken.test | MTA-STS announced, the policy host answers 404 | mx-plain |
| dane-ee.test | DNSSEC; TLSA 3 1 1 of mx-dane's key | mx-dane: certificate of an unknown CA |
| dane-ta.test | DNSSEC; TLSA 2 0 1 of mx-danta's issuer | mx-danta: chain of an unknown CA |
| dane-bad.test | DNSSEC; TLSA 3 1 1 of another key | mx-danebad: certificate of an unknown CA |
| dane-plain.test | DNSSEC; TLSA for an MX without STARTTLS | mx-plain |
| dane-implicit.test | DNSSEC, no MX; TLSA 3 1 1 of mx-dane's key | implicit: A of mx-dane |
| dnssec-halfway.test | no MX (validated), A not validated | implicit: A of mx-dane |
| plain.test | none | mx-plain |
| nopol-tls.test | none | mx-good |
| nopol-badcert.test | none | mx-danebad (not signed: no DANE) |
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import json
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fakedns import FakeDNS, txt
from kw import Kittiwake, env, free_port, maildir_files
from mtasts_server import MTASTSServer, Response, policy_text
from mxsink import MXSink
from queuetools import wait_for

Start = Callable[..., Kittiwake]

ADDRESSES = {
    "mx-plain": "127.0.1.2",
    "mx-good": "127.0.1.3",
    "mx-unlisted": "127.0.1.4",
    "mx-dane": "127.0.1.5",
    "mx-danta": "127.0.1.6",
    "mx-danebad": "127.0.1.7",
}
STS_DOMAINS = [
    "sts-good.test",
    "sts-unlisted.test",
    "sts-plain.test",
    "sts-testing.test",
    "sts-testing-unlisted.test",
    "sts-badcert.test",
]


def host(name: str) -> str:
    """The MX host name of receiver `name`."""
    return f"{name}.sec.test"


def tls_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    """A receiver's server context presenting `cert` with its whole chain."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def spki_sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def cert_sha256(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


class World:
    """DNS, the MTA-STS policy host and the receivers every test here shares."""

    def __init__(self, ca: trustme.CA, tmp: Path) -> None:
        self.port = free_port()
        self.ca = ca
        self.ca_file = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.https = MTASTSServer(ca, [*STS_DOMAINS, "sts-broken.test"], tmp)
        for domain in ["sts-good.test", "sts-unlisted.test"]:
            self.https.serve(domain, policy_text("enforce", host("mx-good")))
        self.https.serve("sts-plain.test", policy_text("enforce", host("mx-plain")))
        self.https.serve("sts-testing.test", policy_text("testing", host("mx-plain")))
        self.https.serve("sts-testing-unlisted.test", policy_text("testing", host("mx-good")))
        self.https.serve("sts-badcert.test", policy_text("enforce", host("mx-dane")))
        self.https.serve("sts-broken.test", Response(b"gone\n", status=404))

        stranger = trustme.CA()  # a CA nobody trusts: only DANE vouches for these
        dane_cert = stranger.issue_cert(host("mx-dane"))
        intermediate = stranger.create_child_ca()
        danta_cert = intermediate.issue_cert(host("mx-danta"))
        danebad_cert = stranger.issue_cert(host("mx-danebad"))
        dane_ee = f"3 1 1 {spki_sha256(dane_cert.cert_chain_pems[0].bytes())}"
        dane_ta = f"2 0 1 {cert_sha256(intermediate.cert_pem.bytes())}"
        wrong = f"3 1 1 {spki_sha256(trustme.CA().issue_cert('x.test').cert_chain_pems[0].bytes())}"

        records: dict[tuple[str, str], list[str] | str] = {
            ("sts-good.test", "MX"): [f"10 {host('mx-good')}."],
            ("sts-unlisted.test", "MX"): [f"5 {host('mx-unlisted')}.", f"10 {host('mx-good')}."],
            ("sts-plain.test", "MX"): [f"10 {host('mx-plain')}."],
            ("sts-testing.test", "MX"): [f"10 {host('mx-plain')}."],
            ("sts-testing-unlisted.test", "MX"): [f"10 {host('mx-unlisted')}."],
            ("sts-broken.test", "MX"): [f"10 {host('mx-plain')}."],
            ("sts-badcert.test", "MX"): [f"10 {host('mx-dane')}."],
            ("_mta-sts.sts-broken.test", "TXT"): [txt("v=STSv1; id=broken1")],
            ("dane-ee.test", "MX"): [f"10 {host('mx-dane')}."],
            ("dane-ta.test", "MX"): [f"10 {host('mx-danta')}."],
            ("dane-bad.test", "MX"): [f"10 {host('mx-danebad')}."],
            ("dane-plain.test", "MX"): [f"10 {host('mx-plain')}."],
            (f"_25._tcp.{host('mx-dane')}", "TLSA"): [dane_ee],
            (f"_25._tcp.{host('mx-danta')}", "TLSA"): [dane_ta],
            (f"_25._tcp.{host('mx-danebad')}", "TLSA"): [wrong],
            (f"_25._tcp.{host('mx-plain')}", "TLSA"): [wrong],
            # No MX records: the domain's own address is the MX (RFC 5321 §5.1).
            ("dane-implicit.test", "A"): [ADDRESSES["mx-dane"]],
            ("_25._tcp.dane-implicit.test", "TLSA"): [dane_ee],
            ("dnssec-halfway.test", "A"): [ADDRESSES["mx-dane"]],
            ("plain.test", "MX"): [f"10 {host('mx-plain')}."],
            ("nopol-tls.test", "MX"): [f"10 {host('mx-good')}."],
            ("nopol-badcert.test", "MX"): [f"10 {host('mx-danebad')}."],
        }
        for domain in [*STS_DOMAINS, "sts-broken.test"]:
            records[(f"mta-sts.{domain}", "A")] = ["127.0.0.1"]
        for domain in STS_DOMAINS:
            records[(f"_mta-sts.{domain}", "TXT")] = [txt("v=STSv1; id=20261207")]
        for name, ip in ADDRESSES.items():
            records[(host(name), "A")] = [ip]
        # Signed zones: the MX answers and the TLSA answers carry the AD bit.
        secure: set[str | tuple[str, str]] = {
            ("dane-ee.test", "MX"),
            ("dane-ta.test", "MX"),
            ("dane-bad.test", "MX"),
            ("dane-plain.test", "MX"),
            f"_25._tcp.{host('mx-plain')}",
            f"_25._tcp.{host('mx-dane')}",
            f"_25._tcp.{host('mx-danta')}",
            f"_25._tcp.{host('mx-danebad')}",
            "dane-implicit.test",  # its MX denial and its address records
            "_25._tcp.dane-implicit.test",
            ("dnssec-halfway.test", "MX"),  # the denial only, not the address
        }
        self.dns = FakeDNS(records, secure=secure)
        good = tls_context(ca.issue_cert(host("mx-good")))
        unlisted = tls_context(ca.issue_cert(host("mx-unlisted")))
        self.sinks = {
            "mx-plain": MXSink(ADDRESSES["mx-plain"], self.port, name=host("mx-plain")),
            "mx-good": MXSink(ADDRESSES["mx-good"], self.port, tls=good, name=host("mx-good")),
            "mx-unlisted": MXSink(
                ADDRESSES["mx-unlisted"], self.port, tls=unlisted, name=host("mx-unlisted")
            ),
            "mx-dane": MXSink(
                ADDRESSES["mx-dane"], self.port, tls=tls_context(dane_cert), name=host("mx-dane")
            ),
            "mx-danta": MXSink(
                ADDRESSES["mx-danta"], self.port, tls=tls_context(danta_cert), name=host("mx-danta")
            ),
            "mx-danebad": MXSink(
                ADDRESSES["mx-danebad"],
                self.port,
                tls=tls_context(danebad_cert),
                name=host("mx-danebad"),
            ),
        }

    def reset(self) -> None:
        for sink in self.sinks.values():
            sink.reset()

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self.https.close()
        self.dns.close()


@pytest.fixture(scope="module")
def world(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = World(ca, tmp_path_factory.mktemp("security"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def mx(world: World) -> World:
    world.reset()
    return world


#: The policies of a careful sender: MTA-STS and DANE where the domain asks.
POLICIES = "mtasts {\n            cache ram\n        }\n        dane\n        dnssec\n"


def config(tmp: Path, world: World, cert: tuple[str, str], local: str, extra: str) -> str:
    return f"""
state_dir {tmp}/state
hostname sender.example.com
autogenerated_msg_domain example.com
tls file {cert[0]} {cert[1]}
target.remote remote {{
    tls_client {{
        root_ca {world.ca_file}
    }}
    connect_timeout 5s
    mx_auth {{
        {POLICIES}        {local}
    }}
{extra}
}}
storage.maildir mb {{
    path {tmp}/mail
    auto_create yes
}}
target.queue outq {{
    target &remote
    location {tmp}/queue
    initial_retry_time 1h
    post_init_delay 0s
    bounce {{
        destination sender.example {{ deliver_to &mb }}
        default_destination {{ reject 550 5.7.1 "No notices to strangers" }}
    }}
}}
smtp tcp://127.0.0.1:0 {{
    deliver_to &remote
}}
smtp tcp://127.0.0.1:0 {{
    deliver_to &outq
}}
"""


def start(
    kittiwake: Start,
    tmp: Path,
    world: World,
    cert: tuple[str, str],
    *,
    local: str = "local_policy off",
    extra: str = "",
) -> Kittiwake:
    return kittiwake(
        config(tmp, world, cert, local, extra),
        ready=2,
        args=(
            "--debug.dnsoverride",
            world.dns.address,
            "--debug.smtpport",
            str(world.port),
            "--debug.mtastsport",
            str(world.https.port),
            "--debug.mtastsca",
            str(world.ca_file),
        ),
    )


def message(subject: str) -> bytes:
    return (
        f"From: <me@sender.example>\r\nTo: <you@elsewhere.test>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@sender.example>\r\n\r\nHello.\r\n"
    ).encode()


def send(
    server: Kittiwake,
    ca: trustme.CA,
    rcpt: str,
    subject: str,
    *,
    queued: bool = False,
    requiretls: bool = False,
) -> tuple[int, bytes]:
    """One message over STARTTLS (REQUIRETLS needs it): the RCPT reply, or DATA's."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", server.port(1 if queued else 0), timeout=30) as client:
        client.ehlo("client.example")
        client.starttls(context=context)
        client.ehlo("client.example")
        if requiretls:
            assert client.has_extn("requiretls")
        code, text = client.mail("me@sender.example", ["REQUIRETLS"] if requiretls else [])
        assert code == 250, text
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text.split(b" (msg ID = ")[0]
        code, text = client.data(message(subject))
        return code, text.split(b" (msg ID = ")[0]


def kittiwake_cmd(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m kittiwake ARGS -c CONF`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kittiwake", *args, "-c", str(tmp / "kittiwake.conf")],
        check=False,
        cwd=tmp,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def queue_entries(tmp: Path) -> list[dict[str, Any]]:
    done = kittiwake_cmd(tmp, "queue", "list", "--json")
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, Any]] = json.loads(done.stdout)["entries"]
    return entries


def stays_queued(tmp: Path, rcpt: str) -> dict[str, Any]:
    """The queue entry of `rcpt` once its first try failed and it waits for the next."""

    def waiting() -> dict[str, Any] | None:
        for entry in queue_entries(tmp):
            rcpts = [r["addr"] for r in entry["rcpts"]]
            if entry["state"] == "waiting" and entry["last_error"] and rcpts == [rcpt]:
                return entry
        return None

    found = wait_for(waiting, message=f"{rcpt} waiting in the queue")
    assert isinstance(found, dict)
    return found


def notices(tmp: Path) -> list[email.message.EmailMessage]:
    out = []
    for path in maildir_files(tmp / "mail", "sender.example", "me"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        out.append(msg)
    return out


# -- MTA-STS -------------------------------------------------------------------------


def test_mtasts_enforce_refuses_a_plaintext_mx_and_the_message_stays_queued(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    assert send(server, ca, "you@sts-plain.test", "downgrade", queued=True)[0] == 250
    entry = stays_queued(tmp_path, "you@sts-plain.test")
    expected = (
        "451 4.7.1 No usable MXs, last err: TLS is required but unavailable or failed (MTA-STS)"
    )
    assert entry["last_error"] == expected
    shown = kittiwake_cmd(tmp_path, "queue", "show", entry["id"])
    assert shown.returncode == 0 and expected in shown.stdout
    assert mx.sinks["mx-plain"].connections == 1  # it was dialled, and refused
    assert not mx.sinks["mx-plain"].messages


def test_mtasts_enforce_skips_an_unlisted_mx_for_the_next_listed_one(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    assert send(server, ca, "you@sts-unlisted.test", "listed only")[0] == 250
    (got,) = mx.sinks["mx-good"].wait_messages(1)
    assert got.tls and got.rcpts == ["you@sts-unlisted.test"]
    assert mx.sinks["mx-unlisted"].connections == 0  # refused before any dial
    server.wait_log(
        r"MX unusable .*mx=mx-unlisted\.sec\.test reply=\"550 5\.7\.0 Failed to establish "
        r"the MX record authenticity \(MTA-STS\)\""
    )


def test_mtasts_enforce_delivers_to_a_listed_mx_with_a_valid_certificate(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    assert send(server, ca, "you@sts-good.test", "certified", queued=True)[0] == 250
    (got,) = mx.sinks["mx-good"].wait_messages(1)
    assert got.tls and got.rcpts == ["you@sts-good.test"]
    assert mx.sinks["mx-good"].server_names == [host("mx-good")]  # SNI: the MX name
    wait_for(lambda: queue_entries(tmp_path) == [], message="queue empty")


def test_mtasts_testing_mode_delivers_anyway(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    assert send(server, ca, "you@sts-testing.test", "only testing")[0] == 250
    (got,) = mx.sinks["mx-plain"].wait_messages(1)
    assert not got.tls
    server.wait_log(r"MTA-STS would refuse this connection \(testing mode\)")
    # An MX the policy does not list: delivered too, over TLS.
    assert send(server, ca, "you@sts-testing-unlisted.test", "unlisted")[0] == 250
    (got,) = mx.sinks["mx-unlisted"].wait_messages(1)
    assert got.tls and got.rcpts == ["you@sts-testing-unlisted.test"]
    server.wait_log(r"MX not listed by the MTA-STS policy \(testing mode\)")


# -- DANE ------------------------------------------------------------------------------


def test_dane_ee_match_delivers_to_a_certificate_no_ca_vouches_for(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """TLSA 3 1 1 with the AD bit, the MX answer signed too. The local minimums
    only DANE (TLS) and a validated MX answer (`dnssec`) can meet."""
    local = (
        "local_policy {\n            min_tls_level authenticated\n"
        "            min_mx_level dnssec\n        }"
    )
    server = start(kittiwake, tmp_path, mx, cert_files, local=local)
    assert send(server, ca, "you@dane-ee.test", "dane ee")[0] == 250
    (got,) = mx.sinks["mx-dane"].wait_messages(1)
    assert got.tls
    # WebPKI did refuse it: the DANE match is what made it authenticated.
    server.wait_log(r"certificate check failed, TLS without it .*mx=mx-dane\.sec\.test")
    # Both handshakes (checked, then not) named the MX (RFC 7672 §8.1).
    assert mx.sinks["mx-dane"].server_names == [host("mx-dane")] * 2


def test_dnssec_of_an_implicit_mx_needs_its_address_records_validated(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """No MX records: the validated denial is not enough, the A answer must be too."""
    local = (
        "local_policy {\n            min_tls_level authenticated\n"
        "            min_mx_level dnssec\n        }"
    )
    server = start(kittiwake, tmp_path, mx, cert_files, local=local)
    assert send(server, ca, "you@dane-implicit.test", "implicit")[0] == 250
    (got,) = mx.sinks["mx-dane"].wait_messages(1)
    assert got.tls and got.rcpts == ["you@dane-implicit.test"]
    assert mx.sinks["mx-dane"].server_names[-1] == "dane-implicit.test"
    assert send(server, ca, "you@dnssec-halfway.test", "halfway") == (
        451,
        b"4.7.0 No usable MXs, last err: Failed to establish the MX record authenticity",
    )
    assert len(mx.sinks["mx-dane"].messages) == 1


def test_dane_ta_match_through_the_chain_the_mx_sent(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """TLSA 2 0 1 names the intermediate CA, which only the chain the MX sent holds."""
    local = "local_policy {\n            min_tls_level authenticated\n        }"
    server = start(kittiwake, tmp_path, mx, cert_files, local=local)
    assert send(server, ca, "you@dane-ta.test", "dane ta")[0] == 250
    (got,) = mx.sinks["mx-danta"].wait_messages(1)
    assert got.tls


def test_dane_mismatch_is_refused_and_stays_queued(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    assert send(server, ca, "you@dane-bad.test", "dane mismatch", queued=True)[0] == 250
    entry = stays_queued(tmp_path, "you@dane-bad.test")
    assert entry["last_error"] == (
        "451 4.7.5 No usable MXs, last err: No TLSA record matches the server certificate (DANE)"
    )
    assert mx.sinks["mx-danebad"].connections >= 1 and not mx.sinks["mx-danebad"].messages
    # TLSA records make TLS mandatory: an MX without STARTTLS is refused (RFC 7672 §2.2).
    assert send(server, ca, "you@dane-plain.test", "dane plain", queued=True)[0] == 250
    entry = stays_queued(tmp_path, "you@dane-plain.test")
    assert entry["last_error"] == (
        "451 4.7.1 No usable MXs, last err: TLS is required but unavailable or failed (DANE)"
    )
    assert mx.sinks["mx-plain"].connections == 1 and not mx.sinks["mx-plain"].messages


# -- local_policy ----------------------------------------------------------------------


def test_local_policy_min_tls_encrypted_refuses_plain_text(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    local = "local_policy {\n            min_tls_level encrypted\n        }"
    server = start(kittiwake, tmp_path, mx, cert_files, local=local)
    assert send(server, ca, "you@plain.test", "too plain", queued=True)[0] == 250
    entry = stays_queued(tmp_path, "you@plain.test")
    assert entry["last_error"] == (
        "451 4.7.1 No usable MXs, last err: TLS is not available or unauthenticated but required:"
        " STARTTLS not offered"
    )
    assert not mx.sinks["mx-plain"].messages
    # The same server sends to a domain whose MX does offer TLS.
    assert send(server, ca, "you@nopol-tls.test", "encrypted enough")[0] == 250
    assert mx.sinks["mx-good"].wait_messages(1)[0].tls
    # Reported as the negotiation went: the local rule names no result type.
    assert server.stop() == 0
    day = dt.datetime.now(dt.UTC).date().isoformat()
    done = kittiwake_cmd(tmp_path, "tls-report", "--day", day, "--domain", "plain.test")
    assert done.returncode == 0, done.stderr
    (policy,) = json.loads(done.stdout)["policies"]
    assert policy["policy"]["policy-type"] == "no-policy-found"
    assert [d["result-type"] for d in policy["failure-details"]] == ["starttls-not-supported"]


# -- REQUIRETLS --------------------------------------------------------------------------


def test_requiretls_delivered_under_mtasts_to_a_certified_mx(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    mx.sinks["mx-good"].requiretls = True
    server = start(kittiwake, tmp_path, mx, cert_files)
    code, _ = send(server, ca, "you@sts-good.test", "must be tls", queued=True, requiretls=True)
    assert code == 250
    (got,) = mx.sinks["mx-good"].wait_messages(1)
    assert got.tls and "REQUIRETLS" in got.mail_params


def test_requiretls_delivered_under_dane_and_dnssec(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """No MTA-STS: the validated MX answer (`dnssec`) and the TLSA match (`dane`)
    reach the levels REQUIRETLS demands, with a certificate no CA vouches for."""
    mx.sinks["mx-dane"].requiretls = True
    server = start(kittiwake, tmp_path, mx, cert_files)
    code, _ = send(server, ca, "you@dane-ee.test", "dane tls", queued=True, requiretls=True)
    assert code == 250
    (got,) = mx.sinks["mx-dane"].wait_messages(1)
    assert got.tls and "REQUIRETLS" in got.mail_params


def test_requiretls_towards_a_plaintext_mx_is_bounced(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """MTA-STS refuses the plain MX, and so would REQUIRETLS: permanent (RFC 8689 §4.2.1)."""
    server = start(kittiwake, tmp_path, mx, cert_files)
    direct = send(server, ca, "you@sts-plain.test", "direct", requiretls=True)
    assert direct == (550, b"5.7.30 REQUIRETLS: TLS requirements not met")
    code, _ = send(server, ca, "them@sts-plain.test", "queued", queued=True, requiretls=True)
    assert code == 250
    found = wait_for(lambda: notices(tmp_path), message="DSN")
    assert isinstance(found, list) and len(found) == 1
    report = found[0].as_string()
    assert "them@sts-plain.test" in report and "5.7.30" in report
    assert not mx.sinks["mx-plain"].messages
    wait_for(lambda: queue_entries(tmp_path) == [], message="queue empty")


def test_a_requiretls_message_never_shares_a_connection(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """Ordinary, REQUIRETLS, ordinary: the first connection is pooled and reused
    by the third message; the REQUIRETLS one dials its own and is closed after."""
    good = mx.sinks["mx-good"]
    good.requiretls = True
    server = start(kittiwake, tmp_path, mx, cert_files)
    assert send(server, ca, "a@sts-good.test", "first")[0] == 250
    assert send(server, ca, "b@sts-good.test", "required", requiretls=True)[0] == 250
    assert send(server, ca, "c@sts-good.test", "third")[0] == 250
    got = good.wait_messages(3)
    assert [(m.rcpts[0], m.connection, "REQUIRETLS" in m.mail_params) for m in got] == [
        ("a@sts-good.test", 1, False),
        ("b@sts-good.test", 2, True),
        ("c@sts-good.test", 1, False),
    ]
    assert good.connections == 2
    wait_for(lambda: good.quits == 1, message="the REQUIRETLS connection closed with QUIT")


# -- TLS reports --------------------------------------------------------------------------


def test_tls_reports_count_real_deliveries(
    kittiwake: Start, tmp_path: Path, mx: World, cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = start(kittiwake, tmp_path, mx, cert_files)
    sent = {
        "sts-good.test": 250,  # sts: success
        "sts-unlisted.test": 250,  # sts: validation-failure (mx-unlisted), then success
        "sts-plain.test": 451,  # sts: starttls-not-supported
        "sts-broken.test": 250,  # sts: sts-policy-fetch-error, sent as without a policy
        "sts-badcert.test": 451,  # sts: sts-webpki-invalid
        # testing mode: delivered over good TLS to an MX the policy does not
        # list, and reported as the validation-failure enforce would refuse
        "sts-testing-unlisted.test": 250,
        "dane-ee.test": 250,  # tlsa: success
        "dane-bad.test": 451,  # tlsa: tlsa-invalid
        "plain.test": 250,  # no-policy-found: starttls-not-supported
        "nopol-tls.test": 250,  # no-policy-found: success
        "nopol-badcert.test": 250,  # no-policy-found: any TLS is a success without a policy
    }
    for domain, code in sent.items():
        got = send(server, ca, f"you@{domain}", f"report {domain}")
        assert got[0] == code, (domain, got)
    assert server.stop() == 0  # the store writes its last counts at stop
    day = dt.datetime.now(dt.UTC).date().isoformat()
    done = kittiwake_cmd(tmp_path, "tls-report", "--day", day)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    reports = {r["policies"][0]["policy"]["policy-domain"]: r for r in lines}
    assert sorted(reports) == sorted(sent)

    def summary(domain: str) -> tuple[str, int, int, list[tuple[str, str, int]]]:
        (policy,) = reports[domain]["policies"]
        rows = [
            (d["result-type"], d.get("receiving-mx-hostname", ""), d["failed-session-count"])
            for d in policy["failure-details"]
        ]
        counts = policy["summary"]
        return (
            policy["policy"]["policy-type"],
            counts["total-successful-session-count"],
            counts["total-failure-session-count"],
            rows,
        )

    assert summary("sts-good.test") == ("sts", 1, 0, [])
    assert summary("sts-unlisted.test") == (
        "sts",
        1,
        1,
        [("validation-failure", host("mx-unlisted"), 1)],
    )
    assert summary("sts-plain.test") == (
        "sts",
        0,
        1,
        [("starttls-not-supported", host("mx-plain"), 1)],
    )
    assert summary("sts-broken.test") == (
        "sts",
        0,
        1,
        [("sts-policy-fetch-error", host("mx-plain"), 1)],
    )
    assert summary("sts-badcert.test") == (
        "sts",
        0,
        1,
        [("sts-webpki-invalid", host("mx-dane"), 1)],
    )
    assert summary("sts-testing-unlisted.test") == (
        "sts",
        0,
        1,
        [("validation-failure", host("mx-unlisted"), 1)],
    )
    assert (
        "mode: testing"
        in reports["sts-testing-unlisted.test"]["policies"][0]["policy"]["policy-string"]
    )
    assert summary("dane-ee.test") == ("tlsa", 1, 0, [])
    assert summary("dane-bad.test") == ("tlsa", 0, 1, [("tlsa-invalid", host("mx-danebad"), 1)])
    assert summary("plain.test") == (
        "no-policy-found",
        0,
        1,
        [("starttls-not-supported", host("mx-plain"), 1)],
    )
    assert summary("nopol-tls.test") == ("no-policy-found", 1, 0, [])
    assert summary("nopol-badcert.test") == ("no-policy-found", 1, 0, [])

    sts = reports["sts-good.test"]["policies"][0]["policy"]
    assert sts["mx-host"] == [host("mx-good")] and "mode: enforce" in sts["policy-string"]
    tlsa = reports["dane-ee.test"]["policies"][0]["policy"]
    assert tlsa["policy-string"][0].startswith("3 1 1 ")
    (row,) = reports["plain.test"]["policies"][0]["failure-details"]
    assert row["receiving-ip"] == ADDRESSES["mx-plain"] and row["sending-mta-ip"] == "127.0.0.1"
    assert row["receiving-mx-helo"] == host("mx-plain")


def test_tls_report_store_is_not_started_by_config_check(
    tmp_path: Path, world: World, cert_files: tuple[str, str]
) -> None:
    """`config check` builds target.remote (and the shared store) but writes nothing."""
    (tmp_path / "kittiwake.conf").write_text(
        config(tmp_path, world, cert_files, "local_policy off", "")
    )
    done = kittiwake_cmd(tmp_path, "config", "check")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "state" / "tls_reports").exists()
