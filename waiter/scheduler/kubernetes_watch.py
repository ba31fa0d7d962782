"""One Kubernetes collection (ReplicaSets or pods) of this router's objects, kept in memory by list+watch.

The loop lists the collection, then watches from the list's ``resourceVersion`` with bookmarks (so a quiet watch
still advances its version), resumes from the last version it saw when the server ends a watch, lists again when
the server says that version is gone (410), and reconnects with capped exponential backoff when the API fails. A
re-list replaces the collection in one step, so no object disappears in between. Every change is reported to
``on_change`` with the service id of the object it touched.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from waiter.scheduler.kubernetes_client import JSON, KubernetesClient, KubernetesError, WatchExpired
from waiter.scheduler.kubernetes_objects import metadata, name_of, resource_version, service_id_of

log = logging.getLogger(__name__)

MAX_RECONNECT_SECS = 30.0
SHORT_WATCH_SECS = 1.0  # a watch that ends sooner than this without an event counts as a failure (backoff)


class WatchedCollection:
    """The objects of one collection by service id and name, as the API server last reported them."""

    def __init__(
        self,
        kind: str,
        path: str,
        client: KubernetesClient,
        label_selector: str,
        *,
        watch_timeout_secs: int,
        retry_backoff_secs: float,
        on_change: Callable[[str], None],
    ) -> None:
        self.kind = kind
        self.path = path
        self.objects: dict[str, dict[str, JSON]] = {}  # service id -> name -> object
        self.synced = asyncio.Event()  # set once the first list is in
        self._client = client
        self._selector = label_selector
        self._watch_timeout_secs = watch_timeout_secs
        self._retry_backoff_secs = retry_backoff_secs
        self._on_change = on_change
        self._dropped_uids: set[str] = set()  # objects dropped on purpose: late events about them are ignored
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"kubernetes-{self.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    def first(self, service_id: str) -> JSON | None:
        return next(iter(self.objects.get(service_id, {}).values()), None)

    def drop(self, service_id: str) -> None:
        """Forget a service's objects now (we deleted them); events about them that arrive late are ignored."""
        for obj in self.objects.pop(service_id, {}).values():
            self._dropped_uids.add(str(metadata(obj).get("uid")))

    def apply(self, kind: str, obj: JSON) -> None:
        """One event (ADDED, MODIFIED, DELETED), from the watch or from an answer to our own call."""
        service_id = service_id_of(obj)
        if service_id is None or self._ignored(kind, obj):
            return
        objects = self.objects.setdefault(service_id, {})
        name = name_of(obj)
        old = objects.get(name)
        if old is not None and resource_version(old) > resource_version(obj):
            return  # older than what we know (e.g. an event about a change whose answer we already applied)
        if kind == "DELETED":
            if old is None or metadata(old).get("uid") == metadata(obj).get("uid"):
                objects.pop(name, None)
        else:
            objects[name] = obj
        if not objects:
            del self.objects[service_id]
        self._on_change(service_id)

    def _relist(self, items: list[JSON]) -> None:
        """Replace the collection with a fresh list in one step; what vanished was deleted meanwhile."""
        fresh: dict[str, dict[str, JSON]] = {}
        for item in items:
            service_id = service_id_of(item)
            if service_id is None or self._ignored("ADDED", item):
                continue
            fresh.setdefault(service_id, {})[name_of(item)] = item
        touched = set(self.objects) | set(fresh)
        self.objects = fresh
        for service_id in touched:
            self._on_change(service_id)

    def _ignored(self, kind: str, obj: Mapping[str, Any]) -> bool:
        uid = str(metadata(obj).get("uid"))
        if uid in self._dropped_uids:
            if kind == "DELETED":
                self._dropped_uids.discard(uid)
            return True
        return False

    async def _run(self) -> None:
        version: str | None = None
        failures = 0
        while True:
            began = time.monotonic()
            events = 0
            try:
                if version is None:
                    items, version = await self._client.list(self.path, self._selector)
                    self._relist(items)
                    self.synced.set()
                async for event in self._client.watch(self.path, self._selector, version, self._watch_timeout_secs):
                    events += 1
                    obj = event["object"]
                    if event.get("type") != "BOOKMARK":
                        self.apply(str(event.get("type")), obj)
                    version = str(metadata(obj).get("resourceVersion") or version)
                if events or time.monotonic() - began >= SHORT_WATCH_SECS:
                    failures = 0
                    continue
                raise KubernetesError(f"The watch of {self.path} ended at once without an event.")
            except WatchExpired as error:
                log.info("%s watch expired, listing again: %s", self.kind, error)
                version = None
                failures = 0
            except Exception as error:  # the loop must outlive any one bad answer
                failures += 1
                delay = min(self._retry_backoff_secs * 2 ** (failures - 1), MAX_RECONNECT_SECS)
                delay *= random.uniform(0.8, 1.2)
                level = logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG
                log.log(
                    level,
                    "%s watch failed (%d in a row), reconnecting in %.1f s: %s",
                    self.kind,
                    failures,
                    delay,
                    error,
                    exc_info=not isinstance(error, KubernetesError),
                )
                await asyncio.sleep(delay)
