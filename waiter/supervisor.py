"""``waiter-router --workers N``: N router processes on one port, sharing one scheduler and one Redis.

The supervising process owns the scheduler (and so every instance) and serves it to the workers through the
scheduler agent (``waiter.scheduler.agent``); each worker is an ordinary router that binds the same port with
SO_REUSEPORT, so the kernel spreads connections over them and the router uses every core. Workers share tokens,
counts, slot leases and the scaling lease through Redis. A worker that dies is restarted; SIGTERM drains every
worker, then stops the instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys

from waiter.scheduler import create_scheduler
from waiter.scheduler.agent import serve_agent, stop_agent
from waiter.settings import REFUSED, Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A worker must not outlive its supervisor (it would keep serving with nobody owning the instances).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, settings: Settings, worker_argv: list[str]) -> None:
        self.settings = settings
        self.worker_argv = worker_argv
        self.workers: dict[int, asyncio.subprocess.Process] = {}
        self._stop = asyncio.Event()
        self.exit_code = 0

    async def _spawn(self, index: int, agent_url: str) -> None:
        args = [
            *self.worker_argv,
            "--router-id",
            f"{self.settings.router_id}-w{index}",
            "--worker-of",
            agent_url,
        ]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "waiter", *args, preexec_fn=_die_with_parent)
        self.workers[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        scheduler = create_scheduler(self.settings)
        await scheduler.start()
        runner, agent_url = await serve_agent(scheduler)
        log.info("scheduler agent for %d workers on %s", self.settings.workers, agent_url)
        try:
            for index in range(self.settings.workers):
                await self._spawn(index, agent_url)
            await self._watch(agent_url)
        finally:
            await self._stop_workers()
            await stop_agent(runner, agent_url)
            await scheduler.close()
        return self.exit_code

    async def _watch(self, agent_url: str) -> None:
        while not self._stop.is_set():
            waits = {asyncio.ensure_future(p.wait()): i for i, p in self.workers.items()}
            stop = asyncio.ensure_future(self._stop.wait())
            done, pending = await asyncio.wait([stop, *waits], return_when=asyncio.FIRST_COMPLETED)
            for fut in pending:
                fut.cancel()
            for fut in done:
                if fut in waits and not self._stop.is_set():
                    index = waits[fut]
                    if fut.result() == REFUSED:  # restarting it would be refused again: the reason is in its log
                        log.error("worker %d refused to start; stopping", index)
                        self.exit_code = REFUSED
                        self._stop.set()
                        break
                    log.error("worker %d exited with %s; restarting it", index, fut.result())
                    await asyncio.sleep(1.0)
                    await self._spawn(index, agent_url)

    async def _stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        deadline = self.settings.drain_timeout_secs + 10
        for proc in self.workers.values():
            try:
                async with asyncio.timeout(deadline):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
