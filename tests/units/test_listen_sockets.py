"""server/sockets.py: which listeners a reload adds, removes and keeps, and the
process's sockets that survive it (docs/reload.md)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from kittiwake.config.values import parse_listen_address
from kittiwake.server.sockets import ListenSockets, bind_of, diff, show


def test_diff_sorts_added_removed_and_kept() -> None:
    old = [("inet", "127.0.0.1", 25), ("inet", "127.0.0.1", 587), ("unix", "/run/k/lmtp.sock", 0)]
    new = [("inet", "127.0.0.1", 587), ("inet", "::1", 25), ("unix", "/run/k/lmtp.sock", 0)]
    change = diff(old, new)
    assert change.added == [("inet", "::1", 25)]
    assert change.removed == [("inet", "127.0.0.1", 25)]
    assert change.kept == [("inet", "127.0.0.1", 587), ("unix", "/run/k/lmtp.sock", 0)]


def test_diff_port_zero_is_always_a_new_socket() -> None:
    running = [("inet", "127.0.0.1", 40001)]  # what `tcp://127.0.0.1:0` got
    change = diff(running, [("inet", "127.0.0.1", 0)])
    assert change.added == [("inet", "127.0.0.1", 0)]
    assert change.removed == running
    assert change.kept == []
    zero = [("inet", "127.0.0.1", 0)]
    assert diff(zero, zero).kept == []


def test_diff_of_nothing_changed_keeps_everything() -> None:
    binds = [("inet", "0.0.0.0", 25), ("inet", "::", 25)]
    change = diff(binds, list(reversed(binds)))
    assert (change.added, change.removed, change.kept) == ([], [], sorted(binds))


def test_a_scheme_change_is_the_same_socket(tmp_path: Path) -> None:
    tcp = bind_of(parse_listen_address("tcp://127.0.0.1:465"), str(tmp_path))
    tls = bind_of(parse_listen_address("tls://127.0.0.1:465"), str(tmp_path))
    assert tcp == tls == ("inet", "127.0.0.1", 465)
    unix = bind_of(parse_listen_address("unix://sub/../lmtp.sock"), str(tmp_path))
    assert unix == ("unix", str(tmp_path / "lmtp.sock"), 0)
    assert show(unix) == f"unix://{tmp_path}/lmtp.sock"
    assert show(("inet", "::1", 25)) == "[::1]:25"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_take_hands_out_the_same_kernel_socket_each_time(tmp_path: Path) -> None:
    sockets = ListenSockets()
    addr = parse_listen_address(f"tcp://127.0.0.1:{free_port()}")
    first = sockets.take(addr, str(tmp_path))
    second = sockets.take(addr, str(tmp_path))
    try:
        assert first.fileno() != second.fileno()
        assert first.getsockname() == second.getsockname()
        first.close()  # one server stops: the other still accepts
        with socket.create_connection(second.getsockname()):
            conn, _ = _accept(second)
            conn.close()
    finally:
        second.close()
        sockets.close_all()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", addr.port), timeout=5)


def _accept(sock: socket.socket) -> tuple[socket.socket, object]:
    sock.setblocking(True)
    sock.settimeout(5)
    return sock.accept()


def test_release_closes_what_is_not_in_use_and_removes_unix_files(tmp_path: Path) -> None:
    sockets = ListenSockets()
    kept = parse_listen_address(f"tcp://127.0.0.1:{free_port()}")
    gone = parse_listen_address(f"tcp://127.0.0.1:{free_port()}")
    unix = parse_listen_address("unix://lmtp.sock")
    runtime = str(tmp_path)
    for addr in (kept, gone, unix):
        sockets.take(addr, runtime).close()
    path = tmp_path / "lmtp.sock"
    assert path.exists()
    closed = sockets.release([bind_of(kept, runtime)])
    assert sorted(closed) == sorted([bind_of(gone, runtime), bind_of(unix, runtime)])
    assert not path.exists()
    assert sockets.binds() == [bind_of(kept, runtime)]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gone.port), timeout=5)
    socket.create_connection(("127.0.0.1", kept.port), timeout=5).close()  # backlog
    sockets.close_all()
    assert sockets.binds() == []


def test_prepare_binds_new_addresses_and_undoes_itself_on_failure(tmp_path: Path) -> None:
    sockets = ListenSockets()
    runtime = str(tmp_path)
    running = parse_listen_address(f"tcp://127.0.0.1:{free_port()}")
    sockets.prepare([bind_of(running, runtime)])
    fresh = ("inet", "127.0.0.1", free_port())
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = ("inet", "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError):
            sockets.prepare([bind_of(running, runtime), fresh, busy])
    assert sockets.binds() == [bind_of(running, runtime)]  # `fresh` closed again
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fresh[2]), timeout=5)
    sockets.close_all()


def test_a_live_unix_socket_of_another_process_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "lmtp.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        with pytest.raises(OSError, match="in use by another process"):
            ListenSockets().prepare([("unix", str(path), 0)])
    assert os.path.exists(path)  # a stale file (nobody listens) is replaced
    sockets = ListenSockets()
    sockets.prepare([("unix", str(path), 0)])
    assert sockets.binds() == [("unix", str(path), 0)]
    sockets.close_all()
    assert not path.exists()
