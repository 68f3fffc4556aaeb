"""MTA-STS texts: the `_mta-sts` TXT record and the policy file (RFC 8461 §3).

Both are read strictly, because a policy that is half understood is worse
than none: a sender that guesses wrong either refuses good mail (a bad
`enforce`) or lets a downgrade through. Whatever does not follow the
grammar is an error (`STSError`) and the caller treats the domain as one
without a usable policy, as RFC 8461 §3.1 and §3.2 require. Nothing here
does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "MAX_AGE_LIMIT",
    "Mode",
    "STSError",
    "STSPolicy",
    "mx_matches",
    "parse_policy",
    "parse_txt_records",
]

#: RFC 8461 §3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31_557_600

_TXT_VERSION = b"v=STSv1"
# RFC 8461 §3.1: fields are separated by ";" with optional white space;
# id is 1-32 letters and digits; extensions have a short name and a value
# of printable characters other than ";" and "=".
_FIELD = re.compile(rb"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)")
_ID = re.compile(rb"[A-Za-z0-9]{1,32}")
_DELIM = re.compile(rb"[ \t]*;[ \t]*")
# RFC 8461 §3.2: "key: value", the value printable (policy files are ASCII).
_LINE = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):[ \t]*([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)"
)
_MAX_AGE = re.compile(r"[0-9]{1,10}")
# A host name label (RFC 1123), for the MX patterns.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class STSError(ValueError):
    """A TXT record or policy file that does not follow RFC 8461."""


class Mode(Enum):
    """What the policy asks of senders (RFC 8461 §5)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class STSPolicy:
    """One parsed policy file."""

    mode: Mode
    max_age: int
    mx: tuple[str, ...]  # patterns, lowercase, no final dot
    text: tuple[str, ...]  # its lines, for TLS reports (RFC 8460 §4.4 policy-string)

    def matches(self, host: str) -> bool:
        """Whether the MX host name is one the policy lists (RFC 8461 §4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: equal names, or `*.` standing for exactly one leftmost label.

    `*.example.com` matches `mx.example.com` but neither `example.com` nor
    `a.mx.example.com`. Case and a final dot do not matter.
    """
    pattern = pattern.rstrip(".").lower()
    host = host.rstrip(".").lower()
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def parse_txt_records(records: list[bytes]) -> str | None:
    """The policy id the domain's `_mta-sts` TXT records announce, or None.

    RFC 8461 §3.1: records not starting with `v=STSv1` are ignored; if
    the rest is not exactly one record, or that one is malformed, the
    domain has no available policy (None; a malformed single record
    raises `STSError` so the log can say why).
    """
    candidates = [r for r in records if _starts_sts(r)]
    if not candidates:
        return None
    if len(candidates) > 1:
        raise STSError(f"{len(candidates)} v=STSv1 TXT records, exactly one is allowed")
    return _txt_id(candidates[0])


def _starts_sts(record: bytes) -> bool:
    head = record[: len(_TXT_VERSION)]
    rest = record[len(_TXT_VERSION) :]
    return head == _TXT_VERSION and (not rest or rest[:1] in b" \t;")


def _txt_id(record: bytes) -> str:
    rest = record[len(_TXT_VERSION) :]
    fields: list[bytes] = []
    pos = 0
    while pos < len(rest):
        delim = _DELIM.match(rest, pos)
        if delim is None:
            raise STSError(f"TXT record: expected ';' at {rest[pos:]!r}")
        pos = delim.end()
        if pos == len(rest):
            break  # one final delimiter is allowed
        field = _FIELD.match(rest, pos)
        if field is None:
            raise STSError(f"TXT record: malformed field at {rest[pos:]!r}")
        fields.append(field.group(0))
        pos = field.end()
    ids = [f.partition(b"=")[2] for f in fields if f.partition(b"=")[0] == b"id"]
    if len(ids) != 1:
        raise STSError(f"TXT record: expected one id field, found {len(ids)}")
    if _ID.fullmatch(ids[0]) is None:
        raise STSError("TXT record: id must be 1 to 32 letters and digits")
    return ids[0].decode("ascii")


def parse_policy(body: bytes) -> STSPolicy:
    """The policy file's fields (RFC 8461 §3.2), or `STSError`.

    Lines end with LF or CRLF. `version: STSv1`, `mode` and `max_age` are
    required once each; `mx` is required (one or more) unless the mode is
    `none`; unknown keys are ignored, as the RFC says, but must still be
    well-formed lines. A repeated single-valued key is an error: the RFC
    does not say which one wins, so neither is trusted.
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise STSError("policy: not ASCII text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    values: dict[str, list[str]] = {}
    kept: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.removesuffix("\r")
        if line == "":
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise STSError(f"policy: line {number} is not 'key: value'")
        values.setdefault(match[1], []).append(match[2])
        kept.append(line)
    for key in ("version", "mode", "max_age"):
        found = values.get(key, [])
        if len(found) != 1:
            raise STSError(f"policy: expected one {key} field, found {len(found)}")
    if values["version"][0] != "STSv1":
        raise STSError(f"policy: unknown version {values['version'][0]!r}")
    try:
        mode = Mode(values["mode"][0])
    except ValueError:
        raise STSError(f"policy: unknown mode {values['mode'][0]!r}") from None
    age = values["max_age"][0]
    if _MAX_AGE.fullmatch(age) is None or int(age) > MAX_AGE_LIMIT:
        raise STSError(f"policy: max_age {age!r} is not a number of seconds up to {MAX_AGE_LIMIT}")
    patterns = tuple(_mx_pattern(p) for p in values.get("mx", []))
    if not patterns and mode is not Mode.NONE:
        raise STSError("policy: no mx field")
    return STSPolicy(mode, int(age), patterns, tuple(kept))


def _mx_pattern(value: str) -> str:
    """An `mx` value: a host name, optionally `*.` and a name of two labels or more."""
    pattern = value.rstrip(".").lower()
    name = pattern.removeprefix("*.")
    labels = name.split(".")
    if not name or any(_LABEL.fullmatch(label) is None for label in labels):
        raise STSError(f"policy: mx {value!r} is not a host name pattern")
    if pattern.startswith("*.") and len(labels) < 2:
        raise STSError(f"policy: mx {value!r} matches a whole top-level domain")
    return pattern
