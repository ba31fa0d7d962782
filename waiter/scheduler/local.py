"""The local scheduler: each instance is a process group on this machine (Waiter's shell scheduler).

Two halves. ``ServiceBook`` is pure bookkeeping of one service (requested count, active and ended
instances, crash counter): no processes, no clock. ``LocalScheduler`` does the process work (spawn, signal,
watch, measure memory) and records every outcome in the books, the only source of the snapshots it reports.

Every instance runs as ``bash run-service.sh`` in a new session, so its process id is also its process group
id and one ``killpg`` reaches everything it started, including background children that outlive the leader.
Instances never outlive the router for long: a watchdog stops them when the router dies without cleaning up, and a
router started on the same work dir stops what an earlier one left (``waiter.scheduler.leftovers``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import logging
import os
import secrets
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from waiter.scheduler import leftovers, sandboxes
from waiter.scheduler.base import (
    Instance,
    InstanceFlag,
    KillOutcome,
    KillResult,
    Listener,
    SchedulerError,
    ServiceSpec,
    ServiceState,
)
from waiter.scheduler.book import (
    Ending,
    ServiceBook,
    check_spec,
    exit_message,
    not_running,
    restart_delay,
    scale_book,
)
from waiter.scheduler.environment import format_number, instance_environment
from waiter.scheduler.ports import PortAllocator
from waiter.scheduler.processes import open_sandbox, signal_group, trees_rss_bytes, wait_exit
from waiter.text import failure_reason

log = logging.getLogger(__name__)

# Launch errors (e.g. no free port) are retried on this delay at least, so a full port range is not hammered.
MIN_LAUNCH_RETRY_SECS = 1.0
# The router's variables an instance inherits (user env may override them): enough to find programs and keep
# text handling sane, nothing that leaks the router's own configuration.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


@dataclass(frozen=True)
class LocalSettings:
    work_dir: Path  # instances live under <work_dir>/<service-id>/<instance-id>/
    port_range: tuple[int, int] = (10000, 10999)
    port_hold_secs: float = 120.0  # a released port is reused last for this long (Waiter reserves it)
    # Machine-wide port locks shared by every router on this machine (None: this scheduler's own bookkeeping only).
    port_lock_dir: Path | None = Path(tempfile.gettempdir()) / "waiter-ports"
    host: str = "127.0.0.1"  # reported host and the address ports are checked on
    cluster_name: str = "local"
    memory_check_interval_secs: float = 1.0
    min_kill_grace_secs: float = 1.0  # SIGKILL after max(termination-grace-period-secs, this)
    restart_backoff_base_secs: float = 0.5  # crash n waits base * restart-backoff-factor**(n-1), <= 60 s
    max_ended_instances: int = 10  # kept per list (failed, killed)
    watchdog: bool = True  # a process that stops the instances if the router dies without cleaning up
    sandbox_retention_secs: float = 3600.0  # sandboxes of ended instances are removed after this
    sandboxes_kept: int = 3  # except the newest few of each service that still exists
    sandbox_sweep_interval_secs: float = 60.0


def ended_instance(instance: Instance, exit_code: int | None, ending: Ending | None) -> Instance:
    """The instance as recorded once its process exited: by itself (``ending`` None) or stopped by us."""
    code = 0 if exit_code is None else exit_code
    if ending is None:
        return dataclasses.replace(instance, exit_code=code, message=exit_message(code), failed=code != 0)
    return dataclasses.replace(
        instance,
        exit_code=code,
        message=ending.message,
        flags=ending.flags,
        failed=ending.failed,
        killed=not ending.failed,
    )


@dataclass
class _Process:
    """One running instance's process and what our side knows about it."""

    service_id: str
    instance: Instance
    process: subprocess.Popen[bytes]
    ports: tuple[int, ...]
    sandbox: Path
    started: float  # monotonic
    grace_secs: float  # SIGTERM to SIGKILL
    ending: Ending | None = None
    watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


