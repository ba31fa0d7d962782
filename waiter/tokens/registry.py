"""Every token the router knows: YAML files and the store (memory or Redis), behind one view.

The request path asks ``get`` (synchronous: file tokens, then the store's cache; soft-deleted tokens are
invisible). The API reads and writes through the store itself. A token defined by a file wins over a stored
token of the same name and is read-only through the API: configuration on disk is the source of truth for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

from waiter.aio import cancel_and_wait
from waiter.settings import Settings
from waiter.tokens.files import FileSettings, TokenFiles
from waiter.tokens.memory import MemoryTokenStore
from waiter.tokens.redis_store import RedisTokenStore
from waiter.tokens.store import IndexEntry, TokenRecord, TokenStore


class TokenRegistry:
    def __init__(self, files: TokenFiles, store: TokenStore, *, watch_interval: float = 0.5) -> None:
        self.files = files
        self.store = store
        self.watch_interval = watch_interval
        self._watcher: asyncio.Task[None] | None = None

    @property
    def generation(self) -> int:
        """Changes whenever any token changes, so caches of resolved services know to drop entries."""
        return self.files.generation + self.store.generation

    def get(self, name: str) -> TokenRecord | None:
        """The live token named ``name``, without waiting on anything (the request path)."""
        record = self.files.get(name) or self.store.cached(name)
        return None if record is None or record.deleted else record

    def cached(self, name: str) -> TokenRecord | None:
        """The record as last seen, soft-deleted ones included (a file token first), without waiting on anything."""
        return self.files.get(name) or self.store.cached(name)

    def file_token(self, name: str) -> TokenRecord | None:
        return self.files.get(name)

    async def read(self, name: str) -> TokenRecord | None:
        """The authoritative record (soft-deleted included) for the API. Raises StoreUnavailable."""
        return self.files.get(name) or await self.store.read(name)

    async def index(self, owners: Collection[str] | None = None) -> list[IndexEntry]:
        """The owner index of stored and file tokens; a file token hides a stored one of the same name."""
        files = [IndexEntry.of(r) for r in self.files.tokens.values() if owners is None or r.owner in owners]
        stored = [e for e in await self.store.index(owners) if e.token not in self.files.tokens]
        return sorted(files + stored, key=lambda e: (e.owner, e.token))

    def file_problems(self) -> list[dict[str, Any]]:
        return [p.json() for p in self.files.problems]

    def problem_for(self, name: str) -> str | None:
        """Why the token file defining ``name`` did not load (None when no file problem concerns it)."""
        problem = next((p for p in self.files.problems if p.token == name), None)
        return str(problem) if problem is not None else None

    def counts(self) -> dict[str, int]:
        """How many tokens the router serves (not soft-deleted), from files and from the store."""
        files = self.files.tokens
        stored = sum(1 for r in self.store.cached_records() if not r.deleted and r.name not in files)
        return {"total": len(files) + stored, "files": len(files), "stored": stored}

    def store_status(self) -> dict[str, Any]:
        return self.store.status().json()

    async def start(self) -> None:
        self.files.load()
        await self.store.start()
        self._watcher = asyncio.create_task(self.files.watch(self.watch_interval), name="token files")

    async def close(self) -> None:
        if self._watcher is not None:
            await cancel_and_wait(self._watcher)
        await self.store.close()


def create_store(settings: Settings) -> TokenStore:
    """Redis when ``redis`` is configured, else memory (the embedded default).

    Redis keys are namespaced by cluster name: routers of one cluster share tokens, other clusters in the same
    Redis do not see them.
    """
    if not settings.redis:
        return MemoryTokenStore()
    return RedisTokenStore(settings.redis, prefix=f"waiter:{settings.cluster_name}:tokens:")


def open_registry(settings: Settings) -> TokenRegistry:
    files = TokenFiles(
        settings.tokens_dir,
        FileSettings(
            cluster=settings.cluster_name,
            default_owner=settings.run_as_user,
            hostnames=settings.hostnames,
            max_cpus=settings.max_cpus,
            max_mem=settings.max_mem,
        ),
    )
    return TokenRegistry(files, create_store(settings))
