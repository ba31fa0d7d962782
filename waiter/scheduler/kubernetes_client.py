"""A small asyncio client for the Kubernetes API: the calls the Kubernetes scheduler needs, and its watches.

Written on aiohttp rather than depending on ``kubernetes_asyncio`` (see the README's dependency notes): the
scheduler needs seven calls and a watch whose 410s, bookmarks and reconnections it must handle itself anyway.

Every call has a deadline. A 5xx, a 429, a timeout or a broken connection is retried with capped exponential
backoff; what still fails becomes a ``KubernetesError`` carrying the status and the ``reason`` of the API's
``Status`` object (``NotFound``, ``AlreadyExists``, ``Conflict``, ``Invalid``, ``Expired``, ...) and its message.
A watch is an async iterator of events; a 410 (an HTTP answer, or an ``ERROR`` event carrying a ``Status``) raises
``WatchExpired``, after which the caller must list again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from waiter.scheduler.base import SchedulerError
from waiter.scheduler.retry import RetryPolicy, no_answer

log = logging.getLogger(__name__)

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class KubernetesError(SchedulerError):
    """A Kubernetes call failed for good; ``status`` and ``reason`` are the API's last answer (None: no answer)."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class WatchExpired(KubernetesError):
    """The resourceVersion a watch started from is too old (410 Gone): list again, then watch from the list."""


@dataclass(frozen=True)
class Credentials:
    """How to reach and authenticate to the API server."""

    api_url: str
    token: str | None = None
    token_file: Path | None = None  # re-read when it changes: service-account tokens are rotated
    ca_file: Path | None = None
    ca_data: str | None = None  # PEM, from a kubeconfig's certificate-authority-data
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    insecure_skip_tls_verify: bool = False

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.api_url.startswith("https://"):
            return True
        if self.insecure_skip_tls_verify:
            return False
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file else None, cadata=self.ca_data or None
        )
        if self.client_cert_file is not None:
            context.load_cert_chain(str(self.client_cert_file), str(self.client_key_file or self.client_cert_file))
        return context


def status_message(body: Any) -> tuple[str, str | None]:
    """The API's own words from a ``Status`` object (message, reason); text bodies as they are."""
    if isinstance(body, Mapping):
        reason = body.get("reason")
        return str(body.get("message") or reason or "no message"), str(reason) if reason else None
    text = str(body or "").strip()
    return (text[:300] or "no message"), None


