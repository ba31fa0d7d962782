"""Table tests of slots and the FIFO queue (no network, no clock)."""

from __future__ import annotations

import asyncio
import random

import pytest

from waiter.reservation import QueueFull, Reservations
from waiter.scheduler.base import Instance


def inst(name: str, started_at: float) -> Instance:
    return Instance(id=f"svc.{name}", service_id="svc", host="127.0.0.1", port=1, started_at=started_at)


A, B, C = inst("a", 1.0), inst("b", 2.0), inst("c", 3.0)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param("oldest", ["svc.a", "svc.a", "svc.b", "svc.b", "svc.c", "svc.c"], id="oldest-fills-oldest-first"),
        pytest.param("youngest", ["svc.c", "svc.c", "svc.b", "svc.b", "svc.a", "svc.a"], id="youngest-first"),
    ],
)
def test_load_balancing_order(policy: str, expected: list[str]) -> None:
    r = Reservations(concurrency_level=2, load_balancing=policy)
    for i in (B, C, A):
        r.add(i)
    got = [r.try_acquire() for _ in range(6)]
    assert [i.id for i in got if i] == expected
    assert r.try_acquire() is None
    assert r.in_flight == 6


def test_random_spreads_and_respects_capacity() -> None:
    r = Reservations(concurrency_level=3, load_balancing="random", rng=random.Random(7))
    for i in (A, B, C):
        r.add(i)
    ids = [r.try_acquire().id for _ in range(9)]  # type: ignore[union-attr]
    assert sorted(ids) == sorted(["svc.a", "svc.b", "svc.c"] * 3)
    assert r.try_acquire() is None


async def test_fifo_handoff_on_release() -> None:
    r = Reservations(concurrency_level=1)
    r.add(A)
    first = r.try_acquire()
    assert first is A
    waiters = [r.enqueue() for _ in range(3)]
    assert r.outstanding == 4 and r.queued == 3
    # A new arrival may not jump the queue even when a slot frees up at the same time.
    r.release(A.id)
    assert waiters[0].done() and waiters[0].result() is A
    assert r.try_acquire() is None
    r.release(A.id)
    assert waiters[1].done() and not waiters[2].done()


async def test_adding_an_instance_serves_waiters() -> None:
    r = Reservations(concurrency_level=2)
    waiters = [r.enqueue() for _ in range(3)]
    assert r.capacity == 0
    r.add(A)
    assert [w.done() for w in waiters] == [True, True, False]
    r.add(B)
    assert waiters[2].result() is B


async def test_queue_full() -> None:
    r = Reservations(concurrency_level=1, max_queue_length=2)
    r.enqueue()
    r.enqueue()
    with pytest.raises(QueueFull):
        r.enqueue()


async def test_abandoned_waiter_returns_a_slot_it_was_given() -> None:
    r = Reservations(concurrency_level=1)
    r.add(A)
    assert r.try_acquire() is A
    waiter = r.enqueue()
    r.release(A.id)  # handed to the waiter ...
    r.abandon(waiter)  # ... which gave up at the same moment: the slot must come back
    assert r.in_flight == 0
    assert r.try_acquire() is A


async def test_abandoned_pending_waiter_leaves_queue() -> None:
    r = Reservations(concurrency_level=1)
    waiter = r.enqueue()
    r.abandon(waiter)
    assert r.queued == 0 and waiter.cancelled()


def test_removed_instance_keeps_its_count_until_requests_end() -> None:
    r = Reservations(concurrency_level=1)
    r.add(A)
    assert r.try_acquire() is A
    r.remove(A.id)
    r.add(A)  # back in rotation while its request still runs: no second slot
    assert r.try_acquire() is None
    r.release(A.id)
    assert r.try_acquire() is A


def test_removed_instance_is_not_chosen() -> None:
    r = Reservations(concurrency_level=5)
    r.add(A)
    r.add(B)
    r.remove(A.id)
    assert {r.try_acquire().id for _ in range(5)} == {"svc.b"}  # type: ignore[union-attr]
    assert r.routable_ids() == ["svc.b"]


async def test_fail_waiters() -> None:
    r = Reservations(concurrency_level=1)
    waiters = [r.enqueue() for _ in range(2)]
    r.fail_waiters(RuntimeError("broken"))
    assert all(isinstance(w.exception(), RuntimeError) for w in waiters)
    assert r.queued == 0


def test_release_of_unknown_instance_is_ignored() -> None:
    r = Reservations(concurrency_level=1)
    r.release("svc.nope")
    assert r.in_flight == 0


