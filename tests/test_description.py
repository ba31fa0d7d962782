"""The typed service description: values from the resolved mappings, every default from the parameter tables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from waiter.description import ServiceDescription
from waiter.params import SERVICE_PARAMS, TOKEN_PARAMS
from waiter.scheduler.base import ServiceSpec

CORE = {"cmd": "run", "cpus": 0.5, "mem": 128, "version": "v1", "run-as-user": "alice"}


@pytest.mark.parametrize(
    ("effective", "meta", "attribute", "expected"),
    [
        (CORE, {}, "idle_timeout_mins", SERVICE_PARAMS["idle-timeout-mins"].default),
        ({**CORE, "idle-timeout-mins": 0}, {}, "idle_timeout_mins", 0),
        (CORE, {}, "max_queue_length", SERVICE_PARAMS["max-queue-length"].default),
        ({**CORE, "concurrency-level": 8}, {}, "concurrency_level", 8),
        (CORE, {}, "load_balancing", "oldest"),
        (CORE, {}, "fallback_period_secs", TOKEN_PARAMS["fallback-period-secs"].default),
        (CORE, {"fallback-period-secs": 0}, "fallback_period_secs", 0),
        (CORE, {"queue-timeout-ms": 5}, "queue_timeout_ms", 5),
        (CORE, {}, "socket_timeout_ms", TOKEN_PARAMS["socket-timeout-ms"].default),
        ({**CORE, "env": {"A": 1}}, {}, "env", {"A": "1"}),
        (CORE, {}, "cpus", 0.5),
        (CORE, {}, "run_as_user", "alice"),
    ],
)
def test_description_values(effective: dict[str, Any], meta: dict[str, Any], attribute: str, expected: Any) -> None:
    assert getattr(ServiceDescription.of(effective, meta), attribute) == expected


def test_scheduler_spec_defaults_are_the_tables() -> None:
    spec = ServiceSpec(service_id="s", cmd="run", cpus=1, mem=1)
    assert spec.health_check_url == SERVICE_PARAMS["health-check-url"].default
    assert spec.grace_period_secs == SERVICE_PARAMS["grace-period-secs"].default
    assert spec.restart_backoff_factor == SERVICE_PARAMS["restart-backoff-factor"].default


def test_no_literal_default_of_a_parameter_outside_the_tables() -> None:
    """A default written twice drifts: ``.get("idle-timeout-mins", 30)`` anywhere but waiter/params.py fails here."""
    names = "|".join(re.escape(name) for name in (*SERVICE_PARAMS, *TOKEN_PARAMS))
    # a number, a boolean or a non-empty string as the fallback: a default, written again
    pattern = re.compile(rf"""\.get\(\s*["'](?:{names})["']\s*,\s*(?:-?\d|True|False|["'][^"']+["'])""")
    package = Path(__file__).resolve().parent.parent / "waiter"
    found = [
        f"{path.relative_to(package.parent)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "params.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "defaults restated outside waiter/params.py:\n" + "\n".join(found)
