"""The reaper: on a timer, the scaling leader deletes idle, stale and long-broken services (docs/api.md §6).

The decision is ``lifecycle.reap_reason`` (pure); this loop gathers its inputs and applies it. A deleted service
starts again on its next request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from waiter.coordinator import Coordinator
from waiter.lifecycle import ServiceActivity, reap_reason
from waiter.periodic import Periodic
from waiter.registry import ServiceRegistry
from waiter.scheduler.base import SchedulerError
from waiter.service import Service
from waiter.state.base import StateUnavailable

log = logging.getLogger(__name__)

CurrentFor = Callable[[Service], tuple[list[str], float | None]]


class Reaper:
    def __init__(
        self,
        registry: ServiceRegistry,
        coordinator: Coordinator,
        is_leader: Callable[[], bool],
        current_for: CurrentFor,
        *,
        interval: float = 10.0,
        minute_secs: float = 60.0,
        broken_timeout_secs: float = 1800.0,
    ) -> None:
        self.registry = registry
        self.coordinator = coordinator
        self.is_leader = is_leader
        self.current_for = current_for
        self.interval = interval
        self.minute_secs = minute_secs
        self.broken_timeout_secs = broken_timeout_secs
        self.reaped: list[tuple[str, str]] = []  # (service id, reason), newest last, for /state

    async def run(self) -> None:
        await Periodic("reaper cycle", self.cycle, self.interval).run()

    async def cycle(self) -> None:
        if self.is_leader():
            await self.tick(time.time())

    def activity(self, service: Service, now: float) -> ServiceActivity:
        view = self.coordinator.view
        described = service.resolved.description
        last = max(
            service.last_request_time or service.registered_at,
            view.last_request_time.get(service.id, 0.0),
        )
        stale_since = None
        if service.resolved.source_tokens and not service.resolved.on_the_fly:
            current, changed_at = self.current_for(service)
            if not current:
                stale_since = changed_at if changed_at is not None else now
        return ServiceActivity(
            service_id=service.id,
            outstanding=service.reservations.outstanding + view.outstanding_elsewhere.get(service.id, 0),
            last_activity=last,
            idle_timeout_mins=described.idle_timeout_mins,
            stale_since=stale_since,
            stale_timeout_mins=described.stale_timeout_mins,
            fallback_period_secs=described.fallback_period_secs,
            broken_since=service.broken_since,
        )

    async def tick(self, now: float) -> None:
        for service in list(self.registry.services.values()):
            reason = reap_reason(self.activity(service, now), now, self.broken_timeout_secs, self.minute_secs)
            if reason is None:
                continue
            log.info("deleting service %s: %s", service.id, reason)
            self.reaped.append((service.id, reason))
            del self.reaped[:-50]
            with contextlib.suppress(StateUnavailable):
                await self.coordinator.forget(service.id)
            try:
                await self.registry.delete(service.id)
            except SchedulerError as exc:
                log.error("could not delete %s: %s", service.id, exc)
