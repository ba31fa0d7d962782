"""The scaling loop: the leader among routers reads counts, calls the pure decision and applies it.

Every router runs this loop, but only the holder of the leader lease acts, so scale calls for one need are never
issued twice. The smoothing state lives in the shared state, so a new leader continues where the old one stopped.
Scale-down picks its victim itself (``choose_victim``): never an instance serving a request on any router; it is
taken out of every router's rotation (blocked in the shared state, so no router leases its slots any more) and
killed only once no router holds a lease on it, at most one kill per service per ``kill_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from waiter.aio import raise_if_cancelling
from waiter.coordinator import Coordinator
from waiter.lifecycle import is_expired
from waiter.periodic import Periodic
from waiter.registry import ServiceRegistry
from waiter.scaling import BurstSettings, Counts, Decision, ScalingSettings, ScalingState, decide
from waiter.scheduler.base import SchedulerError
from waiter.service import DemandHook, Service
from waiter.state.base import SharedState, StateUnavailable
from waiter.throughput import Sample, ThroughputMeter

log = logging.getLogger(__name__)

HISTORY = 20  # scaling decisions kept per service


@dataclass(frozen=True, slots=True)
class Candidate:
    instance_id: str
    started_at: float
    healthy: bool
    expired: bool
    starting: bool  # never healthy yet (it may be the replacement of an expired instance)
    in_use: int  # requests this router has on it right now


def choose_victim(candidates: Sequence[Candidate]) -> str | None:
    """The instance to kill on scale-down: idle ones only; unhealthy first, then expired, then the youngest.

    While expired instances are being replaced, starting ones are spared: they are the replacements."""
    idle = [c for c in candidates if c.in_use == 0]
    if any(c.expired for c in candidates):
        idle = [c for c in idle if not c.starting]
    if not idle:
        return None
    best = min(idle, key=lambda c: (c.healthy, not c.expired, -c.started_at, c.instance_id))
    return best.instance_id


@dataclass
class _PendingKill:
    instance_id: str
    since: float


def wake_when_unserved(wake: asyncio.Event) -> DemandHook:
    """A request waits and nothing can serve it yet: decide now instead of at the next tick (bursts, cold starts)."""

    def hook(service: Service) -> None:
        if service.reservations.capacity == 0 or service.reservations.queued > service.reservations.capacity:
            wake.set()

    return hook


class Autoscaler:
    def __init__(
        self,
        state: SharedState,
        registry: ServiceRegistry,
        coordinator: Coordinator,
        router_id: str,
        *,
        interval: float = 1.0,
        burst: BurstSettings | None = None,
        kill_interval: float = 1.0,
        drain_wait: float = 10.0,
        minute_secs: float = 60.0,
        wake: asyncio.Event | None = None,
    ) -> None:
        """``wake`` makes the leader decide before its next tick (see ``wake_when_unserved``)."""
        self.state = state
        self.registry = registry
        self.coordinator = coordinator
        self.router_id = router_id
        self.interval = interval
        self.burst = burst or BurstSettings()
        self.kill_interval = kill_interval
        self.drain_wait = drain_wait
        self.minute_secs = minute_secs
        self.is_leader = False
        self.decisions: dict[str, Decision] = {}  # service id -> its last decision
        self.counts_seen: dict[str, Counts] = {}  # service id -> what that decision was made on
        # service id -> the last decisions that changed something, with their times (the dashboard shows them)
        self.history: dict[str, deque[tuple[float, Decision]]] = {}
        self.leader_changes = 0
        self.states: dict[str, ScalingState] = {}  # service id -> smoothing state (leader only)
        self._last_kill: dict[str, float] = {}
        self._pending: dict[str, _PendingKill] = {}
        self._meters: dict[str, ThroughputMeter] = {}
        self._wake = wake or asyncio.Event()

    async def run(self) -> None:
        # woken by a queued request: decide at once, but at most 10 decisions a second
        await Periodic("autoscaler cycle", self.cycle, self.interval, wake=self._wake, min_gap=0.1).run()

    async def cycle(self) -> None:
        try:
            await self.tick(time.time())
        except StateUnavailable as exc:
            raise_if_cancelling()
            if self.is_leader:
                log.error("lost contact with the shared state; not scaling until it returns: %s", exc)
            self.is_leader = False

    async def tick(self, now: float) -> None:
        self._prune()
        leading = await self.state.lead(self.router_id, int(max(3.0, self.interval * 3) * 1000))
        if leading != self.is_leader:
            log.info("router %s %s the scaling leader", self.router_id, "is now" if leading else "is no longer")
            # A new leader reads the smoothing state from the shared state; its throughput meters are its own
            # measurements and stay (cleared, a leadership change would leave the next decisions blind).
            self.states.clear()
            self._pending.clear()
            self.leader_changes += 1
        self.is_leader = leading
        if not leading:
            return
        for service in list(self.registry.services.values()):
            await self._scale(service, now)

    def _prune(self) -> None:
        """Forget services that are gone (deleted, reaped), so this state does not grow with every service run."""
        live = self.registry.services
        tables: tuple[dict[str, Any], ...] = (
            self.decisions, self.counts_seen, self.history, self.states, self._last_kill, self._pending, self._meters
        )
        for table in tables:
            for sid in [sid for sid in table if sid not in live]:
                del table[sid]

    def candidates(self, service: Service, now: float) -> list[Candidate]:
        expiry = service.resolved.description.instance_expiry_mins
        res = service.reservations
        candidates = [
            Candidate(
                iid,
                t.instance.started_at,
                t.healthy,
                is_expired(t.instance, expiry, t.expired, now, self.minute_secs),
                not t.ever_healthy,
                res.in_use(iid),
            )
            for iid, t in service.tracker.tracked.items()
            if not t.retired
        ]
        for candidate in candidates:
            if candidate.expired:
                res.set_expired(candidate.instance_id)  # it drains towards its replacement
        return candidates

    def counts(self, service: Service, candidates: Sequence[Candidate], now: float) -> Counts | None:
        state = service.scheduler.service_state(service.id)
        if state is None:
            return None
        view = self.coordinator.view
        meter = self._meters.get(service.id)
        if meter is None:
            meter = self._meters[service.id] = ThroughputMeter()
        received = service.total_requests + view.total_elsewhere.get(service.id, 0)
        throughput = meter.add(Sample(now, received, service.completed, service.served_secs))
        healthy = sum(1 for c in candidates if c.healthy)
        outstanding, queued = self.coordinator.demand(service, healthy)  # each request counted once
        return Counts(
            outstanding=outstanding,
            total=state.requested,
            scheduled=state.scheduled,
            healthy=healthy,
            expired_healthy=sum(1 for c in candidates if c.healthy and c.expired),
            expired_unhealthy=sum(1 for c in candidates if not c.healthy and c.expired),
            queued=queued,
            arrival_rate=throughput.arrival_rate,
            service_secs=throughput.service_secs,
        )

    async def _scale(self, service: Service, now: float) -> None:
        candidates = self.candidates(service, now)
        counts = self.counts(service, candidates, now)
        if counts is None:
            return
        sid = service.id
        previous = self.states.get(sid)
        if previous is None:
            saved = await self.state.load_scaling(sid)
            previous = ScalingState.from_json(saved) if saved else None
        settings = ScalingSettings.from_description(service.resolved.effective, self.burst)
        decision = decide(settings, counts, previous, now)
        self.states[sid] = decision.state
        if decision.state != previous:
            await self.state.save_scaling(sid, decision.state.to_json())
        last = self.decisions.get(sid)
        self.decisions[sid] = decision
        self.counts_seen[sid] = counts
        if decision.amount != 0 or last is None or last.scaling_state != decision.scaling_state or (
            last.burst != decision.burst
        ):
            self.history.setdefault(sid, deque(maxlen=HISTORY)).append((now, decision))
        if decision.amount > 0 and counts.scheduled >= counts.total:
            log.info("scaling %s up to %d: %s", sid, decision.scale_to, decision.reason)
            await self._call(service.scheduler.scale_service(sid, decision.scale_to), f"scale {sid} up")
        elif decision.amount < 0 and counts.scheduled > decision.scale_to:
            await self._scale_down(service, now)
        else:
            await self._cancel_pending(service)

    async def _scale_down(self, service: Service, now: float) -> None:
        sid = service.id
        pending = self._pending.get(sid)
        if pending is None:
            if now - self._last_kill.get(sid, 0.0) < self.kill_interval:
                return
            # Fresh candidates: requests may have started during the awaits above.
            victim = choose_victim(self.candidates(service, now))
            if victim is None:
                return
            # Out of this router's rotation first (atomic with the in-use check: no await in between) ...
            service.tracker.retire(victim)
            pending = self._pending[sid] = _PendingKill(victim, now)
            if self.state.shared:
                # ... then out of every other router's: no new leases, existing ones given back when idle.
                await self.state.block(victim, int(self.drain_wait * 3000))
        if self.state.shared:
            leases = await self.state.leases(pending.instance_id)
            others = {rid: n for rid, n in leases.items() if rid != self.router_id}
            if others:
                if now - pending.since > self.drain_wait:
                    log.warning("scale-down of %s gave up on %s: still leased by %s", sid, pending.instance_id, others)
                    await self._cancel_pending(service)
                return
        del self._pending[sid]
        self._last_kill[sid] = now
        log.info("scaling %s down: killing idle instance %s", sid, pending.instance_id)
        await self._call(
            service.scheduler.kill_instance(sid, pending.instance_id, message="Killed to scale down"),
            f"kill {pending.instance_id}",
        )
        if self.state.shared:
            await self.state.unblock(pending.instance_id)

    async def _cancel_pending(self, service: Service) -> None:
        pending = self._pending.pop(service.id, None)
        if pending is None:
            return
        service.tracker.reinstate(pending.instance_id)
        if self.state.shared:
            await self.state.unblock(pending.instance_id)

    async def _call(self, call: Awaitable[object], what: str) -> None:
        try:
            await call
        except SchedulerError as exc:
            log.error("could not %s: %s", what, exc)
