"""The token store contract, run against both back-ends, plus what only Redis does (followers, outages).

Redis tests use a test-owned ``redis-server`` on a free port (never the shared one on 6379), killed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from tests.redis_server import RedisServer, needs_redis, running_redis
from tests.support import eventually
from waiter.tokens import (
    HISTORY_LIMIT,
    IndexEntry,
    MemoryTokenStore,
    RedisTokenStore,
    StaleWrite,
    StoreUnavailable,
    TokenRecord,
    TokenStore,
    make_record,
    token_etag,
)
from waiter.tokens.records import cap_history, name_problem, new_record, parse_time, shown, soft_deleted


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TokenStore]:
    if request.param == "memory":
        yield MemoryTokenStore()
        return
    async with running_redis() as server:
        redis_store = RedisTokenStore(server.url, timeout=1.0)
        await redis_store.start()
        try:
            yield redis_store
        finally:
            await redis_store.close()


def data(owner: str = "alice", **fields: Any) -> dict[str, Any]:
    record = {"cmd": "run", "cpus": 1, "mem": 64, "version": "1", "owner": owner, "last-update-time": 1000}
    record.update(fields)
    return record


# -- the contract, for every back-end -------------------------------------------------------------------------


async def test_write_then_read_and_cached_view(store: TokenStore) -> None:
    before = store.generation
    assert await store.read("t") is None and store.cached("t") is None
    await store.write("t", data(), expected=None)
    record = await store.read("t")
    assert record is not None and record.data == data()
    assert record.etag == token_etag(data()) and record.etag.startswith("E-") and len(record.etag) == 34
    assert store.cached("t") == record  # the writer sees its own write at once, synchronously
    assert store.generation > before
    assert [r.name for r in store.cached_records()] == ["t"]


async def test_compare_and_set_refuses_a_stale_writer(store: TokenStore) -> None:
    await store.write("t", data(version="1"), expected=None)
    first = await store.read("t")
    with pytest.raises(StaleWrite):
        await store.write("t", data(version="x"), expected=None)  # creating over an existing token
    await store.write("t", data(version="2"), expected=first)
    with pytest.raises(StaleWrite) as err:
        await store.write("t", data(version="3"), expected=first)  # first is no longer what is stored
    current = await store.read("t")
    assert current is not None and current.data["version"] == "2"
    assert err.value.current_etag == current.etag


async def test_hard_delete_removes_record_and_index_entry(store: TokenStore) -> None:
    await store.write("t", data(), expected=None)
    await store.write("t", None, expected=await store.read("t"))
    assert await store.read("t") is None and store.cached("t") is None
    assert await store.index() == []


async def test_owner_index_follows_owner_changes_and_flags(store: TokenStore) -> None:
    await store.write("a1", data("alice"), expected=None)
    await store.write("b1", data("bob", maintenance={"message": "down"}), expected=None)
    await store.write("a2", data("alice", deleted=True, **{"last-update-time": 5000}), expected=None)
    entries = {e.token: e for e in await store.index()}
    assert set(entries) == {"a1", "a2", "b1"}
    assert entries["b1"].maintenance and not entries["a1"].maintenance
    assert entries["a2"].deleted and entries["a2"].last_update_time == 5000
    assert entries["a1"].etag == token_etag(data("alice"))
    assert {e.token for e in await store.index(["alice"])} == {"a1", "a2"}
    # a1 changes hands: it leaves alice's index and joins carol's
    await store.write("a1", data("carol"), expected=await store.read("a1"))
    assert {e.token for e in await store.index(["alice"])} == {"a2"}
    assert [(e.token, e.owner) for e in await store.index(["carol"])] == [("a1", "carol")]
    assert await store.index(["nobody"]) == []


async def test_status_reports_kind_and_connection(store: TokenStore) -> None:
    await store.write("t", data(), expected=None)
    status = store.status().json()
    assert status["kind"] == store.kind and status["connected"] is True and status["cached-tokens"] == 1


# -- pure record rules -----------------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    record: dict[str, Any] = {"version": "0"}
    for level in range(1, depth + 1):
        record = {"version": str(level), "previous": record}
    return record


def depth_of(record: dict[str, Any]) -> int:
    depth = 0
    while "previous" in record:
        record, depth = record["previous"], depth + 1
    return depth


@pytest.mark.parametrize(
    ("depth", "kept"),
    [
        pytest.param(0, 0, id="no-history"),
        pytest.param(3, 3, id="short"),
        pytest.param(HISTORY_LIMIT, HISTORY_LIMIT, id="at-limit"),
        pytest.param(HISTORY_LIMIT + 3, HISTORY_LIMIT, id="trimmed"),
    ],
)
def test_history_is_capped(depth: int, kept: int) -> None:
    capped = cap_history(nested(depth))
    assert depth_of(capped) == kept and capped["version"] == str(depth)


def test_new_record_fills_system_metadata_and_pushes_history() -> None:
    old = {"cmd": "a", "owner": "alice", "root": "elsewhere", "last-update-time": 1}
    record = new_record(
        {"cmd": "b", "allowed-params": ["B", "A", "B"]},
        owner="alice",
        user="bob",
        now_ms=2000,
        cluster="c1",
        existing=old,
    )
    assert record == {
        "cmd": "b",
        "allowed-params": ["A", "B"],
        "owner": "alice",
        "cluster": "c1",
        "root": "elsewhere",  # the root is kept across updates
        "last-update-time": 2000,
        "last-update-user": "bob",
        "previous": old,
    }
    assert "previous" not in new_record({"cmd": "b"}, owner="a", user="a", now_ms=1, cluster="c", existing=None)


def test_soft_delete_marks_and_keeps_the_live_record_as_history() -> None:
    live = {"cmd": "a", "owner": "alice", "last-update-time": 1, "previous": {"cmd": "z"}}
    record = soft_deleted(live, user="bob", now_ms=9)
    assert record["deleted"] is True and record["last-update-user"] == "bob" and record["last-update-time"] == 9
    assert record["previous"] == live and record["cmd"] == "a"


def test_shown_body_with_and_without_metadata() -> None:
    record = {
        "cmd": "a",
        "run-as-user": "legacy",
        "last-update-time": 1679504180123,
        "last-update-user": "u",
        "previous": {"cmd": "z", "last-update-time": 0, "previous": {"last-update-time": 1000}},
    }
    assert shown(record, metadata=False, cluster="c") == {"cmd": "a", "run-as-user": "legacy", "owner": "legacy"}
    full = shown(record, metadata=True, cluster="c")
    assert full["cluster"] == "c" and full["root"] == "c" and full["last-update-user"] == "u"
    assert full["last-update-time"] == "2023-03-22T16:56:20.123Z"
    assert full["previous"]["last-update-time"] == "1970-01-01T00:00:00.000Z"
    assert full["previous"]["previous"]["last-update-time"] == "1970-01-01T00:00:01.000Z"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        pytest.param("my-token.v2_$", None, id="valid"),
        pytest.param("a", "Token must match pattern", id="too-short"),
        pytest.param("1abc", "Token must match pattern", id="leading-digit"),
        pytest.param("ab/c", 'Token contains invalid character: "/"', id="slash"),
        pytest.param("ab c", 'Token contains invalid character: " "', id="space"),
    ],
)
def test_token_names(name: str, problem: str | None) -> None:
    found = name_problem(name)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem))


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        pytest.param(5, 5, id="epoch-millis"),
        pytest.param("2023-03-22T16:56:20.123Z", 1679504180123, id="iso-z"),
        pytest.param("2023-03-22T17:56:20.123+01:00", 1679504180123, id="iso-offset"),
        pytest.param("2023-03-22T16:56:20", None, id="no-zone"),
        pytest.param("yesterday", None, id="garbage"),
        pytest.param(-1, None, id="negative"),
        pytest.param(True, None, id="bool"),
    ],
)
def test_parse_time(value: Any, millis: int | None) -> None:
    if millis is None:
        with pytest.raises(ValueError, match=r"last-update-time is .* but must be epoch milliseconds"):
            parse_time(value)
    else:
        assert parse_time(value) == millis


# -- Redis only: followers, missed messages, outages ---------------------------------------------------------


@needs_redis
async def test_a_write_on_one_store_reaches_anothers_cache_within_milliseconds(redis_server: RedisServer) -> None:
    a, b = RedisTokenStore(redis_server.url), RedisTokenStore(redis_server.url)
    await a.start()
    await b.start()
    try:
        before = b.generation
        await a.write("t", data(), expected=None)
        took = await eventually(lambda: b.cached("t") is not None, what="b to see a's write")
        assert took < 0.5 and b.generation > before
        record = b.cached("t")
        assert isinstance(record, TokenRecord) and record.etag == token_etag(data())
        await b.write("t", None, expected=record)
        await eventually(lambda: a.cached("t") is None, what="a to see b's delete")
    finally:
        await a.close()
        await b.close()


@needs_redis
async def test_a_missed_message_is_caught_by_the_version_counter(redis_server: RedisServer) -> None:
    follower = RedisTokenStore(redis_server.url, poll_interval=0.05)
    await follower.start()
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        # a write that publishes nothing, as if the message were lost during a reconnect
        await raw.hset("waiter:tokens:data", "quiet", '{"cmd": "x", "owner": "alice"}')
        await raw.incr("waiter:tokens:version")
        await eventually(lambda: follower.cached("quiet") is not None, what="the version poll to reload")
    finally:
        await raw.aclose()
        await follower.close()


@needs_redis
async def test_redis_outage_keeps_the_cache_and_recovers(redis_server: RedisServer) -> None:
    store = RedisTokenStore(redis_server.url, timeout=0.5, poll_interval=0.05)
    await store.start()
    try:
        await store.write("t", data(), expected=None)
        redis_server.stop()
        await eventually(lambda: not store.status().connected, what="the outage to show")
        assert store.cached("t") is not None  # still served
        status = store.status().json()
        assert status["error"] and status["down-since"] and "cached tokens" in status["serving"]
        with pytest.raises(StoreUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0\) is unavailable"):
            await store.read("t")
        await redis_server.start()  # back, empty (no persistence): the store writes back what it held
        await eventually(lambda: store.status().connected, timeout=5, what="reconnection")
        assert store.cached("t") is not None

        async def restored() -> bool:
            # The first call on a pooled connection from before the restart may fail once: poll.
            with contextlib.suppress(StoreUnavailable):
                record = await store.read("t")
                return record is not None and record.data == data()
            return False

        await eventually(restored, what="token t back in Redis")
        assert [e.token for e in await store.index(["alice"])] == ["t"]
        await store.write("u", data(), expected=None)
        assert (await store.read("u")) is not None
    finally:
        await store.close()


@needs_redis
async def test_a_flushed_redis_gets_back_every_token_the_newest_version_winning(redis_server: RedisServer) -> None:
    store = RedisTokenStore(redis_server.url, timeout=0.5, poll_interval=0.05)
    fresh = RedisTokenStore(redis_server.url, timeout=0.5, poll_interval=0.05)
    await store.start()
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for name in ("kept", "older-in-redis", "newer-in-redis"):
            await store.write(name, data(**{"last-update-time": 1000}), expected=None)
        epoch = await raw.get("waiter:tokens:epoch")
        assert epoch
        # Redis loses everything; before the store notices, another writer stores two of the tokens again.
        newer, older = data(cmd="newer", **{"last-update-time": 2000}), data(cmd="older", **{"last-update-time": 500})
        async with raw.pipeline(transaction=True) as pipe:
            pipe.flushall()
            for name, record in (("newer-in-redis", newer), ("older-in-redis", older)):
                pipe.hset("waiter:tokens:data", name, json.dumps(record))
                pipe.hset("waiter:tokens:etag", name, token_etag(record))
                pipe.hset("waiter:tokens:owner:alice", name, IndexEntry.of(make_record(name, record)).dumps())
            pipe.sadd("waiter:tokens:owners", "alice")
            await pipe.execute()

        async def written_back() -> bool:
            return await raw.hlen("waiter:tokens:data") == 3 and await raw.get("waiter:tokens:epoch") is not None

        await eventually(written_back, what="the store to write its tokens back")
        assert await raw.get("waiter:tokens:epoch") != epoch
        stored = {n: json.loads(v)["cmd"] for n, v in (await raw.hgetall("waiter:tokens:data")).items()}
        assert stored == {"kept": "run", "older-in-redis": "run", "newer-in-redis": "newer"}
        await eventually(lambda: store.cached("newer-in-redis").data["cmd"] == "newer", what="the cache to follow")
        # A router that starts now sees them all, with their owner index.
        await fresh.start()
        assert {r.name for r in fresh.cached_records()} == {"kept", "older-in-redis", "newer-in-redis"}
        assert len(await fresh.index(["alice"])) == 3
    finally:
        await raw.aclose()
        await fresh.close()
        await store.close()


async def test_every_redis_call_has_a_deadline() -> None:
    """A server that accepts connections but never answers must not hang the router."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisTokenStore(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        started = time.monotonic()
        await store.start()  # gives up waiting for the first load, keeps retrying in the background
        assert time.monotonic() - started < 2
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no answer in time"):
            await store.read("t")
        assert time.monotonic() - started < 2
        assert store.status().connected is False
    finally:
        await store.close()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
