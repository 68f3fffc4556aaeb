"""How many worker processes: the `workers` global directive and `run -j` (docs/workers.md).

`workers N` asks for N processes; `workers auto` for one per core this
process may run on (`os.sched_getaffinity`, so a CPU set given by
`taskset`, a container or systemd's `CPUAffinity=` is respected, not the
machine's total). `-j` on the command line wins over the directive. One
worker (the default) is the plain single process: no supervisor at all.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["AUTO", "MAX_WORKERS", "parse_count", "usable_cores"]

AUTO = "auto"
#: More processes than this is a typing mistake, not a machine.
MAX_WORKERS = 256


def usable_cores() -> int:
    """The cores this process may run on (at least 1)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        try:
            return max(1, len(affinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def parse_count(text: str) -> int:
    """`auto` or a whole number 1..MAX_WORKERS; ValueError otherwise."""
    if text == AUTO:
        return min(usable_cores(), MAX_WORKERS)
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"expected a number of processes or {AUTO}, got {text!r}")
    count = int(text)
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"expected 1 to {MAX_WORKERS} processes, got {count}")
    return count


def option(text: str) -> int:
    """`-j N|auto` for argparse."""
    try:
        return parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
