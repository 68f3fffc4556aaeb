"""The warning for state each worker keeps alone (docs/workers.md).

Unless the counters of `limits`, the connection caps and `auth_ratelimit`
live in a store every process shares (`state.redis`, docs/state.md), each
worker counts only what it sees itself: with N workers a client may open up to N times
`max_connections_per_ip`, and a password guesser spread over the workers
gets N times the failures before it is locked out. `kittiwake config
check` and `kittiwake run` say so, once per directive, at its line, so
the operator decides knowingly.
"""

from __future__ import annotations

from kittiwake import log
from kittiwake.container import Container

__all__ = ["warn_per_process_state"]


def warn_per_process_state(container: Container, workers: int) -> int:
    """Log one warning per directive counted per worker; how many."""
    if workers <= 1:
        return 0
    logger = log.get("")
    found = {
        (node.file, node.line, what)
        for endpoint in container.endpoints
        for what, node in getattr(endpoint, "per_process_state", [])
    }
    for file, line, what in sorted(found):  # file order
        logger.warn(
            f"{what} is counted by each of the {workers} workers on its own, "
            "so its bounds hold per worker, not for the whole server "
            "(docs/workers.md)",
            file=file,
            line=line,
        )
    return len(found)
