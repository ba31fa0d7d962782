"""The Mesos v1 scheduler API without I/O: RecordIO framing, events, offers and task statuses.

Everything here is pure and table-tested: decoding what the master sends (RecordIO records, the nested JSON of
events), translating a ``TaskStatus`` into what it means for an instance, and planning what to take from an offer
(what fits, which ports, and which resource is missing when nothing fits). The ``TaskInfo`` built from what was
taken is ``mesos_instances``'.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from waiter.scheduler.base import InstanceFlag, SchedulerError, ServiceSpec
from waiter.scheduler.environment import format_number
from waiter.scheduler.exits import exit_code_of

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


# Fields of a Resource that say how much; every other field (role, reservations, allocation_info, disk, ...) says
# where it comes from, and a task must echo those exactly: the master checks that the offer contains the task's
# resources field by field (validation.cpp), so cpus summed across roles and sent without them are refused.
_QUANTITY_FIELDS = frozenset({"name", "type", "scalar", "ranges", "set"})


@dataclass(frozen=True, slots=True)
class Pool:
    """Some of one resource in an offer, from one source (a role, a reservation); ``source`` is its other fields."""

    name: str  # cpus, mem or ports
    amount: float = 0.0  # cpus and mem
    ranges: tuple[tuple[int, int], ...] = ()  # ports, inclusive
    source: str = "{}"  # the resource's non-quantity fields as sorted JSON, echoed in the task's resources

    @property
    def reserved(self) -> bool:
        fields = json.loads(self.source)
        return bool(fields.get("reservations")) or fields.get("role", "*") != "*"

    def resource(self, amount: float = 0.0, ports: Sequence[int] = ()) -> dict[str, Any]:
        """This pool's share for a task, with the source fields the master compares."""
        if self.name == "ports":
            quantity: dict[str, Any] = {"type": "RANGES", "ranges": {"range": port_ranges(ports)}}
        else:
            quantity = {"type": "SCALAR", "scalar": {"value": round(amount, 6)}}
        return {"name": self.name, **quantity, **json.loads(self.source)}


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    agent_id: str
    hostname: str
    pools: tuple[Pool, ...] = ()
    role: str | None = None  # the role the offer is allocated to (multi-role frameworks echo it in tasks)

    @classmethod
    def unreserved(
        cls, id: str, agent_id: str, hostname: str, cpus: float, mem: float, ports: tuple[tuple[int, int], ...] = ()
    ) -> Offer:
        """An offer of unreserved resources only (for tables of tests)."""
        pools = (Pool("cpus", cpus), Pool("mem", mem), Pool("ports", ranges=ports))
        return cls(id, agent_id, hostname, pools)

    def _amount(self, name: str) -> float:
        return sum(p.amount for p in self.pools if p.name == name)

    @property
    def cpus(self) -> float:
        return self._amount("cpus")

    @property
    def mem(self) -> float:
        return self._amount("mem")

    @property
    def ports(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(span for p in self.pools if p.name == "ports" for span in p.ranges))

    @property
    def port_count(self) -> int:
        return sum(end - begin + 1 for begin, end in self.ports)


