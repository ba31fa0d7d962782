"""In-memory stand-ins for tests where real processes add nothing.

``FakeScheduler`` implements ``waiter.scheduler.base.Scheduler`` without processes: each instance is the test
backend (``tests/backends/app.py``) served by this process on a loopback port of its own, so health checks and
proxying still go over real sockets. It keeps its books with the local scheduler's ``ServiceBook`` and answers with
the same typed results: a crash is recorded as failed (its exit code, Waiter's words) and replaced after the same
backoff, a kill ends the instance as the caller says, a launch it cannot make is the service's error.

Commands: ``exit N`` ends an instance at once with code N, as a shell would; any other command runs the test
backend with the instance's environment (``STARTUP_DELAY_MS``, ``HEALTH_STATUS`` and ``HEALTH_FAIL_FILE`` work
as for a process). A crash endpoint of the backend drops every connection of the instance at once, as a process's
death does. Terminating an instance (a kill without force) lets its requests finish for the termination grace
period, then drops them.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.backends import app as backend
from waiter.scheduler.base import Instance, KillOutcome, KillResult, Listener, SchedulerError, ServiceSpec, ServiceState
from waiter.scheduler.book import (
    Ending,
    ServiceBook,
    check_spec,
    exit_message,
    not_running,
    restart_delay,
    scale_book,
)
from waiter.scheduler.environment import instance_environment
from waiter.scheduler.local import ended_instance

_EXIT = re.compile(r"\s*exit\s+(\d+)\s*")
_KILLED = -signal.SIGKILL  # the exit code of an instance that was not let finish, as asyncio reports a SIGKILL
LAUNCH_RETRY_SECS = 1.0  # as the local scheduler's least delay after a launch error


@dataclass
class _Running:
    """One live instance: its sockets, its fate once decided, and the task that lives its life."""

    instance: Instance
    spec: ServiceSpec
    env: dict[str, str]
    sockets: list[socket.socket]
    grace_secs: float
    started: float  # monotonic
    dead: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    terminating: asyncio.Event = field(default_factory=asyncio.Event)
    ending: Ending | None = None
    app: web.Application | None = None  # once it serves
    task: asyncio.Task[None] | None = None
    exit_code: int | None = None  # once it ended

    def die(self, code: int) -> None:
        """End at once with ``code``: every connection dropped and every request abandoned, as when a process dies."""
        if not self.dead.done():
            self.dead.set_result(code)
        if self.app is None:
            return
        server = self.app[backend.RUNNER].server
        for handler in server.connections if server is not None else ():
            if handler.transport is not None:
                handler.transport.abort()
        for request in self.app[backend.HANDLING]:
            request.cancel()


class FakeScheduler:
    """A ``Scheduler`` whose instances are in-process HTTP servers (see the module's doc)."""

    kind = "fake"

    def __init__(
        self,
        work_dir: Path,
        *,
        cluster_name: str = "fake",
        host: str = "127.0.0.1",
        restart_backoff_base_secs: float = 0.5,
        min_kill_grace_secs: float = 1.0,
        max_ended_instances: int = 10,
    ) -> None:
        self.work_dir = work_dir  # instances' sandboxes (WAITER_SANDBOX), where the backend leaves its notes
        self.cluster_name = cluster_name
        self.host = host
        self.restart_backoff_base_secs = restart_backoff_base_secs
        self.min_kill_grace_secs = min_kill_grace_secs
        self.max_ended_instances = max_ended_instances
        self._books: dict[str, ServiceBook] = {}
        self._running: dict[str, _Running] = {}
        self._listeners: list[Listener] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- the Scheduler protocol --

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        self._closing = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._fills:
            await asyncio.wait(self._fills)
        running = list(self._running.values())
        for instance in running:
            self._begin_stop(instance, Ending("Killed by scheduler shutdown"))
        await asyncio.gather(*(self._stop(r, force=False) for r in running))

    async def create_service(self, spec: ServiceSpec, instances: int) -> bool:
        check_spec(spec, instances)
        if spec.service_id in self._books:
            return False
        if self._closing:
            raise SchedulerError(f"Cannot create service {spec.service_id}: the scheduler is shutting down.")
        self._books[spec.service_id] = ServiceBook(spec, instances, self.max_ended_instances)
        self._notify(spec.service_id)
        await self._fill(spec.service_id)
        return True

    async def scale_service(self, service_id: str, instances: int) -> None:
        scale_book(self._books, service_id, instances, "fake")
        self._notify(service_id)
        await self._fill(service_id)

    async def kill_instance(
        self,
        service_id: str,
        instance_id: str,
        *,
        force: bool = False,
        replace: bool = False,
        message: str | None = None,
        flags: frozenset[str] = frozenset(),
        failed: bool = False,
    ) -> KillResult:
        book = self._books.get(service_id)
        running = self._running.get(instance_id)
        if book is None or running is None or running.instance.service_id != service_id:
            return not_running(book, service_id, instance_id)
        assert running.task is not None
        if running.ending is not None:
            if force:
                running.die(_KILLED)
            await asyncio.wait([running.task])
            return KillResult(KillOutcome.ALREADY_KILLED, f"Instance {instance_id} was already stopping.")
        if not replace:
            book.requested = max(0, book.requested - 1)
        self._begin_stop(running, Ending(message or "Killed by request", flags, failed))
        if replace:
            await self._fill(service_id)
        code = await self._stop(running, force=force)
        return KillResult(KillOutcome.KILLED, f"Killed instance {instance_id}: {exit_message(code)}.")

    async def delete_service(self, service_id: str) -> bool:
        book = self._books.get(service_id)
        if book is None or book.deleting:
            return False
        book.deleting = True
        timer = self._timers.pop(service_id, None)
        if timer is not None:
            timer.cancel()
        async with book.lock:  # a launch in progress finishes, so its instance is stopped too
            pass
        running = [r for r in self._running.values() if r.instance.service_id == service_id]
        for instance in running:
            self._begin_stop(instance, Ending("Killed because the service was deleted"))
        await asyncio.gather(*(self._stop(r, force=True) for r in running))
        del self._books[service_id]
        self._notify(service_id)
        return True

    def service_ids(self) -> list[str]:
        return list(self._books)

    def service_state(self, service_id: str) -> ServiceState | None:
        book = self._books.get(service_id)
        return None if book is None else book.snapshot()

    # -- launching --

    async def _fill(self, service_id: str) -> None:
        book = self._books.get(service_id)
        if book is None:
            return
        launched = 0
        async with book.lock:
            try:
                while book.missing() > 0 and not (self._closing or book.deleting):
                    self._launch(book)
                    launched += 1
            except SchedulerError as error:  # shown as the service's error, tried again a second later
                book.error = str(error)
                self._fill_later(service_id, LAUNCH_RETRY_SECS)
                launched += 1
            else:
                book.error = None
        if launched:
            self._notify(service_id)

    def _launch(self, book: ServiceBook) -> None:
        spec = book.spec
        instance_id = f"{spec.service_id}.{time.time_ns():x}-{secrets.token_hex(4)}"
        sandbox = self.work_dir / spec.service_id / instance_id
        sockets: list[socket.socket] = []
        try:
            sandbox.mkdir(parents=True)
            for _ in range(spec.ports):
                sockets.append(socket.socket())
                sockets[-1].bind((self.host, 0))  # bound, not listening: connections are refused until it starts
        except OSError as error:
            for sock in sockets:
                sock.close()
            raise SchedulerError(f"Cannot launch an instance of service {spec.service_id}: {error}.") from error
        ports = tuple(int(sock.getsockname()[1]) for sock in sockets)
        env = instance_environment(
            spec,
            self.cluster_name,
            home=str(self.work_dir),
            user=spec.run_as_user or "waiter",
            sandbox=str(sandbox),
            instance_id=instance_id,
            ports=ports,
        )
        instance = Instance(
            id=instance_id,
            service_id=spec.service_id,
            host=self.host,
            port=ports[0],
            started_at=time.time(),
            extra_ports=ports[1:],
            log_directory=str(sandbox),
        )
        grace = max(spec.termination_grace_period_secs, self.min_kill_grace_secs)
        running = _Running(instance, spec, env, sockets, grace, time.monotonic())
        running.task = asyncio.create_task(self._live(running), name=f"fake-{instance_id}")
        self._running[instance_id] = running
        book.add(instance)

    def _fill_later(self, service_id: str, delay: float) -> None:
        if self._closing or service_id in self._timers:
            return
        self._timers[service_id] = asyncio.get_running_loop().call_later(delay, self._fill_now, service_id)

    def _fill_now(self, service_id: str) -> None:
        self._timers.pop(service_id, None)
        if not self._closing:
            task = asyncio.create_task(self._fill(service_id), name=f"fill-{service_id}")
            self._fills.add(task)
            task.add_done_callback(self._fills.discard)

    # -- an instance's life --

    async def _live(self, running: _Running) -> None:
        try:
            code = running.exit_code = await self._serve(running)
        finally:
            for sock in running.sockets:
                sock.close()
            self._running.pop(running.instance.id, None)
        ended = ended_instance(running.instance, code, running.ending)
        book = self._books.get(running.instance.service_id)
        if book is None:
            return
        book.end(ended)
        if running.ending is None or running.ending.crash:
            failures = book.note_crash(time.monotonic() - running.started)
            if not book.deleting:
                delay = restart_delay(failures, self.restart_backoff_base_secs, running.spec.restart_backoff_factor)
                self._fill_later(running.instance.service_id, delay)
        self._notify(running.instance.service_id)

    async def _serve(self, running: _Running) -> int:
        """Run the instance until it ends; its exit code."""
        command = _EXIT.fullmatch(running.spec.cmd)
        if command is not None:
            return int(command.group(1))
        app = backend.build_app(running.env, running.die)
        told = asyncio.ensure_future(running.terminating.wait())
        try:
            # Still starting: a SIGTERM ends it at once (the backend handles it only once it serves).
            await asyncio.wait(
                [running.dead, told], timeout=backend.startup_delay(running.env), return_when=asyncio.FIRST_COMPLETED
            )
            if running.dead.done() or told.done():
                return running.dead.result() if running.dead.done() else -signal.SIGTERM
            await backend.start(app, lambda runner: web.SockSite(runner, running.sockets[0]))
            running.app = app
            await asyncio.wait([running.dead, told], return_when=asyncio.FIRST_COMPLETED)
        finally:
            told.cancel()
        if not running.dead.done():  # terminated: the backend finishes its requests, unless it is killed meanwhile
            graceful = asyncio.ensure_future(backend.terminate(app))
            await asyncio.wait([running.dead, graceful], return_when=asyncio.FIRST_COMPLETED)
            if not running.dead.done():
                graceful.result()
                return 0
            await asyncio.wait([graceful])
        await app[backend.RUNNER].cleanup()
        return running.dead.result()

    def _begin_stop(self, running: _Running, ending: Ending) -> None:
        if running.ending is None:
            running.ending = ending
        book = self._books.get(running.instance.service_id)
        if book is not None and running.instance.id in book.active:
            book.stopping.add(running.instance.id)

    async def _stop(self, running: _Running, *, force: bool) -> int:
        """Terminate (kill after the grace) or, with ``force``, kill at once; the exit code once it ended."""
        assert running.task is not None
        if not force:
            running.terminating.set()
            await asyncio.wait([running.task], timeout=running.grace_secs)
        if not running.task.done():
            running.die(_KILLED)
            await asyncio.wait([running.task])
        return running.exit_code if running.exit_code is not None else _KILLED

    def _notify(self, service_id: str) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, service_id)
