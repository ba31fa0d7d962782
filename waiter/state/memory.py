"""Shared state kept in this process: the embedded default for a single router (no Redis)."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

from waiter.state.base import TOMBSTONE_MS, Exchange, RouterStats


class _Expiring:
    """A dict whose entries vanish ``ttl_ms`` after they were last written."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, Any]] = {}

    def put(self, key: str, value: Any, ttl_ms: int) -> None:
        self._data[key] = (time.monotonic() + ttl_ms / 1000, value)

    def items(self) -> dict[str, Any]:
        now = time.monotonic()
        self._data = {k: v for k, v in self._data.items() if v[0] > now}
        return {k: v[1] for k, v in self._data.items()}

    def get(self, key: str) -> Any:
        return self.items().get(key)

    def pop(self, key: str) -> None:
        self._data.pop(key, None)


class MemoryState:
    kind = "memory"
    shared = False
    errors = 0

    def __init__(self) -> None:
        self._routers = _Expiring()
        self._stats = _Expiring()
        self._leader = _Expiring()
        self._blocked = _Expiring()
        self._expired = _Expiring()
        self._controls: dict[str, dict[str, dict[str, Any]]] = {}
        self._scaling: dict[str, dict[str, Any]] = {}
        self._services: dict[str, dict[str, Any]] = {}
        self._leases: dict[str, dict[str, int]] = {}
        self._deleted = _Expiring()
        self._inactive: dict[str, dict[str, Any]] = {}
        self._framework_ids: dict[str, str] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {}

    async def heartbeat(self, router_id: str, info: dict[str, Any], ttl_ms: int) -> None:
        self._routers.put(router_id, dict(info), ttl_ms)

    async def routers(self) -> dict[str, dict[str, Any]]:
        return self._routers.items()

    async def all_stats(self) -> dict[str, dict[str, RouterStats]]:
        return self._stats.items()

    async def exchange(
        self, router_id: str, info: dict[str, Any], ttl_ms: int, stats: dict[str, RouterStats], stats_ttl_ms: int
    ) -> Exchange:
        await self.heartbeat(router_id, info, ttl_ms)
        self._stats.put(router_id, dict(stats), stats_ttl_ms)
        blocked, expired = set(self._blocked.items()), set(self._expired.items())
        return Exchange(await self.all_stats(), await self.routers(), blocked, expired)

    async def lead(self, router_id: str, ttl_ms: int) -> bool:
        holder = self._leader.get("leader")
        if holder in (None, router_id):
            self._leader.put("leader", router_id, ttl_ms)
            return True
        return False

    async def resign(self, router_id: str) -> None:
        if self._leader.get("leader") == router_id:
            self._leader.pop("leader")

    async def withdraw(self, router_id: str) -> None:
        self._routers.pop(router_id)
        self._stats.pop(router_id)
        await self.resign(router_id)
        for leases in self._leases.values():
            leases.pop(router_id, None)

    async def load_scaling(self, service_id: str) -> dict[str, Any] | None:
        data = self._scaling.get(service_id)
        return copy.deepcopy(data) if data is not None else None

    async def save_scaling(self, service_id: str, data: dict[str, Any]) -> None:
        self._scaling[service_id] = copy.deepcopy(data)

    async def register_service(self, service_id: str, record: dict[str, Any]) -> None:
        self._services[service_id] = copy.deepcopy(record)
        self._deleted.pop(service_id)
        self._inactive.pop(service_id, None)

    async def services(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._services)

    async def forget_service(self, service_id: str, inactive: dict[str, Any]) -> None:
        self._services.pop(service_id, None)
        self._scaling.pop(service_id, None)
        self._deleted.put(service_id, True, TOMBSTONE_MS)
        self._inactive[service_id] = copy.deepcopy(inactive)

    async def inactive_service(self, service_id: str) -> dict[str, Any] | None:
        record = self._inactive.get(service_id)
        return copy.deepcopy(record) if record is not None else None

    async def deleted_services(self) -> set[str]:
        return set(self._deleted.items())

    async def lease(self, router_id: str, instance_id: str, want: int, capacity: int, announce: str = "") -> int:
        leases = self._leases.setdefault(instance_id, {})
        live = self._routers.items()
        for rid in [r for r in leases if r != router_id and r not in live]:
            del leases[rid]
        held = leases.get(router_id, 0)
        if self._blocked.get(instance_id) is not None:
            want = min(want, held)
        others = sum(n for rid, n in leases.items() if rid != router_id)
        granted = max(0, min(want, capacity - others))
        if granted:
            leases[router_id] = granted
        else:
            leases.pop(router_id, None)
        return granted

    async def grow(
        self, router_id: str, wants: Sequence[tuple[str, int]], capacity: int, need: int, announce: str = ""
    ) -> list[int]:
        return [await self.lease(router_id, iid, want, capacity) for iid, want in wants]

    async def listen(self, heard: Callable[[str], None]) -> None:
        await asyncio.Event().wait()

    async def leases(self, instance_id: str) -> dict[str, int]:
        live = self._routers.items()
        return {rid: n for rid, n in self._leases.get(instance_id, {}).items() if rid in live}

    async def block(self, instance_id: str, ttl_ms: int) -> int:
        self._blocked.put(instance_id, True, ttl_ms)
        return sum((await self.leases(instance_id)).values())

    async def unblock(self, instance_id: str) -> None:
        self._blocked.pop(instance_id)

    async def set_control(self, kind: str, service_id: str, record: dict[str, Any] | None) -> None:
        table = self._controls.setdefault(kind, {})
        if record is None:
            table.pop(service_id, None)
        else:
            table[service_id] = copy.deepcopy(record)

    async def controls(self, kind: str) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._controls.get(kind, {}))

    async def flag_expired(self, instance_id: str, ttl_ms: int) -> None:
        self._expired.put(instance_id, True, ttl_ms)

    async def framework_id(self, key: str) -> str | None:
        return self._framework_ids.get(key)

    async def keep_framework_id(self, key: str, framework_id: str | None) -> None:
        if framework_id is None:
            self._framework_ids.pop(key, None)
        else:
            self._framework_ids[key] = framework_id
