"""Tokens: YAML files and a store (memory or Redis) behind one registry (docs/api.md §1.2-1.5, §2)."""

from waiter.tokens.files import FileProblem, FileSettings, TokenFiles
from waiter.tokens.memory import MemoryTokenStore
from waiter.tokens.redis_store import RedisTokenStore
from waiter.tokens.registry import TokenRegistry, create_store, open_registry
from waiter.tokens.store import (
    HISTORY_LIMIT,
    IndexEntry,
    StaleWrite,
    StoreStatus,
    StoreUnavailable,
    TokenRecord,
    TokenStore,
    make_record,
    token_etag,
)

__all__ = [
    "HISTORY_LIMIT",
    "FileProblem",
    "FileSettings",
    "IndexEntry",
    "MemoryTokenStore",
    "RedisTokenStore",
    "StaleWrite",
    "StoreStatus",
    "StoreUnavailable",
    "TokenFiles",
    "TokenRecord",
    "TokenRegistry",
    "TokenStore",
    "create_store",
    "make_record",
    "open_registry",
    "token_etag",
]
