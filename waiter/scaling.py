"""The scaling decision: Waiter's smoothed formula plus a burst mode modelled on Knative's panic mode.

Pure: no I/O, no clock, no asyncio. The autoscaler loop gathers the counts, passes the time in, applies the
returned ``Decision`` and keeps ``Decision.state`` (in Redis, as JSON) for the next cycle.

Waiter's formula (docs/api.md §5.2), with worked numbers for Waiter's defaults (scale-up-factor 0.1,
scale-down-factor 0.001, jitter-threshold 0.5, scale-factor 1, concurrency-level 1)::

    ticks  = whole seconds since the previous cycle
    f_up   = 1 - (1 - scale-up-factor)^ticks            1 tick: 0.1     3 ticks: 1 - 0.9^3 = 0.271
    f_down = 1 - (1 - scale-down-factor)^ticks          1 tick: 0.001
    ideal  = ceil(outstanding * scale-factor / concurrency-level)
    up     = f_up * ideal + (1 - f_up) * target
    down   = f_down * ideal + (1 - f_down) * target
    target'= clamp(up if up >= target else down, min-instances, max-instances)

* Scale up. total 5, target 5.0, outstanding 12, 1 tick: ideal 12, up = 0.1*12 + 0.9*5 = 5.7 >= 5, so
  target' 5.7; delta = 5.7 - 5 = 0.7 >= jitter 0.5, so amount = ceil(0.7 - 0.01) = 1: six instances.
  After 3 ticks instead: up = 0.271*12 + 0.729*5 = 6.90, amount = ceil(1.90 - 0.01) = 2.
* Scale down is slow on purpose. total 10, target 10.0, outstanding 0: each tick multiplies the target by
  0.999. amount = ceil(delta - 0.01) only reaches -1 once delta <= -0.99, i.e. after ln(9.01/10)/ln(0.999) =
  105 ticks; the next instance follows about 110 ticks later.
* Jitter. |delta| < jitter-threshold gives amount 0 (target 5.3 with 5 instances stays at 5).
* Enough instances. delta > 0 but ideal <= total (and total >= min-instances): the smoothed target still
  lags an earlier peak, yet the instances already cover the need, so no scale-up (the target still moves).
* Expired instances are replaced gradually: expired = expired_healthy + min(2, expired_unhealthy);
  unless scaling down with every instance healthy, scale_to += ceil(expired * expired-instance-restart-rate)
  - max(0, healthy - scale_to). 20 healthy of which 20 expired, rate 0.1: scale_to 20 -> 22.

Burst mode (what Waiter lacks; Knative's panic mode). The burst condition holds when ``need >= threshold *
max(healthy, 1)``, ``ideal >= threshold * max(healthy, 1)`` and ``need > total``: the smoothed target lags far
behind the need, and the requests outstanding agree (a throughput need alone can be stale for a moment while the
load changes shape: more, shorter requests arrive at the new rate while the service time measured is still the
old requests' mean). Then the target jumps to the need at once (clamped to min/max-instances) and
``burst_last_seen = now``. While ``now - burst_last_seen < stable_window_secs`` the service is in burst: the
target is the highest throughput need of the burst (``peak``, kept in the state) plus what the queue needs now,
so a burst that drops away keeps its peak. When the window has passed, the target falls to today's need, but at
most to 1/threshold of the burst's level (lower, and a need measured a little short would enter a burst again at
once), and Waiter's formula goes on from there. The need is sized by throughput (below) once the service has been
measured.

* Entry. healthy 5, total 5, 60 req/s of 1 s requests, 60 outstanding: need 60 >= 2*5, ideal 60 >= 2*5 and
  60 > 5, so target 60 and amount +55 in one cycle. Waiter alone: up = 0.1*60 + 0.9*5 = 10.5, amount +6, and
  about 30 ticks to reach 57 (60 - 55*0.9^30).
* Hold. Ten seconds later the load is 5 req/s: the target stays at the peak, 60, until 60 s after the last cycle
  that saw the burst condition.
* Exit. Then the target falls to max(need 5, 60 / threshold 2) = 30; the surplus is killed one idle instance at
  a time, and Waiter's formula takes the target on down from 30.

Knative's defaults are the model for ours: panic at 200% of the ready capacity, a 60 s stable window.
``BurstSettings(enabled=False)`` gives exactly Waiter's behaviour.

Sizing by throughput (Knative sizes from observed concurrency). The outstanding count includes the queue that
piled up while instances started, so it says how long they took to start rather than what the service needs
(1,000 req/s of 10 ms at concurrency-level 8 piles up ~1,000 requests in a 1 s cold start: 125 instances, where 2
serve the load). When the autoscaler has measured the arrival rate and the service time (``Counts.arrival_rate``,
``Counts.service_secs``), the need is Little's law, the concurrency the arrivals keep busy at the instances, plus
the share of the queue, rounded up once (the busy need's fraction serves a small queue)::

    per     = service_secs * scale-factor / concurrency-level
    busy    = arrival_rate * per, or ideal when that is 0 and requests are outstanding (nothing arrives while
              closed-loop clients wait, or nothing moves)
    backlog = min(queued * per / drain, 3 * max(busy, 1))
    need    = ceil(busy + backlog)

``drain`` is ``drain_secs``, except for a cold start's queue: what piled up while nothing was healthy says how
long the first instance took to start, not what the service needs, so it is served within
max(drain_secs, stable_window_secs) by the instances the arrivals need anyway (the state's ``cold`` holds from
the blind cycles until the queue is first empty). Meanwhile Waiter's smoothing, too, follows ``need`` rather than
``ideal`` (the outstanding count is mostly that queue).

* Entry as above with this need. In the window the target is ``ceil(peak + backlog)`` where ``peak`` (kept in
  the state) is the highest ``busy`` of the burst: the queue's share goes once the queue is served, and a burst
  that drops away keeps its peak.
* Exit: the target falls to max(``need``, ``ideal``, level / threshold); Waiter's formula goes on from there.
* Blind: nothing healthy and nothing measured (a cold start). The target holds (one instance when requests wait)
  until the first instance answers (the autoscaler keeps the last service time it measured). Healthy instances
  but nothing measured yet (requests still running): the burst is sized by the outstanding count, at most
  threshold x healthy a cycle, and held. With burst mode off, Waiter's formula applies unchanged.

1,000 req/s x 0.01 s / 8 = 1.25 busy, plus 492 * 0.01 / 8 / 1 s = 0.62 for 492 queued requests: 2 instances.
Load from zero on a small machine: 67 req/s of 0.1 s at concurrency-level 4 with 140 requests queued by a 2.5 s
cold start: ceil(1.675 + 140 * 0.025 / 60) = 2 instances, where drain-secs 1 would start ceil(1.675 + 3.5) = 6.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CAUSES",
    "MAX_EXPIRED_UNHEALTHY",
    "BurstSettings",
    "Counts",
    "Decision",
    "LoadNeed",
    "ScalingSettings",
    "ScalingState",
    "decide",
    "ideal_instances",
    "load_need",
    "smoothing_factor",
]

# Waiter counts at most this many expired unhealthy instances for replacement: they may never become healthy.
MAX_EXPIRED_UNHEALTHY = 2
# Waiter's epsilon: a delta of 1.005 asks for one instance, not two.
_EPSILON = 1e-2
# A burst's share for the queue is at most this many times its busy need (see load_need).
BACKLOG_CAP = 3
# Absorbs float noise only (50 * 1.1 = 55.00000000000001 must not ceil to 56).
_ROUND_OFF = 1e-9


def _ceil(value: float) -> int:
    return math.ceil(value - _ROUND_OFF)


def _check(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"Scaling setting {name} is {value!r}, but it must be {allowed}.")


@dataclass(frozen=True)
class BurstSettings:
    """Burst mode: scale to the need at once when it is far above the ready instances (see module doc)."""

    enabled: bool = True
    # burst when need >= threshold * max(ready, 1)   (ready = healthy instances)
    threshold: float = 2.0
    # no scale-down until the burst condition has been absent this long
    stable_window_secs: float = 60
    # a burst sized by throughput adds the instances that serve the queue within this many seconds
    drain_secs: float = 1

    def __post_init__(self) -> None:
        _check(isinstance(self.enabled, bool), "burst enabled", self.enabled, "true or false")
        _check(_is_number(self.threshold) and self.threshold >= 1, "burst threshold", self.threshold,
               "a number >= 1")
        _check(_is_number(self.stable_window_secs) and self.stable_window_secs >= 0, "burst stable-window-secs",
               self.stable_window_secs, "a number of seconds >= 0")
        _check(_is_number(self.drain_secs) and self.drain_secs > 0, "burst drain-secs", self.drain_secs,
               "a number of seconds > 0")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_DEFAULT_BURST = BurstSettings()
_DESCRIPTION_KEYS = {
    "min_instances": "min-instances",
    "max_instances": "max-instances",
    "concurrency_level": "concurrency-level",
    "scale_factor": "scale-factor",
    "scale_up_factor": "scale-up-factor",
    "scale_down_factor": "scale-down-factor",
    "jitter_threshold": "jitter-threshold",
    "expired_instance_restart_rate": "expired-instance-restart-rate",
}


@dataclass(frozen=True)
class ScalingSettings:
    """A service's scaling parameters (docs/api.md §2.1).

    Checked against the preconditions of Waiter's ``scale-service``, which are wider than what a token may
    hold (a factor of exactly 0 or 1 is allowed here), so that every case of Waiter's own tests can run.
    """

    min_instances: int
    max_instances: int
    concurrency_level: int
    scale_factor: float
    scale_up_factor: float
    scale_down_factor: float
    jitter_threshold: float
    expired_instance_restart_rate: float
    burst: BurstSettings = field(default_factory=BurstSettings)

    def __post_init__(self) -> None:
        for name in ("min-instances", "max-instances"):
            value = getattr(self, name.replace("-", "_"))
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, name, value,
                   "a whole number >= 0")
        _check(self.min_instances <= self.max_instances, "min-instances", self.min_instances,
               f"at most max-instances ({self.max_instances})")
        level = self.concurrency_level
        _check(isinstance(level, int) and not isinstance(level, bool) and level >= 1, "concurrency-level", level,
               "a whole number >= 1")
        _check(_is_number(self.scale_factor) and self.scale_factor > 0, "scale-factor", self.scale_factor,
               "a number > 0")
        for name in ("scale-up-factor", "scale-down-factor", "expired-instance-restart-rate"):
            value = getattr(self, name.replace("-", "_"))
            _check(_is_number(value) and 0 <= value <= 1, name, value, "a number from 0 to 1")
        jitter = self.jitter_threshold
        _check(_is_number(jitter) and 0 <= jitter < 1, "jitter-threshold", jitter, "a number >= 0 and < 1")

    @classmethod
    def from_description(cls, effective: Mapping[str, Any], burst: BurstSettings = _DEFAULT_BURST) -> ScalingSettings:
        """Settings from a service's effective description (kebab-case keys, defaults already filled)."""
        missing = [key for key in _DESCRIPTION_KEYS.values() if key not in effective]
        if missing:
            raise ValueError(f"Service description lacks the scaling parameters {', '.join(missing)}.")
        values = {attr: effective[key] for attr, key in _DESCRIPTION_KEYS.items()}
        return cls(**values, burst=burst)


