"""Table tests of what routers make of each other's counts (each request counted once), and of how many slots a
router uses of each instance while peers wait (waiter.handover.plan)."""

from __future__ import annotations

import pytest

from waiter.coordinator import HANDOVER_GRACE_SECS, demand, settled, summed
from waiter.handover import GAVE, WANT, Message, Want, decode, encode, plan
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


def reservations(
    level: int, held: tuple[int, ...], busy: tuple[int, ...], queued_at: tuple[float, ...] = ()
) -> Reservations:
    """Instances a, b, ... of which this router holds ``held`` slots with ``busy`` requests, and waiters that
    queued at ``queued_at``."""
    res = Reservations(concurrency_level=level)
    for index, (slots, requests) in enumerate(zip(held, busy, strict=True)):
        res.add(Instance(id=f"s.{chr(97 + index)}", service_id="s", host="h", port=1, started_at=index), slots)
        for _ in range(requests):
            assert res.try_acquire() is not None
    for at in queued_at:
        assert not res.enqueue(at).done()
    return res


def wants(*peers: tuple[int, float]) -> list[Want]:
    return [Want(f"peer{i}", need, oldest, until=1e9) for i, (need, oldest) in enumerate(peers)]


@pytest.mark.parametrize(
    ("level", "held", "busy", "queued_at", "peers", "grow", "expected"),
    [
        pytest.param(2, (2, 2), (0, 0), (), (), False, {"s.a": 2, "s.b": 2}, id="alone-keeps-everything"),
        pytest.param(2, (1, 0), (1, 0), (), (), True, {"s.a": 2, "s.b": 2}, id="alone-grows-on-a-tick"),
        pytest.param(2, (1, 0), (1, 0), (), (), False, {"s.a": 1, "s.b": 0}, id="no-tick-no-growth"),
        pytest.param(1, (1,), (0,), (), ((1, 5.0),), False, {"s.a": 0}, id="peer-waits-idle-slot-goes"),
        pytest.param(2, (2, 2), (1, 0), (), ((3, 5.0),), True, {"s.a": 1, "s.b": 0}, id="idle-slots-go-up-to-need"),
        pytest.param(2, (2, 2), (0, 0), (), ((1, 5.0),), True, {"s.a": 1, "s.b": 2}, id="only-as-many-as-needed"),
        pytest.param(2, (2, 2), (0, 0), (), ((1, 5.0), (1, 6.0)), True, {"s.a": 0, "s.b": 2}, id="needs-add-up"),
        pytest.param(1, (1,), (1,), (), ((1, 5.0),), True, {"s.a": 1}, id="busy-slot-kept-while-no-queue"),
        pytest.param(1, (1,), (1,), (4.0,), ((1, 5.0),), True, {"s.a": 1}, id="our-waiter-older-keeps-and-grows"),
        pytest.param(2, (1,), (1,), (4.0,), ((1, 5.0),), True, {"s.a": 2}, id="our-waiter-older-takes-free"),
        pytest.param(1, (1,), (1,), (6.0,), ((1, 5.0),), True, {"s.a": 0}, id="peer-waiter-older-busy-slot-goes"),
        pytest.param(4, (4,), (4,), (6.0,), ((1, 5.0),), True, {"s.a": 3}, id="older-peer-gets-what-it-needs"),
        pytest.param(1, (1, 0), (1, 0), (6.0,), ((1, 5.0),), True, {"s.a": 0, "s.b": 1}, id="free-slots-are-anyones"),
        pytest.param(1, (1,), (1,), (6.0,), ((1, 5.0), (2, 7.0)), True, {"s.a": 0}, id="any-older-peer-first"),
    ],
)
async def test_plan(level, held, busy, queued_at, peers, grow, expected) -> None:  # type: ignore[no-untyped-def]
    res = reservations(level, held, busy, queued_at)
    leased = {f"s.{chr(97 + i)}": n for i, n in enumerate(held)}
    assert plan(res, leased, wants(*peers), grow) == expected


async def test_plan_leases_an_instance_never_leased_at_once() -> None:
    res = reservations(2, (2, 0), (0, 0))
    assert plan(res, {"s.a": 2}, [], grow=False) == {"s.a": 2, "s.b": 2}


async def test_plan_gives_back_instances_out_of_rotation_as_they_finish() -> None:
    res = reservations(2, (2, 2), (1, 0))
    res.remove("s.a")
    res.remove("s.b")
    assert plan(res, {"s.a": 2, "s.b": 2}, [], grow=True) == {"s.a": 0, "s.b": 0}


@pytest.mark.parametrize(
    ("routable", "queued_ago", "expected"),
    [
        pytest.param(True, (), (1, 0), id="nothing-waits"),
        pytest.param(True, (0.01,), (1, 0), id="young-waiter-may-wait-for-a-handover"),
        pytest.param(True, (HANDOVER_GRACE_SECS + 0.01, 0.01), (2, 1), id="older-than-the-grace-is-demand"),
        pytest.param(True, (HANDOVER_GRACE_SECS,), (2, 1), id="at-the-grace-counts"),
        pytest.param(False, (0.01, 0.0), (2, 2), id="no-instance-counts-at-once"),
    ],
)
async def test_settled(routable, queued_ago, expected) -> None:  # type: ignore[no-untyped-def]
    now = 1000.0
    res = reservations(1, (1,), (1,), tuple(now - ago for ago in queued_ago))
    if not routable:
        res.remove("s.a")
        res.release("s.a")
    assert settled(res, now) == expected


@pytest.mark.parametrize(
    ("mine", "elsewhere", "slots", "expected"),
    [
        pytest.param((0, 0), (0, 0), 1, (0, 0), id="idle"),
        pytest.param((1, 0), (1, 0), 1, (1, 0), id="a-request-that-moved-counts-once"),
        pytest.param((0, 1), (1, 0), 1, (2, 1), id="a-real-queue-counts"),
        pytest.param((2, 3), (5, 4), 4, (11, 7), id="busy-everywhere-capped-at-the-slots"),
        pytest.param((3, 0), (0, 0), 2, (3, 0), id="own-count-never-cut"),
        pytest.param((1, 0), (2, 0), 0, (1, 0), id="nothing-healthy-keeps-own"),
    ],
)
def test_demand(mine, elsewhere, slots, expected) -> None:  # type: ignore[no-untyped-def]
    assert demand(*mine, *elsewhere, slots) == expected


@pytest.mark.parametrize(
    "message",
    [Message(WANT, "r1", "s", need=2, oldest=5.5), Message(GAVE, "r1", "s", to="r2"), Message(GAVE, "r1", "s")],
)
def test_messages_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


@pytest.mark.parametrize("text", ["r1", '["hello"]', '["want", "r1", "s", "many", 1]', "[1, 2", '{"a": 1}', "[]"])
def test_foreign_or_malformed_messages_are_ignored(text: str) -> None:
    assert decode(text) is None
