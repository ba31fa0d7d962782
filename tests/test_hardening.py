"""Hostile and unlucky input against a real router on real sockets: every error is an answer (never an empty
reply, never a traceback in a body), and nothing a client sends runs unbounded or starts a broken service."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from tests.conftest import RunningRouter
from tests.test_frontdoor import Response, close, connect, read_response
from waiter.api import admin
from waiter.errors import printable


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


async def test_a_token_that_is_not_utf8_is_named_escaped(make_router) -> None:
    r = await make_router()
    resp = await send_raw(r, request(b"/", b"x-waiter-token: no\xffsuch", b"Accept: application/json"))
    assert resp.status == 404
    assert json.loads(text_of(resp))["waiter-error"]["message"] == "Couldn't find token no\\xffsuch"


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
    monkeypatch.setitem(admin.EXACT, "/status", {"GET": broken})
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
    assert {resp.status for resp in responses} == {404}
    async with r.client.get(r.url + "/status") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("text", "shown"),
    [("plain é", "plain é"), ("a\udcffb", "a\\xffb"), ("json \ud800 lone", "json \\ud800 lone"), ("\udc80", "\\x80")],
)
def test_printable_escapes_what_is_not_utf8(text: str, shown: str) -> None:
    assert printable(text) == shown
    printable(text).encode("utf-8")
