"""The `Received` trace field the first pipeline adds (docs/server.md, "Received").

`from HELO (RDNS [IP]) by HOSTNAME (envelope-sender <SENDER>) with PROTO id ID; DATE`

Names are written in A-labels unless the transaction used SMTPUTF8, where
U-labels are allowed (RFC 6531 §3.7.3); a part whose name cannot be put in
the needed form is left out rather than written wrongly. Everything taken
from the client is stripped of CR and LF so it cannot start a new header
field. The date is formatted by hand with English names, because
`strftime` follows the process locale and a trace field must not.
"""

from __future__ import annotations

import datetime as _dt
import functools
import ipaddress
import time
from collections.abc import Callable

from kittiwake.address import NormalizationError, split, to_alabel_domain, to_ulabel_domain
from kittiwake.message import MsgMeta
from kittiwake.message.header import fold

__all__ = ["Clock", "format_date", "local_now", "received_field", "received_value"]

Clock = Callable[[], _dt.datetime]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def local_now() -> _dt.datetime:
    """The default clock: now, in the server's local time zone.

    Finding the zone's offset asks the C library each time, so the zone is
    kept for the current second: every message of a busy second shares it,
    and a change of offset (summer time) is seen within a second.
    """
    now = time.time()
    second = int(now)
    if _zone[0] != second:
        _zone[0] = second
        _zone[1] = _dt.datetime.fromtimestamp(now).astimezone().tzinfo
    return _dt.datetime.fromtimestamp(now, _zone[1])  # type: ignore[arg-type]


_zone: list[object] = [None, None]


def format_date(when: _dt.datetime) -> str:
    """`format_date` with the text kept for the current second (every message
    of a busy second carries the same date)."""
    key = (when.timestamp() // 1, when.utcoffset())
    if _last[0] != key:
        _last[0], _last[1] = key, _format_date(when)
    return str(_last[1])


_last: list[object] = [None, ""]


def _format_date(when: _dt.datetime) -> str:
    """`Tue, 05 Mar 2024 10:00:00 +0100` (RFC 5322 §3.3 with a numeric zone).

    A naive datetime is taken as UTC.
    """
    offset = when.utcoffset() or _dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return (
        f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hours:02d}{mins:02d}"
    )


_CONTROLS = dict.fromkeys((*range(32), 127))


def _clean(text: str) -> str:
    """No control character ever reaches the header, whatever DNS answered."""
    return text if text.isprintable() else text.translate(_CONTROLS)


def _domain(name: str, utf8: bool) -> str | None:
    """`name` in the IDNA form the transaction allows, or None if impossible."""
    try:
        return to_ulabel_domain(name) if utf8 else to_alabel_domain(name)
    except (NormalizationError, UnicodeError, ValueError):
        return None


def _address(addr: str, utf8: bool) -> str | None:
    try:
        local, domain = split(addr)
    except NormalizationError:
        return None
    if not utf8 and not local.isascii():
        return None  # no ASCII form of a UTF-8 local part exists
    if not domain:
        return local
    converted = _domain(domain, utf8)
    return None if converted is None else f"{local}@{converted}"


@functools.lru_cache(maxsize=1024)
def _ip_text(ip: str) -> str:
    """Plain text form; an IPv4-mapped IPv6 address is shown dotted, as Go does."""
    try:
        parsed = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def received_value(meta: MsgMeta, hostname: str, now: _dt.datetime) -> str | None:
    """The field value, or None for a locally generated message (no connection)."""
    conn = meta.conn
    if conn is None:
        return None
    head = _head(
        conn.proto if not meta.dont_trace_sender else "",
        conn.helo,
        conn.remote_ip,
        conn.rdns,
        hostname,
        meta.original_from,
        conn.proto,
        meta.smtp.smtputf8,
    )
    return f"{head}id {meta.id}; {format_date(now)}"


@functools.lru_cache(maxsize=256)
def _head(
    traced: str,
    helo: str,
    ip: str | None,
    rdns: str | None,
    hostname: str,
    sender: str,
    proto: str,
    utf8: bool,
) -> str:
    """The field's clauses before `id`, each followed by a space: the same
    for every message of a client (its names, ours, the sender), so made
    once and kept. `traced` is the protocol when the client is traced
    (not for submission), else ""."""
    parts: list[str] = []
    if "SMTP" in traced or "LMTP" in traced:
        helo_name = _domain(helo, utf8) if helo else None
        if helo_name:
            parts.append(f"from {_clean(helo_name)}")
        if ip is not None:
            rdns = rdns[:-1] if rdns and rdns.endswith(".") else rdns
            name = _domain(rdns, utf8) if rdns else None
            prefix = f"{_clean(name)} " if name else ""
            parts.append(f"({prefix}[{_clean(_ip_text(ip))}])")
    if hostname:
        ours = _domain(hostname, utf8)
        if ours:
            parts.append(f"by {_clean(ours)}")
    if sender:
        address = _address(sender, utf8)
        if address is not None:
            parts.append(f"(envelope-sender <{_clean(address)}>)")
    if proto:
        parts.append(f"with {'UTF8' if utf8 else ''}{proto}")
    return "".join(f"{part} " for part in parts)


def received_field(meta: MsgMeta, hostname: str, now: _dt.datetime) -> bytes | None:
    """The whole folded field as it is written into the header, with CR LF."""
    value = received_value(meta, hostname, now)
    return None if value is None else fold("Received", value)
