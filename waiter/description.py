"""The typed description of a service: what it runs and how it is served, read once from the parameter tables.

The resolver produces a service's effective parameters (kebab-case, as Waiter's JSON speaks them) and its token
user metadata; ``ServiceDescription.of`` turns both into attributes, filling anything absent from the defaults of
``waiter.params`` (the one place a default is written). Every consumer reads attributes; the JSON views keep
speaking kebab-case from the mappings. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from waiter.params import SERVICE_PARAMS, TOKEN_PARAMS, Param


def _value(values: Mapping[str, Any], table: Mapping[str, Param], name: str) -> Any:
    value = values.get(name)
    return table[name].default if value is None else value


@dataclass(frozen=True, slots=True)
class ServiceDescription:
    """A service's effective parameters (docs/api.md §2.1) and token user metadata (§2.2), typed."""

    cmd: str
    cpus: float
    mem: float
    version: str
    run_as_user: str
    image: str  # empty: the scheduler's default image (back-ends that run images: Kubernetes)
    ports: int
    env: Mapping[str, str]
    concurrency_level: int
    min_instances: int
    max_instances: int
    load_balancing: str
    max_queue_length: int
    health_check_url: str
    health_check_port_index: int
    health_check_interval_secs: int
    health_check_max_consecutive_failures: int
    grace_period_secs: int
    termination_grace_period_secs: int
    restart_backoff_factor: float
    idle_timeout_mins: int
    instance_expiry_mins: int
    # token user metadata
    fallback_period_secs: int
    stale_timeout_mins: int
    queue_timeout_ms: int
    socket_timeout_ms: int
    streaming_timeout_ms: int

    @classmethod
    def of(cls, effective: Mapping[str, Any], token_meta: Mapping[str, Any]) -> ServiceDescription:
        def param(name: str) -> Any:
            return _value(effective, SERVICE_PARAMS, name)

        def meta(name: str) -> Any:
            return _value(token_meta, TOKEN_PARAMS, name)

        return cls(
            cmd=str(param("cmd") or ""),
            cpus=float(param("cpus") or 0),
            mem=float(param("mem") or 0),
            version=str(param("version") or ""),
            run_as_user=str(param("run-as-user") or ""),
            image=str(param("image") or ""),
            ports=int(param("ports")),
            env={str(k): str(v) for k, v in (param("env") or {}).items()},
            concurrency_level=int(param("concurrency-level")),
            min_instances=int(param("min-instances")),
            max_instances=int(param("max-instances")),
            load_balancing=str(param("load-balancing")),
            max_queue_length=int(param("max-queue-length")),
            health_check_url=str(param("health-check-url")),
            health_check_port_index=int(param("health-check-port-index")),
            health_check_interval_secs=int(param("health-check-interval-secs")),
            health_check_max_consecutive_failures=int(param("health-check-max-consecutive-failures")),
            grace_period_secs=int(param("grace-period-secs")),
            termination_grace_period_secs=int(param("termination-grace-period-secs")),
            restart_backoff_factor=float(param("restart-backoff-factor")),
            idle_timeout_mins=int(param("idle-timeout-mins")),
            instance_expiry_mins=int(param("instance-expiry-mins")),
            fallback_period_secs=int(meta("fallback-period-secs")),
            stale_timeout_mins=int(meta("stale-timeout-mins")),
            queue_timeout_ms=int(meta("queue-timeout-ms")),
            socket_timeout_ms=int(meta("socket-timeout-ms")),
            streaming_timeout_ms=int(meta("streaming-timeout-ms")),
        )
