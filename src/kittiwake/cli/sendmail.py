"""`kittiwake sendmail`: the sendmail command line, for cron jobs and scripts (docs/sendmail.md).

Strategy: the options are sendmail's, read the way sendmail reads them
(POSIX getopt: `-oi` is option `o` with value `i`, `-fSENDER` and `-f
SENDER` are the same), so this command cannot go through the argparse
parser of the other commands; `kittiwake.cli.main` hands it the rest of
the command line as it is. Options sendmail programs pass out of habit
(`-odi`, `-oem`, `-v`, `-N`, ...) are accepted and ignored; modes this
command does not have (`-bs`, `-bp`, `-q`, ...) are usage errors, never
silently treated as "send".

The message is read from stdin (kittiwake/sendmail/message.py), the
server and its endpoint found in the configuration
(kittiwake/sendmail/endpoint.py), and the transaction run
(kittiwake/sendmail/deliver.py), whose outcome is the exit status.
"""

from __future__ import annotations

import email.utils
import getopt
import os
import pwd
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from kittiwake.cli.common import (
    EMBEDDED_NAME,
    load_config,
    machine_fqdn,
    read_places,
    resolve_config,
)
from kittiwake.errors import ConfigError
from kittiwake.sendmail import deliver as dl
from kittiwake.sendmail.endpoint import Target, from_config, from_url
from kittiwake.sendmail.message import read_message

__all__ = ["console", "main"]

PROG = "kittiwake sendmail"
USAGE = (
    f"usage: {PROG} [-t] [-i|-oi] [-f SENDER] [-F FULLNAME] [-c FILE]"
    " [--server URL] [--auth-user USER --auth-password-file FILE] [--] [RECIPIENT...]"
)

#: Options that take a value and are ignored (what sendmail does with them
#: has no meaning here: -N DSN notify, -R DSN return, -V envelope id, -B
#: body type (8-bit data is detected), -L syslog label, -h hop count, -X
#: traffic log, -O long option, -e error mode).
_IGNORED_WITH_VALUE = "NRVBLhXOe"
#: Flags that are ignored: -v verbose, -m "me too", -n no aliases, -U
#: initial user submission, -G gateway, -A mode.
_IGNORED_FLAGS = "vmnUG"


class UsageError(Exception):
    """A command line this command cannot run (EX_USAGE)."""


@dataclass
class Options:
    extract: bool = False  # -t
    dot_ends: bool = True  # cleared by -i / -oi
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F
    config: str | None = None  # -c / -C
    server: str | None = None
    auth_user: str | None = None
    password_file: str | None = None
    recipients: list[str] = field(default_factory=list)
    help: bool = False


def parse(argv: Sequence[str]) -> Options:
    """The options of a sendmail command line; `UsageError` for what cannot run."""
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("-q"):  # -q, -q15m, -qR...: its value is optional
            raise UsageError(f"{arg}: there is no queue to run here (see kittiwake queue)")
    short = "tif:r:F:o:c:C:b:" + "".join(f"{c}:" for c in _IGNORED_WITH_VALUE) + _IGNORED_FLAGS
    long = ["server=", "auth-user=", "auth-password-file=", "config=", "help"]
    try:
        pairs, rest = getopt.gnu_getopt(list(argv), short, long)
    except getopt.GetoptError as exc:
        raise UsageError(str(exc)) from None
    opts = Options(recipients=rest)
    for name, value in pairs:
        if name == "-t":
            opts.extract = True
        elif name == "-i" or (name == "-o" and value == "i"):
            opts.dot_ends = False
        elif name in ("-f", "-r"):
            opts.sender = value
        elif name == "-F":
            opts.full_name = value
        elif name in ("-c", "-C", "--config"):
            opts.config = value
        elif name == "-b" and value != "m":
            raise UsageError(f"-b{value}: only -bm (deliver a message) is supported")
        elif name == "--server":
            opts.server = value
        elif name == "--auth-user":
            opts.auth_user = value
        elif name == "--auth-password-file":
            opts.password_file = value
        elif name == "--help":
            opts.help = True
    if (opts.auth_user is None) != (opts.password_file is None):
        raise UsageError("--auth-user and --auth-password-file go together")
    return opts


def _fail(status: int, *lines: str) -> int:
    for line in lines:
        print(f"{PROG}: {line}", file=sys.stderr)
    sys.stderr.flush()
    return status


