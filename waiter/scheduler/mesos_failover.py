"""Framework failover: a restarted Mesos router subscribes again as the same framework and takes its tasks on.

The master keeps a disconnected framework's tasks running for its ``failover_timeout``. A router keeps its framework
id (``FrameworkIdStore``: the shared state when the router has one, else a file in its work dir, chosen by the
composition root), subscribes with it after a restart, lists the framework's tasks (the operator API's GET_TASKS)
and rebuilds its instances and services from their labels (``mesos_instances.adopt``). Until that is done nothing
launches and status updates wait, so no running task is mistaken for a surplus one and killed. A framework the
master removed meanwhile (its timeout expired: its tasks are dead) answers ERROR "Framework has been removed"; the
client then forgets the id and subscribes as a new framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Container, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

from waiter.scheduler.mesos_client import MesosClient
from waiter.scheduler.mesos_instances import Adopted, adopt
from waiter.scheduler.mesos_proto import MesosError, TaskStatus
from waiter.scheduler.mesos_tasks import MesosSettings

log = logging.getLogger(__name__)
LIST_ATTEMPTS = 3  # GET_TASKS is tried this often before a restarted router gives up taking its tasks on

Spawn = Callable[[str, Coroutine[Any, Any, Any]], None]


class FrameworkIdStore(Protocol):
    """Keeps one framework id; every call may raise (its storage unreachable): callers log and carry on."""

    where: str  # for log lines: where the id is kept

    async def load(self) -> str | None: ...

    async def save(self, framework_id: str | None) -> None:
        """Keep ``framework_id``; None forgets it (the master removed the framework)."""


class FileFrameworkIds:
    """The id in one small file, replaced atomically so a crash mid-write never leaves half an id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"file {path}"

    async def load(self) -> str | None:
        return await asyncio.to_thread(self._read)

    async def save(self, framework_id: str | None) -> None:
        await asyncio.to_thread(self._write, framework_id)

    def _read(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _write(self, framework_id: str | None) -> None:
        if framework_id is None:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(framework_id + "\n")
        temporary.replace(self.path)


class Reconciliation:
    """Explicit reconciliation asked again, with backoff, until every known task was heard of: after a master
    failover, tasks on agents that have not re-registered yet get no answer at all (the
    Mesos scheduler API's reconciliation guide)."""

    def __init__(self, retry_secs: float, retry_max_secs: float) -> None:
        self.retry_secs = retry_secs
        self.retry_max_secs = retry_max_secs
        self.unanswered: dict[str, str] = {}  # task id -> agent id: asked about since subscribing, no answer yet
        self._delay = retry_secs
        self._at = 0.0  # monotonic

    def ask(self, tasks: Mapping[str, str], now: float) -> None:
        self.unanswered = dict(tasks)
        self._delay = self.retry_secs
        self._at = now + self._delay

    def answered(self, task_id: str) -> None:
        self.unanswered.pop(task_id, None)

    def due(self, now: float, known: Container[str]) -> dict[str, str] | None:
        """The tasks (still ``known``) to ask about again now, if it is time."""
        if not self.unanswered or now < self._at:
            return None
        self.unanswered = {task: agent for task, agent in self.unanswered.items() if task in known}
        self._delay = min(self._delay * 2, self.retry_max_secs)
        self._at = now + self._delay
        return self.unanswered or None


class Failover:
    """One scheduler's side of framework failover: the kept id, whether the resumed framework's tasks were taken
    on yet, and the status updates held until they are."""

    def __init__(self, store: FrameworkIdStore | None, settings: MesosSettings, spawn: Spawn) -> None:
        self.store = store  # None: the id is not kept across restarts
        self.settings = settings
        self._spawn = spawn
        self.kept_id: str | None = None  # what the store holds
        self.resumed_id: str | None = None  # the id this run subscribed with first (a restart's)
        self.recovered = asyncio.Event()  # set once the resumed framework's tasks were taken on (at once if none)
        self.held: list[TaskStatus] | None = None  # updates that arrived while taking tasks on

    async def resume(self, client: MesosClient) -> None:
        """Before the first SUBSCRIBE: the kept id (unless one was given already) is the one to subscribe with."""
        if self.store is not None and client.framework_id is None:
            self.kept_id = client.framework_id = await self._load(self.store)
        self.resumed_id = client.framework_id
        if self.resumed_id is None:
            self.recovered.set()

    async def wait(self, timeout: float) -> None:
        """Until the resumed framework's tasks were taken on, at most ``timeout`` seconds."""
        if not self.recovered.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.recovered.wait()

    def subscribed(self, framework_id: str | None) -> bool:
        """A subscription began; True iff it is the resumed framework's first, whose tasks are to be taken on now."""
        if framework_id != self.kept_id:
            self.keep(framework_id)
        if self.held is not None:
            return False  # already taking them on (the stream dropped meanwhile)
        if not self.recovered.is_set() and framework_id == self.resumed_id:
            self.held = []
            return True
        self.recovered.set()  # the resumed framework was removed: nothing of it is left to take on
        return False

    def hold(self, status: TaskStatus) -> bool:
        """Keep an update for later while tasks are being taken on (it may be one of theirs)."""
        if self.held is None:
            return False
        self.held.append(status)
        return True

    async def tasks_of(self, client: MesosClient, framework_id: str) -> list[Adopted]:
        """The running tasks of our framework, rebuilt from their labels; those that cannot be are logged."""
        listed: list[Any] = []
        for attempt in range(1, LIST_ATTEMPTS + 1):
            try:
                listed = await client.get_tasks()
                break
            except MesosError as error:
                log.warning("Cannot list the tasks of Mesos framework %s (try %d): %s", framework_id, attempt, error)
                if attempt < LIST_ATTEMPTS:
                    await asyncio.sleep(self.settings.reconcile_retry_secs)
        adopted = []
        for task in listed:
            try:
                taken = adopt(task, framework_id, self.settings)
            except ValueError as error:
                log.warning("%s", error)
                continue
            if taken is not None:
                adopted.append(taken)
        log.info("Taking on %d running tasks of Mesos framework %s", len(adopted), framework_id)
        return adopted

    def release(self) -> list[TaskStatus]:
        """The tasks were taken on: launching may go on, and here are the updates held meanwhile."""
        held, self.held = self.held or [], None
        self.recovered.set()
        return held

    def disconnected(self, framework_id: str | None) -> None:
        if framework_id is None and self.kept_id is not None:
            self.keep(None)  # the master removed the framework: its id is of no use any more

    def keep(self, framework_id: str | None) -> None:
        store = self.store
        if store is None:
            return

        async def save() -> None:
            try:
                await store.save(framework_id)
            except Exception as error:  # a file or Redis, whatever fails there: the router runs on without it
                log.warning("Cannot keep the Mesos framework id in %s: %s", store.where, error)
                return
            self.kept_id = framework_id

        self._spawn("keeping the framework id", save())

    @staticmethod
    async def _load(store: FrameworkIdStore) -> str | None:
        try:
            framework_id = await store.load()
        except Exception as error:  # a file or Redis, whatever fails there: the router subscribes anew
            log.warning("Cannot read the Mesos framework id from %s (subscribing anew): %s", store.where, error)
            return None
        if framework_id is not None:
            log.info("Subscribing again as Mesos framework %s (kept in %s)", framework_id, store.where)
        return framework_id


__all__ = ["Failover", "FileFrameworkIds", "FrameworkIdStore", "Reconciliation"]