@dataclass(frozen=True)
class Counts:
    """What the autoscaler knows about one service this cycle."""

    outstanding: int  # in-flight + queued, summed over all routers
    total: int  # instances requested from the scheduler
    scheduled: int  # instances the scheduler actually runs (task-count)
    healthy: int
    expired_healthy: int = 0
    expired_unhealthy: int = 0
    queued: int = 0  # of outstanding, requests waiting for a slot
    arrival_rate: float | None = None  # requests a second arriving lately, summed over all routers
    service_secs: float | None = None  # mean time the instances took per request lately (None: none finished)


@dataclass(frozen=True)
class ScalingState:
    """What the leader keeps between cycles (in Redis, as JSON), so a new leader continues the smoothing."""

    target: float  # the smoothed instance count (a float: fractions accumulate over ticks)
    # Epoch seconds the smoothing has been applied up to. It advances by whole ticks, so a cycle that runs
    # 0.99 s after the previous one loses nothing: its fraction counts in the next cycle's ticks.
    last_tick: float
    burst_last_seen: float | None = None  # last time the burst condition held (None = not in burst)
    burst_peak: float | None = None  # the highest throughput need of this burst (None: not measured)
    # The queue piled up while nothing was healthy (a cold start) and has not been served out yet.
    cold: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "last_tick": self.last_tick, "burst_last_seen": self.burst_last_seen,
                "burst_peak": self.burst_peak, "cold": self.cold}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScalingState:
        for name in ("target", "last_tick"):
            value = data.get(name)
            _check(_is_number(value), f"state {name}", value, "a finite number")
        optional: dict[str, float | None] = {}
        for name in ("burst_last_seen", "burst_peak"):
            value = data.get(name)
            _check(value is None or _is_number(value), f"state {name}", value, "null or a finite number")
            optional[name] = None if value is None else float(value)
        cold = data.get("cold", False)  # absent in states saved before it existed
        _check(isinstance(cold, bool), "state cold", cold, "true or false")
        return cls(float(data["target"]), float(data["last_tick"]), **optional, cold=cold)


