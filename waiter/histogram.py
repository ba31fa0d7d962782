"""Bucket counts kept on the request path and turned into Prometheus histograms only when scraped.

``observe`` is a bisect and two additions (no lock, no label lookup): the request path pays for nothing else.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds: from a fast backend's millisecond to a cold start's minutes.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = SECONDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self, zeros: int = 0) -> list[tuple[str, float]]:
        """Prometheus buckets (``le``, cumulative count); ``zeros`` more observations of 0 not recorded one by one."""
        out: list[tuple[str, float]] = []
        total = zeros
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out
