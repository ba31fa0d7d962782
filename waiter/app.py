"""Assembling the aiohttp application: every long-lived resource is opened and closed by the app's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from waiter.aio import stop
from waiter.api import metrics
from waiter.api.routes import admin_routes
from waiter.auth import Gate
from waiter.autoscaler import Autoscaler, wake_when_unserved
from waiter.coordinator import Coordinator, slots_policy, wake_on_demand
from waiter.frontdoor import ClientTraffic
from waiter.handoff import Handoff
from waiter.handover import SlotDemand
from waiter.peers import refuse_mixed_schedulers, this_identity
from waiter.reaper import Reaper
from waiter.registry import ServiceRegistry
from waiter.router import Router
from waiter.scaling import BurstSettings
from waiter.scheduler import create_scheduler
from waiter.scheduler.agent import AgentScheduler
from waiter.scheduler.base import Scheduler
from waiter.scheduler.mesos_failover import FileFrameworkIds, FrameworkIdStore
from waiter.settings import Settings
from waiter.state import SharedFrameworkIds, SharedState, StateUnavailable, open_state
from waiter.tokens import open_registry
from waiter.upstream import UpstreamPool

log = logging.getLogger(__name__)

ROUTER = web.AppKey("router", Router)
SCHEDULER = web.AppKey("scheduler", Scheduler)


def build_app(
    settings: Settings, scheduler: Scheduler | None = None, client_traffic: ClientTraffic | None = None
) -> web.Application:
    """The router as an aiohttp application. ``scheduler`` replaces the configured one (tests, embedding);
    ``client_traffic`` is what the front door in front of it counts (/metrics reports it)."""
    traffic = client_traffic or ClientTraffic()
    app = web.Application(handler_args={"max_field_size": 65536})

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as opened:
            router, sched = await compose(settings, scheduler, traffic, opened)
            app[ROUTER] = router
            app[SCHEDULER] = sched
            log.info(
                "router %s serving on %s:%d with the %s scheduler",
                settings.router_id,
                settings.host,
                settings.port,
                sched.kind,
            )
            yield

    async def on_shutdown(app: web.Application) -> None:
        if ROUTER in app:
            app[ROUTER].draining = True

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[ROUTER].handle(request)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def framework_ids(settings: Settings, state: SharedState) -> FrameworkIdStore | None:
    """Where a Mesos router keeps its framework id: in the shared state when there is one (it outlives the machine a
    router restarts on), keyed by the router's host and port; else in a file of its work dir."""
    if settings.scheduler_kind != "mesos":
        return None
    if state.shared:
        return SharedFrameworkIds(state, f"{socket.gethostname()}:{settings.port}")
    return FileFrameworkIds(settings.mesos.work_dir / "mesos-framework-id")


async def compose(
    settings: Settings,
    scheduler: Scheduler | None,
    client_traffic: ClientTraffic,
    opened: contextlib.AsyncExitStack,
) -> tuple[Router, Scheduler]:
    """The composition root: every component built once, in dependency order, and handed to whoever needs it.

    Each resource registers its own cleanup on ``opened`` as soon as it is made, before it starts, so a start that
    fails or is cancelled half-way (a scheduler that cannot reach its cluster, SIGTERM while starting) unwinds
    exactly what was opened, in reverse order, tasks a start began included.
    """
    scaling = settings.scaling
    state = open_state(settings)
    opened.push_async_callback(state.close)
    await state.start()
    # Before anything runs: routers sharing a Redis must share one scheduler (see waiter.peers).
    identity = this_identity(settings)
    await refuse_mixed_schedulers(state, settings, identity, scaling.router_ttl_ms)
    tokens = open_registry(settings)
    opened.push_async_callback(tokens.close)
    await tokens.start()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    opened.push_async_callback(session.close)
    pool = UpstreamPool(connect_timeout=5.0)
    opened.push_async_callback(pool.close)
    sched = scheduler or create_scheduler(settings, framework_ids=framework_ids(settings, state))
    opened.push_async_callback(sched.close)
    await sched.start()

    # Routers sharing a scheduler agent (--workers) pass connections to the one holding their service's slots.
    handoff: Handoff | None = None
    if isinstance(sched, AgentScheduler) and settings.handoff and state.shared:
        handoff = Handoff(sched.directory, settings.router_id)
        handoff.open()
        opened.callback(handoff.close)

    # A request that queues wakes the handover (to lease slots) and the autoscaler (to decide at once).
    slot_demand, autoscaler_wake = SlotDemand(), asyncio.Event()
    registry = ServiceRegistry(
        sched,
        session,
        settings.health,
        slots_policy=slots_policy(state.shared, slot_demand),
        demand_hooks=(wake_on_demand(slot_demand), wake_when_unserved(autoscaler_wake)),
    )
    opened.push_async_callback(registry.close)
    coordinator = Coordinator(
        state,
        registry,
        settings.router_id,
        f"http://{settings.host}:{settings.port}",
        publish_interval=scaling.publish_interval_ms / 1000,
        router_ttl_ms=scaling.router_ttl_ms,
        scheduler=identity,
        demand=slot_demand,
        gave=handoff.gave if handoff is not None else None,
    )
    autoscaler = Autoscaler(
        state,
        registry,
        coordinator,
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
        wake=autoscaler_wake,
    )

    async def withdraw() -> None:
        # Unwound after the drain and the loops' stop: the peers stop counting this router now, not at its TTLs.
        with contextlib.suppress(StateUnavailable):
            await state.withdraw(settings.router_id)

    opened.push_async_callback(withdraw)
    gate = Gate(settings)
    opened.push_async_callback(gate.close)
    await gate.start()
    # One of --workers: the supervisor (the scheduler agent) gathers the workers' metrics (waiter.api.metrics).
    peers = sched if isinstance(sched, AgentScheduler) else None
    router = Router(
        settings,
        tokens,
        registry,
        pool,
        coordinator,
        autoscaler,
        gate,
        admin_routes(),
        client_traffic=client_traffic,
        metrics_peers=peers,
        handoff=handoff,
    )
    opened.push_async_callback(router.async_holds.close)  # before the registry closes: their slots are released
    reaper = Reaper(
        registry,
        coordinator,
        lambda: autoscaler.is_leader,
        router.current_for,
        interval=settings.lifecycle.reap_interval_secs,
        minute_secs=settings.lifecycle.minute_secs,
        broken_timeout_secs=settings.lifecycle.broken_service_timeout_secs,
    )
    loops = [
        asyncio.create_task(coordinator.run(), name="coordinator"),
        asyncio.create_task(autoscaler.run(), name="autoscaler"),
        asyncio.create_task(reaper.run(), name="reaper"),
    ]
    if peers is not None:
        loops.append(asyncio.create_task(metrics.push_loop(router, peers), name="metrics push"))
    opened.push_async_callback(stop, loops)
    return router, sched
