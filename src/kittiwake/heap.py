"""The garbage collector, set for a server that runs for months.

CPython frees nearly every object by reference counting the moment it is
no longer used; the cyclic collector is only for objects that refer to
each other in a ring. It runs after every 700 allocations of container
objects by default, and each run walks the objects of the generations it
collects. Two things make that costlier than it needs to be here:

- What is alive once the server has started (modules, the configuration,
  compiled patterns, the modules' tables) lives until it stops or reloads,
  yet the occasional full collection walks all of it again. `settle()`
  moves it into the permanent generation (`gc.freeze`), which collections
  skip.
- A message allocates a few thousand container objects, nearly all freed
  by reference counting before a collection could see them. With the
  youngest generation collected every `YOUNG` allocations instead of 700,
  the collector runs a fourteenth as often; what one run walks (the
  objects still alive since the last one) stays about the same.

Measured on the project's own harness (docs/bench.md), the two together
take the collector's share of a one-message session from about a tenth to
nothing. Cyclic garbage waits a little longer to be freed: at most
`YOUNG` objects' worth.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG", "settle"]

#: Container allocations between two collections of the youngest generation.
YOUNG = 10_000


def settle() -> None:
    """Collect, then keep what is alive now out of later collections.

    Called once the server (or a worker) has started, and after a reload
    once the old configuration is gone: `unfreeze` first, so what the old
    configuration left in rings is collected instead of kept for ever.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG, older, oldest)
