"""What a deployment error tells the user to look at, from the failed instance itself (docs/api.md §6): the last
lines of its stderr and where the whole file is, or for an instance that never opened its port, which port it was
given and what the health check tried. lifecycle.deployment_error says what kind of failure it is; this says why.
"""

from __future__ import annotations

import os
from pathlib import Path

from waiter.scheduler.base import Instance, InstanceFlag, ServiceSpec

TAIL_BYTES = 4096  # read from the end of stderr: enough for the lines that matter, bounded whatever the file size
TAIL_LINES = 3
LINE_CHARS = 300


def stderr_tail(instance: Instance) -> tuple[Path, list[str]] | None:
    """The stderr file of an instance's sandbox and its last non-empty lines; None if there is none to read."""
    if not instance.log_directory:
        return None
    path = Path(instance.log_directory) / "stderr"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return None
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return path, [line[:LINE_CHARS] for line in lines[-TAIL_LINES:]]


def explain(failed: tuple[Instance, ...], spec: ServiceSpec) -> str:
    """Sentences to add to a deployment error, about the newest failed instance ("" when nothing useful is known)."""
    if not failed:
        return ""
    latest = max(failed, key=lambda i: i.started_at)
    parts: list[str] = []
    if InstanceFlag.NEVER_PASSED_HEALTH_CHECKS in latest.flags and InstanceFlag.HAS_CONNECTED not in latest.flags:
        index = spec.health_check_port_index
        parts.append(
            f"Instance {latest.id} was given $PORT{index} = {_port(latest, index)}, and for its grace period of "
            f"{spec.grace_period_secs} seconds the health check (GET {spec.health_check_url} on that port) found "
            f"nothing listening. The command must listen on $PORT{index}."
        )
    tail = stderr_tail(latest)
    if tail is not None and tail[1]:
        path, lines = tail
        parts.append(f"The last lines of its stderr ({path}):\n" + "\n".join(lines))
    return "\n".join(parts)


def _port(instance: Instance, index: int) -> int:
    if index == 0:
        return instance.port
    extra = instance.extra_ports
    return extra[index - 1] if index - 1 < len(extra) else instance.port
