"""Small helpers shared by the router's endpoints."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from waiter import jsonbounds
from waiter.errors import WaiterError
from waiter.version import SERVER_HEADER

log = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, indent=2),
        content_type="application/json",
        headers={"server": SERVER_HEADER},
    )


def query_true(request: web.BaseRequest, name: str) -> bool:
    return any(v.lower() == "true" for v in request.query.getall(name, []))


def included(request: web.BaseRequest, name: str) -> bool:
    return name in request.query.getall("include", [])


def base_url(request: web.BaseRequest) -> str:
    return f"{request.scheme}://{request.host}"


CID = web.RequestKey("cid", str)  # the request's correlation id, set by Router.handle


def request_cid(request: web.BaseRequest) -> str:
    """The request's correlation id: the client's x-cid, or the one the router generated (Router.handle)."""
    return request.get(CID) or request.headers.get("x-cid") or ""


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, or 413 as soon as it is known to be larger than ``limit`` bytes."""
    too_large = WaiterError(
        413, f"The request body is larger than the limit of {limit} bytes (the router's max-api-body-bytes)."
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.BaseRequest, limit: int) -> Any:
    """The request body as JSON within the size and depth limits (None when empty); 400 or 413 naming the limit."""
    raw = await read_body(request, limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WaiterError(
            400, f"The request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})."
        ) from None
    if not text.strip():
        return None
    try:
        return jsonbounds.loads(text, "The request body")
    except jsonbounds.JsonError as exc:
        if exc.__cause__ is not None:
            log.debug("%s (%s)", exc, exc.__cause__)
        raise WaiterError(400, str(exc)) from None
