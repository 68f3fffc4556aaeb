"""Value syntaxes (docs/config-language.md, "Values" and "Listen addresses"): each
accepted and refused form."""

from __future__ import annotations

import pytest

from kittiwake.config.values import (
    ListenAddress,
    parse_bool,
    parse_duration,
    parse_int,
    parse_listen_address,
    parse_size,
)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], True),
        (["yes"], True),
        (["TRUE"], True),
        (["On"], True),
        (["1"], True),
        (["no"], False),
        (["false"], False),
        (["Off"], False),
        (["0"], False),
    ],
)
def test_bool(args: list[str], expected: bool) -> None:
    assert parse_bool(args) is expected


@pytest.mark.parametrize("args", [["maybe"], ["yes", "no"], ["y"], [""]])
def test_bool_refused(args: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_bool(args)


@pytest.mark.parametrize(
    ("text", "expected"), [("50", 50), ("+7", 7), ("-3", -3), ("007", 7), ("0", 0)]
)
def test_int(text: str, expected: int) -> None:
    assert parse_int([text]) == expected


@pytest.mark.parametrize("args", [["1_000"], ["1.5"], [" 1"], ["0x10"], [], ["1", "2"], ["٣"]])
def test_int_refused(args: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_int(args)


@pytest.mark.parametrize(
    ("args", "seconds"),
    [
        (["10m"], 600.0),
        (["1h", "5m"], 3900.0),
        (["1h5m"], 3900.0),
        (["0"], 0.0),
        (["-0"], 0.0),
        (["250ms"], 0.25),
        (["1.5h"], 5400.0),
        ([".5s"], 0.5),
        (["1us"], 1e-6),
        (["1µs"], 1e-6),
        (["1μs"], 1e-6),
        (["3ns"], 3e-9),
        (["+2s"], 2.0),
    ],
)
def test_duration(args: list[str], seconds: float) -> None:
    assert parse_duration(args) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "args", [["10"], ["1d"], ["-5s"], ["s"], ["."], ["1.s5"], [], ["5 s"], ["1h-5m"], ["10M"]]
)
def test_duration_refused(args: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_duration(args)


@pytest.mark.parametrize(
    ("args", "size"),
    [
        (["32M"], 32 * 1024 * 1024),
        (["3M", "5K"], 3 * 1024 * 1024 + 5 * 1024),
        (["3M 5K"], 3 * 1024 * 1024 + 5 * 1024),
        (["5b"], 5),
        (["5B"], 5),
        (["1G"], 1024**3),
        (["0"], 0),
        (["0K"], 0),
    ],
)
def test_size(args: list[str], size: int) -> None:
    assert parse_size(args) == size


@pytest.mark.parametrize(
    "args", [["32m"], ["1k"], ["32M5K"], ["3M  5K"], ["1.5M"], ["-1M"], ["M"], [], ["12"], ["1KB"]]
)
def test_size_refused(args: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_size(args)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://0.0.0.0:10025", ListenAddress("tcp", "0.0.0.0", 10025)),
        ("tcp://[::]:10025", ListenAddress("tcp", "::", 10025)),
        ("tcp:127.0.0.1:10025", ListenAddress("tcp", "127.0.0.1", 10025)),
        ("tls://0.0.0.0:10025", ListenAddress("tls", "0.0.0.0", 10025)),
        ("tls:0.0.0.0:10025", ListenAddress("tls", "0.0.0.0", 10025)),
        ("smtp://127.0.0.1:25", ListenAddress("tcp", "127.0.0.1", 25)),
        ("smtps://127.0.0.1:465", ListenAddress("tls", "127.0.0.1", 465)),
        ("unix://path", ListenAddress("unix", path="path")),
        ("unix:path", ListenAddress("unix", path="path")),
        ("unix:/path", ListenAddress("unix", path="/path")),
        ("unix:///path", ListenAddress("unix", path="/path")),
        ("unix://also/path", ListenAddress("unix", path="also/path")),
        ("unix:///also/path", ListenAddress("unix", path="/also/path")),
        ("lmtp+unix://lmtp.sock", ListenAddress("unix", path="lmtp.sock")),
    ],
)
def test_listen_address(text: str, expected: ListenAddress) -> None:
    got = parse_listen_address(text)
    assert (got.scheme, got.host, got.port, got.path) == (
        expected.scheme,
        expected.host,
        expected.port,
        expected.path,
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tcp://127.0.0.1", "port is required"),
        ("tcp://127.0.0.1:", "port is required"),
        ("tcp://[::1]", "port is required"),
        ("tcp://:25", "IP address is required"),
        ("tcp://mx.example.org:25", "not an IP address"),
        ("http://127.0.0.1:80", "unsupported scheme"),
        ("tcp://127.0.0.1:70000", "invalid port"),
        ("tcp://[::1:25", "unclosed"),
        ("unix://", "missing socket path"),
        ("127.0.0.1", "expected tcp://HOST:PORT"),
        ("127.0.0.1:2525", "expected tcp://HOST:PORT, tls://HOST:PORT or unix://PATH"),
    ],
)
def test_listen_address_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_listen_address(text)


def test_listen_address_str() -> None:
    assert str(parse_listen_address("tcp://[::1]:25")) == "tcp://[::1]:25"
    assert str(parse_listen_address("smtps:127.0.0.1:465")) == "tls://127.0.0.1:465"
