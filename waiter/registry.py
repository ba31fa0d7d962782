"""Every service this router knows, created exactly once however many requests arrive together."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from waiter.instance_view import instance_json
from waiter.scheduler.base import Instance, Scheduler
from waiter.service import DemandHook, ResolvedService, Service, SlotsPolicy, all_slots, service_record
from waiter.settings import HealthConfig

KILLED_LIMIT = 10  # instances of each kind kept for a deleted service
INACTIVE_LIMIT = 10_000  # deleted services a router remembers


class ServiceRegistry:
    def __init__(
        self,
        scheduler: Scheduler,
        session: aiohttp.ClientSession,
        health: HealthConfig,
        *,
        slots_policy: SlotsPolicy = all_slots,
        demand_hooks: Sequence[DemandHook] = (),
    ) -> None:
        """``slots_policy``: slots a newly healthy instance offers at once; ``demand_hooks``: called when a request
        of a service waits (the coordinator and the autoscaler wake on it)."""
        self.scheduler = scheduler
        self.session = session
        self.health = health
        self.services: dict[str, Service] = {}
        # Deleted services, as inactive_record made them: /apps/{id} answers Inactive, a ping starts them again.
        self.inactive: dict[str, dict[str, Any]] = {}
        self._slots_policy = slots_policy
        self._demand_hooks = tuple(demand_hooks)
        self.stranded: str | None = None
        scheduler.subscribe(self._on_change)

    def strand(self, reason: str) -> None:
        """No instance can start any more: every service answers its waiters without instances now (Service.strand),
        services registered from now on too."""
        self.stranded = reason
        for service in self.services.values():
            service.strand(reason)

    def get(self, service_id: str) -> Service | None:
        return self.services.get(service_id)

    def register(self, resolved: ResolvedService) -> Service:
        """The service for ``resolved``, registered now if new. Synchronous, so two requests cannot both create it."""
        service = self.services.get(resolved.service_id)
        if service is None:
            service = Service(
                resolved,
                self.scheduler,
                self.session,
                self.health,
                slots_policy=self._slots_policy,
                on_demand=self._demand,
            )
            self.services[resolved.service_id] = service
            self.inactive.pop(resolved.service_id, None)
            if self.stranded is not None:
                service.strand(self.stranded)
        return service

    def start(self, resolved: ResolvedService) -> Service:
        service = self.register(resolved)
        sources = resolved.source_tokens
        if sources != service.resolved.source_tokens and sources and not any(t.startswith("^") for t, _ in sources):
            # Same service reached through a newer token version (e.g. only metadata changed): record it.
            service.set_resolved(resolved)
        service.ensure_started()
        return service

    def adopt(self, resolved: ResolvedService) -> Service:
        """A service another router started: follow its instances without creating it."""
        service = self.register(resolved)
        service.follow()
        return service

    def inactive_record(self, service_id: str) -> dict[str, Any] | None:
        """What stays known of a service once it is deleted (docs/api.md §1.7): its description and its instances,
        those still running listed as killed (the deletion kills them), at most KILLED_LIMIT of each kind."""
        service = self.services.get(service_id)
        if service is None:
            return self.inactive.get(service_id)
        state = self.scheduler.service_state(service_id)
        killed = (*state.killed, *(replace(i, killed=True) for i in state.active)) if state else ()
        failed = state.failed if state else ()

        def listed(instances: tuple[Instance, ...]) -> list[dict[str, Any]]:
            ordered = sorted(instances, key=lambda i: (i.started_at, i.id))[-KILLED_LIMIT:]
            return [instance_json(i) for i in ordered]

        return {
            "service": service_record(service.resolved),
            "killed-instances": listed(killed),
            "failed-instances": listed(failed),
            "last-request-time": service.last_request_time,
            "deleted-at": time.time(),
        }

    def remember(self, service_id: str, record: dict[str, Any]) -> None:
        """Keep a deleted service's record (bounded: the oldest are dropped past INACTIVE_LIMIT)."""
        self.inactive.pop(service_id, None)
        self.inactive[service_id] = record
        while len(self.inactive) > INACTIVE_LIMIT:
            del self.inactive[next(iter(self.inactive))]

    async def forget(self, service_id: str) -> None:
        """Stop following a service (deleted elsewhere) without touching the scheduler."""
        record = self.inactive_record(service_id)
        service = self.services.pop(service_id, None)
        if service is not None:
            await service.close()
        if record is not None:
            self.remember(service_id, record)

    async def delete(self, service_id: str) -> bool:
        """Stop every instance of the service and forget it. False if neither this router nor the scheduler knew it."""
        record = self.inactive_record(service_id)
        service = self.services.pop(service_id, None)
        if record is not None:
            self.remember(service_id, record)
        if service is not None:
            for instance_id in list(service.tracker.tracked):
                service.tracker.retire(instance_id)
            await service.close()
        deleted = await self.scheduler.delete_service(service_id)
        return deleted or service is not None

    def _demand(self, service: Service) -> None:
        for hook in self._demand_hooks:
            hook(service)

    def _on_change(self, service_id: str) -> None:
        service = self.services.get(service_id)
        if service is not None:
            service.on_scheduler_change()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.services.values()), return_exceptions=True)
