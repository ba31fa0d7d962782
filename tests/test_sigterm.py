"""SIGTERM under steady load: every request that got a connection gets an answer (none is reset), and the router
(or the ``--workers`` supervisor and its workers) exits. Clients open a new connection for each request, so some are
always between connect and send, or in the kernel's accept queue, when the router stops listening (waiter.listener).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import backend_token
from tests.support import eventually
from tests.test_router_process import TOKEN, RouterProcess

CLIENTS = 8


async def _client(url: str, index: int, outcomes: Counter[str], stop: asyncio.Event) -> None:
    # POSTs on a fresh connection each: no client resends a POST by itself, so a reset shows as lost.
    connector = aiohttp.TCPConnector(force_close=True, limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        while not stop.is_set():
            # Every fourth client keeps a request in flight for a while: the drain must finish those too.
            path = "/sleep?ms=200" if index % 4 == 0 else "/hello"
            try:
                if path == "/hello":
                    request = session.post(url + path, data=b"x" * 64, headers=TOKEN)
                else:
                    request = session.get(url + path, headers=TOKEN)
                async with request as resp:
                    await resp.read()
                    outcomes["ok" if resp.status == 200 else f"status {resp.status}"] += 1
            except aiohttp.ClientConnectorError:
                outcomes["refused"] += 1  # nobody listening any more: the request never got in
                await asyncio.sleep(0.01)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                outcomes[f"lost: {type(error).__name__}"] += 1


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_load_answers_every_connection(tmp_path: Path, redis_server: Any, workers: int) -> None:
    extra = ("--workers", "2") if workers > 1 else ()
    r = RouterProcess(tmp_path, [backend_token("echo", mem=512)], None, *extra, redis=redis_server.url)
    try:
        async with aiohttp.ClientSession() as client:
            await r.ready(client)
            async with client.get(r.url + "/hello", headers=TOKEN) as resp:
                assert resp.status == 200
        outcomes: Counter[str] = Counter()
        stop = asyncio.Event()
        clients = [asyncio.create_task(_client(r.url, i, outcomes, stop)) for i in range(CLIENTS)]
        await eventually(lambda: outcomes["ok"] >= 20 * CLIENTS, what="the load to be served")
        served_before = outcomes["ok"]
        r.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(r.proc.wait, 30)
        stop.set()
        await asyncio.gather(*clients)
    finally:
        r.stop()
    lost = {kind: n for kind, n in outcomes.items() if kind.startswith("lost")}
    assert lost == {}, (outcomes, r.output()[-3000:])
    assert set(outcomes) <= {"ok", "refused"}, outcomes
    assert outcomes["ok"] > served_before  # requests in flight at the signal were answered
    assert code == 0, r.output()[-3000:]
