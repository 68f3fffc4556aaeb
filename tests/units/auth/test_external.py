"""auth.external: real helper programs (Python scripts written to tmp) over the helper protocol."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kittiwake.auth.base import InvalidCredentials, PasswordAuth, TemporaryAuthFailure
from kittiwake.auth.external import DEFAULT_HELPER, ExternalAuth, redact
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError

# The helper writes what it was given to RECORD (one JSON list per run),
# then decides: alice / secret (or alice@example.org / secret) is right.
CHECKER = """
import json, os, sys
account = sys.stdin.readline()
password = sys.stdin.readline()
with open(os.environ["KW_RECORD"], "a") as f:
    f.write(json.dumps([account, password]) + "\\n")
ok = account.rstrip("\\n") in ("alice", "alice@example.org") and password == "secret\\n"
sys.exit(0 if ok else 1)
"""


def write_helper(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def build(tmp_path: Path, block: str) -> Any:
    """Configure `auth external { BLOCK }` the way an endpoint would."""
    container = Container([], config_file="t.conf", cwd=str(tmp_path))
    container.parse_globals()
    (node,) = parse_text(f"auth external {{\n{block}\n}}\n", "t.conf")
    module = container.module_from_node(node, PasswordAuth, "auth")
    assert isinstance(module, ExternalAuth)
    return module


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "record.jsonl"
    monkeypatch.setenv("KW_RECORD", str(path))
    return path


def runs(record: Path) -> list[list[str]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


async def test_success_and_failure(tmp_path: Path, record: Path) -> None:
    helper = write_helper(tmp_path, "check", CHECKER)
    auth = build(tmp_path, f"helper {helper}")
    await auth.auth_plain("alice", "secret")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice", "wrong")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("bob", "secret")
    # Exactly ACCOUNT LF PASSWORD LF, one process per attempt.
    assert runs(record) == [
        ["alice\n", "secret\n"],
        ["alice\n", "wrong\n"],
        ["bob\n", "secret\n"],
    ]


async def test_helper_reading_to_end_of_file_finishes(tmp_path: Path) -> None:
    """stdin is closed after the two lines, so a helper may read it all."""
    helper = write_helper(
        tmp_path,
        "eof",
        """
        import sys
        data = sys.stdin.read()
        sys.exit(0 if data == "alice\\nsecret\\n" else 1)
        """,
    )
    auth = build(tmp_path, f"helper {helper}")
    auth.timeout = 10.0
    await auth.auth_plain("alice", "secret")


async def test_helper_that_reads_nothing(tmp_path: Path) -> None:
    helper = write_helper(tmp_path, "quick", "import sys\nsys.exit(1)\n")
    auth = build(tmp_path, f"helper {helper}")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice", "x" * 200_000)  # more than a pipe holds


@pytest.mark.parametrize("code", [2, 3, 127, 255])
async def test_other_exit_status_is_temporary(tmp_path: Path, code: int) -> None:
    helper = write_helper(
        tmp_path, "crash", f"import sys\nsys.stdin.readline()\nsys.exit({code})\n"
    )
    auth = build(tmp_path, f"helper {helper}")
    with pytest.raises(TemporaryAuthFailure):
        await auth.auth_plain("alice", "secret")


async def test_crash_logs_stderr_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    helper = write_helper(
        tmp_path,
        "crash",
        """
        import sys
        account = sys.stdin.readline().strip()
        password = sys.stdin.readline().strip()
        sys.stderr.write(f"cannot check {account} with {password}; again: {password}\\n")
        raise SystemExit(4)
        """,
    )
    auth = build(tmp_path, f"helper {helper}")
    capsys.readouterr()
    with pytest.raises(TemporaryAuthFailure) as info:
        await auth.auth_plain("alice", "hunter2-sEcReT")
    err = capsys.readouterr().err
    assert "authentication helper failed" in err
    assert "exit status 4" in err
    assert "cannot check alice with <redacted>; again: <redacted>" in err
    assert "hunter2-sEcReT" not in err
    assert "hunter2-sEcReT" not in str(info.value)


async def test_killed_by_a_signal_is_temporary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    helper = write_helper(
        tmp_path, "die", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    auth = build(tmp_path, f"helper {helper}")
    with pytest.raises(TemporaryAuthFailure):
        await auth.auth_plain("alice", "secret")
    assert "killed by signal 9" in capsys.readouterr().err


async def test_slow_helper_is_killed_and_temporary(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    helper = write_helper(
        tmp_path,
        "slow",
        f"""
        import os, time
        with open({str(pid_file)!r}, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    auth = build(tmp_path, f"helper {helper}")
    auth.timeout = 1.0
    with pytest.raises(TemporaryAuthFailure):
        await auth.auth_plain("alice", "secret")
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


async def test_helper_vanished_after_startup_is_temporary(tmp_path: Path) -> None:
    helper = write_helper(tmp_path, "check", CHECKER)
    auth = build(tmp_path, f"helper {helper}")
    helper.unlink()
    with pytest.raises(TemporaryAuthFailure):
        await auth.auth_plain("alice", "secret")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "secret\nanything"),
        ("alice\nsecret", "x"),
        ("alice", "sec\rret"),
        ("al\0ice", "x"),
    ],
)
async def test_line_breaks_and_nul_are_refused_without_the_helper(
    tmp_path: Path, record: Path, username: str, password: str
) -> None:
    helper = write_helper(tmp_path, "check", CHECKER)
    auth = build(tmp_path, f"helper {helper}")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain(username, password)
    assert runs(record) == []


