"""Sandboxes of ended local instances: which ones go (a pure decision) and the sweep that removes them.

Each instance runs in ``<work-dir>/<service-id>/<instance-id>/`` and leaves its stdout and stderr there. An ended
instance's sandbox is kept ``sandbox-retention-secs`` for debugging, and the newest ``sandboxes-kept`` of a service
that still exists are kept for as long as it does; a deleted service's directory goes once its last sandbox went.
A sandbox's end time is its directory's modification time: removing the pid file at the instance's exit sets it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from waiter.scheduler.leftovers import PID_FILE

SCRIPT = "run-service.sh"


@dataclass(frozen=True)
class EndedSandbox:
    path: Path
    ended_at: float  # seconds since the epoch


def to_remove(
    ended: Sequence[EndedSandbox], now: float, retention_secs: float, kept: int, service_exists: bool
) -> list[Path]:
    """The sandboxes past their retention, sparing the newest ``kept`` of a service that still exists."""
    newest_first = sorted(ended, key=lambda sandbox: sandbox.ended_at, reverse=True)
    candidates = newest_first[kept:] if service_exists else newest_first
    return [sandbox.path for sandbox in candidates if now - sandbox.ended_at >= retention_secs]


def ended_sandboxes(service_dir: Path, running: Collection[str]) -> list[EndedSandbox]:
    """Sandboxes in ``service_dir`` of instances that ended: not running here, no pid file (no owner anywhere).

    Only directories named like an instance of the service count, so nothing else that happens to be there goes.
    """
    found = []
    prefix = f"{service_dir.name}."
    with contextlib.suppress(FileNotFoundError), os.scandir(service_dir) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or entry.name in running or not entry.name.startswith(prefix):
                continue
            path = Path(entry.path)
            with contextlib.suppress(FileNotFoundError):
                if not (path / PID_FILE).exists():
                    found.append(EndedSandbox(path, entry.stat(follow_symlinks=False).st_mtime))
    return found


def sweep(
    work_dir: Path, running: Collection[str], services: Collection[str], now: float, retention_secs: float, kept: int
) -> tuple[int, list[str]]:
    """Remove the sandboxes ``to_remove`` picks (blocking: run it in a thread).

    Returns how many went, and the deleted services left without any sandbox, whose directory the caller removes
    (on its own loop, where it knows no launch of that service is starting meanwhile: see ``remove_service_dir``).
    """
    removed = 0
    empty = []
    service_dirs: list[Path] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(work_dir) as entries:
        service_dirs = [Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)]
    for service_dir in service_dirs:
        if not (service_dir / SCRIPT).exists():
            continue  # not a service's directory: not ours to clean
        exists = service_dir.name in services
        ended = ended_sandboxes(service_dir, running)
        going = to_remove(ended, now, retention_secs, kept, exists)
        for path in going:
            shutil.rmtree(path, ignore_errors=True)
        removed += len(going)
        if not exists and not ended_sandboxes(service_dir, running) and not _has_subdirectories(service_dir):
            empty.append(service_dir.name)
    return removed, empty


def _has_subdirectories(path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
        return any(entry.is_dir(follow_symlinks=False) for entry in entries)
    return False


def remove_service_dir(service_dir: Path) -> None:
    """Remove a deleted service's directory if it holds nothing but its script."""
    with contextlib.suppress(FileNotFoundError):
        (service_dir / SCRIPT).unlink()
    with contextlib.suppress(OSError):
        service_dir.rmdir()
