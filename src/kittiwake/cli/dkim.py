"""`kittiwake dkim keygen`: make a DKIM signing key and print its DNS record.

The key goes where `modify.dkim` looks for it (docs/cli.md, "kittiwake dkim
keygen"): `--key-path` is the same template as the module's `key_path`
directive, relative to the configuration's `state_dir`; `-o FILE` names
the file itself. An existing key is never replaced: its record is printed.
Standard output is valid zone-file text (the record, and comments), so it
can be pasted into a zone or piped; what happened goes to standard error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from kittiwake.cli.common import (
    EMBEDDED_NAME,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    config_error,
    load_config,
    resolve_config,
)
from kittiwake.container import Container
from kittiwake.dkim import keys
from kittiwake.errors import ConfigError

__all__ = ["add_dkim_commands", "cmd_keygen"]


def _error(message: str, status: int) -> int:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return status


def _state_dir(config: str | None) -> str:
    """`state_dir` of the configuration `run` would read (its globals only)."""
    path = resolve_config(config)
    container = Container(load_config(path), config_file=path or EMBEDDED_NAME)
    container.parse_globals()
    return container.globals.state_dir


def zone_text(name: str, record: str) -> str:
    """The record as zone-file lines: strings of 255 bytes at most (RFC 1035 §3.3.14)."""
    strings = " ".join(f'"{part}"' for part in keys.zone_strings(record))
    return f"{name}. IN TXT ( {strings} )\n; record text: {record}\n"


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        name = keys.record_name(args.domain, args.selector)
    except ValueError as exc:
        return _error(f"invalid domain or selector: {exc}", EXIT_CONFIG)
    try:
        if args.output is not None:
            path = os.path.abspath(args.output)
        else:
            state_dir = _state_dir(args.config)
            path = keys.key_path(args.key_path, args.domain, args.selector, state_dir)
    except ConfigError as exc:
        if exc.file:
            return config_error(exc)
        return _error(exc.message, EXIT_CONFIG)
    try:
        try:
            key, _ = keys.load(path)
            print(f"{path}: existing {key.describe()} key kept", file=sys.stderr)
        except FileNotFoundError:
            key = keys.generate(args.algo)
            if keys.create_key_file(path, key):
                print(f"{path}: new {args.algo} key", file=sys.stderr)
            else:  # made by someone else meanwhile
                key, _ = keys.load(path)
                print(f"{path}: existing {key.describe()} key kept", file=sys.stderr)
    except (keys.KeyFileError, OSError) as exc:
        return _error(str(exc), EXIT_FAILURE)
    print(f"; publish at {name}")
    sys.stdout.write(zone_text(name, key.dns_record()))
    return EXIT_OK


def add_dkim_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    dkim = commands.add_parser("dkim", help="DKIM signing keys")
    actions = dkim.add_subparsers(dest="dkim_command", metavar="ACTION", required=True)
    keygen = actions.add_parser(
        "keygen", help="make a signing key if missing and print its DNS record"
    )
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("selector", metavar="SELECTOR")
    keygen.add_argument(
        "--algo",
        choices=keys.ALGORITHMS,
        default="rsa2048",
        help="key type for a new key (default: rsa2048)",
    )
    where = keygen.add_mutually_exclusive_group()
    where.add_argument(
        "--key-path",
        metavar="TEMPLATE",
        default=keys.DEFAULT_KEY_PATH,
        help=f"as modify.dkim's key_path, relative to state_dir (default: {keys.DEFAULT_KEY_PATH})",
    )
    where.add_argument("-o", "--output", metavar="FILE", help="the key file itself")
    config_option(keygen)
    keygen.set_defaults(handler=cmd_keygen)
