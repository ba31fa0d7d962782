"""/token and /tokens over real HTTP against real routers (docs/api.md §1.2-1.5, §2.4, §2.5, §9 items 1-7, 16, 17).

Routers are real (``make_router``), services are real backend processes, and the Redis tests use a test-owned
``redis-server`` on a free port shared by two routers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from multidict import CIMultiDictProxy

from tests.conftest import FAKE, RunningRouter, backend_token
from tests.redis_server import RedisServer
from tests.support import eventually
from waiter.auth import Permissions
from waiter.settings import SettingsError, load_settings

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ETAG = re.compile(r"E-[0-9a-f]{32}")
ACCEPT = {"accept": "application/json"}
MakeRouter = Callable[..., Awaitable[RunningRouter]]


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]

    @property
    def message(self) -> str:
        return str(self.body["waiter-error"]["message"])


async def call(r: RunningRouter, method: str, path: str, body: Any = None, **headers: str) -> Reply:
    sent = {**ACCEPT, **{k.replace("_", "-"): v for k, v in headers.items()}}
    data = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
    async with r.client.request(method, r.url + path, data=data, headers=sent) as resp:
        text = await resp.text()
        parsed = json.loads(text) if resp.content_type == "application/json" else text
        return Reply(resp.status, parsed, resp.headers)


async def post(r: RunningRouter, body: Any, query: str = "", **headers: str) -> Reply:
    return await call(r, "POST", "/token" + query, body, **headers)


async def get(r: RunningRouter, name: str, *include: str) -> Reply:
    query = "".join(f"&include={i}" for i in include)
    return await call(r, "GET", f"/token?token={name}{query}")


async def delete(r: RunningRouter, name: str, query: str = "", **headers: str) -> Reply:
    return await call(r, "DELETE", "/token" + query, x_waiter_token=name, **headers)


async def hello(r: RunningRouter, name: str) -> str:
    """A proxied request to the token's service; the backend answers with its instance id."""
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": name}) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.text()).removeprefix("hello from ").split(".")[0]


def alice(**config: Any) -> dict[str, Any]:
    return {"run-as-user": "alice", **config}


# -- GET / POST: the happy path -----------------------------------------------------------------------------------


async def test_create_read_update_and_no_op(make_router: MakeRouter) -> None:
    r = await make_router([], **alice(**{"cluster-name": "c1"}))
    body = backend_token("api")
    created = await post(r, body, if_match="")  # the CLI sends an empty If-Match when creating
    assert created.status == 200, created.body
    assert created.body["message"] == "Successfully created api"
    assert created.body["service-description"] == {k: v for k, v in body.items() if k != "token"}
    assert created.headers["x-waiter-operation-result"] == "token-created"
    etag = created.headers["etag"]
    assert ETAG.fullmatch(etag)

    read = await get(r, "api")
    assert read.status == 200 and read.headers["etag"] == etag
    assert read.body == {**{k: v for k, v in body.items() if k != "token"}, "owner": "alice"}

    same = await post(r, body, if_match=etag)
    assert same.status == 200 and same.body["message"] == "No changes detected for api"
    assert same.headers["x-waiter-operation-result"] == "token-no-op" and same.headers["etag"] == etag

    updated = await post(r, {**body, "version": "2"}, if_match=etag)
    assert updated.status == 200 and updated.body["message"] == "Successfully updated api"
    assert updated.headers["x-waiter-operation-result"] == "token-updated"
    assert updated.headers["etag"] != etag and ETAG.fullmatch(updated.headers["etag"])

    meta = await get(r, "api", "metadata")
    assert meta.body["cluster"] == "c1" and meta.body["root"] == "c1" and meta.body["last-update-user"] == "alice"
    assert ISO.fullmatch(meta.body["last-update-time"])
    assert meta.body["previous"]["version"] == "1" and ISO.fullmatch(meta.body["previous"]["last-update-time"])
    assert meta.headers["etag"] == updated.headers["etag"]

    (entry,) = await r.get_json("/tokens?include=metadata")
    assert entry["etag"] == updated.headers["etag"] and entry["last-update-time"] == meta.body["last-update-time"]


