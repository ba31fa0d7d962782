"""End to end through the router to real backend processes, on every scheduler back-end (local, emulated clusters)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import Cluster, RunningRouter, backend_token, on_the_fly_headers
from tests.redis_server import REDIS_SERVER, running_redis
from tests.support import eventually, free_port

# Every test runs on every scheduler back-end, except those pinned to "local": they never reach a scheduler.
pytestmark = pytest.mark.schedulers()
local_only = pytest.mark.schedulers("local")

TOKEN = {"x-waiter-token": "echo"}


async def healthy_instances(r: RunningRouter, sid: str) -> list[dict[str, Any]]:
    return [i for i in (await r.instances(sid))["active-instances"] if i["healthy?"]]


async def instance_stats(r: RunningRouter, sid: str) -> list[dict[str, Any]]:
    """Each instance's own counts; waits until every active instance answers its health check."""

    async def all_healthy() -> bool:
        return all(i["healthy?"] for i in (await r.instances(sid))["active-instances"])

    await eventually(all_healthy, what="every instance to be healthy")
    stats = []
    for inst in (await r.instances(sid))["active-instances"]:
        async with r.client.get(f"http://{inst['host']}:{inst['port']}/stats") as resp:
            stats.append(await resp.json())
    return stats


async def test_cold_start_then_warm(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/hello", headers={**TOKEN, "x-cid": "my-cid"}) as resp:
        assert resp.status == 200
        body = await resp.text()
        assert resp.headers["x-cid"] == "my-cid"
    sid = await r.service_id(TOKEN)
    assert body.startswith(f"hello from {sid}.")
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
        assert resp.headers["x-cid"]  # generated when the client sent none
    apps = await r.get_json("/apps")
    assert [a["service-id"] for a in apps] == [sid]
    assert apps[0]["status"] == "Running"
    assert apps[0]["request-metrics"]["total"] == 2


async def test_200_concurrent_requests_before_first_instance_is_healthy(make_router) -> None:
    token = backend_token("echo", env={"STARTUP_DELAY_MS": "1500"}, **{"concurrency-level": 10, "max-instances": 4})
    r = await make_router([token])

    async def one(i: int) -> str:
        async with r.client.get(r.url + f"/sleep?ms=20&id={i}", headers=TOKEN) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    bodies = await asyncio.gather(*(one(i) for i in range(200)))
    assert bodies == [f"slept {i}" for i in range(200)]
    sid = await r.service_id(TOKEN)
    stats = await instance_stats(r, sid)
    assert sum(s["total"] for s in stats) == 200  # none duplicated
    assert all(s["peak"] <= 10 for s in stats)
    # Sized by throughput, not by the queue that piled up during the cold start (200 / 10 slots = max-instances
    # 4): 200 requests of 20 ms are 4 slot-seconds, arriving at most at 200/1.5 s; one instance of 10 slots
    # serves them, plus one more for the queue (Little's law, waiter.scaling.load_need).
    detail = await r.get_json(f"/apps/{sid}")
    assert detail["num-active-instances"] <= 2


async def test_concurrency_level_is_never_exceeded(make_router) -> None:
    r = await make_router([backend_token("echo", **{"concurrency-level": 2, "max-instances": 2, "min-instances": 2})])
    sid = await r.service_id(TOKEN)
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    await eventually(lambda: _count_healthy(r, sid, 2), what="two healthy instances")

    async def one() -> int:
        async with r.client.get(r.url + "/sleep?ms=100", headers=TOKEN) as resp:
            return resp.status

    assert await asyncio.gather(*(one() for _ in range(40))) == [200] * 40
    stats = await instance_stats(r, sid)
    assert len(stats) == 2
    assert max(s["peak"] for s in stats) == 2  # the limit was reached ...
    assert all(s["peak"] <= 2 for s in stats)  # ... and never exceeded


async def _count_healthy(r: RunningRouter, sid: str, n: int) -> bool:
    return len(await healthy_instances(r, sid)) >= n


async def test_queue_full_answers_503(make_router) -> None:
    r = await make_router([backend_token("echo", **{"max-queue-length": 2, "max-instances": 1})])
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    busy = asyncio.create_task(r.client.get(r.url + "/sleep?ms=3000", headers=TOKEN))
    sid = await r.service_id(TOKEN)
    service = r.router.registry.get(sid)
    assert service is not None
    await eventually(_async(lambda: service.reservations.in_flight == 1), what="the slow request in flight")
    queued = [asyncio.create_task(r.client.get(r.url + "/hello", headers=TOKEN)) for _ in range(2)]
    await eventually(_async(lambda: service.reservations.queued == 2), what="two queued requests")
    async with r.client.get(r.url + "/hello", headers={**TOKEN, "accept": "application/json"}) as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["waiter-error"]["message"] == "Max queue length exceeded"
    assert body["waiter-error"]["details"] == {"current-queue-length": 2, "max-queue-length": 2}
    for task in [busy, *queued]:
        resp = await task
        assert resp.status == 200
        resp.release()


def _async(pred):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(pred())

    return check


async def test_queue_timeout_answers_503(make_router) -> None:
    r = await make_router([backend_token("echo", **{"max-instances": 1})])
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    busy = asyncio.create_task(r.client.get(r.url + "/sleep?ms=2000", headers=TOKEN))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    headers = {**TOKEN, "x-waiter-queue-timeout": "300", "accept": "text/plain"}
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 503
        text = await resp.text()
    assert time.monotonic() - started < 1.5
    assert "After 0.3 seconds, no instance available to handle request." in text
    assert "Check that your service is able to scale properly!" in text
    (await busy).release()


async def test_backend_idle_timeout_answers_504(make_router) -> None:
    r = await make_router([backend_token("echo")])
    headers = {**TOKEN, "x-waiter-timeout": "300", "accept": "application/json"}
    async with r.client.get(r.url + "/sleep?ms=3000", headers=headers) as resp:
        assert resp.status == 504
        assert (await resp.json())["waiter-error"]["message"] == "Request to service backend timed out"


async def test_backend_crashing_mid_response_ends_cleanly_and_is_replaced(make_router) -> None:
    r = await make_router([backend_token("echo")])
    sid = await r.service_id(TOKEN)
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        first = await resp.text()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with asyncio.timeout(10):
            async with r.client.get(r.url + "/crash", headers=TOKEN) as resp:
                assert resp.status == 200
                await resp.read()
    # The crash is recorded, and a replacement serves again.

    async def crash_recorded() -> bool:
        return any(i["id"] in first for i in (await r.instances(sid))["failed-instances"])

    await eventually(crash_recorded, what="the crashed instance in failed-instances")
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200, await resp.text()
        second = await resp.text()
    assert second != first
    failed = (await r.instances(sid))["failed-instances"]
    assert failed[0]["exit-code"] == 1 and failed[0]["failed?"] is True
    # "Exited with code 1" locally; a cluster's own words ("Command exited with status 1") elsewhere.
    assert failed[0]["message"].endswith(" 1")


async def test_backend_crashing_before_answering_gives_502(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    async with r.client.get(r.url + "/crash-before", headers={**TOKEN, "accept": "application/json"}) as resp:
        assert resp.status == 502
        assert "Request to service backend failed" in (await resp.json())["waiter-error"]["message"]


async def test_connection_refused_is_retried_on_another_instance(make_router) -> None:
    r = await make_router([backend_token("echo", **{"min-instances": 2, "max-instances": 2})])
    sid = await r.service_id(TOKEN)
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    await eventually(lambda: _count_healthy(r, sid, 2), what="two healthy instances")
    victim = (await healthy_instances(r, sid))[0]
    victim_url = f"http://{victim['host']}:{victim['port']}"
    async with r.client.get(victim_url + "/close-listener") as resp:
        assert resp.status == 200

    async def refused() -> bool:
        try:
            async with aiohttp.ClientSession() as direct, direct.get(victim_url + "/hello"):
                return False
        except aiohttp.ClientConnectorError:
            return True

    await eventually(refused, what="the victim to refuse connections")
    statuses = []
    for _ in range(10):
        async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
            statuses.append(resp.status)
            assert victim["id"] not in await resp.text()
    assert statuses == [200] * 10


async def _chunks(total: int, size: int = 1 << 20) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (size // 256)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


async def test_100_mb_streamed_each_way(make_router) -> None:
    r = await make_router([backend_token("echo", mem=512)])
    total = 100 * 1024 * 1024
    expected = hashlib.sha256()
    async for piece in _chunks(total):
        expected.update(piece)
    async with r.client.post(r.url + "/upload", data=_chunks(total), headers=TOKEN) as resp:
        assert resp.status == 200
        assert await resp.json() == {"bytes": total, "sha256": expected.hexdigest()}
    for chunked in ("false", "true"):
        received = 0
        async with r.client.get(r.url + f"/download?bytes={total}&chunked={chunked}", headers=TOKEN) as resp:
            assert resp.status == 200
            async for piece in resp.content.iter_any():
                received += len(piece)
        assert received == total


async def test_streaming_response_is_passed_through_as_it_arrives(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/stream?chunks=3&delay_ms=400", headers=TOKEN) as resp:
        assert resp.status == 200
        first = await resp.content.readline()
        first_at = time.time()
        rest = (await resp.read()).decode().splitlines()
    assert first.startswith(b"chunk 0")
    last_sent_at = float(rest[-1].split(" at ")[1])
    assert first_at < last_sent_at  # the first chunk arrived before the backend wrote the last one


async def test_websocket_echo(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.ws_connect(r.url + "/ws", headers=TOKEN) as ws:
        await ws.send_str("ping")
        assert (await ws.receive_str()) == "echo: ping"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_bytes()) == b"\x00\x01"


async def test_headers_forwarded_stripped_and_added(make_router) -> None:
    r = await make_router([backend_token("echo")])
    headers = {**TOKEN, "x-waiter-debug": "true", "x-cid": "abc", "x-custom": "kept", "connection": "keep-alive"}
    async with r.client.get(r.url + "/headers", headers=headers) as resp:
        assert resp.status == 200
        seen = await resp.json()
        assert resp.headers["x-cid"] == "abc"
        assert resp.headers["x-waiter-service-id"] == await r.service_id(TOKEN)
    assert seen["x-custom"] == "kept"
    assert seen["x-cid"] == "abc"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    user = r.settings.run_as_user
    principals = {"x-waiter-auth-principal": user, "x-waiter-authenticated-principal": user}
    assert {k: v for k, v in seen.items() if k.startswith("x-waiter-")} == principals


async def test_on_the_fly_service(make_router) -> None:
    r = await make_router()
    async with r.client.get(r.url + "/hello", headers=on_the_fly_headers()) as resp:
        assert resp.status == 200
        assert (await resp.text()).startswith("hello from waiter-service-fly-")


async def test_on_the_fly_can_be_switched_off(make_router) -> None:
    r = await make_router([backend_token("echo")], **{"allow-on-the-fly": False})
    async with r.client.get(r.url + "/hello", headers=on_the_fly_headers(accept="application/json")) as resp:
        assert resp.status == 403
        message = (await resp.json())["waiter-error"]["message"]
    assert "On-the-fly services are disabled" in message and "x-waiter-cmd" in message
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    assert len(r.router.registry.services) == 1


@local_only
@pytest.mark.parametrize(
    ("headers", "named"),
    [
        pytest.param({"x-waiter-cpus": "abc"}, "cpus", id="cpus-not-a-number"),
        pytest.param({"x-waiter-cpus": "-1"}, "cpus", id="cpus-negative"),
        pytest.param({"x-waiter-mem": "0"}, "mem", id="mem-zero"),
        pytest.param({"x-waiter-concurrency-level": "0"}, "concurrency-level", id="concurrency-zero"),
        pytest.param({"x-waiter-max-instances": "5000"}, "max-instances", id="max-instances-too-big"),
        pytest.param({"x-waiter-load-balancing": "fastest"}, "load-balancing", id="bad-enum"),
        pytest.param({"x-waiter-bogus": "1"}, "x-waiter-bogus", id="unknown-header"),
        pytest.param({"x-waiter-env-HOME": "/x"}, "HOME", id="reserved-env"),
        pytest.param({"x-waiter-timeout": "-5"}, "timeout", id="bad-timeout"),
        pytest.param({"x-waiter-cmd": ""}, "cmd", id="empty-cmd"),
    ],
)
async def test_bad_headers_answer_400_and_start_nothing(make_router, headers: dict[str, str], named: str) -> None:
    r = await make_router()
    all_headers = {**on_the_fly_headers(), **headers, "accept": "application/json"}
    async with r.client.get(r.url + "/hello", headers=all_headers) as resp:
        assert resp.status == 400
        message = (await resp.json())["waiter-error"]["message"]
    assert named in message
    assert r.router.registry.services == {}
    assert r.router.registry.scheduler.service_ids() == []


@local_only
async def test_several_bad_headers_are_all_named(make_router) -> None:
    r = await make_router()
    headers = {**on_the_fly_headers(), "x-waiter-cpus": "abc", "x-waiter-concurrency-level": "0"}
    async with r.client.get(r.url + "/", headers={**headers, "accept": "text/plain"}) as resp:
        assert resp.status == 400
        text = await resp.text()
    assert "cpus" in text and "concurrency-level" in text


@local_only
async def test_unknown_token_is_404(make_router) -> None:
    r = await make_router()
    async with r.client.get(r.url + "/", headers={"x-waiter-token": "nope", "accept": "application/json"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["waiter-error"]["message"] == "Couldn't find token nope"
    assert r.router.registry.scheduler.service_ids() == []


@local_only
async def test_error_rendering_follows_accept(make_router) -> None:
    r = await make_router()
    headers = {"x-waiter-token": "nope"}
    async with r.client.get(r.url + "/", headers={**headers, "accept": "text/html"}) as resp:
        assert resp.content_type == "text/html"
        assert "Couldn&#x27;t find token nope" in await resp.text()
    async with r.client.get(r.url + "/", headers={**headers, "accept": "text/plain"}) as resp:
        assert resp.content_type == "text/plain"
        assert "Couldn't find token nope" in await resp.text()
    async with r.client.get(r.url + "/", headers={**headers, "accept": "application/json"}) as resp:
        body = await resp.json()
        assert body["waiter-error"]["status"] == 404 and body["waiter-error"]["cid"] == resp.headers["x-cid"]


async def test_failing_health_checks_replace_the_instance(make_router, tmp_path) -> None:
    fail_file = tmp_path / "fail-health"
    token = backend_token(
        "echo",
        env={"HEALTH_FAIL_FILE": str(fail_file)},
        **{"health-check-interval-secs": 5, "health-check-max-consecutive-failures": 1},
    )
    r = await make_router([token])
    sid = await r.service_id(TOKEN)
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        first = (await resp.text()).split()[-1]
    fail_file.write_text("x")

    async def replaced() -> bool:
        inst = await r.instances(sid)
        return any(i["id"] == first for i in inst["failed-instances"])

    await eventually(replaced, timeout=20, what="the unhealthy instance to be replaced")
    fail_file.unlink()
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
        assert first not in await resp.text()
    failed = next(i for i in (await r.instances(sid))["failed-instances"] if i["id"] == first)
    assert "consecutive health checks" in failed["message"]


async def test_instance_that_never_passes_health_checks_is_replaced_after_grace(make_router) -> None:
    # A grace period the backend surely starts within (it answers 500): one that passes without a connection is
    # itself a deployment error (tests/test_messages.py).
    token = backend_token("echo", env={"HEALTH_STATUS": "500"}, **{"grace-period-secs": 3})
    r = await make_router([token])
    sid = await r.service_id(TOKEN)
    headers = {**TOKEN, "x-waiter-queue-timeout": "3500", "accept": "application/json"}
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 503
        message = (await resp.json())["waiter-error"]["message"]
    # The first instance failing is not yet a pattern: the queue timeout says why nothing served the request.
    assert "Check that your service is able to start properly!" in message

    async def replaced() -> bool:
        return bool((await r.instances(sid))["failed-instances"])

    await eventually(replaced, what="the first instance to be replaced")
    failed = (await r.instances(sid))["failed-instances"]
    assert failed and "Exceeded grace period of 3 seconds" in failed[0]["message"]
    assert "never-passed-health-checks" in failed[0]["flags"]


async def test_admin_endpoints(make_router, scheduler_kind: str) -> None:
    r = await make_router([backend_token("echo")], **{"cluster-name": "test-cluster"})
    assert (await r.get_json("/status"))["status"] == "ok"
    settings = await r.get_json("/settings")
    assert settings["cluster-config"]["name"] == "test-cluster"
    assert settings["scheduler-config"]["kind"] == scheduler_kind
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    sid = await r.service_id(TOKEN)
    assert "." not in sid and sid.startswith("waiter-service-echo-")
    apps = await r.get_json("/apps?effective-parameters=true")
    (app,) = apps
    assert app["service-id"] == sid
    assert app["url"].endswith(f"/apps/{sid}")
    assert app["effective-parameters"]["concurrency-level"] == 1
    assert app["source-tokens"][0][0]["token"] == "echo"
    assert app["instance-counts"] == {"healthy-instances": 1, "unhealthy-instances": 0, "expired-instances": 0}
    assert app["resource-usage"] == {"cpus": 0.1, "mem": 256.0}
    detail = await r.get_json(f"/apps/{sid}")
    (active,) = detail["instances"]["active-instances"]
    assert active["id"].startswith(sid + ".") and active["healthy?"] is True
    assert active["log-directory"]
    if scheduler_kind == "local":
        assert "shell-scheduler/pid" in active
    async with r.client.get(r.url + "/apps/waiter-service-nope", headers={"accept": "application/json"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["waiter-error"]["message"] == "Service not found"
    async with r.client.get(r.url + "/no-such-endpoint") as resp:
        assert resp.status == 404


@local_only
async def test_connections_queued_when_the_router_stops_are_answered_not_reset(make_router) -> None:
    """Connections the kernel completed but the router had not accepted yet are drained on SIGTERM, not reset."""
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "echo"}) as resp:
        assert resp.status == 200
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nx-waiter-token: echo\r\n\r\n"

    def connect() -> list[socket.socket]:
        socks = [socket.create_connection(("127.0.0.1", r.server.port)) for _ in range(10)]
        for sock in socks:
            sock.sendall(request)
        return socks

    def first_line(sock: socket.socket, into: list[bytes]) -> None:
        with sock:
            sock.settimeout(15)
            try:
                into.append(sock.recv(4096).split(b"\r\n", 1)[0])
            except OSError as error:
                into.append(repr(error).encode())

    # Connected while the loop is blocked, and stop() entered with no await in between: the router never had a
    # chance to accept them before it stopped listening.
    socks = connect()
    lines: list[bytes] = []
    readers = [threading.Thread(target=first_line, args=(sock, lines)) for sock in socks]
    for reader in readers:
        reader.start()
    await r.server.stop()
    for reader in readers:
        await asyncio.to_thread(reader.join)
    assert len(lines) == 10 and all(line.startswith(b"HTTP/1.1 ") for line in lines), lines


@pytest.mark.schedulers("marathon", "kubernetes")
async def test_a_restarted_router_takes_on_the_services_its_cluster_runs(make_router) -> None:
    """No shared state: the router finds its services again in Marathon or Kubernetes (the record an app label or a
    ReplicaSet annotation keeps)."""
    headers = TOKEN
    first = await make_router([backend_token("echo")])
    async with first.client.get(first.url + "/hello", headers=headers) as resp:
        assert resp.status == 200
    sid = await first.service_id(headers)
    (instance,) = (await first.get_json(f"/apps/{sid}"))["instances"]["active-instances"]
    await first.server.stop()
    second = await make_router([backend_token("echo")])

    async def listed() -> bool:
        async with second.client.get(second.url + "/apps") as resp:
            return any(app["service-id"] == sid for app in await resp.json())

    await eventually(listed, "the restarted router to list the service its cluster runs")
    app = await second.get_json(f"/apps/{sid}")
    assert [i["id"] for i in app["instances"]["active-instances"]] == [instance["id"]]
    async with second.client.get(second.url + "/hello", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.text()).startswith(f"hello from {instance['id']}")


@pytest.mark.schedulers("mesos")
@pytest.mark.parametrize("shared_state", [False, True], ids=["work-dir", "redis"])
async def test_a_restarted_mesos_router_serves_on_the_task_it_left_running(
    make_router, cluster: Cluster, tmp_path: Path, shared_state: bool
) -> None:
    """The framework id is kept (in Redis, or without it in the router's work dir), the framework is not torn down
    on stop, and the restarted router subscribes as the same framework: the task (the same process) is
    health-checked, serves on, and is reaped as usual once its service is idle."""
    if shared_state and REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    mesos = {**cluster.config["mesos"], "work-dir": str(tmp_path / "router-work")}
    config: dict[str, Any] = {"scheduler": {**cluster.config, "mesos": mesos}}

    async def emulator() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{cluster.url}/emulator/state") as resp:
            return await resp.json()  # type: ignore[no-any-return]

    async with contextlib.AsyncExitStack() as stack:
        if shared_state:  # the id is kept under the router's host and port
            redis = await stack.enter_async_context(running_redis())
            config.update(redis=redis.url, port=free_port())
        token = backend_token("echo", **{"idle-timeout-mins": 1})
        first = await make_router([token], **config)
        async with first.client.get(first.url + "/hello", headers=TOKEN) as resp:
            assert resp.status == 200
        sid = await first.service_id(TOKEN)
        (instance,) = (await first.get_json(f"/apps/{sid}"))["instances"]["active-instances"]
        (task,) = (await emulator())["tasks"]
        await first.server.stop()
        (framework,) = (await emulator())["frameworks"]
        assert "TEARDOWN" not in framework["calls"]
        if shared_state:
            # A stopped router's last counts stay shared until they expire, and the next leader would scale for
            # requests that are gone (the coordinator's business, not this test's): start once they expired.
            client = aioredis.Redis.from_url(redis.url)
            stack.push_async_callback(client.aclose)
            key = f"waiter:{first.settings.cluster_name}:stats:{first.settings.router_id}"

            async def expired() -> bool:
                return not await client.exists(key)

            await eventually(expired, "the stopped router's counts to expire")

        if shared_state:  # a new machine or container: the work dir is gone, Redis still has the id
            config["scheduler"]["mesos"] = {**mesos, "work-dir": str(tmp_path / "another-work-dir")}
        fast_minutes = {"lifecycle": {"reap-interval-secs": 0.2, "minute-secs": 0.5}}
        second = await make_router([token], **config, **fast_minutes)
        stack.push_async_callback(second.server.stop)  # before Redis stops

        async def listed() -> bool:
            async with second.client.get(second.url + "/apps") as resp:
                return any(app["service-id"] == sid for app in await resp.json())

        await eventually(listed, "the restarted router to list the service its framework runs")

        async def health_checked() -> bool:
            return [i["id"] for i in await healthy_instances(second, sid)] == [instance["id"]]

        await eventually(health_checked, "the restarted router to health-check the task it took on")
        async with second.client.get(second.url + "/hello", headers=TOKEN) as resp:
            assert resp.status == 200
            assert (await resp.text()).startswith(f"hello from {instance['id']}")
        state = await emulator()
        assert [(t["id"], t["pid"], t["state"]) for t in state["tasks"]] == [(task["id"], task["pid"], "TASK_RUNNING")]
        (framework,) = state["frameworks"]
        assert framework["subscriptions"] == 2 and framework["connected"]

        async def reaped() -> bool:
            tasks = (await emulator())["tasks"]
            return sid not in second.router.registry.scheduler.service_ids() and all(
                t["state"] == "TASK_KILLED" for t in tasks
            )

        await eventually(reaped, "the idle service to be reaped and its task killed")
