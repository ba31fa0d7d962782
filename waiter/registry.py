"""Every service this router knows, created exactly once however many requests arrive together."""

from __future__ import annotations

import asyncio

import aiohttp

from waiter.scheduler.base import Scheduler
from waiter.service import DemandHook, ResolvedService, Service, SlotsPolicy, all_slots
from waiter.settings import HealthConfig


class ServiceRegistry:
    def __init__(self, scheduler: Scheduler, session: aiohttp.ClientSession, health: HealthConfig) -> None:
        self.scheduler = scheduler
        self.session = session
        self.health = health
        self.services: dict[str, Service] = {}
        # Set by the coordinator and the autoscaler when they start.
        self.slots_policy: SlotsPolicy = all_slots
        self.demand_hooks: list[DemandHook] = []
        scheduler.subscribe(self._on_change)

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
                slots_policy=lambda s: self.slots_policy(s),
                on_demand=self._demand,
            )
            self.services[resolved.service_id] = service
        return service

    def start(self, resolved: ResolvedService) -> Service:
        service = self.register(resolved)
        sources = resolved.source_tokens
        if sources != service.resolved.source_tokens and sources and not any(t.startswith("^") for t, _ in sources):
            # Same service reached through a newer token version (e.g. only metadata changed): record it.
            service.resolved = resolved
        service.ensure_started()
        return service

    def adopt(self, resolved: ResolvedService) -> Service:
        """A service another router started: follow its instances without creating it."""
        service = self.register(resolved)
        service.follow()
        return service

    async def forget(self, service_id: str) -> None:
        """Stop following a service (deleted elsewhere) without touching the scheduler."""
        service = self.services.pop(service_id, None)
        if service is not None:
            await service.close()

    async def delete(self, service_id: str) -> bool:
        """Stop every instance of the service and forget it. False if neither this router nor the scheduler knew it."""
        service = self.services.pop(service_id, None)
        if service is not None:
            for instance_id in list(service.tracker.tracked):
                service.tracker.retire(instance_id)
            await service.close()
        deleted = await self.scheduler.delete_service(service_id)
        return deleted or service is not None

    def _demand(self, service: Service) -> None:
        for hook in self.demand_hooks:
            hook(service)

    def _on_change(self, service_id: str) -> None:
        service = self.services.get(service_id)
        if service is not None:
            service.on_scheduler_change()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.services.values()), return_exceptions=True)
