"""Value syntaxes of the configuration language (docs/config-language.md,
"Values" and "Listen addresses").

Each parser takes the arguments of one directive and returns a Python value
or raises `ValueError` with an operator-readable message; the directive
reader (`directives.py`) adds the FILE:LINE.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0"}


def parse_bool(args: list[str]) -> bool:
    """A bare directive is true; otherwise exactly one yes/no-like word."""
    if not args:
        return True
    if len(args) > 1:
        raise ValueError("expected one boolean argument (yes or no)")
    word = args[0].lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"invalid boolean {args[0]!r}: use yes or no")


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")


def parse_int(args: list[str]) -> int:
    """Go `strconv.Atoi`: optional sign, ASCII digits, nothing else."""
    if len(args) != 1:
        raise ValueError("expected exactly one integer argument")
    if not _INT_RE.match(args[0]):
        raise ValueError(f"invalid integer {args[0]!r}")
    return int(args[0])


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # MICRO SIGN
    "μs": 1e-6,  # GREEK SMALL LETTER MU
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(args: list[str]) -> float:
    """Go `time.ParseDuration` over the arguments joined without separator.

    Returns seconds. Negative durations are refused: no timeout or period in
    a mail server can sensibly be negative.
    """
    if not args:
        raise ValueError("expected a duration such as 30s, 10m or 1h30m")
    text = "".join(args)
    orig = text
    sign = 1.0
    if text[:1] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f"invalid duration {orig!r}")
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError(
                f"invalid duration {orig!r}: use a number with a unit (h, m, s, ms, us, ns)"
            )
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if sign < 0 and total != 0:
        raise ValueError(f"duration {orig!r} must not be negative")
    return total


_SIZE_SUFFIX = {"G": 1024**3, "M": 1024**2, "K": 1024, "B": 1, "b": 1}


def parse_size(args: list[str]) -> int:
    """Data sizes: `32M`, `3M 5K`, `5b`; parts are summed; suffixes case-sensitive."""
    if not args:
        raise ValueError("expected a size such as 32M, 512K or 1G")
    total = 0
    for part in " ".join(args).split(" "):
        if not part:
            raise ValueError("invalid size: empty part (two spaces in a row)")
        digits = part.rstrip("GMKBb")
        suffix = part[len(digits) :]
        if not digits.isascii() or not digits.isdigit():
            raise ValueError(f"invalid size {part!r}: use digits followed by G, M, K or B")
        value = int(digits)
        if value == 0:
            continue
        if len(suffix) != 1:
            raise ValueError(f"invalid size {part!r}: needs one unit suffix G, M, K or B")
        total += value * _SIZE_SUFFIX[suffix]
    return total


# -- writing values back (`kittiwake config show`) -------------------------------


def format_bool(value: bool) -> list[str]:
    return ["yes" if value else "no"]


_DURATION_OUT = (("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6), ("us", 10**3))


def format_duration(seconds: float) -> list[str]:
    """The shortest exact Go duration for `seconds`: 600.0 -> `10m`, 90.0 -> `90s`."""
    ns = round(seconds * 10**9)
    if ns == 0:
        return ["0s"]
    for unit, size in _DURATION_OUT:
        if ns % size == 0:
            return [f"{ns // size}{unit}"]
    return [f"{ns}ns"]


def format_size(size: int) -> list[str]:
    """`33554432` -> `32M`: the largest suffix that divides the size exactly."""
    for suffix in ("G", "M", "K"):
        unit = _SIZE_SUFFIX[suffix]
        if size and size % unit == 0:
            return [f"{size // unit}{suffix}"]
    return [f"{size}B"] if size else ["0"]


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A parsed endpoint address. `scheme` is `tcp`, `tls` or `unix`."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    original: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


_SCHEME_ALIASES = {
    "tcp": "tcp",
    "tls": "tls",
    "unix": "unix",
    "smtp": "tcp",
    "smtps": "tls",
    "lmtp+unix": "unix",
}


def parse_listen_address(text: str) -> ListenAddress:
    """`tcp://HOST:PORT`, `tls://HOST:PORT`, `unix://PATH` and the opaque forms.

    The port is mandatory and HOST must be an IP literal: a listener bound to
    whatever a name resolves to today is a surprise waiting for a DNS change.
    """
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise ValueError(f"invalid listen address {text!r}: expected tcp://HOST:PORT")
    scheme = scheme.lower()
    if scheme not in _SCHEME_ALIASES:
        if "://" not in text:  # `127.0.0.1:25`: the scheme was left out
            raise ValueError(
                f"invalid listen address {text!r}: expected tcp://HOST:PORT,"
                " tls://HOST:PORT or unix://PATH"
            )
        raise ValueError(f"unsupported scheme {scheme!r} in {text!r} (use tcp, tls or unix)")
    kind = _SCHEME_ALIASES[scheme]
    if rest.startswith("//"):
        rest = rest[2:]
    if kind == "unix":
        if not rest:
            raise ValueError(f"invalid listen address {text!r}: missing socket path")
        return ListenAddress("unix", path=rest, original=text)
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"invalid listen address {text!r}: unclosed '['")
        host, after = rest[1:end], rest[end + 1 :]
        if not after.startswith(":"):
            raise ValueError(f"invalid listen address {text!r}: port is required")
        port_text = after[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ValueError(f"invalid listen address {text!r}: port is required")
    if not port_text:
        raise ValueError(f"invalid listen address {text!r}: port is required")
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {text!r}")
    if not host:
        raise ValueError(f"invalid listen address {text!r}: an IP address is required")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"invalid listen address {text!r}: {host!r} is not an IP address"
        ) from None
    return ListenAddress(kind, host=str(ip), port=int(port_text), original=text)
