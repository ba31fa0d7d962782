"""A small asyncio client for Marathon's v2 REST API (the calls the Marathon scheduler needs, nothing more).

Written here instead of depending on the ``marathon`` package, which is synchronous and crashes on Python 3.10+ for
any app with health checks. Every call has a deadline. A call that meets a deployment lock (409 naming
deployments), a 5xx, a timeout or a broken connection is retried with capped exponential backoff; what still fails
becomes a ``MarathonError`` saying what was asked, what Marathon answered and its message.

Bodies are returned as parsed JSON; turning them into instances is the scheduler's (pure) business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from waiter.scheduler.base import SchedulerError
from waiter.scheduler.retry import RetryPolicy, no_answer

log = logging.getLogger(__name__)

JSON = dict[str, Any]
DEPLOYMENT_HEADER = "Marathon-Deployment-Id"


class MarathonError(SchedulerError):
    """A Marathon call failed for good; ``status`` is Marathon's last answer (None: no answer at all)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # parsed JSON, or the text when Marathon (or a proxy before it) did not answer JSON
    deployment_id: str | None  # the Marathon-Deployment-Id header of a deployable change


def marathon_message(body: Any) -> str:
    """Marathon's own words from an error body: ``message`` plus the ``details`` of a validation failure."""
    if not isinstance(body, Mapping):
        text = str(body or "").strip()
        return text[:300] if text else "no message"
    message = str(body.get("message") or "no message")
    details = body.get("details")
    if isinstance(details, str) and details.strip():
        return f"{message} ({details.strip()[:300]})"  # some 400s carry a sentence, not a list of paths
    if isinstance(details, list) and details:
        parts = []
        for detail in details:
            if isinstance(detail, Mapping):
                errors = detail.get("errors") or []
                parts.append(f"{detail.get('path', '?')}: {', '.join(str(e) for e in errors)}")
        if parts:
            message += " (" + "; ".join(parts) + ")"
    return message


def is_deployment_lock(status: int, body: Any) -> bool:
    """409 means either "already exists" or "locked by deployments"; only the lock names the deployments."""
    return status == 409 and isinstance(body, Mapping) and bool(body.get("deployments"))


def _retryable(status: int, body: Any) -> bool:
    return status >= 500 or is_deployment_lock(status, body)


