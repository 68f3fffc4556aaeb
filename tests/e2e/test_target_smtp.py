"""target.smtp between two real kittiwake processes.

An upstream kittiwake forwards with `target.smtp` to a downstream kittiwake
that stores into Maildirs. The recipient's domain picks the scenario
(the upstream has a destination block per case, the downstream refuses
some domains in its own ways), so one pair of processes serves every test:

* STARTTLS with the certificate verified against `tls_client { root_ca }`,
  BDAT (the downstream offers CHUNKING), the content byte-exact;
* SMTPUTF8 passed on (the downstream offers it);
* the downstream's RCPT replies passed through, 552 turned into 452;
* SIZE: a declared size over the downstream's limit, and a body over it;
* endpoints tried in order; none answering gives 451 4.4.1;
* `starttls yes` towards a server without STARTTLS, and an untrusted
  certificate: 451 4.7.0, never clear text;
* implicit TLS (`tls://`) to a host name;
* AUTH PLAIN, LOGIN, a wrong password, `auth forward` with and without
  the client's credentials; the password never reaches the log.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import trustme
from fakedns import FakeDNS
from kw import Dialog, Kittiwake, free_port, maildir_files
from outbound import deliver, target

from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta, SMTPOptions

USER = "relay@example.org"
PASSWORD = "s3cret-relay-pw"
HASH = "bcrypt:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4, b"2a")).decode()


def downstream_conf(d: Path, cert: tuple[str, str]) -> str:
    return f"""
state_dir {d}/state
hostname down.example.net
tls file {cert[0]} {cert[1]}
auth.pass_table users {{
    table static {{
        entry {USER} "{HASH}"
    }}
}}
storage.maildir mb {{
    path {d}/mail
    auto_create yes
}}
storage.maildir strict {{
    path {d}/strict
    auto_create no
}}
smtp tcp://127.0.0.1:0 {{
    max_message_size 64K
    destination full.example.org {{
        reject 552 5.2.2 "Mailbox full"
    }}
    destination later.example.org {{
        reject 451 4.7.1 "Try again later"
    }}
    destination strict.example.org {{
        deliver_to &strict
    }}
    default_destination {{
        deliver_to &mb
    }}
}}
smtp tcp://127.0.0.1:0 {{
    tls off
    default_destination {{
        deliver_to &mb
    }}
}}
smtp tls://127.0.0.1:0 {{
    default_destination {{
        deliver_to &mb
    }}
}}
submission tcp://127.0.0.1:0 {{
    auth &users
    sasl_login yes
    default_destination {{
        deliver_to &mb
    }}
}}
"""


def upstream_conf(u: Path, ca: Path, ports: list[int], dead: int) -> str:
    main, plain, implicit, submission = ports
    sub = f"tcp://127.0.0.1:{submission}"
    return f"""
