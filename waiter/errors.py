"""Router-generated errors and their rendering as JSON, HTML or text (docs/api.md §0.1)."""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from waiter.text import printable
from waiter.version import SERVER_HEADER

log = logging.getLogger(__name__)

TITLES = {
    "waiter.QueueLength": "Service Queue Length Exceeded",
    "waiter.RequestTimeout": "Request Timeout",
    "waiter.DeploymentError": "Deployment Error",
    "waiter.Maintenance": "Service In Maintenance",
    "waiter.Suspended": "Service Suspended",
    "waiter.ServiceForbidden": "Service Forbidden",
    "waiter.ServiceMisconfigured": "Service Misconfigured",
    "waiter.ServiceUnknown": "Service Unknown",
    "waiter.BackendError": "Backend Error",
    "waiter.RouterDraining": "Router Draining",
}


class WaiterError(Exception):
    """An error the router answers itself. ``message`` is shown to users verbatim."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_class: str | None = None,
        details: Mapping[str, Any] | None = None,
        service_id: str | None = None,
        instance_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_class = error_class
        self.details = dict(details or {})
        self.service_id = service_id
        self.instance_id = instance_id
        self.headers = dict(headers or {})
        # Set when the router answers for the service's instances: the request waited for one (queue timeout), or
        # they cannot start (deployment error). A ping reports such an answer as the service's response, not as the
        # router's own (docs/api.md §1.9).
        self.for_service = False

    @property
    def title(self) -> str:
        if self.error_class and self.error_class in TITLES:
            return TITLES[self.error_class]
        return f"Waiter Error {self.status}"


def internal_error(cid: str) -> WaiterError:
    """A failure of the router itself: the client gets the cid, the log gets the traceback (never the body)."""
    return WaiterError(500, f"Internal error: the router logged the details under cid {printable(cid)}.")


def router_draining(message: str, service_id: str | None = None) -> WaiterError:
    """503 to a request the stopping router can no longer serve; ``message`` tells the client to send it again."""
    return WaiterError(503, message, error_class="waiter.RouterDraining", service_id=service_id)


def iso_millis(epoch_secs: float | None) -> str | None:
    """Waiter's timestamp format: ISO-8601 UTC with milliseconds, e.g. 2023-03-22T16:56:20.123Z."""
    if epoch_secs is None:
        return None
    millis = int(epoch_secs * 1000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
    return f"{base}.{millis % 1000:03d}Z"


class HeaderLookup(Protocol):
    def get(self, key: str, default: str, /) -> str: ...


class RequestInfo(Protocol):
    """What rendering an error needs from a request; both servers' requests provide it."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def query_string(self) -> str: ...

    @property
    def headers(self) -> HeaderLookup: ...


@dataclass(frozen=True, slots=True)
class RenderedError:
    status: int
    content_type: str  # with its charset, as aiohttp writes it
    body: bytes
    headers: dict[str, str]


def _wants(request: RequestInfo) -> str:
    accept = request.headers.get("accept", "")
    for needle, kind in (("application/json", "json"), ("text/html", "html"), ("text/plain", "text")):
        if needle in accept:
            return kind
    if "application/json" in request.headers.get("content-type", ""):
        return "json"
    return "text"


def error_body(request: RequestInfo, err: WaiterError, cid: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message": err.message,
        "status": err.status,
        "cid": cid,
        "uri": request.path,
        "host": request.headers.get("host", ""),
        "request-method": request.method,
        "query-string": request.query_string or None,
        "timestamp": iso_millis(time.time()),
        "title": err.title,
    }
    if err.service_id:
        body["service-id"] = err.service_id
    if err.instance_id:
        body["instance-id"] = err.instance_id
    if err.details:
        body["details"] = err.details
    return body


def _printable_value(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {printable(str(k)): _printable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable_value(v) for v in value]
    return value


def render_error_parts(request: RequestInfo, err: WaiterError, cid: str) -> RenderedError:
    """The error in the representation the client's Accept header asks for, ready for any server to write.

    Never raises on what the client sent: path, query, Host, cid and message are escaped where they are not
    UTF-8, and a failure past that falls back to a fixed 500 (see last_resort)."""
    try:
        return _render(request, err, printable(cid))
    except Exception:
        log.exception("rendering a %d error failed (cid %s)", err.status, printable(cid))
        return last_resort(cid)


def last_resort(cid: str) -> RenderedError:
    """The answer when everything else failed: a 500 that names the cid the log has the details under."""
    cid = printable(cid)
    text = f"Internal error: the router logged the details under cid {cid}.\n"
    headers = {"x-cid": cid, "server": SERVER_HEADER}
    return RenderedError(500, "text/plain; charset=utf-8", text.encode(), headers)


def _render(request: RequestInfo, err: WaiterError, cid: str) -> RenderedError:
    body = _printable_value(error_body(request, err, cid))
    headers = {"x-cid": cid, "server": SERVER_HEADER, **{k: printable(v) for k, v in err.headers.items()}}
    if err.service_id:
        # Clients (and Waiter's tests) learn which service answered from this header, as on proxied answers.
        headers.setdefault("x-waiter-service-id", err.service_id)
    kind = _wants(request)
    if kind == "json":
        text = json.dumps({"waiter-error": body}, indent=2)
        return RenderedError(err.status, "application/json; charset=utf-8", text.encode(), headers)
    if kind == "html":
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in body.items()
            if k != "message" and v not in (None, "", {}, [])
        )
        message = html.escape(body["message"]).replace("\n", "<br>")
        page = (
            f"<!DOCTYPE html><html><head><title>{html.escape(err.title)}</title></head><body>"
            f"<h1>{html.escape(err.title)}</h1><p>{message}</p><table>{rows}</table></body></html>"
        )
        return RenderedError(err.status, "text/html; charset=utf-8", page.encode(), headers)
    lines = [f"{err.title}", "", body["message"], ""]
    lines += [f"{k}: {v}" for k, v in body.items() if k not in ("message", "title") and v is not None]
    text = "\n".join(lines) + "\n"
    return RenderedError(err.status, "text/plain; charset=utf-8", text.encode(), headers)


def render_error(request: web.BaseRequest, err: WaiterError, cid: str) -> web.Response:
    """The error as an aiohttp response (see render_error_parts)."""
    rendered = render_error_parts(request, err, cid)
    headers = {**rendered.headers, "content-type": rendered.content_type}
    return web.Response(status=rendered.status, body=rendered.body, headers=headers)
