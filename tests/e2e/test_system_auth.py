"""auth.pam against the machine's real PAM stack, auth.dovecot_sasl against a real Dovecot.

PAM: throw-away system users (`useradd`, `chpasswd`, `chage`) and a
`/etc/pam.d/kittiwake-test` policy of pam_unix, all removed again in
`finally`; needs root. Dovecot: Debian's `dovecot -F` running only its
auth service from a configuration in a temporary directory (its system
service is never touched); needs root too, since Dovecot's master switches
to its own users. Both are also exercised through a running `kittiwake`
process, so the endpoint's 235 / 535 / 454 replies are checked end to end.

The last section drives auth.dovecot_sasl against a scripted server on a
Unix socket, for the protocol corners a real Dovecot will not produce on
demand (legacy `temp` flag, silence, garbage); it needs neither root nor
Dovecot.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kw import Dialog, Kittiwake, env, need_tool

from kittiwake.auth.base import InvalidCredentials, PasswordAuth, TemporaryAuthFailure
from kittiwake.auth.dovecot_sasl import split_line
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError

Start = Callable[..., Kittiwake]
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
IS_ROOT = os.geteuid() == 0


def sbin(tool: str) -> str | None:
    return shutil.which(tool, path=SBIN_PATH)


def need_pamela() -> None:
    """Fail (not skip) when `auth.pam`'s binding cannot be loaded: pamela is a
    dependency of kittiwake itself, so without it the feature is broken."""
    try:
        import pamela  # noqa: F401
    except Exception as exc:
        pytest.fail(
            f"pamela cannot be loaded ({exc}): it is a dependency of kittiwake, "
            "installed by .ci/run (pip install -e '.[test]'), and needs libpam "
            "(Debian package libpam0g)",
            pytrace=False,
        )


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def build(tmp_path: Path, definition: str) -> tuple[Container, Any]:
    """An auth provider configured from `auth DEFINITION`, as an endpoint would."""
    container = Container([], config_file="t.conf", cwd=str(tmp_path))
    container.parse_globals()
    (node,) = parse_text(f"auth {definition}\n", "t.conf")
    return container, container.module_from_node(node, PasswordAuth, "auth")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to ~108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="kw-"))
    path.chmod(0o755)  # Dovecot's unprivileged processes must reach it
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def server_conf(tmp: Path, cert: tuple[str, str], auth: str) -> str:
    return f"""
