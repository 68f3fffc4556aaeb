"""The systemd side of a deployment (docs/production.md): the unit file passes
`systemd-analyze verify` and `security`, its capability set is enough, and
`kittiwake run` speaks the sd_notify protocol.

The capability test runs the server with the unit's capability set
(setpriv: CAP_NET_BIND_SERVICE alone, no new privileges) on a port below
1024. The notify test is what systemd would see: the test binds the datagram
socket itself, names it in `NOTIFY_SOCKET` and runs the real server.
READY=1 must come only once the listeners accept connections, and
STOPPING=1 when SIGTERM starts the stop.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kw import Dialog, ServerProcess, env, free_port, need_tool

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "contrib" / "systemd"
UNIT = SYSTEMD / "kittiwake.service"
MAN = ROOT / "contrib" / "man"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify resolves every directive, the command paths and the man pages.

    The shipped ExecStart names /usr/local/bin/kittiwake, which need not
    exist here: the copy runs this interpreter's `-m kittiwake` instead,
    and nothing else in the unit is changed. The man pages of
    `Documentation=` are found through MANPATH in contrib/man.
    """
    analyze = need_tool("systemd-analyze", "systemd")
    need_tool("man", "man-db")
    text = UNIT.read_text()
    command = f"{sys.executable} -m kittiwake"
    rewritten, count = re.subn(r"/usr/local/bin/kittiwake", command, text)
    assert count == 3  # ExecStartPre (config check), ExecStart and ExecReload
    unit = tmp_path / "kittiwake.service"
    unit.write_text(rewritten)
    result = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MANPATH": str(MAN)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the unit's sandbox "OK" (at most 2.0 of 10)."""
    analyze = need_tool("systemd-analyze", "systemd")
    unit = tmp_path / "kittiwake.service"
    unit.write_text(
        UNIT.read_text().replace("/usr/local/bin/kittiwake", f"{sys.executable} -m kittiwake")
    )
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    found = re.search(
        r"Overall exposure level for kittiwake\.service: (\d+\.\d+) (\w+)", result.stdout
    )
    assert found, result.stdout + result.stderr
    assert float(found[1]) <= 2.0 and found[2] == "OK", found[0]


