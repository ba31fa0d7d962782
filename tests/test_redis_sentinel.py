"""Redis behind Sentinel: URL parsing, and two routers riding out a real failover of the primary under load.

The failover test runs a real primary, a replica and three Sentinels on loopback (tests/redis_server.py), kills the
primary while both routers proxy requests, and checks that no request failed, tokens and published counts are on the
new primary, the same router keeps the leader lease, and /status names the new primary.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from tests.conftest import FAKE, RunningRouter, backend_token
from tests.redis_server import SentinelGroup, needs_sentinel, running_sentinel_group
from tests.support import eventually
from waiter.redis_client import SentinelTarget, check_url, parse_sentinel_url
from waiter.settings import SettingsError, load_settings, redact_url

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

FAST_SCALING = {"interval-ms": 200, "kill-interval-ms": 300, "publish-interval-ms": 50, "router-ttl-ms": 1500}


# -- the URL ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://h1:26379/svc", SentinelTarget((("h1", 26379),), "svc")),
        (
            "redis+sentinel://:s3cret@10.0.0.1:1,10.0.0.2:2,[::1]:3/my.master-1/4",
            SentinelTarget((("10.0.0.1", 1), ("10.0.0.2", 2), ("::1", 3)), "my.master-1", 4, None, "s3cret"),
        ),
        ("redis+sentinel://bob:pw@h:5/svc/", SentinelTarget((("h", 5),), "svc", 0, "bob", "pw")),
    ],
)
def test_sentinel_urls_parse(url: str, expected: SentinelTarget) -> None:
    assert parse_sentinel_url(url) == expected
    assert check_url(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1/svc", "sentinel 'h1' must be host:port"),
        ("redis+sentinel://h1:0/svc", "sentinel 'h1:0' must be host:port with a port from 1 to 65535"),
        ("redis+sentinel://h1:1,/svc", "sentinel '' must be host:port"),
        ("redis+sentinel://h1:1", "its path must be /service-name or /service-name/db"),
        ("redis+sentinel://h1:1/svc/x", "its db 'x' must be a number 0 or more"),
        ("redis+sentinel://h1:1/svc/0/extra", "its path must be /service-name or /service-name/db"),
        ("http://h1:1/svc", "it must start with redis://, rediss://, unix://, redis+sentinel://"),
    ],
)
def test_bad_redis_urls_are_refused_naming_the_problem(url: str, problem: str) -> None:
    assert problem in (check_url(url) or "")


def test_settings_refuse_a_bad_sentinel_url_naming_key_and_value(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("redis: 'redis+sentinel://:pw@h1:1/svc/x'\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert "redis is 'redis+sentinel://:***@h1:1/svc/x' but its db 'x' must be a number 0 or more" in message
    assert "pw" not in message


def test_settings_accept_a_sentinel_url_and_show_it_without_the_password(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("redis: 'redis+sentinel://:pw@h1:1,h2:2/svc/1'\n")
    settings = load_settings(config)
    assert settings.redis == "redis+sentinel://:pw@h1:1,h2:2/svc/1"
    assert settings.public()["redis"] == "redis+sentinel://:***@h1:1,h2:2/svc/1"
    assert redact_url("redis://u:p@h:1/0") == "redis://u:***@h:1/0"


# -- a real failover ----------------------------------------------------------------------------------------------


async def shared_state(r: RunningRouter) -> dict[str, Any]:
    return (await r.get_json("/status"))["shared-state"]  # type: ignore[no-any-return]


# During the failover redis-py drops connections whose connect to the killed primary (or a Sentinel) was cut short
# without closing them; the collector may find them while this test still runs. Their ResourceWarning is redis-py's
# and says nothing about the router, whose behaviour this test asserts.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@needs_sentinel
async def test_failover_under_load_loses_no_request_nor_token_nor_lease(tmp_path: Path, make_router) -> None:
    async with running_sentinel_group(tmp_path) as group:
        await run_failover(group, make_router)


async def run_failover(group: SentinelGroup, make_router) -> None:  # type: ignore[no-untyped-def]
    config = {"redis": group.url, "autoscaler": {**FAST_SCALING, "burst": {"stable-window-secs": 1}}}
    a = await make_router([], **config)
    b = await make_router([], **config)
    token = backend_token("sentinel-echo", **{"min-instances": 1})
    async with a.client.post(a.url + "/token", data=json.dumps(token), headers={"accept": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        etag = resp.headers["etag"]
    headers = {"x-waiter-token": "sentinel-echo"}
    for r in (a, b):  # B serves the token A saved: it came through Redis
        await eventually(lambda r=r: _serves(r, headers), what="the token to be served through both routers")
    old_primary = await group.primary_address()
    assert (await shared_state(a))["redis"]["primary"] == old_primary
    leader = a if (await shared_state(a))["leader?"] else b
    await eventually(lambda: _is_leader(leader), what="one router to hold the leader lease")
    # The write was answered once the replica confirmed it (WAIT), so the replica has it now, without waiting.
    primary = redis.Redis(port=group.primary.port, decode_responses=True)
    replica = redis.Redis(port=group.replica.port, decode_responses=True)
    try:
        assert int((await primary.info("commandstats"))["cmdstat_wait"]["calls"]) >= 1
        assert await replica.hget(f"waiter:{a.settings.cluster_name}:tokens:data", "sentinel-echo") is not None
    finally:
        await primary.aclose()
        await replica.aclose()

    stop = asyncio.Event()
    statuses: list[int] = []
    errors: list[str] = []

    async def client(r: RunningRouter) -> None:
        while not stop.is_set():
            async with r.client.get(r.url + "/sleep?ms=10", headers=headers) as resp:
                statuses.append(resp.status)
                if resp.status != 200:
                    errors.append(await resp.text())

    load = [asyncio.create_task(client(r)) for r in (a, b, a, b)]
    try:
        await eventually(lambda: _at_least(statuses, 50), what="requests served before the failover")
        group.primary.stop()  # SIGKILL: the Sentinels must notice and promote the replica

        new_primary = f"127.0.0.1:{group.replica.port}"

        async def switched(r: RunningRouter) -> bool:
            state = await shared_state(r)
            return bool(state["available"]) and state["redis"]["primary"] == new_primary

        for r in (a, b):
            await eventually(lambda r=r: switched(r), what=f"router {r.settings.router_id} to switch", timeout=30)
        served = len(statuses)
        await eventually(lambda: _at_least(statuses, served + 50), what="requests served after the failover")
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert statuses and set(statuses) == {200}, errors[:3]
    assert await group.primary_address() == new_primary
    for r in (a, b):
        state = await shared_state(r)
        assert state["redis"]["primary-changes"] >= 1, state
    assert await _is_leader(leader), "the leader lost its lease in the failover"

    sid = await a.service_id(headers)  # of version 1, which served the load
    # Tokens: the one saved before the failover is on the new primary, and writes work there.
    async with b.client.get(b.url + "/token?token=sentinel-echo", headers={"accept": "application/json"}) as resp:
        assert resp.status == 200 and resp.headers["etag"] == etag
    updated = {**token, "version": "2"}
    async with b.client.post(
        b.url + "/token", data=json.dumps(updated), headers={"accept": "application/json", "if-match": etag}
    ) as resp:
        assert resp.status == 200, await resp.text()
    await eventually(lambda: _token_version(a, "2"), what="router A to see the update written on the new primary")

    # Counts: what both routers publish to the new primary adds up to every request they served.
    expected = len(statuses)
    assert await _leader_key(group) == leader.settings.router_id

    async def counts_add_up() -> bool:
        return await _published_total(group, a.settings.cluster_name, sid) >= expected

    await eventually(counts_add_up, what="the published counts on the new primary to add up")


async def _serves(r: RunningRouter, headers: dict[str, str]) -> bool:
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        return resp.status == 200


async def _is_leader(r: RunningRouter) -> bool:
    return bool((await shared_state(r))["leader?"])


async def _at_least(statuses: list[int], n: int) -> bool:
    return len(statuses) >= n


async def _token_version(r: RunningRouter, version: str) -> bool:
    async with r.client.get(r.url + "/token?token=sentinel-echo", headers={"accept": "application/json"}) as resp:
        return resp.status == 200 and (await resp.json()).get("version") == version


async def _new_primary_client(group: SentinelGroup) -> redis.Redis:
    return redis.Redis(port=group.replica.port, decode_responses=True)


async def _leader_key(group: SentinelGroup) -> str | None:
    client = await _new_primary_client(group)
    try:
        keys = await client.keys("waiter:*:leader")
        return await client.get(keys[0]) if keys else None
    finally:
        await client.aclose()


async def _published_total(group: SentinelGroup, cluster: str, sid: str) -> int:
    client = await _new_primary_client(group)
    try:
        total = 0
        for key in await client.keys(f"waiter:{cluster}:stats:*"):
            stats = json.loads(await client.get(key) or "{}")
            total += int(stats.get(sid, [0, 0, 0])[2])
        return total
    finally:
        await client.aclose()
