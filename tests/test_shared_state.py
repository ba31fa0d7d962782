"""The shared state's back-ends: Redis against a real redis-server, and the in-memory one where they share a test."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis

from tests.redis_server import RedisServer
from tests.support import eventually
from waiter.state.base import Exchange, RouterStats, SharedState
from waiter.state.memory import MemoryState
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


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_slot_leases_keep_concurrency_level_and_announce_handovers(kind: str, redis_server: RedisServer) -> None:
    state: SharedState = MemoryState() if kind == "memory" else RedisState(redis_server.url, namespace="leases")
    heard: list[str] = []
    listener = asyncio.create_task(state.listen(heard.append))
    try:
        for rid in ("r1", "r2"):
            await state.heartbeat(rid, {"url": f"http://{rid}"}, ttl_ms=60_000)
        if kind == "redis":

            raw = redis.Redis.from_url(redis_server.url, decode_responses=True)

            async def subscribed() -> bool:  # a message sent now is heard: the subscription is in place
                await raw.publish("waiter:leases:nudge", "ready")
                return "ready" in heard

            await eventually(subscribed, what="the nudge channel's subscription")
            await raw.aclose()
        # r1 gains what it needs: nothing to tell. r2 finds nothing free: its want goes out.
        assert await state.grow("r1", [("i1", 2), ("i2", 2)], 2, need=3, announce="want-1") == [2, 2]
        assert await state.grow("r2", [("i1", 2), ("i2", 1)], 2, need=1, announce="want-2") == [0, 0]
        # Giving back announces, and never lets the sum exceed concurrency-level.
        assert await state.lease("r1", "i1", 1, 2, announce="gave-1") == 1
        assert await state.grow("r2", [("i1", 2)], 2, need=1, announce="want-3") == [1]
        assert await state.leases("i1") == {"r1": 1, "r2": 1}
        assert await state.lease("r1", "i1", 1, 2, announce="gave-2") == 1  # nothing given back: nothing told
        await state.block("i2", 60_000)
        assert await state.lease("r1", "i2", 0, 2) == 0
        assert await state.grow("r2", [("i2", 2)], 2, need=1) == [0]  # blocked: nobody gets its slots
        expected = [] if kind == "memory" else ["want-2", "gave-1"]

        async def all_heard() -> bool:
            return [m for m in heard if m != "ready"] == expected

        await eventually(all_heard, what=f"the announcements {expected}")
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await state.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_ticks_exchange_publishes_and_reads_back_everything(kind: str, redis_server: RedisServer) -> None:
    state: SharedState = MemoryState() if kind == "memory" else RedisState(redis_server.url, namespace="exchange")
    try:
        await state.exchange("r2", {"url": "http://r2"}, 60_000, {"s": RouterStats(3, 1, 9, 5.0)}, 60_000)
        await state.heartbeat("gone", {"url": "http://gone"}, ttl_ms=1)
        await state.block("i1", 60_000)
        await state.flag_expired("i2", 60_000)
        await state.flag_expired("i3", 1)

        async def exchanged() -> Exchange:
            mine = {"s": RouterStats(1, 0, 4, 6.0)}
            return await state.exchange("r1", {"url": "http://r1"}, 60_000, mine, 60_000)

        async def gone_forgotten() -> bool:
            return "gone" not in (await exchanged()).routers

        await eventually(gone_forgotten, what="the router whose heartbeat lapsed to be forgotten")
        got = await exchanged()
        assert got.stats == {"r1": {"s": RouterStats(1, 0, 4, 6.0)}, "r2": {"s": RouterStats(3, 1, 9, 5.0)}}
        assert set(got.routers) == {"r1", "r2"} and got.routers["r1"] == {"url": "http://r1"}
        assert (got.blocked, got.expired) == ({"i1"}, {"i2"})
        assert await state.routers() == got.routers and await state.all_stats() == got.stats
    finally:
        await state.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_router_that_withdraws_is_gone_at_once(kind: str, redis_server: RedisServer) -> None:
    state: SharedState = MemoryState() if kind == "memory" else RedisState(redis_server.url, namespace="withdraw")
    try:
        for rid in ("r1", "r2"):
            await state.exchange(rid, {"url": f"http://{rid}"}, 60_000, {"s": RouterStats(2, 1, 5, 5.0)}, 60_000)
        assert await state.lead("r1", 60_000)
        assert await state.lease("r1", "i1", 1, 2) == 1 and await state.lease("r2", "i1", 1, 2) == 1
        await state.withdraw("r1")
        assert set(await state.routers()) == {"r2"}
        assert set(await state.all_stats()) == {"r2"}
        assert await state.leases("i1") == {"r2": 1}
        assert await state.lead("r2", 60_000)  # the lease is free now, not when its TTL would have lapsed
        await state.withdraw("r1")  # twice is the same (a stop retried)
        assert set(await state.routers()) == {"r2"}
    finally:
        await state.close()