def test_unit_hardening_as_documented() -> None:
    """The properties docs/production.md promises, each set exactly once."""
    lines = [
        line.strip()
        for line in UNIT.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    settings: dict[str, list[str]] = {}
    for line in lines:
        if "=" in line and not line.startswith("["):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    expected = {
        "Type": "notify",
        "ExecReload": "/usr/local/bin/kittiwake reload -c /etc/kittiwake/kittiwake.conf",
        "User": "kittiwake",
        "DynamicUser": "no",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "StateDirectory": "kittiwake",
        "RuntimeDirectory": "kittiwake",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert int(settings["LimitNOFILE"][0]) >= 65536
    sysusers = (SYSTEMD / "kittiwake.sysusers").read_text()
    assert re.search(r"^u kittiwake ", sysusers, re.M)
    tmpfiles = (SYSTEMD / "kittiwake.tmpfiles").read_text()
    for folder in ("/var/lib/kittiwake", "/run/kittiwake"):
        assert re.search(rf"^d {folder} +\d{{4}} kittiwake kittiwake", tmpfiles, re.M), folder


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its NOTIFY_SOCKET name (an abstract one, `@...`)."""
    name = f"kittiwake-test-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(20)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def test_ready_after_listeners_accept_and_stopping_on_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, name = notify_socket
    ports = [free_port(), free_port()]
    conf = tmp_path / "kittiwake.conf"
    conf.write_text(
        f"""
state_dir {tmp_path}/state
runtime_dir {tmp_path}/run
hostname mx.example.org
tls off
smtp tcp://127.0.0.1:{ports[0]} tcp://127.0.0.1:{ports[1]} {{
    deliver_to dummy
}}
"""
    )
    server = ServerProcess(tmp_path, ["-c", str(conf)], env(NOTIFY_SOCKET=name))
    try:
        first = sock.recv(4096).decode()
        # Nothing came before READY=1, and when it comes every listener
        # already answers.
        assert first.splitlines()[0] == "READY=1", first
        status = dict(line.split("=", 1) for line in first.splitlines())
        for port in ports:
            assert f"tcp://127.0.0.1:{port}" in status["STATUS"]
            with Dialog(port) as d:
                assert d.reply()[-1].startswith("220 ")
        server.wait_ready(2)
        # A reload (systemd's ExecReload) is framed by RELOADING=1 and READY=1,
        # a refused one too.
        for broken in (False, True):
            if broken:
                conf.write_text(conf.read_text() + "\nno_such_directive 1\n")
            reload = subprocess.run(
                [sys.executable, "-m", "kittiwake", "reload", "-c", str(conf)],
                capture_output=True,
                text=True,
                env=env(),
                timeout=60,
                check=False,
            )
            assert reload.returncode == (2 if broken else 0), reload.stdout + reload.stderr
            reloading = sock.recv(4096).decode().splitlines()
            assert reloading[0] == "RELOADING=1", reloading
            assert reloading[1].startswith("MONOTONIC_USEC="), reloading
            ready = sock.recv(4096).decode().splitlines()
            assert ready[0] == "READY=1", ready
            word = "refused" if broken else "reloaded"
            assert word in ready[1], ready
        server.send(signal.SIGTERM)
        stopping = sock.recv(4096).decode()
        assert stopping.splitlines()[0] == "STOPPING=1", stopping
        assert server.wait() == 0
    finally:
        server.kill()


def test_no_notify_socket_changes_nothing(tmp_path: Path) -> None:
    """Without NOTIFY_SOCKET (a plain start) the server runs as always."""
    port = free_port()
    conf = tmp_path / "kittiwake.conf"
    conf.write_text(
        f"state_dir {tmp_path}/state\nhostname mx.example.org\ntls off\n"
        f"smtp tcp://127.0.0.1:{port} {{\n    deliver_to dummy\n}}\n"
    )
    server = ServerProcess(tmp_path, ["-c", str(conf)])
    try:
        assert server.wait_ready() == [f"tcp://127.0.0.1:{port}"]
        assert server.stop() == 0
    finally:
        server.kill()


def test_sysusers_and_tmpfiles_make_the_user_and_folders(tmp_path: Path) -> None:
    """systemd's own tools apply the two files to a scratch root (`--root`)."""
    sysusers = need_tool("systemd-sysusers", "systemd")
    tmpfiles = need_tool("systemd-tmpfiles", "systemd")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for tool, name, extra in (
        (sysusers, "kittiwake.sysusers", []),
        (tmpfiles, "kittiwake.tmpfiles", ["--create"]),
    ):
        result = subprocess.run(
            [tool, f"--root={root}", *extra, str(SYSTEMD / name)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    passwd = (root / "etc" / "passwd").read_text()
    user = re.search(
        r"^kittiwake:x:(\d+):(\d+):[^:]*:/var/lib/kittiwake:/usr/sbin/nologin$", passwd, re.M
    )
    assert user, passwd
    uid = int(user.group(1))
    for folder, mode in (("var/lib/kittiwake", 0o700), ("run/kittiwake", 0o750)):
        info = (root / folder).stat()
        assert (info.st_uid, info.st_mode & 0o777) == (uid, mode), folder


def _privileged_port() -> int:
    """A free port below 1024 on 127.0.0.1 (found as root, which may bind it)."""
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 700 and 999")


def _run_with_capabilities(tmp_path: Path, bounding: str) -> tuple[int | None, str, str]:
    """`kittiwake run` with the unit's capability set: the first stdout line, or the exit."""
    setpriv = need_tool("setpriv", "util-linux")
    if os.geteuid() != 0:
        pytest.fail("this test drops root's capabilities: run it as root, as CI does")
    port = _privileged_port()
    conf = tmp_path / "kittiwake.conf"
    conf.write_text(
        f"state_dir {tmp_path}/state\nhostname mx.example.org\ntls off\n"
        f"smtp tcp://127.0.0.1:{port} {{\n    deliver_to dummy\n}}\n"
    )
    command = [setpriv, f"--bounding-set={bounding}", "--inh-caps=-all", "--nnp", "--"]
    with subprocess.Popen(
        [*command, sys.executable, "-m", "kittiwake", "run", "-c", str(conf)],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline().strip()
            if first:
                with Dialog(port) as d:
                    assert d.reply()[-1].startswith("220 ")
                proc.send_signal(signal.SIGTERM)
            status = proc.wait(20)
            return status, first, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(20)


def test_cap_net_bind_service_alone_binds_a_privileged_port(tmp_path: Path) -> None:
    """The unit's capability set (CAP_NET_BIND_SERVICE only, no new privileges) suffices.

    The same start without that one capability is refused the port, so the
    capability is what makes the difference.
    """
    status, first, log = _run_with_capabilities(tmp_path, "-all,+net_bind_service")
    assert first.startswith("kittiwake: listening on tcp://127.0.0.1:"), log
    assert status == 0, log
    status, first, log = _run_with_capabilities(tmp_path, "-all")
    assert (status, first) == (1, ""), log
    assert "kittiwake: cannot start:" in log and "ermission denied" in log, log
