"""What a 5xx says: a sentence of ours naming what failed (the instance's host:port, Redis, the scheduler agent),
never a library's or an exception's text ("[Errno 111] Connect call failed", "Error 111 connecting to ..."): the
router's log keeps that."""

from __future__ import annotations

import re
from typing import Any

import jwt
import pytest
import redis.asyncio as redis
from aiohttp import web

from tests.conftest import FAKE, backend_token
from tests.identity import Issuer
from tests.support import free_port
from tests.test_hardening import request, send_raw, text_of
from waiter.scheduler.mesos_client import ClientSettings, MesosClient
from waiter.scheduler.mesos_proto import MesosError
from waiter.state.base import StateUnavailable
from waiter.state.redis import RedisState
from waiter.text import failure_reason

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

TOKEN = {"x-waiter-token": "echo"}
JSON = {"accept": "application/json"}
LIBRARY_WORDS = re.compile(
    r"Errno|(?<!Waiter )Error \d+|Traceback|Connect call failed|\('127\.0\.0\.1', \d+\)|"
    r"\b(ConnectionRefusedError|ConnectionResetError|ConnectionError|OSError|TimeoutError|IncompleteReadError|"
    r"UpstreamClosed|ConnectError|ClientOSError|ServerDisconnectedError|RedisError|HttpParserError)\b|"
    # httptools/llhttp, json, RE2, PyJWT, GSSAPI, aiohttp in their own words
    r"HPE_|Invalid character in|Invalid header token|Invalid method encountered|Span callback|"
    r"Expecting (value|property name|',')|\(char \d+\)|Unterminated string|Extra data|JSONDecodeError|"
    r"invalid escape sequence|invalid perl operator|missing \)|"
    r"Not enough segments|Signature verification failed|Invalid header padding|DecodeError|InvalidSignatureError|"
    r"GSSError|Unspecified GSS|Major \(\d+\)|ClientConnectorError|Cannot connect to host"
)


def assert_our_words(text: str) -> None:
    found = LIBRARY_WORDS.search(text)
    assert found is None, f"library text {found.group()!r} in: {text}"


async def test_a_backend_that_breaks_off_is_a_502_naming_the_instance(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    async with r.client.get(r.url + "/crash-before", headers={**TOKEN, **JSON}) as resp:  # it exits unanswered
        assert resp.status == 502
        error = (await resp.json())["waiter-error"]
    # The instance that failed (the request read by it was sent nowhere else; it may be listed as failed by now).
    instances = await r.instances(error["service-id"])
    known = instances["active-instances"] + instances["failed-instances"]
    (failed,) = [instance for instance in known if instance["id"] == error["instance-id"]]
    assert error["message"] == (
        f"Request to service backend failed: the instance at {failed['host']}:{failed['port']} closed the "
        "connection, or sent what is not HTTP/1.1, before its response was complete."
    )
    message = error["message"]
    assert_our_words(message)


async def test_the_token_api_with_redis_down_is_a_503_naming_redis(make_router, redis_server) -> None:
    r = await make_router(redis=redis_server.url)
    redis_server.stop()
    async with r.client.get(r.url + "/token?token=any", headers=JSON) as resp:
        assert resp.status == 503
        message = (await resp.json())["waiter-error"]["message"]
    assert f"Redis at redis://127.0.0.1:{redis_server.port}/0" in message and "connection refused" in message, message
    assert_our_words(message)
    async with r.client.post(r.url + "/token", json=backend_token("new"), headers=JSON) as resp:
        assert resp.status == 503
        assert_our_words(await resp.text())
    status = await r.get_json("/status")
    assert_our_words(str(status))


async def test_shared_state_failures_name_redis_and_the_call(redis_server) -> None:
    state = RedisState(redis_server.url, namespace="words")
    redis_server.stop()
    try:
        with pytest.raises(StateUnavailable) as failed:
            await state.services()
    finally:
        await state.close()
    assert str(failed.value) == f"Redis at {redis_server.url} failed to list services: connection refused."


async def _redis_refused() -> BaseException:
    client = redis.Redis(port=1, socket_connect_timeout=1)
    try:
        await client.ping()
    except redis.ConnectionError as error:
        return error
    finally:
        await client.aclose()
    raise AssertionError("nothing should listen on port 1")


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 8080)"), "connection refused"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset by peer"),
        (PermissionError(13, "Permission denied"), "permission denied"),
        (TimeoutError(), "no answer in time"),
        (ValueError("internal detail"), "the connection failed"),
        ("redis refused", "connection refused"),  # redis-py's own ConnectionError, wrapping the OSError
    ],
)
async def test_failure_reasons_are_plain_words(error: Any, words: str) -> None:
    if error == "redis refused":
        error = await _redis_refused()
    assert failure_reason(error) == words


