"""The `Date` field: maddy's date layouts over Go's `time.Parse`.

Its own module because it is a grammar of its own, unrelated to addresses:
submission (`server/submission.py`) refuses a message whose `Date` none of
maddy's layouts accepts, and dates a message that has none. The grammar is
the union of maddy's layouts: one regular expression plus the range checks
of Go's `time.Parse`. Values are read with `kittiwake.message.mailaddr.field_value`,
as maddy reads them.

Pure functions: no I/O, nothing logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["DateSyntaxError", "MailDate", "format_date", "parse_date"]


class DateSyntaxError(ValueError):
    """A `Date` value none of maddy's date layouts accepts."""


@dataclass(frozen=True, slots=True)
class MailDate:
    """The fields of a parsed `Date`; `zone` as written (`+0100`, `EST`, `GMT+5`).

    Not a `datetime`: Go accepts years 0000 and 2-digit years become
    1969-2068, and an alphabetic zone's offset is not known here anyway.
    """

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    zone: str


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY_KEYS = frozenset(d.lower() for d in _DAYS)
_MONTH_KEYS = {m.lower(): n for n, m in enumerate(_MONTHS, start=1)}

# One trailing comment: the first run of spaces/tabs before a `(`, to the end,
# if the value ends with `)`.
_TRAILING_COMMENT = re.compile(r"[ \t]+\(.*\)\Z")
# `[Mon, ]D Jan YYYY HH:MM[:SS[.frac]] ZONE`. A layout space matches one or
# more spaces (never a tab); without a weekday one space may precede the
# day (Go's `_2`). A 2-digit year is two characters for Go's `atoi`, which
# takes a sign (`-5`); a 4-digit one must start with a digit.
_DATE = re.compile(
    r"(?:(?P<dow>[A-Za-z]{3}), +| ?)"
    r"(?P<day>[0-9]{1,2}) +(?P<mon>[A-Za-z]{3}) +"
    r"(?:(?P<year4>[0-9]{4})|(?P<year2>[0-9]{2}|[+-][0-9])) +"
    r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:[.,][0-9]+)?)? +"
    r"(?P<zone>\S+)\Z"
)


def parse_date(text: str) -> MailDate:
    """Check and split a `Date` value the way maddy does; `DateSyntaxError` if bad.

    One trailing ` (comment)` is removed first. Fractional seconds are
    accepted and dropped (Go's `time.Parse` does so for any layout with
    seconds); the weekday is checked for spelling only; the day must exist in
    its month. Names of days and months are matched in any case.
    """
    value = _TRAILING_COMMENT.sub("", text, count=1)
    m = _DATE.match(value)
    if m is None:
        raise DateSyntaxError(f"date {text!r} could not be parsed")
    dow = m.group("dow")
    if dow is not None and dow.lower() not in _DAY_KEYS:
        raise DateSyntaxError(f"unknown day of week {dow!r}")
    month = _MONTH_KEYS.get(m.group("mon").lower())
    if month is None:
        raise DateSyntaxError(f"unknown month {m.group('mon')!r}")
    year4 = m.group("year4")
    if year4 is not None:
        year = int(year4)
    else:
        short = int(m.group("year2"))
        year = short + (1900 if short >= 69 else 2000)
    day, hour, minute = int(m.group("day")), int(m.group("hour")), int(m.group("minute"))
    second = int(m.group("second") or 0)
    if hour >= 24 or minute >= 60 or second >= 60:
        raise DateSyntaxError(f"time of day out of range in {text!r}")
    if not 1 <= day <= _days_in(month, year):
        raise DateSyntaxError(f"day out of range in {text!r}")
    zone = m.group("zone")
    if not _zone_ok(zone):
        raise DateSyntaxError(f"unrecognised time zone {zone!r}")
    return MailDate(year, month, day, hour, minute, second, zone)


def _days_in(month: int, year: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _zone_ok(zone: str) -> bool:
    """Whether Go's `time.Parse` takes `zone` for `-0700` or for `MST`.

    `±hhmm` with hh ≤ 24 and mm ≤ 60 (Go's bounds); `UTC`; `GMT` with an
    optional signed hour offset up to 23; a bare signed offset up to 23 of at
    least two digits (`+05`); three upper-case letters, four or five ending
    in `T`, `WITA`, or the mixed-case `ChST` and `MeST`.
    """
    digits = zone[1:]
    if len(zone) == 5 and zone[0] in "+-" and digits.isascii() and digits.isdigit():
        return int(digits[:2]) <= 24 and int(digits[2:]) <= 60
    if zone.startswith(("UTC", "GMT", "+", "-")):
        m = _ZONE_OFFSET.fullmatch(zone)
        hours = m and (m.group(1) or m.group(2))
        return m is not None and (not hours or int(hours) <= 23)
    return _ZONE_NAME.fullmatch(zone) is not None


_ZONE_OFFSET = re.compile(r"UTC|GMT(?:[+-]([0-9]+))?|[+-]([0-9]{2,})")
_ZONE_NAME = re.compile(r"ChST|MeST|WITA|[A-Z]{3}T?|[A-Z]{4}T")


def format_date(moment: datetime) -> str:
    """`Thu, 1 Jan 1970 00:00:00 +0000`: UTC, English names, day not zero-padded.

    A naive `moment` is taken to be UTC already.
    """
    t = moment if moment.tzinfo is None else moment.astimezone(UTC)
    return (
        f"{_DAYS[t.weekday()]}, {t.day} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} +0000"
    )
