"""Token metadata, administration and listing: previous, /token-history, /tokens/owners, /tokens/reindex and the
/tokens filters (docs/api.md §1.1, §1.2, §1.5, §2.2-2.4), on the memory store and on Redis shared by two routers."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as redis

from tests.conftest import FAKE, RunningRouter, backend_token
from tests.redis_server import needs_redis
from tests.test_tokens_api import ETAG, ISO, call, delete, get, post

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

ALICE = {"run-as-user": "alice", "cluster-name": "c1"}


async def test_first_version_has_empty_previous_and_every_system_field(make_router) -> None:
    r = await make_router([], **ALICE)
    assert (await post(r, backend_token("tk", version="1"))).status == 200
    first = (await get(r, "tk", "metadata")).body
    assert first["previous"] == {}
    assert first["cluster"] == "c1" and first["root"] == "c1"
    assert first["last-update-user"] == "alice" and ISO.fullmatch(first["last-update-time"])
    assert "deleted" not in first
    assert "previous" not in (await get(r, "tk")).body  # system metadata only when asked for
    etag = (await get(r, "tk")).headers["etag"]
    assert (await post(r, backend_token("tk", version="2"), if_match=etag)).status == 200
    second = (await get(r, "tk", "metadata")).body
    assert second["previous"]["version"] == "1" and ISO.fullmatch(second["previous"]["last-update-time"])


async def test_token_history_lists_every_kept_version_newest_first(make_router) -> None:
    r = await make_router([], **ALICE)
    etags = []
    for version in ("1", "2", "3"):
        reply = await post(r, backend_token("hh", version=version), if_match=etags[-1] if etags else "")
        assert reply.status == 200
        etags.append(reply.headers["etag"])
    assert (await delete(r, "hh")).status == 200
    reply = await call(r, "GET", "/token-history?token=hh")
    assert reply.status == 200
    versions: list[dict[str, Any]] = reply.body
    assert [v.get("version") for v in versions] == ["3", "3", "2", "1"]
    assert versions[0]["deleted"] is True
    assert [v["etag"] for v in versions[1:]] == etags[::-1]  # the same ETags GET /token answered
    assert all(ETAG.fullmatch(v["etag"]) and ISO.fullmatch(v["last-update-time"]) for v in versions)
    assert all("previous" not in v for v in versions)
    missing = await call(r, "GET", "/token-history?token=nope")
    assert missing.status == 404 and missing.message == "Couldn't find token nope"
    unnamed = await call(r, "GET", "/token-history")
    assert unnamed.status == 400 and "?token=NAME" in unnamed.message


async def test_token_owners_counts_live_and_deleted_tokens(make_router) -> None:
    r = await make_router([], **ALICE)
    for name, owner in (("aa1", "alice"), ("aa2", "alice"), ("bb1", "bob")):
        assert (await post(r, {**backend_token(name), "owner": owner})).status == 200
    assert (await delete(r, "aa2")).status == 200
    reply = await call(r, "GET", "/tokens/owners")
    assert reply.status == 200
    assert reply.body == {"alice": {"tokens": 1, "deleted": 1}, "bob": {"tokens": 1, "deleted": 0}}


async def test_reindex_is_for_token_admins_only(make_router) -> None:
    r = await make_router([], **ALICE, **{"token-admins": ["root"]})
    reply = await call(r, "POST", "/tokens/reindex")
    assert reply.status == 403
    assert "alice" in reply.message
    assert (await call(r, "GET", "/tokens/reindex")).status == 405


@needs_redis
async def test_reindex_rebuilds_a_lost_owner_index_in_redis(make_router, redis_server) -> None:
    a: RunningRouter = await make_router([], **ALICE, redis=redis_server.url)
    b: RunningRouter = await make_router([], **ALICE, redis=redis_server.url)
    for name in ("xx", "yy"):
        assert (await post(a, backend_token(name))).status == 200
    before = (await call(b, "GET", "/tokens")).body
    assert [t["token"] for t in before] == ["xx", "yy"]
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        owner_keys = [key async for key in client.scan_iter(match="*:owner:alice")]
        assert owner_keys, "the owner index lives in Redis"
        await client.delete(*owner_keys)  # the index is lost; the records are not
    finally:
        await client.aclose()
    assert (await call(b, "GET", "/tokens")).body == []
    reply = await call(b, "POST", "/tokens/reindex")
    assert reply.status == 200, reply.body
    assert reply.body == {"message": "Re-indexed 2 tokens", "tokens": 2}
    assert (await call(a, "GET", "/tokens")).body == before


@pytest.mark.parametrize("path", ["/token-history?token=tk", "/tokens/owners"])
async def test_token_admin_reads_answer_json(make_router, path: str) -> None:
    r = await make_router([], **ALICE)
    assert (await post(r, backend_token("tk"))).status == 200
    reply = await call(r, "GET", path)
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/json")


async def test_tokens_filters(make_router) -> None:
    r = await make_router([], **{**ALICE, "token-admins": ["alice"]})
    tokens = [
        {**backend_token("star"), "run-as-user": "*", "metadata": {"team": "blue"}},
        {"token": "partial", "mem": 128, "allowed-params": ["X"]},  # no cmd: requests must bring one
        {**backend_token("bobs", cpus=0.2), "owner": "bob"},
    ]
    for token in tokens:
        assert (await post(r, token)).status == 200, token

    async def names(query: str) -> list[str]:
        reply = await call(r, "GET", "/tokens?" + query)
        assert reply.status == 200, reply.body
        return sorted(t["token"] for t in reply.body)

    assert await names("run-as-requester=true") == ["star"]
    assert await names("run-as-requester=false") == ["bobs", "partial"]
    assert await names("requires-parameters=true") == ["partial"]
    assert await names("requires-parameters=false") == ["bobs", "star"]
    assert await names("can-manage-as-user=bob") == ["bobs"]
    assert await names("can-manage-as-user=alice") == ["bobs", "partial", "star"]  # a token admin
    assert await names("metadata.team=*") == ["star"]
    assert await names("cpus=0%5C.[2-9]") == ["bobs"]  # a full-match regular expression
    assert await names("owner=bob&run-as-requester=false") == ["bobs"]
    reply = await call(r, "GET", "/tokens?parameters=cpus&parameters=metadata.team&owner=alice")
    assert {t["token"]: t["parameters"] for t in reply.body} == {
        "partial": {"cpus": None, "metadata.team": None},
        "star": {"cpus": 0.1, "metadata.team": "blue"},
    }
