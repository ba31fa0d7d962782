"""The shared state's Redis back-end against a real redis-server."""

from __future__ import annotations

import redis.asyncio as redis

from tests.redis_server import RedisServer
from tests.support import eventually
from waiter.state.redis import RedisState


async def test_routers_forgets_ids_whose_heartbeat_and_counts_expired(redis_server: RedisServer) -> None:
    state = RedisState(redis_server.url, namespace="prune")
    try:
        await state.heartbeat("gone", {"url": "http://a"}, ttl_ms=50)
        await state.heartbeat("live", {"url": "http://b"}, ttl_ms=60_000)
        assert set(await state.routers()) == {"gone", "live"}

        async def only_live() -> bool:
            return set(await state.routers()) == {"live"}

        await eventually(only_live, "the expired router to drop out")
        # the set of router ids must not grow with every router that ever ran
        raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
        assert await raw.smembers("waiter:prune:routers") == {"live"}
        await raw.aclose()
    finally:
        await state.close()
