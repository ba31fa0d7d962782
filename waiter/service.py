"""One service as this router runs it: its description, slots and queue, instances, counters, and starting it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from waiter.aio import stop
from waiter.description import ServiceDescription
from waiter.diagnosis import explain
from waiter.errors import WaiterError, router_draining
from waiter.histogram import Buckets
from waiter.instances import InstanceTracker
from waiter.lifecycle import deployment_error
from waiter.reservation import QueueFull, Reservations
from waiter.scheduler.base import Instance, Scheduler, SchedulerError, ServiceSpec
from waiter.settings import HealthConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResolvedService:
    """What a request resolved to: the service id, its descriptions and where they came from."""

    service_id: str
    core: Mapping[str, Any]  # the parameters that make the id
    effective: Mapping[str, Any]  # core + defaults, what runs
    token_meta: Mapping[str, Any]  # token user metadata with defaults (timeouts, maintenance, fallback)
    source_tokens: tuple[tuple[str, str], ...] = ()  # (token, version)
    on_the_fly: bool = False
    description: ServiceDescription = field(init=False, compare=False, repr=False)  # effective + meta, typed

    def __post_init__(self) -> None:
        object.__setattr__(self, "description", ServiceDescription.of(self.effective, self.token_meta))


@dataclass(frozen=True, slots=True)
class Timeouts:
    queue_ms: int
    socket_ms: int
    streaming_ms: int


def token_timeouts(description: ServiceDescription) -> Timeouts:
    return Timeouts(description.queue_timeout_ms, description.socket_timeout_ms, description.streaming_timeout_ms)


def spec_from(resolved: ResolvedService) -> ServiceSpec:
    d = resolved.description
    return ServiceSpec(
        service_id=resolved.service_id,
        cmd=d.cmd,
        cpus=d.cpus,
        mem=d.mem,
        ports=d.ports,
        env=d.env,
        run_as_user=d.run_as_user,
        version=d.version,
        concurrency_level=d.concurrency_level,
        health_check_url=d.health_check_url,
        health_check_port_index=d.health_check_port_index,
        health_check_interval_secs=d.health_check_interval_secs,
        health_check_max_consecutive_failures=d.health_check_max_consecutive_failures,
        grace_period_secs=d.grace_period_secs,
        termination_grace_period_secs=d.termination_grace_period_secs,
        restart_backoff_factor=d.restart_backoff_factor,
        token=",".join(t for t, _ in resolved.source_tokens),
        record=json.dumps(service_record(resolved), sort_keys=True, separators=(",", ":")),
        image=d.image,
    )


def _secs(ms: int) -> str:
    secs = ms / 1000
    return str(int(secs)) if secs == int(secs) else f"{secs:g}"


SlotsPolicy = Callable[["Service"], int]
DemandHook = Callable[["Service"], None]


def all_slots(service: Service) -> int:
    return service.reservations.concurrency_level


class Service:
    """One service on this router. Starting instances beyond the first ones is the autoscaler's job."""

    def __init__(
        self,
        resolved: ResolvedService,
        scheduler: Scheduler,
        session: aiohttp.ClientSession,
        health: HealthConfig,
        *,
        slots_policy: SlotsPolicy = all_slots,
        on_demand: DemandHook | None = None,
    ) -> None:
        self.resolved = resolved
        self.base = resolved  # as resolved, before the overrides set through the API
        self.override: dict[str, Any] | None = None  # {"overrides": {...}, "last-updated-by", "time"}
        self.suspension: dict[str, Any] | None = None  # {"suspended": true, "last-updated-by", "time"}
        self.id = resolved.service_id
        self.spec = spec_from(resolved)
        self.timeouts = token_timeouts(resolved.description)
        self.scheduler = scheduler
        d = resolved.description
        self.min_instances = d.min_instances
        self.max_instances = d.max_instances
        # Browsers are shown the starting page (waiter.interstitial) only for token services that ask for it.
        self.interstitial_secs = (
            int(resolved.effective.get("interstitial-secs") or 0)
            if resolved.source_tokens and not resolved.on_the_fly
            else 0
        )
        self.reservations = Reservations(
            concurrency_level=d.concurrency_level,
            load_balancing=d.load_balancing,
            max_queue_length=d.max_queue_length,
        )
        self._slots_policy = slots_policy
        self._on_demand = on_demand
        self.tracker = InstanceTracker(
            self.spec,
            scheduler,
            session,
            startup_interval=health.startup_interval_ms / 1000,
            probe_timeout=health.timeout_ms / 1000,
            on_routable=self._routable,
            on_unroutable=self._unroutable,
        )
        self.registered_at = time.time()
        self.last_request_time: float | None = None
        self.total_requests = 0
        # Proxied requests answered, and the seconds they held their slots: the autoscaler's service time.
        self.completed = 0
        self.served_secs = 0.0
        # For /metrics: waits of requests that queued (the others waited 0), waits for a first healthy instance,
        # backend times, and responses by status class (index status // 100).
        self.queue_waits = Buckets()
        self.cold_starts = Buckets()
        self.backend_times = Buckets()
        self.responses = [0] * 6
        self.start_error: str | None = None  # the scheduler refused to create the service
        self.deployment_error: str | None = None  # why its instances cannot start (docs/api.md §6)
        self.broken_since: float | None = None
        self.last_healthy_at = self.registered_at  # failures before this do not count towards an error
        self.stranded: str | None = None  # why no instance can start any more (see strand)
        self._started: asyncio.Task[None] | None = None

    # -- what the API changes ----------------------------------------------------------------------------------

    def set_resolved(self, resolved: ResolvedService) -> None:
        """The same service reached through a newer token version: keep its overrides."""
        self.base = resolved
        self._apply_override()

    def set_override(self, record: dict[str, Any] | None) -> None:
        if record != self.override:
            self.override = record
            self._apply_override()

    def _apply_override(self) -> None:
        # Overrides change how the service scales and is reaped, never what runs: the spec and id stay.
        overrides = self.override["overrides"] if self.override else {}
        base = self.base
        self.resolved = replace(base, effective={**base.effective, **overrides}) if overrides else base
        self.min_instances = self.resolved.description.min_instances
        self.max_instances = self.resolved.description.max_instances

    @property
    def suspended(self) -> bool:
        return bool(self.suspension and self.suspension.get("suspended"))

    # -- lifecycle -------------------------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Create the service on the scheduler (once) and follow its instances."""
        if self._started is None:
            self._started = asyncio.create_task(self._create(), name=f"create {self.id}")

    def follow(self) -> None:
        """Follow the instances of a service another router started."""
        self.tracker.sync()

    async def _create(self) -> None:
        try:
            await self.scheduler.create_service(self.spec, self.min_instances)
            self.start_error = None
        except SchedulerError as exc:
            self.start_error = str(exc)
            log.error("could not create service %s: %s", self.id, exc)
            self._set_error(self.start_error)
            self._started = None  # the next request tries again
            return
        except Exception:
            # A bug, not a scheduler's answer: waiting requests fail now instead of at their queue timeout.
            log.exception("could not create service %s", self.id)
            self.start_error = "The router failed to create the service; its log has the details."
            self._set_error(self.start_error)
            self._started = None
            return
        self.on_scheduler_change()

    def on_scheduler_change(self) -> None:
        self.tracker.sync()
        if self.tracker.healthy_count() > 0:
            return
        state = self.scheduler.service_state(self.id)
        if state is None:
            return
        error = state.error or deployment_error(state.failed, self.last_healthy_at)
        if error is not None and state.error is None:
            detail = explain(state.failed, self.spec)
            error = f"{error}\n{detail}" if detail else error
        if error is not None and error != self.deployment_error:
            log.warning("service %s cannot start: %s", self.id, error)
            self._set_error(error)

    def _set_error(self, error: str) -> None:
        self.deployment_error = error
        if self.broken_since is None:
            self.broken_since = time.time()
        self.reservations.fail_waiters(self._deployment_failure())

    def _routable(self, instance: Instance) -> None:
        self.last_healthy_at = time.time()
        self.deployment_error = self.broken_since = self.start_error = None
        self.reservations.add(instance, self._slots_policy(self))

    def _unroutable(self, instance_id: str) -> None:
        self.reservations.remove(instance_id)
        if self.stranded is not None and self.reservations.capacity == 0:
            self.reservations.fail_waiters(self._stranded_failure())

    def strand(self, reason: str) -> None:
        """No instance can start any more (``reason``: the scheduler is gone) and the router stops: a request
        waiting while no instance is routable is answered now, not at the drain timeout. Instances still routable
        serve on until they are not."""
        self.stranded = reason
        if self.reservations.capacity == 0:
            self.reservations.fail_waiters(self._stranded_failure())

    async def close(self) -> None:
        self.reservations.fail_waiters(
            WaiterError(503, "The service was stopped while this request waited for an instance.", service_id=self.id)
        )
        await stop([self._started])
        await self.tracker.close()

    # -- requests --------------------------------------------------------------------------------------------

    async def acquire(self, queue_timeout_ms: int) -> Instance:
        """A slot on a healthy instance, waiting in the FIFO queue for at most ``queue_timeout_ms``."""
        instance = self.take()
        return instance if instance is not None else await self.wait(queue_timeout_ms)

    def take(self) -> Instance | None:
        """``acquire`` without waiting: a free slot now, or None (then ``wait`` for one). Counts the request."""
        self.total_requests += 1
        self.last_request_time = time.time()
        return self.reservations.try_acquire()

    async def wait(self, queue_timeout_ms: int) -> Instance:
        """The rest of ``acquire`` once ``take`` found no free slot: queue for one."""
        if self.start_error is not None and self._started is None:
            self.ensure_started()
        if self.deployment_error is not None and self.reservations.capacity == 0:
            raise self._deployment_failure()
        if self.stranded is not None and self.reservations.capacity == 0:
            raise self._stranded_failure()
        queued_at = time.monotonic()
        cold = self.reservations.capacity == 0
        try:
            fut = self.reservations.enqueue(time.time())  # wall clock: routers compare their waiters' ages
        except QueueFull:
            raise WaiterError(
                503,
                "Max queue length exceeded",
                error_class="waiter.QueueLength",
                service_id=self.id,
                details={
                    "current-queue-length": self.reservations.queued,
                    "max-queue-length": self.reservations.max_queue_length,
                },
            ) from None
        if self._on_demand is not None:
            self._on_demand(self)
        try:
            done, _ = await asyncio.wait((fut,), timeout=queue_timeout_ms / 1000)
        except BaseException:
            self.reservations.abandon(fut)
            raise
        finally:
            waited = time.monotonic() - queued_at
            self.queue_waits.observe(waited)
        if cold and done and not fut.cancelled() and fut.exception() is None:
            self.cold_starts.observe(waited)
        if not done:
            self.reservations.abandon(fut)
            err = self._queue_timeout(queue_timeout_ms)
            err.for_service = True
            raise err
        try:
            return fut.result()
        except WaiterError as failed:
            failed.for_service = True
            raise

    def release(self, instance_id: str) -> None:
        self.reservations.release(instance_id)
        self.last_request_time = time.time()

    def done(self, instance_id: str, taken: float, status: int) -> float:
        """A proxied request is over: its slot, taken at ``taken`` (``time.monotonic()``), is free again.

        ``status`` is the backend's (0 when it gave none). Returns the seconds the slot was held."""
        self.release(instance_id)
        held = time.monotonic() - taken
        self.completed += 1
        self.served_secs += held
        self.backend_times.observe(held)
        self.responses[min(status // 100, 5)] += 1
        return held

    def expire(self, instance_id: str) -> bool:
        self.reservations.set_expired(instance_id)
        return self.tracker.expire(instance_id)

    def eject(self, instance_id: str) -> None:
        self.tracker.eject(instance_id)

    def _queue_timeout(self, queue_timeout_ms: int) -> WaiterError:
        message = f"After {_secs(queue_timeout_ms)} seconds, no instance available to handle request."
        if self.tracker.healthy_count() > 0:
            message += " Check that your service is able to scale properly!"
        else:
            message += " Check that your service is able to start properly!"
        return WaiterError(503, message, error_class="waiter.RequestTimeout", service_id=self.id)

    def _deployment_failure(self) -> WaiterError:
        err = WaiterError(
            503,
            f"Deployment error: {self.deployment_error}",
            error_class="waiter.DeploymentError",
            service_id=self.id,
        )
        err.for_service = True
        return err

    def _stranded_failure(self) -> WaiterError:
        err = router_draining(
            f"The router is stopping and {self.stranded}: no instance of this service is left and none can start "
            "here. Send the request again.",
            self.id,
        )
        err.for_service = True
        return err


def service_record(resolved: ResolvedService) -> dict[str, Any]:
    return {
        "service-id": resolved.service_id,
        "core": dict(resolved.core),
        "effective": dict(resolved.effective),
        "token-meta": dict(resolved.token_meta),
        "source-tokens": [list(t) for t in resolved.source_tokens],
        "on-the-fly": resolved.on_the_fly,
    }


def resolved_from_record(record: Mapping[str, Any]) -> ResolvedService:
    return ResolvedService(
        service_id=str(record["service-id"]),
        core=dict(record["core"]),
        effective=dict(record["effective"]),
        token_meta=dict(record.get("token-meta", {})),
        source_tokens=tuple((str(t), str(v)) for t, v in record.get("source-tokens", [])),
        on_the_fly=bool(record.get("on-the-fly", False)),
    )
