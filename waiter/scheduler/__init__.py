"""Scheduler back-ends by name; each is imported only when chosen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from waiter.scheduler.base import Scheduler, SchedulerError
from waiter.settings import Settings

if TYPE_CHECKING:
    from waiter.scheduler.mesos_failover import FrameworkIdStore


def create_scheduler(settings: Settings, *, framework_ids: FrameworkIdStore | None = None) -> Scheduler:
    """The configured back-end; ``framework_ids`` keeps a Mesos framework's id across restarts (none: not kept)."""
    kind = settings.scheduler_kind
    if kind == "local":
        from waiter.scheduler.local import LocalScheduler, LocalSettings

        return LocalScheduler(
            LocalSettings(
                work_dir=settings.local.work_dir.resolve(),
                port_range=settings.local.port_range,
                cluster_name=settings.cluster_name,
                memory_check_interval_secs=settings.local.memory_check_interval_secs,
                sandbox_retention_secs=settings.local.sandbox_retention_secs,
                sandboxes_kept=settings.local.sandboxes_kept,
            )
        )
    if kind == "marathon":
        from waiter.scheduler.marathon import MarathonScheduler

        return MarathonScheduler(settings.marathon, cluster_name=settings.cluster_name)
    if kind == "mesos":
        from waiter.scheduler.mesos import MesosScheduler
        from waiter.scheduler.mesos_tasks import MesosSettings

        mesos = settings.mesos
        return MesosScheduler(
            MesosSettings(
                master=mesos.master,
                framework_name=mesos.framework_name,
                role=mesos.role,
                user=mesos.user or settings.run_as_user,
                failover_timeout_secs=mesos.failover_timeout_secs,
                offer_wait_secs=mesos.offer_wait_secs,
                request_timeout_secs=mesos.request_timeout_ms / 1000,
                cluster_name=settings.cluster_name,
                agent_work_dir=mesos.agent_work_dir,
            ),
            framework_ids=framework_ids,
        )
    if kind == "kubernetes":
        from waiter.scheduler.kubernetes import KubernetesScheduler

        return KubernetesScheduler(settings.kubernetes, cluster_name=settings.cluster_name)
    if kind == "agent":
        from waiter.scheduler.agent import AgentScheduler

        return AgentScheduler(settings.agent_url)
    raise SchedulerError(f"scheduler.kind is {kind!r}, which this build cannot run yet; use 'local'.")


__all__ = ["Scheduler", "SchedulerError", "create_scheduler"]
