"""kittiwake.systemd: the sd_notify datagrams, on sockets the test binds.

The end-to-end side (a real server's READY=1 and STOPPING=1) is in
tests/e2e/test_systemd.py (the unit file and a real server).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake import systemd


@pytest.fixture
def abstract(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"kittiwake-unit-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_with_status_on_an_abstract_socket(abstract: socket.socket) -> None:
    assert systemd.notify_ready("listening on tcp://127.0.0.1:25")
    assert received(abstract) == ["READY=1", "STATUS=listening on tcp://127.0.0.1:25"]


def test_stopping_and_status_alone(abstract: socket.socket) -> None:
    assert systemd.notify_stopping()
    assert received(abstract) == ["STOPPING=1", "STATUS=stopping"]
    assert systemd.notify_status("draining\nthe queue")
    # A newline would start another assignment: the status stays one line.
    assert received(abstract) == ["STATUS=draining the queue"]


def test_reloading_carries_the_monotonic_clock(abstract: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.notify_reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = received(abstract)
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].split("=", 1)[1]) <= after
    assert lines[2] == "STATUS=reloading configuration"


def test_a_socket_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify_ready()
        assert received(sock) == ["READY=1"]


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234", "relative/path"])
def test_nothing_to_tell(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """Without a usable NOTIFY_SOCKET every call is a quiet no-op."""
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert systemd.notify_ready() is False
    assert systemd.notify_stopping() is False
    assert systemd.notify_reloading() is False


def test_a_socket_nobody_listens_on_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@kittiwake-nobody-{os.urandom(6).hex()}")
    assert systemd.notify_ready() is False
