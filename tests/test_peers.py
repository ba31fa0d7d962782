"""Routers sharing a Redis must share a scheduler: the pure check (the refusal itself: test_router_process.py)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from waiter.peers import Conflict, conflicts, provably_gone, scheduler_identity
from waiter.settings import load_settings

LOCAL_ALIVE = "local on box pid 10 started 100.0"
LOCAL_DEAD = "local on box pid 11 started 100.0"
LOCAL_ELSEWHERE = "local on other pid 11 started 100.0"
AGENT = "agent unix:/tmp/a/agent.sock on box"
AGENT_DEAD = "agent unix:/tmp/b/agent.sock on box"
GONE = {LOCAL_DEAD, AGENT_DEAD, "local on other pid 11 started 100.0"}


def gone(identity: str) -> bool:
    return identity in GONE


@pytest.mark.parametrize(
    ("mine", "routers", "expected"),
    [
        (AGENT, {"me": {"scheduler": AGENT}, "w1": {"scheduler": AGENT}}, []),
        (AGENT, {"old": {"url": "http://x"}}, []),  # a router from before the check announces nothing
        (AGENT, {"r": {"scheduler": LOCAL_ALIVE}}, [Conflict("r", LOCAL_ALIVE)]),
        (LOCAL_ALIVE, {"r": {"scheduler": AGENT}}, [Conflict("r", AGENT)]),
        (AGENT, {"r": {"scheduler": LOCAL_DEAD}}, []),  # killed a moment ago: its heartbeat has not expired
        (AGENT, {"r": {"scheduler": AGENT_DEAD}}, []),  # a supervisor killed a moment ago
        (AGENT, {"r": {"scheduler": LOCAL_ELSEWHERE}}, [Conflict("r", LOCAL_ELSEWHERE)]),  # cannot tell: refuse
        (AGENT, {"me": {"scheduler": LOCAL_ALIVE}}, []),  # this router's own earlier heartbeat
    ],
    ids=["same-agent", "unannounced", "local-peer", "agent-peer", "dead-local", "dead-agent", "other-host", "itself"],
)
def test_conflicts(mine: str, routers: dict[str, dict[str, Any]], expected: list[Conflict]) -> None:
    assert conflicts("me", mine, routers, "box", gone) == expected


def test_an_agent_socket_nobody_listens_on_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    assert provably_gone(f"agent unix:{path} on box")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        assert not provably_gone(f"agent unix:{path} on box")
    assert provably_gone(f"agent unix:{path} on box")  # the file is left, but refuses connections


def test_identities_name_what_routers_share() -> None:
    def identity(**overrides: Any) -> str:
        return scheduler_identity(load_settings(None, overrides), host="box", pid=7, started=1.5)

    assert identity() == "local on box pid 7 started 1.5"
    assert identity(scheduler={"kind": "agent", "agent": {"url": "unix:/s"}}) == "agent unix:/s on box"
    marathon = identity(scheduler={"kind": "marathon", "marathon": {"url": "http://m:8080/"}})
    assert marathon == "marathon http://m:8080 apps /waiter/"
    assert identity(scheduler={"kind": "mesos", "mesos": {"master": "m:5050"}}) == "mesos m:5050 framework waiter"
    k8s = {"api-url": "https://k:6443", "namespace": "w"}
    kubernetes = identity(scheduler={"kind": "kubernetes", "kubernetes": k8s})
    assert kubernetes == "kubernetes https://k:6443 namespace w cluster local"