def offer_from_json(data: Mapping[str, Any]) -> Offer:
    """An Offer message: each cpus, mem and ports resource is a pool of its own source (role, reservation).

    Revocable resources are left out: an instance serving requests must not be preempted by the cluster.
    """
    pools: list[Pool] = []
    for resource in data.get("resources") or ():
        name = resource.get("name")
        if resource.get("revocable") is not None:
            continue
        source = json.dumps({k: v for k, v in resource.items() if k not in _QUANTITY_FIELDS}, sort_keys=True)
        if name in ("cpus", "mem") and resource.get("type", "SCALAR") == "SCALAR":
            pools.append(Pool(name, float(resource.get("scalar", {}).get("value", 0.0)), source=source))
        elif name == "ports" and resource.get("type") == "RANGES":
            spans = resource.get("ranges", {}).get("range") or ()
            ranges = tuple(sorted((int(span["begin"]), int(span["end"])) for span in spans))
            pools.append(Pool(name, ranges=ranges, source=source))
    allocation = data.get("allocation_info")
    return Offer(
        id=str(data["id"]["value"]),
        agent_id=str(data["agent_id"]["value"]),
        hostname=str(data["hostname"]),
        pools=tuple(pools),
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
_MEMORY_REASONS = frozenset({"REASON_CONTAINER_LIMITATION_MEMORY"})


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    phase: TaskPhase
    message: str
    exit_code: int | None = None
    flags: frozenset[str] = frozenset()


def task_outcome(status: TaskStatus) -> TaskOutcome:
    """Translate a TaskStatus: running-ish states are active; everything unknown or lost is a failure."""
    phase = _PHASES.get(status.state, TaskPhase.FAILED)
    # A memory limitation's message goes on with the cgroup's statistics after a blank line: keep the sentence.
    message = (status.message or status.state).split("\n\n", 1)[0]
    exit_code = exit_code_of(status.message)
    flags: frozenset[str] = frozenset()
    # The agent's memory isolator (or the OOM killer it watches) ended the task: Waiter's "not enough memory".
    if status.reason in _MEMORY_REASONS or message.startswith("Memory limit exceeded"):
        flags = frozenset({InstanceFlag.MEMORY_LIMIT_EXCEEDED.value})
    elif phase is TaskPhase.FAILED and exit_code is None and status.reason and status.reason not in message:
        message = f"{message} ({status.reason})"  # without an exit code, the reason is the best clue
    return TaskOutcome(phase, message, exit_code, flags)


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


@dataclass(frozen=True, slots=True)
class Taken:
    """What one instance takes from an offer: its ports, its resources (as the task states them), the rest."""

    ports: tuple[int, ...]
    resources: list[dict[str, Any]]
    rest: Offer


def take(offer: Offer, need: Need) -> Taken:
    """Take one instance's cpus, mem and lowest ports from a fitting offer, reserved pools first.

    Reserved resources are the framework's own: using them first leaves shared ones to others. Each share keeps the
    role and reservation of the pool it came from, so the master finds it in the offer.
    """
    resources: list[dict[str, Any]] = []
    pools = sorted(offer.pools, key=lambda p: not p.reserved)
    left: list[Pool] = []
    wanted = {"cpus": need.cpus, "mem": need.mem}
    chosen: list[int] = []
    for pool in pools:
        if pool.name in wanted:
            share = min(pool.amount, wanted[pool.name])
            if share > _EPSILON:
                wanted[pool.name] -= share
                resources.append(pool.resource(share))
            if pool.amount - share > _EPSILON:
                left.append(dataclasses.replace(pool, amount=pool.amount - share))
        elif pool.name == "ports":
            ports: list[int] = []
            spans: list[tuple[int, int]] = []
            for begin, end in pool.ranges:
                count = min(need.ports - len(chosen) - len(ports), end - begin + 1)
                ports.extend(range(begin, begin + count))
                if begin + count <= end:
                    spans.append((begin + count, end))
            if ports:
                chosen.extend(ports)
                resources.append(pool.resource(ports=ports))
            if spans:
                left.append(dataclasses.replace(pool, ranges=tuple(spans)))
        else:
            left.append(pool)
    order = {"cpus": 0, "mem": 1, "ports": 2}
    resources.sort(key=lambda r: order[r["name"]])
    return Taken(tuple(sorted(chosen)), resources, dataclasses.replace(offer, pools=tuple(left)))


def usable_role(offer: Offer, roles: Sequence[str]) -> bool:
    """Whether the offer is allocated to a role the framework holds (an offer without allocation_info is "*")."""
    return (offer.role or "*") in roles


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


__all__ = [
    "MesosError",
    "Need",
    "Offer",
    "Pool",
    "RecordIOError",
    "RecordIOParser",
    "Taken",
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
    "task_outcome",
    "usable_role",
]
