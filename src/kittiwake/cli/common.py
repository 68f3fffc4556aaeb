"""What every `kittiwake` command shares: exit codes, finding and building the configuration.

The commands (`run`, `config`, `creds`, `hash`, `version`) each live in a
module of this package and import from here, never from each other, so the
package has no import circle. Exit status: 0 on success and after a clean
shutdown; 2 for any configuration problem (printed as `FILE:LINE: message`,
before anything is bound) and for command-line misuse; 1 when the server
cannot start, when a `creds` operation fails or for anything unexpected.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from importlib import resources

from kittiwake.config import parser
from kittiwake.config.globals import PARSERS, Globals
from kittiwake.config.node import Node
from kittiwake.container import Container, DebugFlags
from kittiwake.errors import ConfigError
from kittiwake.module import Role

#: The file name errors in the embedded default configuration are reported with.
EMBEDDED_NAME = "<default>"
#: Stands for the machine's FQDN in default.conf; replaced when it is loaded.
HOSTNAME_PLACEHOLDER = "@FQDN@"
CONFIG_ENV = "KITTIWAKE_CONFIG"
LOCAL_CONFIG = "kittiwake.conf"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?\Z")


# -- configuration sources ----------------------------------------------------


def machine_fqdn() -> str:
    """The machine's fully qualified name, else its own name, else `localhost`.

    `getfqdn` answers `localhost` on a machine whose name resolves only to
    the loopback address (a common /etc/hosts): its own name (`vm`) still
    tells the operator which machine answered, so it is used then.
    """
    for name in (socket.getfqdn().strip(), socket.gethostname().strip()):
        if _HOSTNAME_RE.match(name) and name.rstrip(".").lower() not in _LOOPBACK_NAMES:
            return name
    return "localhost"


def default_config_text() -> str:
    """The embedded default configuration, with this machine's name filled in."""
    raw = resources.files("kittiwake").joinpath("default.conf").read_text(encoding="utf-8")
    return raw.replace(HOSTNAME_PLACEHOLDER, machine_fqdn())


def resolve_config(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The configuration file to read, or None for the embedded default.

    `-c FILE` wins, then `$KITTIWAKE_CONFIG`, then `./kittiwake.conf`. A file
    named explicitly (by `-c` or the variable) must exist: silently falling
    back to the default because of a typo would start the wrong server.
    """
    env = os.environ if environ is None else environ
    for path, origin in ((explicit, ""), (env.get(CONFIG_ENV) or None, f" (${CONFIG_ENV})")):
        if path is None:
            continue
        if not os.path.exists(path):
            raise ConfigError(f"no such file{origin}", path)
        return path
    return LOCAL_CONFIG if os.path.exists(LOCAL_CONFIG) else None


def load_config(path: str | None) -> list[Node]:
    """Parse the chosen file, or the embedded default when `path` is None."""
    if path is None:
        return parser.parse_text(default_config_text(), EMBEDDED_NAME, base_dir=os.getcwd())
    return parser.parse_file(path)  # unreadable files are ConfigErrors too


def log_target_error(container: Container, nodes: list[Node], exc: OSError) -> ConfigError:
    """A log file that cannot be opened, at the `log` directive's line."""
    where = next((n for n in nodes if n.name == "log"), None)
    message = f"log: cannot open {exc.filename}: {exc.strerror}"
    if where is None:
        return ConfigError(message, container.config_file)
    return where.error(message)


def build(
    args: argparse.Namespace,
    *,
    serving: bool = True,
    role: Callable[[Globals], Role] | None = None,
) -> tuple[Container, list[Node]]:
    """Parse and build the configuration named on the command line.

    `serving`: False for commands that only look things up in it (see
    `Container.serving`). `role`: the process's part, decided from the
    global directives before any module is configured (`kittiwake run`
    with `workers`, docs/workers.md).
    """
    path = resolve_config(args.config)
    nodes = load_config(path)
    container = Container(
        nodes, config_file=path or EMBEDDED_NAME, debug_flags=_debug_flags(args), serving=serving
    )
    if role is not None:
        container.shared.set_role(role(container.parse_globals()))
    container.build()
    return container, nodes


def read_places(nodes: list[Node], config_file: str) -> Globals:
    """`state_dir`, `runtime_dir` and `hostname` of a configuration, and nothing else.

    For the commands that only read the server's files or talk to it
    (`tls-report`, `sendmail`): they use the server's own parsers for these
    three, and leave the rest alone, so that a `tls` or `auth_map` global
    does not load keys or open databases the user running them may not
    read. Errors in other directives are the server's to report.
    """
    container = Container(nodes, config_file=config_file)
    places = container.globals
    for node in nodes:
        if node.name in ("hostname", "state_dir", "runtime_dir"):
            setattr(places, node.name, PARSERS[node.name](node, container))
    if not any(n.name == "runtime_dir" for n in nodes):
        places.runtime_dir = os.path.join(places.state_dir, "run")
    return places


def config_error(exc: ConfigError) -> int:
    """Report a configuration problem: `FILE:LINE: message` where there is a place."""
    text = str(exc) if exc.file else f"kittiwake: {exc.message}"
    print(text, file=sys.stderr, flush=True)
    return EXIT_CONFIG


# -- debug flags --------------------------------------------------------------


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 1-65535")
    return int(text)


def _host_port(text: str) -> str:
    """`IP:PORT` or `[IPv6]:PORT`, returned in that canonical form."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected HOST:PORT")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r}: HOST must be an IP address"
        ) from None
    if ip.version == 6 and not bracketed:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: write IPv6 as [ADDRESS]:PORT")
    number = _port(port)
    return f"[{ip}]:{number}" if ip.version == 6 else f"{ip}:{number}"


def _ca_file(text: str) -> str:
    """A readable PEM bundle, as an absolute path (the server may change directory)."""
    path = os.path.abspath(text)
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise argparse.ArgumentTypeError(f"{text}: not a readable PEM CA bundle: {exc}") from None
    return path


def add_debug_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("debug flags (tests and local experiments only)")
    group.add_argument(
        "--debug.dnsoverride",
        dest="debug_dnsoverride",
        metavar="HOST:PORT",
        type=_host_port,
        help="send every DNS query to this server",
    )
    group.add_argument(
        "--debug.smtpport",
        dest="debug_smtpport",
        metavar="PORT",
        type=_port,
        help="port target.remote connects to instead of 25",
    )
    group.add_argument(
        "--debug.mtastsport",
        dest="debug_mtastsport",
        metavar="PORT",
        type=_port,
        help="port MTA-STS policies are fetched from instead of 443",
    )
    group.add_argument(
        "--debug.mtastsca",
        dest="debug_mtastsca",
        metavar="FILE",
        type=_ca_file,
        help="PEM bundle of CAs trusted for MTA-STS policy fetches, besides the system's",
    )


def _debug_flags(args: argparse.Namespace) -> DebugFlags:
    return DebugFlags(
        dns_override=getattr(args, "debug_dnsoverride", None),
        smtp_port=getattr(args, "debug_smtpport", None),
        mtasts_port=getattr(args, "debug_mtastsport", None),
        mtasts_ca=getattr(args, "debug_mtastsca", None),
    )


def config_option(p: argparse.ArgumentParser) -> None:
    """`-c FILE`, as every command that reads the configuration takes it."""
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"configuration file (default: ${CONFIG_ENV}, then ./{LOCAL_CONFIG}, "
        "then the embedded default)",
    )
