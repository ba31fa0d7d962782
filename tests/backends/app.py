"""A test backend run as a real instance process: echo, slow, streaming, crashing, websocket endpoints.

Listens on $PORT0. It records its own current and peak number of concurrent requests (GET /stats) so tests can
check the router never exceeds concurrency-level; POST /async?ms=N starts an async job (202, a Location to poll).
Knobs via environment: STARTUP_DELAY_MS (sleep before listening), HEALTH_STATUS (status of /status, default 200),
HEALTH_FAIL_FILE (while this file exists, /status answers 500).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

from aiohttp import web

state = {"current": 0, "peak": 0, "total": 0, "cut_short": 0, "uploads": 0}
CHUNK = b"0123456789abcdef" * 4096  # 64 KiB


@web.middleware
async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path in ("/status", "/stats"):
        return await handler(request)
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
    fail_file = os.environ.get("HEALTH_FAIL_FILE")
    if fail_file and os.path.exists(fail_file):
        return web.Response(status=500, text="unhealthy")
    return web.Response(status=int(os.environ.get("HEALTH_STATUS", "200")), text="ok")


async def stats(request: web.Request) -> web.Response:
    return web.json_response({**state, "pid": os.getpid(), "instance": os.environ.get("WAITER_INSTANCE_ID")})


async def hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello from {os.environ.get('WAITER_INSTANCE_ID')}\n")


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
    state["uploads"] += 1  # bodies received whole
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
    os._exit(1)


async def crash_before(request: web.Request) -> web.Response:
    os._exit(1)


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == web.WSMsgType.TEXT:
            await sock.send_str(f"echo: {msg.data}")
        elif msg.type == web.WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


jobs: dict[str, float] = {}  # async job id -> when it is done (time.monotonic())


async def async_start(request: web.Request) -> web.Response:
    # Waiter's async protocol: 202 with a relative Location to poll; the work goes on after the response.
    job = str(len(jobs) + 1)
    jobs[job] = time.monotonic() + int(request.query.get("ms", "1000")) / 1000
    return web.Response(status=202, text=f"accepted {job}", headers={"location": f"async/status/{job}"})


async def async_status(request: web.Request) -> web.Response:
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
        runner = request.app["runner"]
        for site in list(runner.sites):
            await site.stop()
        await runner.cleanup()

    request.app["closing"] = asyncio.create_task(close())
    return web.Response(text="closed")


async def serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    app["runner"] = runner
    await runner.setup()
    # On the Kubernetes emulator every pod has its own loopback address (POD_IP) and must listen on it.
    await web.TCPSite(runner, os.environ.get("POD_IP") or "127.0.0.1", port).start()
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    # Record how many requests were still running when we were told to stop: a router must never kill a busy
    # instance to scale down.
    sandbox = os.environ.get("WAITER_SANDBOX", ".")
    with open(os.path.join(sandbox, "busy-at-sigterm"), "w") as f:
        f.write(str(state["current"]))
    await runner.cleanup()


def main() -> None:
    delay = int(os.environ.get("STARTUP_DELAY_MS", "0"))
    if delay:
        time.sleep(delay / 1000)
    app = web.Application(middlewares=[count], client_max_size=1 << 40)
    app.router.add_get("/status", status)
    app.router.add_get("/stats", stats)
    app.router.add_get("/headers", headers)
    app.router.add_get("/sleep", sleep)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/stream", stream)
    app.router.add_get("/crash", crash)
    app.router.add_get("/crash-before", crash_before)
    app.router.add_get("/ws", ws)
    app.router.add_get("/close-listener", close_listener)
    app.router.add_post("/async", async_start)
    app.router.add_get("/async/status/{job}", async_status)
    app.router.add_get("/async/result/{job}", async_result)
    app.router.add_route("*", "/{tail:.*}", hello)
    asyncio.run(serve(app, int(os.environ["PORT0"])))


if __name__ == "__main__":
    sys.exit(main())
