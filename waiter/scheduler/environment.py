"""The environment every scheduler gives an instance (docs/api.md §7.1), built in one place.

Waiter's own variables win over the service's ``env``; each back-end says where home is, who the user is, and
which of the per-instance facts (sandbox, instance id, ports) it knows when it builds the environment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from waiter.scheduler.base import ServiceSpec


def format_number(value: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5": how Waiter writes cpus and mem into the environment."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def instance_environment(
    spec: ServiceSpec,
    cluster: str,
    *,
    home: str,
    user: str | None,
    base: Mapping[str, str] | None = None,
    sandbox: str | None = None,
    instance_id: str | None = None,
    ports: Sequence[int] = (),
) -> dict[str, str]:
    """``base`` (what the back-end passes through), then the service's env, then Waiter's variables."""
    env = dict(base or {})
    env.update(spec.env)
    env.update(
        {
            "HOME": home,
            "WAITER_CLUSTER": cluster,
            "WAITER_CONCURRENCY_LEVEL": str(spec.concurrency_level),
            "WAITER_CPUS": format_number(spec.cpus),
            "WAITER_MEM_MB": format_number(spec.mem),
            "WAITER_SERVICE_ID": spec.service_id,
            "WAITER_USERNAME": "waiter",
            "WAITER_TOKEN": spec.token,
        }
    )
    if user:
        env.update({"LOGNAME": user, "USER": user})
    if sandbox is not None:
        env["WAITER_SANDBOX"] = sandbox
    if instance_id is not None:
        env["WAITER_INSTANCE_ID"] = instance_id
    env.update({f"PORT{index}": str(port) for index, port in enumerate(ports)})
    return env
