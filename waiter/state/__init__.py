"""What routers share: heartbeats, per-router counts, the scaling lease, service records and slot leases."""

from waiter.state.base import RouterStats, SharedState, StateUnavailable

__all__ = ["RouterStats", "SharedState", "StateUnavailable"]
