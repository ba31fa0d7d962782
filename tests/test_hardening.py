"""Hostile and unlucky input against a real router on real sockets: every error is an answer (never an empty
reply, never a traceback in a body), and nothing a client sends runs unbounded or starts a broken service."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from tests.conftest import BACKEND_CMD, FAKE, RunningRouter, backend_token
from tests.support import Response, eventually, read_response
from tests.test_frontdoor import close, connect
from waiter import jsonbounds
from waiter.availability import Availability
from waiter.text import printable

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)


async def send_raw(r: RunningRouter, data: bytes) -> Response:
    """One request written byte for byte (curl and aiohttp would refuse or re-encode the bad bytes)."""
    reader, writer = await connect(r)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader)
    finally:
        await close(writer)


def request(path: bytes = b"/", *headers: bytes, method: bytes = b"GET", host: bytes = b"127.0.0.1") -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: " + host, *headers, b"Connection: close", b"", b""]
    return b"\r\n".join(lines)


def text_of(resp: Response) -> str:
    return resp.body.decode("utf-8")  # strict: the router's answers are always valid UTF-8


# -- every error is an answer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [b"text/plain", b"text/html", b"application/json"])
async def test_a_path_that_is_not_utf8_gets_an_error_page(make_router, accept: bytes) -> None:
    r = await make_router()
    resp = await send_raw(r, request(b"/%ff?q=%fe", b"x-waiter-token: nosuch", b"Accept: " + accept))
    assert resp.status == 404
    body = text_of(resp)
    assert "Couldn't find token nosuch" in body or "Couldn&#x27;t find token nosuch" in body
    if accept == b"application/json":
        assert json.loads(body)["waiter-error"]["uri"] == "/\\xff"
    else:
        assert "/\\xff" in body


async def test_a_token_that_is_not_utf8_is_a_400_naming_the_header(make_router) -> None:
    r = await make_router()
    resp = await send_raw(r, request(b"/", b"x-waiter-token: no\xffsuch", b"Accept: application/json"))
    assert resp.status == 400
    message = json.loads(text_of(resp))["waiter-error"]["message"]
    assert "x-waiter-token must be UTF-8 text without NUL characters" in message
    assert "byte 0xff at position 2" in message


async def test_a_host_and_cid_that_are_not_utf8_are_escaped(make_router) -> None:
    r = await make_router()
    # A proxied request (the front door renders the error) and an API one (the aiohttp app renders it).
    for path, extra in ((b"/", b"x-waiter-token: nosuch"), (b"/no-such-endpoint", b"x-waiter-debug: true")):
        resp = await send_raw(r, request(path, extra, b"x-cid: a\xffb", b"Accept: application/json", host=b"h\xfe"))
        assert resp.status == 404, resp
        error = json.loads(text_of(resp))["waiter-error"]
        assert error["cid"] == "a\\xffb" and resp.headers["x-cid"] == "a\\xffb"
        assert error["host"] == "h\\xfe"


async def test_an_unexpected_failure_is_a_500_naming_the_cid_logged_once(
    make_router, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    r = await make_router()

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    # A fault injected into the running router: a bug anywhere on the request path.
    monkeypatch.setattr(r.router, "service_for", broken)
    monkeypatch.setitem(r.router.routes.exact, "/status", {"GET": broken})
    caplog.set_level(logging.ERROR)
    for path, extra in ((b"/", b"x-waiter-token: echo"), (b"/status", b"x-waiter-debug: true")):
        caplog.clear()
        resp = await send_raw(r, request(path, extra, b"x-cid: cid-" + path))
        assert resp.status == 500
        body = text_of(resp)
        cid = "cid-" + path.decode()
        assert f"the router logged the details under cid {cid}." in body
        assert "secret internals" not in body and "RuntimeError" not in body
        logged = [rec for rec in caplog.records if cid in rec.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None


async def test_the_router_keeps_serving_after_bad_bytes(make_router) -> None:
    r = await make_router()
    responses = await asyncio.gather(*(send_raw(r, request(b"/%ff", b"x-waiter-token: \xff")) for _ in range(20)))
    assert {resp.status for resp in responses} == {400}
    async with r.client.get(r.url + "/status") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain é", "plain é"),
        ("a\udcffb", "a\\xffb"),
        ("json \ud800 lone", "json \\ud800 lone"),
        ("\udc80", "\\x80"),
        ("nul\x00", "nul\\x00"),
    ],
)
def test_printable_escapes_what_is_not_utf8(text: str, shown: str) -> None:
    assert printable(text) == shown
    printable(text).encode("utf-8")


# -- validation at the edge: text that is not UTF-8 or holds NUL starts nothing ------------------------------------


def fly_request(header: bytes) -> bytes:
    return request(
        b"/",
        b"x-waiter-cmd: " + BACKEND_CMD.encode(),
        b"x-waiter-cpus: 0.1",
        b"x-waiter-mem: 256",
        b"x-waiter-version: 1",
        header,
        b"Accept: application/json",
    )


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (b"x-waiter-cmd: exec \xff " + BACKEND_CMD.encode(), "x-waiter-cmd"),
        (b"x-waiter-env-greeting: hi\xc3", "x-waiter-env-greeting"),
        (b"x-waiter-name: caf\xe9", "x-waiter-name"),
        (b"x-waiter-metadata-team: \xfe", "x-waiter-metadata-team"),
    ],
)
async def test_header_text_that_is_not_utf8_is_a_400_and_starts_nothing(make_router, header: bytes, field: str) -> None:
    r = await make_router()
    resp = await send_raw(r, fly_request(header))
    assert resp.status == 400, resp
    message = json.loads(text_of(resp))["waiter-error"]["message"]
    assert f"{field} must be UTF-8 text without NUL characters, but it is not valid UTF-8" in message
    assert await r.get_json("/apps") == []
    assert not r.router.registry.scheduler.service_ids()


async def post_token(r: RunningRouter, body: bytes) -> tuple[int, str]:
    async with r.client.post(r.url + "/token", data=body, headers={"accept": "application/json"}) as resp:
        text = await resp.text()
        return resp.status, json.loads(text)["waiter-error"]["message"] if resp.status >= 400 else text


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (
            {"cmd": "exec \ud800 x"},
            "cmd must be UTF-8 text without NUL characters, but it is not valid UTF-8 "
            "(a lone surrogate \\ud800 at position 5).",
        ),
        (
            {"cmd": "echo hi\u0000; exec x"},
            "cmd must be UTF-8 text without NUL characters, but it contains a NUL character at position 7.",
        ),
        ({"env": {"GREETING": "a\u0000b"}}, "env.GREETING must be UTF-8 text without NUL characters"),
        ({"metadata": {"team": "\udcff"}}, "metadata.team must be UTF-8 text without NUL characters"),
        ({"owner": "bob\u0000"}, "owner must be UTF-8 text without NUL characters"),
        ({"cors-rules": [{"origin-regex": "x\u0000"}]}, "cors-rules[0].origin-regex must be UTF-8 text"),
    ],
)
async def test_token_text_that_is_not_utf8_or_has_nul_is_a_400_and_saves_nothing(
    make_router, fields: dict[str, Any], problem: str
) -> None:
    r = await make_router()
    body = backend_token("garbled")
    body.update(fields)
    status, message = await post_token(r, json.dumps(body).encode())
    assert status == 400
    assert problem in message
    async with r.client.get(r.url + "/token?token=garbled") as resp:
        assert resp.status == 404


async def test_a_token_body_that_is_not_utf8_is_a_400(make_router) -> None:
    r = await make_router()
    status, message = await post_token(r, b'{"token": "t", "cmd": "\xff"}')
    assert status == 400
    assert message == "The request body is not valid UTF-8 (byte 0xff at position 23)."


async def test_a_token_file_with_a_nul_is_reported_and_not_loaded(make_router) -> None:
    r = await make_router([backend_token("nul", cmd="echo \0; " + BACKEND_CMD)])
    assert r.router.tokens.get("nul") is None
    status = await r.get_json("/status")
    [problem] = status["token-file-errors"]
    assert "cmd must be UTF-8 text without NUL characters, but it contains a NUL character at position 5" in str(
        problem
    )


# -- nothing a client sends runs unbounded on the event loop ------------------------------------------------------


async def test_a_backtracking_apps_filter_answers_at_once(make_router) -> None:
    r = await make_router()
    # Python's re needs ~2^40 steps for this filter against this cmd; the router's loop (and this test) would hang.
    sid = await r.service_id(on_the_fly(cmd="exec python3 " + "x" * 40))
    apps = await r.get_json("/apps?cmd=exec%20pytho(.%7C.)*X")
    assert apps == []
    apps = await r.get_json("/apps?cmd=exec%20pytho(.%7C.)*x")
    assert [a["service-id"] for a in apps] == [sid]


async def test_tokens_filters_run_on_re2_too(make_router) -> None:
    r = await make_router()
    for name, team in (("blue-one", "blue"), ("red-one", "red")):
        body = backend_token(name, cmd="exec python3 " + "x" * 40, metadata={"team": team})
        assert (await post_token(r, json.dumps(body).encode()))[0] == 200

    async def listed(query: str) -> list[str]:
        return [t["token"] for t in await r.get_json("/tokens?" + query)]

    assert await listed("cmd=exec%20pytho(.%7C.)*X") == []
    assert await listed("metadata.team=bl.*") == ["blue-one"]
    assert await listed("metadata.team=*&name=red-.*") == ["red-one"]
    async with r.client.get(r.url + "/tokens?cmd=(a)%5C1", headers={"accept": "application/json"}) as resp:
        assert resp.status == 400
        assert (
            "The filter cmd is not a regular expression RE2 accepts" in (await resp.json())["waiter-error"]["message"]
        )


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("cmd=(a)%5C1", "The filter cmd is not a regular expression RE2 accepts: a backslash escape RE2 does not know"),
        ("name=(%3F=x)", "The filter name is not a regular expression RE2 accepts"),
        ("token=" + "a" * 1025, "The filter token is 1025 characters long; the limit is 1024."),
    ],
)
async def test_a_filter_re2_cannot_run_is_a_400_naming_it(make_router, query: str, problem: str) -> None:
    r = await make_router()
    async with r.client.get(f"{r.url}/apps?{query}", headers={"accept": "application/json"}) as resp:
        assert resp.status == 400
        assert problem in (await resp.json())["waiter-error"]["message"]


def on_the_fly(**params: str) -> dict[str, str]:
    headers = {"x-waiter-cmd": BACKEND_CMD, "x-waiter-cpus": "0.1", "x-waiter-mem": "256", "x-waiter-version": "1"}
    headers.update({f"x-waiter-{k}": v for k, v in params.items()})
    return headers


@pytest.mark.parametrize("levels", [40, 5000])
async def test_deeply_nested_json_in_a_header_is_a_400_naming_the_limit(make_router, levels: int) -> None:
    r = await make_router()
    headers = {**on_the_fly(cpus="[" * levels + "]" * levels), "accept": "application/json"}
    async with r.client.get(r.url + "/", headers=headers) as resp:
        assert resp.status == 400
        message = (await resp.json())["waiter-error"]["message"]
    assert "x-waiter-cpus is JSON nested deeper than the limit of 32 levels." in message
    assert "recursion" not in message


@pytest.mark.parametrize("levels", [40, 100_000])
async def test_a_deeply_nested_token_body_is_a_400_naming_the_limit(make_router, levels: int) -> None:
    r = await make_router()
    status, message = await post_token(r, b'{"token": "deep", "metadata": ' + b"[" * levels + b"]" * levels + b"}")
    assert status == 400
    assert message == "The request body is JSON nested deeper than the limit of 32 levels."


async def test_a_token_body_over_the_limit_is_a_413_read_no_further(make_router) -> None:
    r = await make_router()
    reader, writer = await connect(r)
    try:
        # 50 MB announced; the answer comes before a byte of it is sent.
        writer.write(b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n\r\n")
        resp = await read_response(reader)
    finally:
        await close(writer)
    assert resp.status == 413
    assert "The request body is larger than the limit of 1048576 bytes (the router's max-api-body-bytes)." in (
        text_of(resp)
    )


async def test_a_chunked_token_body_over_a_configured_limit_is_a_413(make_router) -> None:
    r = await make_router(**{"max-api-body-bytes": 4096})

    async def chunks() -> Any:
        for _ in range(8):
            yield b" " * 1024

    async with r.client.post(r.url + "/token", data=chunks(), headers={"accept": "application/json"}) as resp:
        assert resp.status == 413
        assert "limit of 4096 bytes" in (await resp.json())["waiter-error"]["message"]
    status, _ = await post_token(r, json.dumps(backend_token("fits")).encode())
    assert status == 200


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("1", 1),
        ('{"a": [1, {"b": []}]}', {"a": [1, {"b": []}]}),
        ("[" * 32 + "]" * 32, "ok"),
        ("[" * 33 + "]" * 33, "x is JSON nested deeper than the limit of 32 levels."),
        ("[" * 100_000 + "]" * 100_000, "x is JSON nested deeper than the limit of 32 levels."),
        ("NaN", "x is not valid JSON: NaN is not a number JSON allows."),
    ],
)
def test_bounded_json(text: str, outcome: Any) -> None:
    if isinstance(outcome, str) and outcome != "ok":
        with pytest.raises(jsonbounds.JsonError) as err:
            jsonbounds.loads(text, "x")
        assert str(err.value) == outcome
    else:
        value = jsonbounds.loads(text, "x")
        assert outcome == "ok" or value == outcome


# -- tokens survive an emptied Redis -----------------------------------------------------------------------------


async def test_tokens_survive_a_redis_restarted_empty(make_router, redis_server) -> None:
    a = await make_router(redis=redis_server.url)
    async with a.client.post(a.url + "/token", json=backend_token("kept")) as resp:
        assert resp.status == 200, await resp.text()
    headers = {"x-waiter-token": "kept"}
    async with a.client.get(a.url + "/hello", headers=headers) as resp:
        assert resp.status == 200
    stop = asyncio.Event()
    statuses: list[int] = []

    async def load() -> None:
        while not stop.is_set():
            async with a.client.get(a.url + "/hello", headers=headers) as resp:
                statuses.append(resp.status)

    client = asyncio.create_task(load())
    try:
        redis_server.stop()
        await eventually(lambda: not a.router.tokens.store.status().connected, what="the outage to show")
        await redis_server.start()  # no persistence: every key is gone
        await eventually(lambda: a.router.tokens.store.status().connected, what="the store to reconnect")
        served = len(statuses)
        await eventually(lambda: len(statuses) > served + 20, what="requests after the restart")
    finally:
        stop.set()
        await client
    assert set(statuses) == {200}
    # The token and the service record are in Redis again: a router that starts now lists and serves them.
    sid = await a.service_id(headers)
    b = await make_router(redis=redis_server.url)

    async def listed() -> bool:
        return sid in [app["service-id"] for app in await b.get_json("/apps")]

    await eventually(listed, what="router B to adopt the service from the shared state")
    async with b.client.get(b.url + "/token?token=kept") as resp:
        assert resp.status == 200
    async with b.client.get(b.url + "/hello", headers=headers) as resp:
        assert resp.status == 200


async def test_status_does_not_flap_while_redis_is_down(make_router, redis_server) -> None:
    r = await make_router([backend_token("busy", **{"concurrency-level": 2})], redis=redis_server.url)
    headers = {"x-waiter-token": "busy"}
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 200

    async def available() -> bool:
        return bool((await r.get_json("/status"))["shared-state"]["available"])

    stop = asyncio.Event()

    async def load() -> None:  # requests queue for slots: the coordinator wakes between its ticks to lease
        while not stop.is_set():
            async with r.client.get(r.url + "/sleep?ms=30", headers=headers) as resp:
                await resp.read()

    clients = [asyncio.create_task(load()) for _ in range(6)]
    try:
        assert await available()
        redis_server.stop()
        await eventually(lambda: _not(available), what="the outage to show")
        seen = []
        for _ in range(60):  # ~3 s of samples, through ~30 publish ticks
            seen.append(await available())
            await asyncio.sleep(0.05)
        assert not any(seen), seen
        await redis_server.start()
        # Back after a second of full exchanges, and it stays so: a command that meets a connection the restart
        # killed is sent again on a new one (waiter.redis_client), so no call fails once Redis answers.
        await eventually(available, what="the shared state to be back")
        seen = []
        for _ in range(20):
            seen.append(await available())
            await asyncio.sleep(0.05)
        assert all(seen), seen
    finally:
        stop.set()
        await asyncio.gather(*clients)


async def _not(predicate: Any) -> bool:
    return not await predicate()


@pytest.mark.parametrize(
    ("events", "states"),
    [
        # (time, ok?) -> available after each event, recover_secs = 1
        ([(0, True), (0.1, False), (0.2, True), (0.3, False)], [True, False, False, False]),
        ([(0, False), (0.1, True), (0.6, True), (1.1, True), (1.2, True)], [False, False, False, True, True]),
        (
            [(0, False), (0.1, True), (0.9, False), (1.5, True), (2.4, True), (2.5, True)],
            [False, False, False, False, False, True],
        ),
    ],
)
def test_availability_goes_down_at_once_and_up_after_a_quiet_second(
    events: list[tuple[float, bool]], states: list[bool]
) -> None:
    health = Availability(recover_secs=1.0)
    seen = []
    for now, ok in events:
        if ok:
            health.succeeded(now)
        else:
            health.failed(now, "down")
        seen.append(health.available)
    assert seen == states
    assert (health.error is None) == health.available
