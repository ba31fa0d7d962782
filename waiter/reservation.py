"""Slots and the FIFO wait queue of one service on this router. No network, no clock.

Each routable instance offers ``concurrency-level`` slots. A request takes a slot at once when one is free and
nobody waits; otherwise it joins the FIFO queue and a released (or newly added) slot is handed straight to the
oldest waiter, so wake-ups are never lost and order is kept. An instance taken out of rotation keeps its count of
slots in use until its last request ends, so putting it back can never exceed its concurrency level. Waiters carry
the time they queued (the caller's clock), so the coordinator can tell a request that waits for a slot a peer
router is handing over (milliseconds) from one that waits for capacity.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from waiter.scheduler.base import Instance


class QueueFull(Exception):
    """The wait queue already holds max-queue-length requests."""


@dataclass(slots=True)
class _Slots:
    instance: Instance
    capacity: int  # slots this router may use: concurrency-level, or its lease when routers share instances
    in_use: int = 0
    routable: bool = True
    expired: bool = False  # chosen only when no other instance has a free slot, so it drains for its replacement


@dataclass(slots=True)
class Reservations:
    concurrency_level: int
    load_balancing: str = "oldest"
    max_queue_length: int = 1_000_000
    rng: random.Random = field(default_factory=random.Random)
    _slots: dict[str, _Slots] = field(default_factory=dict)
    _order: list[_Slots] = field(default_factory=list)  # routable instances, oldest first
    _waiters: deque[tuple[asyncio.Future[Instance], float]] = field(default_factory=deque)  # (waiter, queued at)
    in_flight: int = 0
    # Called with the instance id whenever a slot is released; set only while slots are promised to peer routers.
    on_release: Callable[[str], None] | None = None

    # -- instances -------------------------------------------------------------------------------------------

    def add(self, instance: Instance, capacity: int | None = None) -> None:
        """Put an instance in rotation (again) with ``capacity`` slots (default: concurrency-level).

        Its in-flight count survives a removal, so it can never exceed its capacity by coming back."""
        capacity = self.concurrency_level if capacity is None else min(capacity, self.concurrency_level)
        slots = self._slots.get(instance.id)
        if slots is None:
            slots = self._slots[instance.id] = _Slots(instance, capacity)
        elif slots.routable:
            self.set_capacity(instance.id, capacity)
            return
        else:  # back in rotation before its last request ended: in_use carries over
            slots.instance, slots.capacity, slots.routable = instance, capacity, True
        self._order.append(slots)
        self._order.sort(key=lambda s: (s.instance.started_at, s.instance.id))
        self._dispatch()

    def remove(self, instance_id: str) -> None:
        """Take an instance out of rotation; requests already on it finish normally."""
        slots = self._slots.get(instance_id)
        if slots is None or not slots.routable:
            return
        slots.routable = False
        self._order.remove(slots)
        if slots.in_use == 0:
            del self._slots[instance_id]

    def set_capacity(self, instance_id: str, capacity: int) -> None:
        """Change how many slots of a routable instance this router may use (requests above it finish normally)."""
        slots = self._slots.get(instance_id)
        if slots is None:
            return
        slots.capacity = min(capacity, self.concurrency_level)
        if slots.routable:
            self._dispatch()

    def set_expired(self, instance_id: str) -> None:
        """Serve from this instance only when no other has a free slot, so it drains while it is replaced."""
        slots = self._slots.get(instance_id)
        if slots is not None:
            slots.expired = True

    def routable_ids(self) -> list[str]:
        return [s.instance.id for s in self._order]

    def in_use(self, instance_id: str) -> int:
        slots = self._slots.get(instance_id)
        return slots.in_use if slots else 0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def queued_since(self, cutoff: float) -> int:
        """Waiters that queued at or before ``cutoff`` (the oldest first, so counting stops at the first younger)."""
        count = 0
        for fut, at in self._waiters:
            if at > cutoff:
                break
            count += not fut.done()
        return count

    def oldest_wait(self) -> float | None:
        """When the oldest waiter still waiting queued."""
        for fut, at in self._waiters:
            if not fut.done():
                return at
        return None

    @property
    def outstanding(self) -> int:
        return self.in_flight + len(self._waiters)

    @property
    def capacity(self) -> int:
        return sum(s.capacity for s in self._order)

    # -- requests --------------------------------------------------------------------------------------------

    def try_acquire(self) -> Instance | None:
        """A slot at once, or None. Never jumps the queue."""
        if self._waiters:
            return None
        return self._take()

    def enqueue(self, at: float = 0.0) -> asyncio.Future[Instance]:
        """Join the queue at time ``at``; the future resolves with the instance whose slot was reserved for this
        request."""
        if len(self._waiters) >= self.max_queue_length:
            raise QueueFull
        fut: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, at))
        self._dispatch()
        return fut

    def abandon(self, fut: asyncio.Future[Instance]) -> None:
        """A waiter gave up (timeout, client gone). If a slot was already handed to it, give the slot back."""
        if fut.done():
            if not fut.cancelled() and fut.exception() is None:
                self.release(fut.result().id)
            return
        fut.cancel()
        for entry in self._waiters:
            if entry[0] is fut:
                self._waiters.remove(entry)
                return

    def fail_waiters(self, exc: BaseException) -> None:
        """Answer every queued request with ``exc`` (e.g. a deployment error)."""
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def release(self, instance_id: str) -> None:
        slots = self._slots.get(instance_id)
        if slots is None or slots.in_use == 0:
            return
        slots.in_use -= 1
        self.in_flight -= 1
        if not slots.routable and slots.in_use == 0:
            del self._slots[instance_id]
        else:
            self._dispatch()
        if self.on_release is not None:
            self.on_release(instance_id)

    # -- internals -------------------------------------------------------------------------------------------

    def _pick(self, expired: bool) -> _Slots | None:
        order = self._order
        if self.load_balancing == "youngest":
            order = order[::-1]
        elif self.load_balancing == "random":
            free = [s for s in order if s.expired is expired and s.in_use < s.capacity]
            return self.rng.choice(free) if free else None
        for slots in order:
            if slots.expired is expired and slots.in_use < slots.capacity:
                return slots
        return None

    def _take(self) -> Instance | None:
        chosen = self._pick(expired=False) or self._pick(expired=True)
        if chosen is None:
            return None
        chosen.in_use += 1
        self.in_flight += 1
        return chosen.instance

    def _dispatch(self) -> None:
        waiters = self._waiters
        while waiters:
            if waiters[0][0].done():
                waiters.popleft()
                continue
            instance = self._take()
            if instance is None:
                return
            waiters.popleft()[0].set_result(instance)
