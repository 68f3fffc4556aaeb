"""target.smtp / target.lmtp configuration: defaults, maddy's deprecated names,
and every mistake reported at its FILE:LINE."""

from __future__ import annotations

from pathlib import Path

import pytest

from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.targets.base import DeliveryTarget
from kittiwake.targets.smtp import LMTPDownstream, SMTPDownstream


def build(tmp: Path, line: str, top: str = "hostname mx.example.org\n") -> SMTPDownstream:
    text = f"state_dir {tmp}/state\nruntime_dir {tmp}/run\n{top}"
    container = Container(parse_text(text, "top.conf"), config_file="top.conf", cwd=str(tmp))
    container.parse_globals()
    (node,) = parse_text(line, "t.conf")
    target = container.module_from_node(node, DeliveryTarget, "target")
    assert isinstance(target, SMTPDownstream)
    return target


def test_defaults(tmp_path: Path) -> None:
    smtp = build(tmp_path, "deliver_to smtp tcp://127.0.0.1:2525\n")
    assert type(smtp) is SMTPDownstream
    s = smtp.settings
    assert s.starttls and not s.lmtp
    assert s.hostname == "mx.example.org"
    assert (s.connect_timeout, s.command_timeout, s.submission_timeout) == (300.0, 300.0, 300.0)
    assert smtp.auth_kind == "off" and smtp.mechanism is None
    lmtp = build(tmp_path, f"deliver_to lmtp unix://lmtp.sock unix://{tmp_path}/abs.sock\n")
    assert isinstance(lmtp, LMTPDownstream)
    assert lmtp.settings.lmtp and not lmtp.settings.starttls  # LMTP: no STARTTLS by default
    assert [str(e) for e in lmtp.endpoints] == [
        f"unix://{tmp_path}/run/lmtp.sock",  # relative: inside runtime_dir
        f"unix://{tmp_path}/abs.sock",
    ]


def test_every_directive(tmp_path: Path) -> None:
    target = build(
        tmp_path,
        """deliver_to smtp tcp://[::1]:25 {
    targets tls://mx.example.net:465 tcp://192.0.2.1:587
    starttls no
    auth login user "pass word"
    hostname bücher.example
    connect_timeout 10s
    command_timeout 1m
    submission_timeout 0
    debug yes
}
""",
    )
    # `targets` first, then the inline arguments (as maddy appends them).
    assert [str(e) for e in target.endpoints] == [
        "tls://mx.example.net:465",
        "tcp://192.0.2.1:587",
        "tcp://[::1]:25",
    ]
    s = target.settings
    assert not s.starttls
    assert s.hostname == "xn--bcher-kva.example"  # EHLO in A-labels
    assert (s.connect_timeout, s.command_timeout, s.submission_timeout) == (10.0, 60.0, 300.0)
    assert target.auth_kind == "login"
    assert target.mechanism is not None and target.mechanism.password == "pass word"
    assert "pass word" not in repr(target.mechanism)
    assert target.log.debug_enabled


@pytest.mark.parametrize(
    ("block", "starttls"),
    [("attempt_starttls no", False), ("attempt_starttls", True), ("starttls no", False)],
)
def test_attempt_starttls_is_starttls(tmp_path: Path, block: str, starttls: bool) -> None:
    target = build(tmp_path, f"deliver_to smtp tcp://127.0.0.1:25 {{\n {block}\n}}\n")
    assert target.settings.starttls is starttls


def test_require_tls_is_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = build(tmp_path, "deliver_to smtp tcp://127.0.0.1:25 {\n require_tls yes\n}\n")
    assert target.settings.starttls
    assert "require_tls is deprecated and ignored" in capsys.readouterr().err


def test_tls_client_is_inherited(tmp_path: Path) -> None:
    top = "hostname mx.example.org\ntls_client {\n protocols tls1.3\n}\n"
    target = build(tmp_path, "deliver_to smtp tcp://127.0.0.1:25\n", top)
    assert target.settings.tls is not None
    assert target.settings.tls.options.min_version is not None


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("deliver_to smtp\n", "t.conf:1: target.smtp: at least one target endpoint is required"),
        ("deliver_to smtp http://x:1\n", "t.conf:1: target.smtp: unsupported scheme 'http'"),
        ("deliver_to smtp tcp://mx.example.org\n", "t.conf:1: target.smtp: invalid endpoint"),
        ("deliver_to smtp tcp://h:0\n", "t.conf:1: target.smtp: invalid port '0'"),
        ("deliver_to smtp tcp://h:99999\n", "t.conf:1: target.smtp: invalid port"),
        ("deliver_to smtp tcp://[nope]:25\n", "is not an IPv6 address"),
        ("deliver_to lmtp unix://\n", "t.conf:1: target.lmtp: invalid endpoint"),
        (
            "deliver_to smtp {\n targets tcp://a:1 smtp://b:2\n}\n",
            "t.conf:2: target.smtp: unsupported scheme 'smtp'",
        ),
        ("deliver_to smtp tcp://a:1 {\n auth plain user\n}\n", "t.conf:2: auth plain: expected"),
        ("deliver_to smtp tcp://a:1 {\n auth cram-md5\n}\n", "t.conf:2: auth: expected off"),
        ("deliver_to smtp tcp://a:1 {\n auth forward x\n}\n", "t.conf:2: auth forward: takes no"),
        ("deliver_to smtp tcp://a:1 {\n auth\n}\n", "t.conf:2: auth: expected off"),
        ("deliver_to smtp tcp://a:1 {\n starttls maybe\n}\n", "t.conf:2: starttls: invalid"),
        ("deliver_to smtp tcp://a:1 {\n attempt_starttls a b\n}\n", "t.conf:2: attempt_starttls"),
        ("deliver_to smtp tcp://a:1 {\n command_timeout soon\n}\n", "t.conf:2: command_timeout"),
        ("deliver_to smtp tcp://a:1 {\n unknown 1\n}\n", "t.conf:2: unexpected directive: unknown"),
        (
            "deliver_to smtp tcp://a:1 {\n tls_client {\n  root_ca /nonexistent.pem\n }\n}\n",
            "t.conf:3: root_ca: /nonexistent.pem: cannot read",
        ),
    ],
)
def test_mistakes_are_positioned(tmp_path: Path, line: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, line)
    assert str(caught.value).startswith(error) or error in str(caught.value), str(caught.value)


def test_hostname_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"t\.conf:1: missing required directive: hostname"):
        build(tmp_path, "deliver_to smtp tcp://127.0.0.1:25\n", top="")
