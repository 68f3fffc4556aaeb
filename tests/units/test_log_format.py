"""`log.format_line`: values quoted when they must be, and the kept
formatting of short strings bounded and never changing a line."""

from __future__ import annotations

import json

import pytest

from kittiwake import log

CASES = [
    ("ok", "k=ok"),
    ("", 'k=""'),
    ("b c", 'k="b c"'),
    ("x=y", 'k="x=y"'),
    ('q"', 'k="q\\""'),
    ("back\\", 'k="back\\\\"'),
    ("tab\there", 'k="tab\\there"'),
    ("line\r\nbreak", 'k="line\\r\\nbreak"'),
    ("é", "k=é"),
    (7, "k=7"),
    (None, "k=None"),
]


@pytest.mark.parametrize(("value", "field"), CASES)
def test_values_are_quoted_when_they_must_be(value: object, field: str) -> None:
    for _ in range(2):  # the second time from what was kept
        assert log.format_line("info", "smtp", "m", {"k": value}, as_json=False) == (
            f"info smtp: m {field}"
        )


def test_the_kept_values_are_bounded_and_lines_stay_the_same() -> None:
    log._formatted.clear()
    values = [f"v{i} {'x' if i % 2 else ''}" for i in range(log._KEEP)]
    first = [log.format_line("info", "", "m", {"k": v}, as_json=False) for v in values]
    assert len(log._formatted) == log._KEEP  # at the bound: all kept
    log.format_line("info", "", "m", {"k": "one more"}, as_json=False)
    assert len(log._formatted) == 1  # past it: started afresh
    again = [log.format_line("info", "", "m", {"k": v}, as_json=False) for v in values]
    assert again == first
    # A long value is formatted every time, never kept.
    long = "a b" * log._KEEP_LEN
    line = log.format_line("info", "", "m", {"k": long}, as_json=False)
    assert line == f"info m k={json.dumps(long)}"
    assert ("k", long) not in log._formatted
