"""Starting an emulator as a child process for a test, and stopping it (and every task it runs) afterwards.

An emulator started with ``--port 0`` binds a free port and prints one line, ``listening on <base URL>``, on its
stdout once it answers requests; everything else it says goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
READY_PREFIX = "listening on "


@contextlib.asynccontextmanager
async def running_emulator(name: str, *args: str, ready_timeout: float = 20.0) -> AsyncIterator[str]:
    """Run ``python -m tests.emulators.<name> --port 0 *args``; yields its base URL, e.g. http://127.0.0.1:PORT."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"tests.emulators.{name}",
        "--port",
        "0",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(ready_timeout):
            line = (await process.stdout.readline()).decode().strip()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"the {name} emulator did not start: it printed {line!r} (its stderr is above)")
        yield line.removeprefix(READY_PREFIX)
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM lets the emulator kill its tasks' process groups; SIGKILL if it does not finish in time."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
    if process.stdout is not None:
        await process.stdout.read()
