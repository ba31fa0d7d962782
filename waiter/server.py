"""Running the router: the front door (waiter.frontdoor) on the public address, the aiohttp app behind it.

The app (waiter.app.build_app) owns every long-lived resource through its lifecycle and serves the admin API and
websockets on a private 127.0.0.1 port that only the front door uses. Shutdown drains: stop listening without
resetting a connection that reached the kernel (waiter.listener), let the requests in flight and those of the
connections accepted meanwhile finish within ``drain-timeout-secs`` (idle keep-alive connections close at once), then
clean the app up, which stops the instances this router started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType

from aiohttp import web

from waiter.access_log import AccessLog
from waiter.aio import stop
from waiter.app import ROUTER, build_app
from waiter.client_connection import Connection
from waiter.exchange import Dispatcher
from waiter.frontdoor import ClientTraffic, FrontDoor, Limits
from waiter.listener import half_open, refuse_new_handshakes
from waiter.registry import ServiceRegistry
from waiter.router import Router
from waiter.scheduler.agent import AgentScheduler
from waiter.scheduler.base import Scheduler
from waiter.settings import Settings

log = logging.getLogger(__name__)

INTERNAL_HOST = "127.0.0.1"
_BACKLOG = 1024
# The app behind the front door has nothing left in flight once the front door drained; this bounds a straggler.
_APP_SHUTDOWN_SECS = 5.0
# How long a stopping router waits for handshakes begun before it refused new ones: one round trip each, so this is
# for a slow network; on loopback they are done at once.
_HANDSHAKE_SECS, _HANDSHAKE_POLL_SECS = 1.0, 0.01
_GONE_POLL_SECS = 0.1  # how often a draining --workers worker checks that its supervisor's agent still listens
# glibc malloc settings (mallopt): bodies move as 64-256 KiB bytes objects. By default glibc serves those with
# mmap, or returns freed heap tops to the system, so each one costs fresh pages (page faults, zeroing): a third of
# the router's CPU on 1 MiB responses. Up to 4 MiB from the heap, and up to 32 MiB of free heap kept.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_SETTINGS = ((_M_MMAP_THRESHOLD, 4 * 1024 * 1024), (_M_TRIM_THRESHOLD, 32 * 1024 * 1024))


async def _strand_when_scheduler_gone(registry: ServiceRegistry) -> None:
    """While the router drains: once its --workers supervisor is found dead (killed with -9: the agent and the
    instances it ran died with it; the worker's SIGTERM may come before its socket is closed), requests waiting for
    an instance can only be answered, at once rather than at the drain timeout (Service.strand)."""
    scheduler = registry.scheduler
    if not isinstance(scheduler, AgentScheduler):
        return
    while True:
        why = await scheduler.gone()
        if why is not None:
            break
        await asyncio.sleep(_GONE_POLL_SECS)  # a kernel fact (a socket nobody listens on): polled, no event
    log.warning("stopping without a scheduler: %s; requests waiting for an instance get a 503", why)
    registry.strand(why)


def tune_malloc() -> bool:
    """Apply _MALLOC_SETTINGS for this process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(option, value) == 1 for option, value in _MALLOC_SETTINGS)
    except (OSError, AttributeError):
        return False


