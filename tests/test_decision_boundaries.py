"""Boundary rows of the pure decisions: the edges a mutation (``<=`` for ``<``, ``+`` for ``-``) would move.

Each row sits exactly on, or one step beside, a rule's edge, and the times start at an arbitrary origin rather
than 0, so ``now - x`` turned into ``now + x`` (or an origin-dependent shortcut) cannot pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import pytest

from waiter.lifecycle import ServiceActivity, deployment_error, in_fallback, is_expired, reap_reason
from waiter.reservation import Reservations
from waiter.scaling import BurstSettings, Counts, ScalingSettings, ScalingState, decide
from waiter.scheduler.base import Instance

T0 = 1_800_000_123.25  # an arbitrary time origin
BASE = ScalingSettings(
    min_instances=1,
    max_instances=50,
    concurrency_level=1,
    scale_factor=1,
    scale_up_factor=0.999,
    scale_down_factor=0.999,
    jitter_threshold=0.5,
    expired_instance_restart_rate=0.1,
    burst=BurstSettings(enabled=False),
)


def step(
    settings: ScalingSettings, *, total: int, outstanding: int, target: float, healthy: int, **counts: Any
) -> tuple[int, int]:
    """(amount, scale_to) one tick after a previous decision."""
    decision = decide(settings, Counts(outstanding, total, total, healthy, **counts), ScalingState(target, T0 - 1), T0)
    return decision.amount, decision.scale_to


@pytest.mark.parametrize(
    ("changes", "row", "expected"),
    [
        # "enough instances": no scale-up while the instances cover the need (ideal <= total) at or above min
        pytest.param(
            {}, {"total": 3, "outstanding": 3, "target": 5.0, "healthy": 3}, (0, 3), id="ideal-equals-total"
        ),
        pytest.param({}, {"total": 3, "outstanding": 4, "target": 5.0, "healthy": 3}, (1, 4), id="ideal-one-above"),
        pytest.param(
            dict(min_instances=4),
            {"total": 3, "outstanding": 0, "target": 5.0, "healthy": 3},
            (1, 4),
            id="below-min-scales-even-when-covered",
        ),
        # the jitter threshold: a gap of exactly the threshold moves, a hair below it does not
        pytest.param(
            dict(scale_up_factor=0.5, jitter_threshold=0.5),
            {"total": 2, "outstanding": 3, "target": 2.0, "healthy": 2},
            (1, 3),
            id="gap-equals-jitter",
        ),
        pytest.param(
            dict(scale_up_factor=0.49, jitter_threshold=0.5),
            {"total": 2, "outstanding": 3, "target": 2.0, "healthy": 2},
            (0, 2),
            id="gap-below-jitter",
        ),
        # expired replacements: ceil(expired x rate) more, unless scaling down with every instance healthy
        pytest.param(
            {},
            {"total": 2, "outstanding": 2, "target": 2.0, "healthy": 2, "expired_healthy": 1},
            (1, 3),
            id="one-expired-one-replacement",
        ),
        pytest.param(
            dict(expired_instance_restart_rate=0.5),
            {"total": 4, "outstanding": 4, "target": 4.0, "healthy": 4, "expired_healthy": 3},
            (2, 6),
            id="ceil-of-expired-times-rate",
        ),
        pytest.param(
            {},
            {"total": 4, "outstanding": 1, "target": 4.0, "healthy": 4, "expired_healthy": 1},
            (-3, 1),
            id="scale-down-all-healthy-adds-none",
        ),
        pytest.param(
            # Waiter's term as written: + ceil(1 x 0.1) - max(0, healthy - scale_to) = 1 - 2
            {},
            {"total": 4, "outstanding": 1, "target": 4.0, "healthy": 3, "expired_healthy": 1},
            (-4, 0),
            id="scale-down-not-all-healthy-applies-the-term",
        ),
        pytest.param(
            {},
            {"total": 2, "outstanding": 2, "target": 2.0, "healthy": 2, "expired_unhealthy": 5},
            (1, 3),
            id="at-most-two-expired-unhealthy-count",
        ),
        # min == max: pinned whatever the load
        pytest.param(
            dict(min_instances=3, max_instances=3),
            {"total": 3, "outstanding": 100, "target": 3.0, "healthy": 3},
            (0, 3),
            id="min-equals-max-under-load",
        ),
        pytest.param(
            dict(min_instances=3, max_instances=3),
            {"total": 3, "outstanding": 0, "target": 3.0, "healthy": 3},
            (0, 3),
            id="min-equals-max-idle",
        ),
        pytest.param(
            dict(min_instances=3, max_instances=3),
            {"total": 1, "outstanding": 0, "target": 1.0, "healthy": 1},
            (2, 3),
            id="min-equals-max-from-below",
        ),
    ],
)
def test_scaling_boundaries(changes: dict[str, Any], row: dict[str, Any], expected: tuple[int, int]) -> None:
    settings = dataclasses.replace(BASE, **changes)  # built here, so the settings' own checks run under test too
    assert step(settings, **row) == expected


# Waiter's defaults; with burst mode (its own defaults) where the row says so. (changes, counts, previous) ->
# (amount, scale_to, target)
WAITER = {"max_instances": 500, "scale_up_factor": 0.1, "scale_down_factor": 0.001}
BURST = {**WAITER, "burst": BurstSettings()}


def measured(outstanding: int, total: int, healthy: int, rate: float, **kw: Any) -> Counts:
    return Counts(outstanding, total, total, healthy, arrival_rate=rate, service_secs=1.0, **kw)


@pytest.mark.parametrize(
    ("changes", "counts", "previous", "expected"),
    [
        # the instances cover the need (ideal 3 <= total 3) while the slowly decaying target is 0.9 above them
        pytest.param(WAITER, Counts(3, 3, 3, 3), ScalingState(3.9, T0 - 1), (0, 3, 3.899), id="covered-gap-under-one"),
        pytest.param(
            {**WAITER, "min_instances": 3}, Counts(3, 3, 3, 3), ScalingState(3.9, T0 - 1), (0, 3, 3.899),
            id="covered-at-min",
        ),
        # a scale-up factor of 0 never moves the target up, even with twice the need
        pytest.param(
            {**WAITER, "scale_up_factor": 0, "scale_down_factor": 0.5}, Counts(10, 5, 5, 5), ScalingState(5.0, T0 - 1),
            (0, 5, 5.0), id="up-factor-zero",
        ),
        # blind (nothing healthy, nothing measured): idle stays at zero; requested instances are held while starting
        pytest.param(
            {**BURST, "min_instances": 0}, Counts(0, 0, 0, 0), ScalingState(0.0, T0 - 1), (0, 0, 0.0), id="blind-idle",
        ),
        pytest.param(
            BURST, Counts(5, 3, 3, 0, queued=5), ScalingState(1.0, T0 - 1), (0, 3, 1.0), id="blind-holds-requested",
        ),
        # a burst entered unmeasured, now measured with nothing left: its surplus goes at once
        pytest.param(
            {**BURST, "min_instances": 0}, measured(0, 5, 5, 0), ScalingState(5.0, T0 - 1, T0 - 10), (-5, 0, 0.0),
            id="hold-releases-an-unmeasured-surplus",
        ),
        # unmeasured burst entry grows to at most threshold x healthy (Waiter's smoothing alone: 5.55 and 1.59)
        pytest.param(
            {**BURST, "scale_up_factor": 0.01}, Counts(60, 5, 5, 5), ScalingState(5.0, T0 - 1), (5, 10, 10.0),
            id="unmeasured-entry-twice-five-healthy",
        ),
        pytest.param(
            {**BURST, "scale_up_factor": 0.01}, Counts(60, 1, 1, 1), ScalingState(1.0, T0 - 1), (1, 2, 2.0),
            id="unmeasured-entry-twice-one-healthy",
        ),
        # a burst's exit keeps the larger of the throughput need, the outstanding count and half the burst
        pytest.param(
            BURST, measured(5, 50, 50, 30), ScalingState(50.0, T0 - 1, T0 - 60, 50.0), (-20, 30, 30.0),
            id="exit-to-the-throughput-need",
        ),
        pytest.param(
            BURST, measured(40, 50, 50, 5), ScalingState(50.0, T0 - 1, T0 - 60, 50.0), (-10, 40, 40.0),
            id="exit-to-the-outstanding-count",
        ),
        # the "enough instances" rule judges by the outstanding count outside a burst, by the need inside one
        pytest.param(
            BURST, measured(4, 5, 5, 8), ScalingState(5.9, T0 - 1), (0, 5, 5.898), id="covered-outside-a-burst",
        ),
        pytest.param(
            BURST, measured(4, 10, 10, 12), ScalingState(10.0, T0 - 1, T0 - 10, 12.0), (2, 12, 12.0),
            id="not-covered-inside-a-burst",
        ),
    ],
)
def test_decisions_at_their_edges(
    changes: dict[str, Any], counts: Counts, previous: ScalingState, expected: tuple[int, int, float]
) -> None:
    decision = decide(dataclasses.replace(BASE, **changes), counts, previous, T0)
    assert (decision.amount, decision.scale_to, round(decision.state.target, 3)) == expected


def test_first_cycle_at_an_arbitrary_origin_starts_the_smoothing_there() -> None:
    decision = decide(BASE, Counts(10, 2, 2, 2), None, T0)
    assert (decision.amount, decision.state.last_tick, decision.state.target) == (0, T0, 2.0)
    follow = decide(BASE, Counts(10, 2, 2, 2), decision.state, T0 + 1)
    assert follow.state.last_tick == T0 + 1 and follow.amount > 0


# -- reservation -------------------------------------------------------------------------------------------------


def inst(name: str, started_at: float) -> Instance:
    return Instance(id=f"svc.{name}", service_id="svc", host="127.0.0.1", port=1, started_at=started_at)


A, B, C = inst("a", T0 + 1), inst("b", T0 + 2), inst("c", T0 + 3)


def test_random_load_balancing_is_not_oldest_first() -> None:
    r = Reservations(concurrency_level=1000, load_balancing="random", rng=random.Random(3))
    for i in (A, B, C):
        r.add(i)
    picks = [r.try_acquire() for _ in range(60)]
    assert {i.id for i in picks if i} == {A.id, B.id, C.id}
    assert sum(1 for i in picks if i is A) < 40  # oldest-first would give A all 60


def test_an_instance_added_again_keeps_its_requests_and_its_place() -> None:
    r = Reservations(concurrency_level=1)
    r.add(B)
    r.add(A)
    assert r.try_acquire() is A
    r.remove(A.id)
    r.add(A)  # back in rotation while its request runs: still full, still first in age order
    assert r.routable_ids() == [A.id, B.id]
    assert r.try_acquire() is B
    assert r.try_acquire() is None
    r.release(A.id)
    assert r.try_acquire() is A


async def test_abandoning_a_waiter_that_already_failed_changes_nothing() -> None:
    r = Reservations(concurrency_level=1)
    waiter = r.enqueue()
    r.fail_waiters(RuntimeError("Deployment error: Invalid startup command"))
    assert isinstance(waiter.exception(), RuntimeError)
    r.abandon(waiter)
    assert (r.in_flight, r.queued) == (0, 0)
    r.add(A)
    assert r.try_acquire() is A


async def test_a_cancelled_waiter_at_the_head_of_the_queue_is_skipped() -> None:
    r = Reservations(concurrency_level=1)
    first, second = r.enqueue(), r.enqueue()
    first.cancel()
    r.add(A)
    assert second.done() and second.result() is A
    assert (r.in_flight, r.queued) == (1, 0)
    await asyncio.sleep(0)


# -- lifecycle ---------------------------------------------------------------------------------------------------


def activity(**kw: Any) -> ServiceActivity:
    base: dict[str, Any] = {
        "service_id": "s",
        "outstanding": 0,
        "last_activity": T0,
        "idle_timeout_mins": 30,
        "stale_timeout_mins": 15,
        "fallback_period_secs": 300,
    }
    return ServiceActivity(**{**base, **kw})


@pytest.mark.parametrize(
    ("service", "now", "expected"),
    [
        pytest.param(activity(), T0 + 1800, None, id="idle-exactly-the-timeout"),
        pytest.param(activity(), T0 + 1800.5, "idle for more than 30 minute(s)", id="idle-just-past"),
        pytest.param(activity(last_activity=T0 + 10), T0 + 1800.5, None, id="later-activity-resets"),
        pytest.param(
            activity(idle_timeout_mins=0, stale_since=T0, stale_timeout_mins=1, fallback_period_secs=10),
            T0 + 69.9,
            None,
            id="stale-a-hair-early",
        ),
        pytest.param(
            activity(idle_timeout_mins=0, stale_since=T0, stale_timeout_mins=1, fallback_period_secs=10),
            T0 + 70,
            "replaced by a newer version more than 1 minute(s) ago",
            id="stale-at-the-deadline",
        ),
        pytest.param(activity(idle_timeout_mins=0, broken_since=T0), T0 + 1800, None, id="broken-exactly"),
        pytest.param(
            activity(idle_timeout_mins=0, broken_since=T0),
            T0 + 1800.5,
            "unable to start for more than 1800 seconds",
            id="broken-just-past",
        ),
    ],
)
def test_reap_reason_at_an_arbitrary_origin(service: ServiceActivity, now: float, expected: str | None) -> None:
    assert reap_reason(service, now, broken_timeout_secs=1800) == expected


@pytest.mark.parametrize(
    ("now", "expected"), [(T0 + 600, False), (T0 + 600.5, True), (T0 - 1, False)], ids=["exactly", "past", "before"]
)
def test_is_expired_at_an_arbitrary_origin(now: float, expected: bool) -> None:
    assert is_expired(inst("x", T0), 10, False, now) is expected


@pytest.mark.parametrize(
    ("now", "expected"), [(T0 + 299.9, True), (T0 + 300, False), (T0 - 1, True)], ids=["inside", "edge", "before"]
)
def test_in_fallback_at_an_arbitrary_origin(now: float, expected: bool) -> None:
    assert in_fallback(T0, 300, now) is expected


def test_an_instance_added_again_while_routable_takes_its_new_capacity() -> None:
    r = Reservations(concurrency_level=4)
    r.add(A, capacity=1)
    r.add(A, capacity=3)  # a lease grew while it stayed in rotation
    assert [r.try_acquire() for _ in range(4)] == [A, A, A, None]


def test_unknown_instances_are_harmless() -> None:
    r = Reservations(concurrency_level=2)
    r.remove("svc.nobody")
    r.release("svc.nobody")
    assert r.in_use("svc.nobody") == 0
    r.add(A)
    r.remove(A.id)
    r.remove(A.id)  # twice
    assert r.routable_ids() == [] and r.in_use(A.id) == 0


@pytest.mark.parametrize(
    ("kw", "now", "expected"),
    [
        ({"idle_timeout_mins": 1}, T0 + 60.5, "idle for more than 1 minute(s)"),  # the smallest timeout still applies
        ({"idle_timeout_mins": 1}, T0 + 60, None),
    ],
)
def test_a_one_minute_idle_timeout(kw: dict[str, Any], now: float, expected: str | None) -> None:
    assert reap_reason(activity(**kw), now, broken_timeout_secs=1800) == expected


def test_a_one_minute_expiry() -> None:
    assert is_expired(inst("x", T0), 1, False, T0 + 60.5) is True
    assert is_expired(inst("x", T0), 1, False, T0 + 60) is False


@pytest.mark.parametrize(
    ("period", "now", "expected"),
    [(1, T0 + 0.5, True), (1, T0 + 1, False), (0, T0 - 1, False), (0, T0, False)],
    ids=["one-second-inside", "one-second-over", "off-even-before", "off"],
)
def test_fallback_periods_at_their_edges(period: int, now: float, expected: bool) -> None:
    assert in_fallback(T0, period, now) is expected


def test_failures_of_instances_started_exactly_when_the_service_was_last_healthy_count() -> None:
    failed = [
        Instance(id=f"s.{n}", service_id="s", host=f"h{n}", port=1, started_at=T0, exit_code=1, failed=True)
        for n in range(2)
    ]
    assert deployment_error(failed, since=T0) is not None
    assert deployment_error(failed, since=T0 + 0.001) is None
