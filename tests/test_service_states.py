"""What Waiter's clients see of a service across its life, through two routers sharing a test-owned Redis and one
Marathon (the emulator): a deleted service stays known as Inactive and a ping starts it again (docs/api.md §1.6,
§1.7, §1.9); expired instances carry the expired flag until they are killed (§6)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RunningRouter, backend_token
from tests.redis_server import needs_redis
from tests.support import eventually

pytestmark = [needs_redis, pytest.mark.schedulers("marathon")]

TOKEN = {"x-waiter-token": "echo"}
FAST = {"autoscaler": {"interval-ms": 200, "publish-interval-ms": 50, "router-ttl-ms": 1500}}


async def two_routers(make_router, redis_server, token: dict[str, Any]) -> tuple[RunningRouter, RunningRouter]:  # type: ignore[no-untyped-def]
    a = await make_router([token], redis=redis_server.url, **FAST)
    b = await make_router([token], redis=redis_server.url, **FAST)
    return a, b


async def detail(r: RunningRouter, sid: str) -> dict[str, Any]:
    return await r.get_json(f"/apps/{sid}")  # type: ignore[no-any-return]


async def test_a_deleted_service_is_inactive_on_every_router_and_a_ping_starts_it_again(
    make_router, redis_server
) -> None:
    a, b = await two_routers(make_router, redis_server, backend_token("echo"))
    async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
        served_by = (await resp.text()).split()[-1]
    sid = await a.service_id(TOKEN)
    async with a.client.delete(a.url + f"/apps/{sid}?timeout=10000") as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["routers-agree"] is True

    for r in (a, b):
        body = await detail(r, sid)
        assert body["status"] == "Inactive"
        assert body["service-id"] == sid
        assert body["num-active-instances"] == 0
        assert body["instances"]["active-instances"] == []
        assert served_by in [i["id"] for i in body["instances"]["killed-instances"]]
        assert all(i["killed?"] for i in body["instances"]["killed-instances"])
        assert body["request-metrics"] == {"outstanding": 0, "total": 0}
        assert body["service-description"]["cmd"] == backend_token("echo")["cmd"]
        assert body["current-for-tokens"] == ["echo"]
        assert sid not in [s["service-id"] for s in await r.get_json("/apps")]

    # Deleting or killing what is not running answers as for an unknown service; it stays Inactive.
    async with b.client.delete(b.url + f"/apps/{sid}") as resp:
        assert resp.status == 404
        assert (await resp.json())["result"] == "no-such-service-exists"
    async with b.client.post(b.url + f"/apps/{sid}/instance/{served_by}/kill") as resp:
        assert resp.status == 404
    assert (await detail(b, sid))["status"] == "Inactive"

    # A ping by service id (waiter ping --service-id) through the other router brings it back.
    headers = {"x-waiter-token": f"^SERVICE-ID#{sid}", "x-waiter-timeout": "30000"}
    async with b.client.get(b.url + "/waiter-ping", headers=headers) as resp:
        assert resp.status == 200
        ping = await resp.json()
    assert ping["ping-response"]["result"] == "received-response", ping
    assert ping["ping-response"]["status"] == 200
    assert ping["service-state"]["service-id"] == sid

    async def running_on_a() -> bool:
        return a.router.registry.get(sid) is not None and (await detail(a, sid))["status"] == "Running"

    await eventually(running_on_a, timeout=15, what="router A to see the service running again")


async def test_an_unknown_service_is_still_404(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/apps/waiter-service-nothing") as resp:
        assert resp.status == 404


def active(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body["instances"]["active-instances"]  # type: ignore[no-any-return]


async def test_an_instance_expired_through_one_router_is_flagged_on_both_until_it_is_replaced(
    make_router, redis_server
) -> None:
    a, b = await two_routers(make_router, redis_server, backend_token("echo"))
    async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    sid = await a.service_id(TOKEN)

    async def b_follows() -> bool:
        return b.router.registry.get(sid) is not None and len(active(await detail(b, sid))) == 1

    await eventually(b_follows, timeout=10, what="router B to follow the service")
    (first,) = active(await detail(a, sid))
    assert "expired" not in first["flags"]
    async with b.client.post(b.url + f"/apps/{sid}/instance/{first['id']}/expire") as resp:
        assert resp.status == 200
        assert (await resp.json())["signal-response"]["success"] is True

    async def flagged_on(r: RunningRouter) -> bool:
        listed = {i["id"]: i for i in active(await detail(r, sid))}
        return first["id"] in listed and "expired" in listed[first["id"]]["flags"]

    for r in (b, a):
        await eventually(lambda r=r: flagged_on(r), timeout=10, what=f"the expired flag on {r.settings.router_id}")
        (app,) = [s for s in await r.get_json("/apps") if s["service-id"] == sid]
        assert app["instance-counts"]["expired-instances"] >= 1

    async def replaced() -> bool:
        body = await detail(a, sid)
        ids = [i["id"] for i in active(body)]
        return first["id"] not in ids and any(i["healthy?"] for i in active(body))

    await eventually(replaced, timeout=30, what="the expired instance to be replaced and killed")
    assert all("expired" not in i["flags"] for i in active(await detail(a, sid)))


@pytest.mark.schedulers("local")
async def test_an_instance_older_than_instance_expiry_mins_is_flagged(make_router) -> None:
    # A "minute" of 0.5 s: the instance expires half a second after it started.
    r = await make_router([backend_token("echo", **{"instance-expiry-mins": 1})], lifecycle={"minute-secs": 0.5})
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    sid = await r.service_id(TOKEN)

    async def some_flagged() -> bool:
        return any("expired" in i["flags"] for i in active(await detail(r, sid)))

    await eventually(some_flagged, timeout=10, what="an instance flagged expired")


async def test_state_and_settings_describe_both_routers_and_the_shared_scheduler(make_router, redis_server) -> None:
    a, b = await two_routers(make_router, redis_server, backend_token("echo"))
    async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    sid = await a.service_id(TOKEN)
    ids = sorted([a.settings.router_id, b.settings.router_id])

    async def both_listed() -> bool:
        listed = [sorted((await r.get_json("/state/maintainer"))["state"]["routers"]) for r in (a, b)]
        return listed == [ids, ids]

    await eventually(both_listed, timeout=10, what="/state/maintainer of each router to list both")
    maintainer = (await b.get_json("/state/maintainer"))["state"]
    assert maintainer["routers"][a.settings.router_id].startswith("http://")
    overview = await a.get_json("/state")
    assert sorted(overview["routers"]) == ids
    for name, url in overview["details"].items():
        async with a.client.get(url) as resp:
            assert resp.status == 200, name
            assert (await resp.json())["router-id"] == a.settings.router_id
    scheduler = (await a.get_json("/state/scheduler"))["state"]
    assert scheduler["kind"] == "marathon" and scheduler["services"][sid]["scheduled"] == 1

    async def leader_decided() -> bool:
        states = [(await r.get_json("/state/autoscaler"))["state"] for r in (a, b)]
        return any(s["leader?"] and sid in s["services"] for s in states)

    await eventually(leader_decided, timeout=10, what="the leader's autoscaler state to list the service")
    await eventually(lambda: b.router.registry.get(sid) is not None, timeout=10, what="router B to follow it")
    assert "tracked" in (await b.get_json(f"/state/{sid}"))["state"]

    settings = await a.get_json("/settings")
    assert settings["scheduler-config"]["kind"] == "marathon"
    assert settings["scheduler-syncer-interval-secs"] == 0.1
    assert settings["cluster-config"]["name"] == a.settings.cluster_name
    assert settings["messages"]["bad-startup-command"] == "Invalid startup command"
    assert settings["redis"] == redis_server.url


async def test_overrides_and_suspension_apply_on_every_router(make_router, redis_server) -> None:
    a, b = await two_routers(make_router, redis_server, backend_token("echo"))
    async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    sid = await a.service_id(TOKEN)
    await eventually(lambda: b.router.registry.get(sid) is not None, timeout=10, what="router B to follow it")
    body = await detail(b, sid)
    assert body["service-description-overrides"] == {"overrides": {}}
    assert body["service-suspended-state"] == {"suspended": False}

    for bad, named in (({"cmd": "exec true"}, "cmd"), ({"min-instances": 0}, "min-instances"), ([], "JSON object")):
        async with b.client.post(
            b.url + f"/apps/{sid}/override", json=bad, headers={"accept": "application/json"}
        ) as resp:
            assert resp.status == 400
            assert named in (await resp.json())["waiter-error"]["message"]
    assert (await b.get_json(f"/apps/{sid}/override"))["overrides"] == {}

    async with b.client.post(b.url + f"/apps/{sid}/override", json={"min-instances": 2}) as resp:
        assert resp.status == 200, await resp.text()
    assert await a.service_id(TOKEN) == sid  # an override never makes a new service

    async def two_running() -> bool:
        body = await detail(a, sid)
        return (
            body["service-description-overrides"]["overrides"] == {"min-instances": 2}
            and sum(i["healthy?"] for i in active(body)) == 2
        )

    await eventually(two_running, timeout=30, what="the override's min-instances to start a second instance")
    shown = (await detail(a, sid))["service-description-overrides"]
    assert shown["last-updated-by"] and shown["time"].endswith("Z")
    assert (await a.get_json(f"/apps/{sid}?effective-parameters=true"))["effective-parameters"]["min-instances"] == 2
    async with a.client.delete(a.url + f"/apps/{sid}/override") as resp:
        assert resp.status == 200
    await eventually(
        lambda: b.router.registry.get(sid).override is None,  # type: ignore[union-attr]
        timeout=10,
        what="router B to drop the override",
    )

    async with a.client.post(a.url + f"/apps/{sid}/suspend") as resp:
        assert resp.status == 200
    assert (await detail(a, sid))["service-suspended-state"]["suspended"] is True

    async def refused_on_b() -> bool:
        async with b.client.get(b.url + "/hello", headers={**TOKEN, "accept": "application/json"}) as resp:
            return resp.status == 503 and (await resp.json())["waiter-error"]["message"] == "Service has been suspended"

    await eventually(refused_on_b, timeout=10, what="router B to refuse requests for the suspended service")
    async with b.client.post(b.url + f"/apps/{sid}/resume") as resp:
        assert resp.status == 200

    async def served_on_a() -> bool:
        async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:
            return resp.status == 200

    await eventually(served_on_a, timeout=10, what="router A to serve the resumed service")
