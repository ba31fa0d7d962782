"""The Mesos scheduler: a framework on the v1 scheduler HTTP API that runs each instance as a Mesos task.

It keeps every service's requested count in memory (``ServiceBook``, shared with the local scheduler) and fills
it from offers: an offer that fits an instance's cpus, mem and ports is accepted with a LAUNCH of the command;
the rest are declined. Task status updates move instances between active, failed and killed; a task that ended by
itself is replaced after a backoff. After a reconnection the framework reconciles, so instances survive a lost
event stream. Reading a snapshot never does I/O: every change arrives on the event stream.

Closing leaves the framework registered: the master keeps its tasks for ``failover_timeout`` and a restarted router
subscribes again with the kept framework id and takes them on (``mesos_failover``), rebuilding each service from
its tasks' labels (``mesos_instances``), so a router restarted without shared state still knows its services.

When no offer can hold an instance for ``offer_wait_secs``, the service shows a deployment error naming the
missing resource (``ServiceState.error``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from waiter.scheduler.base import (
    KillOutcome,
    KillResult,
    Listener,
    SchedulerError,
    ServiceSpec,
    ServiceState,
)
from waiter.scheduler.book import Ending, check_spec, not_running, restart_delay, scale_book
from waiter.scheduler.mesos_client import ClientSettings, MesosClient
from waiter.scheduler.mesos_events import note_unacted
from waiter.scheduler.mesos_failover import Failover, FrameworkIdStore, Reconciliation
from waiter.scheduler.mesos_instances import Adopted, kill_grace, launch
from waiter.scheduler.mesos_proto import (
    MesosError,
    Need,
    Offer,
    Taken,
    TaskOutcome,
    TaskPhase,
    TaskStatus,
    offers_of,
    shortfall,
    status_from_json,
    take,
    task_outcome,
    usable_role,
)
from waiter.scheduler.mesos_tasks import MesosBook, MesosSettings, Task, ended_instance, id_value

log = logging.getLogger(__name__)


class MesosScheduler:
    """Runs instances as tasks of one Mesos framework; implements ``waiter.scheduler.base.Scheduler``."""

    kind = "mesos"

    def __init__(self, settings: MesosSettings, framework_ids: FrameworkIdStore | None = None) -> None:
        self.settings = settings
        self.client = MesosClient(
            ClientSettings(
                master=settings.master,
                framework_name=settings.framework_name,
                user=settings.user,
                role=settings.role,
                failover_timeout_secs=settings.failover_timeout_secs,
                request_timeout_secs=settings.request_timeout_secs,
                heartbeat_misses=settings.heartbeat_misses,
                reconnect_max_secs=settings.reconnect_max_secs,
            ),
            self,
        )
        self._books: dict[str, MesosBook] = {}
        self._tasks: dict[str, Task] = {}  # task id (= instance id) -> a task not yet ended
        self._listeners: list[Listener] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._suppressed = False
        self._offer_call: str | None = None  # the REVIVE or SUPPRESS to send next (see _tell_offers)
        self._declining: set[asyncio.Task[None]] = set()  # DECLINEs in flight (a REVIVE waits for them)
        self._offer_calls_sending = False
        self._closing = False
        self.reconciliation = Reconciliation(settings.reconcile_retry_secs, settings.reconcile_retry_max_secs)
        self.failover = Failover(framework_ids, settings, self._spawn)

    # -- the Scheduler protocol --

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        await self.failover.resume(self.client)
        await self.client.start()
        if self._tick_task is None:
            self._tick_task = asyncio.create_task(self._tick_loop(), name="mesos-scheduler-tick")

    async def close(self) -> None:
        """Stop, leaving the framework registered: the master keeps its tasks running for ``failover_timeout``, so
        a router restarted with the kept framework id takes them on again (no TEARDOWN, which would kill them)."""
        self._closing = True
        if self._tick_task is not None:
            self._tick_task.cancel()
            await asyncio.wait([self._tick_task])
            self._tick_task = None
        await self.client.close()
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)

    async def create_service(self, spec: ServiceSpec, instances: int) -> bool:
        check_spec(spec, instances)
        # The framework's tasks from before a restart may be this service's: take them on rather than launch more.
        await self.failover.wait(self.settings.request_timeout_secs)
        if spec.service_id in self._books:
            return False
        if self._closing:
            raise SchedulerError(f"Cannot create service {spec.service_id}: the scheduler is shutting down.")
        self._books[spec.service_id] = MesosBook(spec, instances, self.settings.max_ended_instances)
        self._notify(spec.service_id)
        self._want_offers()
        return True

    async def scale_service(self, service_id: str, instances: int) -> None:
        scale_book(self._books, service_id, instances, "Mesos")
        self._notify(service_id)
        self._want_offers()

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
        task = self._tasks.get(instance_id)
        if book is None or task is None or task.service_id != service_id:
            return not_running(book, service_id, instance_id)
        if task.ending is not None:
            if force:
                await self._send_kill(task, 0.0)
            await self._wait_ended(task, 0.0 if force else task.grace_secs)
            return KillResult(KillOutcome.ALREADY_KILLED, f"Instance {instance_id} was already stopping.")
        if not replace:
            book.requested = max(0, book.requested - 1)
        self._begin_kill(book, task, Ending(message or "Killed by request", flags, failed))
        if replace:
            self._want_offers()
        grace = 0.0 if force else task.grace_secs
        try:
            await self._send_kill(task, grace)
        except MesosError as error:
            return KillResult(KillOutcome.FAILED, f"Could not kill instance {instance_id} (retrying): {error}")
        if not await self._wait_ended(task, grace):
            return KillResult(KillOutcome.KILLED, f"Asked Mesos to kill instance {instance_id}; it has not ended yet.")
        ended = book.find_ended(instance_id)
        code = "" if ended is None or ended.exit_code is None else f" (exit code {ended.exit_code})"
        return KillResult(KillOutcome.KILLED, f"Killed instance {instance_id}{code}.")

    async def delete_service(self, service_id: str) -> bool:
        book = self._books.get(service_id)
        if book is None or book.deleting:
            return False
        book.deleting = True
        tasks = [t for t in self._tasks.values() if t.service_id == service_id]
        for task in tasks:
            self._begin_kill(book, task, Ending("Killed because the service was deleted"))
        results = await asyncio.gather(*(self._send_kill(t, 0.0) for t in tasks), return_exceptions=True)
        killing = []
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException):
                # The tick keeps sending the kill; the service is forgotten now all the same.
                log.warning("Could not kill task %s of deleted service %s: %s", task.instance.id, service_id, result)
            else:
                killing.append(task)
        await asyncio.gather(*(self._wait_ended(t, 0.0) for t in killing))
        del self._books[service_id]
        self._notify(service_id)
        return True

    def service_ids(self) -> list[str]:
        return list(self._books)

    def service_record(self, service_id: str) -> str | None:
        """The router's record of a service, which its tasks carry in their labels (``KeepsRecords``)."""
        book = self._books.get(service_id)
        return book.spec.record or None if book is not None else None

    def service_state(self, service_id: str) -> ServiceState | None:
        book = self._books.get(service_id)
        return None if book is None else book.snapshot()

    # -- the event stream (EventHandler) --

    def handle_event(self, event: Mapping[str, Any]) -> None:
        """Every event of scheduler.proto is acted on here, or logged (``note_unacted`` says why nothing is done)."""
        kind = event["type"]
        if kind == "SUBSCRIBED":
            self._on_subscribed()
        elif kind == "OFFERS":
            self._on_offers(offers_of(event))
        elif kind == "UPDATE":
            self._on_update(status_from_json(event["update"]["status"]))
        elif kind == "INVERSE_OFFERS":
            self._on_inverse_offers(event.get("inverse_offers", {}).get("inverse_offers") or [])
        else:
            note_unacted(event)

    def handle_disconnect(self, reason: str) -> None:
        self._suppressed = False  # a new subscription starts unsuppressed
        self.failover.disconnected(self.client.framework_id)

    def _on_inverse_offers(self, inverse_offers: list[Mapping[str, Any]]) -> None:
        """Accept maintenance on an agent: instances are stateless and a killed one is replaced elsewhere.

        Accepting tells the operator the agent may go down; instances are not moved ahead of time (the master
        kills them when the maintenance starts, and the TASK_KILLED/LOST that follows starts a replacement).
        """
        ids = [str(id_value(offer.get("id"))) for offer in inverse_offers if id_value(offer.get("id"))]
        if ids:
            log.info(
                "Accepting inverse offers %s (maintenance of agents %s)",
                ids,
                sorted({str(id_value(offer.get("agent_id"))) for offer in inverse_offers}),
            )
            self._spawn("ACCEPT_INVERSE_OFFERS", self.client.accept_inverse_offers(ids))

    def _on_subscribed(self) -> None:
        self._suppressed = False
        framework_id = self.client.framework_id
        if self.failover.subscribed(framework_id):
            self._spawn("taking on the framework's tasks", self._recover(str(framework_id)))
        elif self.failover.held is None:
            self._reconcile()

    def _reconcile(self) -> None:
        """Ask about every known task, then about all of them (the master answers the latter with every task of the
        framework it knows); tasks not heard of are asked about again, with backoff, until answered."""
        known = {task_id: task.agent_id for task_id, task in self._tasks.items()}
        self.reconciliation.ask(known, time.monotonic())
        if known:
            self._spawn("explicit reconciliation", self.client.reconcile(list(known.items())))
        self._spawn("implicit reconciliation", self.client.reconcile())
        for task in self._tasks.values():
            if task.ending is not None:
                task.kill_sent_at = None  # the tick sends the kill again on this subscription
        if self._demands():
            self._want_offers()

    async def _recover(self, framework_id: str) -> None:
        """Take on the running tasks of the framework this router resumed, replay the updates held meanwhile, then
        reconcile: explicitly the tasks taken on, then implicitly."""
        for adopted in await self.failover.tasks_of(self.client, framework_id):
            if adopted.instance.id not in self._tasks:
                self._take_on(adopted)
        for status in self.failover.release():
            self._on_update(status)
        self._reconcile()

    def _take_on(self, adopted: Adopted) -> None:
        spec, instance = adopted.spec, adopted.instance
        book = self._books.get(spec.service_id)
        if book is None:
            book = self._books[spec.service_id] = MesosBook(spec, 0, self.settings.max_ended_instances)
        self._tasks[instance.id] = Task(
            spec.service_id, instance, adopted.agent_id, time.monotonic(), adopted.grace_secs, adopted.state
        )
        book.add(instance)
        book.requested = max(book.requested, len(book.active))  # what ran keeps running
        self._notify(spec.service_id)

    def _on_offers(self, offers: list[Offer]) -> None:
        demands = self._demands()
        left: list[Offer] = []
        for offer in offers:
            if not usable_role(offer, self.client.roles):
                # The master offers only our roles' resources; one that is not (our roles changed since) cannot
                # be launched on: the master would refuse the task.
                log.warning(
                    "Declining offer %s allocated to role %s, which this framework does not hold", offer.id, offer.role
                )
                self._decline(offer.id, self.settings.decline_refuse_secs)
                continue
            task_infos: list[dict[str, Any]] = []
            for book in demands:
                need = Need.of(book.spec)
                while book.missing() > 0 and need.fits(offer):
                    taken = take(offer, need)
                    task_infos.append(self._launch(book, offer, taken))
                    offer = taken.rest
            left.append(offer)
            if task_infos:
                self._spawn_accept(offer.id, task_infos)
            else:
                refuse = self.settings.waiting_refuse_secs if self._has_missing() else self.settings.decline_refuse_secs
                self._decline(offer.id, refuse)
        for book in demands:
            if book.missing() > 0:
                book.shortfall = shortfall(Need.of(book.spec), left)
        if not self._has_missing() and not self._suppressed:
            self._suppressed = True
            self._tell_offers("SUPPRESS")

    def _on_update(self, status: TaskStatus) -> None:
        if self.failover.hold(status):
            return  # its task may be one being taken on: the update waits until it is
        if status.uuid is not None:
            self._spawn(f"ACKNOWLEDGE of {status.task_id}", self.client.acknowledge(status))
        self.reconciliation.answered(status.task_id)
        outcome = task_outcome(status)
        task = self._tasks.get(status.task_id)
        if task is None:
            if outcome.phase is TaskPhase.ACTIVE:
                # E.g. TASK_RUNNING after TASK_LOST (its agent came back): the instance was recorded as failed and
                # replaced, so the task is surplus.
                log.warning("Killing task %s, which this framework does not know (or already ended)", status.task_id)
                self._spawn(f"KILL of {status.task_id}", self.client.kill(status.task_id, status.agent_id, 0.0))
            return
        if outcome.phase is TaskPhase.ACTIVE:
            if status.state != task.state:
                task.state = status.state
                self._update_instance(task, {**task.instance.extras, "mesos/task-state": status.state})
            return
        self._end(task, outcome)

    # -- launching --

    def _demands(self) -> list[MesosBook]:
        """Services that miss instances and may launch now (not deleting, not backing off after a crash, and not
        before the tasks of a resumed framework were taken on)."""
        if not self.failover.recovered.is_set():
            return []
        now = time.monotonic()
        return [b for b in self._books.values() if b.missing() > 0 and not b.deleting and b.not_before <= now]

    def _has_missing(self) -> bool:
        return any(b.missing() > 0 and not b.deleting for b in self._books.values())

    def _launch(self, book: MesosBook, offer: Offer, taken: Taken) -> dict[str, Any]:
        """Record a new instance (active from now on) and return the TaskInfo that launches it."""
        instance, info = launch(book.spec, offer, taken, self.settings, self.client.framework_id or "")
        grace = kill_grace(book.spec, self.settings)
        self._tasks[instance.id] = Task(book.spec.service_id, instance, offer.agent_id, time.monotonic(), grace)
        book.add(instance)
        book.error = book.shortfall = None
        book.waiting_since = time.monotonic() if book.missing() > 0 else None
        ports = (instance.port, *instance.extra_ports)
        log.info("Launching instance %s on %s (ports %s)", instance.id, offer.hostname, ports)
        self._notify(book.spec.service_id)
        return info

    def _spawn_accept(self, offer_id: str, task_infos: list[dict[str, Any]]) -> None:
        async def accept() -> None:
            try:
                await self.client.accept([offer_id], task_infos, refuse_seconds=0.0)
            except MesosError as error:
                log.warning("ACCEPT of offer %s failed: %s", offer_id, error)
                for info in task_infos:
                    task = self._tasks.get(info["task_id"]["value"])
                    if task is not None and task.state == "TASK_STAGING":
                        self._end(task, TaskOutcome(TaskPhase.FAILED, f"Could not launch the task on Mesos: {error}"))

        self._spawn(f"ACCEPT of offer {offer_id}", accept())

    def _decline(self, offer_id: str, refuse_secs: float) -> None:
        task = self._start("DECLINE", self.client.decline([offer_id], refuse_secs))
        if task is not None:
            self._declining.add(task)
            task.add_done_callback(self._declining.discard)

    def _want_offers(self) -> None:
        """Clear our offer filters and unsuppress, so offers for new instances arrive at once."""
        if not self.client.connected.is_set():
            return
        self._suppressed = False
        self._tell_offers("REVIVE")

    def _tell_offers(self, call: str) -> None:
        """Send REVIVE or SUPPRESS after the one in flight, if any, so the one decided last reaches the master last:
        two sent at once may arrive in either order, and a REVIVE skipped while another was in flight left the
        framework suppressed by a SUPPRESS sent meanwhile (a kill with replace right after a launch then never got
        its replacement). Calls decided while one is in flight collapse into the latest."""
        self._offer_call = call
        if self._offer_calls_sending:
            return
        self._offer_calls_sending = True

        async def send() -> None:
            try:
                while (next_call := self._offer_call) is not None:
                    self._offer_call = None
                    declining = list(self._declining)
                    if next_call == "REVIVE" and declining:
                        # A DECLINE the master handles after the REVIVE would filter that agent's offers for its
                        # refuse time again (REVIVE clears only the filters set before it).
                        await asyncio.wait(declining)
                    try:
                        await (self.client.revive() if next_call == "REVIVE" else self.client.suppress())
                    except MesosError as error:
                        log.warning("%s failed: %s", next_call, error)
            finally:
                self._offer_calls_sending = False

        self._spawn("REVIVE/SUPPRESS", send())

    # -- ending and killing --

    def _end(self, task: Task, outcome: TaskOutcome) -> None:
        self._tasks.pop(task.instance.id, None)
        ended = ended_instance(task, outcome)
        task.instance = ended
        task.done.set()
        book = self._books.get(task.service_id)
        if book is None:
            return
        book.end(ended)
        log.info("Instance %s ended: %s", ended.id, ended.message)
        if task.ending is None:
            crashes = book.note_crash(time.monotonic() - task.started)
            delay = restart_delay(crashes, self.settings.restart_backoff_base_secs, book.spec.restart_backoff_factor)
            book.not_before = time.monotonic() + delay
            book.revive_at_backoff_end = True
        self._notify(task.service_id)

    def _begin_kill(self, book: MesosBook, task: Task, ending: Ending) -> None:
        task.ending = ending
        book.stopping.add(task.instance.id)
        self._notify(task.service_id)

    async def _send_kill(self, task: Task, grace: float) -> None:
        task.kill_sent_at = time.monotonic()
        await self.client.kill(task.instance.id, task.agent_id, grace)

    async def _wait_ended(self, task: Task, grace: float) -> bool:
        try:
            async with asyncio.timeout(grace + self.settings.kill_wait_secs):
                await task.done.wait()
        except TimeoutError:
            return False
        return True

    # -- the periodic checks --

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_secs)
            self._tick(time.monotonic())

    def _tick(self, now: float) -> None:
        superseded = self.client.superseded
        for book in self._books.values():
            if superseded is None:
                self._check_waiting(book, now)
            elif book.error != superseded:
                book.error = superseded  # instances can no longer be placed nor watched by this router
                self._notify(book.spec.service_id)
        again = self.reconciliation.due(now, self._tasks) if self.client.connected.is_set() else None
        if again:
            log.info("No answer yet about tasks %s: asking the master again", sorted(again))
            self._spawn("explicit reconciliation", self.client.reconcile(list(again.items())))
        for task in self._tasks.values():
            retry_after = task.grace_secs + self.settings.request_timeout_secs
            if task.ending is not None and (task.kill_sent_at is None or now - task.kill_sent_at > retry_after):
                self._spawn(f"KILL of {task.instance.id}", self._send_kill(task, task.grace_secs))

    def _check_waiting(self, book: MesosBook, now: float) -> None:
        error_before = book.error
        if book.check_waiting(now, self.settings.offer_wait_secs):
            self._want_offers()  # a crash backoff ended
        if book.error != error_before:
            if book.error is not None:
                log.warning("Service %s cannot be placed: %s", book.spec.service_id, book.error)
            self._notify(book.spec.service_id)

    # -- helpers --

    def _update_instance(self, task: Task, extras: Mapping[str, object]) -> None:
        task.instance = dataclasses.replace(task.instance, extras=extras)
        book = self._books.get(task.service_id)
        if book is not None and task.instance.id in book.active:
            book.active[task.instance.id] = task.instance
            self._notify(task.service_id)

    def _spawn(self, what: str, call: Coroutine[Any, Any, Any]) -> None:
        self._start(what, call)

    def _start(self, what: str, call: Coroutine[Any, Any, Any]) -> asyncio.Task[None] | None:
        """Run a call in the background (its failure logged); None once closing (the call is dropped)."""
        async def run() -> None:
            try:
                await call
            except MesosError as error:
                log.warning("%s failed: %s", what, error)

        if self._closing:
            call.close()
            return None
        task = asyncio.create_task(run(), name=f"mesos {what}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _notify(self, service_id: str) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, service_id)


__all__ = ["MesosBook", "MesosScheduler", "MesosSettings", "ended_instance"]
