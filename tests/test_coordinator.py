"""Table tests of what routers make of each other's counts, and of how many slots a router leases."""

from __future__ import annotations

import pytest

from waiter.coordinator import lease_wants, summed
from waiter.reservation import Reservations
from waiter.scheduler.base import Instance
from waiter.state.base import RouterStats


def stats(outstanding: int, queued: int = 0, total: int = 0, last: float | None = None) -> RouterStats:
    return RouterStats(outstanding, queued, total, last)


@pytest.mark.parametrize(
    ("published", "outstanding", "elsewhere", "queued_elsewhere", "last"),
    [
        pytest.param({}, {}, {}, {}, {}, id="nobody"),
        pytest.param({"me": {"s": stats(3, 1, 9, 5.0)}}, {"s": 3}, {}, {}, {"s": 5.0}, id="only-me"),
        pytest.param(
            {"me": {"s": stats(3)}, "b": {"s": stats(4, 2, last=7.0)}, "c": {"s": stats(1, last=6.0), "t": stats(2)}},
            {"s": 8, "t": 2},
            {"s": 5, "t": 2},
            {"s": 2, "t": 0},
            {"s": 7.0},
            id="summed-over-routers",
        ),
    ],
)
def test_summed(published, outstanding, elsewhere, queued_elsewhere, last) -> None:  # type: ignore[no-untyped-def]
    view = summed(published, "me")
    assert view.outstanding == outstanding
    assert view.outstanding_elsewhere == elsewhere
    assert {k: v for k, v in view.queued_elsewhere.items() if k in queued_elsewhere} == queued_elsewhere
    assert view.last_request_time == last


def reservations(level: int, held: tuple[int, ...], busy: tuple[int, ...], queued: int) -> Reservations:
    """Instances a, b, ... of which this router holds ``held`` slots with ``busy`` requests, and a queue."""
    res = Reservations(concurrency_level=level)
    for index, (slots, requests) in enumerate(zip(held, busy, strict=True)):
        res.add(Instance(id=f"s.{chr(97 + index)}", service_id="s", host="h", port=1, started_at=index), slots)
        for _ in range(requests):
            assert res.try_acquire() is not None
    for _ in range(queued):
        assert not res.enqueue().done()
    return res


@pytest.mark.parametrize(
    ("level", "held", "busy", "queued", "queued_elsewhere", "outstanding_elsewhere", "wants"),
    [
        pytest.param(2, (2, 2), (0, 0), 0, 0, 0, {"s.a": 2, "s.b": 2}, id="alone-keeps-everything"),
        pytest.param(2, (2, 2), (1, 0), 0, 3, 3, {"s.a": 1, "s.b": 0}, id="others-wait-give-back-idle"),
        pytest.param(4, (4,), (4,), 0, 4, 4, {"s.a": 4}, id="busy-slots-are-kept"),
        pytest.param(4, (2,), (2,), 2, 4, 4, {"s.a": 2}, id="both-queue-fair-share-by-outstanding"),
        pytest.param(4, (1,), (1,), 5, 2, 2, {"s.a": 3}, id="we-wait-most-we-want-most"),
        pytest.param(4, (4,), (0,), 0, 0, 10, {"s.a": 4}, id="others-busy-but-not-waiting"),
    ],
)
async def test_lease_wants(level, held, busy, queued, queued_elsewhere, outstanding_elsewhere, wants) -> None:  # type: ignore[no-untyped-def]
    res = reservations(level, held, busy, queued)
    assert lease_wants(res, queued_elsewhere, outstanding_elsewhere) == wants