class MarathonClient:
    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_secs: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_secs = timeout_secs
        self.retry = retry or RetryPolicy()
        self._headers = {"Accept": "application/json"}
        if username:
            self._headers["Authorization"] = aiohttp.encode_basic_auth(username, password or "")
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the calls -----------------------------------------------------------------------------------------------

    async def list_apps(self, group: str) -> list[JSON]:
        """Apps whose id lies under ``group`` (e.g. "/waiter/"), with their tasks and last task failure embedded.

        Tried once: the caller's sync loop asks again on its next tick anyway.
        """
        params = [("id", group), ("embed", "apps.tasks"), ("embed", "apps.lastTaskFailure")]
        answer = await self._call("GET", "/v2/apps", "list its apps", params=params, attempts=1)
        apps = answer.body.get("apps") if isinstance(answer.body, Mapping) else None
        if not isinstance(apps, list):
            raise MarathonError(f"Marathon answered GET /v2/apps without an apps list: {str(answer.body)[:200]}")
        return [app for app in apps if isinstance(app, dict) and str(app.get("id", "")).startswith(group)]

    async def get_app(self, app_id: str) -> JSON | None:
        """The app with its tasks and last task failure, or None if Marathon does not know it."""
        params = [("embed", "app.tasks"), ("embed", "app.lastTaskFailure")]
        answer = await self._call("GET", f"/v2/apps{app_id}", f"read app {app_id}", params=params, absent=(404,))
        if answer.status == 404:
            return None
        app = answer.body.get("app") if isinstance(answer.body, Mapping) else None
        return app if isinstance(app, dict) else None

    async def create_app(self, app: Mapping[str, Any]) -> JSON | None:
        """POST the app; its AppInfo as created, or None if an app with that id exists already."""
        answer = await self._call(
            "POST", "/v2/apps", f"create app {app.get('id')}", json=app, expect=(200, 201), absent=(409,)
        )
        if answer.status == 409:
            return None
        return answer.body if isinstance(answer.body, dict) else {}

    async def scale_app(self, app_id: str, instances: int, *, force: bool = True) -> str | None:
        """Set the app's instance count (a partial update); the deployment id."""
        answer = await self._call(
            "PUT",
            f"/v2/apps{app_id}",
            f"scale app {app_id} to {instances} instances",
            params=[("force", _flag(force))],
            json={"instances": instances},
            expect=(200, 201),
        )
        return _deployment_id(answer)

    async def kill_task(self, app_id: str, task_id: str, *, scale: bool, force: bool = False) -> JSON | None:
        """Kill one task; ``scale`` also lowers the app's instance count. None if Marathon knows no such task.

        A task kill asked by the router must happen: after a deployment lock the retries override it (force).
        """
        answer = await self._call(
            "DELETE",
            f"/v2/apps{app_id}/tasks/{task_id}",
            f"kill task {task_id} of app {app_id}",
            params=[("scale", _flag(scale)), ("force", _flag(force))],
            absent=(404,),
            force_after_lock=True,
        )
        if answer.status == 404:
            return None
        return answer.body if isinstance(answer.body, dict) else {}

    async def delete_app(self, app_id: str, *, force: bool = True) -> str | None:
        """Delete the app and kill its tasks; the deployment id, or None if Marathon does not know the app."""
        answer = await self._call(
            "DELETE", f"/v2/apps{app_id}", f"delete app {app_id}", params=[("force", _flag(force))], absent=(404,)
        )
        if answer.status == 404:
            return None
        return _deployment_id(answer) or ""

    async def deployments(self) -> list[JSON]:
        answer = await self._call("GET", "/v2/deployments", "list its deployments")
        return [d for d in answer.body if isinstance(d, dict)] if isinstance(answer.body, list) else []

    async def info(self) -> JSON:
        answer = await self._call("GET", "/v2/info", "describe itself", attempts=1)
        return answer.body if isinstance(answer.body, dict) else {}

    # -- the machinery -------------------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json: Any = None,
        expect: tuple[int, ...] = (200,),
        absent: tuple[int, ...] = (),
        attempts: int | None = None,
        force_after_lock: bool = False,
    ) -> Answer:
        tries = attempts or self.retry.attempts
        query = list(params or [])
        for attempt in range(1, tries + 1):
            try:
                answer = await self._send(method, path, query, json)
            except (TimeoutError, aiohttp.ClientError) as error:
                failure = self._no_answer(method, path, what, error, attempt)
                if attempt == tries:
                    raise failure from error
                log.info("%s; retrying", failure)
            else:
                if answer.status in expect or (answer.status in absent and not _retryable(answer.status, answer.body)):
                    return answer
                failure = self._refused(method, path, what, answer, attempt)
                if not _retryable(answer.status, answer.body) or attempt == tries:
                    raise failure
                log.info("%s; retrying", failure)
                if force_after_lock and is_deployment_lock(answer.status, answer.body):
                    query = [(k, v) for k, v in query if k != "force"] + [("force", "true")]
            await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(self, method: str, path: str, params: list[tuple[str, str]], json: Any) -> Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        timeout = aiohttp.ClientTimeout(total=self.timeout_secs)
        async with self._session.request(method, self.url + path, params=params, json=json, timeout=timeout) as resp:
            text = await resp.text()
            body: Any = text
            if text:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = text
            return Answer(resp.status, body, resp.headers.get(DEPLOYMENT_HEADER))

    def _refused(self, method: str, path: str, what: str, answer: Answer, attempt: int) -> MarathonError:
        tried = f" (tried {attempt} times)" if attempt > 1 else ""
        return MarathonError(
            f"Marathon could not {what}: {method} {path} answered {answer.status}{tried}: "
            f"{marathon_message(answer.body)}",
            answer.status,
        )

    def _no_answer(self, method: str, path: str, what: str, error: BaseException, attempt: int) -> MarathonError:
        return MarathonError(no_answer("Marathon", self.url, self.timeout_secs, method, path, what, error, attempt))


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _deployment_id(answer: Answer) -> str | None:
    if isinstance(answer.body, Mapping) and answer.body.get("deploymentId"):
        return str(answer.body["deploymentId"])
    return answer.deployment_id


__all__ = ["JSON", "Answer", "MarathonClient", "MarathonError", "RetryPolicy", "is_deployment_lock", "marathon_message"]