def _qualify(address: str, hostname: str) -> str:
    """A bare user name gets the server's host name, as sendmail does."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address if "@" in address or not address else f"{address}@{hostname}"


def _invoking_user() -> tuple[str, str]:
    """(login name, full name from the password file) of the user running us."""
    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:
        return str(os.getuid()), ""
    return entry.pw_name, entry.pw_gecos.split(",", 1)[0]


def _bad_address(address: str) -> bool:
    return any(ord(c) <= 0x20 or ord(c) == 0x7F for c in address)


def run(opts: Options, stdin: bytes) -> int:
    """Send the message `stdin` holds as `opts` say; the exit status."""
    try:
        path = resolve_config(opts.config)
        nodes = load_config(path)
        places = read_places(nodes, path or EMBEDDED_NAME)
    except ConfigError as exc:
        return _fail(dl.EX_CONFIG, str(exc) if exc.file else exc.message)
    hostname = places.hostname or machine_fqdn()
    targets: list[Target]
    if opts.server is not None:
        try:
            targets = [from_url(opts.server, os.getcwd())]
        except ValueError as exc:
            return _fail(dl.EX_USAGE, str(exc))
    else:
        targets = from_config(nodes, places.runtime_dir, auth=opts.auth_user is not None)
        if not targets:
            kind = "submission endpoint" if opts.auth_user else "smtp or lmtp endpoint"
            return _fail(
                dl.EX_CONFIG,
                f"{path or EMBEDDED_NAME} has no {kind} on a Unix socket or a loopback"
                " address; name one with --server (docs/sendmail.md)",
            )
    auth: tuple[str, str] | None = None
    if opts.auth_user is not None and opts.password_file is not None:
        try:
            with open(opts.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as exc:
            return _fail(dl.EX_NOINPUT, f"{opts.password_file}: {exc.strerror}")
        auth = (opts.auth_user, password)

    user, gecos = _invoking_user()
    # Logged in, the natural sender is the login (a submission endpoint
    # lets a user send only as themselves); otherwise the Unix user.
    default_sender = opts.auth_user if opts.auth_user is not None else user
    sender = default_sender if opts.sender is None else opts.sender
    sender = "" if sender in ("", "<>") else _qualify(sender, hostname)
    message = read_message(stdin, dot_ends=opts.dot_ends)
    rcpts = [_qualify(a, hostname) for a in _split(opts.recipients)]
    if opts.extract:
        # Postfix's reading of -t: header recipients are added to the
        # command line's; Bcc is removed so no recipient sees the others.
        rcpts += [_qualify(a, hostname) for a in message.addresses("to", "cc", "bcc")]
        message.remove("bcc")
    rcpts = list(dict.fromkeys(r for r in rcpts if r))
    if not rcpts:
        where = "on the command line or in To, Cc, Bcc" if opts.extract else "on the command line"
        return _fail(dl.EX_USAGE, f"no recipients {where}")
    for address in (sender, *rcpts):
        if _bad_address(address):
            return _fail(dl.EX_DATAERR, f"invalid address {address!r}")
    full_name = opts.full_name if opts.full_name is not None else os.environ.get("NAME", gecos)
    message.complete(
        sender=sender or f"MAILER-DAEMON@{hostname}", full_name=full_name, hostname=hostname
    )
    job = dl.Submission(
        sender=sender,
        rcpts=rcpts,
        data=message.to_bytes(),
        hostname=hostname,
        eight_bit=message.eight_bit(),
        smtputf8=not all(a.isascii() for a in (sender, *rcpts)),
        auth=auth,
    )
    outcome = dl.deliver(targets, job)
    return _fail(outcome.status, *outcome.messages)


def _split(arguments: list[str]) -> list[str]:
    """Recipients as given: one per argument, or several separated by commas."""
    return [addr for _, addr in email.utils.getaddresses(arguments) if addr]


def main(argv: Sequence[str]) -> int:
    """`kittiwake sendmail ARGS...`: parse, read stdin, send; the exit status."""
    try:
        opts = parse(argv)
    except UsageError as exc:
        return _fail(dl.EX_USAGE, str(exc), USAGE)
    if opts.help:
        print(USAGE)
        print(
            "Reads a message on stdin and hands it to the local kittiwake server"
            " (docs/sendmail.md)."
        )
        return dl.EX_OK
    try:
        data = sys.stdin.buffer.read()
    except OSError as exc:
        return _fail(dl.EX_NOINPUT, f"cannot read the message: {exc.strerror}")
    try:
        return run(opts, data)
    except Exception as exc:  # a bug: say so the sysexits way, not with a traceback
        return _fail(dl.EX_SOFTWARE, f"internal error: {type(exc).__name__}: {exc}")


def console() -> int:
    """The `kittiwake-sendmail` console script (a sendmail drop-in to link to)."""
    return main(sys.argv[1:])