class KubernetesClient:
    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout_secs: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.credentials = credentials
        self.url = credentials.api_url.rstrip("/")
        self.timeout_secs = timeout_secs
        self.retry = retry or RetryPolicy()
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[float, str] | None = None  # (mtime, token) read from the token file
        self._ssl_context = credentials.ssl_context()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the calls -----------------------------------------------------------------------------------------------

    async def list(self, path: str, label_selector: str) -> tuple[list[JSON], str]:
        """Every object of a collection matching the selector, and the list's resourceVersion to watch from."""
        body = await self._call("GET", path, f"list {path}", params={"labelSelector": label_selector}, attempts=1)
        items = body.get("items") if isinstance(body, Mapping) else None
        version = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, Mapping) else None
        if not isinstance(items, list) or not version:
            raise KubernetesError(f"Kubernetes answered GET {path} without items and a resourceVersion.")
        return [item for item in items if isinstance(item, dict)], str(version)

    async def get(self, path: str) -> JSON | None:
        body = await self._call("GET", path, f"read {path}", absent=(404,))
        return body if isinstance(body, dict) else None

    async def create(self, path: str, obj: Mapping[str, Any]) -> JSON | None:
        """POST the object; the object as created, or None if one with its name exists already (409)."""
        name = (obj.get("metadata") or {}).get("name")
        body = await self._call("POST", path, f"create {name}", json_body=obj, expect=(200, 201, 202), absent=(409,))
        return body if isinstance(body, dict) else None

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JSON:
        """A JSON merge patch. With ``metadata.resourceVersion`` in it, a changed object answers 409 Conflict."""
        body = await self._call("PATCH", path, f"patch {path}", json_body=patch, content_type=MERGE_PATCH)
        if not isinstance(body, dict):
            raise KubernetesError(f"Kubernetes answered PATCH {path} without the object.")
        return body

    async def delete(self, path: str, options: Mapping[str, Any]) -> JSON | None:
        """DELETE with ``DeleteOptions``; the answer (the object being deleted, or a Status), None if not found."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", **options}
        answer = await self._call("DELETE", path, f"delete {path}", json_body=body, expect=(200, 202), absent=(404,))
        return answer if isinstance(answer, dict) else None

    async def watch(
        self, path: str, label_selector: str, resource_version: str, timeout_secs: int
    ) -> AsyncIterator[JSON]:
        """Events after ``resource_version`` (with bookmarks) until the server ends the watch after
        ``timeout_secs``. Raises ``WatchExpired`` on 410 and ``KubernetesError`` on any other failure."""
        params = {
            "watch": "1",
            "labelSelector": label_selector,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_secs),
        }
        # No answer at all for a while longer than the server's own deadline means a dead connection.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_secs, sock_read=timeout_secs + 30)
        session = self._client()
        try:
            async with session.get(
                self.url + path, params=params, headers=self._headers(), timeout=timeout, ssl=self._ssl()
            ) as resp:
                if resp.status != 200:
                    raise self._refused("GET", path, f"watch {path}", resp.status, await _body(resp), 1)
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield self._event(path, line)
                if buffer.strip():
                    yield self._event(path, buffer)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise self._no_answer("GET", path, f"watch {path}", error, 1) from error

    # -- the machinery -------------------------------------------------------------------------------------------

    def _event(self, path: str, line: bytes) -> JSON:
        try:
            event = json.loads(line)
        except ValueError as error:
            raise KubernetesError(f"The watch of {path} sent a line that is not JSON: {line[:200]!r}") from error
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise KubernetesError(f"The watch of {path} sent an event without an object: {line[:200]!r}")
        if event.get("type") == "ERROR":
            status = event["object"]
            message, reason = status_message(status)
            code = status.get("code")
            error_type = WatchExpired if code == 410 or reason in ("Expired", "Gone") else KubernetesError
            raise error_type(f"The watch of {path} ended with {code} {reason}: {message}", code, reason)
        return event

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _ssl(self) -> ssl.SSLContext | bool:
        return self._ssl_context

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.credentials.token
        path = self.credentials.token_file
        if path is not None:
            try:
                mtime = os.stat(path).st_mtime
                if self._token is None or self._token[0] != mtime:
                    self._token = (mtime, path.read_text().strip())
                token = self._token[1]
            except OSError as error:
                log.warning("cannot read the Kubernetes token file %s: %s", path, error)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content_type: str = "application/json",
        expect: tuple[int, ...] = (200,),
        absent: tuple[int, ...] = (),
        attempts: int | None = None,
    ) -> Any:
        tries = attempts or self.retry.attempts
        for attempt in range(1, tries + 1):
            try:
                status, body = await self._send(method, path, params, json_body, content_type)
            except (TimeoutError, aiohttp.ClientError) as error:
                failure = self._no_answer(method, path, what, error, attempt)
                if attempt == tries:
                    raise failure from error
                log.info("%s; retrying", failure)
            else:
                if status in expect:
                    return body
                if status in absent:
                    return None
                refused = self._refused(method, path, what, status, body, attempt)
                if not (status >= 500 or status == 429) or attempt == tries:
                    raise refused
                log.info("%s; retrying", refused)
            await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(
        self, method: str, path: str, params: Mapping[str, str] | None, json_body: Any, content_type: str
    ) -> tuple[int, Any]:
        headers = self._headers()
        data = None
        if json_body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(json_body)
        timeout = aiohttp.ClientTimeout(total=self.timeout_secs)
        async with self._client().request(
            method, self.url + path, params=params, data=data, headers=headers, timeout=timeout, ssl=self._ssl()
        ) as resp:
            return resp.status, await _body(resp)

    def _refused(self, method: str, path: str, what: str, status: int, body: Any, attempt: int) -> KubernetesError:
        message, reason = status_message(body)
        tried = f" (tried {attempt} times)" if attempt > 1 else ""
        error_type = WatchExpired if status == 410 else KubernetesError
        return error_type(
            f"Kubernetes could not {what}: {method} {path} answered {status} {reason or ''}{tried}: {message}".replace(
                "  ", " "
            ),
            status,
            reason,
        )

    def _no_answer(self, method: str, path: str, what: str, error: BaseException, attempt: int) -> KubernetesError:
        return KubernetesError(no_answer("Kubernetes", self.url, self.timeout_secs, method, path, what, error, attempt))


async def _body(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


__all__ = ["JSON", "Credentials", "KubernetesClient", "KubernetesError", "WatchExpired", "status_message"]
