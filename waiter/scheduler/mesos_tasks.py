"""The Mesos framework's settings and bookkeeping: a service's books with offer placement, one task, how it ended."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waiter.scheduler.base import Instance
from waiter.scheduler.book import Ending, ServiceBook, exit_message
from waiter.scheduler.environment import format_number
from waiter.scheduler.mesos_proto import Need, TaskOutcome, TaskPhase


@dataclass(frozen=True)
class MesosSettings:
    master: str  # host:port of a master; a non-leader redirects to the leader
    framework_name: str = "waiter"
    role: str = "*"
    user: str = field(default_factory=getpass.getuser)
    failover_timeout_secs: float = 604800.0  # the master keeps our tasks this long while we are away
    offer_wait_secs: float = 60.0  # no fitting offer for this long -> deployment error on the service
    request_timeout_secs: float = 10.0
    cluster_name: str = "local"
    agent_work_dir: str = "/var/lib/mesos"  # the agents' --work_dir, to name each task's sandbox
    decline_refuse_secs: float = 5.0  # offers we have no use for are not re-offered for this long
    waiting_refuse_secs: float = 1.0  # ... while some instance still waits for a fitting offer
    tick_secs: float = 0.25  # deployment-error checks, backoff expiry and kill retries
    min_kill_grace_secs: float = 1.0
    kill_wait_secs: float = 30.0  # kill_instance waits this long (beyond the grace) for the task to end
    restart_backoff_base_secs: float = 0.5
    reconnect_max_secs: float = 5.0
    heartbeat_misses: int = 5
    max_ended_instances: int = 10
    reconcile_retry_secs: float = 2.0  # explicit reconciliation unanswered this long is sent again (doubling)
    reconcile_retry_max_secs: float = 60.0


@dataclass
class MesosBook(ServiceBook):
    """A service's books plus what placing it on offers needs."""

    waiting_since: float | None = None  # monotonic: since when an instance waits for a fitting offer
    shortfall: str | None = None  # why the latest offers did not fit
    not_before: float = 0.0  # monotonic: backoff after a crash
    revive_at_backoff_end: bool = False

    def check_waiting(self, now: float, offer_wait_secs: float) -> bool:
        """Set or clear the deployment error of an instance waiting ``offer_wait_secs`` for a fitting offer (the
        latest offers' shortfall, else what it needs) at ``now``; True when a crash backoff just ended (revive)."""
        if self.deleting or self.missing() == 0:
            self.waiting_since = self.error = None
            return False
        if now < self.not_before:
            return False
        revive, self.revive_at_backoff_end = self.revive_at_backoff_end, False
        if self.waiting_since is None:
            self.waiting_since = now
        elif now - self.waiting_since >= offer_wait_secs and self.error is None:
            need = Need.of(self.spec)
            self.error = self.shortfall or (
                f"No offer arrived within {format_number(offer_wait_secs)} seconds to place an instance needing "
                f"{format_number(need.cpus)} cpus, {format_number(need.mem)} MiB and {need.ports} ports"
            )
        return revive


@dataclass
class Task:
    service_id: str
    instance: Instance
    agent_id: str
    started: float  # monotonic
    grace_secs: float
    state: str = "TASK_STAGING"
    ending: Ending | None = None
    kill_sent_at: float | None = None  # monotonic
    done: asyncio.Event = field(default_factory=asyncio.Event)


def id_value(holder: Any) -> str | None:
    """The ``value`` of a Mesos id message ({"value": ...}), None when absent."""
    return str(holder["value"]) if isinstance(holder, Mapping) and "value" in holder else None


def ended_instance(task: Task, outcome: TaskOutcome) -> Instance:
    """The instance as recorded once its task ended: by itself, or by our kill (``task.ending``)."""
    exit_code = outcome.exit_code
    if exit_code is None and outcome.phase is TaskPhase.FINISHED:
        exit_code = 0
    ending = task.ending
    if ending is None:
        # Waiter's words for an exit, as the local scheduler reports it; other ends keep Mesos's message.
        message = outcome.message if exit_code is None else exit_message(exit_code)
        return dataclasses.replace(
            task.instance,
            exit_code=exit_code,
            message=message,
            flags=outcome.flags,
            failed=outcome.phase is TaskPhase.FAILED,
            killed=outcome.phase is TaskPhase.KILLED,
        )
    return dataclasses.replace(
        task.instance,
        exit_code=exit_code,
        message=ending.message,
        flags=ending.flags | outcome.flags,
        failed=ending.failed,
        killed=not ending.failed,
    )
