"""The Marathon emulator's app definitions: Marathon's defaults filled in, and its 422 validation details."""

from __future__ import annotations

import copy
import re
from typing import Any

# One segment of an app id, as Marathon's PathId validation has it (dot-separated labels).
ID_SEGMENT = r"(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])"
HEALTH_PROTOCOLS = ("HTTP", "HTTPS", "TCP", "COMMAND", "MESOS_HTTP", "MESOS_HTTPS", "MESOS_TCP")
APP_DEFAULTS: dict[str, Any] = {
    "cmd": None,
    "args": None,
    "user": None,
    "env": {},
    "instances": 1,
    "cpus": 1.0,
    "mem": 128.0,
    "disk": 0.0,
    "gpus": 0,
    "executor": "",
    "constraints": [],
    "uris": [],
    "fetch": [],
    "storeUrls": [],
    "backoffSeconds": 1,
    "backoffFactor": 1.15,
    "maxLaunchDelaySeconds": 300,
    "container": None,
    "healthChecks": [],
    "readinessChecks": [],
    "dependencies": [],
    "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 1},
    "labels": {},
    "requirePorts": False,
    "killSelection": "YOUNGEST_FIRST",
    "unreachableStrategy": {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0},
    "networks": [{"mode": "host"}],
    "secrets": {},
}
HEALTH_DEFAULTS: dict[str, Any] = {
    "protocol": "HTTP",
    "path": "/",
    "portIndex": 0,
    "gracePeriodSeconds": 300,
    "intervalSeconds": 60,
    "timeoutSeconds": 20,
    "maxConsecutiveFailures": 3,
    "delaySeconds": 15,
    "ignoreHttp1xx": False,
}


def invalid_json(reason: str) -> list[dict[str, Any]]:
    return [{"path": "/", "errors": [f"error.expected.jsobject: {reason}"]}]


def normalise(body: dict[str, Any]) -> dict[str, Any]:
    """The definition as Marathon stores it: absolute id, defaults, ``ports`` as portDefinitions."""
    definition: dict[str, Any] = {"id": None, **copy.deepcopy(APP_DEFAULTS)}
    definition.update(copy.deepcopy(body))
    for status_field in (
        "version",
        "versionInfo",
        "deployments",
        "tasks",
        "lastTaskFailure",
        "tasksStaged",
        "tasksRunning",
        "tasksHealthy",
        "tasksUnhealthy",
    ):
        definition.pop(status_field, None)
    app_id = str(definition.get("id") or "")
    definition["id"] = "/" + app_id.strip("/") if app_id.strip("/") else ""
    ports = definition.pop("ports", None)
    if "portDefinitions" not in definition:
        ports = ports if isinstance(ports, list) else [0]
        definition["portDefinitions"] = [{"port": p, "protocol": "tcp", "labels": {}} for p in ports]
    checks = definition.get("healthChecks")
    if isinstance(checks, list):
        definition["healthChecks"] = [{**HEALTH_DEFAULTS, **c} if isinstance(c, dict) else c for c in checks]
    return definition


def validate(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Marathon's validation details: [{"path": "/cpus", "errors": [...]}, ...]; empty when valid."""
    problems: list[dict[str, Any]] = []

    def problem(path: str, message: str) -> None:
        problems.append({"path": path, "errors": [message]})

    segments = d["id"].strip("/").split("/") if d["id"] else []
    if not segments or not all(re.fullmatch(ID_SEGMENT, s) for s in segments):
        problem("/id", f"must fully match regular expression '^(({ID_SEGMENT})|(\\.|\\.\\.))$' in every segment")
    if not d.get("cmd") and not d.get("args") and not d.get("container"):
        problem("/", "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.")
    if d.get("cmd") and d.get("args"):
        problem("/", "AppDefinition must either contain a 'cmd' or a 'args', not both")
    for name in ("cpus", "mem", "disk", "backoffSeconds", "maxLaunchDelaySeconds"):
        value = d.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problem(f"/{name}", f"got {value}, expected 0.0 or more")
    instances = d.get("instances")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 0:
        problem("/instances", f"got {instances}, expected 0 or more")
    factor = d.get("backoffFactor")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 1.0:
        problem("/backoffFactor", f"got {factor}, expected 1.0 or more")
    strategy = d.get("upgradeStrategy") or {}
    for name in ("minimumHealthCapacity", "maximumOverCapacity"):
        value = strategy.get(name, 1) if isinstance(strategy, dict) else None
        if not isinstance(value, int | float) or value < 0:
            problem(f"/upgradeStrategy/{name}", "is less than 0")
        elif value > 1:
            problem(f"/upgradeStrategy/{name}", "is greater than 1")
    env = d.get("env")
    if not isinstance(env, dict) or not all(isinstance(v, str | dict) for v in env.values()):
        problem("/env", "must be an object of string values")
    ports = d.get("portDefinitions")
    if not isinstance(ports, list) or not all(isinstance(p, dict) and isinstance(p.get("port"), int) for p in ports):
        problem("/portDefinitions", "must be a list of {port: integer}")
        ports = []
    checks = d.get("healthChecks")
    for index, check in enumerate(checks if isinstance(checks, list) else [None]):
        if not isinstance(check, dict) or check.get("protocol", "HTTP") not in HEALTH_PROTOCOLS:
            problem(f"/healthChecks({index})/protocol", f"must be one of {', '.join(HEALTH_PROTOCOLS)}")
        elif int(check.get("portIndex") or 0) >= max(len(ports), 1):
            problem(f"/healthChecks({index})", "Health check port indices must address an element of the ports array")
    grace = d.get("taskKillGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int | float) or grace < 0):
        problem("/taskKillGracePeriodSeconds", f"got {grace}, expected 0 or more")
    return problems
