"""Async requests (docs/api.md §4): a backend's 202 keeps the instance's slot until its status URL says the work is
done, and the /waiter-async/... paths work through any router (two routers sharing Redis and one Marathon)."""

from __future__ import annotations

import pytest

from tests.conftest import backend_token
from tests.redis_server import needs_redis
from tests.support import eventually
from waiter.async_requests import AsyncPath, backend_location, parse, status_path

TOKEN = {"x-waiter-token": "echo"}


@pytest.mark.parametrize(
    ("location", "request_path", "expected"),
    [
        ("async/status/1", "/async", "/async/status/1"),
        ("status/1?x=1", "/jobs/start", "/jobs/status/1?x=1"),
        ("/elsewhere/1", "/async", "/elsewhere/1"),
        ("../up", "/a/b/c", "/a/up"),
        ("http://other/status", "/async", None),
        ("//other/status", "/async", None),
        ("", "/async", None),
    ],
)
def test_backend_location(location: str, request_path: str, expected: str | None) -> None:
    assert backend_location(location, request_path) == expected


def test_status_paths_round_trip() -> None:
    path = status_path("cid/1", "r1", "waiter-service-x", "127.0.0.1", 10001, "/async/status/1?x=1")
    assert path == "/waiter-async/status/cid%2F1/r1/waiter-service-x/127.0.0.1/10001/async/status/1?x=1"
    parsed = parse(path)
    assert parsed == AsyncPath("status", "cid/1", "r1", "waiter-service-x", "127.0.0.1", 10001, "/async/status/1?x=1")
    assert parsed.with_kind("result", "/async/result/1").startswith("/waiter-async/result/cid%2F1/r1/")
    for bad in ("/waiter-async/status/a/b", "/waiter-async/other/a/b/c/h/1/x", "/waiter-async/status/a/b/c/h/port/x"):
        assert parse(bad) is None


@needs_redis
@pytest.mark.schedulers("marathon")
async def test_an_async_request_holds_its_slot_and_is_followed_through_the_other_router(
    make_router, redis_server
) -> None:
    token = backend_token("echo", **{"concurrency-level": 1, "max-instances": 1})
    fast = {"autoscaler": {"interval-ms": 200, "publish-interval-ms": 50, "router-ttl-ms": 1500}}
    a = await make_router([token], redis=redis_server.url, **fast)
    b = await make_router([token], redis=redis_server.url, **fast)
    sid = await a.service_id(TOKEN)
    headers = {**TOKEN, "x-cid": "job-cid", "x-waiter-async-check-interval-secs": "1"}
    async with a.client.post(a.url + "/async?ms=2500", headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["location"]
    prefix = f"/waiter-async/status/job-cid/{a.settings.router_id}/{sid}/"
    assert location.startswith(prefix) and location.endswith("/async/status/1")

    # The instance is still busy with the job: its only slot stays taken.
    busy = {**TOKEN, "x-waiter-queue-timeout": "300", "accept": "application/json"}
    async with a.client.get(a.url + "/hello", headers=busy) as resp:
        assert resp.status == 503

    await eventually(lambda: b.router.registry.get(sid) is not None, timeout=10, what="router B to follow it")

    async def instance_known_on_b() -> bool:
        async with b.client.get(b.url + location) as resp:
            return resp.status != 410

    await eventually(instance_known_on_b, timeout=10, what="router B to know the instance")
    async with b.client.get(b.url + location) as resp:
        assert resp.status == 200 and await resp.text() == "running"

    async def done_on_b() -> bool:
        async with b.client.get(b.url + location, allow_redirects=False) as resp:
            return resp.status == 303

    await eventually(done_on_b, timeout=10, what="the job to be done")
    async with b.client.get(b.url + location, allow_redirects=False) as resp:
        result = resp.headers["location"]
    assert result.startswith(f"/waiter-async/result/job-cid/{a.settings.router_id}/{sid}/")
    async with b.client.get(b.url + result) as resp:
        assert resp.status == 200 and await resp.text() == "result 1"

    async def served_again() -> bool:
        async with a.client.get(a.url + "/hello", headers=busy) as resp:
            return resp.status == 200

    await eventually(served_again, timeout=10, what="the slot to be released once the job is done")

    # A job the client gives up on: completing it through the other router frees the slot long before it ends.
    async with a.client.post(a.url + "/async?ms=60000", headers={**headers, "x-cid": "long-job"}) as resp:
        assert resp.status == 202
        complete = resp.headers["location"].replace("/waiter-async/status/", "/waiter-async/complete/", 1)
    async with a.client.get(a.url + "/hello", headers=busy) as resp:
        assert resp.status == 503
    async with b.client.delete(b.url + complete) as resp:
        assert resp.status == 200
    await eventually(served_again, timeout=10, what="the slot to be released once the job was completed")
    async with b.client.get(b.url + "/waiter-async/status/x/y/waiter-service-nope/127.0.0.1/1/s") as resp:
        assert resp.status == 410  # not an instance of that service: the router refuses to go there
