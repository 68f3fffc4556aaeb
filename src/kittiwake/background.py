"""Background tasks of modules: stopping one cleanly.

Several modules keep a task for their whole life (a file table re-reading
its file, a certificate loader watching its files, Maildir sweeping stale
tmp/ files). Stopping one is always the same: cancel it and wait until it
has really finished, so nothing of it runs after `stop` returns.
"""

from __future__ import annotations

import asyncio
import contextlib


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (if any) and wait for it to end; its cancellation is expected."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
