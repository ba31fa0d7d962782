"""Service lifecycle: deployment errors, idle and stale reaping, versions and fallback, instance expiry."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tests.conftest import RunningRouter, backend_token
from tests.support import eventually
from waiter.autoscaler import Candidate, choose_victim
from waiter.lifecycle import ServiceActivity, deployment_error, in_fallback, is_expired, reap_reason
from waiter.scheduler.base import Instance, InstanceFlag

TOKEN = {"x-waiter-token": "echo"}
JSON = {"accept": "application/json"}
FAST = {"lifecycle": {"reap-interval-secs": 0.2, "minute-secs": 0.5}, "autoscaler": {"interval-ms": 200}}


def failed(started_at: float, code: int | None = None, *flags: str) -> Instance:
    return Instance(
        id=f"s.{started_at}",
        service_id="s",
        host="h",
        port=1,
        started_at=started_at,
        exit_code=code,
        flags=frozenset(flags),
        failed=True,
    )


NEVER = InstanceFlag.NEVER_PASSED_HEALTH_CHECKS
CONNECTED, RESPONDED = InstanceFlag.HAS_CONNECTED, InstanceFlag.HAS_RESPONDED
TIMED_OUT, MEMORY = InstanceFlag.HEALTH_CHECK_TIMED_OUT, InstanceFlag.MEMORY_LIMIT_EXCEEDED


@pytest.mark.parametrize(
    ("instances", "since", "expected"),
    [
        pytest.param([], 0, None, id="nothing-failed"),
        pytest.param([failed(1, 1)], 0, None, id="one-failure-is-not-a-pattern"),
        pytest.param(
            [failed(1, -15, NEVER)], 0, "Unable to connect to run health checks", id="one-grace-period-never-listened"
        ),
        pytest.param([failed(1, -15, NEVER, CONNECTED)], 0, None, id="one-grace-period-connected"),
        pytest.param(
            [failed(1, 1), failed(2, 1)],
            0,
            "Invalid startup command (every instance exited with code 1)",
            id="same-exit-code",
        ),
        pytest.param([failed(1, 1), failed(2, 2)], 0, None, id="different-exit-codes"),
        pytest.param([failed(1, -9, MEMORY), failed(2, -9, MEMORY)], 0, "Not enough memory allocated", id="memory"),
        pytest.param(
            [failed(1, -15, NEVER), failed(2, -15, NEVER)],
            0,
            "Unable to connect to run health checks",
            id="never-listened",
        ),
        pytest.param(
            [failed(1, -15, NEVER, CONNECTED, TIMED_OUT), failed(2, -15, NEVER, CONNECTED, TIMED_OUT)],
            0,
            "Health check timed out",
            id="timed-out",
        ),
        pytest.param(
            [failed(1, -15, NEVER, CONNECTED, RESPONDED), failed(2, -15, NEVER, CONNECTED, RESPONDED)],
            0,
            "Health check returned an invalid response",
            id="bad-health-response",
        ),
        pytest.param([failed(1, 1), failed(2, 1)], 1.5, None, id="failures-before-last-healthy-ignored"),
        pytest.param([failed(1, 1), failed(2, -15, NEVER)], 0, None, id="mixed-causes"),
    ],
)
def test_deployment_error(instances: list[Instance], since: float, expected: str | None) -> None:
    assert deployment_error(instances, since) == expected


def activity(**kw: Any) -> ServiceActivity:
    base: dict[str, Any] = {"service_id": "s", "outstanding": 0, "last_activity": 0.0, "idle_timeout_mins": 30}
    base.update(kw)
    return ServiceActivity(**base)


@pytest.mark.parametrize(
    ("service", "now", "expected"),
    [
        pytest.param(activity(), 30 * 60, None, id="idle-exactly-the-timeout"),
        pytest.param(activity(), 30 * 60 + 1, "idle for more than 30 minute(s)", id="idle-past-timeout"),
        pytest.param(activity(outstanding=1), 10**6, None, id="never-while-busy"),
        pytest.param(activity(idle_timeout_mins=0), 10**6, None, id="idle-timeout-zero-never"),
        pytest.param(
            activity(idle_timeout_mins=0, stale_since=100.0, stale_timeout_mins=1, fallback_period_secs=10),
            169,
            None,
            id="stale-not-yet",
        ),
        pytest.param(
            activity(idle_timeout_mins=0, stale_since=100.0, stale_timeout_mins=1, fallback_period_secs=10),
            170,
            "replaced by a newer version more than 1 minute(s) ago",
            id="stale-due",
        ),
        pytest.param(
            activity(idle_timeout_mins=0, broken_since=0.0),
            1801,
            "unable to start for more than 1800 seconds",
            id="broken-too-long",
        ),
        pytest.param(activity(idle_timeout_mins=0, broken_since=0.0), 1799, None, id="broken-not-long"),
    ],
)
def test_reap_reason(service: ServiceActivity, now: float, expected: str | None) -> None:
    assert reap_reason(service, now, broken_timeout_secs=1800) == expected


def test_reap_reason_minutes_can_be_shortened() -> None:
    assert reap_reason(activity(idle_timeout_mins=2), 1.1, 1800, minute_secs=0.5) == "idle for more than 2 minute(s)"


@pytest.mark.parametrize(
    ("started", "mins", "flagged", "now", "expected"),
    [
        pytest.param(0.0, 10, False, 600, False, id="young"),
        pytest.param(0.0, 10, False, 601, True, id="old"),
        pytest.param(0.0, 0, False, 10**9, False, id="zero-never"),
        pytest.param(0.0, 10, True, 1, True, id="flagged"),
    ],
)
def test_is_expired(started: float, mins: int, flagged: bool, now: float, expected: bool) -> None:
    instance = Instance(id="s.a", service_id="s", host="h", port=1, started_at=started)
    assert is_expired(instance, mins, flagged, now) is expected


@pytest.mark.parametrize(
    ("updated", "period", "now", "expected"),
    [(100.0, 300, 399, True), (100.0, 300, 400, False), (100.0, 0, 101, False), (None, 300, 1, False)],
    ids=["inside", "over", "disabled", "never-updated"],
)
def test_in_fallback(updated: float | None, period: int, now: float, expected: bool) -> None:
    assert in_fallback(updated, period, now) is expected


def cand(
    name: str, started: float, healthy: bool = True, expired: bool = False, starting: bool = False, in_use: int = 0
) -> Candidate:
    return Candidate(name, started, healthy, expired, starting, in_use)


@pytest.mark.parametrize(
    ("candidates", "victim"),
    [
        pytest.param([cand("old", 1), cand("young", 2)], "young", id="youngest-first"),
        pytest.param([cand("old", 1), cand("young", 2, in_use=1)], "old", id="busy-never"),
        pytest.param([cand("a", 1, in_use=1)], None, id="all-busy"),
        pytest.param([cand("ok", 1), cand("sick", 0, healthy=False)], "sick", id="unhealthy-first"),
        pytest.param([cand("ok", 2), cand("exp", 1, expired=True)], "exp", id="expired-before-healthy"),
        pytest.param(
            [cand("exp", 1, expired=True), cand("new", 2, healthy=False, starting=True)],
            "exp",
            id="replacement-spared-while-expired-exist",
        ),
        pytest.param(
            [cand("new", 2, healthy=False, starting=True), cand("ok", 1)], "new", id="starting-killed-normally"
        ),
    ],
)
def test_choose_victim(candidates: list[Candidate], victim: str | None) -> None:
    assert choose_victim(candidates) == victim


# -- end to end, with short settings ---------------------------------------------------------------------------


async def test_idle_service_is_deleted_and_restarts_on_the_next_request(make_router) -> None:
    r = await make_router([backend_token("echo", **{"idle-timeout-mins": 2})], **FAST)
    sid = await r.service_id(TOKEN)
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200

    async def gone() -> bool:
        return r.router.registry.get(sid) is None and sid not in r.router.registry.scheduler.service_ids()

    await eventually(gone, timeout=10, what="the idle service to be deleted")
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    assert sid in r.router.registry.scheduler.service_ids()


async def deployment_error_of(r: RunningRouter, token: dict[str, Any]) -> str:
    headers = {**TOKEN, **JSON, "x-waiter-queue-timeout": "30000"}
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 503
        message: str = (await resp.json())["waiter-error"]["message"]
    sid = await r.service_id(TOKEN)
    (app,) = await r.get_json("/apps")
    assert app["status"] == "Failing"
    assert app["deployment-error-message"] == message
    # New requests get the error at once, without waiting in the queue.
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 503
        assert (await resp.json())["waiter-error"]["message"] == message
    assert sid
    return message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"cmd": "exit 1"},
            "Deployment error: Invalid startup command (every instance exited with code 1)",
            id="exits-1",
        ),
        pytest.param(
            {"cmd": "exec sleep 60", "grace-period-secs": 1},
            "Deployment error: Unable to connect to run health checks",
            id="never-listens",
        ),
        pytest.param(
            # the backend must get to answer (a busy machine can take a second to start it): 3 s, not 1
            {"env": {"HEALTH_STATUS": "500"}, "grace-period-secs": 3},
            "Deployment error: Health check returned an invalid response",
            id="health-500",
        ),
        pytest.param(
            {"cmd": f"exec {sys.executable} -c 'import time; b = bytearray(300 << 20); time.sleep(60)'", "mem": 64},
            "Deployment error: Not enough memory allocated",
            id="memory",
        ),
    ],
)
async def test_deployment_errors_answer_queued_requests_within_seconds(make_router, fields, expected) -> None:
    r = await make_router(
        [backend_token("echo", **fields)], scheduler={"kind": "local", "local": {"memory-check-interval-secs": 0.2}}
    )
    # the queued request gets the deployment error itself, not the queue timeout's 503 minutes later
    # Its first line says what kind of failure it is; the lines after it, what the instance said (test_messages.py).
    assert (await deployment_error_of(r, fields)).split("\n")[0] == expected


async def post_token(r: RunningRouter, name: str, body: dict[str, Any]) -> None:
    async with r.client.get(r.url + f"/token?token={name}") as resp:
        etag = resp.headers.get("etag", "") if resp.status == 200 else ""
    async with r.client.post(r.url + f"/token?token={name}", json=body, headers={"if-match": etag}) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.schedulers("fake")
async def test_token_update_under_load_switches_versions_without_a_failed_request(make_router) -> None:
    r = await make_router(**FAST)
    # A fallback period well past the new version's 1 s start; the old one is reaped once it and the stale timeout
    # have passed.
    token = backend_token("echo", **{"stale-timeout-mins": 1, "fallback-period-secs": 5})
    del token["token"]
    await post_token(r, "echo", token)
    old = await r.service_id(TOKEN)
    stop = asyncio.Event()
    bodies: list[str] = []
    statuses: list[int] = []

    async def client() -> None:
        while not stop.is_set():
            async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
                statuses.append(resp.status)
                bodies.append(await resp.text())

    load = [asyncio.create_task(client()) for _ in range(3)]
    try:
        await eventually(_async(lambda: len(bodies) > 10), what="steady load on the first version")
        # The new version takes a second to start: meanwhile the old one keeps serving (fallback).
        await post_token(r, "echo", {**token, "version": "2", "env": {"STARTUP_DELAY_MS": "1000"}})
        new = await r.service_id(TOKEN)
        assert new != old
        served_by_old_after_update = len(bodies)
        await eventually(
            _async(lambda: any(b.startswith(f"hello from {new}.") for b in bodies)),
            timeout=20,
            what="the new version to serve",
        )
        assert any(b.startswith(f"hello from {old}.") for b in bodies[served_by_old_after_update:])

        async def old_reaped() -> bool:
            return old not in r.router.registry.scheduler.service_ids()

        await eventually(old_reaped, timeout=20, what="the old version to be deleted after its stale timeout")
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert set(statuses) == {200}
    apps = await r.get_json("/apps")
    assert [(a["service-id"], a["current-for-tokens"]) for a in apps] == [(new, ["echo"])]


def _async(pred):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(pred())

    return check


async def test_expired_instance_is_replaced_without_a_failed_request(make_router) -> None:
    r = await make_router([backend_token("echo")], **FAST)
    sid = await r.service_id(TOKEN)
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        first = (await resp.text()).split()[-1]
    stop = asyncio.Event()
    statuses: list[int] = []

    async def client() -> None:
        while not stop.is_set():
            async with r.client.get(r.url + "/sleep?ms=30", headers=TOKEN) as resp:
                statuses.append(resp.status)

    load = [asyncio.create_task(client())]
    try:
        async with r.client.post(r.url + f"/apps/{sid}/instance/{first}/expire") as resp:
            assert resp.status == 200

        async def replaced() -> bool:
            instances = await r.instances(sid)
            active = instances["active-instances"]
            return any(i["id"] == first for i in instances["killed-instances"]) and any(i["healthy?"] for i in active)

        await eventually(replaced, timeout=20, what="the expired instance to be replaced and killed")
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert statuses and set(statuses) == {200}
