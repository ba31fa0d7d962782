"""Every JSON shape of docs/api.md §1 compared key by key with a live router (one running service, one deleted):
each answer must have the contract's required keys and nothing outside its required and optional ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningRouter, backend_token

TOKEN = {"x-waiter-token": "echo"}

APP = {
    "required": {
        "service-id",
        "url",
        "status",
        "instance-counts",
        "request-metrics",
        "last-request-time",
        "resource-usage",
        "service-description",
        "source-tokens",
        "current-for-tokens",
        "scaling-state",
    },
    "optional": {"deployment-error-message", "effective-parameters", "instances", "references", "token-fallback"},
}
DETAIL = {
    "required": {
        "service-id",
        "router-id",
        "num-routers",
        "status",
        "request-metrics",
        "resource-usage",
        "service-description",
        "last-request-time",
        "scaling-state",
        "source-tokens",
        "current-for-tokens",
        "instances",
        "num-active-instances",
        "service-description-overrides",
        "service-suspended-state",
    },
    "optional": {"effective-parameters", "deployment-error-message", "references", "metrics"},
}
INACTIVE = {
    "required": DETAIL["required"] - {"service-description-overrides", "service-suspended-state"},
    "optional": DETAIL["optional"],
}
INSTANCE = {
    "required": {
        "id",
        "service-id",
        "started-at",
        "healthy?",
        "status",
        "host",
        "port",
        "extra-ports",
        "log-directory",
        "flags",
        "killed?",
        "failed?",
    },
    "optional": {
        "health-check-status",
        "exit-code",
        "message",
        "log-url",
        "shell-scheduler/pid",
        "shell-scheduler/working-directory",
    },
}
PING = {"required": {"ping-response", "service-description", "service-state"}, "optional": set()}
PING_RESPONSE = {"required": {"result", "status", "headers", "body", "instance"}, "optional": set()}
SERVICE_STATE = {"required": {"service-id", "exists?", "healthy?", "status"}, "optional": set()}
STATE = {"required": {"router-id", "routers", "details"}, "optional": set()}
COMPONENT = {"required": {"router-id", "state"}, "optional": set()}
TOKEN_META = {
    "required": {
        "cmd",
        "cpus",
        "mem",
        "version",
        "name",
        "health-check-url",
        "grace-period-secs",
        "owner",
        "cluster",
        "root",
        "last-update-time",
        "last-update-user",
        "previous",
    },
    "optional": {"deleted"},
}
TOKENS_ITEM = {
    "required": {
        "token",
        "owner",
        "maintenance",
        "reference-type->reference-name",
        "deleted",
        "etag",
        "last-update-time",
    },
    "optional": {"parameters"},
}
DELETE_APP = {"required": {"service-id", "success", "result", "message", "routers-agree"}, "optional": set()}


def check(body: dict[str, Any], shape: dict[str, set[str]], what: str) -> None:
    keys = set(body)
    missing = shape["required"] - keys
    unknown = keys - shape["required"] - shape["optional"]
    assert not missing and not unknown, f"{what}: missing {sorted(missing)}, not in the contract {sorted(unknown)}"


@pytest.fixture
async def router(make_router) -> RunningRouter:
    r: RunningRouter = await make_router([backend_token("echo"), backend_token("gone", version="2")])
    for name in ("echo", "gone"):
        async with r.client.get(r.url + "/hello", headers={"x-waiter-token": name}) as resp:
            assert resp.status == 200
    return r


Case = tuple[str, Callable[[Any], Any], dict[str, set[str]]]
CASES: list[Case] = [
    ("/apps?effective-parameters=true", lambda body: body[0], APP),
    ("/apps/{sid}", lambda body: body, DETAIL),
    ("/apps/{sid}", lambda body: body["instances"]["active-instances"][0], INSTANCE),
    ("/apps/{gone}", lambda body: body, INACTIVE),
    ("/apps/{gone}", lambda body: body["instances"]["killed-instances"][0], INSTANCE),
    ("/state", lambda body: body, STATE),
    ("/state/maintainer", lambda body: body, COMPONENT),
    ("/token?token=echo&include=metadata", lambda body: body, TOKEN_META),
    ("/tokens?include=metadata", lambda body: body[0], TOKENS_ITEM),
]


@pytest.mark.parametrize(("path", "pick", "shape"), CASES, ids=[f"{c[0]}:{i}" for i, c in enumerate(CASES)])
async def test_shape(router: RunningRouter, path: str, pick: Callable[[Any], Any], shape: dict[str, set[str]]) -> None:
    r = router
    sid = await r.service_id(TOKEN)
    gone = await r.service_id({"x-waiter-token": "gone"})
    if "{gone}" in path:
        async with r.client.delete(r.url + f"/apps/{gone}?timeout=5000") as resp:
            assert resp.status == 200
            check(await resp.json(), DELETE_APP, "DELETE /apps/{id}")
    body = await r.get_json(path.format(sid=sid, gone=gone))
    check(pick(body), shape, path)


async def test_ping_shape(router: RunningRouter) -> None:
    async with router.client.get(router.url + "/waiter-ping", headers=TOKEN) as resp:
        body = await resp.json()
    check(body, PING, "/waiter-ping")
    check(body["ping-response"], PING_RESPONSE, "ping-response")
    check(body["service-state"], SERVICE_STATE, "service-state")
