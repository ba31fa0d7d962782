"""Arrival rate and service time from counters (time injected)."""

from __future__ import annotations

import pytest

from waiter.throughput import Sample, Throughput, ThroughputMeter


def feed(samples):
    meter = ThroughputMeter(window=2.0, short=0.5)
    result = Throughput(None, None)
    for sample in samples:
        result = meter.add(Sample(*sample))
    return result


@pytest.mark.parametrize(
    ("samples", "rate", "service"),
    [
        pytest.param([(0, 0, 0, 0.0)], None, None, id="one-sample-knows-nothing"),
        pytest.param([(0, 0, 0, 0.0), (1, 100, 100, 1.0)], 100, 0.01, id="steady-littles-law"),
        pytest.param([(0, 0, 0, 0.0), (1, 50, 0, 0.5)], 50, None, id="nothing-finished-no-service-time"),
        pytest.param([(0, 0, 0, 0.0), (1, 10, 10, 2.0), (5, 10, 10, 2.0), (6, 20, 10, 2.0)], 10, 0.2,
                     id="idle-keeps-the-last-service-time"),
        pytest.param([(0, 0, 0, 0.0), (1, 10, 10, 10.0), (2, 20, 20, 20.0), (3, 30, 30, 30.0), (4, 40, 40, 40.0)],
                     10, 1.0, id="window-slides"),
        pytest.param([(0, 0, 0, 0.0), (1, 5, 5, 5.0), (2, 10, 10, 10.0), (2.5, 40, 12, 12.0)], 60, 1.0,
                     id="burst-shows-in-the-short-window"),  # 30 over 2.5 s vs 30 in the last 0.5 s
        pytest.param([(0, 0, 0, 0.0), (1, 100, 0, 0.0), (1.4, 140, 0, 0.0), (1.41, 150, 0, 0.0)], 150 / 1.41, None,
                     id="spans-shorter-than-the-short-window-are-noise"),
        pytest.param([(0, 100, 0, 0.0), (1, 40, 0, 0.0)], 0, None, id="counter-going-back-is-no-change"),
        pytest.param([(5, 0, 0, 0.0), (1, 10, 0, 0.0)], None, None, id="clock-back-restarts"),
    ],
)
def test_throughput(samples, rate, service):
    result = feed(samples)
    assert result.arrival_rate == (None if rate is None else pytest.approx(rate))
    assert result.service_secs == (None if service is None else pytest.approx(service))
