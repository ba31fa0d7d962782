"""Redis restarted under steady requests: once it answers again, no request fails on a connection the restart killed.

A restart leaves every pooled connection dead. The clients that sat idle through the outage are the ones that meet
them afterwards, so each test keeps some clients idle while Redis is down and sends from all of them at once when
it is back. Commands that met a broken connection are sent again (waiter.redis_client), so every command and script
must be safe to run twice: the compare-and-set of a token is tested run twice with the same arguments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import FAKE, backend_token
from tests.redis_server import RedisServer
from tests.support import eventually
from waiter.state.base import StateUnavailable
from waiter.state.redis import RedisState
from waiter.tokens.redis_store import _CAS, RedisTokenStore
from waiter.tokens.store import IndexEntry, make_record

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

CLIENTS = 8


class SteadyLoad:
    """``CLIENTS`` loops calling ``call``; half of them pause while Redis is down, keeping pooled connections idle."""

    def __init__(self, call: Callable[[int], Awaitable[bool]]) -> None:
        self.call = call
        self.back = False  # Redis answers again: failures from here on count
        self.down = asyncio.Event()
        self.up = asyncio.Event()
        self.calls = 0
        self.after: list[bool] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(CLIENTS)]

    async def _client(self, index: int) -> None:
        while not self._stop.is_set():
            if index % 2 and self.down.is_set() and not self.up.is_set():
                await self.up.wait()
            back = self.back
            ok = await self.call(index)
            self.calls += 1
            if back:
                self.after.append(ok)
            await asyncio.sleep(0.005)

    async def restart(self, server: RedisServer) -> None:
        await eventually(lambda: self.calls >= 5 * CLIENTS, what="every client to have connected")
        self.down.set()
        server.stop()
        await asyncio.sleep(0.3)  # an outage, not a synchronisation: the clients still running fail through it
        await server.start()
        self.back = True
        self.up.set()

    async def stop(self) -> list[bool]:
        await eventually(lambda: len(self.after) >= 20 * CLIENTS, what="requests after Redis is back")
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.after


async def test_token_api_reads_do_not_fail_after_a_redis_restart(make_router, redis_server) -> None:
    r = await make_router(redis=redis_server.url)
    async with r.client.post(r.url + "/token", json=backend_token("kept")) as resp:
        assert resp.status == 200, await resp.text()

    async def read(index: int) -> bool:
        # An authoritative read: one Redis call per request, a 503 when it fails. The restarted Redis is empty, so
        # until the router writes the token back the answer is a 404: data lost, not a failed call.
        async with r.client.get(r.url + "/token?token=kept") as resp:
            await resp.read()
            return resp.status in (200, 404)

    load = SteadyLoad(read)
    await load.restart(redis_server)  # no persistence: the follower writes the token back
    after = await load.stop()
    assert after.count(False) == 0, f"{after.count(False)} of {len(after)} reads failed after Redis was back"


async def test_shared_state_calls_do_not_fail_after_a_redis_restart(redis_server) -> None:
    state = RedisState(redis_server.url, namespace="recovery")
    try:
        calls = [
            lambda i: state.lease("r1", f"instance-{i}", 1, 4),
            lambda i: state.heartbeat(f"r{i}", {"url": "x"}, 5000),
            lambda i: state.services(),
            lambda i: state.lead("r1", 5000),
        ]

        async def call(index: int) -> bool:
            try:
                await calls[index % len(calls)](index)
            except StateUnavailable:
                return False
            return True

        load = SteadyLoad(call)
        await load.restart(redis_server)
        after = await load.stop()
        assert after.count(False) == 0, f"{after.count(False)} of {len(after)} calls failed after Redis was back"
    finally:
        await state.close()


@pytest.mark.parametrize("removal", [False, True])
async def test_a_token_write_run_twice_reports_done_not_a_conflict(redis_server, removal: bool) -> None:
    """What a resent compare-and-set meets when its first run worked and only the answer was lost."""
    store = RedisTokenStore(redis_server.url, prefix="twice:", timeout=1.0)
    await store.start()
    try:
        old = make_record("t", {"owner": "alice", "version": "1", "last-update-time": 1})
        await store.write("t", old.data, expected=None)
        new = None if removal else make_record("t", {"owner": "alice", "version": "2", "last-update-time": 2})
        keys = [store._key(k) for k in ("data", "etag", "owners", "version")]
        args = [
            "t",
            old.etag,
            "" if new is None else '{"x": 1}',
            "" if new is None else new.etag,
            "" if new is None else "alice",
            "alice",
            "" if new is None else IndexEntry.of(new).dumps(),
            store._key("owner:"),
            store._key("changed"),
        ]
        cas = store._client.register_script(_CAS)
        first = await cas(keys=keys, args=args)
        second = await cas(keys=keys, args=args)
        assert [int(first[0]), int(second[0])] == [1, 1]
        assert second[1] == first[1]  # the version the first run made, not a new one
        # A write that expected another etag and makes something else is still a conflict.
        stale = await cas(keys=keys, args=[args[0], "E-other", '{"y": 1}', "E-third", *args[4:]])
        assert int(stale[0]) == 0
    finally:
        await store.close()
