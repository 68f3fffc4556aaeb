"""Worker threads for synchronous libraries (pyspf, dkimpy, password hashing).

Strategy. A check that calls a synchronous library runs it here, never on
the event loop. Such work mostly waits (each DNS lookup it makes goes back
to the event loop through `Resolver.blocking()` and the thread waits for
the answer), so the pool is much larger than the number of cores: with 50
sessions each evaluating SPF, 50 threads wait on DNS at once while the
event loop answers them. asyncio's default executor (cores + 4 threads) is
left alone, so file work and checks never queue behind each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["POOL_SIZE", "FilePool", "run_in_worker"]

P = ParamSpec("P")
T = TypeVar("T")

#: Threads for checks: enough for every busy session to wait on DNS at once.
POOL_SIZE = 64


@functools.cache
def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """Made on first use: a configuration without such checks starts no threads."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=POOL_SIZE, thread_name_prefix="kittiwake-check"
    )


async def run_in_worker(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn(*args, **kwargs)` on a check worker thread and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), functools.partial(fn, *args, **kwargs))


class FilePool:
    """A module's own small pool of threads for blocking file-system work.

    `storage.maildir` and `target.queue` each have one, so a slow disk
    under one of them never delays the other, nor the checks. Threads are
    made on first use; `shutdown` waits for the work in flight (a commit
    whose client is owed a reply), off the event loop.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._size, thread_name_prefix=self._name
            )
        return self._pool

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on one of the threads and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self.executor(), fn, *args)

    async def shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True)
