"""`kittiwake creds` and `kittiwake hash`: managing users of `auth.pass_table`.

These commands read the same configuration as `run`, configure only the
named credentials block (and what it references), do one operation and
stop. Passwords come from `-p`, a terminal prompt (asked twice, no echo) or
one line of standard input; they are never printed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable

from kittiwake import log
from kittiwake.auth import hashing
from kittiwake.auth.base import UserDB
from kittiwake.auth.pass_table import PassTable
from kittiwake.cli.common import (
    EMBEDDED_NAME,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    config_error,
    load_config,
    resolve_config,
)
from kittiwake.config.node import Node
from kittiwake.container import Container
from kittiwake.errors import ConfigError, KittiwakeError
from kittiwake.module import Module

# -- credentials: creds and hash (docs/auth.md, "Managing users") --------------------

#: The configuration block `creds` manages unless `--cfg-block` names another.
DEFAULT_CFG_BLOCK = "local_authdb"
CONFIRM_DELETE = "Are you sure you want to delete this user account? [y/N]: "


class _CredsUsage(Exception):
    """Command-line misuse found while running `creds`/`hash`: exit 2."""


def _error(message: str, status: int) -> int:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return status


def _read_line_password() -> str:
    """One line of stdin, without its LF or CRLF (docs/auth.md, "Managing users")."""
    stream = sys.stdin
    line = stream.buffer.readline() if stream is not None else b""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise _CredsUsage("the password on stdin is not UTF-8") from None


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _read_password(given: str | None, prompt: str) -> str:
    """`-p`, else a hidden prompt (asked twice) on a terminal, else one stdin line.

    The prompt asks twice because a typo nobody saw would lock the user out.
    """
    if given is not None:
        return given
    if not _stdin_is_terminal():
        return _read_line_password()
    try:
        password = getpass.getpass(f"{prompt}: ")
        again = getpass.getpass("Repeat password: ")
    except EOFError:
        raise _CredsUsage("no password given") from None
    if password != again:
        raise _CredsUsage("the passwords do not match")
    return password


def _confirm(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    return answer.strip() in ("y", "Y")


def _open_block(args: argparse.Namespace) -> tuple[UserDB, list[Module]]:
    """Configure only the named block; return it and the modules to start, in order.

    Globals are read (state_dir, ...), but modules they define (a TLS
    certificate loader, an auth_map table) are not started: the block does
    not need them.
    """
    path = resolve_config(args.config)
    container = Container(load_config(path), config_file=path or EMBEDDED_NAME)
    container.parse_globals()
    before = len(container.modules)
    # A reference without a position: an unknown block name comes back as a
    # ConfigError without FILE:LINE. The kind is checked here, in words an
    # operator of `creds` understands.
    ref = Node("--cfg-block", [args.cfg_block])
    db = container.instance(args.cfg_block, ref, object)
    if not isinstance(db, UserDB):
        raise _CredsUsage(f"configuration block {args.cfg_block} is not a local credentials store")
    if args.creds_command == "create" and args.hash is not None:
        if not isinstance(db, PassTable):
            raise _CredsUsage("--hash cannot be used with non-pass_table credentials DB")
        if args.hash not in hashing.SCHEMES:
            raise _CredsUsage(
                f"unknown hash function {args.hash!r}, available: {', '.join(hashing.SCHEMES)}"
            )
    container.prepare_dirs()  # a relative SQLite path lives in state_dir
    return db, container.modules[before:]


async def _with_modules(modules: list[Module], work: Callable[[], Awaitable[int]]) -> int:
    """Start `modules` in order, run `work`, stop what started in reverse."""
    started: list[Module] = []
    try:
        for module in modules:
            started.append(module)  # stopped even if its own start fails
            await module.start()
        return await work()
    finally:
        for module in reversed(started):
            try:
                await module.stop()
            except Exception as exc:
                log.get("").error("module failed to stop", err=exc, module=repr(module))


async def _creds_action(args: argparse.Namespace, db: UserDB, password: str) -> int:
    action = args.creds_command
    if action == "list":
        users = sorted(await db.list_users())
        if not users:
            print("No users.", file=sys.stderr)
        for user in users:
            print(user)
    elif action == "create":
        if args.hash is not None:
            await db.create_user(args.username, password, scheme=args.hash)
        else:
            await db.create_user(args.username, password)
    elif action == "password":
        await db.set_user_password(args.username, password)
    else:
        await db.delete_user(args.username)
    return EXIT_OK


def cmd_creds(args: argparse.Namespace) -> int:
    action = args.creds_command
    if action != "list" and not args.username:
        return _error("USERNAME is required", EXIT_CONFIG)
    try:
        db, modules = _open_block(args)
        password = ""
        if action == "remove":
            if not args.yes and _stdin_is_terminal() and not _confirm(CONFIRM_DELETE):
                print("Cancelled.", file=sys.stderr)
                return EXIT_FAILURE
        elif action in ("create", "password"):
            prompt = "Enter password for new user" if action == "create" else "Enter new password"
            password = _read_password(args.password, prompt)
            if not password:
                # The endpoints refuse empty passwords (docs/server.md, "Authentication").
                raise _CredsUsage("the password is empty")
        return asyncio.run(_with_modules(modules, lambda: _creds_action(args, db, password)))
    except _CredsUsage as exc:
        return _error(str(exc), EXIT_CONFIG)
    except ConfigError as exc:
        if exc.file:
            return config_error(exc)
        return _error(exc.message, EXIT_CONFIG)
    except KittiwakeError as exc:
        return _error(str(exc), EXIT_FAILURE)


def cmd_hash(args: argparse.Namespace) -> int:
    if args.hash not in hashing.SCHEMES:
        return _error(
            f"unknown hash function {args.hash!r}, available: {', '.join(hashing.SCHEMES)}",
            EXIT_CONFIG,
        )
    options = hashing.HashOptions(
        bcrypt_cost=args.bcrypt_cost,
        argon2_time=args.argon2_time,
        argon2_memory=args.argon2_memory,
        argon2_threads=args.argon2_threads,
    )
    try:
        options.check()
        password = _read_password(args.password, "Password")
    except (ValueError, _CredsUsage) as exc:
        return _error(str(exc), EXIT_CONFIG)
    if password == "":
        print("WARNING: This is the hash of an empty string", file=sys.stderr)
    if password.strip() != password:
        print("WARNING: There is leading/trailing whitespace in the string", file=sys.stderr)
    try:
        entry = hashing.hash_password(password, args.hash, options)
    except ValueError as exc:
        return _error(str(exc), EXIT_FAILURE)
    print(entry)
    return EXIT_OK


def add_creds_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    creds = commands.add_parser(
        "creds", help="manage the users of an auth.pass_table credentials store"
    )
    actions = creds.add_subparsers(dest="creds_command", metavar="ACTION", required=True)
    helps = {
        "create": "create a user",
        "remove": "delete a user",
        "password": "set a user's password (bcrypt)",
        "list": "list the users",
    }
    for name, text in helps.items():
        p = actions.add_parser(name, help=text)
        config_option(p)
        p.add_argument(
            "--cfg-block",
            metavar="NAME",
            default=DEFAULT_CFG_BLOCK,
            help=f"configuration block to manage (default: {DEFAULT_CFG_BLOCK})",
        )
        p.add_argument(
            "-p",
            "--password",
            metavar="PASSWORD",
            help="the password (default: read from stdin, prompting on a terminal); "
            "it stays in shell history: for tests only",
        )
        if name != "list":
            p.add_argument("username", metavar="USERNAME", nargs="?")
        if name == "create":
            p.add_argument(
                "--hash",
                metavar="ALGO",
                help=f"hash algorithm: {', '.join(hashing.SCHEMES)} (default: bcrypt)",
            )
        if name == "remove":
            p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
        p.set_defaults(handler=cmd_creds)

    defaults = hashing.HashOptions()
    h = commands.add_parser("hash", help="print a password hash for auth.pass_table tables")
    h.add_argument(
        "-p", "--password", metavar="PASSWORD", help="the password (default: read from stdin)"
    )
    h.add_argument(
        "--hash",
        metavar="ALGO",
        default=hashing.DEFAULT_SCHEME,
        help=f"{', '.join(hashing.SCHEMES)} (default: {hashing.DEFAULT_SCHEME})",
    )
    h.add_argument("--bcrypt-cost", metavar="N", type=int, default=defaults.bcrypt_cost)
    h.add_argument("--argon2-time", metavar="N", type=int, default=defaults.argon2_time)
    h.add_argument("--argon2-memory", metavar="KIB", type=int, default=defaults.argon2_memory)
    h.add_argument("--argon2-threads", metavar="N", type=int, default=defaults.argon2_threads)
    h.set_defaults(handler=cmd_hash)