state_dir {u}/state
hostname up.example.com
tls off
tls_client {{
    root_ca {ca}
}}
auth.pass_table users {{
    table static {{
        entry {USER} "{HASH}"
    }}
}}
target.smtp down {{
    targets tcp://127.0.0.1:{main}
    debug yes
}}
smtp tcp://127.0.0.1:0 {{
    destination fallback.test {{
        deliver_to smtp tcp://127.0.0.1:{dead} tcp://127.0.0.1:{main}
    }}
    destination dead.test {{
        deliver_to smtp tcp://127.0.0.1:{dead} {{
            connect_timeout 5s
        }}
    }}
    destination plain.test {{
        deliver_to smtp tcp://127.0.0.1:{plain}
    }}
    destination cleartext.test {{
        deliver_to smtp tcp://127.0.0.1:{plain} {{
            starttls no
        }}
    }}
    destination untrusted.test {{
        deliver_to smtp tcp://127.0.0.1:{main} {{
            tls_client {{
            }}
        }}
    }}
    destination implicit.test {{
        deliver_to smtp tls://localhost:{implicit}
    }}
    destination auth.test {{
        deliver_to smtp {sub} {{
            auth plain {USER} {PASSWORD}
            debug yes
        }}
    }}
    destination login.test {{
        deliver_to smtp {sub} {{
            auth login {USER} {PASSWORD}
            debug yes
        }}
    }}
    destination badauth.test {{
        deliver_to smtp {sub} {{
            auth plain {USER} wrong-password
        }}
    }}
    destination forward.test {{
        deliver_to smtp {sub} {{
            auth forward
        }}
    }}
    default_destination {{
        deliver_to &down
    }}
}}
submission tcp://127.0.0.1:0 {{
    auth &users
    default_destination {{
        deliver_to smtp {sub} {{
            auth forward
            debug yes
        }}
    }}
}}
"""


@dataclass
class Pair:
    up: Kittiwake
    down: Kittiwake
    mail: Path  # the downstream's Maildir root
    ca_file: Path

    @property
    def smtp(self) -> int:
        return self.up.port(0)

    @property
    def submission(self) -> int:
        return self.up.port(1)

    def stored(self, domain: str, user: str) -> list[bytes]:
        return [p.read_bytes() for p in maildir_files(self.mail, domain, user)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("pair")
    down_dir, up_dir = root / "down", root / "up"
    down_dir.mkdir()
    up_dir.mkdir()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = root / "cert.pem", root / "key.pem", root / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    dns = FakeDNS({})
    args = ("--debug.dnsoverride", dns.address)
    down = Kittiwake(down_dir, downstream_conf(down_dir, (str(cert), str(key))), args=args)
    up: Kittiwake | None = None
    try:
        down.wait_ready(4)
        ports = [down.port(i) for i in range(4)]
        up = Kittiwake(up_dir, upstream_conf(up_dir, ca_file, ports, free_port()), args=args)
        up.wait_ready(2)
        yield Pair(up, down, down_dir / "mail", ca_file)
    finally:
        for server in (up, down):
            if server is not None:
                server.kill()
        dns.close()


def message(tag: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (
        b"From: Sender <sender@example.net>\r\n"
        b"To: someone@example.org\r\n"
        + f"Subject: {tag}\r\n".encode()
        + f"Message-ID: <{tag}@example.net>\r\n".encode()
        + b"Date: Tue, 05 Mar 2024 10:00:00 +0000\r\n\r\n"
        + body
    )


def transaction(
    d: Dialog, sender: str, rcpts: list[str], data: bytes | None, *, params: str = ""
) -> tuple[list[str], str]:
    """MAIL, RCPTs, DATA: the RCPT replies and the final reply ("" without DATA)."""
    assert d.cmd(f"MAIL FROM:<{sender}>{params}").startswith("250 "), sender
    answers = [d.cmd(f"RCPT TO:<{rcpt}>") for rcpt in rcpts]
    if data is None or not any(a.startswith("250 ") for a in answers):
        d.cmd("RSET")
        return answers, ""
    assert d.cmd("DATA").startswith("354 ")
    d.send(data.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
    return answers, d.reply()[-1]


def dialog(port: int) -> Dialog:
    d = Dialog(port)
    assert d.reply()[-1].startswith("220 ")
    assert d.cmd("EHLO client.example.net").startswith("250 ")
    return d


def fields(stored: bytes) -> str:
    return stored.split(b"\n\n", 1)[0].decode("utf-8", "replace")


# -- a relayed message -------------------------------------------------------------


def test_relay_over_starttls_with_bdat(pair: Pair) -> None:
    body = (
        b"First line.\r\n.leading dot\r\n..two dots\r\n"
        b"a lone CR\rin the middle\r\n"  # leaves as a line end, never alone
        b".\r\n"  # a line with only a dot, stuffed both ways
        b"no final line end"
    )
    with dialog(pair.smtp) as d:
        answers, final = transaction(
            d, "sender@example.net", ["one@example.org"], message("relay", body)
        )
    assert answers == [answers[0]] and answers[0].startswith("250 ")
    assert final.startswith("250 ")
    (stored,) = pair.stored("example.org", "one")
    assert stored.endswith(
        b"\n\nFirst line.\n.leading dot\n..two dots\n"
        b"a lone CR\nin the middle\n.\nno final line end\n"
    )
    head = fields(stored)
    # The downstream's Received field: over TLS, from our EHLO name.
    assert re.search(r"from up\.example\.com .*with ESMTPS", " ".join(head.split()))
    # kittiwake's own Received field from the upstream is below it, then the original.
    assert head.count("Received:") == 2
    assert "Subject: relay" in head
    log = pair.up.wait_log(r"sent remote=tcp://127\.0\.0\.1:\d+ line=\"BDAT \d+ LAST\"")
    assert log
    assert "line=STARTTLS" in pair.up.log


def test_smtputf8_passed_on(pair: Pair) -> None:
    with dialog(pair.smtp) as d:
        answers, final = transaction(
            d, "grüße@bücher.example", ["jörg@example.org"], message("utf8"), params=" SMTPUTF8"
        )
    assert answers[0].startswith("250 ") and final.startswith("250 ")
    (stored,) = pair.stored("example.org", "jörg")
    assert "Return-Path: <grüße@bücher.example>" in fields(stored)
    pair.up.wait_log(r'line="MAIL FROM:<grüße@bücher\.example> SMTPUTF8"')


def test_downstream_rcpt_replies_pass_through(pair: Pair) -> None:
    rcpts = [
        "someone@full.example.org",
        "someone@later.example.org",
        "nobody@strict.example.org",
        "two@example.org",
    ]
    with dialog(pair.smtp) as d:
        answers, final = transaction(d, "sender@example.net", rcpts, message("rcpts"))
    # The downstream's text (with its own message ID) passes through, then
    # ours is added; RFC 5321 §4.5.3.1.10: its 552 reaches the client as 452.
    ids = r" \(msg ID = [0-9a-f]{8}\) \(msg ID = [0-9a-f]{8}\)"
    assert re.fullmatch(r"452 4\.2\.2 Mailbox full" + ids, answers[0])
    assert re.fullmatch(r"451 4\.7\.1 Try again later" + ids, answers[1])
    assert re.fullmatch(r"550 5\.1\.1 User does not exist" + ids, answers[2])
    assert answers[3].startswith("250 ")
    assert final.startswith("250 ")
    assert len(pair.stored("example.org", "two")) == 1


def test_size_over_the_downstream_limit(pair: Pair) -> None:
    big = message("big", b"x" * 70 + b"\r\n") * 1000  # 70 KB, over the downstream's 64K
    with dialog(pair.smtp) as d:
        # Declared: refused at the first RCPT, before any content moves.
        answers, _ = transaction(
            d, "s@example.net", ["big@example.org"], None, params=" SIZE=80000"
        )
        assert answers[0].startswith("552 5.3.4 Message size exceeds fixed maximum message size")
        # Not declared: refused once the final size is known, still without sending it.
        answers, final = transaction(d, "s@example.net", ["big@example.org"], big)
    assert answers[0].startswith("250 ")
    assert final.startswith("552 5.3.4 Message size exceeds fixed maximum message size")
    assert pair.stored("example.org", "big") == []


# -- endpoints -------------------------------------------------------------------------


def test_endpoints_are_tried_in_order(pair: Pair) -> None:
    with dialog(pair.smtp) as d:
        answers, final = transaction(d, "s@example.net", ["a@fallback.test"], message("fallback"))
    assert answers[0].startswith("250 ") and final.startswith("250 ")
    assert len(pair.stored("fallback.test", "a")) == 1
    pair.up.wait_log(
        r"downstream server unusable endpoint=tcp://127\.0\.0\.1:\d+ msg_id=[0-9a-f]{8}"
        r' reply="451 4\.4\.1 Could not connect to the downstream server"'
    )


def test_no_endpoint_answers(pair: Pair) -> None:
    with dialog(pair.smtp) as d:
        answers, _ = transaction(d, "s@example.net", ["a@dead.test"], None)
    assert re.fullmatch(
        r"451 4\.4\.1 Could not connect to the downstream server \(msg ID = [0-9a-f]{8}\)",
        answers[0],
    )
    # The reply names no endpoint; the log does.
    assert "127.0.0.1" not in answers[0]
    pair.up.wait_log(r"reason=\"connecting to tcp://127\.0\.0\.1:\d+: Connection refused")


# -- TLS ------------------------------------------------------------------------------


def test_starttls_required_but_not_offered(pair: Pair) -> None:
    with dialog(pair.smtp) as d:
        answers, _ = transaction(d, "s@example.net", ["a@plain.test"], None)
        assert answers[0].startswith("451 4.7.0 TLS required but unsupported by downstream")
        # `starttls no` to the same server works, in clear text.
        answers, final = transaction(d, "s@example.net", ["b@cleartext.test"], message("clear"))
    assert answers[0].startswith("250 ") and final.startswith("250 ")
    assert pair.stored("plain.test", "a") == []
    (stored,) = pair.stored("cleartext.test", "b")
    assert "with ESMTP id" in " ".join(fields(stored).split())


def test_untrusted_certificate_is_refused(pair: Pair) -> None:
    with dialog(pair.smtp) as d:
        answers, _ = transaction(d, "s@example.net", ["a@untrusted.test"], None)
    assert answers[0].startswith("451 4.7.0 TLS handshake with the downstream server failed")
    pair.up.wait_log(r"certificate verify failed")
    assert pair.stored("untrusted.test", "a") == []


def test_implicit_tls_to_a_host_name(pair: Pair) -> None:
    with dialog(pair.smtp) as d:
        answers, final = transaction(d, "s@example.net", ["a@implicit.test"], message("tls"))
    assert answers[0].startswith("250 ") and final.startswith("250 ")
    (stored,) = pair.stored("implicit.test", "a")
    assert "with ESMTPS" in " ".join(fields(stored).split())


# -- AUTH --------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["auth.test", "login.test"])
def test_auth_with_fixed_credentials(pair: Pair, domain: str) -> None:
    with dialog(pair.smtp) as d:
        answers, final = transaction(d, USER, [f"a@{domain}"], message(domain))
    assert answers[0].startswith("250 ") and final.startswith("250 ")
    (stored,) = pair.stored(domain, "a")
    assert "with ESMTPSA" in " ".join(fields(stored).split())  # TLS, authenticated
    mechanism = "PLAIN" if domain == "auth.test" else "LOGIN"
    pair.up.wait_log(rf"authenticated remote=tcp://127\.0\.0\.1:\d+ mechanism={mechanism}")
    assert PASSWORD not in pair.up.log


def test_wrong_password_is_temporary(pair: Pair) -> None:
    with dialog(pair.smtp) as d:
        answers, _ = transaction(d, USER, ["a@badauth.test"], None)
    assert answers[0].startswith("451 4.7.0 Authentication with the downstream server failed")


def test_auth_forward(pair: Pair) -> None:
    # Unauthenticated: nothing to forward.
    with dialog(pair.smtp) as d:
        answers, _ = transaction(d, USER, ["a@forward.test"], None)
    assert answers[0].startswith("530 5.7.0 Authentication is required")
    # Authenticated at the upstream: the same credentials go downstream.
    with dialog(pair.submission) as d:
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        assert d.cmd(f"AUTH PLAIN {token}").startswith("235 ")
        answers, final = transaction(d, USER, ["fwd@example.org"], message("forward"))
    assert answers[0].startswith("250 ") and final.startswith("250 ")
    (stored,) = pair.stored("example.org", "fwd")
    assert "with ESMTPSA" in " ".join(fields(stored).split())
    pair.up.wait_log(r"authenticated remote=tcp://127\.0\.0\.1:\d+ mechanism=PLAIN")
    assert PASSWORD not in pair.up.log


# -- REQUIRETLS (from this process: it needs a TLS client session upstream) -------------


@pytest.mark.parametrize(
    ("endpoint", "options", "delivered"),
    [
        ("tcp://127.0.0.1:{main}", "", True),  # STARTTLS: REQUIRETLS offered after it
        ("tls://127.0.0.1:{implicit}", "", True),  # implicit TLS offers it too
        ("tcp://127.0.0.1:{plain}", "starttls no", False),  # clear text: never
    ],
)
async def test_requiretls(
    pair: Pair, tmp_path: Path, endpoint: str, options: str, delivered: bool
) -> None:
    ports = {"main": pair.down.port(0), "plain": pair.down.port(1), "implicit": pair.down.port(2)}
    line = (
        f"deliver_to smtp {endpoint.format(**ports)} {{\n {options}\n"
        f" tls_client {{\n  root_ca {pair.ca_file}\n }}\n}}\n"
    )
    meta = MsgMeta(id="rtls", smtp=SMTPOptions(requiretls=True))
    user = f"rtls{len(endpoint)}{delivered}".lower()  # Maildir names are case-folded
    async with target(line, tmp_path) as tgt:
        if delivered:
            out = await deliver(tgt, meta, "s@example.net", [f"{user}@example.org"], "r", b"b\r\n")
            assert out.body_error is None
            # The downstream kittiwake delivers straight to Maildir: no queue
            # to send notices, so it does not offer DSN (docs/protocol.md).
            assert not out.dsn_passed
        else:
            with pytest.raises(SMTPError) as caught:
                await deliver(tgt, meta, "s@example.net", [f"{user}@example.org"], "r", b"b\r\n")
            error = caught.value
            assert (error.code, error.enhanced) == (550, (5, 7, 30))
            assert error.message == "REQUIRETLS support required"
    assert len(pair.stored("example.org", user)) == int(delivered)