# -- user names and domains -----------------------------------------------------

DOMAIN_CASES = [
    # (perdomain, domains, username, account given to the helper or None)
    ("no", "", "alice", "alice"),
    ("no", "", "alice@example.org", None),
    ("no", "", "", None),
    ("no", "example.org", "alice", "alice"),
    ("no", "example.org", "alice@example.org", "alice"),
    ("no", "example.org", "alice@EXAMPLE.Org", "alice"),
    ("no", "Example.ORG other.net", "alice@other.NET", "alice"),
    ("no", "example.org", "alice@example.net", None),
    ("no", "example.org", "alice@", None),
    ("no", "example.org", "@example.org", None),
    ("no", "example.org", "a@b@example.org", None),
    ("yes", "example.org", "alice@example.org", "alice@example.org"),
    ("yes", "example.org", "alice@Example.Org", "alice@Example.Org"),
    ("yes", "example.org", "alice", None),
    ("yes", "example.org", "alice@example.net", None),
    ("yes", "example.org", "alice@", None),
    ("yes", "example.org", "@example.org", None),
    ("yes", "example.org", "a@b@example.org", None),
]


@pytest.mark.parametrize(("perdomain", "domains", "username", "expected"), DOMAIN_CASES)
def test_account_name_rules(
    tmp_path: Path, perdomain: str, domains: str, username: str, expected: str | None
) -> None:
    helper = write_helper(tmp_path, "check", CHECKER)
    block = f"helper {helper}\nperdomain {perdomain}\n" + (
        f"domains {domains}\n" if domains else ""
    )
    auth = build(tmp_path, block)
    assert auth.account_name(username) == expected


async def test_domain_rules_decide_what_the_helper_sees(tmp_path: Path, record: Path) -> None:
    helper = write_helper(tmp_path, "check", CHECKER)
    plain = build(tmp_path, f"helper {helper}\ndomains example.org")
    await plain.auth_plain("alice@example.org", "secret")  # helper sees "alice"
    with pytest.raises(InvalidCredentials):
        await plain.auth_plain("alice@example.net", "secret")  # not run
    per = build(tmp_path, f"helper {helper}\nperdomain yes\ndomains example.org")
    await per.auth_plain("alice@example.org", "secret")  # helper sees the full name
    with pytest.raises(InvalidCredentials):
        await per.auth_plain("alice", "secret")  # not run
    assert [r[0] for r in runs(record)] == ["alice\n", "alice@example.org\n"]


# -- configuration ----------------------------------------------------------------


def config_error(tmp_path: Path, block: str) -> str:
    with pytest.raises(ConfigError) as info:
        build(tmp_path, block)
    return str(info.value)


def test_perdomain_needs_domains(tmp_path: Path) -> None:
    helper = write_helper(tmp_path, "check", CHECKER)
    assert "perdomain yes needs a domains directive" in config_error(
        tmp_path, f"helper {helper}\nperdomain yes"
    )


def test_missing_helper_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, f"helper {tmp_path}/nope")
    assert message.startswith("t.conf:1: ")
    assert f"{tmp_path}/nope does not exist" in message


def test_default_helper_is_maddys(tmp_path: Path) -> None:
    if os.path.exists(DEFAULT_HELPER):
        # maddy's helper is really installed here, so "missing" cannot be shown.
        pytest.skip(f"{DEFAULT_HELPER} exists on this machine")
    assert f"helper {DEFAULT_HELPER} does not exist" in config_error(tmp_path, "")


def test_helper_must_be_executable(tmp_path: Path) -> None:
    helper = write_helper(tmp_path, "check", CHECKER)
    helper.chmod(stat.S_IRUSR | stat.S_IWUSR)
    if os.access(helper, os.X_OK):
        pytest.skip("running as root: root may execute a file without any x bit set")
    assert "is not executable" in config_error(tmp_path, f"helper {helper}")


def test_relative_helper_path_is_in_the_state_directory(tmp_path: Path, record: Path) -> None:
    state = tmp_path / "kittiwake-data"
    state.mkdir()
    write_helper(state, "check", CHECKER)
    auth = build(tmp_path, "helper check")
    assert auth.helper == str(state / "check")


def test_unknown_directive_and_inline_arguments(tmp_path: Path) -> None:
    helper = write_helper(tmp_path, "check", CHECKER)
    assert "unexpected directive: helpr" in config_error(tmp_path, f"helpr {helper}")
    container = Container([], config_file="t.conf", cwd=str(tmp_path))
    container.parse_globals()
    (node,) = parse_text("auth external x\n", "t.conf")
    with pytest.raises(ConfigError, match="inline arguments are not used"):
        container.module_from_node(node, PasswordAuth, "auth")


def test_redact() -> None:
    assert redact("a pw b pw", "pw") == "a <redacted> b <redacted>"
    assert redact("nothing here", "") == "nothing here"
    # Truncated text ending in the start of the password.
    assert redact("tail: hunt", "hunter2", cut=True) == "tail: <redacted>"
    assert redact("tail: hunt", "hunter2") == "tail: hunt"
