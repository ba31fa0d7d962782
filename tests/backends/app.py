"""A test backend: echo, slow, streaming, crashing, dropping, websocket endpoints.

Run as a real instance process (``python tests/backends/app.py``, listening on $PORT0), or served in the test's own
process by ``tests.fakes.FakeScheduler`` (``build_app`` with the instance's environment and an ``exit`` that ends
the fake instance), so both kinds of instance answer alike. It records its own current and peak number of
concurrent requests (GET /stats) so tests can check the router never exceeds concurrency-level; POST /async?ms=N
starts an async job (202, a Location to poll). Knobs via environment: STARTUP_DELAY_MS (sleep before listening),
HEALTH_STATUS (status of /status, default 200), HEALTH_FAIL_FILE (while this file exists, /status answers 500).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Callable, Mapping

from aiohttp import web

CHUNK = b"0123456789abcdef" * 4096  # 64 KiB
STATE = web.AppKey("state", dict[str, int])
JOBS = web.AppKey("jobs", dict[str, float])  # async job id -> when it is done (time.monotonic())
ENV = web.AppKey("env", Mapping[str, str])
EXIT = web.AppKey("exit", Callable[[int], None])  # how the instance dies at once (a crash), with its exit code
RUNNER = web.AppKey("runner", web.AppRunner)
HANDLING = web.AppKey("handling", set[asyncio.Task[object]])  # the requests in progress (an in-process crash ends them)
CLOSING = web.AppKey("closing", asyncio.Task[None])


@web.middleware
async def track(request: web.Request, handler):  # type: ignore[no-untyped-def]
    task = asyncio.current_task()
    assert task is not None
    request.app[HANDLING].add(task)
    try:
        return await handler(request)
    finally:
        request.app[HANDLING].discard(task)


@web.middleware
async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path in ("/status", "/stats"):
        return await handler(request)
    state = request.app[STATE]
    state["current"] += 1
    state["total"] += 1
    state["peak"] = max(state["peak"], state["current"])
    try:
        return await handler(request)
    except asyncio.CancelledError:
        state["cut_short"] += 1
        raise
    finally:
        state["current"] -= 1


async def status(request: web.Request) -> web.Response:
    env = request.app[ENV]
    fail_file = env.get("HEALTH_FAIL_FILE")
    if fail_file and os.path.exists(fail_file):
        return web.Response(status=500, text="unhealthy")
    return web.Response(status=int(env.get("HEALTH_STATUS", "200")), text="ok")


async def stats(request: web.Request) -> web.Response:
    instance = request.app[ENV].get("WAITER_INSTANCE_ID")
    return web.json_response({**request.app[STATE], "pid": os.getpid(), "instance": instance})


async def hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello from {request.app[ENV].get('WAITER_INSTANCE_ID')}\n")


async def headers(request: web.Request) -> web.Response:
    return web.json_response({k.lower(): v for k, v in request.headers.items()})


async def sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.query.get("ms", "100")) / 1000)
    return web.Response(text=f"slept {request.query.get('id', '')}")


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    request.app[STATE]["uploads"] += 1  # bodies received whole
    return web.json_response({"bytes": size, "sha256": digest.hexdigest()})


async def download(request: web.Request) -> web.StreamResponse:
    total = int(request.query.get("bytes", "1048576"))
    resp = web.StreamResponse()
    if request.query.get("chunked") != "true":
        resp.content_length = total
    await resp.prepare(request)
    sent = 0
    while sent < total:
        piece = CHUNK[: min(len(CHUNK), total - sent)]
        await resp.write(piece)
        sent += len(piece)
    await resp.write_eof()
    return resp


async def stream(request: web.Request) -> web.StreamResponse:
    chunks = int(request.query.get("chunks", "3"))
    delay = int(request.query.get("delay_ms", "100")) / 1000
    resp = web.StreamResponse()
    await resp.prepare(request)
    for i in range(chunks):
        await resp.write(f"chunk {i} at {time.time():.3f}\n".encode())
        await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def crash(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.content_length = 10 * len(CHUNK)
    await resp.prepare(request)
    await resp.write(CHUNK)
    await asyncio.sleep(0.05)
    request.app[EXIT](1)
    return resp


async def crash_before(request: web.Request) -> web.Response:
    request.app[EXIT](1)
    return web.Response(status=500)  # never sent: the instance is gone


async def drop(request: web.Request) -> web.Response:
    """Reads the request, then closes its connection unanswered; the instance lives on (and counted it)."""
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=500)  # never sent: the connection is closed


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == web.WSMsgType.TEXT:
            await sock.send_str(f"echo: {msg.data}")
        elif msg.type == web.WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


async def async_start(request: web.Request) -> web.Response:
    # Waiter's async protocol: 202 with a relative Location to poll; the work goes on after the response.
    jobs = request.app[JOBS]
    job = str(len(jobs) + 1)
    jobs[job] = time.monotonic() + int(request.query.get("ms", "1000")) / 1000
    return web.Response(status=202, text=f"accepted {job}", headers={"location": f"async/status/{job}"})


async def async_status(request: web.Request) -> web.Response:
    jobs = request.app[JOBS]
    job = request.match_info["job"]
    if job not in jobs:
        return web.Response(status=404, text="no such job")
    if time.monotonic() < jobs[job]:
        return web.Response(status=200, text="running")
    return web.Response(status=303, text="done", headers={"location": f"/async/result/{job}"})


async def async_result(request: web.Request) -> web.Response:
    return web.Response(text=f"result {request.match_info['job']}")


async def close_listener(request: web.Request) -> web.Response:
    # Stop accepting and drop every open connection but keep running: the router must find connections refused.
    async def close() -> None:
        await asyncio.sleep(0.05)
        runner = request.app[RUNNER]
        for site in list(runner.sites):
            await site.stop()
        await runner.cleanup()

    request.app[CLOSING] = asyncio.create_task(close())
    return web.Response(text="closed")


def build_app(env: Mapping[str, str], exit: Callable[[int], None] = os._exit) -> web.Application:
    """The backend with the instance's environment; ``exit(code)`` must end the instance at once (a crash)."""
    app = web.Application(middlewares=[track, count], client_max_size=1 << 40)
    app[HANDLING] = set()
    app[STATE] = {"current": 0, "peak": 0, "total": 0, "cut_short": 0, "uploads": 0}
    app[JOBS] = {}
    app[ENV] = env
    app[EXIT] = exit
    app.router.add_get("/status", status)
    app.router.add_get("/stats", stats)
    app.router.add_get("/headers", headers)
    app.router.add_get("/sleep", sleep)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/stream", stream)
    app.router.add_get("/crash", crash)
    app.router.add_get("/drop", drop)
    app.router.add_get("/crash-before", crash_before)
    app.router.add_get("/ws", ws)
    app.router.add_get("/close-listener", close_listener)
    app.router.add_post("/async", async_start)
    app.router.add_get("/async/status/{job}", async_status)
    app.router.add_get("/async/result/{job}", async_result)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


