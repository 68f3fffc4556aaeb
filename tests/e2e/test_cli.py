"""The `kittiwake` command as an operator sees it: real processes, real sockets.

Every server is started through `launcher.py` (the real command plus the
test-only `test.echo` endpoint), waited for through its readiness line with
a deadline, and killed in the fixture's teardown if a test left it running.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest
import trustme
from kw import LAUNCHER, WAIT, free_port
from kw import ServerProcess as Server
from kw import env as _env


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one short command to completion."""
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        check=False,
        cwd=cwd,
        env=env or _env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def echo_conf(port: int = 0, *, extra: str = "", block: str = "", grace: str = "1s") -> str:
    """A configuration with one echo endpoint; `extra` lines go on line 2."""
    return (
        f"state_dir data\n{extra}\n"
        f"test.echo tcp://127.0.0.1:{port} {{\n    grace {grace}\n{block}\n}}\n"
    )


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def run(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(tmp_path, list(args), env or _env())
        servers.append(server)
        return server

    try:
        yield run
    finally:
        for server in servers:
            server.kill()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return path.name


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def echo(port: int, data: bytes = b"hello\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        conn.sendall(data)
        return conn.recv(1024)


# -- commands that do not run a server ------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = cli("version", cwd=tmp_path)
    assert result.returncode == 0
    # The suite runs the sources: an editable install is never compiled.
    pattern = r"kittiwake 0\.1\.0 \(Python \d+\.\d+\.\d+\S*, pure Python\)\n"
    assert re.fullmatch(pattern, result.stdout)


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kittiwake", "version"],
        check=False,
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("kittiwake 0.1.0 ")


@pytest.mark.parametrize(
    "args", [[], ["config"], ["run", "--bogus"], ["frobnicate"], ["config", "check", "extra"]]
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: kittiwake" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_default_prints_the_embedded_file_with_the_hostname(tmp_path: Path) -> None:
    result = cli("config", "default", cwd=tmp_path)
    assert result.returncode == 0
    raw = resources.files("kittiwake").joinpath("default.conf").read_text(encoding="utf-8")
    assert "@FQDN@" in raw
    name = socket.getfqdn()
    if name in ("localhost", "localhost.localdomain"):
        name = socket.gethostname()  # the machine's own name says more
    assert result.stdout == raw.replace("@FQDN@", name)
    text = result.stdout
    assert f"$(hostname) = {name}\n" in text
    assert "$(local_domains) = $(hostname) localhost\n" in text
    for line in (
        "state_dir ./kittiwake-data",
        "runtime_dir ./kittiwake-data/run",
        "tls self_signed",
        "smtp tcp://127.0.0.1:2525 {",
        "submission tcp://127.0.0.1:5870 {",
        "lmtp unix://lmtp.sock {",
        "auth.pass_table local_authdb {",
        "storage.maildir local_mailboxes {",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert not list(tmp_path.iterdir()), "config default wrote files"


def test_no_file_means_the_embedded_default(tmp_path: Path) -> None:
    result = cli("config", "check", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "<default>: configuration OK\n")
    assert not list(tmp_path.iterdir())  # checking creates nothing


def test_config_check_good_config_binds_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = write(
            tmp_path / "good.conf",
            echo_conf(port, extra="test.table tab {\n}\n", block="    table &tab"),
        )
        result = cli("config", "check", "-c", conf, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "good.conf: configuration OK\n"
    assert not (tmp_path / "data").exists()


ECHO = "test.echo tcp://127.0.0.1:0"
BAD_CONFIGS = {
    "unknown-directive": (
        f"{ECHO} {{\n    grace 1s\n    bogus 1\n}}\n",
        ":3: unexpected directive: bogus",
    ),
    "unknown-module": (
        "state_dir x\nsmtpd tcp://127.0.0.1:0 {\n}\n",
        ":2: unknown module or global directive: smtpd",
    ),
    "bad-value": (
        f"{ECHO} {{\n    grace soon\n}}\n",
        ":2: grace: invalid duration 'soon': use a number with a unit (h, m, s, ms, us, ns)",
    ),
    "bad-global-value": (
        f"log_format yaml\n{ECHO}\n",
        ":1: log_format: expected one of: text, json",
    ),
    "missing-endpoint": (
        "state_dir x\ntest.table t {\n}\n",
        ": at least one endpoint should be configured",
    ),
    "unknown-reference": (
        f"{ECHO} {{\n    table &nope\n}}\n",
        ":2: unknown configuration block: nope",
    ),
    "unused-block": (
        f"# a spare table\ntest.table spare {{\n}}\n{ECHO}\n",
        ":2: unused configuration block spare (test.table)",
    ),
    "wrong-capability": (
        f"{ECHO} {{\n    table test.echo\n}}\n",
        ":2: test.echo is an endpoint and cannot be used here",
    ),
    "smtp-without-tls": (
        "hostname mx.example.org\nsmtp tcp://127.0.0.1:0 {\n    deliver_to dummy\n}\n",
        ":2: missing required directive: tls (here or global; `tls off` for an endpoint"
        " without TLS)",
    ),
    "listen-address-without-scheme": (
        "hostname mx.example.org\ntls off\nsmtp 127.0.0.1:2525 {\n    deliver_to dummy\n}\n",
        ":3: invalid listen address '127.0.0.1:2525': expected tcp://HOST:PORT,"
        " tls://HOST:PORT or unix://PATH",
    ),
}


@pytest.mark.parametrize("command", [["config", "check"], ["run"]])
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_with_file_line_message(
    tmp_path: Path, case: str, command: list[str]
) -> None:
    text, tail = BAD_CONFIGS[case]
    conf = write(tmp_path / f"{case}.conf", text)
    result = cli(*command, "-c", conf, cwd=tmp_path)
    assert result.stderr == f"{conf}{tail}\n"
    assert result.returncode == 2
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [conf], "created files before failing"


@pytest.mark.parametrize("command", [["config", "check"], ["run"]])
def test_missing_explicit_file_exits_2(tmp_path: Path, command: list[str]) -> None:
    write(tmp_path / "kittiwake.conf", echo_conf())  # must not be used instead
    result = cli(*command, "-c", "nowhere.conf", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "nowhere.conf: no such file\n"


def test_missing_file_named_by_environment_exits_2(tmp_path: Path) -> None:
    result = cli("config", "check", cwd=tmp_path, env=_env(KITTIWAKE_CONFIG="gone.conf"))
    assert result.returncode == 2
    assert result.stderr == "gone.conf: no such file ($KITTIWAKE_CONFIG)\n"


def test_config_resolution_order(tmp_path: Path) -> None:
    other = tmp_path / "etc"
    other.mkdir()
    good = write(tmp_path / "good.conf", echo_conf())
    write(other / "env.conf", echo_conf())
    write(tmp_path / "broken.conf", "nonsense\n")
    env_good = str(other / "env.conf")

    # ./kittiwake.conf when nothing else is named.
    write(tmp_path / "kittiwake.conf", echo_conf())
    result = cli("config", "check", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "kittiwake.conf: configuration OK\n")

    # $KITTIWAKE_CONFIG wins over ./kittiwake.conf.
    write(tmp_path / "kittiwake.conf", "nonsense\n")
    result = cli("config", "check", cwd=tmp_path, env=_env(KITTIWAKE_CONFIG=env_good))
    assert (result.returncode, result.stdout) == (0, f"{env_good}: configuration OK\n")

    # -c wins over both.
    result = cli(
        "config", "check", "-c", good, cwd=tmp_path, env=_env(KITTIWAKE_CONFIG="broken.conf")
    )
    assert (result.returncode, result.stdout) == (0, "good.conf: configuration OK\n")

    # And the broken ./kittiwake.conf really is read when it is the only one.
    result = cli("config", "check", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("kittiwake.conf:1: ")


# -- running --------------------------------------------------------------------


def test_run_ready_echo_and_sigterm(tmp_path: Path, start: Callable[..., Server]) -> None:
    port = free_port()
    conf = write(tmp_path / "k.conf", echo_conf(port))
    server = start("-c", conf)
    assert server.wait_ready() == [f"tcp://127.0.0.1:{port}"]
    assert server.stdout == [f"kittiwake: listening on tcp://127.0.0.1:{port}"]
    assert echo(port, b"hello\n") == b"hello\n"
    began = time.monotonic()
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert time.monotonic() - began < 5
    stderr = server.stderr
    assert "shutting down signal=SIGTERM" in stderr
    assert "Traceback" not in stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_every_address_gets_a_readiness_line(tmp_path: Path, start: Callable[..., Server]) -> None:
    conf = write(
        tmp_path / "k.conf",
        "state_dir data\n"
        "test.echo tcp://127.0.0.1:0 tcp://127.0.0.1:0\n"
        "test.echo tcp://127.0.0.1:0\n",
    )
    server = start("-c", conf)
    addresses = server.wait_ready(count=3)
    assert len(set(addresses)) == 3
    for address in addresses:
        assert echo(port_of(address), b"x\n") == b"x\n"
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_sigint_stops_cleanly(tmp_path: Path, start: Callable[..., Server]) -> None:
    server = start("-c", write(tmp_path / "k.conf", echo_conf()))
    server.wait_ready()
    server.send(signal.SIGINT)
    assert server.wait() == 0
    assert "shutting down signal=SIGINT" in server.stderr
    assert "Traceback" not in server.stderr


def test_sigterm_lets_open_connections_finish_within_the_grace(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    server = start("-c", write(tmp_path / "k.conf", echo_conf()))
    port = port_of(server.wait_ready()[0])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        conn.sendall(b"one\n")
        assert conn.recv(100) == b"one\n"
        began = time.monotonic()
        server.send(signal.SIGTERM)
        assert server.wait() == 0
        took = time.monotonic() - began
        assert 0.9 < took < 5, took  # `grace 1s`, then closed
        assert conn.recv(100) == b"bye\n"


def test_second_signal_during_shutdown_exits_at_once(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    server = start("-c", write(tmp_path / "k.conf", echo_conf(grace="60s")))
    port = port_of(server.wait_ready()[0])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as held:
        held.sendall(b"x\n")
        assert held.recv(10) == b"x\n"
        server.send(signal.SIGTERM)
        wait_until(lambda: "waiting for open connections" in server.stderr, "the grace period")
        began = time.monotonic()
        server.send(signal.SIGINT)
        assert server.wait() == 1
        assert time.monotonic() - began < 5
    assert "second signal during shutdown, exiting at once signal=SIGINT" in server.stderr


def test_sigusr1_reopens_the_log_file_and_never_kills(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    """logrotate and maddy's packaging send it; it used to end the process
    silently (exit 138). SIGUSR2 reloads the configuration (test_reload.py)."""
    sig = signal.SIGUSR1
    logfile = tmp_path / "kittiwake.log"
    server = start("-c", write(tmp_path / "k.conf", echo_conf(extra="log kittiwake.log")))
    server.wait_ready()
    wait_until(lambda: logfile.exists() and " started " in logfile.read_text(), "start line")
    logfile.rename(tmp_path / "kittiwake.log.1")
    server.send(sig)
    wait_until(logfile.exists, "a new log file")
    wait_until(lambda: "log files reopened" in logfile.read_text(), "the reopen line")
    assert f"signal={sig.name}" in logfile.read_text()
    server.send(sig)
    wait_until(lambda: logfile.read_text().count("log files reopened") == 2, "second reopen")
    assert server.proc.poll() is None
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_sighup_reopens_the_log_file(tmp_path: Path, start: Callable[..., Server]) -> None:
    logfile = tmp_path / "kittiwake.log"
    server = start("-c", write(tmp_path / "k.conf", echo_conf(extra="log kittiwake.log")))
    server.wait_ready()
    wait_until(lambda: logfile.exists() and " started " in logfile.read_text(), "start line")
    rotated = tmp_path / "kittiwake.log.1"
    logfile.rename(rotated)
    server.send(signal.SIGHUP)
    wait_until(logfile.exists, "a new log file")
    wait_until(lambda: "log files reopened" in logfile.read_text(), "the reopen line")
    assert "log files reopened" not in rotated.read_text()
    server.send(signal.SIGHUP)  # again: still no crash
    wait_until(lambda: logfile.read_text().count("log files reopened") == 2, "second reopen")
    assert server.proc.poll() is None
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert "stopped" in logfile.read_text()
    assert server.stderr == ""


def test_log_format_json(tmp_path: Path, start: Callable[..., Server]) -> None:
    server = start("-c", write(tmp_path / "k.conf", echo_conf(extra="log_format json")))
    server.wait_ready()
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    records = [json.loads(line) for line in server.stderr.splitlines()]
    assert [r["msg"] for r in records][-3:] == ["started", "shutting down", "stopped"]
    for record in records:
        assert {"level", "msg"} <= record.keys()
    assert records[-2]["signal"] == "SIGTERM"


def test_log_off_writes_nothing(tmp_path: Path, start: Callable[..., Server]) -> None:
    server = start("-c", write(tmp_path / "k.conf", echo_conf(extra="log off")))
    server.wait_ready()
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert server.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("stderr-")) == [
        "data",
        "k.conf",
    ]


def test_log_to_a_file_with_timestamps(tmp_path: Path, start: Callable[..., Server]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    conf = write(tmp_path / "k.conf", echo_conf(extra="log logs/k.log\ndebug yes"))
    server = start("-c", conf)
    server.wait_ready()
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert server.stderr == ""
    lines = (logs / "k.log").read_text().splitlines()
    assert lines
    for line in lines:
        assert re.match(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (debug|info|warn|error) ", line
        )
    assert any(" info started " in line for line in lines)


def test_unopenable_log_file_is_a_config_error(tmp_path: Path) -> None:
    conf = write(tmp_path / "k.conf", echo_conf(extra="log no/such/dir/k.log"))
    result = cli("run", "-c", conf, cwd=tmp_path)
    assert result.returncode == 2
    assert re.fullmatch(
        r"k\.conf:2: log: cannot open \S+k\.log: No such file or directory\n", result.stderr
    )


def test_environment_variable_is_used_by_run(tmp_path: Path, start: Callable[..., Server]) -> None:
    port = free_port()
    write(tmp_path / "env.conf", echo_conf(port))
    server = start(env=_env(KITTIWAKE_CONFIG="env.conf"))
    assert server.wait_ready() == [f"tcp://127.0.0.1:{port}"]
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def test_local_kittiwake_conf_is_used_by_run(tmp_path: Path, start: Callable[..., Server]) -> None:
    port = free_port()
    write(tmp_path / "kittiwake.conf", echo_conf(port))
    server = start()
    assert server.wait_ready() == [f"tcp://127.0.0.1:{port}"]
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert "config=kittiwake.conf" in server.stderr


@pytest.mark.parametrize(
    ("value", "canonical"), [("127.0.0.1:5353", "127.0.0.1:5353"), ("[::1]:53", "[::1]:53")]
)
def test_debug_dnsoverride_is_parsed_and_passed(
    tmp_path: Path, start: Callable[..., Server], value: str, canonical: str
) -> None:
    conf = write(tmp_path / "k.conf", echo_conf())
    result = cli("config", "check", "-c", conf, "--debug.dnsoverride", value, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    server = start("-c", conf, "--debug.dnsoverride", value, "--debug.smtpport", "2526")
    server.wait_ready()
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert f"server={canonical}" in server.stderr
    assert "port=2526" in server.stderr


def test_debug_mtasts_flags_are_parsed_and_passed(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    conf = write(tmp_path / "k.conf", echo_conf())
    flags = ("--debug.mtastsport", "8443", "--debug.mtastsca", "ca.pem")
    result = cli("config", "check", "-c", conf, *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    server = start("-c", conf, *flags)
    server.wait_ready()
    server.send(signal.SIGTERM)
    assert server.wait() == 0
    assert "MTA-STS policy fetches changed" in server.stderr
    assert f"port=8443 ca={ca}" in server.stderr  # the CA file made absolute


@pytest.mark.parametrize(
    "flags",
    [
        ["--debug.dnsoverride", "nonsense"],
        ["--debug.dnsoverride", "127.0.0.1"],
        ["--debug.dnsoverride", "127.0.0.1:0"],
        ["--debug.dnsoverride", "127.0.0.1:65536"],
        ["--debug.dnsoverride", "dns.example:53"],
        ["--debug.dnsoverride", "::1:53"],
        ["--debug.dnsoverride"],
        ["--debug.smtpport", "0"],
        ["--debug.smtpport", "smtp"],
        ["--debug.mtastsport", "0"],
        ["--debug.mtastsca", "/nonexistent/ca.pem"],
    ],
)
@pytest.mark.parametrize("command", [["config", "check"], ["run"]])
def test_bad_debug_flag_exits_2(tmp_path: Path, flags: list[str], command: list[str]) -> None:
    conf = write(tmp_path / "k.conf", echo_conf())
    result = cli(*command, "-c", conf, *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert flags[0] in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_port_in_use_exits_1_and_leaves_nothing(tmp_path: Path) -> None:
    first = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = write(
            tmp_path / "k.conf",
            f"state_dir data\ntest.echo tcp://127.0.0.1:{first}\ntest.echo tcp://127.0.0.1:{port}\n",
        )
        result = cli("run", "-c", conf, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kittiwake: cannot start: ")
    assert "address already in use" in lines[0]
    # The process is gone (run returned) and so is the listener it did bind.
    with socket.socket() as again:
        again.bind(("127.0.0.1", first))


def test_unexpected_error_is_one_log_line(tmp_path: Path) -> None:
    conf = write(tmp_path / "k.conf", echo_conf(block="    fail_on_start"))
    result = cli("run", "-c", conf, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error unexpected error, exiting reason=")
    assert "asked to fail on start" in lines[0]
    assert "traceback" not in lines[0].lower()

    conf = write(tmp_path / "k.conf", echo_conf(extra="debug yes", block="    fail_on_start"))
    result = cli("run", "-c", conf, cwd=tmp_path)
    assert result.returncode == 1
    line = [x for x in result.stderr.splitlines() if x.startswith("error ")]
    assert len(line) == 1
    assert "traceback=" in line[0] and "Traceback (most recent call last)" in line[0]


def test_state_and_runtime_dirs_are_created_private(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    conf = write(tmp_path / "k.conf", echo_conf(extra="runtime_dir run/kw"))
    server = start("-c", conf)
    server.wait_ready()
    for d in (tmp_path / "data", tmp_path / "run" / "kw"):
        assert d.is_dir()
        assert d.stat().st_mode & 0o777 == 0o700, oct(d.stat().st_mode)
    assert not [p for p in (tmp_path / "data").iterdir()], "write probe left behind"
    server.send(signal.SIGTERM)
    assert server.wait() == 0


def _uncommented_example(text: str) -> str:
    """The default with its commented Internet example turned on (its code lines)."""
    start = text.index("#smtp tcp://0.0.0.0:25 {")
    head, example = text[:start], text[start:]
    lines = [line[1:] if line.startswith("#") else line for line in example.splitlines()]
    return head + "\n".join(lines) + "\n"


def test_the_default_internet_example_checks_and_runs(tmp_path: Path) -> None:
    """`config default`'s commented MX example (SPF, DKIM, DMARC, DKIM signing) works."""
    text = _uncommented_example(cli("config", "default", cwd=tmp_path).stdout)
    assert "\nsmtp tcp://0.0.0.0:25 {\n    check {\n        spf\n        dkim\n" in text
    assert "        dkim $(local_domains) default\n" in text
    conf = write(tmp_path / "k.conf", text)
    checked = cli("config", "check", "-c", str(conf), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    # Run it, on free ports instead of 25 and 587: the signing keys are made.
    ports = (free_port(), free_port())
    run_text = text.replace("0.0.0.0:25 ", f"127.0.0.1:{ports[0]} ").replace(
        "0.0.0.0:587 ", f"127.0.0.1:{ports[1]} "
    )
    server = Server(tmp_path, ["-c", write(tmp_path / "run.conf", run_text)])
    try:
        server.wait_ready(5)
        keys = sorted(p.name for p in (tmp_path / "kittiwake-data" / "dkim_keys").iterdir())
        assert "localhost_default.key" in keys and "localhost_default.dns" in keys
    finally:
        server.kill()
