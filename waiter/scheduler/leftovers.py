"""Instances that outlive their router: pid files, the watchdog that stops them, the sweep at start-up.

Every local instance leaves a pid file in its sandbox (``waiter-instance.json``): its process group id, the
start time of its leader process, and the same two facts about the router that owns it. A process id is
recycled by the kernel, a (pid, start time) pair is not, so nothing here ever signals a process whose start
time does not match the record: a stranger that inherited the pid is never touched.

Two ways an instance could outlive its router, two answers:

- the router dies without cleaning up (kill -9, OOM killer): the watchdog, a small process started by the
  router in its own session, blocks reading a pipe whose only writer is the router. The kernel closes that pipe
  when the router dies however it dies; the watchdog then stops every instance the router recorded and exits.
  A clean shutdown stops the instances first and closes the pipe, so the watchdog finds nothing left to do.
- the watchdog is gone too (killed with the router, or the machine's processes were killed at random): the
  next router started on the same work dir finds the pid files whose owner is no longer alive and stops those
  instances before it launches anything.

Run as ``python leftovers.py WORK_DIR OWNER_PID OWNER_START`` it is the watchdog (it imports nothing of waiter).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

PID_FILE = "waiter-instance.json"
# Start times come from the kernel in clock ticks (10 ms); two readings of one process agree far closer than this.
_SAME_START_SECS = 0.05


@dataclass(frozen=True)
class InstanceRecord:
    """What a pid file holds: the instance's process group and the router that owns it."""

    instance_id: str
    pgid: int  # the instance's leader pid, also its process group id (it runs in a new session)
    started: float  # the leader's start time (seconds since the epoch, as psutil reports it)
    owner_pid: int
    owner_started: float
    grace_secs: float  # SIGTERM to SIGKILL


def start_time(pid: int) -> float | None:
    """The start time of process ``pid``, or None when no such process lives."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_alive(pid: int, started: float) -> bool:
    """True iff process ``pid`` runs (a zombie does not) and started at ``started`` (it is not a recycled pid)."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < _SAME_START_SECS and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def write_record(sandbox: Path, record: InstanceRecord) -> None:
    """Write the pid file atomically, so a reader never sees half of it."""
    temporary = sandbox / f".{PID_FILE}.tmp"
    temporary.write_text(json.dumps(asdict(record)))
    temporary.replace(sandbox / PID_FILE)


def remove_record(sandbox: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (sandbox / PID_FILE).unlink()


def read_records(work_dir: Path) -> list[tuple[Path, InstanceRecord]]:
    """Every pid file under ``<work_dir>/<service>/<instance>/``; unreadable ones are skipped with a warning."""
    found = []
    for path in sorted(work_dir.glob(f"*/*/{PID_FILE}")):
        try:
            found.append((path.parent, InstanceRecord(**json.loads(path.read_text()))))
        except (OSError, ValueError, TypeError) as error:
            log.warning("Ignoring the unreadable pid file %s: %s", path, error)
    return found


def members(record: InstanceRecord) -> list[psutil.Process]:
    """The live processes of the instance's process group that provably belong to it.

    The leader must have the recorded start time. Once the leader is gone, the group's pid cannot be reused while
    the group has members, and members started before the leader cannot be ours: so a member counts when it is in
    the group and started no earlier than the recorded leader.
    """
    leader = start_time(record.pgid)
    if leader is not None and abs(leader - record.started) >= _SAME_START_SECS:
        return []  # the pid was recycled: whatever runs there is not ours
    found = []
    for process in psutil.process_iter(["create_time", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            late_enough = process.info["create_time"] >= record.started - _SAME_START_SECS
            if late_enough and os.getpgid(process.pid) == record.pgid:
                found.append(process)
    return found


def stop_instances(records: list[tuple[Path, InstanceRecord]], *, poll_secs: float = 0.05) -> int:
    """SIGTERM the instances, SIGKILL what outlives its grace, remove their pid files; returns how many ran."""
    pending = {sandbox: (record, members(record)) for sandbox, record in records}
    running = 0
    for _record, processes in pending.values():
        running += bool(processes)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    while pending:
        for sandbox, (record, processes) in list(pending.items()):
            alive = [p for p in processes if _running(p)]
            if alive and time.monotonic() - start >= record.grace_secs:
                for process in alive:
                    with contextlib.suppress(psutil.Error):
                        process.send_signal(signal.SIGKILL)
            if not alive:
                remove_record(sandbox)
                del pending[sandbox]
            else:
                pending[sandbox] = (record, alive)
        if pending:
            time.sleep(poll_secs)
    return running


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def orphaned(records: list[tuple[Path, InstanceRecord]]) -> list[tuple[Path, InstanceRecord]]:
    """The records whose owning router no longer runs."""
    return [(sandbox, r) for sandbox, r in records if not is_alive(r.owner_pid, r.owner_started)]


def owned_by(records: list[tuple[Path, InstanceRecord]], pid: int, started: float) -> list[tuple[Path, InstanceRecord]]:
    """The records of the router ``pid`` that started at ``started``."""
    return [
        (sandbox, r)
        for sandbox, r in records
        if r.owner_pid == pid and abs(r.owner_started - started) < _SAME_START_SECS
    ]


def start_watchdog(work_dir: Path) -> subprocess.Popen[bytes]:
    """Start the watchdog of this process's instances; keep the returned process's stdin open while running.

    Its own session keeps it out of the router's process group and terminal, so whatever kills those does not
    kill the watchdog with them.
    """
    me = os.getpid()
    started = start_time(me)
    assert started is not None, "this process is alive"
    return subprocess.Popen(
        # Run as a file, not with -m: importing the waiter package would cost a second of CPU per router; this
        # module needs only the standard library and psutil. -P keeps this directory off sys.path.
        [sys.executable, "-P", __file__, str(work_dir), str(me), repr(started)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_watchdog(watchdog: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Close the watchdog's pipe (the router's instances are stopped already) and reap it."""
    if watchdog.stdin is not None:
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
    try:
        watchdog.wait(timeout)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


def watch(work_dir: Path, owner_pid: int, owner_started: float) -> int:
    """The watchdog's body: wait for the owner to go, then stop whatever it left running."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)  # a terminal's Ctrl-C or hang-up is for the router, not for us
    while sys.stdin.buffer.read(4096):
        pass  # the owner never writes: EOF is the message
    # After a clean shutdown nothing is left: the owner stopped its instances before closing the pipe.
    stopped = stop_instances(owned_by(read_records(work_dir), owner_pid, owner_started))
    if stopped:
        print(f"waiter watchdog: router {owner_pid} died; stopped {stopped} of its instances", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(watch(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
