"""Process helpers of the local scheduler: a sandbox's files, group signals, exits without threads, tree memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

import psutil


async def wait_exit(process: subprocess.Popen[bytes]) -> int:
    """Wait for a child's exit without a thread or a child watcher: its pidfd turns readable when it exits."""
    try:
        fd = os.pidfd_open(process.pid)
    except (OSError, AttributeError):  # no pidfd (old kernel): a thread waits instead
        return await asyncio.to_thread(process.wait)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return process.wait()


def open_sandbox(sandbox: Path) -> tuple[BinaryIO, BinaryIO]:
    """Create an instance's directory and its stdout and stderr files (opened for the child to inherit)."""
    sandbox.mkdir(parents=True)
    stdout = open(sandbox / "stdout", "wb")  # noqa: SIM115 - handed to the child, closed by the caller
    try:
        return stdout, open(sandbox / "stderr", "wb")
    except BaseException:
        stdout.close()
        raise


def signal_group(pgid: int, signum: int) -> None:
    """Signal a whole process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def trees_rss_bytes(leaders: Collection[int]) -> dict[int, int]:
    """RSS of each leader process with its descendants, from one reading of the process table (finding one tree's
    descendants reads every process's parent, so one reading per tree would cost as many); processes that vanish
    meanwhile are skipped, and a leader that is gone has no entry."""
    children: dict[int, list[int]] = {}
    table: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["ppid"]):
        table[process.pid] = process
        ppid = process.info["ppid"]
        if ppid is not None:
            children.setdefault(ppid, []).append(process.pid)
    sizes: dict[int, int] = {}
    for leader in leaders:
        if leader not in table:
            continue
        total, seen, stack = 0, set(), [leader]
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            with contextlib.suppress(psutil.Error):
                total += table[pid].memory_info().rss
            stack.extend(children.get(pid, ()))
        sizes[leader] = total
    return sizes
