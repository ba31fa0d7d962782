"""Routers that share one Redis must share one scheduler.

The leader scales every service through its own scheduler. Routers each running their own local scheduler on
one Redis would therefore scale only the leader's instances (the others stay at one instance), and a leader that
moves on leaves its instances to nobody. So every router announces its scheduler in its heartbeat, and a router
whose scheduler differs from a live peer's refuses to start, saying what to do instead.

A scheduler's identity is a string: the cluster for Marathon and Mesos, the socket for an agent, and for a local
scheduler the router process itself (host, pid, start time), since no two routers can share one. A peer on this
host whose scheduler is provably gone (its process no longer runs, its agent socket refuses connections) left a
heartbeat not yet expired (killed a moment ago, now restarted): it is ignored, so a restart is never refused.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from waiter.scheduler.leftovers import is_alive
from waiter.settings import Settings, SettingsError, redact_url
from waiter.state import SharedState, StateUnavailable

log = logging.getLogger(__name__)

Gone = Callable[[str], bool]  # is the scheduler of this identity (on this host) provably gone?


@dataclass(frozen=True)
class Conflict:
    router_id: str
    identity: str


def scheduler_identity(settings: Settings, *, host: str, pid: int, started: float) -> str:
    kind = settings.scheduler_kind
    if kind == "marathon":
        return f"marathon {settings.marathon.url.rstrip('/')} apps {settings.marathon.app_id_prefix}"
    if kind == "mesos":
        return f"mesos {settings.mesos.master} framework {settings.mesos.framework_name}"
    if kind == "kubernetes":
        k8s = settings.kubernetes
        where = k8s.api_url or (f"kubeconfig {k8s.kubeconfig}" if k8s.kubeconfig else "in-cluster")
        return f"kubernetes {where} namespace {k8s.namespace or '(default)'} cluster {settings.cluster_name}"
    if kind == "agent":
        return f"agent {settings.agent_url} on {host}"
    return f"local on {host} pid {pid} started {started!r}"


def this_identity(settings: Settings) -> str:
    started = psutil.Process().create_time()
    return scheduler_identity(settings, host=socket.gethostname(), pid=os.getpid(), started=started)


def host_of(identity: str) -> str | None:
    """The host of a local or agent identity, None for a cluster (Marathon, Mesos)."""
    words = identity.split(" ")
    if len(words) == 7 and words[:2] == ["local", "on"]:
        return words[2]
    if len(words) == 4 and words[0] == "agent" and words[2] == "on":
        return words[3]
    return None


def provably_gone(identity: str) -> bool:
    """For an identity on this host: its router process is gone (local) or its agent refuses connections."""
    words = identity.split(" ")
    if words[0] == "local":
        try:
            return not is_alive(int(words[4]), float(words[6]))
        except (IndexError, ValueError):
            return False
    if words[0] == "agent" and words[1].startswith("unix:"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(words[1].removeprefix("unix:"))
            except OSError:
                return True  # nobody listens there any more
        return False
    return False


def conflicts(
    me: str, identity: str, routers: Mapping[str, Mapping[str, Any]], host: str, gone: Gone
) -> list[Conflict]:
    """The live peers whose scheduler is not ``identity``; a peer announcing none predates this check."""
    found = []
    for router_id, info in sorted(routers.items()):
        theirs = info.get("scheduler")
        if router_id == me or not isinstance(theirs, str) or theirs == identity:
            continue
        if host_of(theirs) == host and gone(theirs):
            continue  # a dead router's heartbeat, not yet expired
        found.append(Conflict(router_id, theirs))
    return found


def refusal(identity: str, found: list[Conflict], redis: str) -> str:
    peer = found[0]
    return (
        f"Another router ({peer.router_id}, scheduler: {peer.identity}) shares the Redis at {redis} with a "
        f"different scheduler (this router's: {identity}). Routers sharing a Redis must share one scheduler, or "
        "only the leader's instances would scale: run several routers on one machine with --workers N (or "
        "scheduler.kind: agent), point them all at one Marathon or Mesos, or give each router its own Redis."
    )


async def refuse_mixed_schedulers(state: SharedState, settings: Settings, identity: str, ttl_ms: int) -> None:
    """Announce this router's scheduler, then raise ``SettingsError`` if a live peer announced another one.

    Announcing first means two routers starting together cannot both miss each other. With the state unreachable
    the check is skipped (logged): a router must be able to start while Redis is down.
    """
    if not state.shared:
        return
    try:
        await state.heartbeat(settings.router_id, {"scheduler": identity, "started-at": time.time()}, ttl_ms)
        routers = await state.routers()
    except StateUnavailable as error:
        log.warning("Cannot check which schedulers the other routers use: %s", error)
        return
    found = conflicts(settings.router_id, identity, routers, socket.gethostname(), provably_gone)
    if found:
        raise SettingsError(refusal(identity, found, redact_url(settings.redis or "")))