@dataclass(frozen=True)
class Decision:
    scale_to: int  # instances the service should have after this cycle
    amount: int  # scale_to - total
    state: ScalingState  # to keep for the next cycle
    scaling_state: str  # "scale-up" | "scale-down" | "stable"
    burst: bool  # burst mode active this cycle
    reason: str  # one short sentence for logs / debugging
    # what decided, one of CAUSES (a bounded label for metrics): first-cycle, blind (waiting for the first
    # instance), burst (entered this cycle), burst-hold, burst-exit (released the burst's surplus), waiter
    cause: str = "waiter"


CAUSES = ("first-cycle", "blind", "burst", "burst-hold", "burst-exit", "waiter")


def smoothing_factor(factor: float, ticks: int) -> float:
    """A per-tick factor applied ``ticks`` times: 1 - (1 - factor)^ticks (Waiter's ``normalize-factor``)."""
    return 1 - (1 - factor) ** ticks


def ideal_instances(settings: ScalingSettings, outstanding: int) -> int:
    """Instances the outstanding requests call for: ceil(outstanding * scale-factor / concurrency-level)."""
    return max(0, _ceil(outstanding * settings.scale_factor / settings.concurrency_level))


def _clamp(settings: ScalingSettings, value: float) -> float:
    return float(min(max(value, settings.min_instances), settings.max_instances))


