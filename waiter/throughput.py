"""Arrival rate and service time of a service from its running counters (pure: the time is a parameter).

The autoscaler samples three counters every cycle: requests received (summed over all routers), requests this
router finished, and the seconds those held their slots. Over the last ``window`` seconds:

    arrival rate = received / elapsed, or the rate over the last ``short`` seconds when higher (a burst shows
                   in it first; shorter spans are noise: counts from other routers arrive in batches)
    service time = seconds held / finished in the window; else the last one measured; None if none ever was

Counters that go back (a router left, its total no longer summed) count as no change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_SECS = 2.0
SHORT_SECS = 0.5


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    received: int
    finished: int
    served_secs: float


@dataclass(frozen=True, slots=True)
class Throughput:
    arrival_rate: float | None  # None until two samples exist
    service_secs: float | None


class ThroughputMeter:
    def __init__(self, window: float = WINDOW_SECS, short: float = SHORT_SECS) -> None:
        self.window = window
        self.short = short
        self.samples: deque[Sample] = deque()
        self.last_service: float | None = None

    def add(self, sample: Sample) -> Throughput:
        samples = self.samples
        if samples and sample.time <= samples[-1].time:
            samples.clear()  # the clock went back: start again (the last service time measured still holds)
        samples.append(sample)
        # Keep one sample at or before the window's start as the base of the window.
        while len(samples) > 2 and samples[1].time <= sample.time - self.window:
            samples.popleft()
        if len(samples) < 2:
            return Throughput(None, None)
        base = samples[0]
        rate = _rate(base, sample)
        recent = next((s for s in reversed(samples) if s.time <= sample.time - self.short), None)
        if recent is not None and recent is not base:
            rate = max(rate, _rate(recent, sample))
        finished = sample.finished - base.finished
        served = sample.served_secs - base.served_secs
        if finished > 0 and served > 0:
            self.last_service = served / finished
        return Throughput(rate, self.last_service)


def _rate(start: Sample, end: Sample) -> float:
    return max(0, end.received - start.received) / (end.time - start.time)
