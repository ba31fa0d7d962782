"""The scaling decision: Waiter's scale-service cases, burst mode, state and settings (time injected)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from waiter.descriptor import effective
from waiter.scaling import (
    CAUSES,
    BurstSettings,
    Counts,
    Decision,
    LoadNeed,
    ScalingSettings,
    ScalingState,
    decide,
    ideal_instances,
    load_need,
    smoothing_factor,
)

NOW = 1_700_000_000.0
NO_BURST = BurstSettings(enabled=False)

# Waiter's scaling_test.clj: jitter 0.9, factors 0.5, max 50, burst off (the port checks Waiter's behaviour).
DEFAULT = ScalingSettings(
    min_instances=1,
    max_instances=50,
    concurrency_level=1,
    scale_factor=1,
    scale_up_factor=0.5,
    scale_down_factor=0.5,
    jitter_threshold=0.9,
    expired_instance_restart_rate=0.1,
    burst=NO_BURST,
)
FAST = dataclasses.replace(DEFAULT, scale_up_factor=0.999, scale_down_factor=0.999)
SLOW_DOWN = dataclasses.replace(DEFAULT, scale_down_factor=0.001, scale_up_factor=0.1)
# Waiter's shipped defaults, and ours (the same plus burst mode with its defaults).
WAITER = ScalingSettings(1, 500, 1, 1, 0.1, 0.001, 0.5, 0.1, burst=NO_BURST)
OURS = dataclasses.replace(WAITER, burst=BurstSettings())


def cfg(base: ScalingSettings = DEFAULT, **changes: Any) -> ScalingSettings:
    return dataclasses.replace(base, **changes)


def run(
    settings: ScalingSettings,
    total: int,
    outstanding: int,
    target: float,
    healthy: int,
    expired: int = 0,
    *,
    ticks: int = 1,
    expired_unhealthy: int = 0,
    burst_last_seen: float | None = None,
) -> Decision:
    # Measured as if every outstanding request arrived within the last second and took one (Little's law: the
    # throughput need equals the outstanding count); a burst in progress had measured the target as its peak.
    counts = Counts(outstanding, total, total, healthy, expired, expired_unhealthy, arrival_rate=outstanding,
                    service_secs=1.0)
    peak = target if burst_last_seen is not None else None
    return decide(settings, counts, ScalingState(target, NOW - ticks, burst_last_seen, peak), NOW)


# (amount, scale_to, target) expected; then settings, total, outstanding, target, healthy, expired (Waiter's order).
WAITER_CASES = [
    pytest.param((5, 10, 10), FAST, 5, 10, 5, 5, 0, 1, id="scale-whole-way"),
    pytest.param((0, 5, 7), cfg(scale_up_factor=0.999), 5, 4, 10, 5, 0, 1, id="enough-instances-for-outstanding"),
    pytest.param((5, 15, 15), DEFAULT, 10, 20, 10, 10, 0, 1, id="scale-half-way"),
    pytest.param((15, 15, 15), DEFAULT, 0, 20, 0, 0, 0, 2, id="three-quarters-two-ticks"),
    pytest.param((0, 50, 50), DEFAULT, 50, 100, 50, 50, 0, 1, id="not-above-max"),
    pytest.param((0, 1, 1), DEFAULT, 1, 0, 1, 1, 0, 1, id="not-below-min"),
    pytest.param((-10, 50, 50), DEFAULT, 60, 100, 60, 60, 0, 1, id="scale-down-to-max"),
    pytest.param((1, 1, 1), DEFAULT, 0, 0, 0, 0, 0, 1, id="scale-up-to-min"),
    pytest.param((0, 1, 1.89), cfg(scale_up_factor=0.89), 1, 2, 1.0, 1, 0, 1, id="jitter-up-not-met"),
    pytest.param((1, 2, 1.91), cfg(scale_up_factor=0.91), 1, 2, 1.0, 1, 0, 1, id="jitter-up-met"),
    pytest.param((0, 2, 1.02), cfg(scale_down_factor=0.98), 2, 1, 2.0, 2, 0, 1, id="jitter-down-not-met"),
    pytest.param((-1, 1, 1), cfg(scale_down_factor=1), 2, 1, 2.0, 2, 0, 1, id="jitter-down-met"),
    pytest.param((-1, 1, 1.005), DEFAULT, 2, 1, 1.01, 1, 0, 1, id="epsilon"),
    pytest.param((10, 20, 20), cfg(scale_factor=0.5), 10, 60, 10, 10, 0, 1, id="scale-factor"),
    pytest.param((10, 20, 20), cfg(concurrency_level=2), 10, 60, 10, 10, 0, 1, id="concurrency-2"),
    pytest.param((20, 30, 29.98), cfg(FAST, concurrency_level=2), 10, 60, 10, 10, 0, 1, id="concurrency-2-fast"),
    pytest.param((4, 6, 6), cfg(concurrency_level=5), 2, 50, 2, 2, 0, 1, id="concurrency-5"),
    pytest.param((8, 10, 9.992), cfg(FAST, concurrency_level=5), 2, 50, 2, 2, 0, 1, id="concurrency-5-fast"),
    pytest.param((2, 3, 2.998), cfg(FAST, concurrency_level=2, scale_factor=0.1), 1, 45, 1, 1, 0, 1,
                 id="concurrency-and-scale-factor-a"),
    pytest.param((1, 2, 1.999), cfg(FAST, concurrency_level=5, scale_factor=0.166666666), 1, 45, 1, 1, 0, 1,
                 id="concurrency-and-scale-factor-b"),
    pytest.param((1, 2, 1.999), cfg(FAST, concurrency_level=5, scale_factor=0.1), 1, 95, 1, 1, 0, 1,
                 id="concurrency-and-scale-factor-c1"),
    pytest.param((2, 3, 2.998), cfg(FAST, concurrency_level=5, scale_factor=0.1), 1, 150, 1, 1, 0, 1,
                 id="concurrency-and-scale-factor-c2"),
    pytest.param((1, 2, 1), DEFAULT, 1, 0, 1.2, 1, 1, 1, id="expired-scale-up"),
    pytest.param((2, 3, 2), FAST, 1, 2, 0.9, 1, 1, 1, id="expired-with-queued-requests"),
    pytest.param((-4, 1, 1), FAST, 5, 0, 5.3, 5, 5, 1, id="expired-scale-down-all-healthy"),
    pytest.param((-2, 8, 7.919), SLOW_DOWN, 10, 0, 7.927, 9, 0, 1, id="scale-down-two-without-expired"),
    pytest.param((-1, 8, 7.919), SLOW_DOWN, 9, 0, 7.927, 8, 0, 1, id="scale-down-one-without-expired"),
    pytest.param((0, 2, 1), DEFAULT, 2, 0, 1.3, 1, 1, 1, id="scale-down-spares-unhealthy"),
    pytest.param((-1, 1, 1), DEFAULT, 2, 0, 1.1, 2, 1, 1, id="scale-down-replacement-for-expired"),
    pytest.param((2, 22, 19.95), DEFAULT, 20, 20, 19.9, 20, 20, 1, id="expired-restart-rate"),
    pytest.param((20, 40, 20), cfg(expired_instance_restart_rate=1), 20, 20, 20, 20, 20, 1, id="expired-rate-1"),
    pytest.param((0, 1, 1), cfg(expired_instance_restart_rate=0), 1, 0, 1, 1, 1, 1, id="expired-rate-0"),
    pytest.param((1, 2, 1), cfg(expired_instance_restart_rate=1), 1, 1, 1, 0, 1, 1, id="expired-none-healthy"),
    pytest.param((3, 6, 5), cfg(expired_instance_restart_rate=1), 3, 5, 5, 2, 1, 1, id="expired-some-healthy"),
    pytest.param((0, 20, 20), DEFAULT, 20, 40, 20, 20, 0, 0, id="zero-ticks-keep-target"),
    pytest.param((3, 13, 12.71), cfg(SLOW_DOWN, jitter_threshold=0.5), 10, 20, 10, 10, 0, 3, id="three-ticks-up"),
    pytest.param((0, 10, 9.97), cfg(SLOW_DOWN, jitter_threshold=0.5), 10, 0, 10, 10, 0, 3, id="three-ticks-down"),
    pytest.param((0, 55, 55), cfg(FAST, scale_factor=1.1, max_instances=100), 55, 50, 55, 55, 0, 1,
                 id="float-noise-50x1.1-is-55"),
]


@pytest.mark.parametrize(
    ("expected", "settings", "total", "outstanding", "target", "healthy", "expired", "ticks"), WAITER_CASES
)
def test_waiter_scale_service(expected, settings, total, outstanding, target, healthy, expired, ticks):
    decision = run(settings, total, outstanding, target, healthy, expired, ticks=ticks)
    amount, scale_to, new_target = expected
    assert (decision.amount, decision.scale_to) == (amount, scale_to)
    assert decision.state.target == pytest.approx(new_target, abs=1e-2)
    assert decision.state.last_tick == NOW
    assert decision.scaling_state == {1: "scale-up", -1: "scale-down", 0: "stable"}[(amount > 0) - (amount < 0)]
    assert decision.burst is False and decision.state.burst_last_seen is None
    assert decision.reason.endswith(".")


@pytest.mark.parametrize(
    ("expired_healthy", "expired_unhealthy", "scale_to"),
    [
        pytest.param(7, 4, 21, id="seven-healthy-plus-two-of-four-unhealthy"),
        pytest.param(0, 5, 14, id="unhealthy-capped-at-two"),
        pytest.param(3, 1, 16, id="all-counted-below-cap"),
    ],
)
def test_expired_unhealthy_capped_at_two(expired_healthy, expired_unhealthy, scale_to):
    # Restart rate 1 replaces every counted expired instance; total 14 of which 10 healthy (Waiter's app5).
    settings = cfg(expired_instance_restart_rate=1, max_instances=20)
    decision = run(settings, 14, 12, 12, 10, expired_healthy, expired_unhealthy=expired_unhealthy)
    assert decision.scale_to == scale_to


@pytest.mark.parametrize(
    ("total", "min_instances", "scale_to", "state"),
    [
        pytest.param(3, 1, 3, "stable", id="keeps-total"),
        pytest.param(0, 1, 1, "scale-up", id="up-to-min"),
        pytest.param(2, 4, 4, "scale-up", id="up-to-larger-min"),
        pytest.param(600, 1, 600, "stable", id="above-max-waits-for-next-cycle"),
    ],
)
def test_first_cycle_does_not_scale(total, min_instances, scale_to, state):
    settings = cfg(OURS, min_instances=min_instances)
    decision = decide(settings, Counts(outstanding=300, total=total, scheduled=total, healthy=0), None, NOW)
    assert (decision.scale_to, decision.amount, decision.scaling_state) == (scale_to, scale_to - total, state)
    assert decision.state == ScalingState(target=float(scale_to), last_tick=NOW)
    assert decision.burst is False


@pytest.mark.parametrize(
    ("last_tick", "now", "ticks", "last_tick_after"),
    [
        pytest.param(100.0, 101.0, 1, 101.0, id="one-second"),
        pytest.param(100.0, 101.7, 1, 101.0, id="fraction-carried"),
        pytest.param(100.0, 100.6, 0, 100.0, id="early-cycle-no-tick"),
        pytest.param(100.3, 104.2, 3, 103.3, id="three-ticks"),
        pytest.param(100.0, 90.0, 0, 90.0, id="clock-back-reanchors"),
    ],
)
def test_ticks_are_whole_seconds(last_tick, now, ticks, last_tick_after):
    counts = Counts(outstanding=20, total=10, scheduled=10, healthy=10)
    decision = decide(SLOW_DOWN, counts, ScalingState(target=10.0, last_tick=last_tick), now)
    assert decision.state.last_tick == pytest.approx(last_tick_after)
    expected_target = 10 + smoothing_factor(0.1, ticks) * (20 - 10)
    assert decision.state.target == pytest.approx(expected_target)


@pytest.mark.parametrize(
    ("factor", "ticks", "expected"),
    [
        pytest.param(0.5, 0, 0.0, id="no-ticks"),
        pytest.param(0.5, 1, 0.5, id="one"),
        pytest.param(0.5, 2, 0.75, id="two"),
        pytest.param(0.6, 3, 0.936, id="three"),
        pytest.param(0.1, 10_000, 1.0, id="long-gap-reaches-ideal"),
    ],
)
def test_smoothing_factor(factor, ticks, expected):
    assert smoothing_factor(factor, ticks) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("outstanding", "scale_factor", "level", "expected"),
    [
        pytest.param(0, 1, 1, 0, id="none"),
        pytest.param(7, 1, 1, 7, id="one-each"),
        pytest.param(7, 1, 2, 4, id="rounds-up"),
        pytest.param(45, 0.1, 2, 3, id="scale-factor"),
        pytest.param(50, 1.1, 1, 55, id="float-noise"),
        pytest.param(10, 2, 1, 20, id="scale-factor-above-one"),
    ],
)
def test_ideal_instances(outstanding, scale_factor, level, expected):
    settings = cfg(scale_factor=scale_factor, concurrency_level=level)
    assert ideal_instances(settings, outstanding) == expected


# Burst mode. (scale_to, target, burst, burst_last_seen relative to NOW or None) expected.
BURST_CASES = [
    pytest.param((60, 60, True, 0), OURS, dict(total=5, outstanding=60, target=5, healthy=5),
                 id="entry-scales-to-need"),
    pytest.param((11, 10.5, False, None), WAITER, dict(total=5, outstanding=60, target=5, healthy=5),
                 id="disabled-is-waiter"),
    pytest.param((50, 50, True, 0), cfg(OURS, max_instances=50), dict(total=5, outstanding=90, target=5, healthy=5),
                 id="entry-clamped-to-max"),
    pytest.param((5, 5.4, False, None), OURS, dict(total=5, outstanding=9, target=5, healthy=5),
                 id="below-threshold-is-waiter"),
    pytest.param((50, 50, False, None), OURS, dict(total=50, outstanding=50, target=50, healthy=1),
                 id="need-already-requested-no-entry"),
    pytest.param((200, 200, True, 0), cfg(OURS, burst=BurstSettings(threshold=4)),
                 dict(total=50, outstanding=200, target=50, healthy=50), id="custom-threshold-entry"),
    pytest.param((55, 55, False, None), cfg(OURS, burst=BurstSettings(threshold=4)),
                 dict(total=50, outstanding=100, target=50, healthy=50), id="custom-threshold-no-entry"),
    pytest.param((60, 60, True, -10), OURS, dict(total=60, outstanding=5, target=60, healthy=60, seen=-10),
                 id="hold-keeps-target"),
    pytest.param((60, 60, True, -59), cfg(OURS, scale_down_factor=0.9),
                 dict(total=60, outstanding=5, target=60, healthy=60, seen=-59), id="hold-no-scale-down"),
    pytest.param((30, 30, False, None), cfg(OURS, scale_down_factor=0.5),
                 dict(total=60, outstanding=5, target=60, healthy=60, seen=-60), id="exit-after-window-releases-half"),
    pytest.param((70, 70, True, -10), OURS, dict(total=60, outstanding=70, target=60, healthy=60, seen=-10),
                 id="hold-follows-a-higher-need"),
    pytest.param((61, 60, True, -10), OURS,
                 dict(total=60, outstanding=5, target=60, healthy=60, seen=-10, expired=3),
                 id="hold-replaces-expired"),
    pytest.param((40, 40, True, -10), cfg(OURS, max_instances=40),
                 dict(total=60, outstanding=5, target=60, healthy=60, seen=-10), id="hold-yields-to-lower-max"),
    pytest.param((33, 32.5, False, None), cfg(OURS, scale_down_factor=0.5, burst=NO_BURST),
                 dict(total=60, outstanding=5, target=60, healthy=60, seen=-10), id="disabled-ignores-stored-burst"),
    pytest.param((30, 30, False, None), cfg(OURS, scale_down_factor=0.5, burst=BurstSettings(stable_window_secs=0)),
                 dict(total=60, outstanding=5, target=60, healthy=60, seen=-10), id="zero-window-no-hold"),
    pytest.param((60, 60, True, 0), cfg(OURS, burst=BurstSettings(stable_window_secs=0)),
                 dict(total=5, outstanding=60, target=5, healthy=5), id="zero-window-still-jumps"),
]


@pytest.mark.parametrize(("expected", "settings", "case"), BURST_CASES)
def test_burst(expected, settings, case):
    seen = case.get("seen")
    decision = run(
        settings,
        case["total"],
        case["outstanding"],
        case["target"],
        case["healthy"],
        case.get("expired", 0),
        burst_last_seen=None if seen is None else NOW + seen,
    )
    scale_to, target, burst, last_seen = expected
    assert decision.scale_to == scale_to
    assert decision.amount == scale_to - case["total"]
    assert decision.state.target == pytest.approx(target, abs=1e-2)
    assert decision.burst is burst
    assert decision.state.burst_last_seen == (None if last_seen is None else NOW + last_seen)


def test_burst_lifecycle_step_load():
    """1 instance, load jumps to 50: burst at once, holds 60 s after the last burst cycle, then releases."""
    settings = cfg(OURS, scale_down_factor=0.1)  # fast decay so that the exit shows within a few cycles
    state = decide(settings, Counts(0, 1, 1, 1), None, 0.0).state
    history: list[tuple[float, Decision]] = []
    total, healthy = 1, 1
    for second in range(1, 80):
        outstanding = 50 if second < 30 else 0
        counts = Counts(outstanding, total, total, healthy, arrival_rate=outstanding, service_secs=1.0)
        decision = decide(settings, counts, state, float(second))
        history.append((second, decision))
        state, total = decision.state, decision.scale_to
        healthy = total if second >= 6 else 1  # new instances turn healthy 5 s later
    scale_tos = [d.scale_to for _, d in history]
    assert scale_tos[0] == 50 and history[0][1].burst
    # The load ends at t=30, but nothing goes below 50 until 60 s after the burst cycle at t=1.
    assert all(d.scale_to == 50 and d.burst for t, d in history if t < 61)
    assert all(not d.burst and d.state.burst_last_seen is None for t, d in history if t >= 61)
    # t=61: the burst is over and the need is gone: half the surplus is released at once, Waiter's decay goes on.
    assert history[60][1].state.target == 25 and history[60][1].scale_to == 25


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(ScalingState(target=12.345, last_tick=NOW), id="no-burst"),
        pytest.param(ScalingState(target=60.0, last_tick=NOW - 1, burst_last_seen=NOW - 0.5), id="burst"),
        pytest.param(ScalingState(target=3.0, last_tick=NOW - 1, burst_last_seen=NOW, burst_peak=1.5, cold=True),
                     id="cold"),
    ],
)
def test_state_json_round_trip(state):
    assert ScalingState.from_json(json.loads(json.dumps(state.to_json()))) == state


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"last_tick": 1.0}, "state target is None", id="missing-target"),
        pytest.param({"target": "3", "last_tick": 1.0}, "state target is '3'", id="string-target"),
        pytest.param({"target": 3, "last_tick": None}, "state last_tick is None", id="null-last-tick"),
        pytest.param({"target": 3, "last_tick": 1, "burst_last_seen": "x"}, "burst_last_seen is 'x'", id="bad-seen"),
        pytest.param({"target": 3, "last_tick": 1, "cold": 1}, "state cold is 1, but it must be true or false",
                     id="bad-cold"),
    ],
)
def test_state_from_json_rejects(data, message):
    with pytest.raises(ValueError, match=message):
        ScalingState.from_json(data)


def test_settings_from_effective_description():
    description = effective({"cmd": "true", "cpus": 1, "mem": 64, "version": "1", "min-instances": 2})
    settings = ScalingSettings.from_description(description)
    assert settings == cfg(OURS, min_instances=2)
    assert ScalingSettings.from_description(description, NO_BURST).burst == NO_BURST


def test_settings_from_description_names_missing_parameters():
    description = effective({"cmd": "true", "cpus": 1, "mem": 64, "version": "1"})
    del description["jitter-threshold"], description["scale-factor"]
    with pytest.raises(ValueError, match="lacks the scaling parameters scale-factor, jitter-threshold"):
        ScalingSettings.from_description(description)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"min_instances": -1}, "min-instances is -1, but it must be a whole number >= 0", id="min"),
        pytest.param({"min_instances": 60}, "min-instances is 60, but it must be at most max-instances", id="min>max"),
        pytest.param({"max_instances": 2.5}, "max-instances is 2.5", id="max-float"),
        pytest.param({"concurrency_level": 0}, "concurrency-level is 0", id="concurrency"),
        pytest.param({"scale_factor": 0}, "scale-factor is 0, but it must be a number > 0", id="scale-factor"),
        pytest.param({"scale_up_factor": 1.5}, "scale-up-factor is 1.5, but it must be a number from 0 to 1",
                     id="up-factor"),
        pytest.param({"scale_down_factor": -0.1}, "scale-down-factor is -0.1", id="down-factor"),
        pytest.param({"jitter_threshold": 1}, "jitter-threshold is 1, but it must be a number >= 0 and < 1",
                     id="jitter"),
        pytest.param({"expired_instance_restart_rate": True}, "expired-instance-restart-rate is True", id="rate"),
    ],
)
def test_settings_reject(changes, message):
    with pytest.raises(ValueError, match=message):
        cfg(**changes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"threshold": 0.5}, "burst threshold is 0.5, but it must be a number >= 1", id="threshold"),
        pytest.param({"stable_window_secs": -1}, "burst stable-window-secs is -1", id="window"),
        pytest.param({"enabled": "yes"}, "burst enabled is 'yes', but it must be true or false", id="enabled"),
    ],
)
def test_burst_settings_reject(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BurstSettings(**kwargs)


# Burst sized by throughput (Little's law). (scale_to, target, burst, peak) expected.
# The load test: 1,000 req/s of 10 ms at concurrency-level 8 asks for ceil(1.25) = 2 instances.
SHORT = cfg(OURS, concurrency_level=8)
THROUGHPUT_CASES = [
    pytest.param((2, 2, True, 1.25), SHORT,
                 dict(total=1, healthy=1, outstanding=500, queued=492, rate=1000, service=0.01),
                 id="sized-by-throughput-not-by-the-queue"),  # ceil(1.25 busy + 492 * 0.01 / 8 / 1 s for the queue)
    pytest.param((5, 5, True, 1.25), SHORT,
                 dict(total=1, healthy=1, outstanding=500, queued=492, rate=1000, service=0.01, drain=0.1),
                 id="the-queue-share-is-at-most-3x-busy"),  # 0.615 / 0.1 s = 6.15 for the queue, capped at 3 x 1.25
    pytest.param((2, 2, True, 1.25), SHORT,
                 dict(total=40, healthy=40, outstanding=10, queued=0, rate=1000, service=0.01, target=40, seen=-2),
                 id="surplus-started-unmeasured-released-in-burst"),
    pytest.param((50, 50, True, 50), OURS,
                 dict(total=50, healthy=50, outstanding=5, queued=0, rate=5, service=1, target=50, seen=-10, peak=50),
                 id="hold-keeps-the-peak-throughput"),
    pytest.param((60, 60, True, 50), OURS,
                 dict(total=50, healthy=50, outstanding=60, queued=10, rate=50, service=1, target=50, seen=-10,
                      peak=40),
                 id="hold-adds-the-queue"),
    pytest.param((25, 25, False, None), OURS,
                 dict(total=50, healthy=50, outstanding=5, queued=0, rate=5, service=1, target=50, seen=-60, peak=50),
                 id="exit-releases-at-most-half"),  # 50 / threshold 2, above the need of 5
    pytest.param((30, 30, False, None), OURS,
                 dict(total=50, healthy=50, outstanding=30, queued=0, rate=30, service=1, target=50, seen=-60,
                      peak=50),
                 id="exit-releases-to-the-need-when-above-half"),
    pytest.param((5, 5.4, False, None), OURS,
                 dict(total=5, healthy=5, outstanding=9, queued=4, rate=5, service=1),
                 id="below-threshold-is-waiter"),  # need 5 + 4 = 9 < 2 x 5
    pytest.param((5, 5.1, False, None), OURS,
                 dict(total=5, healthy=5, outstanding=6, queued=1, rate=50, service=0.5),
                 id="throughput-alone-without-the-requests-is-no-burst"),  # 26 by throughput, 6 outstanding < 2 x 5
    pytest.param((12, 12, True, 9.5), OURS,
                 dict(total=5, healthy=5, outstanding=10, queued=5, rate=19, service=0.5),
                 id="throughput-and-requests-both-at-the-threshold"),  # 9.5 + 5 x 0.5 >= 2 x 5; 10 >= 2 x 5
    pytest.param((26, 26, True, 25), OURS,
                 dict(total=5, healthy=5, outstanding=10, queued=1, rate=50, service=0.5),
                 id="arrivals-beyond-the-outstanding-count"),  # ceil(25 + 0.5)
    pytest.param((4, 4, True, 4), OURS,
                 dict(total=1, healthy=1, outstanding=4, queued=3, rate=0, service=0.4),
                 id="nothing-arrives-while-work-waits-outstanding-is-the-need"),
    pytest.param((11, 10.5, False, None), cfg(OURS, burst=NO_BURST),
                 dict(total=5, healthy=5, outstanding=60, queued=55, rate=1000, service=0.01),
                 id="disabled-ignores-throughput"),
    pytest.param((11, 10.5, True, None), OURS,
                 dict(total=5, healthy=5, outstanding=60, queued=55, rate=None, service=None),
                 id="unmeasured-with-healthy-instances-at-most-doubles"),  # 2 x 5, or Waiter's 10.5 if more
    pytest.param((3, 3, False, None), cfg(OURS, min_instances=3),
                 dict(total=0, healthy=0, outstanding=2, queued=2, rate=2, service=None),
                 id="blind-still-scales-to-min"),
    pytest.param((1, 1, False, None), OURS, dict(total=1, healthy=0, outstanding=500, queued=500, rate=250,
                                                 service=None), id="blind-cold-start-waits-for-first-answers"),
    pytest.param((1, 1, False, None), cfg(OURS, min_instances=0),
                 dict(total=0, healthy=0, outstanding=3, queued=3, rate=3, service=None),
                 id="blind-starts-one-instance"),
    # Load from zero scaled to a small machine: 67 req/s of 0.1 s at concurrency-level 4 after a 2.5 s cold start.
    pytest.param((2, 2, True, 1.675), cfg(OURS, concurrency_level=4),
                 dict(total=1, healthy=1, outstanding=144, queued=140, rate=67, service=0.1, cold=True),
                 id="cold-start-queue-is-no-measure-of-the-need"),  # ceil(1.675 + 140 x 0.025 / 60 s)
    pytest.param((6, 6, True, 1.675), cfg(OURS, concurrency_level=4),
                 dict(total=1, healthy=1, outstanding=144, queued=140, rate=67, service=0.1),
                 id="a-queue-with-instances-up-is-served-within-drain-secs"),  # ceil(1.675 + 140 x 0.025 / 1 s)
    # 200 requests of 20 ms at once at concurrency-level 10: once measured, no burst (need 1 < 2 x 1), and
    # Waiter's smoothing follows the throughput need while the cold start's queue is served, not its 10 instances.
    pytest.param((1, 1, False, None), cfg(OURS, concurrency_level=10),
                 dict(total=1, healthy=1, outstanding=100, queued=90, rate=39.5, service=0.024, cold=True),
                 id="cold-start-queue-does-not-drive-waiters-smoothing"),
    pytest.param((2, 1.9, False, None), cfg(OURS, concurrency_level=10),
                 dict(total=1, healthy=1, outstanding=100, queued=90, rate=39.5, service=0.024),
                 id="a-warm-services-queue-drives-waiters-smoothing"),  # 0.1 x ideal 10 + 0.9 x 1
]


@pytest.mark.parametrize(
    ("previous_cold", "healthy", "queued", "rate", "service", "cold"),
    [
        pytest.param(False, 0, 50, 25, None, True, id="blind-starts-cold"),
        pytest.param(True, 1, 50, 25, 0.1, True, id="stays-cold-while-its-queue-waits"),
        pytest.param(True, 3, 0, 25, 0.1, False, id="served-out-is-warm"),
        pytest.param(True, 1, 1, 25, 0.1, True, id="a-queue-of-one-is-still-its-queue"),
        pytest.param(False, 1, 50, 25, 0.1, False, id="a-queue-of-a-warm-service-is-not-cold"),
        pytest.param(False, 0, 50, 25, 0.1, False, id="nothing-healthy-but-measured-is-not-cold"),
    ],
)
def test_cold_start_lasts_until_its_queue_is_served(previous_cold, healthy, queued, rate, service, cold):
    counts = Counts(queued + healthy, 3, 3, healthy, queued=queued, arrival_rate=rate, service_secs=service)
    decision = decide(OURS, counts, ScalingState(3, NOW - 1, cold=previous_cold), NOW)
    assert decision.state.cold is cold


# Burst mode does not enter again just because the load changed shape: after a burst of 6 closed-loop clients
# of 0.4 s, 2 clients of 0.15 s arrive at 13.3 req/s while the service time measured is still the old one's mean
# (0.4 s): 5.3 instances by throughput, yet only 2 requests are outstanding on the 2 healthy instances.
AFTER_BURST = cfg(OURS, max_instances=4, burst=BurstSettings(stable_window_secs=1, drain_secs=0.4))


@pytest.mark.parametrize(
    ("outstanding", "queued", "rate", "service", "cause", "scale_to"),
    [
        pytest.param(2, 0, 13.3, 0.4, "waiter", 2, id="stale-service-time-alone-does-not-re-enter"),
        pytest.param(3, 1, 13.3, 0.4, "waiter", 2, id="one-below-the-threshold"),
        pytest.param(4, 2, 13.3, 0.4, "burst", 4, id="the-requests-at-the-threshold-enter"),
        pytest.param(2, 0, 13.3, 0.15, "waiter", 2, id="measured-anew-needs-two"),
    ],
)
def test_burst_does_not_re_enter_when_the_load_changes_shape(outstanding, queued, rate, service, cause, scale_to):
    counts = Counts(outstanding, 2, 2, 2, queued=queued, arrival_rate=rate, service_secs=service)
    # The burst ended 5 s ago at 4 instances; Waiter's smoothing brought the service down to 2.
    decision = decide(AFTER_BURST, counts, ScalingState(2.0, NOW - 1), NOW)
    assert (decision.cause, decision.scale_to) == (cause, scale_to)


@pytest.mark.parametrize(("expected", "settings", "case"), THROUGHPUT_CASES)
def test_burst_by_throughput(expected, settings, case):
    seen, peak = case.get("seen"), case.get("peak")
    counts = Counts(case["outstanding"], case["total"], case["total"], case["healthy"], queued=case["queued"],
                    arrival_rate=case["rate"], service_secs=case["service"])
    previous = ScalingState(case.get("target", case["total"]), NOW - 1, None if seen is None else NOW + seen, peak,
                            cold=case.get("cold", False))
    if "drain" in case:
        settings = cfg(settings, burst=dataclasses.replace(settings.burst, drain_secs=case["drain"]))
    decision = decide(settings, counts, previous, NOW)
    scale_to, target, burst, new_peak = expected
    assert decision.scale_to == scale_to
    assert decision.state.target == pytest.approx(target, abs=1e-2)
    assert decision.burst is burst
    assert decision.state.burst_peak == new_peak
    assert decision.reason.endswith(".")


def test_load_need_is_littles_law():
    counts = Counts(0, 0, 0, 0, queued=16, arrival_rate=3000, service_secs=0.01)
    need = load_need(SHORT, counts)
    assert need == LoadNeed(busy=pytest.approx(3.75), backlog=pytest.approx(0.02))  # 16 * 0.01 / 8 in 1 s
    assert need is not None and need.total == 4  # ceil(3.77): the busy need's fraction serves a small queue
    assert load_need(SHORT, dataclasses.replace(counts, service_secs=None)) is None
    drained_fast = load_need(cfg(SHORT, burst=BurstSettings(drain_secs=0.01)), counts)
    assert drained_fast is not None and drained_fast.backlog == pytest.approx(2) and drained_fast.total == 6
    capped = load_need(SHORT, dataclasses.replace(counts, queued=100_000))
    assert capped is not None and capped.backlog == pytest.approx(3 * 3.75)  # at most 3 x the busy need
    # A cold start's queue is served within the stable window (60 s), not drain-secs.
    cold = load_need(SHORT, dataclasses.replace(counts, queued=48_000), cold=True)
    assert cold is not None and cold.backlog == pytest.approx(1) and cold.total == 5


@pytest.mark.parametrize(
    ("cause", "counts", "previous"),
    [
        pytest.param("first-cycle", Counts(5, 1, 1, 1), None, id="first-cycle"),
        pytest.param("blind", Counts(500, 1, 1, 0), ScalingState(1, NOW - 1), id="blind"),
        pytest.param("burst", Counts(60, 5, 5, 5, arrival_rate=60, service_secs=1), ScalingState(5, NOW - 1),
                     id="burst"),
        pytest.param("burst-hold", Counts(5, 60, 60, 60, arrival_rate=5, service_secs=1),
                     ScalingState(60, NOW - 1, NOW - 10, 60), id="burst-hold"),
        pytest.param("burst-exit", Counts(5, 50, 50, 50, arrival_rate=5, service_secs=1),
                     ScalingState(50, NOW - 1, NOW - 60, 50), id="burst-exit"),
        pytest.param("waiter", Counts(6, 5, 5, 5, arrival_rate=6, service_secs=1), ScalingState(5, NOW - 1),
                     id="waiter"),
    ],
)
def test_cause_is_a_bounded_label(cause, counts, previous):
    decision = decide(OURS, counts, previous, NOW)
    assert decision.cause == cause and cause in CAUSES


# What each cycle says about itself (logged and shown for debugging): one row per branch of the sentence.
T1 = NOW + 0.25
REASON_CASES = [
    pytest.param({}, Counts(0, 3, 3, 3), None,
                 "First cycle: no scaling; smoothing starts from the 3 instances requested.", id="first-cycle"),
    pytest.param({"min_instances": 3}, Counts(0, 3, 3, 3), None,
                 "First cycle: no scaling; smoothing starts from the 3 instances requested.", id="first-cycle-at-min"),
    pytest.param({"min_instances": 4}, Counts(0, 3, 3, 3), None,
                 "First cycle: scaling from 3 to min-instances 4.", id="first-cycle-up-to-min"),
    pytest.param({}, Counts(12, 5, 5, 5), ScalingState(5.0, T1 - 1),
                 "Outstanding 12 needs 12 instances, target 5.70, total 5: scaling by +1.", id="scale-up"),
    pytest.param({}, Counts(6, 5, 5, 5), ScalingState(5.0, T1 - 1),
                 "Outstanding 6 needs 6 instances, target 5.10, total 5: stable, the gap of +0.10 is below the jitter "
                 "threshold 0.5.", id="jitter"),
    pytest.param({}, Counts(5, 5, 5, 5), ScalingState(5.0, T1 - 1),
                 "Outstanding 5 needs 5 instances, target 5.00, total 5: stable, the gap of +0.00 is below the jitter "
                 "threshold 0.5.", id="no-gap-is-jitter-not-cover"),
    pytest.param({}, Counts(3, 3, 3, 3), ScalingState(3.9, T1 - 1),
                 "Outstanding 3 needs 3 instances, target 3.90, total 3: stable, the 3 instances already cover the "
                 "need of 3.", id="covered"),
    pytest.param({"jitter_threshold": 0}, Counts(5, 5, 5, 5), ScalingState(5.0, T1 - 1),
                 "Outstanding 5 needs 5 instances, target 5.00, total 5: stable.", id="stable-without-a-why"),
    pytest.param({"burst": BurstSettings()}, Counts(60, 5, 5, 5, arrival_rate=60, service_secs=1.0),
                 ScalingState(5.0, T1 - 1),
                 "Outstanding 60 needs 60 instances, throughput 60.0/s x 1.000 s needs 60.00 (+0.00 for the queue of "
                 "0), target 60.00, total 5: burst, scaling straight to the need (+55).", id="burst"),
    pytest.param({"burst": BurstSettings()}, Counts(5, 60, 60, 60, arrival_rate=5, service_secs=1.0),
                 ScalingState(60.0, T1 - 1, T1 - 10, 60.0),
                 "Outstanding 5 needs 5 instances, throughput 5.0/s x 1.000 s needs 5.00 (+0.00 for the queue of 0), "
                 "target 60.00, total 60: burst hold, no scale-down inside the stable window.", id="hold"),
    pytest.param({"burst": BurstSettings()},
                 Counts(5, 60, 60, 60, expired_healthy=3, arrival_rate=5, service_secs=1.0),
                 ScalingState(60.0, T1 - 1, T1 - 10, 60.0),
                 "Outstanding 5 needs 5 instances, throughput 5.0/s x 1.000 s needs 5.00 (+0.00 for the queue of 0), "
                 "target 60.00, total 60: scaling by +1 (burst hold).", id="hold-replacing-expired"),
    pytest.param({"burst": BurstSettings()}, Counts(500, 1, 1, 0, queued=500), ScalingState(1.0, T1 - 1),
                 "Outstanding 500 needs 500 instances, target 1.00, total 1: waiting for the first instance to answer "
                 "before sizing a burst.", id="blind"),
    pytest.param({"burst": BurstSettings()}, Counts(5, 0, 0, 0, queued=5), ScalingState(0.0, T1 - 1),
                 "Outstanding 5 needs 5 instances, target 1.00, total 0: scaling by +1.", id="blind-starts-one"),
]


@pytest.mark.parametrize(("changes", "counts", "previous", "reason"), REASON_CASES)
def test_reason(changes, counts, previous, reason):
    assert decide(cfg(WAITER, **changes), counts, previous, T1).reason == reason


@pytest.mark.parametrize(
    ("changes", "counts", "expected"),
    [
        pytest.param({"scale_factor": 2}, Counts(10, 5, 5, 5, arrival_rate=10, service_secs=1.0), LoadNeed(20, 0),
                     id="scale-factor-multiplies"),
        pytest.param({}, Counts(1, 1, 1, 1, queued=1, arrival_rate=0, service_secs=1.0), LoadNeed(1, 0),
                     id="nothing-arriving-the-outstanding-count-is-busy"),
        pytest.param({}, Counts(0, 1, 1, 1, arrival_rate=0, service_secs=1.0), LoadNeed(0, 0), id="idle"),
    ],
)
def test_load_need_rows(changes, counts, expected):
    assert load_need(cfg(OURS, **changes), counts) == expected


@pytest.mark.parametrize(
    ("changes", "burst"),
    [
        pytest.param({"min_instances": 0}, {}, id="min-zero"),
        pytest.param({"min_instances": 50}, {}, id="min-equals-max"),
        pytest.param({"scale_up_factor": 0, "scale_down_factor": 0, "expired_instance_restart_rate": 0}, {},
                     id="zeros"),
        pytest.param({"jitter_threshold": 0}, {}, id="jitter-zero"),
        pytest.param({}, {"threshold": 1}, id="burst-threshold-one"),
        pytest.param({}, {"stable_window_secs": 0}, id="burst-window-zero"),
    ],
)
def test_settings_accept_their_edges(changes, burst):
    # built in the test, not in the table: the checks run when the settings are made
    settings = cfg(**changes, burst=BurstSettings(**burst))
    assert all(getattr(settings, k) == v for k, v in changes.items())
    assert all(getattr(settings.burst, k) == v for k, v in burst.items())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda: cfg(concurrency_level=0),
                     "Scaling setting concurrency-level is 0, but it must be a whole number >= 1.", id="concurrency"),
        pytest.param(lambda: BurstSettings(drain_secs=0),
                     "Scaling setting burst drain-secs is 0, but it must be a number of seconds > 0.", id="drain-zero"),
        pytest.param(lambda: BurstSettings(drain_secs="1"),
                     "Scaling setting burst drain-secs is '1', but it must be a number of seconds > 0.",
                     id="drain-string"),
        pytest.param(lambda: BurstSettings(stable_window_secs=-1),
                     "Scaling setting burst stable-window-secs is -1, but it must be a number of seconds >= 0.",
                     id="window"),
        pytest.param(lambda: ScalingState.from_json({"target": "3", "last_tick": 1.0}),
                     "Scaling setting state target is '3', but it must be a finite number.", id="state-target"),
        pytest.param(lambda: ScalingState.from_json({"target": 3, "last_tick": 1, "burst_peak": "x"}),
                     "Scaling setting state burst_peak is 'x', but it must be null or a finite number.",
                     id="state-peak"),
    ],
)
def test_setting_and_state_sentences(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


def test_a_state_saved_before_cold_existed_is_warm():
    assert ScalingState.from_json({"target": 3, "last_tick": 1.0}) == ScalingState(3.0, 1.0)
