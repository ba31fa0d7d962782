"""The one instance-environment builder every scheduler uses (docs/api.md §7.1)."""

from __future__ import annotations

from typing import Any

import pytest

from waiter.scheduler.base import ServiceSpec
from waiter.scheduler.environment import format_number, instance_environment

SPEC = ServiceSpec(
    service_id="waiter-service-x-1",
    cmd="run",
    cpus=0.5,
    mem=256.0,
    env={"HOME": "/user/home", "WAITER_CPUS": "99", "FOO": "bar", "USER": "mallory"},
    concurrency_level=4,
    token="tok",
)


@pytest.mark.parametrize(
    ("options", "present", "absent"),
    [
        pytest.param(
            {"home": "/h", "user": "alice"},
            {"HOME": "/h", "USER": "alice", "LOGNAME": "alice", "FOO": "bar", "WAITER_CPUS": "0.5"},
            ("WAITER_SANDBOX", "WAITER_INSTANCE_ID", "PORT0"),
            id="app-level (Marathon): no per-instance facts",
        ),
        pytest.param(
            {"home": "/h", "user": None},
            {"HOME": "/h", "USER": "mallory"},
            ("LOGNAME",),
            id="no user known: the service's own USER stays",
        ),
        pytest.param(
            {"home": "/w", "user": "bob", "sandbox": "/w/s", "instance_id": "i-1", "ports": (31000, 31001)},
            {"WAITER_SANDBOX": "/w/s", "WAITER_INSTANCE_ID": "i-1", "PORT0": "31000", "PORT1": "31001"},
            ("PORT2",),
            id="per-instance facts",
        ),
        pytest.param(
            {"home": "/w", "user": "bob", "base": {"PATH": "/bin", "FOO": "from-base"}},
            {"PATH": "/bin", "FOO": "bar"},
            (),
            id="base comes first: the service's env overrides it",
        ),
    ],
)
def test_instance_environment(options: dict[str, Any], present: dict[str, str], absent: tuple[str, ...]) -> None:
    env = instance_environment(SPEC, "cluster-a", **options)
    assert {k: env.get(k) for k in present} == present
    assert not set(absent) & set(env)
    assert env["WAITER_SERVICE_ID"] == SPEC.service_id
    assert env["WAITER_CLUSTER"] == "cluster-a"
    assert env["WAITER_CONCURRENCY_LEVEL"] == "4"
    assert env["WAITER_MEM_MB"] == "256"
    assert env["WAITER_TOKEN"] == "tok"
    assert env["WAITER_USERNAME"] == "waiter"


@pytest.mark.parametrize(("value", "text"), [(1.0, "1"), (0.5, "0.5"), (256, "256"), (0.1, "0.1")])
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text
