"""Fixtures for the table tests; the harness itself is in table_harness.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from table_harness import PROBE, Harness, Probe

from kittiwake.module import register, unregister


@pytest.fixture(autouse=True, scope="session")
def _probe_registered() -> Iterator[None]:
    register(PROBE)(Probe)
    yield
    unregister(PROBE)


@pytest.fixture
async def kw(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.stop_all()


Condition = Callable[[], Awaitable[bool]]


@pytest.fixture
def wait_for() -> Callable[[Condition], Awaitable[None]]:
    """Poll an async condition until it holds; fail after five seconds."""

    async def wait(condition: Condition) -> None:
        deadline = time.monotonic() + 5.0
        while not await condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.02)

    return wait