class LocalScheduler:
    """Runs instances as process groups on this machine; implements ``waiter.scheduler.base.Scheduler``."""

    kind = "local"

    def __init__(self, settings: LocalSettings) -> None:
        # Absolute, because instances run with their own directory as cwd and find their script through it.
        self.settings = dataclasses.replace(settings, work_dir=settings.work_dir.resolve())
        self._ports = PortAllocator(
            settings.port_range, settings.port_hold_secs, settings.host, lock_dir=settings.port_lock_dir
        )
        self._books: dict[str, ServiceBook] = {}
        self._processes: dict[str, _Process] = {}  # instance id -> running process
        self._listeners: list[Listener] = []
        self._restart_timers: dict[str, asyncio.TimerHandle] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self._memory_task: asyncio.Task[None] | None = None
        self._last_sweep = 0.0  # monotonic
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._closing = False
        me = os.getpid()
        self._owner = (me, leftovers.start_time(me) or time.time())

    # -- the Scheduler protocol --

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        work_dir = self.settings.work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        left = leftovers.orphaned(leftovers.read_records(work_dir))
        if left:
            stopped = await asyncio.to_thread(leftovers.stop_instances, left)
            log.warning("Stopped %d instances left running in %s by a router that is gone", stopped, work_dir)
        self._ensure_watchdog()
        self._last_sweep = time.monotonic()
        await self.sweep_sandboxes()
        if self._memory_task is None:
            self._memory_task = asyncio.create_task(self._maintenance_loop(), name="local-scheduler-maintenance")

    async def close(self) -> None:
        self._closing = True
        if self._memory_task is not None:
            self._memory_task.cancel()
            await asyncio.wait([self._memory_task])
        for timer in self._restart_timers.values():
            timer.cancel()
        self._restart_timers.clear()
        if self._fills:
            # Launches are not cancelled midway (that could leave an unrecorded process); they stop early.
            await asyncio.wait(self._fills)
        ending = Ending("Killed by scheduler shutdown")
        running = list(self._processes.values())
        for process in running:
            self._begin_stop(process, ending)
        await asyncio.gather(*(self._stop(p, force=False) for p in running))
        self._ports.close()
        if self._watchdog is not None:
            await asyncio.to_thread(leftovers.stop_watchdog, self._watchdog)
            self._watchdog = None

    async def create_service(self, spec: ServiceSpec, instances: int) -> bool:
        check_spec(spec, instances)
        if spec.service_id in self._books:
            return False
        if self._closing:
            raise SchedulerError(f"Cannot create service {spec.service_id}: the scheduler is shutting down.")
        service_dir = self.settings.work_dir / spec.service_id
        try:
            service_dir.mkdir(parents=True, exist_ok=True)
            # Written once: bash reads a script while running it, so rewriting it could upset live instances.
            script = service_dir / "run-service.sh"
            script.write_text(f"#!/bin/bash\n\n{spec.cmd}\n")
            script.chmod(0o755)
        except OSError as error:
            raise SchedulerError(
                f"Cannot create service {spec.service_id}: cannot write its script in {service_dir}: "
                f"{failure_reason(error)}."
            ) from error
        self._books[spec.service_id] = ServiceBook(spec, instances, self.settings.max_ended_instances)
        self._notify(spec.service_id)
        await self._fill(spec.service_id)
        return True

    async def scale_service(self, service_id: str, instances: int) -> None:
        scale_book(self._books, service_id, instances, "local")
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
        running = self._processes.get(instance_id)
        if book is None or running is None or running.service_id != service_id:
            return not_running(book, service_id, instance_id)
        if running.ending is not None:
            if force:
                signal_group(running.pid, signal.SIGKILL)
            await asyncio.wait([self._watcher(running)])
            return KillResult(KillOutcome.ALREADY_KILLED, f"Instance {instance_id} was already stopping.")
        if not replace:
            book.requested = max(0, book.requested - 1)
        self._begin_stop(running, Ending(message or "Killed by request", flags, failed))
        if replace:
            await self._fill(service_id)
        ended = await self._stop(running, force=force)
        return KillResult(KillOutcome.KILLED, f"Killed instance {instance_id}: {exit_message(ended.exit_code or 0)}.")

    async def delete_service(self, service_id: str) -> bool:
        book = self._books.get(service_id)
        if book is None or book.deleting:
            return False
        book.deleting = True
        timer = self._restart_timers.pop(service_id, None)
        if timer is not None:
            timer.cancel()
        async with book.lock:  # lets a launch in progress finish, so its instance is killed too
            pass
        ending = Ending("Killed because the service was deleted")
        running = [p for p in self._processes.values() if p.service_id == service_id]
        for process in running:
            self._begin_stop(process, ending)
        await asyncio.gather(*(self._stop(p, force=True) for p in running))
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
        """Launch the instances a service misses; a launch error is shown on the service and retried later."""
        book = self._books.get(service_id)
        if book is None:
            return
        launched = 0
        async with book.lock:
            try:
                while book.missing() > 0 and not (self._closing or book.deleting):
                    await self._launch(book)
                    launched += 1
            except SchedulerError as error:
                log.warning("%s", error)
                book.error = str(error)
                base, factor = self.settings.restart_backoff_base_secs, book.spec.restart_backoff_factor
                delay = restart_delay(book.note_crash(0.0), base, factor)
                self._schedule_fill(service_id, max(delay, MIN_LAUNCH_RETRY_SECS))
                launched += 1  # the error is news
            else:
                book.error = None
        if launched:
            self._notify(service_id)

    async def _launch(self, book: ServiceBook) -> None:
        spec = book.spec
        ports = self._ports.allocate(spec.ports)
        instance_id = f"{spec.service_id}.{time.time_ns():x}-{secrets.token_hex(4)}"
        sandbox = self.settings.work_dir / spec.service_id / instance_id
        try:
            stdout, stderr = open_sandbox(sandbox)
            with stdout, stderr:
                # Popen, not asyncio.create_subprocess_exec: the latter costs ~8 ms of event-loop time per spawn in
                # a process the router's size (uvloop), which is most of what the router adds to a cold start.
                process = subprocess.Popen(  # noqa: ASYNC220 - a fork+exec, faster than the async API here
                    ["bash", str(self.settings.work_dir / spec.service_id / "run-service.sh")],
                    cwd=sandbox,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    env=self._environment(spec, instance_id, sandbox, ports),
                    start_new_session=True,
                )
        except OSError as error:
            self._ports.release(ports, hold=False)
            raise SchedulerError(
                f"Cannot launch an instance of service {spec.service_id} in {sandbox}: {failure_reason(error)}."
            ) from error
        except BaseException:
            self._ports.release(ports, hold=False)
            raise
        self._record(instance_id, sandbox, process.pid, spec)
        instance = Instance(
            id=instance_id,
            service_id=spec.service_id,
            host=self.settings.host,
            port=ports[0],
            started_at=time.time(),
            extra_ports=ports[1:],
            log_directory=str(sandbox),
            extras={"shell-scheduler/pid": process.pid, "shell-scheduler/working-directory": str(sandbox)},
        )
        grace = max(spec.termination_grace_period_secs, self.settings.min_kill_grace_secs)
        running = _Process(spec.service_id, instance, process, ports, sandbox, time.monotonic(), grace)
        running.watcher = asyncio.create_task(self._watch(running), name=f"watch-{instance_id}")
        self._processes[instance_id] = running
        book.add(instance)
        log.info("Launched instance %s (pid %d, ports %s)", instance_id, process.pid, ports)

    def _record(self, instance_id: str, sandbox: Path, pid: int, spec: ServiceSpec) -> None:
        """Leave the pid file by which a watchdog or a later router finds the instance if we die."""
        started = leftovers.start_time(pid)
        if started is None:
            return  # gone already: nothing can be left behind
        grace = max(spec.termination_grace_period_secs, self.settings.min_kill_grace_secs)
        record = leftovers.InstanceRecord(instance_id, pid, started, *self._owner, grace)
        try:
            leftovers.write_record(sandbox, record)
        except OSError as error:
            log.warning("Cannot write the pid file of instance %s: %s", instance_id, error)

    def _ensure_watchdog(self) -> None:
        """Start the watchdog, or start it again if something killed it."""
        if not self.settings.watchdog or self._closing:
            return
        if self._watchdog is not None and self._watchdog.poll() is None:
            return
        if self._watchdog is not None:
            log.warning("The watchdog of the local instances exited (%s); starting it again", self._watchdog.returncode)
        self._watchdog = leftovers.start_watchdog(self.settings.work_dir)

    def _environment(
        self, spec: ServiceSpec, instance_id: str, sandbox: Path, ports: tuple[int, ...]
    ) -> dict[str, str]:
        env = instance_environment(
            spec,
            self.settings.cluster_name,
            home=str(self.settings.work_dir),
            user=spec.run_as_user or getpass.getuser(),
            base={name: os.environ[name] for name in INHERITED_ENV if name in os.environ},
            sandbox=str(sandbox),
            instance_id=instance_id,
            ports=ports,
        )
        env["MESOS_SANDBOX"] = str(sandbox)  # Waiter's shell scheduler sets it too, for commands written for Mesos
        return env

    def _schedule_fill(self, service_id: str, delay: float) -> None:
        """Fill a service after ``delay``; an earlier pending fill already covers it."""
        if self._closing or service_id in self._restart_timers:
            return
        loop = asyncio.get_running_loop()
        self._restart_timers[service_id] = loop.call_later(delay, self._fill_in_background, service_id)

    def _fill_in_background(self, service_id: str) -> None:
        self._restart_timers.pop(service_id, None)
        if self._closing:
            return
        task = asyncio.create_task(self._fill(service_id), name=f"fill-{service_id}")
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    # -- stopping and watching --

    def _watcher(self, running: _Process) -> asyncio.Task[None]:
        assert running.watcher is not None, "a watcher is created with every process"
        return running.watcher

    def _begin_stop(self, running: _Process, ending: Ending) -> None:
        """Record why we stop an instance (the first reason wins); it no longer counts towards requested."""
        if running.ending is None:
            running.ending = ending
        book = self._books.get(running.service_id)
        if book is not None and running.instance.id in book.active:
            book.stopping.add(running.instance.id)

    async def _stop(self, running: _Process, *, force: bool) -> Instance:
        """Signal an instance (TERM, then KILL after its grace) and return it as recorded once it exited.

        Waiting never cancels the watcher (``asyncio.wait``), so a cancelled caller cannot lose the exit.
        """
        watcher = self._watcher(running)
        if force:
            signal_group(running.pid, signal.SIGKILL)
        elif not watcher.done():
            signal_group(running.pid, signal.SIGTERM)
            await asyncio.wait([watcher], timeout=running.grace_secs)
            if not watcher.done():
                log.info("Instance %s outlived its %g s grace", running.instance.id, running.grace_secs)
                signal_group(running.pid, signal.SIGKILL)
        await asyncio.wait([watcher])
        return running.instance

    async def _watch(self, running: _Process) -> None:
        """Wait for the leader's exit, kill what it left behind, record the end and replace a crash."""
        await wait_exit(running.process)
        signal_group(running.pid, signal.SIGKILL)  # orphans of the leader would otherwise survive it
        leftovers.remove_record(running.sandbox)
        self._ports.release(running.ports)
        self._processes.pop(running.instance.id, None)
        ended = ended_instance(running.instance, running.process.returncode, running.ending)
        running.instance = ended
        book = self._books.get(running.service_id)
        if book is None:
            return
        book.end(ended)
        log.info("Instance %s ended: %s", ended.id, ended.message)
        if running.ending is None or running.ending.crash:
            failures = book.note_crash(time.monotonic() - running.started)
            if not book.deleting:
                base, factor = self.settings.restart_backoff_base_secs, book.spec.restart_backoff_factor
                self._schedule_fill(book.spec.service_id, restart_delay(failures, base, factor))
        self._notify(running.service_id)

    # -- maintenance: memory, the watchdog, sandboxes --

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.memory_check_interval_secs)
            try:
                self._check_memory()
                self._ensure_watchdog()
                if time.monotonic() - self._last_sweep >= self.settings.sandbox_sweep_interval_secs:
                    self._last_sweep = time.monotonic()
                    await self.sweep_sandboxes()
            except Exception:  # one bad sweep must not end memory enforcement for good
                log.exception("Maintenance of local instances failed")

    async def sweep_sandboxes(self) -> int:
        """Remove the sandboxes past their retention (``waiter.scheduler.sandboxes``); returns how many went."""
        settings = self.settings
        removed, empty = await asyncio.to_thread(
            sandboxes.sweep,
            settings.work_dir,
            set(self._processes),
            set(self._books),
            time.time(),
            settings.sandbox_retention_secs,
            settings.sandboxes_kept,
        )
        for service_id in empty:
            if service_id not in self._books:  # checked here, on the loop: no launch of it can be starting
                sandboxes.remove_service_dir(settings.work_dir / service_id)
        if removed:
            log.info("Removed %d sandboxes of ended instances from %s", removed, settings.work_dir)
        return removed

    def _check_memory(self) -> None:
        watched = [r for r in self._processes.values() if r.ending is None and r.service_id in self._books]
        if not watched:
            return
        sizes = trees_rss_bytes([running.pid for running in watched])
        for running in watched:
            book = self._books.get(running.service_id)
            rss = sizes.get(running.pid)
            if book is None or running.ending is not None or rss is None:
                continue
            limit_mib = book.spec.mem
            if rss <= limit_mib * 1024 * 1024:
                continue
            message = f"Exceeded allocated memory usage ({rss // (1024 * 1024)} MiB > {format_number(limit_mib)} MiB)"
            log.info("Instance %s: %s; killing it", running.instance.id, message)
            flags = frozenset({InstanceFlag.MEMORY_LIMIT_EXCEEDED.value})
            self._begin_stop(running, Ending(message, flags, failed=True, crash=True))
            signal_group(running.pid, signal.SIGKILL)

    # -- helpers --

    def _notify(self, service_id: str) -> None:
        """Tell listeners from a fresh loop iteration, never from inside our own bookkeeping."""
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, service_id)
