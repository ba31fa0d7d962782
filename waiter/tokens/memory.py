"""The in-memory token store: the embedded default for a single router (tokens live as long as the process)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from waiter.tokens.store import CachedStore, IndexEntry, StaleWrite, StoreStatus, TokenRecord, make_record


class MemoryTokenStore(CachedStore):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._owners: dict[str, dict[str, IndexEntry]] = {}

    async def read(self, name: str) -> TokenRecord | None:
        return self.cached(name)

    async def write(self, name: str, data: Mapping[str, Any] | None, *, expected: TokenRecord | None) -> None:
        current = self.cached(name)
        current_etag = current.etag if current else ""
        if current_etag != (expected.etag if expected else ""):
            raise StaleWrite(name, current_etag)
        if current is not None and current.owner:
            self._owners.get(current.owner, {}).pop(name, None)
        record = make_record(name, dict(data)) if data is not None else None
        if record is not None and record.owner:
            self._owners.setdefault(record.owner, {})[name] = IndexEntry.of(record)
        self._remember(name, record)

    async def index(self, owners: Collection[str] | None = None) -> list[IndexEntry]:
        chosen = self._owners.keys() if owners is None else owners
        return [entry for owner in chosen for entry in self._owners.get(owner, {}).values()]

    async def reindex(self) -> int:
        records = self.cached_records()
        self._owners = {}
        for record in records:
            if record.owner:
                self._owners.setdefault(record.owner, {})[record.name] = IndexEntry.of(record)
        return len(list(records))

    def status(self) -> StoreStatus:
        return StoreStatus(kind=self.kind, connected=True, tokens=len(self._cache))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