state_dir {tmp}/state
hostname mx.example.com
tls file {cert[0]} {cert[1]}
smtp tcp://127.0.0.1:0 {{
    insecure_auth yes
    {auth}
    default_destination {{
        reject 550 5.7.1 "Relaying denied"
    }}
}}
"""


def try_auth(port: int, user: str, password: str) -> str:
    with Dialog(port) as d:
        d.reply()
        d.send(b"EHLO client.example\r\n")
        assert any("AUTH PLAIN" in line for line in d.reply())
        response = b64(f"\0{user}\0{password}")
        return d.cmd(f"AUTH PLAIN {response}")


# == PAM ===========================================================================

PAM_SERVICE = "kittiwake-test"
PAM_BROKEN = "kittiwake-test-broken"
PASSWORD = "c0rrect horse: battery"


class PamUsers:
    """Throw-away system users with known passwords."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.files: list[Path] = []

    def user(self, *chage_args: str) -> str:
        name = f"kwtest-{secrets.token_hex(4)}"
        useradd = sbin("useradd")
        assert useradd is not None
        subprocess.run(
            [useradd, "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
        )
        self.created.append(name)
        subprocess.run(
            [sbin("chpasswd") or "chpasswd"], input=f"{name}:{PASSWORD}\n", text=True, check=True
        )
        if chage_args:
            subprocess.run([sbin("chage") or "chage", *chage_args, name], check=True)
        return name

    def policy(self, service: str, text: str) -> None:
        path = Path("/etc/pam.d") / service
        path.write_text(text)
        self.files.append(path)

    def cleanup(self) -> None:
        errors = []
        for name in self.created:
            result = subprocess.run(
                [sbin("userdel") or "userdel", name], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                errors.append(f"userdel {name}: {result.stderr.strip()}")
        for path in self.files:
            path.unlink(missing_ok=True)
        assert not errors, errors


@pytest.fixture(scope="module")
def pam_system() -> Iterator[dict[str, str]]:
    need_pamela()
    if not IS_ROOT:
        pytest.skip("PAM tests create system users: they need root")
    if sbin("useradd") is None or sbin("chpasswd") is None or sbin("chage") is None:
        # Part of every Debian system (package passwd, priority required), but
        # not of every container image; .ci/run does not install it.
        pytest.skip("useradd/chpasswd/chage missing: no way to create the test users")
    users = PamUsers()
    try:
        # nodelay: pam_unix would otherwise sleep ~2 s after every failure.
        users.policy(
            PAM_SERVICE, "auth required pam_unix.so nodelay\naccount required pam_unix.so\n"
        )
        users.policy(PAM_BROKEN, "auth required pam_kittiwake_missing.so\n")
        yield {
            "ok": users.user(),
            # Password must be changed now: PAM_NEW_AUTHTOK_REQD.
            "must_change": users.user("--lastday", "0"),
            # Account expired on 1970-01-02: PAM_ACCT_EXPIRED.
            "expired": users.user("--expiredate", "1"),
        }
    finally:
        users.cleanup()


async def test_pam_right_wrong_unknown(tmp_path: Path, pam_system: dict[str, str]) -> None:
    _, auth = build(tmp_path, f"pam {{\n service {PAM_SERVICE}\n}}")
    user = pam_system["ok"]
    await auth.auth_plain(user, PASSWORD)
    for name, password in [
        (user, "wrong"),
        (user, PASSWORD + " "),
        (user, ""),
        (f"kwtest-nosuch-{secrets.token_hex(3)}", PASSWORD),
        (user + "\0x", PASSWORD),
    ]:
        with pytest.raises(InvalidCredentials):
            await auth.auth_plain(name, password)


async def test_pam_account_step(tmp_path: Path, pam_system: dict[str, str]) -> None:
    """The account step runs: a password that must be changed is refused (535);
    an expired account is a failure to decide (454), as docs/auth.md maps it."""
    _, auth = build(tmp_path, f"pam {{\n service {PAM_SERVICE}\n}}")
    with pytest.raises(InvalidCredentials, match="pam_acct_mgmt"):
        await auth.auth_plain(pam_system["must_change"], PASSWORD)
    with pytest.raises(TemporaryAuthFailure, match="pam_acct_mgmt"):
        await auth.auth_plain(pam_system["expired"], PASSWORD)


async def test_pam_broken_policy_is_temporary(tmp_path: Path, pam_system: dict[str, str]) -> None:
    _, auth = build(tmp_path, f"pam {{\n service {PAM_BROKEN}\n}}")
    with pytest.raises(TemporaryAuthFailure, match="pam_authenticate"):
        await auth.auth_plain(pam_system["ok"], PASSWORD)


async def test_pam_in_parallel(tmp_path: Path, pam_system: dict[str, str]) -> None:
    _, auth = build(tmp_path, f"pam {{\n service {PAM_SERVICE}\n}}")
    user = pam_system["ok"]

    async def attempt(password: str) -> bool:
        try:
            await auth.auth_plain(user, password)
        except InvalidCredentials:
            return False
        return True

    passwords = [PASSWORD if i % 2 else f"wrong{i}" for i in range(12)]
    results = await asyncio.gather(*(attempt(p) for p in passwords))
    assert results == [p == PASSWORD for p in passwords]


def test_pam_through_the_server(
    kittiwake: Start, tmp_path: Path, cert_files: tuple[str, str], pam_system: dict[str, str]
) -> None:
    server = kittiwake(server_conf(tmp_path, cert_files, f"auth pam {{ service {PAM_SERVICE} }}"))
    user = pam_system["ok"]
    assert try_auth(server.port(), user, PASSWORD) == "235 2.0.0 Authentication succeeded"
    assert try_auth(server.port(), user, "wrong") == "535 5.7.8 Invalid credentials"
    assert try_auth(server.port(), pam_system["expired"], PASSWORD) == (
        "454 4.7.0 Temporary authentication failure"
    )
    assert PASSWORD not in server.log


def test_pam_without_pamela_names_the_extra(tmp_path: Path) -> None:
    """pamela is the optional `pam` extra: without it, `config check` says how to get it."""
    config = tmp_path / "k.conf"
    config.write_text(
        "hostname mx.example.com\ntls self_signed\n"
        "submission tcp://127.0.0.1:0 {\n    auth pam\n    reject\n}\n"
    )
    # None in sys.modules makes `import pamela` fail as if it were not installed.
    code = (
        "import sys\n"
        "sys.modules['pamela'] = None\n"
        "from kittiwake.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "config", "check", "-c", str(config)],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"{config}:4: auth.pam: the pamela package is not installed: pip install 'kittiwake[pam]'\n"
    )


def test_pam_configuration(tmp_path: Path) -> None:
    need_pamela()
    _, auth = build(tmp_path, "pam")
    assert auth.service == "maddy"  # existing /etc/pam.d/maddy files keep working
    with pytest.raises(ConfigError, match="use_helper is not supported") as info:
        build(tmp_path, "pam {\n use_helper yes\n}")
    assert "auth.external" in str(info.value)
    with pytest.raises(ConfigError, match="inline arguments are not used"):
        build(tmp_path, "pam maddy")
    with pytest.raises(ConfigError, match="invalid PAM service name"):
        build(tmp_path, "pam {\n service ../passwd\n}")


# == Dovecot =========================================================================

DOVECOT = sbin("dovecot")
USERS = {"user@example.org": "secret", "bob": "hunter2 and more"}


class Dovecot:
    """`dovecot -F` running only its auth service, from a config in `root`."""

    def __init__(
        self, root: Path, *, mechanisms: str = "plain login", broken: bool = False
    ) -> None:
        self.root = root
        self.socket = root / "auth-client"
        for sub in ("run", "state"):
            (root / sub).mkdir()
        passwd_dir = root / "secret" if broken else root
        passwd_dir.mkdir(exist_ok=True)
        if broken:
            passwd_dir.chmod(0o700)  # Dovecot's auth worker cannot get in: temp_fail
        passwd = passwd_dir / "passwd"
        passwd.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in USERS.items()))
        passwd.chmod(0o644)
        self.conf = root / "dovecot.conf"
        self.conf.write_text(
            f"""
base_dir = {root}/run
state_dir = {root}/state
protocols =
ssl = no
log_path = {root}/dovecot.log
auth_mechanisms = {mechanisms}
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={root}/home
}}
service auth {{
  unix_listener {self.socket} {{
    mode = 0666
  }}
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        assert DOVECOT is not None
        with open(self.root / "stderr", "wb") as err:
            self.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited: {self.logs()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"dovecot did not listen: {self.logs()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)

    def logs(self) -> str:
        parts = []
        for name in ("stderr", "dovecot.log"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)


@pytest.fixture
def dovecot_factory(short_dir: Path) -> Iterator[Callable[..., Dovecot]]:
    need_tool("dovecot", "dovecot-core")
    if not IS_ROOT:
        pytest.skip("dovecot's master process needs root to switch to its users")
    started: list[Dovecot] = []

    def start(**kwargs: Any) -> Dovecot:
        root = short_dir / f"d{len(started)}"
        root.mkdir()
        root.chmod(0o755)
        server = Dovecot(root, **kwargs)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
async def container_stack() -> AsyncIterator[list[Container]]:
    containers: list[Container] = []
    try:
        yield containers
    finally:
        for c in containers:
            await c.stop()


async def started(containers: list[Container], tmp_path: Path, definition: str) -> Any:
    container, auth = build(tmp_path, definition)
    containers.append(container)
    await container.start()
    return auth


async def test_dovecot_plain(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot], container_stack: list[Container]
) -> None:
    dovecot = dovecot_factory()
    auth = await started(
        container_stack, tmp_path, f"dovecot_sasl {{\n endpoint {dovecot.endpoint}\n}}"
    )
    assert set(auth.mechanisms) == {"PLAIN", "LOGIN"}
    for user, password in USERS.items():
        await auth.auth_plain(user, password)
    for user, password in [
        ("user@example.org", "wrong"),
        ("user@example.org", ""),
        ("nobody@example.org", "secret"),
        ("bob", "hunter2"),
    ]:
        with pytest.raises(InvalidCredentials):
            await auth.auth_plain(user, password)


async def test_dovecot_login_only(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot], container_stack: list[Container]
) -> None:
    """Without PLAIN the client falls back to LOGIN through CONT exchanges."""
    dovecot = dovecot_factory(mechanisms="login")
    auth = await started(container_stack, tmp_path, f"dovecot_sasl {dovecot.endpoint}")
    assert auth.mechanisms == ["LOGIN"]
    await auth.auth_plain("bob", USERS["bob"])
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("bob", "wrong")


async def test_dovecot_backend_failure_is_temporary(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot], container_stack: list[Container]
) -> None:
    dovecot = dovecot_factory(broken=True)
    auth = await started(container_stack, tmp_path, f"dovecot_sasl {dovecot.endpoint}")
    with pytest.raises(TemporaryAuthFailure):
        await auth.auth_plain("bob", USERS["bob"])


async def test_dovecot_in_parallel(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot], container_stack: list[Container]
) -> None:
    """One connection per attempt, all with our PID: Dovecot must accept them at once."""
    dovecot = dovecot_factory()
    auth = await started(container_stack, tmp_path, f"dovecot_sasl {dovecot.endpoint}")

    async def attempt(password: str) -> bool:
        try:
            await auth.auth_plain("bob", password)
        except InvalidCredentials:
            return False
        return True

    passwords = [USERS["bob"] if i % 2 else f"wrong{i}" for i in range(12)]
    results = await asyncio.gather(*(attempt(p) for p in passwords))
    assert results == [p == USERS["bob"] for p in passwords]


async def test_dovecot_stopped(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot], container_stack: list[Container]
) -> None:
    dovecot = dovecot_factory()
    auth = await started(container_stack, tmp_path, f"dovecot_sasl {dovecot.endpoint}")
    await auth.auth_plain("bob", USERS["bob"])
    dovecot.stop()
    with pytest.raises(TemporaryAuthFailure):
        await auth.auth_plain("bob", USERS["bob"])
    with pytest.raises(ConfigError, match="unable to contact server") as info:
        await started(container_stack, tmp_path, f"dovecot_sasl {dovecot.endpoint}")
    assert str(info.value).startswith("t.conf:1: ")


def test_dovecot_through_the_server(
    kittiwake: Start,
    tmp_path: Path,
    cert_files: tuple[str, str],
    dovecot_factory: Callable[..., Dovecot],
) -> None:
    dovecot = dovecot_factory()
    server = kittiwake(server_conf(tmp_path, cert_files, f"auth dovecot_sasl {dovecot.endpoint}"))
    port = server.port()
    assert try_auth(port, "bob", USERS["bob"]) == "235 2.0.0 Authentication succeeded"
    assert try_auth(port, "bob", "wrong") == "535 5.7.8 Invalid credentials"
    dovecot.stop()
    assert try_auth(port, "bob", USERS["bob"]) == "454 4.7.0 Temporary authentication failure"
    assert USERS["bob"] not in server.log


# == auth.dovecot_sasl against a scripted server =====================================

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[str]], Awaitable[None]]
HANDSHAKE = (
    "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n"
    "SPID\t1\nCUID\t1\nCOOKIE\t00\nDONE\n"
)


class Scripted:
    """A Unix-socket server running `script` per connection; records client lines."""

    def __init__(self, path: Path, script: Script, handshake: str = HANDSHAKE) -> None:
        self.path = path
        self.script = script
        self.handshake = handshake
        self.lines: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.handshake.encode())
            for _ in range(2):  # VERSION, CPID
                self.lines.append((await reader.readline()).decode())
            await self.script(reader, writer, self.lines)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def reply(text: str) -> Script:
    """Read the AUTH line, answer `text`, hang up."""

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, lines: list[str]) -> None:
        line = await r.readline()
        if not line:  # the check at start: handshake only
            return
        lines.append(line.decode())
        w.write(text.encode())
        await w.drain()

    return script


async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter, lines: list[str]) -> None:
    """Close the connection once the client's handshake is in."""


async def scripted_auth(
    short_dir: Path, container_stack: list[Container], script: Script, **kw: str
) -> tuple[Scripted, Any]:
    server = Scripted(short_dir / "s", script, **kw)
    await server.__aenter__()
    auth = await started(container_stack, short_dir, f"dovecot_sasl unix://{server.path}")
    return server, auth


async def test_request_format(short_dir: Path, container_stack: list[Container]) -> None:
    server, auth = await scripted_auth(short_dir, container_stack, reply("OK\t1\tuser=bob\n"))
    try:
        await auth.auth_plain("bob", "pw")
    finally:
        await server.__aexit__()
    pid = os.getpid()
    resp = b64("\0bob\0pw")
    # Two connections: the check at start, then the attempt.
    assert server.lines[:2] == ["VERSION\t1\t1\n", f"CPID\t{pid}\n"]
    assert server.lines[2:] == [
        "VERSION\t1\t1\n",
        f"CPID\t{pid}\n",
        f"AUTH\t1\tPLAIN\tservice=SMTP\tsecured\tno-penalty\tresp={resp}\n",
    ]


async def test_login_exchange(short_dir: Path, container_stack: list[Container]) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, lines: list[str]) -> None:
        lines.append((await r.readline()).decode())
        w.write(f"CONT\t1\t{b64('Username:')}\n".encode())
        lines.append((await r.readline()).decode())
        w.write(f"CONT\t1\t{b64('Password:')}\n".encode())
        lines.append((await r.readline()).decode())
        w.write(b"OK\t1\n")
        await r.read()

    server, auth = await scripted_auth(
        short_dir,
        container_stack,
        script,
        handshake="VERSION\t1\t2\nMECH\tPLAIN\tprivate\nMECH\tLOGIN\tplaintext\nDONE\n",
    )
    try:
        await auth.auth_plain("bob", "pä ss")
    finally:
        await server.__aexit__()
    assert server.lines[-3:] == [
        "AUTH\t1\tLOGIN\tservice=SMTP\tsecured\tno-penalty\n",
        f"CONT\t1\t{b64('bob')}\n",
        f"CONT\t1\t{b64('pä ss')}\n",
    ]


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ("FAIL\t1\tuser=bob\n", InvalidCredentials),
        ("FAIL\t1\treason=nope\x01tmore\tuser=bob\n", InvalidCredentials),
        ("FAIL\t1\tuser=bob\ttemp\n", TemporaryAuthFailure),  # Dovecot 2.2
        ("FAIL\t1\tuser=bob\tcode=temp_fail\n", TemporaryAuthFailure),  # 2.3
        ("FAIL\t7\n", TemporaryAuthFailure),  # someone else's request
        ("HELLO\t1\n", TemporaryAuthFailure),
        ("CONT\t1\tAAAA\n", TemporaryAuthFailure),  # PLAIN needs no second round
        ("", TemporaryAuthFailure),  # closed without an answer
        ("OK\t1", TemporaryAuthFailure),  # closed mid-line
    ],
)
async def test_answers(
    short_dir: Path, container_stack: list[Container], answer: str, outcome: type[Exception]
) -> None:
    server, auth = await scripted_auth(short_dir, container_stack, reply(answer))
    try:
        with pytest.raises(outcome):
            await auth.auth_plain("bob", "pw")
    finally:
        await server.__aexit__()


