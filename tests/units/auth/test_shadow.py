"""auth.shadow against a shadow file in tmp (the module reads `shadow.SHADOW_FILE`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kittiwake.auth import shadow
from kittiwake.auth.base import InvalidCredentials, PasswordAuth, TemporaryAuthFailure
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.tables.base import Table

DAY = 20000  # "today" in these tests: 2024-10-04

# Published SHA-crypt test vectors ("Hello world!", salt "saltstring"); they
# prove the hashes are computed, not just round-tripped.
SHA512_VECTOR = (
    "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFd"
    "cbYEdFCoEOfaS35inz1"
)
SHA256_VECTOR = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"


def line(
    name: str,
    hashed: str,
    last: int | str = "",
    max_age: int | str = "",
    inactive: int | str = "",
    expires: int | str = "",
) -> str:
    return f"{name}:{hashed}:{last}:0:{max_age}:7:{inactive}:{expires}:"


@pytest.fixture
def shadow_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "shadow"
    path.write_text("root:*:19000:0:99999:7:::\n")
    monkeypatch.setattr(shadow, "SHADOW_FILE", str(path))
    monkeypatch.setattr(shadow, "today", lambda: DAY)
    return path


def container(tmp_path: Path, text: str = "") -> Container:
    c = Container(parse_text(text, "t.conf"), config_file="t.conf", cwd=str(tmp_path))
    c.parse_globals()
    return c


def build(tmp_path: Path, definition: str = "shadow") -> Any:
    (node,) = parse_text(f"auth {definition}\n", "t.conf")
    return container(tmp_path).module_from_node(node, PasswordAuth, "auth")


def write(path: Path, *lines: str) -> None:
    path.write_text("".join(f"{x}\n" for x in lines))


def remove_final_newline(path: Path) -> None:
    path.write_text(path.read_text().removesuffix("\n"))


def remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("prefix", ["$y$", "$6$", "$5$"])
async def test_schemes(tmp_path: Path, shadow_file: Path, prefix: str) -> None:
    hashed = shadow.hash_password("correct horse ü", prefix)
    assert hashed.startswith(prefix)
    write(shadow_file, "root:*:19000:0:99999:7:::", line("alice", hashed, 19000))
    auth = build(tmp_path)
    await auth.auth_plain("alice", "correct horse ü")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice", "correct horse u")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice", "")


async def test_known_vectors(tmp_path: Path, shadow_file: Path) -> None:
    write(shadow_file, line("five", SHA256_VECTOR), line("six", SHA512_VECTOR))
    auth = build(tmp_path)
    await auth.auth_plain("five", "Hello world!")
    await auth.auth_plain("six", "Hello world!")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("six", "Hello world")


def test_salts_are_random() -> None:
    assert shadow.hash_password("x", "$6$") != shadow.hash_password("x", "$6$")


async def test_unknown_user_and_exact_names(tmp_path: Path, shadow_file: Path) -> None:
    write(shadow_file, line("alice", SHA512_VECTOR))
    auth = build(tmp_path)
    for name in ("bob", "Alice", "alice ", ""):
        with pytest.raises(InvalidCredentials):
            await auth.auth_plain(name, "Hello world!")


@pytest.mark.parametrize(
    ("expires", "ok"),
    [("", True), (DAY + 1, True), (DAY, False), (DAY - 1, False), (0, False)],
)
async def test_account_expiry(
    tmp_path: Path, shadow_file: Path, expires: int | str, ok: bool
) -> None:
    write(shadow_file, line("alice", SHA512_VECTOR, expires=expires))
    auth = build(tmp_path)
    if ok:
        await auth.auth_plain("alice", "Hello world!")
    else:
        with pytest.raises(InvalidCredentials, match="account is expired"):
            await auth.auth_plain("alice", "Hello world!")


@pytest.mark.parametrize(
    ("last", "max_age", "inactive", "ok"),
    [
        (19000, 900, 101, True),  # valid while DAY < 19000 + 900 + 101
        (19000, 900, 100, False),
        (19000, 900, 99, False),
        # Only checked when all three are set, as in maddy:
        (19000, 900, "", True),
        (19000, "", 0, True),
        ("", 900, 0, True),
    ],
)
async def test_password_expiry(
    tmp_path: Path,
    shadow_file: Path,
    last: int | str,
    max_age: int | str,
    inactive: int | str,
    ok: bool,
) -> None:
    write(shadow_file, line("alice", SHA512_VECTOR, last, max_age, inactive))
    auth = build(tmp_path)
    if ok:
        await auth.auth_plain("alice", "Hello world!")
    else:
        with pytest.raises(InvalidCredentials, match="password is expired"):
            await auth.auth_plain("alice", "Hello world!")


@pytest.mark.parametrize(
    ("hashed", "reason"),
    [
        ("", "null password"),
        ("!", "locked password"),
        ("!" + SHA512_VECTOR, "locked password"),
        ("*", "not usable"),
        ("x", "not usable"),
        ("$9$nosuchscheme$abc", "not usable"),
    ],
)
async def test_unusable_passwords(
    tmp_path: Path, shadow_file: Path, hashed: str, reason: str
) -> None:
    write(shadow_file, line("alice", hashed))
    auth = build(tmp_path)
    with pytest.raises(InvalidCredentials, match=reason):
        await auth.auth_plain("alice", "Hello world!")
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice", "")


async def test_nul_in_password(tmp_path: Path, shadow_file: Path) -> None:
    write(shadow_file, line("alice", SHA512_VECTOR))
    auth = build(tmp_path)
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice", "Hello world!\0trailing")


@pytest.mark.parametrize(
    "bad",
    [
        "bob:x:1:2:3",  # too few fields
        "bob:x:1:2:3:4:5:6:7:8",  # too many
        "bob:x:abc:0:99999:7:::",  # not a number
        "bob:x: 1:0:99999:7:::",  # Go's Atoi takes no spaces either
    ],
)
async def test_malformed_file_is_temporary(
    tmp_path: Path, shadow_file: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write(shadow_file, line("alice", SHA512_VECTOR), bad)
    auth = build(tmp_path)
    with pytest.raises(TemporaryAuthFailure):
        await auth.auth_plain("alice", "Hello world!")
    err = capsys.readouterr().err
    assert "malformed entry" in err
    assert "Hello world!" not in err


async def test_blank_lines_and_no_final_newline(tmp_path: Path, shadow_file: Path) -> None:
    write(shadow_file, "", "root:*:::::::", "", line("alice", SHA512_VECTOR).rstrip("\n"))
    remove_final_newline(shadow_file)
    auth = build(tmp_path)
    await auth.auth_plain("alice", "Hello world!")


async def test_file_read_per_attempt(tmp_path: Path, shadow_file: Path) -> None:
    auth = build(tmp_path)
    with pytest.raises(InvalidCredentials):
        await auth.auth_plain("alice", "Hello world!")
    write(shadow_file, line("alice", SHA512_VECTOR))
    await auth.auth_plain("alice", "Hello world!")
    remove(shadow_file)
    with pytest.raises(TemporaryAuthFailure):
        await auth.auth_plain("alice", "Hello world!")


async def test_as_a_table(tmp_path: Path, shadow_file: Path) -> None:
    write(
        shadow_file,
        line("alice", SHA512_VECTOR),
        line("locked", "!"),
        line("old", SHA512_VECTOR, expires=DAY),
        line("stale", SHA512_VECTOR, 1, 1, 1),
    )
    c = container(tmp_path, "auth.shadow system_users { }\n")
    (ref,) = parse_text("table &system_users\n", "t.conf")
    table = c.module_from_node(ref, Table, "table")
    assert await table.lookup("alice") == ""
    assert await table.lookup("locked") == ""  # exists; the password is not a table matter
    assert await table.lookup("stale") == ""  # an expired password is not an expired account
    assert await table.lookup("old") is None
    assert await table.lookup("nobody") is None
    # The same block is also the auth provider.
    (ref,) = parse_text("auth &system_users\n", "t.conf")
    assert c.module_from_node(ref, PasswordAuth, "auth") is table
    write(shadow_file, "broken")
    with pytest.raises(shadow.ShadowError):
        await table.lookup("alice")


# -- configuration ----------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path, shadow_file: Path) -> None:
    shadow_file.unlink()
    with pytest.raises(ConfigError, match=r"cannot read .*shadow"):
        build(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: root reads any file, mode 0 or not")
def test_unreadable_file_is_a_config_error(tmp_path: Path, shadow_file: Path) -> None:
    shadow_file.chmod(0)
    with pytest.raises(ConfigError, match="permission denied"):
        build(tmp_path)


def test_use_helper_is_a_config_error(tmp_path: Path, shadow_file: Path) -> None:
    with pytest.raises(ConfigError, match="use_helper is not supported") as info:
        build(tmp_path, "shadow {\n use_helper yes\n}")
    assert str(info.value).startswith("t.conf:1: ")
    build(tmp_path, "shadow {\n use_helper no\n debug yes\n}")


def test_inline_arguments_and_unknown_directives(tmp_path: Path, shadow_file: Path) -> None:
    with pytest.raises(ConfigError, match="inline arguments are not used"):
        build(tmp_path, "shadow /etc/shadow")
    with pytest.raises(ConfigError, match="unexpected directive: file"):
        build(tmp_path, "shadow {\n file /etc/shadow\n}")


def test_real_today() -> None:
    import time

    assert abs(shadow.today() - time.time() / 86400) < 1
