"""Process helpers of the local scheduler: a sandbox's files, group signals, exits without threads, tree memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
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


def tree_rss_bytes(pid: int) -> int | None:
    """RSS of a process and its descendants, skipping any that vanish meanwhile; None if the leader is gone."""
    try:
        leader = psutil.Process(pid)
        processes = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total