async def test_silent_server_times_out(short_dir: Path, container_stack: list[Container]) -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, lines: list[str]) -> None:
        await asyncio.sleep(30)

    server, auth = await scripted_auth(short_dir, container_stack, silent)
    auth.timeout = 0.3
    try:
        before = time.monotonic()
        with pytest.raises(TemporaryAuthFailure):
            await auth.auth_plain("bob", "pw")
        assert time.monotonic() - before < 3
    finally:
        await server.__aexit__()


@pytest.mark.parametrize(
    ("handshake", "message"),
    [
        ("VERSION\t2\t0\nMECH\tPLAIN\nDONE\n", "unsupported protocol version"),
        ("MECH\tPLAIN\nDONE\n", "no VERSION"),
        ("VERSION\t1\t2\nMECH\tCRAM-MD5\nMECH\tPLAIN\tprivate\nDONE\n", "neither PLAIN nor LOGIN"),
        ("VERSION\t1\t2\n", "closed by the server"),
    ],
)
async def test_unusable_server_at_start(
    short_dir: Path, container_stack: list[Container], handshake: str, message: str
) -> None:
    server = Scripted(short_dir / "s", hang_up, handshake=handshake)
    async with server:
        with pytest.raises(ConfigError, match=message):
            await started(container_stack, short_dir, f"dovecot_sasl unix://{server.path}")


async def test_nul_is_refused_without_asking(
    short_dir: Path, container_stack: list[Container]
) -> None:
    server, auth = await scripted_auth(short_dir, container_stack, reply("OK\t1\n"))
    try:
        with pytest.raises(InvalidCredentials):
            await auth.auth_plain("bob", "pw\0x")
        assert len(server.lines) == 2  # only the check at start connected
    finally:
        await server.__aexit__()


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ("dovecot_sasl", "missing server endpoint"),
        ("dovecot_sasl unix:///a {\n endpoint unix:///b\n}", "given both"),
        ("dovecot_sasl tls://127.0.0.1:1", "use a unix:// or tcp:// endpoint"),
        ("dovecot_sasl tcp://127.0.0.1", "invalid server endpoint"),
        ("dovecot_sasl a b", "at most one argument"),
    ],
)
def test_dovecot_configuration(tmp_path: Path, definition: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, definition)


def test_split_line() -> None:
    assert split_line("FAIL\t1\treason=a\x01tb\x01nc\x011d") == ["FAIL", "1", "reason=a\tb\nc\x01d"]
    assert split_line("DONE") == ["DONE"]
