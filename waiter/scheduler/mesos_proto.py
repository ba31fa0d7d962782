"""The Mesos v1 scheduler API without I/O: RecordIO framing, events, offers, task statuses and task infos.

Everything here is pure and table-tested: decoding what the master sends (RecordIO records, the nested JSON of
events), translating a ``TaskStatus`` into what it means for an instance, and planning what to launch on an offer
(what fits, which ports, the ``TaskInfo``, and which resource is missing when nothing fits).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from waiter.scheduler.base import SchedulerError, ServiceSpec
from waiter.scheduler.environment import format_number

SCHEDULER_PATH = "/api/v1/scheduler"
_EPSILON = 1e-9  # offers carry floats: 0.1 + 0.2 must still fit in 0.3
# A length header longer than this cannot be a sane record size; the stream is corrupt.
MAX_HEADER_DIGITS = 12


class MesosError(SchedulerError):
    """The master refused a call, could not be reached, or broke the protocol."""


class RecordIOError(MesosError):
    """The event stream is not valid RecordIO."""


# -- RecordIO --------------------------------------------------------------------------------------------------


class RecordIOParser:
    """Incremental RecordIO decoder: ``<decimal length>\\n<that many bytes>``, repeated, with no separator.

    ``feed`` takes bytes cut anywhere (inside the length, between length and newline, inside the record) and
    returns every record completed so far.
    """

    def __init__(self, max_record_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_record_bytes = max_record_bytes
        self._buffer = bytearray()
        self._expected: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole record."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        records: list[bytes] = []
        while True:
            if self._expected is None and not self._read_header():
                return records
            assert self._expected is not None
            if len(self._buffer) < self._expected:
                return records
            records.append(bytes(self._buffer[: self._expected]))
            del self._buffer[: self._expected]
            self._expected = None

    def _read_header(self) -> bool:
        newline = self._buffer.find(b"\n")
        header = bytes(self._buffer if newline < 0 else self._buffer[:newline])
        if header and not header.isdigit():
            raise RecordIOError(f"RecordIO length header {header[:20]!r} is not a decimal number.")
        if len(header) > MAX_HEADER_DIGITS:
            raise RecordIOError(f"RecordIO length header {header[:20]!r} is longer than {MAX_HEADER_DIGITS} digits.")
        if newline < 0:
            return False
        length = int(header) if header else 0
        if not 0 < length <= self.max_record_bytes:
            raise RecordIOError(
                f"RecordIO record length is {length} but must be in the range [1, {self.max_record_bytes}]."
            )
        del self._buffer[: newline + 1]
        self._expected = length
        return True


def encode_record(data: bytes) -> bytes:
    """One RecordIO record (what a master writes)."""
    return str(len(data)).encode() + b"\n" + data


# -- events and their payloads ---------------------------------------------------------------------------------


def decode_event(record: bytes) -> dict[str, Any]:
    try:
        event = json.loads(record)
    except ValueError as error:
        raise MesosError(f"An event of the stream is not JSON: {error}: {record[:200]!r}") from error
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise MesosError(f"An event of the stream has no 'type': {record[:200]!r}")
    return event


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    agent_id: str
    hostname: str
    cpus: float = 0.0
    mem: float = 0.0
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges
    role: str | None = None  # the role the offer is allocated to (multi-role frameworks echo it in tasks)

    @property
    def port_count(self) -> int:
        return sum(end - begin + 1 for begin, end in self.ports)


def offer_from_json(data: Mapping[str, Any]) -> Offer:
    """An Offer message; scalars of one name are summed over roles, port ranges joined."""
    cpus = mem = 0.0
    ports: list[tuple[int, int]] = []
    for resource in data.get("resources") or ():
        name = resource.get("name")
        if name in ("cpus", "mem") and resource.get("type", "SCALAR") == "SCALAR":
            value = float(resource.get("scalar", {}).get("value", 0.0))
            if name == "cpus":
                cpus += value
            else:
                mem += value
        elif name == "ports" and resource.get("type") == "RANGES":
            for span in resource.get("ranges", {}).get("range") or ():
                ports.append((int(span["begin"]), int(span["end"])))
    allocation = data.get("allocation_info")
    return Offer(
        id=str(data["id"]["value"]),
        agent_id=str(data["agent_id"]["value"]),
        hostname=str(data["hostname"]),
        cpus=cpus,
        mem=mem,
        ports=tuple(sorted(ports)),
        role=str(allocation["role"]) if isinstance(allocation, Mapping) and "role" in allocation else None,
    )


def offers_of(event: Mapping[str, Any]) -> list[Offer]:
    """The offers of an OFFERS event (nested ``{"offers": {"offers": [...]}}``, as the master sends it)."""
    return [offer_from_json(offer) for offer in event.get("offers", {}).get("offers") or ()]


@dataclass(frozen=True, slots=True)
class TaskStatus:
    task_id: str
    state: str
    agent_id: str | None = None
    message: str | None = None
    reason: str | None = None
    source: str | None = None
    uuid: str | None = None  # set iff the status must be acknowledged
    timestamp: float | None = None


def status_from_json(data: Mapping[str, Any]) -> TaskStatus:
    agent = data.get("agent_id")
    return TaskStatus(
        task_id=str(data["task_id"]["value"]),
        state=str(data["state"]),
        agent_id=str(agent["value"]) if isinstance(agent, Mapping) else None,
        message=data.get("message"),
        reason=data.get("reason"),
        source=data.get("source"),
        uuid=data.get("uuid") or None,
        timestamp=float(data["timestamp"]) if data.get("timestamp") is not None else None,
    )


# -- what a status means for an instance -----------------------------------------------------------------------


class TaskPhase(enum.StrEnum):
    ACTIVE = "active"  # starting or running
    FAILED = "failed"
    KILLED = "killed"
    FINISHED = "finished"  # ended by itself without an error


_PHASES = {
    "TASK_STAGING": TaskPhase.ACTIVE,
    "TASK_STARTING": TaskPhase.ACTIVE,
    "TASK_RUNNING": TaskPhase.ACTIVE,
    "TASK_KILLING": TaskPhase.ACTIVE,
    # Only partition-aware frameworks see it; the task may come back, so it keeps its place.
    "TASK_UNREACHABLE": TaskPhase.ACTIVE,
    "TASK_FINISHED": TaskPhase.FINISHED,
    "TASK_KILLED": TaskPhase.KILLED,
}
_EXITED = re.compile(r"exited with status (-?\d+)")
_SIGNALLED = re.compile(r"terminated with signal (.+?)\s*$")
# The command executor names a signal the way strsignal(3) does ("Killed", "Terminated").
_SIGNALS = {signal.strsignal(number): number for number in signal.Signals if signal.strsignal(number)}


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    phase: TaskPhase
    message: str
    exit_code: int | None = None


def exit_code_of(message: str | None) -> int | None:
    """The exit code a command executor message states: ``exited with status N``, or ``-signal`` when killed."""
    if not message:
        return None
    exited = _EXITED.search(message)
    if exited:
        return int(exited.group(1))
    signalled = _SIGNALLED.search(message)
    if signalled:
        name = signalled.group(1)
        if name in _SIGNALS:
            return -int(_SIGNALS[name])
        return -int(name) if name.isdigit() else None
    return None


def task_outcome(status: TaskStatus) -> TaskOutcome:
    """Translate a TaskStatus: running-ish states are active; everything unknown or lost is a failure."""
    phase = _PHASES.get(status.state, TaskPhase.FAILED)
    message = status.message or status.state
    exit_code = exit_code_of(status.message)
    if phase is TaskPhase.FAILED and exit_code is None and status.reason and status.reason not in message:
        message = f"{message} ({status.reason})"  # without an exit code, the reason is the best clue
    return TaskOutcome(phase, message, exit_code)


# -- calls -----------------------------------------------------------------------------------------------------


def leader_from_location(location: str) -> str:
    """``host:port`` of the master a 307 points to (``//host:port/api/v1/scheduler`` or an absolute URL)."""
    rest = location.split("//", 1)[1] if "//" in location else location
    hostport = rest.split("/", 1)[0]
    if not hostport:
        raise MesosError(f"The master redirected to {location!r}, which names no host.")
    return hostport


def framework_info(
    name: str, user: str, role: str, failover_timeout_secs: float, framework_id: str | None
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": name,
        "user": user,
        "roles": [role],
        "capabilities": [{"type": "MULTI_ROLE"}],
        "failover_timeout": failover_timeout_secs,
        "checkpoint": True,
    }
    if framework_id is not None:
        info["id"] = {"value": framework_id}
    return info


def filters(refuse_seconds: float) -> dict[str, Any]:
    return {"refuse_seconds": refuse_seconds}


# -- planning launches ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Need:
    """What one instance takes from an offer."""

    cpus: float
    mem: float
    ports: int

    @classmethod
    def of(cls, spec: ServiceSpec) -> Need:
        return cls(spec.cpus, spec.mem, spec.ports)

    def fits(self, offer: Offer) -> bool:
        return (
            self.cpus <= offer.cpus + _EPSILON and self.mem <= offer.mem + _EPSILON and self.ports <= offer.port_count
        )


def take(offer: Offer, need: Need) -> tuple[tuple[int, ...], Offer]:
    """The lowest ``need.ports`` ports of a fitting offer, and what is left of the offer after one instance."""
    chosen: list[int] = []
    left: list[tuple[int, int]] = []
    for begin, end in offer.ports:
        count = min(need.ports - len(chosen), end - begin + 1)
        chosen.extend(range(begin, begin + count))
        if begin + count <= end:
            left.append((begin + count, end))
    rest = dataclasses.replace(offer, cpus=offer.cpus - need.cpus, mem=offer.mem - need.mem, ports=tuple(left))
    return tuple(chosen), rest


def shortfall(need: Need, offers: Sequence[Offer]) -> str:
    """Why none of ``offers`` holds an instance, naming the first resource that no offer had enough of."""
    resources = (
        ("cpus", need.cpus, max((o.cpus for o in offers), default=0.0), "cpus"),
        ("mem", need.mem, max((o.mem for o in offers), default=0.0), "MiB"),
        ("ports", float(need.ports), float(max((o.port_count for o in offers), default=0)), "ports"),
    )
    for name, needed, largest, unit in resources:
        if needed > largest + _EPSILON:
            return (
                f"No offer had enough {name} for an instance: need {format_number(needed)} {unit}, "
                f"the largest offer has {format_number(round(largest, 6))} {unit}"
            )
    return (
        "No single offer had enough cpus, mem and ports together for an instance: need "
        f"{format_number(need.cpus)} cpus, {format_number(need.mem)} MiB and {need.ports} ports"
    )


def port_ranges(ports: Sequence[int]) -> list[dict[str, int]]:
    """Ports as Mesos ranges, adjacent ports joined."""
    spans: list[dict[str, int]] = []
    for port in sorted(ports):
        if spans and spans[-1]["end"] == port - 1:
            spans[-1]["end"] = port
        else:
            spans.append({"begin": port, "end": port})
    return spans


def task_info(
    spec: ServiceSpec, offer: Offer, instance_id: str, ports: Sequence[int], env: Mapping[str, str], grace: float
) -> dict[str, Any]:
    role = {"allocation_info": {"role": offer.role}} if offer.role else {}
    resources = [
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": spec.cpus}, **role},
        {"name": "mem", "type": "SCALAR", "scalar": {"value": spec.mem}, **role},
        {"name": "ports", "type": "RANGES", "ranges": {"range": port_ranges(ports)}, **role},
    ]
    command: dict[str, Any] = {
        "value": spec.cmd,
        "shell": True,
        "environment": {"variables": [{"name": k, "value": v} for k, v in sorted(env.items())]},
    }
    if spec.run_as_user:
        command["user"] = spec.run_as_user
    return {
        "name": instance_id,
        "task_id": {"value": instance_id},
        "agent_id": {"value": offer.agent_id},
        "resources": resources,
        "command": command,
        "kill_policy": {"grace_period": {"nanoseconds": int(grace * 1e9)}},
        "labels": {"labels": [{"key": "source", "value": "waiter"}, {"key": "service-id", "value": spec.service_id}]},
    }


__all__ = [
    "MesosError",
    "Need",
    "Offer",
    "RecordIOError",
    "RecordIOParser",
    "TaskOutcome",
    "TaskPhase",
    "TaskStatus",
    "decode_event",
    "encode_record",
    "exit_code_of",
    "filters",
    "framework_info",
    "leader_from_location",
    "offer_from_json",
    "offers_of",
    "port_ranges",
    "shortfall",
    "status_from_json",
    "take",
    "task_info",
    "task_outcome",
]
