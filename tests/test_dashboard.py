"""/dashboard: the page, its server-sent events, and a real browser watching a service take load."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.browser import Browser, needs_browser
from tests.conftest import FAKE, RunningRouter, backend_token

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

TOKEN = {"x-waiter-token": "echo"}


async def first_event(r: RunningRouter, query: str = "", headers: dict[str, str] | None = None) -> dict:
    async with r.client.get(r.url + "/dashboard/events" + query, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        line = await resp.content.readline()
    assert line.startswith(b"data: ")
    return json.loads(line[len(b"data: "):])


async def test_events_describe_services_and_the_selected_one(make_router) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    sid = await r.service_id(TOKEN)
    event = await first_event(r, f"?service={sid}")
    (service,) = event["services"]
    assert (service["id"], service["tokens"], service["status"]) == (sid, ["echo"], "Running")
    assert service["instances"]["healthy"] == 1 and service["requests"] == 1
    detail = event["service"]
    assert detail["id"] == sid and len(detail["instances"]) == 1 and detail["deployment-error"] is None
    async with r.client.get(r.url + "/dashboard") as resp:
        assert resp.status == 200 and "<canvas" in await resp.text()
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        async with r.client.get(r.url + f"/dashboard/{name}") as resp:
            assert resp.status == 200 and resp.headers["content-type"].startswith(kind)
    async with r.client.get(r.url + "/dashboard/secrets.txt") as resp:
        assert resp.status == 404
        assert "secrets.txt" in await resp.text()


async def test_a_stopping_router_ends_the_event_stream(make_router) -> None:
    r = await make_router([])
    async with r.client.get(r.url + "/dashboard/events") as resp:
        assert (await resp.content.readline()).startswith(b"data: ")
        stopping = asyncio.create_task(r.server.stop())
        async with asyncio.timeout(10):
            rest = await resp.content.read()  # ends with the stream, not when the drain runs out and cuts it
        assert all(line.startswith(b"data: ") for line in rest.split(b"\n\n") if line.strip())
        await stopping


async def test_the_dashboard_and_its_events_refuse_an_unauthenticated_caller(make_router) -> None:
    auth = {"kind": ["trusted-header"], "trusted-header": {"header": "x-user", "trusted-cidrs": ["127.0.0.0/8"]}}
    r = await make_router([backend_token("echo")], authenticator=auth)
    for path in ("/dashboard", "/dashboard/events", "/dashboard/app.js"):
        async with r.client.get(r.url + path) as resp:
            assert resp.status == 401, path
            assert not resp.headers["content-type"].startswith("text/event-stream"), path
            body = await resp.text()
            assert "Authentication required" in body and "<canvas" not in body and "data: " not in body, body
    # The same router lets the authenticated caller in: the page and the stream of events.
    async with r.client.get(r.url + "/dashboard", headers={"x-user": "erin"}) as resp:
        assert resp.status == 200 and "<canvas" in await resp.text()
    assert (await first_event(r, headers={"x-user": "erin"}))["services"] == []


@needs_browser
async def test_a_browser_watches_a_service_take_load(make_router, browser: Browser, tmp_path) -> None:
    r = await make_router([backend_token("echo", **{"concurrency-level": 1, "max-instances": 3})])
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    sid = await r.service_id(TOKEN)
    driver = browser.driver
    await browser.call(driver.set_window_size, 1280, 1000)
    await browser.get(r.url + "/dashboard")
    row = f'#services tr[data-service-id="{sid}"]'
    await browser.wait_until(lambda d: d.execute_script(f"return !!document.querySelector('{row}')"), 30,
                             "the service in the table")

    def peak(d) -> float:  # the highest outstanding count the chart has drawn for the service
        return d.execute_script(
            f"const s = window.waiterDashboard.series['{sid}'] || []; return Math.max(0, ...s.map(p => p.outstanding));"
        )

    assert await browser.call(peak, driver) == 0
    before = await browser.call(driver.execute_script, "return document.getElementById('chart').toDataURL();")
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(r.url + "/sleep?ms=400", headers=TOKEN) as resp:
                    await resp.read()

    load = [asyncio.create_task(client()) for _ in range(4)]
    try:
        await browser.wait_until(lambda d: peak(d) >= 2, 30, "the chart to show the load")
    finally:
        stop.set()
        await asyncio.gather(*load)
    after = await browser.call(driver.execute_script, "return document.getElementById('chart').toDataURL();")
    assert after != before
    shot = tmp_path / "dashboard.png"
    assert await browser.call(driver.save_screenshot, str(shot)) and shot.stat().st_size > 0
    # The service page: its instances and the decisions that scaled it.
    await browser.call(driver.find_element("css selector", f"{row} a").click)
    await browser.wait_until(lambda d: d.execute_script(
        "return document.querySelectorAll('#instances tbody tr').length > 0"
        " && document.querySelectorAll('#decisions tbody tr').length > 0"), 30, "the service page")
    assert sid in await browser.url()
    await browser.call(driver.save_screenshot, str(tmp_path / "service.png"))
    errors = [e for e in await browser.call(driver.get_log, "browser") if e["level"] == "SEVERE"]
    assert errors == []
