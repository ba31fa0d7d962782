"""Several routers sharing one Redis (a test-owned redis-server) and one local scheduler (through the agent)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import RunningRouter, backend_token
from tests.redis_server import REDIS_SERVER
from tests.support import eventually, free_port, read_response
from waiter.scheduler.agent import remove_dead_agent_dirs, serve_agent, stop_agent
from waiter.scheduler.local import LocalScheduler, LocalSettings
from waiter.state.redis import RedisState

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

TOKEN = {"x-waiter-token": "echo"}
FAST_SCALING = {"interval-ms": 200, "kill-interval-ms": 300, "publish-interval-ms": 50, "router-ttl-ms": 1500}


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    work_dir = tmp_path / "agent"
    low = 30000 + (os.getpid() * 7) % 3000
    scheduler = LocalScheduler(LocalSettings(work_dir=work_dir, port_range=(low, low + 199), min_kill_grace_secs=2))
    await scheduler.start()
    runner, url = await serve_agent(scheduler)
    yield url, work_dir
    await stop_agent(runner, url)
    await scheduler.close()


async def two_routers(  # type: ignore[no-untyped-def]
    make_router, redis_url: str, agent_url: str, token: dict[str, Any], handoff: bool = True, **extra: Any
):
    config = {
        "redis": redis_url,
        "scheduler": {"kind": "agent", "agent": {"url": agent_url, "handoff": handoff}},
        # drain-secs 0.4 (one request of the burst below): a queue of closed-loop clients is their whole demand.
        "autoscaler": {**FAST_SCALING, "burst": {"stable-window-secs": 1, "drain-secs": 0.4}},
        **extra,
    }
    a = await make_router([token], **config)
    b = await make_router([token], **config)
    return a, b


async def app_of(r: RunningRouter, sid: str) -> dict[str, Any]:
    return await r.get_json(f"/apps/{sid}")  # type: ignore[no-any-return]


async def test_load_on_one_router_scales_the_service_and_the_other_sees_it(redis_server, agent, make_router) -> None:
    token = backend_token("echo", **{"max-instances": 4, "scale-down-factor": 0.5})
    a, b = await two_routers(make_router, redis_server.url, agent[0], token)
    sid = await a.service_id(TOKEN)
    load = [asyncio.create_task(a.client.get(a.url + "/sleep?ms=2500", headers=TOKEN)) for _ in range(6)]

    async def b_sees_the_load() -> bool:
        body = await app_of(b, sid) if b.router.registry.get(sid) else None
        return bool(body and body["request-metrics"]["outstanding"] == 6)

    await eventually(b_sees_the_load, timeout=10, what="router B to see A's 6 outstanding requests")

    async def scaled() -> bool:
        return (await app_of(a, sid))["num-active-instances"] == 4

    await eventually(scaled, timeout=10, what="the service to scale to max-instances")
    ids_a = {i["id"] for i in (await app_of(a, sid))["instances"]["active-instances"]}
    ids_b = {i["id"] for i in (await app_of(b, sid))["instances"]["active-instances"]}
    assert ids_a == ids_b and len(ids_a) == 4
    for task in load:
        resp = await task
        assert resp.status == 200
        resp.release()


async def test_scale_down_goes_one_by_one_and_never_kills_a_busy_instance(redis_server, agent, make_router) -> None:
    # Waiter's smoothing only: this pins how scale-down kills (one by one, never a busy instance), not how burst mode
    # sizes the service, whose throughput need can rise again while the load changes shape.
    token = backend_token(
        "echo", **{"max-instances": 4, "scale-up-factor": 0.5, "scale-down-factor": 0.9, "concurrency-level": 1}
    )
    a, b = await two_routers(
        make_router, redis_server.url, agent[0], token, autoscaler={**FAST_SCALING, "burst": {"enabled": False}}
    )
    sid = await a.service_id(TOKEN)
    stop = asyncio.Event()
    statuses: list[int] = []

    async def client(r: RunningRouter, ms: int) -> None:
        while not stop.is_set():
            async with r.client.get(r.url + f"/sleep?ms={ms}", headers=TOKEN) as resp:
                statuses.append(resp.status)
                await resp.read()

    burst = [asyncio.create_task(client(r, 400)) for r in (a, b, a, b, a, b)]

    async def four() -> bool:
        return b.router.registry.get(sid) is not None and (await app_of(b, sid))["num-active-instances"] == 4

    await eventually(four, timeout=15, what="four instances")
    stop.set()
    await asyncio.gather(*burst)
    # A trickle keeps going through both routers while the service shrinks back to one instance.
    stop = asyncio.Event()
    trickle = [asyncio.create_task(client(r, 150)) for r in (a, b)]
    counts = []

    async def shrunk() -> bool:
        counts.append((await app_of(a, sid))["num-active-instances"])
        return counts[-1] <= 2

    await eventually(shrunk, timeout=20, what="the service to scale down")
    stop.set()
    await asyncio.gather(*trickle)
    assert statuses and set(statuses) == {200}
    assert all(x >= y for x, y in itertools.pairwise(counts))  # never grew back
    assert all(x - y <= 1 for x, y in itertools.pairwise(counts))  # one at a time
    # Instances killed for other reasons (a health check a loaded machine failed) are not scale-down's victims.
    killed = [
        i for i in (await app_of(a, sid))["instances"]["killed-instances"] if i.get("message") == "Killed to scale down"
    ]
    assert len(killed) >= 2
    # A victim still starting (burst mode releases instances started before anything was measured) has no SIGTERM
    # handler yet and could not have served; every victim that had one says it was idle, and at least one had one.
    written = []
    for instance in killed:
        busy = Path(instance["log-directory"], "busy-at-sigterm")
        if await _written_soon(busy):
            written.append(instance["id"])
            assert busy.read_text() == "0", f"{instance['id']} was killed while serving a request"
    assert written, "no scale-down victim had started serving"


async def _written_soon(path: Path, timeout: float = 3.0) -> bool:
    try:
        await eventually(_exists(path), what=str(path), timeout=timeout)
    except AssertionError:
        return False
    return True


def _exists(path: Path):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return path.exists()

    return check


async def test_concurrency_level_holds_across_routers(redis_server, agent, make_router) -> None:
    token = backend_token("echo", **{"concurrency-level": 2, "max-instances": 1})
    a, b = await two_routers(make_router, redis_server.url, agent[0], token)
    sid = await a.service_id(TOKEN)

    async def one(r: RunningRouter) -> int:
        async with r.client.get(r.url + "/sleep?ms=150", headers=TOKEN) as resp:
            return resp.status

    results = await asyncio.gather(*(one(r) for r in (a, b) * 10))
    assert results == [200] * 20
    (instance,) = (await app_of(a, sid))["instances"]["active-instances"]
    async with a.client.get(f"http://{instance['host']}:{instance['port']}/stats") as resp:
        stats = await resp.json()
    assert stats["total"] == 20
    assert stats["peak"] == 2  # reached, never exceeded, though both routers had requests queued


async def test_redis_dying_under_load_loses_no_request(redis_server, agent, make_router) -> None:
    token = backend_token("echo", **{"max-instances": 2, "min-instances": 2})
    a, b = await two_routers(make_router, redis_server.url, agent[0], token)
    for r in (a, b):
        async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
            assert resp.status == 200
    sid = await a.service_id(TOKEN)

    async def both_healthy() -> bool:
        return all(i["healthy?"] for i in (await app_of(b, sid))["instances"]["active-instances"])

    await eventually(both_healthy, what="two healthy instances seen by B")
    stop = asyncio.Event()
    statuses: list[int] = []

    errors: list[str] = []

    async def client(r: RunningRouter) -> None:
        while not stop.is_set():
            async with r.client.get(r.url + "/sleep?ms=20", headers=TOKEN) as resp:
                statuses.append(resp.status)
                if resp.status != 200:
                    errors.append(await resp.text())

    load = [asyncio.create_task(client(r)) for r in (a, b, a, b)]
    await asyncio.sleep(0.5)
    redis_server.stop()

    async def degraded() -> bool:
        return (await a.get_json("/status"))["shared-state"]["available"] is False

    await eventually(degraded, what="router A to report the shared state unavailable")
    served_before = len(statuses)
    await eventually(lambda: _more(statuses, served_before + 100), what="requests served without Redis")
    await redis_server.start()

    async def recovered() -> bool:
        states = [(await r.get_json("/status"))["shared-state"] for r in (a, b)]
        return all(s["available"] for s in states)

    try:
        await eventually(recovered, what="both routers to recover")
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert set(statuses) == {200}, errors[:3]


async def _more(statuses: list[int], n: int) -> bool:
    return len(statuses) >= n


async def test_killed_leader_is_replaced_within_the_lease_ttl(redis_server, agent, tmp_path, make_router) -> None:
    port = free_port()
    config = tmp_path / "leader.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": port,
                "redis": redis_server.url,
                "tokens-dir": str(tmp_path),
                "scheduler": {"kind": "agent", "agent": {"url": agent[0]}},
                "autoscaler": FAST_SCALING,
            }
        )
    )
    leader = subprocess.Popen([sys.executable, "-m", "waiter", "--config", str(config), "--router-id", "first"])
    try:
        async with aiohttp.ClientSession() as client:

            async def leads() -> bool:
                try:
                    async with client.get(f"http://127.0.0.1:{port}/status") as resp:
                        return bool((await resp.json())["shared-state"]["leader?"])
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(leads, timeout=20, what="the first router to lead")
        b = await make_router(
            redis=redis_server.url, scheduler={"kind": "agent", "agent": {"url": agent[0]}}, autoscaler=FAST_SCALING
        )
        assert b.router.autoscaler is not None and not b.router.autoscaler.is_leader
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        started = asyncio.get_running_loop().time()

        async def b_leads() -> bool:
            return bool((await b.get_json("/status"))["shared-state"]["leader?"])

        await eventually(b_leads, timeout=10, what="router B to take the lease")
        took = asyncio.get_running_loop().time() - started
        ttl = max(3.0, FAST_SCALING["interval-ms"] * 3 / 1000)
        assert took <= ttl + 1.0, f"B took {took:.1f} s to lead; the lease TTL is {ttl} s"
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()


async def test_delete_through_one_router_is_confirmed_by_all(redis_server, agent, make_router) -> None:
    a, b = await two_routers(make_router, redis_server.url, agent[0], backend_token("echo"))
    sid = await a.service_id(TOKEN)
    async with b.client.get(b.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200

    async def a_knows() -> bool:
        return a.router.registry.get(sid) is not None

    await eventually(a_knows, what="router A to adopt the service B started")
    async with a.client.delete(a.url + f"/apps/{sid}?timeout=10000") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["success"] is True and body["routers-agree"] is True
    assert b.router.registry.get(sid) is None
    assert await b.get_json("/apps") == []


def test_dead_agent_directories_are_removed(tmp_path: Path) -> None:
    """A supervisor killed by SIGKILL leaves its socket directory; the next one removes it, and only such ones."""
    dead, young, live = (tmp_path / f"waiter-agent-{name}" for name in ("dead", "young", "live"))
    for directory in (dead, young, live):
        directory.mkdir()
    (dead / "agent.sock").touch()  # a socket file nobody listens on any more
    old = time.time() - 3600
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(live / "agent.sock"))
        listener.listen()
        for directory in (dead, live):
            os.utime(directory, (old, old))
        assert remove_dead_agent_dirs(tmp_path) == 1
    assert not dead.exists() and young.is_dir() and live.is_dir()


async def test_a_sequential_client_alternating_routers_gets_the_slot_handed_over_at_once(
    redis_server, agent, make_router
) -> None:
    # Ticks 250 ms apart and a 200 ms queue timeout: a slot that moved only at ticks (the other router publishes
    # its queue at one, the holder gives the slot back at its next) would time requests out (503); handed over on
    # a nudge, it takes a few round trips to Redis. (Connections stay where they arrive: handoff off.)
    slow_ticks = {**FAST_SCALING, "publish-interval-ms": 250, "router-ttl-ms": 3000}
    token = backend_token("echo", **{"concurrency-level": 1, "max-instances": 1})
    config = {
        "redis": redis_server.url,
        "scheduler": {"kind": "agent", "agent": {"url": agent[0], "handoff": False}},
        "autoscaler": slow_ticks,
    }
    a = await make_router([token], **config)
    b = await make_router([token], **config)
    sid = await a.service_id(TOKEN)
    async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:  # the cold start, without the short timeout
        assert resp.status == 200
    headers = {**TOKEN, "x-waiter-queue-timeout": "200"}
    statuses = []
    for r in (a, b) * 6:
        async with r.client.get(r.url + "/hello", headers=headers) as resp:
            statuses.append(resp.status)
    assert statuses == [200] * 12
    (instance,) = (await app_of(a, sid))["instances"]["active-instances"]
    async with a.client.get(f"http://{instance['host']}:{instance['port']}/stats") as resp:
        stats = await resp.json()
    assert stats["peak"] == 1  # the slot moved; it was never held by both routers at once


@pytest.mark.parametrize("handoff", [True, False], ids=["connections-handed", "slot-moved"])
async def test_one_sequential_client_across_two_routers_is_one_request(
    redis_server, agent, make_router, handoff: bool
) -> None:
    # A sequential client whose requests land on either router (as --workers spreads connections): every request
    # answered, by the router holding the one slot (its connection handed there) or with the slot handed over
    # between the routers, never held by both; the request counted once across routers, so the service is never
    # scaled up (burst mode on, decisions every 200 ms).
    token = backend_token("echo", **{"concurrency-level": 1, "max-instances": 3})
    a, b = await two_routers(make_router, redis_server.url, agent[0], token, handoff)
    sid = await a.service_id(TOKEN)
    async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:  # the cold start
        assert resp.status == 200
    statuses = []
    for r in (a, b, a, a, b, b, b, a) * 6:
        async with r.client.get(r.url + "/sleep?ms=20", headers=TOKEN) as resp:
            statuses.append(resp.status)
    assert statuses == [200] * 48
    scale_ups = [
        decision.reason
        for r in (a, b)
        for _, decision in r.router.autoscaler.history.get(sid, ())
        if decision.scale_to > 1
    ]
    assert scale_ups == []
    instances = (await app_of(a, sid))["instances"]
    assert [len(instances[kind]) for kind in ("active-instances", "failed-instances", "killed-instances")] == [1, 0, 0]
    (instance,) = instances["active-instances"]
    async with a.client.get(f"http://{instance['host']}:{instance['port']}/stats") as resp:
        stats = await resp.json()
    assert (stats["total"], stats["peak"]) == (49, 1)
    handed = [r.router.handoff.sent for r in (a, b) if r.router.handoff is not None]
    assert sum(handed) > 0 if handoff else handed == []


@pytest.mark.parametrize("instances", [1, 2])
async def test_closed_loop_clients_on_both_routers_are_all_served(
    redis_server, agent, make_router, instances: int
) -> None:
    # Issue 15's stall: three closed-loop clients on each router, concurrency-level 1. A router whose own queue
    # refilled kept every slot, so the other router's requests waited for seconds and the leader saw no arrivals
    # there. Now the oldest waiter anywhere gets a slot as it comes free: both routers' clients make progress.
    token = backend_token(
        "echo", **{"concurrency-level": 1, "min-instances": instances, "max-instances": instances}
    )
    a, b = await two_routers(make_router, redis_server.url, agent[0], token)
    sid = await a.service_id(TOKEN)

    async def ready() -> bool:
        body = await app_of(a, sid) if a.router.registry.get(sid) else None
        return bool(body) and sum(i["healthy?"] for i in body["instances"]["active-instances"]) == instances

    async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    await eventually(ready, timeout=20, what=f"{instances} healthy instances")
    served = {"a": 0, "b": 0}
    total = 24 * instances

    async def client(r: RunningRouter, name: str) -> None:
        while sum(served.values()) < total:
            async with r.client.get(r.url + "/sleep?ms=50", headers=TOKEN) as resp:
                assert resp.status == 200
                await resp.read()
            served[name] += 1

    await asyncio.gather(*(client(r, name) for r, name in ((a, "a"), (b, "b")) * 3))
    assert min(served.values()) >= total // 4, served  # fair would be half each; a stall gives one router ~none


async def test_a_router_that_stops_cleanly_leaves_the_shared_state_at_once(redis_server, agent, make_router) -> None:
    # Counts live 2.5 s (10 publish intervals), heartbeats 60 s: only the stopping router can make them go at once.
    slow = {**FAST_SCALING, "publish-interval-ms": 250, "router-ttl-ms": 60_000}
    a, b = await two_routers(make_router, redis_server.url, agent[0], backend_token("echo"), autoscaler=slow)
    async with a.client.get(a.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    state = RedisState(redis_server.url, namespace=a.settings.cluster_name)
    try:
        assert set(await state.routers()) == {a.settings.router_id, b.settings.router_id}

        async def both_published() -> bool:
            stats = await state.all_stats()
            return bool(stats.get(a.settings.router_id)) and bool(stats.get(b.settings.router_id))

        # B learns of the service at its next service sync (1 s), and publishes its counts from then on.
        await eventually(both_published, what="both routers to publish their counts")
        await a.server.stop()
        assert set(await state.routers()) == {b.settings.router_id}
        assert set(await state.all_stats()) == {b.settings.router_id}
        assert b.router.autoscaler is not None

        async def b_sees_only_itself() -> bool:
            view = b.router.coordinator.view
            return set(view.routers) == {b.settings.router_id} and not any(view.outstanding_elsewhere.values())

        await eventually(b_sees_only_itself, what="router B's view to drop router A")
        await eventually(lambda: b.router.autoscaler.is_leader, what="router B to take the free leader lease")
    finally:
        await state.close()


async def test_a_router_without_the_slot_hands_the_connection_to_the_router_holding_it(
    redis_server, agent, make_router
) -> None:
    # Routers sharing an agent, as --workers do: once one router was given the one slot, a connection that reaches
    # the other goes to it with its request (waiter.handoff). The holder answers it, body and all, and the
    # connection's next request too; the slot stays. A holder that stops taking connections is not asked again:
    # the other serves, and the slot moves.
    token = backend_token("echo", **{"concurrency-level": 1, "max-instances": 1})
    a, b = await two_routers(make_router, redis_server.url, agent[0], token)
    sid = await a.service_id(TOKEN)
    pair: list[RunningRouter] = []

    async def one_was_given_the_slot_and_the_other_heard() -> bool:
        for r in (a, b):  # whoever lacks the slot waits for it, and the holder gives it (waiter.handover)
            async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
                assert resp.status == 200
        for x, y in ((a, b), (b, a)):
            handoff, service = x.router.handoff, x.router.registry.get(sid)
            assert handoff is not None and service is not None
            if handoff.holders.get(sid) == y.settings.router_id and not service.reservations.capacity:
                pair[:] = [x, y]
                return True
        return False

    await eventually(one_was_given_the_slot_and_the_other_heard, what="one router to hear the other holds the slot")
    sender, holder = pair
    s_handoff, h_handoff = sender.router.handoff, holder.router.handoff
    s_service, h_service = sender.router.registry.get(sid), holder.router.registry.get(sid)
    assert s_handoff is not None and h_handoff is not None and s_service is not None and h_service is not None
    sent, received, answered = s_handoff.sent, h_handoff.received, (s_service.responses[2], h_service.responses[2])

    # Head and body in one write, so A has the whole request when it decides (a body still arriving stays).
    body = os.urandom(30_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", sender.server.port)
    try:
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nx-waiter-token: echo\r\nx-cid: handed-1\r\n"
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        first = await read_response(reader)
        assert (first.status, first.headers["x-cid"]) == (200, "handed-1")
        assert json.loads(first.body) == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nx-waiter-token: echo\r\n\r\n")  # now B's connection
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()
    assert (s_handoff.sent, h_handoff.received) == (sent + 1, received + 1)
    assert (s_service.responses[2], h_service.responses[2]) == (answered[0], answered[1] + 2)

    h_handoff.stop_receiving()  # as a draining router does
    async with aiohttp.ClientSession() as client, client.get(sender.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    assert (s_handoff.sent, s_handoff.declined, s_service.responses[2]) == (sent + 1, 1, answered[0] + 1)
    assert sid not in s_handoff.holders
    (instance,) = (await app_of(a, sid))["instances"]["active-instances"]
    async with a.client.get(f"http://{instance['host']}:{instance['port']}/stats") as resp:
        assert (await resp.json())["peak"] == 1
