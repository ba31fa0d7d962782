"""Bookkeeping shared by the schedulers that run instances themselves (local, Mesos): no processes, no clock.

``ServiceBook`` keeps one service's requested count, active and ended instances and crash counter; the helpers
check a spec, word an exit and space restarts. The answers to a kill of an instance that is not running are
every back-end's, and so is ``EndedInstances``, the record of ended instances of the back-ends that watch a
cluster (Marathon, Kubernetes).
"""

from __future__ import annotations

import asyncio
import collections
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from waiter.scheduler.base import Instance, KillOutcome, KillResult, SchedulerError, ServiceSpec, ServiceState

MAX_ENDED = 10  # ended instances kept per list (failed, killed) by every back-end
MAX_RESTART_DELAY_SECS = 60.0
# An instance that lived longer than this was a working instance: its crash starts a new backoff series.
HEALTHY_LIFETIME_SECS = 10.0
_SERVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def restart_delay(failures: int, base_secs: float, factor: float) -> float:
    """Seconds before replacing an instance after ``failures`` consecutive crashes (the first waits base)."""
    exponent = max(failures, 1) - 1
    try:
        delay = base_secs * factor**exponent
    except OverflowError:
        return MAX_RESTART_DELAY_SECS
    return min(delay, MAX_RESTART_DELAY_SECS)


def exit_message(exit_code: int) -> str:
    """Waiter's words for how a process ended; asyncio reports death by signal N as exit code -N."""
    if exit_code >= 0:
        return f"Exited with code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = str(-exit_code)
    return f"Killed by signal {name}"


def check_spec(spec: ServiceSpec, instances: int) -> None:
    """Refuse what the local scheduler cannot run, with the field, the value and what is allowed."""
    if not _SERVICE_ID.fullmatch(spec.service_id):
        raise SchedulerError(
            f"service-id {spec.service_id!r} cannot be run locally: it must be letters, digits, '-' or '_', "
            "starting with a letter or digit."
        )
    if not spec.cmd.strip():
        raise SchedulerError(f"cmd of service {spec.service_id} is empty; it must be a shell command.")
    if spec.mem <= 0:
        raise SchedulerError(f"mem of service {spec.service_id} is {spec.mem}; it must be more than 0 MiB.")
    if spec.ports < 1:
        raise SchedulerError(f"ports of service {spec.service_id} is {spec.ports}; it must be at least 1.")
    if instances < 0:
        raise SchedulerError(f"instances for service {spec.service_id} is {instances}; it must be 0 or more.")


def no_such_instance(service_id: str, instance_id: str) -> KillResult:
    """Every back-end's answer to a kill of an instance it never knew."""
    return KillResult(KillOutcome.NO_SUCH_INSTANCE, f"Service {service_id} has no instance {instance_id}.")


def already_ended(instance_id: str) -> KillResult:
    """Every back-end's answer to a kill of an instance that ended before it."""
    return KillResult(KillOutcome.ALREADY_KILLED, f"Instance {instance_id} has already ended.")


def not_running(book: ServiceBook | None, service_id: str, instance_id: str) -> KillResult:
    """The answer to a kill of an instance that is not running: ended already, or never known."""
    if book is not None and book.find_ended(instance_id) is not None:
        return already_ended(instance_id)
    return no_such_instance(service_id, instance_id)


@dataclass(kw_only=True)
class EndedInstances:
    """Ended instances a back-end recorded itself: each once however often it is reported, newest last, bounded."""

    failed: collections.deque[Instance] = field(default_factory=lambda: collections.deque(maxlen=MAX_ENDED))
    killed: collections.deque[Instance] = field(default_factory=lambda: collections.deque(maxlen=MAX_ENDED))
    recorded: dict[str, None] = field(default_factory=dict)  # ids already ended (bounded, oldest first)

    def end(self, ended: Instance) -> bool:
        """Record an ended instance; False if it was recorded before (nothing changes then)."""
        if ended.id in self.recorded:
            return False
        self.recorded[ended.id] = None
        while len(self.recorded) > 10 * MAX_ENDED:
            del self.recorded[next(iter(self.recorded))]
        (self.failed if ended.failed else self.killed).append(ended)
        return True


@dataclass
class ServiceBook:
    """Pure bookkeeping of one service: what runs, what ended, how many are wanted."""

    spec: ServiceSpec
    requested: int
    max_ended: int
    active: dict[str, Instance] = field(default_factory=dict)  # insertion order = oldest first
    stopping: set[str] = field(default_factory=set)  # active instances we are killing
    failed: collections.deque[Instance] = field(init=False)
    killed: collections.deque[Instance] = field(init=False)
    crashes: int = 0  # consecutive crashes of short-lived instances
    error: str | None = None
    deleting: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # serialises launches, so no double fill

    def __post_init__(self) -> None:
        self.failed = collections.deque(maxlen=self.max_ended)
        self.killed = collections.deque(maxlen=self.max_ended)

    def missing(self) -> int:
        """Instances to launch now: instances being killed no longer count towards the requested number."""
        return max(0, self.requested - (len(self.active) - len(self.stopping)))

    def add(self, instance: Instance) -> None:
        self.active[instance.id] = instance

    def end(self, ended: Instance) -> None:
        """Move an instance (already carrying its end facts) from active to the failed or killed list."""
        self.active.pop(ended.id, None)
        self.stopping.discard(ended.id)
        (self.failed if ended.failed else self.killed).append(ended)

    def note_crash(self, lifetime_secs: float) -> int:
        """Count a crash; returns the consecutive crashes, restarting at 1 after a long-lived instance."""
        self.crashes = 1 if lifetime_secs > HEALTHY_LIFETIME_SECS else self.crashes + 1
        return self.crashes

    def find_ended(self, instance_id: str) -> Instance | None:
        return next((i for i in (*self.failed, *self.killed) if i.id == instance_id), None)

    def snapshot(self) -> ServiceState:
        return ServiceState(
            service_id=self.spec.service_id,
            requested=self.requested,
            active=tuple(self.active.values()),
            failed=tuple(self.failed),
            killed=tuple(self.killed),
            error=self.error,
        )


_Book = TypeVar("_Book", bound=ServiceBook)


def scale_book(books: Mapping[str, _Book], service_id: str, instances: int, scheduler: str) -> _Book:
    """The book of ``service_id`` with ``instances`` requested; SchedulerError for a negative count or a service
    the ``scheduler`` does not know (or is deleting)."""
    if instances < 0:
        raise SchedulerError(f"instances for service {service_id} is {instances}; it must be 0 or more.")
    book = books.get(service_id)
    if book is None or book.deleting:
        raise SchedulerError(f"Cannot scale service {service_id}: the {scheduler} scheduler does not know it.")
    book.requested = instances
    return book


@dataclass(frozen=True)
class Ending:
    """Why the scheduler stopped an instance; recorded on it once it ended."""

    message: str
    flags: frozenset[str] = frozenset()
    failed: bool = False
    crash: bool = False  # counts as a crash: backoff, then replaced (local health-check kills)
