"""The shared-state protocol. One router uses the in-memory back-end; several share one Redis.

Nothing here is called on the request path: a router's background loops publish what it counted and read what
the others published (see ``waiter.coordinator``). Every call of the Redis back-end has a timeout and raises
``StateUnavailable`` when Redis cannot be reached, so callers degrade instead of hanging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

TOMBSTONE_MS = 600_000  # how long a deleted service's tombstone tells other routers to forget it


class StateUnavailable(Exception):
    """The shared state cannot be reached (Redis down or too slow); the message says which call failed."""


@dataclass(frozen=True, slots=True)
class RouterStats:
    """One router's counts for one service, as it last published them."""

    outstanding: int  # in flight + queued on that router
    queued: int
    total: int  # requests received since the router started
    last_request_time: float | None

    def to_json(self) -> list[Any]:
        return [self.outstanding, self.queued, self.total, self.last_request_time]

    @classmethod
    def from_json(cls, data: list[Any]) -> RouterStats:
        return cls(int(data[0]), int(data[1]), int(data[2]), None if data[3] is None else float(data[3]))


@dataclass(frozen=True, slots=True)
class Exchange:
    """What a router reads back at each tick (see ``SharedState.exchange``)."""

    stats: dict[str, dict[str, RouterStats]]  # as all_stats
    routers: dict[str, dict[str, Any]]  # as routers
    blocked: set[str]
    expired: set[str]


class SharedState(Protocol):
    kind: str
    shared: bool  # True when other routers can see what this one writes
    errors: int  # calls that failed so far (Redis unreachable, timed out)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Facts for /status about where the state lives (e.g. the Sentinel primary); empty when nothing to say."""

    # -- routers ---------------------------------------------------------------------------------------------
    async def heartbeat(self, router_id: str, info: dict[str, Any], ttl_ms: int) -> None:
        """Announce this router (its URL, start time) for ``ttl_ms``."""

    async def routers(self) -> dict[str, dict[str, Any]]:
        """Every live router's announced info."""

    async def all_stats(self) -> dict[str, dict[str, RouterStats]]:
        """router id -> service id -> counts, for every router whose counts have not expired."""

    async def exchange(
        self, router_id: str, info: dict[str, Any], ttl_ms: int, stats: dict[str, RouterStats], stats_ttl_ms: int
    ) -> Exchange:
        """A tick's exchange in as few round trips as the back-end allows: ``heartbeat``; this router's counts
        published (visible until ``stats_ttl_ms`` passes without another exchange); then ``all_stats``,
        ``routers``, the blocked and the expired instances as they are after both."""

    # -- the scaling leader ------------------------------------------------------------------------------------
    async def lead(self, router_id: str, ttl_ms: int) -> bool:
        """Acquire or renew the leader lease; True iff ``router_id`` holds it now."""

    async def resign(self, router_id: str) -> None: ...

    async def withdraw(self, router_id: str) -> None:
        """A router that stopped cleanly leaves at once: its heartbeat and counts, the leader lease and its slot
        leases go, so no peer (nor the next leader) counts its requests until they would have expired."""

    async def load_scaling(self, service_id: str) -> dict[str, Any] | None: ...

    async def save_scaling(self, service_id: str, data: dict[str, Any]) -> None: ...

    # -- services ------------------------------------------------------------------------------------------------
    async def register_service(self, service_id: str, record: dict[str, Any]) -> None:
        """Remember a service's description so every router (and the leader) can manage it."""

    async def services(self) -> dict[str, dict[str, Any]]: ...

    async def forget_service(self, service_id: str, inactive: dict[str, Any]) -> None:
        """Forget a deleted service and leave a tombstone, so other routers forget it too (see deleted_services).

        ``inactive`` is what stays known of it (its description, the instances it had): see inactive_service."""

    async def inactive_service(self, service_id: str) -> dict[str, Any] | None:
        """The record a deleted service left (see forget_service), kept until it is registered again."""

    async def deleted_services(self) -> set[str]:
        """Services deleted recently (registering one again lifts its tombstone)."""

    # -- slot leases (no instance serves more than concurrency-level requests across routers) --------------------
    async def lease(self, router_id: str, instance_id: str, want: int, capacity: int, announce: str = "") -> int:
        """Set this router's lease on an instance to at most ``want`` slots, never letting the live routers'
        leases together exceed ``capacity``, and never granting slots of a blocked instance. Returns the number of
        slots this router now holds (which may be less than it held before only if ``want`` was less). When slots
        were given back and ``announce`` is set, it is sent to the other routers (see ``listen``) atomically with
        the release, so a peer told of it finds the slots free."""

    async def grow(
        self, router_id: str, wants: Sequence[tuple[str, int]], capacity: int, need: int, announce: str = ""
    ) -> list[int]:
        """``lease`` each (instance id, want) in one exchange (wants at least what is held: this never gives slots
        back); returns the slots held of each. When fewer than ``need`` slots were gained and ``announce`` is set,
        it is sent to the other routers (a router asks its peers only when the free slots did not do)."""

    async def leases(self, instance_id: str) -> dict[str, int]:
        """Live routers' leases on an instance."""

    async def listen(self, heard: Callable[[str], None]) -> None:
        """Call ``heard`` with every message the lease scripts send (``waiter.handover``; this router's own too);
        runs until cancelled, riding out outages."""

    async def block(self, instance_id: str, ttl_ms: int) -> int:
        """Stop granting slots of an instance (it is about to be killed); returns the slots still leased."""

    async def unblock(self, instance_id: str) -> None: ...

    # -- controls: per-service "overrides" and "suspended" records, "async-completed" requests; set through any
    # router's API ------------------------------------------------------------------------------------------------
    async def set_control(self, kind: str, service_id: str, record: dict[str, Any] | None) -> None:
        """Set (or with None, clear) the ``kind`` record of ``service_id`` (a request id for async-completed)."""

    async def controls(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every service's ``kind`` record."""

    # -- expired instances (flagged through any router's API; the leader replaces them) ---------------------------
    async def flag_expired(self, instance_id: str, ttl_ms: int) -> None:
        """Mark an instance expired for every router, for ``ttl_ms`` (it is killed long before)."""

    # -- scheduler identities kept across restarts ------------------------------------------------------------------
    async def framework_id(self, key: str) -> str | None:
        """The Mesos framework id kept under ``key`` (a router's host and port), None if none is kept."""

    async def keep_framework_id(self, key: str, framework_id: str | None) -> None:
        """Keep (or with None, forget) the Mesos framework id of ``key``, so its router re-subscribes with it."""


class SharedFrameworkIds:
    """A Mesos router's framework id in the shared state (a ``waiter.scheduler.mesos_failover.FrameworkIdStore``)."""

    def __init__(self, state: SharedState, key: str) -> None:
        self.state = state
        self.key = key
        self.where = f"the shared state under {key}"

    async def load(self) -> str | None:
        return await self.state.framework_id(self.key)

    async def save(self, framework_id: str | None) -> None:
        await self.state.keep_framework_id(self.key, framework_id)
