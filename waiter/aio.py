"""Small asyncio helpers for background loops that must stop when told to.

On Python 3.11 a cancellation that lands while a client library's own timeout fires (redis-py, aiohttp) can come
out as a TimeoutError the loop handles and carries on, with the task still marked as cancelling. Loops call
``raise_if_cancelling`` after handling errors, and owners stop them with ``stop`` (which cancels again while a
task keeps running), so shutdown never hangs on a swallowed cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


def raise_if_cancelling() -> None:
    """Re-raise a cancellation of the current task that something below swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[Any], grace: float = 2.0) -> None:
    """Stop a background task for good, cancelling again while it keeps running."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=grace)


async def stop(tasks: Iterable[asyncio.Task[Any] | None], grace: float = 2.0) -> None:
    """Stop several background tasks at once."""
    await asyncio.gather(*(cancel_and_wait(t, grace) for t in tasks if t is not None))
