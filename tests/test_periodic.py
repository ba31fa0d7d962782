"""The periodic loop every background job runs on: timing as a pure function, the loop against real time."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.support import eventually
from waiter.aio import cancel_and_wait
from waiter.periodic import Periodic, next_delay


@pytest.mark.parametrize(
    ("interval", "failures", "jitter", "max_backoff", "draw", "expected"),
    [
        (1.0, 0, 0.0, 30.0, 0.7, 1.0),  # no jitter: the interval
        (1.0, 0, 0.1, 30.0, 0.0, 0.9),  # jitter spreads both ways
        (1.0, 0, 0.1, 30.0, 0.5, 1.0),
        (1.0, 0, 0.1, 30.0, 0.999999, 1.0999998),
        (1.0, 1, 0.1, 30.0, 0.0, 2.0),  # a failure doubles, without jitter
        (1.0, 3, 0.1, 30.0, 0.0, 8.0),
        (1.0, 10, 0.1, 30.0, 0.0, 30.0),  # capped
        (60.0, 1, 0.1, 30.0, 0.0, 60.0),  # the cap never shortens the interval itself
    ],
)
def test_next_delay(
    interval: float, failures: int, jitter: float, max_backoff: float, draw: float, expected: float
) -> None:
    assert next_delay(interval, failures, jitter=jitter, max_backoff=max_backoff, draw=draw) == pytest.approx(expected)


async def test_steps_repeat_and_a_wake_runs_one_at_once() -> None:
    calls: list[float] = []

    async def step() -> None:
        calls.append(asyncio.get_running_loop().time())

    loop = Periodic("test", step, interval=3600, jitter=0)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(0.05)
        assert calls == []  # the first step waits an interval
        loop.wake.set()
        await eventually(lambda: len(calls) == 1, "the woken step")
        loop.wake.set()
        await eventually(lambda: len(calls) == 2, "a second woken step")
    finally:
        await cancel_and_wait(task)

    fast = Periodic("fast", step, interval=0.01, jitter=0)
    task = asyncio.create_task(fast.run())
    try:
        await eventually(lambda: len(calls) >= 6, "timed steps")
    finally:
        await cancel_and_wait(task)


async def test_a_failing_step_is_logged_once_with_its_traceback_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    attempts = 0

    async def step() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise RuntimeError("boom")

    loop = Periodic("flaky job", step, interval=0.01, jitter=0, max_backoff=0.05)
    caplog.set_level(logging.INFO, logger="waiter.periodic")
    task = asyncio.create_task(loop.run())
    try:
        await eventually(lambda: attempts >= 5, "the job to recover", timeout=5)
    finally:
        await cancel_and_wait(task)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "flaky job failed" in tracebacks[0].getMessage()
    assert any("failed again (3 times in a row)" in r.getMessage() for r in caplog.records)
    assert any("works again after 3 failures" in r.getMessage() for r in caplog.records)
    assert loop.failures == 0


async def test_cancellation_stops_a_step_that_swallows_it() -> None:
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise TimeoutError("a client library turned the cancellation into its own timeout") from None

    loop = Periodic("stubborn", stubborn, interval=0.0, jitter=0)
    task = asyncio.create_task(loop.run())
    await started.wait()
    await cancel_and_wait(task, grace=1.0)
    assert task.cancelled()


async def test_a_job_may_start_at_once_choose_its_pace_after_each_step_and_end_itself() -> None:
    steps = 0
    paces: list[int] = []  # the steps done each time the loop asked for the next delay

    async def step() -> None:
        nonlocal steps
        steps += 1
        if steps == 3:
            job.stop()

    def pace() -> float:
        paces.append(steps)
        return 3600.0 if steps == 0 else 0.01  # waiting before the first step would never end

    job = Periodic("probes", step, pace, jitter=0, at_once=True)
    async with asyncio.timeout(5):
        await job.run()  # returns by itself once a step stopped it
    assert steps == 3
    assert paces == [1, 2]  # asked after every step but the one that stopped the job