def startup_delay(env: Mapping[str, str]) -> float:
    return int(env.get("STARTUP_DELAY_MS", "0")) / 1000


async def start(app: web.Application, site: Callable[[web.AppRunner], web.BaseSite]) -> None:
    """Start serving ``app`` on the site made for its runner (kept on the app: /close-listener stops it)."""
    runner = web.AppRunner(app, access_log=None)
    app[RUNNER] = runner
    await runner.setup()
    await site(runner).start()


async def terminate(app: web.Application) -> None:
    """What the backend does when told to stop (SIGTERM): note how many requests were still running (a router
    must never kill a busy instance to scale down), then finish them and stop."""
    sandbox = app[ENV].get("WAITER_SANDBOX", ".")
    with open(os.path.join(sandbox, "busy-at-sigterm"), "w") as f:
        f.write(str(app[STATE]["current"]))
    await app[RUNNER].cleanup()


async def serve(app: web.Application, port: int) -> None:
    # On the Kubernetes emulator every pod has its own loopback address (POD_IP) and must listen on it.
    await start(app, lambda runner: web.TCPSite(runner, os.environ.get("POD_IP") or "127.0.0.1", port))
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await terminate(app)


def main() -> None:
    time.sleep(startup_delay(os.environ))
    asyncio.run(serve(build_app(os.environ), int(os.environ["PORT0"])))


if __name__ == "__main__":
    sys.exit(main())
