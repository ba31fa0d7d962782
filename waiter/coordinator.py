"""This router's link to the others: publishes its counts, reads theirs, and manages its slot leases.

Runs every ``publish_interval`` (on ``waiter.periodic``), never on the request path. With one router (the
in-memory state) there is nothing to lease: each healthy instance offers all its slots at once. With several, an
instance's slots are leased through the shared state so that the leases of all live routers never exceed its
concurrency-level; each router only uses the slots it holds, and slots move to a router whose request waits in a
few Redis round trips (``waiter.handover``), not at a tick. When the shared state is unreachable, the router keeps
serving with the slots it holds and counts it knows, says so in /status, and catches up when it returns.

Counted once across routers: a request that waits here while a peer hands a slot over is not queued demand, so
published counts leave out waiters younger than ``HANDOVER_GRACE_SECS`` while the service has instances to hand
over; and requests in flight across routers never exceed the healthy instances' slots (the leases guarantee it),
so a sum above that is routers' counts read at different moments (``demand``). One sequential client whose
requests alternate between routers is then one outstanding request, not two.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from waiter.aio import raise_if_cancelling, stop
from waiter.availability import Availability
from waiter.handover import Handover, SlotDemand
from waiter.periodic import Periodic
from waiter.registry import ServiceRegistry
from waiter.reservation import Reservations
from waiter.scheduler.base import KeepsRecords
from waiter.service import DemandHook, Service, SlotsPolicy, all_slots, resolved_from_record, service_record
from waiter.state.base import RouterStats, SharedState, StateUnavailable

log = logging.getLogger(__name__)

OVERRIDES, SUSPENDED = "overrides", "suspended"  # the kinds of per-service control record (SharedState)
ASYNC_COMPLETED = "async-completed"  # request id -> the router that was told (waiter.async_requests)
EXPIRED_FLAG_TTL_MS = 86_400_000  # an expired instance is replaced and killed long before its flag lapses
# A waiter younger than this may be waiting for a slot a peer is handing over: it is not counted as queued demand
# yet while the service has instances. Handovers take milliseconds (p90 8 ms on a loaded 2-core machine); a longer
# grace hides real queueing: six clients of 400 ms requests on three instances each wait about 0.4 s, and with a
# 0.5 s grace none of them counted, so the service never grew to the four instances they need.
HANDOVER_GRACE_SECS = 0.1


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


def settled(res: Reservations, now: float) -> tuple[int, int]:
    """(outstanding, queued) of a service on this router, leaving out waiters that may be waiting for a handover:
    younger than the grace while the service has instances (at a cold start every waiter counts at once)."""
    queued = res.queued_since(now - HANDOVER_GRACE_SECS) if res.routable_ids() else res.queued
    return res.in_flight + queued, queued


def demand(in_flight: int, queued: int, in_flight_elsewhere: int, queued_elsewhere: int, slots: int) -> tuple[int, int]:
    """(outstanding, queued) across routers (pure). ``in_flight`` and ``queued`` are this router's, live;
    the others' are as last published. Requests in flight everywhere never exceed the healthy instances' ``slots``
    (leases keep them within concurrency-level), so more is counts read at different moments: a request that moved
    counted twice. This router's own count is exact and never cut."""
    in_flight_total = min(in_flight + in_flight_elsewhere, max(slots, in_flight))
    queued_total = queued + queued_elsewhere
    return in_flight_total + queued_total, queued_total


def slots_policy(shared: bool, demand: SlotDemand) -> SlotsPolicy:
    """Slots a newly healthy instance offers at once: all of them alone; none until leased when shared, and the
    handover leases them at once."""
    if not shared:
        return all_slots

    def leased(service: Service) -> int:
        demand.mark(service.id)
        return 0

    return leased


def wake_on_demand(demand: SlotDemand) -> DemandHook:
    return lambda service: demand.mark(service.id)


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
        demand: SlotDemand | None = None,
        gave: Callable[[str, str], None] | None = None,
    ) -> None:
        """``demand`` is marked when a service's slots should be settled now (see ``slots_policy``); ``gave`` hears
        who was given slots of which service (waiter.handoff)."""
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
        self.handover = Handover(
            state,
            registry,
            router_id,
            demand or SlotDemand(),
            want_ttl=max(0.5, 3 * publish_interval),  # a waiting router tells again every tick
            failed=self._failed,
            gave=gave,
        )
        self._last_service_sync = 0.0
        self._registered: set[str] = set()

    @property
    def available(self) -> bool:
        return self.health.available

    @property
    def last_error(self) -> str | None:
        return self.health.error

    # -- the loop -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """The tick, and with shared state the handover (event-driven, so a tick in progress never delays it)."""
        tasks = []
        if self.state.shared:
            tasks = [
                asyncio.create_task(self.state.listen(self.handover.heard), name="nudges"),
                asyncio.create_task(self.handover.run(), name="handover"),
            ]
        try:
            # No back-off beyond a second: the tick is what notices the state is reachable again.
            await Periodic("coordinator tick", self._tick, self.publish_interval, max_backoff=1.0).run()
        finally:
            await stop(tasks)

    async def _tick(self) -> None:
        try:
            await self.tick()
        except StateUnavailable as exc:
            raise_if_cancelling()
            self._failed(exc)
            return
        # Only a full exchange proves the state works again (a handover may touch little of it).
        if self.health.succeeded(time.monotonic()):
            log.info("shared state %s is reachable again", self.state.kind)

    def _failed(self, exc: StateUnavailable) -> None:
        if self.health.failed(time.monotonic(), str(exc)):
            cause = exc.__cause__ or exc
            log.error("shared state unavailable, serving with what this router knows: %s (%s)", exc, cause)

    async def tick(self) -> None:
        state = self.state
        info = {"url": self.router_url, "started-at": self.started_at, "scheduler": self.scheduler}
        got = await state.exchange(self.router_id, info, self.router_ttl_ms, self.local_stats(), self.stats_ttl_ms)
        view = summed(got.stats, self.router_id)
        view.routers = got.routers
        self.view = view
        now = time.monotonic()
        if now - self._last_service_sync >= self.service_sync_interval or self._unregistered():
            self._last_service_sync = now
            await self._sync_services()
        await self._apply_blocks(got.blocked)
        self._apply_expired(got.expired)
        if state.shared:
            await self.handover.settle_all()

    def local_stats(self) -> dict[str, RouterStats]:
        now = time.time()
        stats = {}
        for sid, s in self.registry.services.items():
            outstanding, queued = settled(s.reservations, now)
            stats[sid] = RouterStats(outstanding, queued, s.total_requests, s.last_request_time)
        return stats

    def demand(self, service: Service, healthy: int) -> tuple[int, int]:
        """(outstanding, queued) of a service across routers, each request counted once (see ``demand``)."""
        res, view = service.reservations, self.view
        outstanding, queued = settled(res, time.time())
        queued_elsewhere = view.queued_elsewhere.get(service.id, 0)
        in_flight_elsewhere = view.outstanding_elsewhere.get(service.id, 0) - queued_elsewhere
        slots = healthy * res.concurrency_level
        return demand(outstanding - queued, queued, in_flight_elsewhere, queued_elsewhere, slots)

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