def _smoothed_target(settings: ScalingSettings, ideal: int, target: float, ticks: int) -> float:
    f_up = smoothing_factor(settings.scale_up_factor, ticks)
    f_down = smoothing_factor(settings.scale_down_factor, ticks)
    up = f_up * ideal + (1 - f_up) * target
    down = f_down * ideal + (1 - f_down) * target
    return _clamp(settings, up if up >= target else down)


def _amount(settings: ScalingSettings, target: float, ideal: int, total: int) -> tuple[int, str]:
    """Waiter's whole-instance step towards the target, with why it is zero when it is."""
    delta = target - total
    if delta > 0 and ideal <= total and total >= settings.min_instances:
        return 0, f"the {total} instances already cover the need of {ideal}"
    if abs(delta) < settings.jitter_threshold:
        return 0, f"the gap of {delta:+.2f} is below the jitter threshold {settings.jitter_threshold:g}"
    return math.ceil(delta - _EPSILON), ""


def _with_expired(settings: ScalingSettings, counts: Counts, amount: int) -> int:
    """scale_to after Waiter's gradual replacement of expired instances."""
    scale_to = counts.total + amount
    expired = counts.expired_healthy + min(MAX_EXPIRED_UNHEALTHY, counts.expired_unhealthy)
    # Scaling down with every instance healthy: the instance killer prefers expired ones, nothing to add.
    if expired > 0 and not (amount < 0 and counts.total == counts.healthy):
        replace = _ceil(expired * settings.expired_instance_restart_rate)
        scale_to += replace - max(0, counts.healthy - scale_to)
    return scale_to


