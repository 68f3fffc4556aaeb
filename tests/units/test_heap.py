"""`heap.settle`: what is alive is kept out of collections, and what a
reload left in rings is collected at the next settle (kittiwake/heap.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kittiwake import heap


class Ring:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_freezes_what_is_alive_and_sets_the_young_threshold() -> None:
    kept = Ring()
    heap.settle()
    assert gc.get_threshold()[0] == heap.YOUNG
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(kept)
    # A ring made after settling is collected as usual.
    later = Ring()
    ref = weakref.ref(later)
    del later
    gc.collect()
    assert ref() is None


def test_a_ring_alive_at_one_settle_is_collected_at_the_next() -> None:
    old = Ring()  # the old configuration, in a ring
    ref = weakref.ref(old)
    heap.settle()
    del old
    gc.collect()
    assert ref() is not None  # frozen: collections skip it
    heap.settle()  # after the reload: unfreeze, collect, freeze again
    assert ref() is None
