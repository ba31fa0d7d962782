"""Assembling the aiohttp application: every long-lived resource is opened and closed by the app's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from waiter.proxy import Proxy
from waiter.registry import ServiceRegistry
from waiter.router import Router
from waiter.scheduler import create_scheduler
from waiter.scheduler.base import Scheduler
from waiter.settings import Settings
from waiter.tokens import TokenRegistry
from waiter.upstream import UpstreamPool

log = logging.getLogger(__name__)

ROUTER = web.AppKey("router", Router)
SCHEDULER = web.AppKey("scheduler", Scheduler)


def build_app(settings: Settings, scheduler: Scheduler | None = None) -> web.Application:
    """The router as an aiohttp application. ``scheduler`` replaces the configured one (tests, embedding)."""
    app = web.Application(handler_args={"max_field_size": 65536})

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        sched = scheduler or create_scheduler(settings)
        tokens = TokenRegistry(settings.tokens_dir)
        tokens.load()
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        pool = UpstreamPool(connect_timeout=5.0)
        await sched.start()
        registry = ServiceRegistry(sched, session, settings.health)
        router = Router(settings, tokens, registry, Proxy(pool, session, settings.router_id))
        app[ROUTER] = router
        app[SCHEDULER] = sched
        watcher = asyncio.create_task(tokens.watch(), name="token files")
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
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await registry.close()
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