@pytest.mark.parametrize("level", [1, 2, 7])
async def test_never_more_than_concurrency_level(level: int) -> None:
    r = Reservations(concurrency_level=level)
    r.add(A)
    waiters = [r.enqueue() for _ in range(level * 3)]
    assert sum(w.done() for w in waiters) == level
    assert r.in_use(A.id) == level
    for _ in range(level):
        r.release(A.id)
    assert sum(w.done() for w in waiters) == 2 * level
    assert r.in_use(A.id) == level
    await asyncio.sleep(0)


async def test_capacity_below_concurrency_level_is_respected_and_can_grow() -> None:
    r = Reservations(concurrency_level=4)
    r.add(A, capacity=1)
    assert r.try_acquire() is A
    assert r.try_acquire() is None
    waiter = r.enqueue()
    r.set_capacity(A.id, 2)  # a lease grew: the waiter is served at once
    assert waiter.done() and waiter.result() is A
    r.set_capacity(A.id, 1)  # shrinking never cuts requests short; it only stops new ones
    r.release(A.id)
    assert r.try_acquire() is None
    r.release(A.id)
    assert r.try_acquire() is A
    r.set_capacity(A.id, 99)  # a lease never lifts an instance above its concurrency-level
    assert [r.try_acquire() for _ in range(4)] == [A, A, A, None]


@pytest.mark.parametrize("policy", ["oldest", "youngest", "random"])
def test_expired_instances_are_used_last(policy: str) -> None:
    r = Reservations(concurrency_level=1, load_balancing=policy)
    for i in (A, B, C):
        r.add(i)
    r.set_expired(A.id)
    r.set_expired(C.id)
    assert r.try_acquire() is B
    assert {r.try_acquire().id, r.try_acquire().id} == {A.id, C.id}  # type: ignore[union-attr]
    assert r.try_acquire() is None


async def test_waiters_ages_count_only_those_still_waiting() -> None:
    r = Reservations(concurrency_level=1)
    first, second, third = r.enqueue(1.0), r.enqueue(2.0), r.enqueue(3.0)
    assert (r.oldest_wait(), r.queued_since(2.0), r.queued_since(0.5)) == (1.0, 2, 0)
    r.abandon(second)
    assert (r.oldest_wait(), r.queued_since(3.0)) == (1.0, 2)
    first.cancel()  # e.g. its client went away: no longer waiting, though still in the deque
    assert (r.oldest_wait(), r.queued_since(3.0)) == (3.0, 1)
    r.add(A)
    assert third.result() is A and r.oldest_wait() is None and r.queued_since(9.0) == 0


def test_release_calls_the_hook_after_the_queue_had_its_turn() -> None:
    r = Reservations(concurrency_level=1)
    r.add(A)
    seen: list[tuple[str, int]] = []
    r.on_release = lambda iid: seen.append((iid, r.in_use(iid)))
    assert r.try_acquire() is A
    r.release(A.id)
    assert seen == [(A.id, 0)]


def test_an_instance_out_of_rotation_counts_every_request_down_to_the_last() -> None:
    r = Reservations(concurrency_level=2)
    r.add(A)
    assert [r.try_acquire(), r.try_acquire()] == [A, A]
    r.remove(A.id)
    r.release(A.id)  # one of its two requests ends: the other still holds a slot
    assert (r.in_flight, r.in_use(A.id)) == (1, 1)
    r.add(A)  # back in rotation: one slot free, not two
    assert [r.try_acquire(), r.try_acquire()] == [A, None]
    r.remove(A.id)  # out again: it must leave the rotation as it did the first time
    assert r.routable_ids() == [] and r.try_acquire() is None
    r.release(A.id)
    r.release(A.id)
    assert (r.in_flight, r.in_use(A.id)) == (0, 0)
    r.release(A.id)  # a release too many changes nothing
    assert r.in_flight == 0


def test_an_instance_back_after_its_last_request_starts_afresh() -> None:
    r = Reservations(concurrency_level=2)
    r.add(A)
    assert r.try_acquire() is A
    r.remove(A.id)
    r.release(A.id)
    r.add(A, capacity=1)
    assert [r.try_acquire(), r.try_acquire()] == [A, None]
    assert r.routable_ids() == [A.id]


async def test_a_waiter_queued_without_a_time_counts_as_queued_at_the_epoch() -> None:
    r = Reservations(concurrency_level=1)
    r.enqueue()
    assert (r.oldest_wait(), r.queued_since(0.0)) == (0.0, 1)