class RouterServer:
    """The router on a real port, in this process: ``await start()``, then ``await stop()`` (or ``async with``).

    ``settings.port`` may be 0: the front door binds a free port, and the app sees the bound one in its settings.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        scheduler: Scheduler | None = None,
        reuse_port: bool = False,
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings
        self._scheduler = scheduler
        self._reuse_port = reuse_port
        self._limits = limits
        self._traffic = ClientTraffic()  # made first: the app's /metrics reports what the front door counts
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._door: FrontDoor | None = None
        self._dispatcher: Dispatcher | None = None
        self._stopped = False
        self._port: int | None = None  # kept: the listening socket is gone once stopping

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("The router server is not started; call start() first.")
        return self._port

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    @property
    def router(self) -> Router:
        return self.dispatcher.router

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise RuntimeError("The router server is not started; call start() first.")
        return self._dispatcher

    @property
    def front_door(self) -> FrontDoor:
        if self._door is None:
            raise RuntimeError("The router server is not started; call start() first.")
        return self._door

    @property
    def internal_port(self) -> int:
        return self.dispatcher.internal[1]

    def _connection(self) -> Connection:
        assert self._door is not None  # connections arrive only after start_serving()
        return self._door()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Bound (not yet listening) before the app starts: a port in use fails before anything was started, and
        # port 0 becomes the real port in the settings the app publishes.
        self._server = await loop.create_server(
            self._connection,
            self.settings.host,
            self.settings.port,
            reuse_port=self._reuse_port or None,
            backlog=_BACKLOG,
            start_serving=False,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        try:
            if self.settings.port == 0:
                self.settings = replace(self.settings, port=self.port)
            self._runner = web.AppRunner(
                build_app(self.settings, self._scheduler, self._traffic),
                access_log=None,
                shutdown_timeout=_APP_SHUTDOWN_SECS,
            )
            await self._runner.setup()
            site = web.TCPSite(self._runner, INTERNAL_HOST, 0)
            await site.start()
            internal_port = int(self._runner.addresses[0][1])
            router = self._runner.app[ROUTER]
            access = AccessLog(self.settings.router_id) if self.settings.access_log == "json" else None
            self._dispatcher = Dispatcher(router, router.pool, (INTERNAL_HOST, internal_port), access, router.handoff)
            door = self._door = FrontDoor(self._dispatcher, self._limits, self._traffic)
            if router.handoff is not None:
                router.handoff.receive(door.adopt)
            await self._server.start_serving()
        except BaseException:
            await self._close()
            raise
        log.info(
            "front door on %s:%d, admin app behind it on %s:%d",
            self.settings.host,
            self.port,
            INTERNAL_HOST,
            internal_port,
        )

    async def stop(self) -> None:
        """Drain (see the module's doc) and stop everything; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        listening = asyncio.create_task(self._stop_listening()) if self._server is not None else None
        if self._door is not None and self._dispatcher is not None:
            registry = self._dispatcher.router.registry
            self._dispatcher.router.draining = True
            if self._dispatcher.handoff is not None:
                self._dispatcher.handoff.stop_receiving()  # siblings keep what they would have handed here
            stranding = asyncio.create_task(_strand_when_scheduler_gone(registry))
            try:
                await self._door.drain(self.settings.drain_timeout_secs, listening)
            finally:
                await stop([stranding])
        if listening is not None:
            await listening
        await self._close()

    async def _stop_listening(self) -> None:
        """Stop listening without resetting a connection that reached the kernel (waiter.listener): no new
        handshake begins, the ones begun complete and are accepted, then the queue is emptied and the socket closed.
        What is accepted meanwhile is served like any other connection (closed after its response: draining)."""
        assert self._server is not None
        # Duplicates of the listening sockets: the server closes its own, and the queue must outlive that.
        listeners = [socket.socket(fileno=os.dup(sock.fileno())) for sock in self._server.sockets]
        if all([refuse_new_handshakes(listener) for listener in listeners]):
            for _ in range(int(_HANDSHAKE_SECS / _HANDSHAKE_POLL_SECS)):  # a kernel fact: polled, no event
                if not half_open(self.port):
                    break
                await asyncio.sleep(_HANDSHAKE_POLL_SECS)
        self._server.close()
        await self._serve_queued(listeners)

    async def _serve_queued(self, listeners: list[socket.socket]) -> None:
        """Take on the connections the kernel completed but nobody accepted yet, then stop listening for good."""
        loop = asyncio.get_running_loop()
        for listener in listeners:
            with listener:
                listener.setblocking(False)
                while True:
                    try:
                        conn, _ = listener.accept()
                    except OSError:  # BlockingIOError: the queue is empty
                        break
                    try:
                        await loop.connect_accepted_socket(self._connection, conn)
                    except OSError:
                        conn.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RouterServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve(
    settings: Settings, *, reuse_port: bool = False, ready: Callable[[RouterServer], object] | None = None
) -> None:
    """Run the router until SIGTERM or SIGINT, then drain and stop. ``ready`` is called once it listens."""
    tune_malloc()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    server = RouterServer(settings, reuse_port=reuse_port)
    try:
        starting = asyncio.ensure_future(server.start())
        interrupted = asyncio.ensure_future(stopping.wait())
        await asyncio.wait((starting, interrupted), return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if not starting.done():
            # Told to stop while starting: a --workers worker whose supervisor died meanwhile would otherwise
            # retry the gone agent for ever. Start-up unwinds what it opened when cancelled.
            log.info("stopping during start-up")
            await stop([starting])
            return
        starting.result()
        # What start-up made lives as long as the process: keep it out of the cyclic collector's full passes.
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready(server)
        await stopping.wait()
        log.info("stopping: draining requests in flight for up to %g s", settings.drain_timeout_secs)
    finally:
        await server.stop()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
