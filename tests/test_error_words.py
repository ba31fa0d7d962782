"""What a 5xx says: a sentence of ours naming what failed (the instance's host:port, Redis, the scheduler agent),
never a library's or an exception's text ("[Errno 111] Connect call failed", "Error 111 connecting to ..."): the
router's log keeps that."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis.asyncio as redis

from tests.conftest import FAKE, backend_token
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
    r"UpstreamClosed|ConnectError|ClientOSError|ServerDisconnectedError|RedisError|HttpParserError)\b"
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
    # The instance that failed: a pooled connection's request is replayed, so this may be the replacement.
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
