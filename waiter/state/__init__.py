"""What routers share: heartbeats, per-router counts, the scaling lease, service records and slot leases."""

from __future__ import annotations

from waiter.settings import Settings
from waiter.state.base import RouterStats, SharedFrameworkIds, SharedState, StateUnavailable


def open_state(settings: Settings) -> SharedState:
    """Redis when the router is configured with one (several routers), else this process's memory."""
    if settings.redis:
        from waiter.state.redis import RedisState

        return RedisState(settings.redis, namespace=settings.cluster_name)
    from waiter.state.memory import MemoryState

    return MemoryState()


__all__ = ["RouterStats", "SharedFrameworkIds", "SharedState", "StateUnavailable", "open_state"]