def _ticks(previous: ScalingState, now: float) -> tuple[int, float]:
    """Whole seconds since the previous cycle and the new ``last_tick``.

    When the clock went back (or a new leader's runs behind) there are no ticks and the smoothing restarts from
    ``now`` rather than stall until the old ``last_tick`` comes round again."""
    ticks = max(0, math.floor(now - previous.last_tick))
    return ticks, min(now, previous.last_tick + ticks)


def _first_cycle(settings: ScalingSettings, counts: Counts, now: float) -> Decision:
    if counts.total < settings.min_instances:
        scale_to = settings.min_instances
        reason = f"First cycle: scaling from {counts.total} to min-instances {scale_to}."
    else:
        scale_to = counts.total
        reason = f"First cycle: no scaling; smoothing starts from the {scale_to} instances requested."
    amount = scale_to - counts.total
    state = ScalingState(target=float(scale_to), last_tick=now)
    return Decision(scale_to, amount, state, _scaling_state(amount), False, reason, "first-cycle")


def _scaling_state(amount: int) -> str:
    return "scale-up" if amount > 0 else "scale-down" if amount < 0 else "stable"


@dataclass(frozen=True)
class LoadNeed:
    """Instances by Little's law: what the arrivals keep busy, and what drains the queue in ``drain_secs``."""

    busy: float
    backlog: float

    @property
    def total(self) -> int:
        return _ceil(self.busy + self.backlog)


def load_need(settings: ScalingSettings, counts: Counts, *, cold: bool = False) -> LoadNeed | None:
    """arrival rate x service time / concurrency-level (x scale-factor), plus the queue's share; None unmeasured."""
    if counts.arrival_rate is None or counts.service_secs is None:
        return None
    per_request = counts.service_secs * settings.scale_factor / settings.concurrency_level
    busy = max(0.0, counts.arrival_rate * per_request)
    if busy == 0:
        # None arrived lately: work still present waits on its clients (closed loop) or nothing moves; the
        # outstanding count, queue included, is the need then (none when idle).
        return LoadNeed(ideal_instances(settings, counts.outstanding), 0)
    # The queue's share is at most BACKLOG_CAP times the busy need: a queue that grew during a start-up is served
    # within seconds without one instance per queued request (each would be released one kill at a time).
    burst = settings.burst
    drain = max(burst.drain_secs, burst.stable_window_secs) if cold else burst.drain_secs
    backlog = min(max(0.0, counts.queued * per_request / drain), BACKLOG_CAP * max(1.0, busy))
    return LoadNeed(busy, backlog)


