"""Services as clients see them: /apps, /apps/{id}, DELETE, instance signals, /waiter-ping, /state, maintenance."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import FAKE, RunningRouter, backend_token, on_the_fly_headers
from tests.support import eventually

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

TOKEN = {"x-waiter-token": "echo"}
JSON = {"accept": "application/json"}


async def started(r: RunningRouter, headers: dict[str, str] = TOKEN) -> str:
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    return await r.service_id(headers)


async def test_apps_filters_and_fields(make_router) -> None:
    r = await make_router([backend_token("echo", metadata={"team": "blue"})])
    sid = await started(r)
    fly = await started(r, on_the_fly_headers())
    assert [a["service-id"] for a in await r.get_json("/apps")] == sorted([sid, fly])
    (app,) = await r.get_json("/apps?token=echo")
    assert app["service-id"] == sid
    assert app["current-for-tokens"] == ["echo"]
    assert app["source-tokens"] == [[{"token": "echo", "version": r.router.tokens.get("echo").etag}]]
    assert app["request-metrics"] == {"outstanding": 0, "total": 1}
    assert app["last-request-time"].endswith("Z")
    assert app["scaling-state"] == "stable"
    assert "effective-parameters" not in app
    assert [a["service-id"] for a in await r.get_json("/apps?metadata.team=blue")] == [sid]
    assert [a["service-id"] for a in await r.get_json("/apps?metadata.team=bl.*")] == [sid]
    assert [a["service-id"] for a in await r.get_json("/apps?name=fly")] == [fly]
    assert await r.get_json("/apps?token=nope") == []
    (with_instances,) = await r.get_json("/apps?token=echo&include=healthy-instances&include=effective-parameters")
    assert with_instances["effective-parameters"]["cmd"] == backend_token("echo")["cmd"]
    (healthy,) = with_instances["instances"]["healthy-instances"]
    assert healthy["id"].startswith(sid + ".")


async def test_service_id_pseudo_token(make_router) -> None:
    r = await make_router([backend_token("echo")])
    sid = await started(r)
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": f"^SERVICE-ID#{sid}"}) as resp:
        assert resp.status == 200
        assert (await resp.text()).startswith(f"hello from {sid}.")
    headers = {"x-waiter-token": "^SERVICE-ID#waiter-service-nope", **JSON}
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 404


@pytest.mark.schedulers("local")  # a deleted service's processes end
async def test_delete_service(make_router) -> None:
    r = await make_router([backend_token("echo")])
    sid = await started(r)
    pid = (await r.instances(sid))["active-instances"][0]["shell-scheduler/pid"]
    async with r.client.delete(r.url + f"/apps/{sid}?timeout=abc", headers=JSON) as resp:
        assert resp.status == 400
        assert "timeout is 'abc'" in (await resp.json())["waiter-error"]["message"]
    async with r.client.delete(r.url + f"/apps/{sid}?timeout=5000") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body == {
        "service-id": sid, "success": True, "result": "deleted", "message": f"Deleted {sid}", "routers-agree": True
    }
    assert r.router.registry.scheduler.service_ids() == []
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    async with r.client.get(r.url + f"/apps/{sid}", headers=JSON) as resp:
        assert resp.status == 200  # known, not running (tests/test_service_states.py)
        assert (await resp.json())["status"] == "Inactive"
    async with r.client.delete(r.url + f"/apps/{sid}") as resp:
        assert resp.status == 404
        assert (await resp.json())["result"] == "no-such-service-exists"
    # The next request starts it again.
    assert await started(r) == sid


async def test_a_deleted_service_leaves_no_scaling_state(make_router) -> None:
    r = await make_router([backend_token("echo")])
    sid = await started(r)
    autoscaler = r.router.autoscaler
    await eventually(lambda: sid in autoscaler.decisions, "the leader to decide for the service")
    async with r.client.delete(r.url + f"/apps/{sid}") as resp:
        assert resp.status == 200
    await eventually(lambda: sid not in autoscaler.decisions and sid not in autoscaler.states, "scaling state pruned")


async def test_instance_kill_and_expire_signals(make_router) -> None:
    r = await make_router([backend_token("echo")])
    sid = await started(r)
    (instance,) = (await r.instances(sid))["active-instances"]
    iid = instance["id"]
    base = r.url + f"/apps/{sid}/instance/{iid}"
    async with r.client.get(base + "/kill") as resp:
        assert resp.status == 405
        assert await resp.json() == {"message": "Method not allowed"}
    async with r.client.post(base + "/kill?timeout=-1") as resp:
        assert resp.status == 400
        assert await resp.json() == {"message": "Invalid timeout specified: -1"}
    async with r.client.post(r.url + f"/apps/{sid}/instance/{sid}.nope/kill") as resp:
        assert resp.status == 404
        assert (await resp.json())["signal-response"]["success"] is False
    async with r.client.post(base + "/expire") as resp:
        assert resp.status == 200
        assert (await resp.json())["signal-response"]["success"] is True
    state = await r.get_json(f"/state/{sid}")
    assert state["state"]["tracked"][iid]["expired?"] is True
    async with r.client.post(base + "/kill?force=TRUE") as resp:
        assert resp.status == 200
        assert (await resp.json())["signal-response"]["success"] is True

    async def killed() -> bool:
        return any(i["id"] == iid for i in (await r.instances(sid))["killed-instances"])

    await eventually(killed, what="the instance in killed-instances")


async def test_waiter_ping_starts_the_service(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/waiter-ping", headers={**TOKEN, "x-waiter-timeout": "20000"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["ping-response"]["result"] == "received-response"
    assert body["ping-response"]["status"] == 200
    assert body["ping-response"]["body"] == "ok"
    assert body["service-state"]["healthy?"] is True
    assert body["service-state"]["status"] == "Running"
    assert body["service-description"]["version"] == "1"
    async with r.client.get(r.url + "/waiter-ping", headers={"x-waiter-token": "nope"}) as resp:
        assert resp.status == 200
        result = (await resp.json())["ping-response"]
    assert result["result"] == "descriptor-error" and result["status"] == 404


async def test_waiter_ping_reports_a_service_that_cannot_start(make_router) -> None:
    r = await make_router([backend_token("echo", env={"HEALTH_STATUS": "500"})])
    headers = {**TOKEN, "x-waiter-timeout": "600"}
    async with r.client.get(r.url + "/waiter-ping", headers=headers) as resp:
        body = await resp.json()
    assert body["ping-response"]["result"] in ("timed-out", "waiter-response")
    assert body["service-state"]["healthy?"] is False


@pytest.mark.parametrize("path", ["/hello", "/waiter-ping"])
async def test_maintenance_answers_503_with_the_tokens_message(make_router, path: str) -> None:
    token = backend_token("echo", maintenance={"message": "Down for upgrades until noon."})
    r = await make_router([token])
    async with r.client.get(r.url + path, headers={**TOKEN, **JSON}) as resp:
        assert resp.status == 503
        error: dict[str, Any] = (await resp.json())["waiter-error"]
    assert error["message"] == "Down for upgrades until noon."
    assert r.router.registry.scheduler.service_ids() == []


async def test_state_endpoints(make_router) -> None:
    r = await make_router([backend_token("echo")])
    sid = await started(r)
    state = await r.get_json("/state")
    assert state["router-id"] == r.settings.router_id
    services = await r.get_json("/state/services")
    assert services["state"][sid]["healthy-instances"] == 1
    scheduler = await r.get_json("/state/scheduler")
    assert scheduler["state"]["kind"] == r.router.registry.scheduler.kind == "fake"
    assert list(scheduler["state"]["services"]) == [sid]
    async with r.client.get(r.url + "/state/nothing") as resp:
        assert resp.status == 404


async def test_metrics_are_prometheus_text(make_router) -> None:
    r = await make_router([backend_token("echo")])
    sid = await started(r)
    async with r.client.get(r.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert f'waiter_requests_total{{service_id="{sid}"}} 1.0' in text
    assert f'waiter_instances{{service_id="{sid}",state="healthy"}} 1.0' in text
    assert "waiter_scaling_leader 1.0" in text
