"""The token store: one protocol, a synchronous in-memory view, and the record types both back-ends share.

A store keeps every token record (service parameters, user metadata, system metadata, ``previous`` history,
``deleted``) and an owner index. Reads on the request path go through ``cached``: a dict lookup that never waits
on I/O. Writes are compare-and-set against the record the writer read, so two routers (or two requests) never
silently overwrite each other's change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from waiter.errors import iso_millis

HISTORY_LIMIT = 5  # levels of ``previous`` kept on a record (docs/api.md §2.3)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    data: Mapping[str, Any]  # service parameters, user metadata and system metadata, as stored
    etag: str
    source: str = ""  # the file that defines it; "" for tokens managed through the API

    @property
    def deleted(self) -> bool:
        return self.data.get("deleted") is True

    @property
    def owner(self) -> str | None:
        """The owner; legacy records without one report their run-as-user (docs/api.md §1.2)."""
        owner = self.data.get("owner") or self.data.get("run-as-user")
        return owner if isinstance(owner, str) else None


def token_etag(data: Mapping[str, Any]) -> str:
    """``E-`` + MD5 of the record without its history (docs/api.md §2.4)."""
    body = {k: v for k, v in data.items() if k not in ("previous", "token")}
    return "E-" + hashlib.md5(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def make_record(name: str, data: Mapping[str, Any], source: str = "") -> TokenRecord:
    return TokenRecord(name, data, token_etag(data), source)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One line of the owner index behind ``/tokens``."""

    token: str
    owner: str
    deleted: bool
    etag: str
    last_update_time: int | None  # epoch millis
    maintenance: bool

    @classmethod
    def of(cls, record: TokenRecord) -> IndexEntry:
        updated = record.data.get("last-update-time")
        return cls(
            token=record.name,
            owner=record.owner or "",
            deleted=record.deleted,
            etag=record.etag,
            last_update_time=updated if isinstance(updated, int) and not isinstance(updated, bool) else None,
            maintenance=isinstance(record.data.get("maintenance"), Mapping),
        )

    def dumps(self) -> str:
        """The value stored in an owner's index (the token and owner are the keys)."""
        return json.dumps(
            {
                "deleted": self.deleted,
                "etag": self.etag,
                "last-update-time": self.last_update_time,
                "maintenance": self.maintenance,
            }
        )

    @classmethod
    def loads(cls, token: str, owner: str, text: str) -> IndexEntry:
        raw = json.loads(text)
        return cls(token, owner, bool(raw["deleted"]), str(raw["etag"]), raw["last-update-time"], raw["maintenance"])


class StaleWrite(Exception):
    """The stored record is no longer the one the writer read; read again and retry (or answer 412)."""

    def __init__(self, name: str, current_etag: str) -> None:
        super().__init__(f"token {name} changed concurrently (now {current_etag or 'absent'})")
        self.name = name
        self.current_etag = current_etag


class StoreUnavailable(Exception):
    """The store cannot be reached; the message says which one and why."""


@dataclass(frozen=True, slots=True)
class StoreStatus:
    kind: str
    connected: bool
    tokens: int
    error: str | None = None
    down_since: float | None = None  # epoch seconds
    location: str | None = None

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind, "connected": self.connected, "cached-tokens": self.tokens}
        if self.location:
            body["location"] = self.location
        if not self.connected:
            body["error"] = self.error
            body["down-since"] = iso_millis(self.down_since)
            body["serving"] = "cached tokens; token changes through the API are refused until the store is back"
        return body


class TokenStore(Protocol):
    """Where API-managed tokens live. ``cached`` and ``generation`` are synchronous and never touch the network."""

    kind: str
    errors: int  # calls to the back-end that failed so far

    @property
    def generation(self) -> int:
        """Bumped whenever the cached view changes, so caches built from it know to drop entries."""
        ...

    def cached(self, name: str) -> TokenRecord | None:
        """The record as last seen (soft-deleted ones included), without waiting on anything."""
        ...

    def cached_records(self) -> Iterable[TokenRecord]: ...

    async def read(self, name: str) -> TokenRecord | None:
        """The authoritative record (soft-deleted ones included). Raises StoreUnavailable."""
        ...

    async def write(self, name: str, data: Mapping[str, Any] | None, *, expected: TokenRecord | None) -> None:
        """Store ``data`` (``None``: remove the record) iff the stored record is still ``expected``.

        Raises StaleWrite when it is not, StoreUnavailable when the store cannot be reached.
        """
        ...

    async def index(self, owners: Collection[str] | None = None) -> list[IndexEntry]:
        """Index entries of the given owners (all owners when None), deleted ones included."""
        ...

    async def reindex(self) -> int:
        """Rebuild the owner index from the records themselves; the number of records indexed."""
        ...

    def status(self) -> StoreStatus: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class CachedStore:
    """The synchronous view both back-ends keep: name -> record, plus a generation counter."""

    def __init__(self) -> None:
        self._cache: dict[str, TokenRecord] = {}
        self._generation = 0
        self.errors = 0  # calls to the back-end that failed (Redis unreachable, timed out)

    @property
    def generation(self) -> int:
        return self._generation

    def cached(self, name: str) -> TokenRecord | None:
        return self._cache.get(name)

    def cached_records(self) -> Iterable[TokenRecord]:
        return list(self._cache.values())

    def _remember(self, name: str, record: TokenRecord | None) -> None:
        current = self._cache.get(name)
        if record is None:
            if current is not None:
                del self._cache[name]
                self._generation += 1
        elif current is None or current.data != record.data:
            self._cache[name] = record
            self._generation += 1

    def _replace_all(self, records: Mapping[str, TokenRecord]) -> None:
        if {n: r.data for n, r in records.items()} != {n: r.data for n, r in self._cache.items()}:
            self._cache = dict(records)
            self._generation += 1
