"""The embedded default configuration, run exactly as the README says."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from kw import LAUNCHER, Dialog, env, need_tool


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the server does: a connection in TIME_WAIT does not hold the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _swaks(*extra: str, port: int = 2525) -> str:
    swaks = need_tool("swaks", "swaks")
    result = subprocess.run(
        [swaks, "--to", "user@localhost", "--server", f"127.0.0.1:{port}", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_swaks_delivers_with_the_default(tmp_path: Path) -> None:
    need_tool("swaks", "swaks")
    if not (_port_free(2525) and _port_free(5870)):
        # The embedded default listens on these fixed ports; another server
        # holding one is a fact of this machine, not a kittiwake fault.
        pytest.skip("port 2525 or 5870 is in use on this machine")
    created = subprocess.run(
        [sys.executable, str(LAUNCHER), "creds", "create", "me@localhost", "-p", "s3cret"],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    # No -c, no $KITTIWAKE_CONFIG, no ./kittiwake.conf: the embedded default.
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "run"],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = [proc.stdout.readline().strip() for _ in range(3)]
        assert ready == [
            "kittiwake: listening on tcp://127.0.0.1:2525",
            "kittiwake: listening on tcp://127.0.0.1:5870",
            f"kittiwake: listening on unix://{tmp_path}/kittiwake-data/run/lmtp.sock",
        ]
        assert "250 2.0.0 OK: queued" in _swaks()
        assert "250 2.0.0 OK: queued" in _swaks("-tls")  # the self-signed certificate
        # Submission: STARTTLS, then the user made with `kittiwake creds`.
        auth = ("-tls", "-a", "PLAIN", "-au", "me@localhost", "-ap", "s3cret")
        assert "250 2.0.0 OK: queued" in _swaks("--from", "me@localhost", *auth, port=5870)
        # ... and only as themselves (check.authorize_sender in the default).
        swaks = need_tool("swaks", "swaks")
        forgery = ("--from", "ceo@bank.example")
        forged = subprocess.run(
            [swaks, "--to", "user@localhost", "--server", "127.0.0.1:5870", *forgery, *auth],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "553 5.7.0 Unauthorized use of sender address" in forged.stdout, forged.stdout
        # The credentials database holds password hashes: nobody else reads it.
        database = tmp_path / "kittiwake-data" / "credentials.db"
        assert database.stat().st_mode & 0o777 == 0o600
        new = tmp_path / "kittiwake-data" / "maildir" / "localhost" / "user" / "new"
        traces = sorted(f.read_bytes().replace(b"\n ", b" ") for f in new.iterdir())
        assert len(traces) == 3
        assert sum(b"with ESMTPS id" in t for t in traces) == 1  # swaks -tls
        assert sum(b"with ESMTPSA id" in t for t in traces) == 1  # submission (RFC 3848)
        assert sum(b"Received: by " in t for t in traces) == 1  # submission: not traced
        assert list((tmp_path / "kittiwake-data" / "tls").glob("self_signed-*.pem"))
        with Dialog(2525) as d:  # not an open relay
            assert d.reply()[0].startswith("220 ")
            d.send(b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<x@example.com>\r\n")
            replies = [d.reply()[-1] for _ in range(3)]
            assert replies[2].startswith("550 5.7.1 Relaying denied")
    finally:
        proc.terminate()
        code = proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
