"""Small helpers shared by the router's endpoints."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from waiter.version import SERVER_HEADER


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
