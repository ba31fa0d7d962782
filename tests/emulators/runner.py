"""Both ends of an emulator's life: a test starts one as a child process and stops it (and every task it runs)
afterwards (``running_emulator``); the emulator parses its common arguments, listens, says where, and serves
until it is told to stop (``emulator_arguments``, ``listening_socket``, ``serve_until_stopped``, ``run``).

An emulator started with ``--port 0`` binds a free port and prints one line, ``listening on <base URL>``, on its
stdout once it answers requests; everything else it says goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

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


# -- the emulator's end -----------------------------------------------------------------------------------------------


def emulator_arguments(
    module: str, doc: str, *, port: int, host_help: str, work_dir_help: str
) -> argparse.ArgumentParser:
    """The arguments every emulator takes (``--port``, ``--host``, ``--work-dir``, ``--log-level``); add your own."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--port", type=int, default=port, help="port to listen on; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1", help=host_help)
    parser.add_argument("--work-dir", type=Path, default=None, help=f"{work_dir_help} (default: a new temp dir)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def work_dir(given: Path | None, name: str) -> Path:
    """``--work-dir``, or a new temp dir named after the emulator: never the checkout."""
    return (given or Path(tempfile.mkdtemp(prefix=f"{name}-emulator-"))).resolve()


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound before the app is built, so an emulator that names its own address (a leader's) knows its port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def serve_until_stopped(app: web.Application, sock: socket.socket, **runner_args: Any) -> None:
    """Serve ``app`` on ``sock``, print the ready line, and clean up after SIGTERM or SIGINT."""
    runner = web.AppRunner(app, access_log=None, **runner_args)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        host, port = sock.getsockname()[:2]
        print(f"{READY_PREFIX}http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(OSError):
            sock.close()


def run(name: str, args: argparse.Namespace, serve: Callable[[argparse.Namespace], Coroutine[Any, Any, None]]) -> int:
    """An emulator's ``main``: log to stderr (stdout carries only the ready line), serve until stopped."""
    level = getattr(args, "log_level", "WARNING")
    logging.basicConfig(level=level, stream=sys.stderr, format=f"%(asctime)s {name}-emulator %(message)s")
    asyncio.run(serve(args))
    return 0
