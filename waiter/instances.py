"""This router's view of one service's instances: which run, which are healthy, and the probes that decide it.

The scheduler's snapshot says which instances run; the router probes each one itself: every
``startup_interval`` while it has never been healthy (so a cold start costs little more than the backend's own
start-up), then every ``health-check-interval-secs``. An instance that never passes within ``grace-period-secs``,
or fails ``health-check-max-consecutive-failures`` checks in a row, is killed with ``replace`` so the scheduler
starts another. Healthy instances are handed to the service's ``Reservations``. Each instance's probes run on
``waiter.periodic``: one probe a step, the pace chosen after each from what it found.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from waiter.aio import raise_if_cancelling, stop
from waiter.health import ProbeResult, probe
from waiter.periodic import Periodic
from waiter.scheduler.base import Instance, InstanceFlag, Scheduler, ServiceSpec

log = logging.getLogger(__name__)

DENSE_PROBE_SECS = 0.01
DENSE_PROBE_WINDOW_SECS = 2.0


@dataclass(slots=True)
class TrackedInstance:
    instance: Instance
    healthy: bool = False
    ever_healthy: bool = False
    failures: int = 0
    last_status: int | None = None
    expired: bool = False
    retired: bool = False
    task: asyncio.Task[None] | None = None


class InstanceTracker:
    def __init__(
        self,
        spec: ServiceSpec,
        scheduler: Scheduler,
        session: aiohttp.ClientSession,
        *,
        startup_interval: float,
        probe_timeout: float,
        on_routable: Callable[[Instance], None],
        on_unroutable: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.scheduler = scheduler
        self.session = session
        self.startup_interval = startup_interval
        self.probe_timeout = probe_timeout
        self._on_routable = on_routable
        self._on_unroutable = on_unroutable
        self.tracked: dict[str, TrackedInstance] = {}
        self._closed = False
        self._kills: set[asyncio.Task[None]] = set()
        self._became_healthy = asyncio.Event()

    def sync(self) -> None:
        """Align the tracked set with the scheduler's snapshot (called on every scheduler change)."""
        if self._closed:
            return
        state = self.scheduler.service_state(self.spec.service_id)
        active = {i.id: i for i in state.active} if state else {}
        for iid, tracked in list(self.tracked.items()):
            if iid not in active:
                self._forget(iid, tracked)
        for iid, instance in active.items():
            if iid not in self.tracked:
                tracked = TrackedInstance(instance)
                self.tracked[iid] = tracked
                self._start_probes(tracked)

    async def wait_healthy(self, timeout: float) -> bool:
        """Wait until some instance is healthy; False if none became healthy within ``timeout`` seconds."""
        if self.healthy_count() > 0:
            return True
        self._became_healthy.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._became_healthy.wait()
        except TimeoutError:
            return False
        return True

    def healthy_count(self) -> int:
        return sum(1 for t in self.tracked.values() if t.healthy)

    def any_healthy(self) -> bool:
        """healthy_count() > 0 without counting them all (the request path asks)."""
        for tracked in self.tracked.values():  # noqa: SIM110 (a loop, not any(): see waiter.resolver.names_token)
            if tracked.healthy:
                return True
        return False

    def eject(self, instance_id: str) -> None:
        """A request could not connect: stop routing to it and probe it quickly until it answers again."""
        tracked = self.tracked.get(instance_id)
        if tracked is not None and tracked.healthy and not tracked.retired:
            tracked.healthy = False
            self._on_unroutable(instance_id)
            if tracked.task is not None:
                tracked.task.cancel()
            self._start_probes(tracked)

    def retire(self, instance_id: str) -> None:
        """The instance is being killed on purpose: out of rotation for good, no more probes."""
        tracked = self.tracked.get(instance_id)
        if tracked is None:
            return
        tracked.healthy = False
        tracked.retired = True
        if tracked.task is not None:
            tracked.task.cancel()
            tracked.task = None
        self._on_unroutable(instance_id)

    def reinstate(self, instance_id: str) -> None:
        """Undo ``retire`` (a scale-down that did not happen): probe it again and route to it once healthy."""
        tracked = self.tracked.get(instance_id)
        if tracked is None or not tracked.retired or self._closed:
            return
        tracked.retired = False
        self._start_probes(tracked)

    def expire(self, instance_id: str) -> bool:
        """Flag an instance as expired (it is replaced, then killed). False if this router does not know it."""
        tracked = self.tracked.get(instance_id)
        if tracked is None:
            return False
        tracked.expired = True
        return True

    async def close(self) -> None:
        self._closed = True
        await stop([t.task for t in self.tracked.values()])
        await asyncio.gather(*self._kills, return_exceptions=True)
        self.tracked.clear()

    # -- internals -------------------------------------------------------------------------------------------

    def _forget(self, iid: str, tracked: TrackedInstance) -> None:
        del self.tracked[iid]
        if tracked.task is not None:
            tracked.task.cancel()
        self._on_unroutable(iid)

    async def _probe_once(self, instance: Instance) -> ProbeResult:
        spec = self.spec
        port = instance.port
        if spec.health_check_port_index > 0:
            extra = instance.extra_ports
            index = spec.health_check_port_index - 1
            port = extra[index] if index < len(extra) else port
        return await probe(
            self.session, instance.host, port, spec.health_check_url, self.probe_timeout, instance_id=instance.id
        )

    def _start_probes(self, tracked: TrackedInstance) -> None:
        iid = tracked.instance.id
        probes = Periodic(
            f"health checks of {iid}",
            lambda: self._probe(tracked, probes),
            lambda: self._next_probe_secs(tracked),
            at_once=True,
        )
        tracked.task = asyncio.create_task(probes.run(), name=f"health {iid}")

    def _next_probe_secs(self, tracked: TrackedInstance) -> float:
        if tracked.healthy:
            return self.spec.health_check_interval_secs
        if not tracked.ever_healthy and time.time() - tracked.instance.started_at < DENSE_PROBE_WINDOW_SECS:
            # Most backends start within a second or two: probe densely then, so the router notices a
            # started backend within ~10 ms instead of up to a whole startup interval later.
            return min(DENSE_PROBE_SECS, self.startup_interval)
        return self.startup_interval

    async def _probe(self, tracked: TrackedInstance, probes: Periodic) -> None:
        """One probe and what follows from it; an instance to be replaced ends its probes."""
        spec = self.spec
        instance = tracked.instance
        result = await self._probe_once(instance)
        raise_if_cancelling()
        tracked.last_status = result.status
        if result.healthy:
            tracked.failures = 0
            if not tracked.healthy:
                tracked.healthy = tracked.ever_healthy = True
                self._on_routable(instance)
                self._became_healthy.set()
            return
        if not tracked.ever_healthy:
            age = time.time() - instance.started_at
            if spec.grace_period_secs > 0 and age > spec.grace_period_secs:
                probes.stop()
                self._replace(
                    instance,
                    f"Exceeded grace period of {spec.grace_period_secs} seconds ({result.describe()})",
                    _flags(result) | {InstanceFlag.NEVER_PASSED_HEALTH_CHECKS},
                )
            return
        tracked.failures += 1
        if result.error == "connect" and tracked.healthy:
            # Nothing listens any more: stop sending requests there before the threshold is reached.
            tracked.healthy = False
            self._on_unroutable(instance.id)
        if tracked.failures >= spec.health_check_max_consecutive_failures:
            probes.stop()
            tracked.healthy = False
            tracked.expired = True  # listed as expired until the kill below lands
            self._on_unroutable(instance.id)
            self._replace(
                instance,
                f"Failed {tracked.failures} consecutive health checks ({result.describe()})",
                _flags(result) | {InstanceFlag.HEALTH_CHECKS_FAILED},
            )

    def _replace(self, instance: Instance, message: str, flags: set[str]) -> None:
        # The kill runs in its own task: the scheduler's change notification cancels this probe loop, and that
        # must not cancel the kill half-way.
        log.warning("replacing instance %s: %s", instance.id, message)
        task = asyncio.create_task(self._kill(instance, message, flags))
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def _kill(self, instance: Instance, message: str, flags: set[str]) -> None:
        try:
            await self.scheduler.kill_instance(
                self.spec.service_id,
                instance.id,
                replace=True,
                failed=True,
                message=message,
                flags=frozenset(flags),
            )
        except Exception:
            log.exception("could not replace instance %s", instance.id)


def _flags(result: ProbeResult) -> set[str]:
    flags: set[str] = set()
    if result.connected:
        flags.add(InstanceFlag.HAS_CONNECTED)
    if result.responded:
        flags.add(InstanceFlag.HAS_RESPONDED)
    if result.error == "timeout":
        flags.add(InstanceFlag.HEALTH_CHECK_TIMED_OUT)
    if result.error == "connect":
        flags.add(InstanceFlag.CANNOT_CONNECT)
    return flags
