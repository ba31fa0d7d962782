"""Watches (docs/api.md §1.5, §1.10): /tokens?watch=true and /apps/instances?watch=true stream the listing and then
its changes, also those made through another router (two routers sharing a test-owned Redis and one Marathon)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningRouter, backend_token
from tests.redis_server import needs_redis
from waiter.api.watch import events

pytestmark = [needs_redis, pytest.mark.schedulers("marathon")]

TOKEN = {"x-waiter-token": "echo"}


def test_events_between_two_listings() -> None:
    before = {"a": {"v": 1}, "b": {"v": 1}}
    after = {"a": {"v": 2}, "c": {"v": 1}}
    assert events(before, after) == [
        {"type": "UPDATE", "id": "a", "object": {"v": 2}},
        {"type": "UPDATE", "id": "c", "object": {"v": 1}},
        {"type": "DELETE", "id": "b", "object": {"v": 1}},
    ]
    assert events(after, after) == []


async def next_message(resp: aiohttp.ClientResponse, timeout: float = 10.0) -> dict[str, Any] | None:
    """The next line of the stream as JSON; None at its end."""
    async with asyncio.timeout(timeout):
        line = await resp.content.readline()
    return json.loads(line) if line else None


async def until_event(resp: aiohttp.ClientResponse, wanted: str, key: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = await next_message(resp, max(0.1, deadline - time.monotonic()))
        assert message is not None, "the stream ended first"
        assert message["type"] == "EVENTS"
        for event in message["objects"]:
            if event["type"] == wanted and event["id"] == key:
                return event  # type: ignore[no-any-return]


async def two_routers(make_router, redis_server, tokens: list[dict[str, Any]]) -> tuple[RunningRouter, RunningRouter]:  # type: ignore[no-untyped-def]
    fast = {"autoscaler": {"interval-ms": 200, "publish-interval-ms": 50, "router-ttl-ms": 1500}}
    a = await make_router(tokens, redis=redis_server.url, **fast)
    b = await make_router(tokens, redis=redis_server.url, **fast)
    return a, b


async def test_a_token_watch_sees_changes_made_through_the_other_router(make_router, redis_server) -> None:
    a, b = await two_routers(make_router, redis_server, [])
    url = a.url + "/tokens?watch=true&include=metadata&streaming-timeout=15000"
    async with a.client.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "application/x-ndjson"
        assert await next_message(resp) == {"type": "INITIAL", "objects": []}
        async with b.client.post(b.url + "/token", json=backend_token("watched")) as posted:
            assert posted.status == 200, await posted.text()
            etag = posted.headers["etag"]
        created = await until_event(resp, "UPDATE", "watched", timeout=3)  # within a second, give or take load
        assert created["object"]["etag"] == etag and created["object"]["deleted"] is False
        async with b.client.delete(b.url + "/token", headers={"x-waiter-token": "watched"}) as deleted:
            assert deleted.status == 200
        await until_event(resp, "DELETE", "watched", timeout=3)  # soft-deleted tokens leave the listing


async def test_a_watch_ends_at_its_streaming_timeout_and_bad_timeouts_are_refused(make_router, redis_server) -> None:
    a, _ = await two_routers(make_router, redis_server, [])
    async with a.client.get(a.url + "/tokens?watch=true&streaming-timeout=300") as resp:
        assert (await next_message(resp))["type"] == "INITIAL"  # type: ignore[index]
        assert await next_message(resp, timeout=5) is None
    async with a.client.get(
        a.url + "/tokens?watch=true&streaming-timeout=soon", headers={"accept": "application/json"}
    ) as resp:
        assert resp.status == 400
        assert "streaming-timeout is 'soon'" in (await resp.json())["waiter-error"]["message"]


async def test_an_instance_watch_sees_a_service_started_through_the_other_router(make_router, redis_server) -> None:
    a, b = await two_routers(make_router, redis_server, [backend_token("echo")])
    async with b.client.get(b.url + "/apps/instances?watch=true&streaming-timeout=30000") as resp:
        assert resp.status == 200
        assert await next_message(resp) == {"type": "INITIAL", "objects": []}
        async with a.client.get(a.url + "/hello", headers=TOKEN) as served:
            assert served.status == 200
            instance = (await served.text()).split()[-1]
        sid = await a.service_id(TOKEN)
        deadline = time.monotonic() + 10
        while True:
            event = await until_event(resp, "UPDATE", sid, timeout=max(0.1, deadline - time.monotonic()))
            if event["object"]["healthy-instances"]:
                break
        assert [i["id"] for i in event["object"]["healthy-instances"]] == [instance]
    listing = await b.get_json("/apps/instances")
    assert listing == [event["object"]]


async def test_a_stopping_router_ends_its_watches(make_router) -> None:
    r = await make_router([])
    async with r.client.get(r.url + "/tokens?watch=true&streaming-timeout=600000") as resp:
        assert (await next_message(resp))["type"] == "INITIAL"  # type: ignore[index]
        stopping = asyncio.create_task(r.server.stop())
        assert await next_message(resp) is None  # the stream's end, not a connection cut when the drain ran out
        await stopping
