"""The Marathon scheduler: every service is a Marathon app, every instance one of its tasks (docs/api.md §8).

Three layers, as Waiter has them. ``MarathonClient`` (``marathon_client``) does the HTTP. Pure translators
(``marathon_apps``) turn a ``ServiceSpec`` into an app descriptor and Marathon's JSON into instances.
``MarathonScheduler`` keeps an in-memory snapshot of every app under its app-id prefix (``/waiter/`` by default, a
Marathon group), refreshed by a background loop (quickly while instances are being started, every
``sync-interval-ms`` otherwise), and calls its listeners whenever a service's snapshot changed.

Health is the router's: ``healthCheckResults`` are shown (``marathon/healthy?``) but never decide routing. The app's
HTTP health check is declared for Marathon's own views, as Waiter does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any

from waiter.scheduler.base import (
    Instance,
    KillOutcome,
    KillResult,
    Listener,
    SchedulerError,
    ServiceSpec,
    ServiceState,
)
from waiter.scheduler.book import already_ended, no_such_instance
from waiter.scheduler.marathon_apps import AppBook, Naming, Place, app_descriptor, check_spec
from waiter.scheduler.marathon_client import MarathonClient, RetryPolicy
from waiter.settings import MarathonSchedulerConfig

log = logging.getLogger(__name__)

FAST_SYNC_SECS = 0.05  # refresh period while started instances have yet to appear
FAST_SYNC_WINDOW_SECS = 30.0  # how long after a create, scale or replacing kill the fast refresh may last
DEPLOYMENT_WAIT_SECS = 10.0  # delete_service waits this long at most for Marathon to stop the app's tasks


# -- the scheduler ---------------------------------------------------------------------------------------------


class MarathonScheduler:
    """Runs each service as a Marathon app; implements ``waiter.scheduler.base.Scheduler``."""

    kind = "marathon"

    def __init__(self, config: MarathonSchedulerConfig, *, cluster_name: str = "marathon") -> None:
        self.config = config
        self.cluster_name = cluster_name
        self.naming = Naming(config.app_id_prefix)
        self.client = MarathonClient(
            config.url,
            username=config.username,
            password=config.password,
            timeout_secs=config.request_timeout_ms / 1000,
            retry=RetryPolicy(config.retry_attempts, config.retry_backoff_ms / 1000),
        )
        self._place = Place(config.agent_work_dir)
        self._books: dict[str, AppBook] = {}
        self._deleted: dict[str, int] = {}  # service id -> change counter at its deletion
        self._changes = itertools.count(1)
        self._change = 0
        self._listeners: list[Listener] = []
        self._wake = asyncio.Event()
        self._fast_until = 0.0
        self._refresh_lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._sync_failing = False
        self._mesos_user: str | None = None  # Marathon's --mesos_user: who tasks run as without a run-as-user

    # -- the Scheduler protocol --

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        try:
            info = await self.client.info()
            framework_id = info.get("frameworkId")
            self._place = dataclasses.replace(self._place, framework_id=str(framework_id) if framework_id else None)
            marathon_config = info.get("marathon_config")
            if isinstance(marathon_config, Mapping) and marathon_config.get("mesos_user"):
                self._mesos_user = str(marathon_config["mesos_user"])
        except SchedulerError as error:
            log.warning("Marathon at %s did not describe itself (no log directories): %s", self.config.url, error)
        await self._refresh_logged()
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._sync_loop(), name="marathon-sync")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait([self._loop_task])
            self._loop_task = None
        await self.client.close()

    async def create_service(self, spec: ServiceSpec, instances: int) -> bool:
        check_spec(spec, instances)
        if spec.service_id in self._books:
            return False
        app_id = self.naming.app_id(spec.service_id)
        app = app_descriptor(spec, instances, self.naming, self.cluster_name, self._mesos_user)
        created = await self.client.create_app(app)
        if created is None:
            log.info("Marathon app %s exists already", app_id)
            existing = await self.client.get_app(app_id)
            if existing is not None:
                self._adopt(spec.service_id, existing)
            return False
        self._deleted.pop(spec.service_id, None)
        book = self._adopt(spec.service_id, {**created, "instances": instances})
        book.changed_at = self._next_change()
        self._hurry()
        return True

    async def scale_service(self, service_id: str, instances: int) -> None:
        if instances < 0:
            raise SchedulerError(f"instances for service {service_id} is {instances}; it must be 0 or more.")
        book = self._books.get(service_id)
        app_id = self.naming.app_id(service_id)
        if book is None:
            app = await self.client.get_app(app_id)
            if app is None:
                raise SchedulerError(f"Cannot scale service {service_id}: Marathon has no app {app_id}.")
            book = self._adopt(service_id, app)
        # Scale-down happens through kills of chosen instances, never by letting Marathon pick victims.
        target = max(instances, len(book.active_ids))
        await self.client.scale_app(app_id, target, force=True)
        book.requested = target
        book.changed_at = self._next_change()
        self._notify(service_id)
        self._hurry()

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
        app_id = self.naming.app_id(service_id)
        none = no_such_instance(service_id, instance_id)
        if service_id not in self._books:
            return none
        # Marathon answers a kill of a task it does not have (any more) with 200 and a deployment that changes
        # nothing when scale=true, so the answer alone cannot say whether anything died: ask what it runs first.
        try:
            app = await self.client.get_app(app_id)
        except SchedulerError as error:
            return KillResult(KillOutcome.FAILED, str(error))
        if app is None:
            return none
        book = self._adopt(service_id, app)
        if book.find_ended(instance_id):
            return already_ended(instance_id)
        task_id = book.task_ids.get(instance_id)
        if task_id is None or instance_id not in book.tasks:
            return none
        if book.tasks[instance_id].extras.get("marathon/state") == "TASK_KILLING":
            return KillResult(KillOutcome.ALREADY_KILLED, f"Instance {instance_id} is already being killed.")
        instances_before = int(app.get("instances", book.requested))
        try:
            # Marathon has no signal choice: its force overrides a deployment lock, the closest to "at once".
            killed = await self.client.kill_task(app_id, task_id, scale=not replace, force=force)
            after = None if replace or killed is None else await self.client.get_app(app_id)
        except SchedulerError as error:
            return KillResult(KillOutcome.FAILED, str(error))
        if killed is None or (after is not None and int(after.get("instances", 0)) >= instances_before):
            # The task ended between the listing and the kill: Marathon killed nothing (and scaled by nothing).
            if after is not None:
                self._adopt(service_id, after)
            return KillResult(KillOutcome.ALREADY_KILLED, f"Instance {instance_id} ended before it could be killed.")
        seen = book.tasks.get(instance_id) or Instance(instance_id, service_id, host="", port=0, started_at=0.0)
        book.end(
            dataclasses.replace(
                seen, message=message or "Killed by request", flags=flags, failed=failed, killed=not failed
            )
        )
        if not replace:
            book.requested = max(0, book.requested - 1)
        book.changed_at = self._next_change()
        self._notify(service_id)
        if replace:
            self._hurry()
        return KillResult(KillOutcome.KILLED, f"Killed instance {instance_id} (Marathon task {task_id}).")

    async def delete_service(self, service_id: str) -> bool:
        app_id = self.naming.app_id(service_id)
        deployment = await self.client.delete_app(app_id, force=True)
        self._deleted[service_id] = self._next_change()
        known = self._books.pop(service_id, None) is not None
        if known or deployment is not None:
            self._notify(service_id)
        if deployment:
            await self._await_deployment(deployment)
        return deployment is not None

    def service_ids(self) -> list[str]:
        return list(self._books)

    def service_record(self, service_id: str) -> str | None:
        """The router's record of a service, from its app's label (``KeepsRecords``)."""
        book = self._books.get(service_id)
        return None if book is None else book.record

    def service_state(self, service_id: str) -> ServiceState | None:
        book = self._books.get(service_id)
        return None if book is None else book.snapshot()

    # -- refreshing the snapshot --

    async def _sync_loop(self) -> None:
        while True:
            with_instances_coming = time.monotonic() < self._fast_until and any(
                len(b.active_ids) < b.requested for b in self._books.values()
            )
            interval = FAST_SYNC_SECS if with_instances_coming else self.config.sync_interval_ms / 1000
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            await self._refresh()
        except Exception as error:  # the loop must outlive any one bad answer
            if not self._sync_failing:
                unexpected = not isinstance(error, SchedulerError)
                log.warning("cannot refresh the Marathon apps (will keep trying): %s", error, exc_info=unexpected)
            self._sync_failing = True
        else:
            if self._sync_failing:
                log.info("Marathon apps refreshed again")
            self._sync_failing = False

    async def _refresh(self) -> None:
        async with self._refresh_lock:
            asked_at = self._change
            self._deleted = {s: at for s, at in self._deleted.items() if at > asked_at}
            apps = await self.client.list_apps(self.naming.prefix)
            listed: set[str] = set()
            for app in apps:
                service_id = self.naming.service_id(str(app.get("id", "")))
                if service_id is None or self._deleted.get(service_id, 0) > asked_at:
                    continue
                listed.add(service_id)
                book = self._books.get(service_id)
                if book is not None and book.changed_at > asked_at:
                    continue  # we changed it while this answer was on its way: the next refresh has it
                self._adopt(service_id, app)
            for service_id in [s for s, b in self._books.items() if s not in listed and b.changed_at <= asked_at]:
                del self._books[service_id]
                self._notify(service_id)

    def _adopt(self, service_id: str, app: Mapping[str, Any]) -> AppBook:
        """Take in Marathon's view of one app; listeners hear of it if the snapshot changed."""
        book = self._books.get(service_id)
        before = book.snapshot() if book is not None else None
        if book is None:
            book = self._books[service_id] = AppBook(service_id, int(app.get("instances", 0)))
        book.observe(app, self.naming, self._place)
        if book.snapshot() != before:
            self._notify(service_id)
        return book

    async def _await_deployment(self, deployment_id: str) -> None:
        """Wait (bounded) until Marathon finished a deployment, e.g. stopped a deleted app's tasks."""
        try:
            async with asyncio.timeout(DEPLOYMENT_WAIT_SECS):
                while True:
                    if all(d.get("id") != deployment_id for d in await self.client.deployments()):
                        return
                    await asyncio.sleep(FAST_SYNC_SECS)
        except (TimeoutError, SchedulerError) as error:
            log.warning("Marathon deployment %s is not finished yet: %s", deployment_id, error or "timed out")

    # -- helpers --

    def _next_change(self) -> int:
        self._change = next(self._changes)
        return self._change

    def _hurry(self) -> None:
        """Refresh at once and often until the instances just asked for appear."""
        self._fast_until = time.monotonic() + FAST_SYNC_WINDOW_SECS
        self._wake.set()

    def _notify(self, service_id: str) -> None:
        """Tell listeners from a fresh loop iteration, never from inside our own bookkeeping."""
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, service_id)


__all__ = ["MarathonScheduler"]