def decide(settings: ScalingSettings, counts: Counts, previous: ScalingState | None, now: float) -> Decision:
    """This cycle's decision for one service (see the module docstring for the maths).

    ``previous`` None is the first cycle of this leader for this service: no scaling (Waiter), except up to
    min-instances; the smoothing starts from ``counts.total``.
    """
    if previous is None:
        return _first_cycle(settings, counts, now)
    ticks, last_tick = _ticks(previous, now)
    ideal = ideal_instances(settings, counts.outstanding)
    burst = settings.burst
    measured = counts.arrival_rate is not None and counts.service_secs is not None
    # Nothing healthy and nothing measured (a cold start): the queue only says how long the first instance took to
    # start, not what the service needs, so wait for the first answers.
    blind = burst.enabled and not measured and counts.healthy == 0
    cold = blind or (previous.cold and counts.queued > 0)
    load = load_need(settings, counts, cold=cold) if burst.enabled else None
    need = ideal if load is None else load.total
    # While a cold start's queue is served, Waiter's smoothing too follows the throughput need rather than the
    # outstanding count (that queue).
    sized = need if cold and load is not None else ideal
    target = _smoothed_target(settings, sized, previous.target, ticks)
    # A burst needs the requests to be there too: the outstanding count must also call for threshold x the healthy
    # instances. A throughput need alone can be stale for a moment while the load changes shape (more, shorter
    # requests: the arrival rate is already the new one, the service time still the old one's mean).
    far = burst.threshold * max(counts.healthy, 1)
    entered = burst.enabled and not blind and need >= far and ideal >= far and need > counts.total
    seen = now if entered else previous.burst_last_seen
    in_burst = entered or (burst.enabled and seen is not None and now - seen < burst.stable_window_secs)
    peak = None
    if blind:
        # Hold what was requested (at least one instance when requests wait) until the first instance answers.
        target = _clamp(settings, max(previous.target, 1.0 if counts.outstanding else 0.0))
    elif in_burst and load is not None:
        # Sized by throughput: hold the busiest need seen in the window, plus what the queue needs now. A surplus
        # started while nothing was measured is released at once.
        peak = max(previous.burst_peak or 0, load.busy)
        target = _clamp(settings, _ceil(peak + load.backlog))
    elif in_burst:
        # Measured nothing, yet instances serve (their first requests still run): the outstanding count, at most
        # threshold x the healthy instances a cycle (a cold start's queue is no measure of the need).
        if entered:
            target = max(target, _clamp(settings, min(ideal, burst.threshold * max(counts.healthy, 1))))
        target = _clamp(settings, max(target, previous.target))
    elif previous.burst_last_seen is not None and load is not None:
        # The burst is over: release what it held beyond today's need, at most down to 1/threshold of it (lower,
        # and a need measured a little short would enter a burst again at once); Waiter's smoothing goes on.
        target = _clamp(settings, max(need, sized, previous.target / burst.threshold))
    amount, why_zero = _amount(settings, target, max(sized, need) if in_burst else sized, counts.total)
    scale_to = _with_expired(settings, counts, amount)
    if blind or (in_burst and peak is None):
        # Nothing measured, nothing to release; only a max-instances lowered meanwhile is obeyed.
        scale_to = max(scale_to, min(counts.total, settings.max_instances))
    amount = scale_to - counts.total
    state = ScalingState(target=target, last_tick=last_tick, burst_last_seen=seen if in_burst else None,
                         burst_peak=peak, cold=cold)
    reason = _reason(counts, ideal, load, target, amount, entered, in_burst, why_zero, blind)
    exited = not in_burst and previous.burst_last_seen is not None and load is not None
    cause = ("blind" if blind else "burst" if entered else "burst-hold" if in_burst else "burst-exit" if exited
             else "waiter")
    return Decision(scale_to, amount, state, _scaling_state(amount), in_burst, reason, cause)


def _reason(
    counts: Counts,
    ideal: int,
    load: LoadNeed | None,
    target: float,
    amount: int,
    entered: bool,
    in_burst: bool,
    why_zero: str,
    blind: bool,
) -> str:
    head = f"Outstanding {counts.outstanding} needs {ideal} instances"
    if load is not None:
        head += (f", throughput {counts.arrival_rate:.1f}/s x {counts.service_secs:.3f} s needs {load.busy:.2f}"
                 f" (+{load.backlog:.2f} for the queue of {counts.queued})")
    head += f", target {target:.2f}, total {counts.total}"
    if blind and amount == 0:
        return f"{head}: waiting for the first instance to answer before sizing a burst."
    if entered:
        return f"{head}: burst, scaling straight to the need ({amount:+d})."
    if amount != 0:
        hold = " (burst hold)" if in_burst else ""
        return f"{head}: scaling by {amount:+d}{hold}."
    if in_burst:
        return f"{head}: burst hold, no scale-down inside the stable window."
    return f"{head}: stable, {why_zero}." if why_zero else f"{head}: stable."
