"""What the router answers itself for a service: its errors carry what a real response carries (x-cid, the service
id, debug headers), and a ping reports them as Waiter does (docs/api.md §1.9, §4)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import FAKE, RunningRouter, backend_token
from tests.support import eventually

# What the router answers needs instances that answer HTTP, not processes (tests.fakes).
pytestmark = pytest.mark.schedulers(FAKE)

TOKEN = {"x-waiter-token": "echo"}
JSON = {"accept": "application/json"}
# Every debug header a router-made error for a resolved service carries (no instance was reached).
ERROR_DEBUG = {
    "x-waiter-router-id",
    "x-waiter-service-id",
    "x-waiter-request-id",
    "x-waiter-request-date",
    "x-waiter-client-protocol",
    "x-waiter-internal-protocol",
    "x-waiter-queue-timeout-ms",
    "x-waiter-socket-timeout-ms",
    "x-waiter-streaming-timeout-ms",
}
BACKEND_DEBUG = {
    "x-waiter-backend-id",
    "x-waiter-backend-host",
    "x-waiter-backend-port",
    "x-waiter-backend-proto",
    "x-waiter-backend-directory",
    "x-waiter-backend-log-url",
    "x-waiter-get-available-instance-ns",
    "x-waiter-backend-response-ns",
}


async def ping(r: RunningRouter, **headers: str) -> dict[str, Any]:
    async with r.client.get(r.url + "/waiter-ping", headers={**TOKEN, **headers}) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    return body


async def test_queue_timeout_503_carries_the_service_id_and_every_debug_header(make_router) -> None:
    r = await make_router([backend_token("echo", env={"STARTUP_DELAY_MS": "30000"})])
    sid = await r.service_id(TOKEN)
    headers = {**TOKEN, **JSON, "x-cid": "cid-1", "x-waiter-queue-timeout": "300"}
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 503
        assert resp.headers["x-cid"] == "cid-1"
        assert resp.headers["x-waiter-service-id"] == sid
        assert not any(name.lower() == "x-waiter-router-id" for name in resp.headers)  # debug not asked for
        assert (await resp.json())["waiter-error"]["service-id"] == sid
    async with r.client.get(r.url + "/hello", headers={**headers, "x-waiter-debug": "true"}) as resp:
        assert resp.status == 503
        got = {name.lower(): value for name, value in resp.headers.items()}
    assert got.keys() >= ERROR_DEBUG
    assert got["x-waiter-router-id"] == r.settings.router_id
    assert got["x-waiter-request-id"] == "cid-1"
    assert got["x-waiter-queue-timeout-ms"] == "300"
    assert got["x-waiter-client-protocol"] == "HTTP/1.1"
    assert got["x-waiter-request-date"].endswith("Z")


async def test_backend_errors_and_answers_carry_the_instance_in_debug_headers(make_router) -> None:
    r = await make_router([backend_token("echo")])
    sid = await r.service_id(TOKEN)
    debug = {**TOKEN, "x-waiter-debug": "true"}
    async with r.client.get(r.url + "/hello", headers=debug) as resp:
        assert resp.status == 200
        got = {name.lower(): value for name, value in resp.headers.items()}
    assert got.keys() >= (ERROR_DEBUG | BACKEND_DEBUG)
    assert got["x-waiter-service-id"] == sid
    assert got["x-waiter-backend-id"].startswith(sid + ".")
    assert int(got["x-waiter-backend-response-ns"]) > 0
    async with r.client.get(r.url + "/crash-before", headers={**debug, **JSON}) as resp:
        assert resp.status == 502
        assert resp.headers["x-waiter-service-id"] == sid
        assert resp.headers["x-cid"]
        crashed = resp.headers["x-waiter-backend-id"]
        assert (await resp.json())["waiter-error"]["instance-id"] == crashed
    assert crashed.startswith(sid + ".")


async def test_a_request_the_instance_read_and_dropped_is_a_502_and_reaches_it_once(make_router) -> None:
    """The instance reads the request, then closes the kept-alive connection it came on without answering: it may
    have acted on it, so the router answers 502 and sends it nowhere again (it used to resend it)."""
    r = await make_router([backend_token("echo", **{"max-instances": 1})])
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200  # the router keeps this connection to the instance for the next request
    async with r.client.get(r.url + "/drop", headers={**TOKEN, **JSON}) as resp:
        assert resp.status == 502
        assert "closed the connection" in (await resp.json())["waiter-error"]["message"]
    (instance,) = (await r.instances(await r.service_id(TOKEN)))["active-instances"]
    async with r.client.get(f"http://{instance['host']}:{instance['port']}/stats") as resp:
        assert (await resp.json())["total"] == 2  # /hello and /drop, each once


async def test_ping_of_a_service_that_cannot_start_is_its_503_as_json(make_router) -> None:
    r = await make_router([backend_token("echo", cmd="exit 1")])
    sid = await r.service_id(TOKEN)
    for attempt in ("waits for the error", "the error is known"):
        body = await ping(r, **{"x-cid": f"ping-{len(attempt)}", "x-waiter-timeout": "30000"})
        result = body["ping-response"]
        assert result["result"] == "received-response", attempt
        assert result["status"] == 503
        assert result["headers"]["x-cid"] == f"ping-{len(attempt)}"
        assert result["headers"]["x-waiter-service-id"] == sid
        assert result["headers"]["content-type"].startswith("application/json")
        error = json.loads(result["body"])["waiter-error"]
        assert error["message"].startswith("Deployment error: Invalid startup command")
        assert error["service-id"] == sid and error["status"] == 503
        assert body["service-state"]["status"] == "Failing"


async def test_ping_that_waited_out_its_queue_timeout_is_a_received_response(make_router) -> None:
    r = await make_router([backend_token("echo", env={"STARTUP_DELAY_MS": "30000"})])
    body = await ping(r, **{"x-waiter-queue-timeout": "300", "x-waiter-timeout": "20000"})
    result = body["ping-response"]
    assert result["result"] == "received-response"
    assert result["status"] == 503
    message = json.loads(result["body"])["waiter-error"]["message"]
    assert message.startswith("After 0.3 seconds, no instance available to handle request.")
    assert body["service-state"]["status"] == "Starting"


async def test_ping_answered_without_waiting_is_a_waiter_response(make_router) -> None:
    token = backend_token("echo", env={"STARTUP_DELAY_MS": "30000"}, **{"max-queue-length": 1})
    r = await make_router([token], **{"drain-timeout-secs": 0.1})  # the queued request is not waited for
    sid = await r.service_id(TOKEN)
    waiting = asyncio.create_task(r.client.get(r.url + "/hello", headers=TOKEN))
    service = r.router.registry.get(sid)

    async def queued() -> bool:
        return service is not None and service.reservations.queued == 1

    await eventually(queued, what="one queued request")
    result = (await ping(r))["ping-response"]
    assert result["result"] == "waiter-response"
    assert result["status"] == 503
    assert json.loads(result["body"])["waiter-error"]["message"] == "Max queue length exceeded"
    waiting.cancel()


async def test_ping_of_an_unknown_token_is_a_descriptor_error_with_the_error_body(make_router) -> None:
    r = await make_router([])
    result = (await ping(r, **{"x-waiter-token": "nope"}))["ping-response"]
    assert result["result"] == "descriptor-error"
    assert result["status"] == 404
    assert json.loads(result["body"])["waiter-error"]["message"] == "Couldn't find token nope"


@pytest.mark.schedulers("local")  # an instance's stdout and stderr are a process's
async def test_an_instances_logs_are_listed_for_its_owner_and_only_inside_its_sandbox(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/hello", headers={**TOKEN, "x-waiter-debug": "true"}) as resp:
        assert resp.status == 200
        log_url = resp.headers["x-waiter-backend-log-url"]
    sid = await r.service_id(TOKEN)
    (instance,) = (await r.instances(sid))["active-instances"]
    assert instance["log-url"] == r.url + log_url
    files = {f["name"]: f for f in await r.get_json(log_url)}
    assert {"stdout", "stderr"} <= files.keys()
    assert files["stderr"]["type"] == "file" and files["stderr"]["url"].startswith("file:///")
    assert isinstance(files["stderr"]["size"], int)
    async with r.client.get(r.url + log_url + "&directory=../..", headers=JSON) as resp:
        assert resp.status == 400
        assert "outside the instance's sandbox" in (await resp.json())["waiter-error"]["message"]
    async with r.client.get(r.url + f"/apps/{sid}/logs?instance-id=nope", headers=JSON) as resp:
        assert resp.status == 404
        assert "instance-id 'nope'" in (await resp.json())["waiter-error"]["message"]