async def test_if_match_guards_against_stale_writes(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    first = await post(r, backend_token("guarded"))
    second = await post(r, backend_token("guarded", version="2"), if_match=first.headers["etag"])
    assert second.status == 200
    stale = await post(r, backend_token("guarded", version="3"), if_match=first.headers["etag"])
    assert stale.status == 412 and stale.message.startswith("Cannot modify stale token")
    assert second.headers["etag"] in stale.message
    empty = await post(r, backend_token("guarded", version="3"), if_match="")
    assert empty.status == 412 and "Cannot modify stale token" in empty.message
    assert (await get(r, "guarded")).body["version"] == "2"


async def test_token_name_from_query_or_body_but_not_both(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    fields = {k: v for k, v in backend_token("q1").items() if k != "token"}
    assert (await post(r, fields, "?token=q1")).status == 200
    both = await post(r, backend_token("q2"), "?token=q2")
    assert both.status == 400
    assert both.message == "The token should be provided only as a query parameter or in the json payload"
    neither = await post(r, fields)
    assert neither.status == 400 and neither.message.startswith("Must provide the token")


@pytest.mark.parametrize(
    ("body", "query", "status", "message"),
    [
        pytest.param({"token": "a/b", "cmd": "x"}, "", 400, 'Token contains invalid character: "/"', id="bad-char"),
        pytest.param({"token": "a", "cmd": "x"}, "", 400, "Token must match pattern", id="too-short"),
        pytest.param({"token": "waiter.example", "cmd": "x"}, "", 403, "Token name is reserved", id="reserved"),
        pytest.param({"token": "empty"}, "", 400, "No parameters provided for empty", id="no-params"),
        pytest.param({"token": "tk", "cpus": -1}, "", 400, "cpus must be a positive number", id="bad-cpus"),
        pytest.param(
            {"token": "tk", "cpus": 64}, "", 400, "cpus is 64 but the max allowed is 32", id="cpus-over-limit"
        ),
        pytest.param(
            {"token": "tk", "concurrency-level": 0}, "", 400,
            "concurrency-level must be an integer in the range [1, 10000]", id="bad-concurrency",
        ),
        pytest.param(
            {"token": "tk", "cmd": "x", "fallback-period-secs": -1}, "", 400,
            "Validation failed for token:\nfallback-period-secs must be an integer between 0 and 86400 (inclusive)",
            id="bad-user-metadata",
        ),
        pytest.param(
            {"token": "tk", "cmd": "x", "colour": "blue"}, "", 400, "Unsupported key(s) in token", id="unknown-key"
        ),
        pytest.param(
            {"token": "tk", "cmd": "x", "last-update-time": 5}, "", 400,
            "Cannot modify last-update-time token metadata", id="last-update-time",
        ),
        pytest.param(
            {"token": "tk", "cmd": "x", "previous": {}}, "", 400, "Cannot modify previous token metadata", id="previous"
        ),
        pytest.param(
            {"token": "tk", "cmd": "x", "root": "r"}, "", 400, "Cannot modify root token metadata", id="root"
        ),
        pytest.param(
            {"token": "tk", "cmd": "x", "authentication": "disabled"}, "", 400,
            "permitted-user must be '*' when authentication is 'disabled'", id="auth-disabled",
        ),
        pytest.param(
            {"token": "tk", "cmd": "x", "run-as-user": "bob"}, "", 403,
            "Authenticated user 'alice' cannot run as user 'bob'", id="run-as-other",
        ),
        pytest.param(
            {"token": "tk", "cmd": "x", "owner": "bob"}, "", 403,
            "Authenticated user 'alice' cannot create token tk owned by 'bob'", id="create-for-other",
        ),
        pytest.param({"token": "tk", "cmd": "x"}, "?update-mode=boss", 400, "Invalid update-mode", id="update-mode"),
        pytest.param(
            {"token": "tk", "cmd": "x"}, "?update-mode=admin", 403, "that needs a token admin", id="admin-mode"
        ),
        pytest.param("{not json", "", 400, "The request body is not valid JSON", id="bad-json"),
        pytest.param("[1, 2]", "", 400, "must be a JSON object of token fields", id="not-an-object"),
    ],
)
async def test_post_errors(make_router: MakeRouter, body: Any, query: str, status: int, message: str) -> None:
    r = await make_router([], **alice(hostnames=["waiter.example"], **{"token-admins": []}))
    reply = await post(r, body, query)
    assert reply.status == status, reply.body
    assert message in reply.message
    assert reply.body["waiter-error"]["status"] == status
    assert (await r.get_json("/tokens")) == []


async def test_get_errors(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    unknown = await get(r, "nope")
    assert unknown.status == 404 and unknown.message == "Couldn't find token nope"
    nameless = await call(r, "GET", "/token")
    assert nameless.status == 400 and nameless.message.startswith("Couldn't find token in request")
    assert (await call(r, "PUT", "/token")).status == 405
    assert "etag" not in unknown.headers


async def test_update_mode_admin(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())  # alice is a token admin by default (the router's run-as-user)
    body = backend_token("adm", owner="bob", **{"run-as-user": "bob", "last-update-time": "2023-03-22T16:56:20.123Z"})
    created = await post(r, body, "?update-mode=admin")
    assert created.status == 200 and created.body["message"] == "Successfully created adm"
    meta = await get(r, "adm", "metadata")
    assert meta.body["owner"] == "bob" and meta.body["last-update-time"] == "2023-03-22T16:56:20.123Z"
    no_if_match = await post(r, body, "?update-mode=admin")
    assert no_if_match.status == 400
    assert no_if_match.message == "Must specify if-match header for admin mode token updates"
    again = await post(r, body, "?update-mode=admin", if_match=created.headers["etag"])
    assert again.status == 200 and again.body["message"] == "Successfully updated adm"  # admin mode skips no-op
    bad_time = await post(r, {**body, "last-update-time": "yesterday"}, "?update-mode=admin",
                          if_match=again.headers["etag"])
    assert bad_time.status == 400 and "last-update-time is 'yesterday' but must be" in bad_time.message


async def test_history_keeps_five_levels(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    for version in range(1, 9):
        assert (await post(r, backend_token("hist", version=str(version)))).status == 200
    record = (await get(r, "hist", "metadata")).body
    versions = []
    while "previous" in record:
        record = record["previous"]
        versions.append(record["version"])
    assert versions == ["7", "6", "5", "4", "3"]


# -- DELETE ---------------------------------------------------------------------------------------------------------


async def test_soft_delete_hides_and_recreate_keeps_history(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    etag = (await post(r, backend_token("gone"))).headers["etag"]
    nameless = await call(r, "DELETE", "/token?token=gone")  # the name comes only from x-waiter-token
    assert nameless.status == 400 and nameless.message.startswith("Couldn't find token in request")
    assert (await delete(r, "gone", if_match="E-0")).status == 412

    deleted = await delete(r, "gone", if_match=etag)
    assert deleted.status == 200 and deleted.body == {"delete": "gone", "hard-delete": False, "success": True}
    assert deleted.headers["etag"] == etag and deleted.headers["x-waiter-operation-result"] == "token-deleted"

    assert (await get(r, "gone")).status == 404
    shown = await get(r, "gone", "deleted", "metadata")
    assert shown.status == 200 and shown.body["deleted"] is True and "etag" not in shown.headers
    assert await r.get_json("/tokens") == []
    (entry,) = await r.get_json("/tokens?include=deleted&include=metadata")
    assert entry["token"] == "gone" and entry["deleted"] is True
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "gone", **ACCEPT}) as resp:
        assert resp.status == 404  # a deleted token serves nothing
    again = await delete(r, "gone")
    assert again.status == 404 and again.message == "Token gone does not exist"

    recreated = await post(r, backend_token("gone", version="2"), if_match="")
    assert recreated.status == 200 and recreated.body["message"] == "Successfully created gone"
    assert (await get(r, "gone", "metadata")).body["previous"]["deleted"] is True


async def test_hard_delete_needs_if_match_and_an_admin(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    etag = (await post(r, backend_token("hard"))).headers["etag"]
    missing = await delete(r, "hard", "?hard-delete=true")
    assert missing.status == 400 and missing.message.startswith("Must specify if-match header for token hard deletes")
    assert (await delete(r, "hard", "?hard-delete=true", if_match="E-0")).status == 412
    done = await delete(r, "hard", "?hard-delete=TRUE", if_match=etag)
    assert done.status == 200 and done.body == {"delete": "hard", "hard-delete": True, "success": True}
    assert (await get(r, "hard", "deleted")).status == 404
    assert await r.get_json("/tokens?include=deleted") == []
    # a soft-deleted token may be hard-deleted without If-Match (it has no ETag to send)
    await post(r, backend_token("soft"))
    assert (await delete(r, "soft")).status == 200
    assert (await delete(r, "soft", "?hard-delete=true")).status == 200
    assert (await get(r, "soft", "deleted")).status == 404


async def test_unknown_token_delete_is_404(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    reply = await delete(r, "nope")
    assert reply.status == 404 and reply.message == "Token nope does not exist"


# -- file tokens ----------------------------------------------------------------------------------------------------


async def test_file_tokens_are_shown_but_read_only(make_router: MakeRouter) -> None:
    r = await make_router([backend_token("filed", owner="carol")], **alice(**{"cluster-name": "c9"}))
    path = r.tokens_dir / "filed.yaml"
    read = await get(r, "filed", "metadata")
    assert read.status == 200 and ETAG.fullmatch(read.headers["etag"])
    assert read.body["owner"] == "carol" and read.body["cluster"] == "c9"
    assert ISO.fullmatch(read.body["last-update-time"])
    expected = f"Token filed is defined in {path} and is read-only through the API; edit the file instead."
    for reply in (
        await post(r, backend_token("filed", version="2")),
        await delete(r, "filed"),
        await delete(r, "filed", "?hard-delete=true", if_match=read.headers["etag"]),
    ):
        assert reply.status == 409 and reply.message == expected
    (entry,) = await r.get_json("/tokens?include=metadata")
    assert entry["token"] == "filed" and entry["owner"] == "carol" and entry["etag"] == read.headers["etag"]


# -- /tokens --------------------------------------------------------------------------------------------------------


async def test_tokens_owner_include_and_maintenance_filters(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    await post(r, backend_token("a1", maintenance={"message": "back soon"}))
    await post(r, backend_token("a2"))
    await post(r, backend_token("b1", owner="bob", **{"run-as-user": "*"}), "?update-mode=admin")
    await delete(r, "a2")

    def names(entries: list[dict[str, Any]]) -> list[str]:
        return [e["token"] for e in entries]

    everything = await r.get_json("/tokens")
    assert names(everything) == ["a1", "b1"]
    assert everything[0] == {"token": "a1", "owner": "alice", "maintenance": True, "reference-type->reference-name": {}}
    assert names(await r.get_json("/tokens?owner=bob")) == ["b1"]
    assert names(await r.get_json("/tokens?owner=alice&owner=bob&include=deleted")) == ["a1", "a2", "b1"]
    assert names(await r.get_json("/tokens?owner=nobody")) == []
    assert names(await r.get_json("/tokens?maintenance=true")) == ["a1"]
    assert names(await r.get_json("/tokens?maintenance=false")) == ["b1"]
    for entry in await r.get_json("/tokens?include=metadata&include=deleted"):
        assert set(entry) == {"token", "owner", "maintenance", "reference-type->reference-name", "deleted", "etag",
                              "last-update-time"}
        assert ETAG.fullmatch(entry["etag"]) and ISO.fullmatch(entry["last-update-time"])


async def test_maintenance_answers_503_with_the_message(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    await post(r, backend_token("fixing", maintenance={"message": "Down for repairs."}))
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "fixing", **ACCEPT}) as resp:
        assert resp.status == 503
        assert (await resp.json())["waiter-error"]["message"] == "Down for repairs."


# -- tokens and services --------------------------------------------------------------------------------------------


async def test_etag_is_the_service_version_and_updates_reach_the_new_service(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    first = await post(r, backend_token("svc"))
    sid1 = await hello(r, "svc")
    (app,) = await r.get_json("/apps?token=svc")
    assert app["service-id"] == sid1 and app["source-tokens"] == [[{"token": "svc", "version": first.headers["etag"]}]]

    # user metadata only: a new ETag, the same service
    meta_only = await post(r, backend_token("svc", **{"fallback-period-secs": 10}), if_match=first.headers["etag"])
    assert meta_only.headers["etag"] != first.headers["etag"]
    assert await hello(r, "svc") == sid1

    # a service parameter: a new service id, and the very next proxied request reaches it (no fallback period)
    new = backend_token("svc", version="2", **{"fallback-period-secs": 0})
    updated = await post(r, new, if_match=meta_only.headers["etag"])
    sid2 = await hello(r, "svc")
    assert sid2 != sid1 and sid2.startswith("waiter-service-svc-")
    apps = {a["service-id"]: a for a in await r.get_json("/apps?token=svc")}
    assert apps[sid2]["source-tokens"] == [[{"token": "svc", "version": updated.headers["etag"]}]]


async def test_status_and_settings_report_the_token_store(make_router: MakeRouter) -> None:
    r = await make_router([], **alice())
    status = await r.get_json("/status")
    assert status["token-store"] == {"kind": "memory", "connected": True, "cached-tokens": 0}
    assert status["token-file-errors"] == []
    settings = await r.get_json("/settings")
    assert settings["redis"] is None and settings["token-admins"] == ["alice"]


@pytest.mark.parametrize(
    ("yaml_config", "expected"),
    [
        pytest.param({"redis": "redis://:secret@127.0.0.1:1/0"}, {"redis": "redis://:***@127.0.0.1:1/0"}, id="redact"),
        pytest.param({"redis": None}, {"redis": None}, id="memory"),
        pytest.param({"run-as-user": "zed"}, {"token-admins": ["zed"]}, id="admin-default"),
        pytest.param({"token-admins": []}, {"token-admins": []}, id="no-admins"),
        pytest.param(
            {"redis": "http://x"}, "redis is 'http://x' but it must start with redis://", id="scheme"
        ),
        pytest.param(
            {"redis": "http://u:pw@x"}, "redis is 'http://u:***@x' but it must start with", id="error-hides-password"
        ),
        pytest.param({"token-admins": "bob"}, "token-admins is 'bob' but must be a list of user names", id="admins"),
    ],
)
def test_token_settings(tmp_path: Any, yaml_config: dict[str, Any], expected: dict[str, Any] | str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(yaml_config))
    if isinstance(expected, str):
        with pytest.raises(SettingsError) as err:
            load_settings(config)
        assert expected in str(err.value)
        return
    public = load_settings(config).public()
    assert {k: public[k] for k in expected} == expected


# -- permissions (pure) -----------------------------------------------------------------------------------------


PERMS = Permissions(frozenset({"root"}))
LIVE = {"owner": "alice", "editor": "eve", "cmd": "x"}


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        pytest.param(lambda: PERMS.run_as_problem("alice", "alice"), None, id="run-as-self"),
        pytest.param(lambda: PERMS.run_as_problem("alice", "*"), None, id="run-as-anyone"),
        pytest.param(lambda: PERMS.run_as_problem("alice", None), None, id="run-as-unset"),
        pytest.param(lambda: PERMS.run_as_problem("root", "bob"), "cannot run as user 'bob'", id="admin-not-run-as"),
        pytest.param(lambda: PERMS.create_problem("alice", "t", "alice"), None, id="create-own"),
        pytest.param(lambda: PERMS.create_problem("root", "t", "bob"), None, id="admin-creates-for-other"),
        pytest.param(lambda: PERMS.create_problem("alice", "t", "bob"), "owned by 'bob'", id="create-for-other"),
        pytest.param(lambda: PERMS.update_problem("alice", "t", LIVE, {"cmd"}), None, id="owner-updates"),
        pytest.param(lambda: PERMS.update_problem("root", "t", LIVE, {"owner"}), None, id="admin-updates"),
        pytest.param(lambda: PERMS.update_problem("eve", "t", LIVE, {"cmd"}), None, id="editor-updates"),
        pytest.param(
            lambda: PERMS.update_problem("eve", "t", LIVE, {"owner", "cmd"}), "cannot change its owner",
            id="editor-owner",
        ),
        pytest.param(
            lambda: PERMS.update_problem("eve", "t", LIVE, {"run-as-user"}), "its run-as-user", id="editor-run-as"
        ),
        pytest.param(lambda: PERMS.update_problem("mallory", "t", LIVE, {"cmd"}), "cannot update token t",
                     id="stranger-updates"),
        pytest.param(lambda: PERMS.manage_problem("eve", "t", LIVE, "delete"), "cannot delete token t",
                     id="editor-cannot-delete"),
        pytest.param(lambda: PERMS.manage_problem("bob", "t", {"run-as-user": "bob"}, "delete"), None,
                     id="legacy-owner-is-run-as-user"),
        pytest.param(lambda: PERMS.admin_problem("alice", "hard-delete token t"), "token-admins: root",
                     id="not-admin"),
        pytest.param(lambda: PERMS.admin_problem("root", "hard-delete token t"), None, id="admin"),
    ],
)
def test_permissions(check: Callable[[], str | None], problem: str | None) -> None:
    found = check()
    assert (found is None) if problem is None else (found is not None and problem in found), found


# -- two routers, one Redis ------------------------------------------------------------------------------------------


async def test_two_routers_share_tokens_through_redis(make_router: MakeRouter, redis_server: RedisServer) -> None:
    a = await make_router([], **alice(redis=redis_server.url))
    b = await make_router([], **alice(redis=redis_server.url))
    created = await post(a, backend_token("shared"))
    assert created.status == 200
    started = time.monotonic()

    async def b_knows() -> bool:
        return b.router.tokens.get("shared") is not None

    await eventually(b_knows, timeout=2, what="router B to see the token")
    assert time.monotonic() - started < 0.5
    assert (await get(b, "shared")).headers["etag"] == created.headers["etag"]
    sid1 = await hello(b, "shared")  # by the proxy path, not only GET /token

    new = backend_token("shared", version="2", **{"fallback-period-secs": 0})  # no fallback to version 1
    updated = await post(a, new, if_match=created.headers["etag"])
    assert updated.status == 200

    async def b_serves_new_version() -> bool:
        record = b.router.tokens.get("shared")
        return record is not None and record.etag == updated.headers["etag"]

    await eventually(b_serves_new_version, timeout=2, what="router B to see the update")
    sid2 = await hello(b, "shared")
    assert sid2 != sid1 and await hello(a, "shared") == sid2
    assert (await delete(b, "shared", if_match=updated.headers["etag"])).status == 200

    async def a_forgot() -> bool:
        return a.router.tokens.get("shared") is None

    await eventually(a_forgot, timeout=2, what="router A to see the delete")
    assert (await get(a, "shared")).status == 404


async def test_only_owners_and_editors_change_tokens(make_router: MakeRouter, redis_server: RedisServer) -> None:
    """Two routers with different one-user identities share one store: alice's tokens are hers."""
    config = {"redis": redis_server.url, "token-admins": []}
    a = await make_router([], **{"run-as-user": "alice", **config})
    m = await make_router([], **{"run-as-user": "mallory", **config})
    etag = (await post(a, backend_token("mine"))).headers["etag"]
    await eventually(lambda: _known(m, "mine"), timeout=2, what="the token to reach mallory's router")

    update = await post(m, backend_token("mine", version="2"), if_match=etag)
    assert update.status == 403 and "User 'mallory' cannot update token mine" in update.message
    soft = await delete(m, "mine")
    assert soft.status == 403 and "User 'mallory' cannot delete token mine" in soft.message
    hard = await delete(m, "mine", "?hard-delete=true", if_match=etag)
    assert hard.status == 403 and "needs a token admin" in hard.message

    editable = await post(a, backend_token("mine", editor="mallory"), if_match=etag)
    edit = await post(m, backend_token("mine", editor="mallory", version="3"), if_match=editable.headers["etag"])
    assert edit.status == 200 and edit.body["message"] == "Successfully updated mine"
    steal = await post(m, backend_token("mine", editor="mallory", owner="mallory"), if_match=edit.headers["etag"])
    assert steal.status == 403 and "is the editor of token mine and cannot change its owner" in steal.message
    assert (await get(a, "mine")).body["owner"] == "alice"


async def test_concurrent_writers_through_two_routers_lose_no_update(
    make_router: MakeRouter, redis_server: RedisServer
) -> None:
    a = await make_router([], **alice(redis=redis_server.url))
    b = await make_router([], **alice(redis=redis_server.url))
    writers = [post(r, backend_token("busy", version=str(v))) for v, r in enumerate([a, b, a, b, a])]
    replies = await asyncio.gather(*writers)
    assert [reply.status for reply in replies] == [200] * 5, [reply.body for reply in replies]
    messages = sorted(reply.body["message"] for reply in replies)
    assert messages == ["Successfully created busy"] + ["Successfully updated busy"] * 4
    record = (await get(a, "busy", "metadata")).body
    versions = [record["version"]]
    while "previous" in record:  # every write built on the one before: the history holds each version once
        record = record["previous"]
        versions.append(record["version"])
    assert sorted(versions) == ["0", "1", "2", "3", "4"]


async def _known(r: RunningRouter, name: str) -> bool:
    return r.router.tokens.get(name) is not None


async def test_redis_outage_keeps_serving_cached_tokens(make_router: MakeRouter, redis_server: RedisServer) -> None:
    r = await make_router([], **alice(redis=redis_server.url))
    assert (await post(r, backend_token("kept"))).status == 200
    sid = await hello(r, "kept")
    redis_server.stop()

    async def outage_reported() -> bool:
        return (await r.get_json("/status"))["token-store"]["connected"] is False

    await eventually(outage_reported, timeout=5, what="/status to report the outage")
    store = (await r.get_json("/status"))["token-store"]
    assert store["kind"] == "redis" and store["error"] and store["cached-tokens"] == 1
    assert await hello(r, "kept") == sid  # still served from the cache
    refused = await post(r, backend_token("kept", version="2"))
    assert refused.status == 503 and "is unavailable" in refused.message
