"""The contract every scheduler back-end implements, and the typed values it returns.

A scheduler runs instances of services somewhere (this machine, Marathon, Mesos). The router asks it to create,
scale, kill and delete; it answers with snapshots of each service's instances. Snapshots are kept in memory by the
back-end (refreshed by its own sync loop or event stream), so reading them never blocks the request path; a back-end
calls its listeners with a service id whenever that service's instances changed, so the router reacts at once
instead of polling.

Health is judged by the router (``waiter.instances``), not by the scheduler: the scheduler only reports whether an
instance's process is running and, when it ended, how (exit code, message, flags).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from waiter.params import SERVICE_PARAMS


class InstanceFlag(enum.StrEnum):
    """Why an instance failed, in Waiter's words (they feed deployment-error detection)."""

    MEMORY_LIMIT_EXCEEDED = "memory-limit-exceeded"
    NEVER_PASSED_HEALTH_CHECKS = "never-passed-health-checks"
    HEALTH_CHECKS_FAILED = "health-checks-failed"
    CANNOT_CONNECT = "cannot-connect"
    HEALTH_CHECK_TIMED_OUT = "health-check-timed-out"
    HAS_CONNECTED = "has-connected"
    HAS_RESPONDED = "has-responded"
    EXPIRED = "expired"  # still running, to be replaced then killed (shown on active instances, docs/api.md §6)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What a scheduler needs to run instances of one service (a projection of the effective description)."""

    service_id: str
    cmd: str
    cpus: float
    mem: float
    ports: int = SERVICE_PARAMS["ports"].default
    env: Mapping[str, str] = field(default_factory=dict)
    run_as_user: str = ""
    version: str = ""
    concurrency_level: int = SERVICE_PARAMS["concurrency-level"].default
    health_check_url: str = SERVICE_PARAMS["health-check-url"].default
    health_check_port_index: int = SERVICE_PARAMS["health-check-port-index"].default
    health_check_interval_secs: int = SERVICE_PARAMS["health-check-interval-secs"].default
    health_check_max_consecutive_failures: int = SERVICE_PARAMS["health-check-max-consecutive-failures"].default
    grace_period_secs: int = SERVICE_PARAMS["grace-period-secs"].default
    termination_grace_period_secs: int = SERVICE_PARAMS["termination-grace-period-secs"].default
    restart_backoff_factor: float = float(SERVICE_PARAMS["restart-backoff-factor"].default)
    token: str = ""
    # The router's record of the service (JSON), stored with it by a back-end that can (Marathon: an app label), so
    # a router restarted without shared state takes the service on again (see ``KeepsRecords``).
    record: str = ""
    image: str = ""  # the container image, for back-ends that run images (Kubernetes); empty: their default


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a service, running or ended. ``id`` is ``<service-id>.<suffix>`` (never a dot elsewhere)."""

    id: str
    service_id: str
    host: str
    port: int
    started_at: float  # epoch seconds
    extra_ports: tuple[int, ...] = ()
    log_directory: str | None = None
    # Set once the instance ended (exited, killed or failed); None while it runs.
    exit_code: int | None = None
    message: str | None = None
    flags: frozenset[str] = frozenset()
    failed: bool = False
    killed: bool = False
    # Back-end specific facts shown in /apps (namespaced keys, e.g. "shell-scheduler/pid").
    extras: Mapping[str, object] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.failed or self.killed or self.exit_code is not None


@dataclass(frozen=True, slots=True)
class ServiceState:
    """A snapshot of one service on the scheduler."""

    service_id: str
    requested: int  # instances the scheduler is asked to keep running
    active: tuple[Instance, ...] = ()  # running (started or starting) instances, oldest first
    failed: tuple[Instance, ...] = ()  # ended with a failure, newest last (bounded)
    killed: tuple[Instance, ...] = ()  # ended by a kill or a clean exit, newest last (bounded)
    # Set when the back-end itself cannot place instances (e.g. not enough resources offered).
    error: str | None = None

    @property
    def scheduled(self) -> int:
        return len(self.active)


class KillOutcome(enum.StrEnum):
    KILLED = "killed"
    NO_SUCH_INSTANCE = "no-such-instance"
    ALREADY_KILLED = "already-killed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class KillResult:
    outcome: KillOutcome
    message: str

    @property
    def success(self) -> bool:
        return self.outcome is KillOutcome.KILLED


class SchedulerError(Exception):
    """A scheduler call failed; the message says what was asked and why it failed."""


Listener = Callable[[str], None]


@runtime_checkable
class KeepsRecords(Protocol):
    """A back-end that stores ``ServiceSpec.record`` with each service and gives it back, also after a restart."""

    def service_record(self, service_id: str) -> str | None: ...


@runtime_checkable
class Scheduler(Protocol):
    """The one interface between the router and wherever instances run.

    Every coroutine may raise ``SchedulerError``; none returns before the back-end accepted the call.
    """

    kind: str

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(service_id)`` (from the event loop) whenever a service's snapshot changed."""

    async def start(self) -> None:
        """Connect and start background loops. Called once, before any other coroutine."""

    async def close(self) -> None:
        """Stop background loops; the local back-end also stops every instance it started."""

    async def create_service(self, spec: ServiceSpec, instances: int) -> bool:
        """Create the service with ``instances`` requested if it does not exist. True iff it was created now."""

    async def scale_service(self, service_id: str, instances: int) -> None:
        """Set the requested instance count (the back-end launches or, on the local machine, keeps the extra)."""

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
        """Stop one instance (SIGTERM then SIGKILL after the termination grace period; at once with ``force``).

        With ``replace`` the requested count is kept, so the back-end starts a replacement; otherwise it drops by
        one. ``message``, ``flags`` and ``failed`` are recorded on the ended instance (e.g. a health-check failure).
        """

    async def delete_service(self, service_id: str) -> bool:
        """Stop every instance and forget the service. False if it did not exist."""

    def service_ids(self) -> list[str]:
        """Ids of every service the back-end knows, from its in-memory snapshot."""

    def service_state(self, service_id: str) -> ServiceState | None:
        """The in-memory snapshot of one service, or None if unknown."""
