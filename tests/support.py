"""Tools every test module shares: free ports, one poll-until-true helper, scheduler change events."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(
    predicate: Callable[[], Awaitable[Any] | Any], what: str = "condition", timeout: float = 10.0
) -> float:
    """Poll ``predicate`` (plain or async) until it is true; the seconds it took. Fails after ``timeout``.

    For facts that send no event (files, sockets, another process's state); where an event exists, wait on it.
    """
    start = time.monotonic()
    while True:
        outcome = predicate()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Changes:
    """Scheduler change notifications as an event: ``until`` wakes on each change instead of polling."""

    def __init__(self, scheduler: Any) -> None:
        self.calls: list[str] = []
        self._changed = asyncio.Event()
        scheduler.subscribe(self)

    def __call__(self, service_id: str) -> None:
        self.calls.append(service_id)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
