"""This router's link to the others: publishes its counts, reads theirs, and manages its slot leases.

Runs every ``publish_interval`` (and at once when a service needs slots), never on the request path. With one
router (the in-memory state) there is nothing to lease: each healthy instance offers all its slots at once.
With several, an instance's slots are leased through the shared state so that the leases of all live routers
never exceed its concurrency-level; each router only uses the slots it holds. A router with queued requests
leases every free slot it can get; a router whose peers have queued requests gives back the slots it is not
using (beyond its fair share), so a queued request is served as soon as a slot is free anywhere: routers nudge
each other through the shared state when one waits and when one gives slots back, so a handover takes a few
round trips to Redis, not a tick. When the shared state is unreachable, the router keeps serving with the slots
it holds and counts it knows, says so in /status, and catches up when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waiter.aio import raise_if_cancelling
from waiter.availability import Availability
from waiter.registry import ServiceRegistry
from waiter.reservation import Reservations
from waiter.scheduler.base import KeepsRecords
from waiter.service import DemandHook, Service, SlotsPolicy, all_slots, resolved_from_record, service_record
from waiter.state.base import RouterStats, SharedState, StateUnavailable

log = logging.getLogger(__name__)

OVERRIDES, SUSPENDED = "overrides", "suspended"  # the kinds of per-service control record (SharedState)
ASYNC_COMPLETED = "async-completed"  # request id -> the router that was told (waiter.async_requests)
EXPIRED_FLAG_TTL_MS = 86_400_000  # an expired instance is replaced and killed long before its flag lapses


@dataclass
class GlobalView:
    """What this router last read of all routers: summed outstanding counts, last request times, routers."""

    outstanding: dict[str, int] = field(default_factory=dict)
    last_request_time: dict[str, float] = field(default_factory=dict)
    queued_elsewhere: dict[str, int] = field(default_factory=dict)
    outstanding_elsewhere: dict[str, int] = field(default_factory=dict)
    total_elsewhere: dict[str, int] = field(default_factory=dict)
    routers: dict[str, dict[str, Any]] = field(default_factory=dict)
    read_at: float = 0.0


def summed(all_stats: Mapping[str, Mapping[str, RouterStats]], me: str) -> GlobalView:
    """Sum the live routers' counts; a router's last value counts until its key expires (never 'unknown = 0')."""
    view = GlobalView(read_at=time.time())
    for rid, services in all_stats.items():
        for sid, stats in services.items():
            view.outstanding[sid] = view.outstanding.get(sid, 0) + stats.outstanding
            if stats.last_request_time is not None:
                view.last_request_time[sid] = max(view.last_request_time.get(sid, 0.0), stats.last_request_time)
            if rid != me:
                view.queued_elsewhere[sid] = view.queued_elsewhere.get(sid, 0) + stats.queued
                view.outstanding_elsewhere[sid] = view.outstanding_elsewhere.get(sid, 0) + stats.outstanding
                view.total_elsewhere[sid] = view.total_elsewhere.get(sid, 0) + stats.total
    return view


def lease_wants(res: Reservations, queued_elsewhere: int, outstanding_elsewhere: int) -> dict[str, int]:
    """How many slots this router wants on each routable instance of a service (pure: reads its reservations)."""
    level = res.concurrency_level
    wants: dict[str, int] = {}
    mine = res.outstanding
    if queued_elsewhere <= 0:
        # Nobody else waits: keep every slot we can get, so our own bursts need no round trip.
        return dict.fromkeys(res.routable_ids(), level)
    total = mine + outstanding_elsewhere
    share = math.ceil(level * mine / total) if total else 0
    for iid in res.routable_ids():
        wants[iid] = max(res.in_use(iid), share if res.queued else min(share, res.in_use(iid)))
    return wants


def slots_policy(shared: bool, wake: asyncio.Event) -> SlotsPolicy:
    """Slots a newly healthy instance offers at once: all of them alone; none until leased when shared, and the
    coordinator (waiting on ``wake``) leases them at once."""
    if not shared:
        return all_slots

    def leased(service: Service) -> int:
        wake.set()
        return 0

    return leased


def wake_on_demand(wake: asyncio.Event) -> DemandHook:
    return lambda _service: wake.set()


class Coordinator:
    def __init__(
        self,
        state: SharedState,
        registry: ServiceRegistry,
        router_id: str,
        router_url: str,
        *,
        publish_interval: float = 0.1,
        router_ttl_ms: int = 3000,
        service_sync_interval: float = 1.0,
        scheduler: str = "",
        wake: asyncio.Event | None = None,
    ) -> None:
        """``wake`` is set when a request queues (see ``slots_policy`` and the registry's demand hooks)."""
        self.state = state
        self.registry = registry
        self.router_id = router_id
        self.router_url = router_url
        self.publish_interval = publish_interval
        self.router_ttl_ms = router_ttl_ms
        self.stats_ttl_ms = max(1000, int(publish_interval * 10_000))
        self.service_sync_interval = service_sync_interval
        self.scheduler = scheduler  # announced in the heartbeat (waiter.peers)
        self.view = GlobalView()
        self.health = Availability(recover_secs=max(1.0, 5 * publish_interval))
        self.blocked: set[str] = set()
        self.started_at = time.time()
        self._wake = wake or asyncio.Event()
        self._nudged = False  # a peer nudged (see _fast_round)
        self._told_waiting = False  # our last published counts show a queue
        self._last_service_sync = 0.0
        self._registered: set[str] = set()
        self._leases: dict[str, dict[str, int]] = {}  # service id -> instance id -> slots leased in the state

    @property
    def available(self) -> bool:
        return self.health.available

    @property
    def last_error(self) -> str | None:
        return self.health.error

    # -- hooks used by services ---------------------------------------------------------------------------------

    # -- the loop -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        listener = asyncio.create_task(self.state.listen(self.router_id, self._peer_nudged), name="nudges")
        try:
            await self._loop()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def _peer_nudged(self) -> None:
        self._nudged = True
        self._wake.set()

    async def _loop(self) -> None:
        next_tick = 0.0
        while True:
            woken = time.monotonic() < next_tick
            if not woken:
                next_tick = time.monotonic() + self.publish_interval
            # Cleared before the round: a wake-up that comes during it (a nudge, a request queueing) runs another.
            self._wake.clear()
            try:
                if woken:
                    # A request queued here, or a peer nudged: settle slots now; the full exchange waits.
                    if self.state.shared:
                        await self._fast_round()
                else:
                    await self.tick()
                    # Only a full exchange proves the state works again (a lease-only one may touch nothing).
                    if self.health.succeeded(time.monotonic()):
                        log.info("shared state %s is reachable again", self.state.kind)
            except StateUnavailable as exc:
                raise_if_cancelling()
                if self.health.failed(time.monotonic(), str(exc)):
                    log.error("shared state unavailable, serving with what this router knows: %s", exc)
                self._wake.clear()  # unreachable: wait for the tick, not spin on wake-ups
            try:
                async with asyncio.timeout(max(0.0, next_tick - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def tick(self) -> None:
        state = self.state
        info = {"url": self.router_url, "started-at": self.started_at, "scheduler": self.scheduler}
        await state.heartbeat(self.router_id, info, self.router_ttl_ms)
        await state.publish_stats(self.router_id, self.local_stats(), self.stats_ttl_ms)
        all_stats = await state.all_stats()
        view = summed(all_stats, self.router_id)
        view.routers = await state.routers()
        self.view = view
        now = time.monotonic()
        if now - self._last_service_sync >= self.service_sync_interval or self._unregistered():
            self._last_service_sync = now
            await self._sync_services()
        await self._apply_blocks(await state.blocked())
        self._apply_expired(await state.expired())
        if state.shared and await self._lease_all():
            await state.nudge(self.router_id)

    async def _fast_round(self) -> None:
        """Hand slots over between routers in a few milliseconds instead of a tick or two. A router whose request
        queued without a slot publishes its counts and nudges the others; a nudged router reads the counts, gives
        back the idle slots a peer waits for (lease_wants) and nudges back; the waiting router, nudged, leases
        them. The lease script keeps every instance within concurrency-level throughout."""
        state = self.state
        if self._nudged:
            self._nudged = False
            view = summed(await state.all_stats(), self.router_id)
            view.routers = self.view.routers
            self.view = view
        released = await self._lease_all()
        waiting = any(s.reservations.queued for s in self.registry.services.values())
        if waiting or self._told_waiting:
            # Peers see our queue now (and, once served, that it is gone, so nobody counts it twice).
            await state.publish_stats(self.router_id, self.local_stats(), self.stats_ttl_ms)
            self._told_waiting = waiting
        if released or waiting:
            await state.nudge(self.router_id)

    def local_stats(self) -> dict[str, RouterStats]:
        return {
            sid: RouterStats(s.reservations.outstanding, s.reservations.queued, s.total_requests, s.last_request_time)
            for sid, s in self.registry.services.items()
        }

    def _unregistered(self) -> bool:
        return any(sid not in self._registered for sid in self.registry.services)

    async def _sync_services(self) -> None:
        """Share the services this router knows; take on those others registered (for /apps and scaling).

        A service missing from the shared state is registered again (Redis may have restarted empty); only a
        tombstone, left by a deletion through any router, makes routers forget it."""
        shared = await self.state.services()
        deleted = await self.state.deleted_services()
        for sid in list(self.registry.services):
            if sid in deleted and sid in self._registered:
                self._registered.discard(sid)
                await self.registry.forget(sid)
                # The deleting router saw the instances the deletion killed; this one's scheduler may not have.
                record = await self.state.inactive_service(sid)
                if record:
                    self.registry.remember(sid, record)
        for sid, service in list(self.registry.services.items()):
            if sid not in shared:
                await self.state.register_service(sid, service_record(service.resolved))
            self._registered.add(sid)
        await self._apply_controls()
        for sid, record in shared.items():
            if sid not in self.registry.services and sid not in deleted:
                self.registry.adopt(resolved_from_record(record))
                self._registered.add(sid)
        self._adopt_kept(deleted)
        self._registered.intersection_update(self.registry.services)  # services reaped or deleted meanwhile

    def _adopt_kept(self, deleted: set[str]) -> None:
        """Take on the services the scheduler runs and keeps a record of, though no router registered them here:
        after a restart without shared state (Marathon keeps the record as an app label), /apps, scaling and
        reaping see them again instead of leaving them to run unmanaged."""
        scheduler = self.registry.scheduler
        if not isinstance(scheduler, KeepsRecords):
            return
        for sid in scheduler.service_ids():
            if sid in self.registry.services or sid in deleted:
                continue
            raw = scheduler.service_record(sid)
            if not raw:
                continue
            try:
                resolved = resolved_from_record(json.loads(raw))
            except (ValueError, TypeError, KeyError) as error:
                log.warning("Cannot take on service %s from its scheduler's record: %s", sid, error)
                continue
            log.info("Taking on service %s, which the scheduler runs, from its record", sid)
            self.registry.adopt(resolved)

    async def forget(self, service_id: str) -> None:
        """A service was deleted through this router: tell the others."""
        self._registered.discard(service_id)
        await self.state.forget_service(service_id, self.registry.inactive_record(service_id) or {})

    async def inactive(self, service_id: str) -> dict[str, Any] | None:
        """A deleted service's record: this router's, else the one the deleting router shared (then kept here)."""
        record = self.registry.inactive.get(service_id)
        if record is None and self.state.shared:
            record = await self.state.inactive_service(service_id)
            if record:
                self.registry.remember(service_id, record)
        return record or None

    async def _apply_blocks(self, blocked: set[str]) -> None:
        """Instances the leader is about to kill leave this router's rotation; unblocked ones come back."""
        for service in self.registry.services.values():
            for iid in list(service.tracker.tracked):
                if iid in blocked and iid not in self.blocked:
                    service.tracker.retire(iid)
                elif iid in self.blocked and iid not in blocked:
                    service.tracker.reinstate(iid)
        self.blocked = blocked

    async def _apply_controls(self) -> None:
        """Overrides and suspensions set through any router apply on every router."""
        overrides = await self.state.controls(OVERRIDES)
        suspended = await self.state.controls(SUSPENDED)
        for sid, service in self.registry.services.items():
            service.set_override(overrides.get(sid))
            service.suspension = suspended.get(sid)

    async def set_control(self, kind: str, service: Service, record: dict[str, Any] | None) -> None:
        """Set a service's override or suspension here at once, and for the other routers in the shared state."""
        await self.state.set_control(kind, service.id, record)
        if kind == OVERRIDES:
            service.set_override(record)
        else:
            service.suspension = record

    def _apply_expired(self, expired: set[str]) -> None:
        """Instances flagged expired through any router are expired here too (the leader replaces them)."""
        for service in self.registry.services.values():
            for iid in expired.intersection(service.tracker.tracked):
                service.expire(iid)

    async def share_expired(self, instance_id: str) -> None:
        """Tell the other routers an instance was flagged expired here."""
        await self.state.flag_expired(instance_id, EXPIRED_FLAG_TTL_MS)

    async def _lease_all(self) -> bool:
        """Lease what each service wants; whether any slots were given back (peers may be waiting for them)."""
        released = False
        view = self.view
        for sid in [s for s in self._leases if s not in self.registry.services]:
            del self._leases[sid]
        for sid, service in list(self.registry.services.items()):
            res = service.reservations
            held_by_iid = self._leases.setdefault(sid, {})
            wants = lease_wants(res, view.queued_elsewhere.get(sid, 0), view.outstanding_elsewhere.get(sid, 0))
            for iid in list(held_by_iid):
                if iid not in wants and res.in_use(iid) == 0:
                    wants[iid] = 0  # out of rotation and idle: give its slots back
            for iid, want in wants.items():
                held = held_by_iid.get(iid, 0)
                if want == held and not (res.queued and held < res.concurrency_level):
                    continue
                granted = await self.state.lease(self.router_id, iid, want, res.concurrency_level)
                released = released or granted < held
                if granted:
                    held_by_iid[iid] = granted
                else:
                    held_by_iid.pop(iid, None)
                res.set_capacity(iid, granted)
        return released
