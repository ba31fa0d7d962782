"""Assembling the aiohttp application: every long-lived resource is opened and closed by the app's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from waiter.aio import stop
from waiter.autoscaler import Autoscaler
from waiter.coordinator import Coordinator
from waiter.peers import refuse_mixed_schedulers, this_identity
from waiter.proxy import Proxy
from waiter.reaper import Reaper
from waiter.registry import ServiceRegistry
from waiter.router import Router
from waiter.scaling import BurstSettings
from waiter.scheduler import create_scheduler
from waiter.scheduler.base import Scheduler
from waiter.settings import Settings
from waiter.state import StateUnavailable, open_state
from waiter.tokens import open_registry
from waiter.upstream import UpstreamPool

log = logging.getLogger(__name__)

ROUTER = web.AppKey("router", Router)
SCHEDULER = web.AppKey("scheduler", Scheduler)


def build_app(settings: Settings, scheduler: Scheduler | None = None) -> web.Application:
    """The router as an aiohttp application. ``scheduler`` replaces the configured one (tests, embedding)."""
    app = web.Application(handler_args={"max_field_size": 65536})

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        scaling = settings.scaling
        state = open_state(settings)
        await state.start()
        identity = this_identity(settings)
        try:
            await refuse_mixed_schedulers(state, settings, identity, scaling.router_ttl_ms)
        except BaseException:
            await state.close()
            raise
        sched = scheduler or create_scheduler(settings)
        tokens = open_registry(settings)
        await tokens.start()
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        pool = UpstreamPool(connect_timeout=5.0)
        await sched.start()
        registry = ServiceRegistry(sched, session, settings.health)
        router = Router(settings, tokens, registry, Proxy(pool, session, settings.router_id), pool)
        router.coordinator = Coordinator(
            state,
            registry,
            settings.router_id,
            f"http://{settings.host}:{settings.port}",
            publish_interval=scaling.publish_interval_ms / 1000,
            router_ttl_ms=scaling.router_ttl_ms,
            scheduler=identity,
        )
        router.autoscaler = Autoscaler(
            state,
            registry,
            router.coordinator,
            settings.router_id,
            interval=scaling.interval_ms / 1000,
            burst=BurstSettings(
                scaling.burst_enabled,
                scaling.burst_threshold,
                scaling.burst_stable_window_secs,
                scaling.burst_drain_secs,
            ),
            kill_interval=scaling.kill_interval_ms / 1000,
            minute_secs=settings.lifecycle.minute_secs,
        )
        autoscaler = router.autoscaler
        reaper = Reaper(
            registry,
            router.coordinator,
            lambda: autoscaler.is_leader,
            router.current_for,
            interval=settings.lifecycle.reap_interval_secs,
            minute_secs=settings.lifecycle.minute_secs,
            broken_timeout_secs=settings.lifecycle.broken_service_timeout_secs,
        )
        loops = [
            asyncio.create_task(router.coordinator.run(), name="coordinator"),
            asyncio.create_task(router.autoscaler.run(), name="autoscaler"),
            asyncio.create_task(reaper.run(), name="reaper"),
        ]
        app[ROUTER] = router
        app[SCHEDULER] = sched
        log.info(
            "router %s serving on %s:%d with the %s scheduler",
            settings.router_id,
            settings.host,
            settings.port,
            sched.kind,
        )
        try:
            yield
        finally:
            await stop(loops)
            with contextlib.suppress(StateUnavailable):
                await state.resign(settings.router_id)
            await state.close()
            await registry.close()
            await tokens.close()
            await sched.close()
            await pool.close()
            await session.close()

    async def on_shutdown(app: web.Application) -> None:
        if ROUTER in app:
            app[ROUTER].draining = True

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[ROUTER].handle(request)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
