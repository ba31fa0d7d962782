"""One periodic loop for the router's background jobs (autoscaler, reaper, each instance's health probes, ...).

Every job has the same needs: run a step every ``interval`` (with a little jitter so routers started together do
not beat in step), sooner when something wakes it (never more often than ``min_gap``), keep going when a step
fails but back off and not flood the log, and stop at once when cancelled, even when a client library turned the
cancellation into a timeout it swallowed (see ``waiter.aio``). A job whose pace depends on what it found (health
probes: dense while an instance starts) gives ``interval`` as a function, asked after every step; a step that
finds its job done calls ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from waiter.aio import raise_if_cancelling

log = logging.getLogger(__name__)


def next_delay(interval: float, failures: int, *, jitter: float, max_backoff: float, draw: float) -> float:
    """Seconds until the next step: ``interval`` spread by ``jitter`` (a fraction; ``draw`` in [0, 1) picks where),
    doubled for every consecutive failure up to ``max_backoff`` (never below ``interval``)."""
    if failures > 0:
        return max(interval, min(interval * 2.0**failures, max_backoff))
    return interval * (1 + jitter * (2 * draw - 1))


class Periodic:
    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[None]],
        interval: float | Callable[[], float],
        *,
        wake: asyncio.Event | None = None,
        min_gap: float = 0.0,
        jitter: float = 0.1,
        max_backoff: float = 30.0,
        at_once: bool = False,
    ) -> None:
        """``step`` runs every ``interval`` seconds, and ``min_gap`` after the previous one when ``wake`` is set;
        with ``at_once`` the first step runs when ``run`` starts instead of an interval later."""
        self.name = name
        self.step = step
        self.interval = interval
        self.wake = wake or asyncio.Event()
        self.min_gap = min_gap
        self.jitter = jitter
        self.max_backoff = max_backoff
        self.at_once = at_once
        self.failures = 0  # consecutive failed steps
        self._stopped = False

    def stop(self) -> None:
        """For a step that finds its job done: ``run`` returns when that step does (from outside, cancel the task)."""
        self._stopped = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + (0.0 if self.at_once else self._delay())
        last = float("-inf")
        while True:
            try:
                async with asyncio.timeout_at(due):
                    await self.wake.wait()
                await asyncio.sleep(max(0.0, last + self.min_gap - loop.time()))
            except TimeoutError:
                pass
            timed = loop.time() >= due
            self.wake.clear()
            last = loop.time()
            await self._step()
            if self._stopped:
                return
            if timed or self.failures:
                due = last + self._delay()

    def _delay(self) -> float:
        interval = self.interval() if callable(self.interval) else self.interval
        return next_delay(
            interval, self.failures, jitter=self.jitter, max_backoff=self.max_backoff, draw=random.random()
        )

    async def _step(self) -> None:
        try:
            await self.step()
        except Exception:
            raise_if_cancelling()
            self.failures += 1
            if self.failures == 1:
                log.exception("%s failed; trying again with back-off", self.name)
            else:
                log.warning("%s failed again (%d times in a row)", self.name, self.failures, exc_info=False)
            return
        if self.failures:
            log.info("%s works again after %d failures", self.name, self.failures)
        self.failures = 0
