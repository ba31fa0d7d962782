"""A small asyncio client for the Mesos v1 scheduler HTTP API (``POST /api/v1/scheduler``), on aiohttp.

``MesosClient`` holds one SUBSCRIBE connection whose RecordIO event stream it reads, sends calls beside it with the
stream id, watches heartbeats, and reconnects with backoff keeping the framework id (so the master's failover
timeout protects the tasks meanwhile). Beside the scheduler API it lists the master's tasks (the operator API's
GET_TASKS), which a restarted router reads to take its tasks on again. Decoding and translating the wire is pure
and lives in ``mesos_proto``.

We do not use ``pymesos``: it does not install on Python 3.11 (its ``http-parser`` dependency fails to compile) and
runs its own threads and SIGINT handler, which has no place inside an asyncio router.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from waiter.scheduler.mesos_proto import (
    SCHEDULER_PATH,
    MesosError,
    RecordIOParser,
    TaskStatus,
    decode_event,
    filters,
    framework_info,
    leader_from_location,
)
from waiter.text import failure_reason

log = logging.getLogger(__name__)

JSON = "application/json"
OPERATOR_PATH = "/api/v1"  # the master's operator API (GET_TASKS)
MAX_REDIRECTS = 5


# -- the I/O ---------------------------------------------------------------------------------------------------


class EventHandler(Protocol):
    """Receives the stream's events (HEARTBEAT excepted) from the client's reading task."""

    def handle_event(self, event: Mapping[str, Any]) -> None: ...

    def handle_disconnect(self, reason: str) -> None: ...


@dataclass(frozen=True)
class ClientSettings:
    master: str  # host:port of any master; a non-leader redirects to the leader
    framework_name: str
    user: str
    role: str = "*"
    failover_timeout_secs: float = 604800.0
    request_timeout_secs: float = 10.0
    heartbeat_misses: int = 5
    reconnect_min_secs: float = 0.1
    reconnect_max_secs: float = 5.0


class MesosClient:
    """One framework's connection to the master: the SUBSCRIBE stream plus calls.

    ``framework_id`` survives reconnections; it is cleared only when the master says the framework was removed
    (its failover timeout expired), so the next subscription registers a new framework.
    """

    def __init__(self, settings: ClientSettings, handler: EventHandler) -> None:
        self.settings = settings
        self.framework_id: str | None = None
        self.leader: str = settings.master
        self.subscriptions = 0  # successful SUBSCRIBEs so far
        self.connected = asyncio.Event()
        self._handler = handler
        self._stream_id: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        # Set when the master said another scheduler subscribed with our framework id: we stop, not fight back.
        self.superseded: str | None = None

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles the framework subscribes with (FrameworkInfo.roles); offers of other roles are unusable."""
        return (self.settings.role,)

    async def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession()
            self._task = asyncio.create_task(self._run(), name="mesos-subscription")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.connected.clear()

    # -- calls --

    async def call(self, call_type: str, payload: Mapping[str, Any] | None = None) -> None:
        """Send one call on the current subscription; raises ``MesosError`` unless the master accepted it."""
        if self.framework_id is None or self._stream_id is None:
            raise MesosError(f"Cannot send {call_type} to the Mesos master: the framework is not subscribed.")
        body: dict[str, Any] = {"type": call_type, "framework_id": {"value": self.framework_id}}
        if payload is not None:
            body[call_type.lower()] = payload
        await self._post(SCHEDULER_PATH, call_type, body, {"Mesos-Stream-Id": self._stream_id})

    async def get_tasks(self) -> list[Mapping[str, Any]]:
        """Every task the master knows (the operator API's GET_TASKS): the scheduler API lists none, and a
        restarted router needs its tasks' labels to take them on again."""
        text = await self._post(OPERATOR_PATH, "GET_TASKS", {"type": "GET_TASKS"}, {})
        try:
            tasks = json.loads(text).get("get_tasks") or {}
            return [task for task in tasks.get("tasks") or () if isinstance(task, Mapping)]
        except (ValueError, AttributeError) as error:
            log.debug("GET_TASKS answer not understood: %s", error)
            raise MesosError(
                f"The Mesos master at {self.leader} answered GET_TASKS with a body that is not a JSON object "
                "holding get_tasks.tasks."
            ) from None

    async def _post(self, path: str, what: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> str:
        """POST one call to the leader; its body if the master accepted it (200 or 202), else ``MesosError``."""
        if self._session is None:
            raise MesosError(f"Cannot send {what} to the Mesos master: the client is not started.")
        url = f"http://{self.leader}{path}"
        try:
            async with asyncio.timeout(self.settings.request_timeout_secs):
                async with self._session.post(
                    url, data=json.dumps(body), headers={"Content-Type": JSON, "Accept": JSON, **headers}
                ) as response:
                    text = await response.text()
                    if response.status in (200, 202):
                        return text
        except TimeoutError:
            raise MesosError(
                f"{what} to the Mesos master at {url} got no answer within {self.settings.request_timeout_secs:g} s."
            ) from None
        except aiohttp.ClientError as error:
            raise MesosError(f"{what} to the Mesos master at {url} failed: {failure_reason(error)}.") from error
        raise MesosError(f"The Mesos master at {url} refused {what} with status {response.status}: {text.strip()}")

    async def accept(
        self, offer_ids: Sequence[str], task_infos: Sequence[Mapping[str, Any]], refuse_seconds: float
    ) -> None:
        await self.call(
            "ACCEPT",
            {
                "offer_ids": [{"value": offer_id} for offer_id in offer_ids],
                "operations": [{"type": "LAUNCH", "launch": {"task_infos": list(task_infos)}}],
                "filters": filters(refuse_seconds),
            },
        )

    async def accept_inverse_offers(self, inverse_offer_ids: Sequence[str]) -> None:
        await self.call("ACCEPT_INVERSE_OFFERS", {"inverse_offer_ids": [{"value": i} for i in inverse_offer_ids]})

    async def decline(self, offer_ids: Sequence[str], refuse_seconds: float) -> None:
        payload = {"offer_ids": [{"value": i} for i in offer_ids], "filters": filters(refuse_seconds)}
        await self.call("DECLINE", payload)

    async def kill(self, task_id: str, agent_id: str | None, grace_secs: float | None = None) -> None:
        payload: dict[str, Any] = {"task_id": {"value": task_id}}
        if agent_id is not None:
            payload["agent_id"] = {"value": agent_id}
        if grace_secs is not None:
            payload["kill_policy"] = {"grace_period": {"nanoseconds": int(grace_secs * 1e9)}}
        await self.call("KILL", payload)

    async def acknowledge(self, status: TaskStatus) -> bool:
        """Acknowledge a status that carries a uuid; a status without one (reconciliation) is never acked."""
        if status.uuid is None or status.agent_id is None:
            return False
        payload = {
            "agent_id": {"value": status.agent_id},
            "task_id": {"value": status.task_id},
            "uuid": status.uuid,
        }
        await self.call("ACKNOWLEDGE", payload)
        return True

    async def reconcile(self, tasks: Sequence[tuple[str, str | None]] = ()) -> None:
        """Ask for the state of ``tasks`` (task id, agent id); none means every task of the framework."""
        entries: list[dict[str, Any]] = []
        for task_id, agent_id in tasks:
            entry: dict[str, Any] = {"task_id": {"value": task_id}}
            if agent_id is not None:
                entry["agent_id"] = {"value": agent_id}
            entries.append(entry)
        await self.call("RECONCILE", {"tasks": entries})

    async def revive(self) -> None:
        await self.call("REVIVE", {"roles": [self.settings.role]})

    async def suppress(self) -> None:
        await self.call("SUPPRESS", {"roles": [self.settings.role]})

    # -- the subscription --

    async def _run(self) -> None:
        delay = self.settings.reconnect_min_secs
        while True:
            before = self.subscriptions
            try:
                await self._subscribe_once()
                reason = "the master closed the event stream"
            except (MesosError, aiohttp.ClientError, TimeoutError) as error:
                reason = str(error) or type(error).__name__
            self._stream_id = None
            self.connected.clear()
            self.leader = self.settings.master  # the leader may have changed: ask the configured master again
            log.warning("Mesos subscription lost: %s", reason)
            self._handler.handle_disconnect(reason)
            if self.superseded is not None:
                log.error("Not subscribing again: %s", self.superseded)
                return
            if self.subscriptions > before:
                delay = self.settings.reconnect_min_secs
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_secs)

    async def _subscribe_once(self) -> None:
        assert self._session is not None
        settings = self.settings
        info = framework_info(
            settings.framework_name, settings.user, settings.role, settings.failover_timeout_secs, self.framework_id
        )
        call: dict[str, Any] = {"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}
        if self.framework_id is not None:
            call["framework_id"] = {"value": self.framework_id}
        body = json.dumps(call)
        timeout = aiohttp.ClientTimeout(total=None, connect=settings.request_timeout_secs)
        headers = {"Content-Type": JSON, "Accept": JSON}
        master = self.leader
        for _ in range(MAX_REDIRECTS + 1):
            url = f"http://{master}{SCHEDULER_PATH}"
            async with asyncio.timeout(settings.request_timeout_secs):
                response = await self._session.post(
                    url, data=body, headers=headers, allow_redirects=False, timeout=timeout
                )
            async with response:
                if response.status == 307:
                    master = leader_from_location(response.headers.get("Location", ""))
                    log.info("Mesos master at %s redirected to the leader at %s", url, master)
                    continue
                if response.status != 200:
                    text = (await response.text()).strip()
                    raise MesosError(
                        f"The Mesos master at {url} refused SUBSCRIBE with status {response.status}: {text}"
                    )
                stream_id = response.headers.get("Mesos-Stream-Id")
                if not stream_id:
                    raise MesosError(f"The Mesos master at {url} answered SUBSCRIBE without a Mesos-Stream-Id header.")
                self.leader = master
                self._stream_id = stream_id
                await self._read_stream(response)
                return
        raise MesosError(f"SUBSCRIBE was redirected more than {MAX_REDIRECTS} times; no master leads.")

    async def _read_stream(self, response: aiohttp.ClientResponse) -> None:
        parser = RecordIOParser()
        patience = self.settings.request_timeout_secs  # until SUBSCRIBED says how often heartbeats come
        while True:
            try:
                async with asyncio.timeout(patience):
                    chunk = await response.content.readany()
            except TimeoutError:
                raise MesosError(f"The event stream was silent for {patience:g} s (missed heartbeats).") from None
            if not chunk:
                return
            for record in parser.feed(chunk):
                event = decode_event(record)
                patience = self._handle(event, patience)

    def _handle(self, event: dict[str, Any], patience: float) -> float:
        kind = event["type"]
        if kind == "HEARTBEAT":
            return patience
        if kind == "SUBSCRIBED":
            subscribed = event.get("subscribed", {})
            self.framework_id = str(subscribed["framework_id"]["value"])
            interval = float(subscribed.get("heartbeat_interval_seconds", 15.0))
            patience = interval * self.settings.heartbeat_misses
            self.subscriptions += 1
            self.connected.set()
            log.info("Subscribed to the Mesos master at %s as framework %s", self.leader, self.framework_id)
        elif kind == "ERROR":
            message = str(event.get("error", {}).get("message", ""))
            if not self.connected.is_set() and "removed" in message.lower():
                # The failover timeout expired (or the framework was torn down): the old id is dead and its tasks
                # were killed, so register anew next time.
                log.warning(
                    "The Mesos master removed framework %s (%s): forgetting its id and subscribing as a new framework",
                    self.framework_id,
                    message,
                )
                self.framework_id = None
            if "failed over" in message.lower():
                # Another scheduler subscribed with our framework id and now owns its tasks; subscribing again
                # would take them back and start a tug of war, so this one steps aside.
                self.superseded = (
                    f"another scheduler took over Mesos framework {self.framework_id} (the master said: {message})"
                )
            raise MesosError(f"The Mesos master sent an error: {message}")
        try:
            self._handler.handle_event(event)
        except Exception:
            log.exception("Handling the Mesos %s event failed", kind)
        return patience


__all__ = ["ClientSettings", "EventHandler", "MesosClient"]