# -- 4xx: what the client got wrong, in our words --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "names"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
            "a chunk of its body is malformed (each is its size in hex digits",
        ),
        (request(b"/", b"Bad Name: 1"), "a header line is malformed"),
        (request(b"/", method=b"G(T"), "its method is not a token HTTP allows"),
        (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", "its target has a character a URL does not allow"),
        (b"GET / HTTP/7.1\r\nHost: x\r\n\r\n", "its request line does not end in HTTP/1.0 or HTTP/1.1"),
        (request(b"/", b"Content-Length: 1x"), "its Content-Length is not one decimal number"),
    ],
    ids=["chunk-size", "header-name", "method", "target", "version", "content-length"],
)
async def test_a_malformed_request_is_a_400_in_our_words(make_router, data: bytes, names: str) -> None:
    r = await make_router()
    resp = await send_raw(r, data)
    assert resp.status == 400, resp
    body = text_of(resp)
    assert f"The request is not valid HTTP/1.1: {names}" in body, body
    assert_our_words(body)


async def test_a_token_body_that_is_not_json_is_a_400_naming_where(make_router) -> None:
    r = await make_router()
    async with r.client.post(r.url + "/token", data=b'{"token": "x",\n  cmd: 1}', headers=JSON) as resp:
        assert resp.status == 400
        message = (await resp.json())["waiter-error"]["message"]
    assert message == (
        "The request body is not valid JSON: an object key that is not a string in double quotes at line 2, column 3."
    )
    assert_our_words(message)


async def test_a_filter_re2_refuses_is_a_400_naming_the_filter_in_our_words(make_router) -> None:
    r = await make_router()
    async with r.client.get(r.url + "/apps?cmd=(%3F%3C%3Dx)y", headers=JSON) as resp:
        assert resp.status == 400
        message = (await resp.json())["waiter-error"]["message"]
    assert message == (
        "The filter cmd is not a regular expression RE2 accepts: a (? group RE2 does not know (lookaround included) "
        "in '(?<=x)y'. Backreferences and lookaround are not supported."
    )
    assert_our_words(message)


async def test_refused_bearer_tokens_are_401s_in_our_words(make_router) -> None:
    issuer = Issuer()
    issuer.add("k1")
    issuer.add("other", publish=False)
    async with issuer.serving():
        r = await make_router(authenticator=issuer.config())
        genuine = issuer.token("alice").split(".")
        forged = issuer.token("alice", "other").split(".")
        key = issuer.keys["k1"]
        not_json = jwt.PyJWS().encode(b"not json", key.private, algorithm=key.alg, headers={"kid": "k1"})
        cases = {
            "not.a.jwt.at.all": "is not a valid JWT: it has 5 parts; a JWT is three base64url parts joined by dots",
            "a.b.c": "is not a valid JWT: its parts are not base64url, or its header is not JSON",
            f"{genuine[0]}.{genuine[1]}.{forged[2]}": "is not valid: its signature does not verify with the issuer",
            issuer.token("alice", exp=None): "is not valid: it has no exp claim; required: exp, iss, aud and sub",
            not_json: "is not valid: its payload is not base64url-encoded JSON",
        }
        for token, words in cases.items():
            async with r.client.get(
                r.url + "/waiter-auth", headers={"authorization": f"Bearer {token}", **JSON}
            ) as resp:
                assert resp.status == 401, token
                message = (await resp.json())["waiter-error"]["message"]
            assert f"The bearer token {words}" in message, message
            assert_our_words(message)


class _Events:
    def handle_event(self, event: Any) -> None:
        pass

    def handle_disconnect(self, reason: str) -> None:
        pass


async def test_mesos_client_errors_are_in_our_words() -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>not json</html>")

    app = web.Application()
    app.router.add_post("/api/v1", garbage)
    app.router.add_post("/api/v1/scheduler", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    closed = free_port()
    clients = [MesosClient(ClientSettings(f"127.0.0.1:{p}", "words", "nobody"), _Events()) for p in (port, closed)]
    try:
        for client in clients:
            await client.start()
        with pytest.raises(MesosError) as garbled:
            await clients[0].get_tasks()
        with pytest.raises(MesosError) as refused:
            await clients[1].get_tasks()
    finally:
        for client in clients:
            await client.close()
        await runner.cleanup()
    assert str(garbled.value) == (
        f"The Mesos master at 127.0.0.1:{port} answered GET_TASKS with a body that is not a JSON object holding "
        "get_tasks.tasks."
    )
    assert str(refused.value) == (
        f"GET_TASKS to the Mesos master at http://127.0.0.1:{closed}/api/v1 failed: connection refused."
    )
    assert_our_words(str(garbled.value) + str(refused.value))
