"""The interstitial page (docs/api.md §4): the gate's decisions as a table, its redirects over HTTP, and a real
browser (headless Chromium) that sees the starting page and lands on the backend's answer."""

from __future__ import annotations

import getpass

import pytest

from tests.browser import Browser, needs_browser
from tests.conftest import FAKE, backend_token
from waiter.interstitial import BYPASS, Gate, gate, original, with_bypass

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

NOW = 1_000_000.0
OPEN = {"html_wanted": True, "by_token": True, "interstitial_secs": 30, "healthy": False, "started_at": NOW - 5}


@pytest.mark.parametrize(
    ("url", "changes", "expected"),
    [
        (b"/a?x=1", {}, Gate("/waiter-interstitial/a?x=1", b"/a?x=1")),
        (b"/a", {"html_wanted": False}, Gate(None, b"/a")),
        (b"/a", {"by_token": False}, Gate(None, b"/a")),
        (b"/a", {"interstitial_secs": 0}, Gate(None, b"/a")),
        (b"/a", {"healthy": True}, Gate(None, b"/a")),
        (b"/a", {"started_at": NOW - 31}, Gate(None, b"/a")),  # the time is up: the request waits as usual
        # A valid bypass opens the gate and is stripped; an old or malformed one only is stripped.
        (f"/a?x=1&{BYPASS}={int(NOW * 1000) + 5000}".encode(), {}, Gate(None, b"/a?x=1")),
        (f"/a?{BYPASS}={int(NOW * 1000) + 5000}".encode(), {}, Gate(None, b"/a")),
        (f"/a?{BYPASS}={int(NOW * 1000) - 1}".encode(), {}, Gate("/waiter-interstitial/a", b"/a")),
        (f"/a?{BYPASS}=soon&y=2".encode(), {}, Gate("/waiter-interstitial/a?y=2", b"/a?y=2")),
    ],
)
def test_gate(url: bytes, changes: dict[str, object], expected: Gate) -> None:
    assert gate(url, **{**OPEN, **changes}, now=NOW) == expected  # type: ignore[arg-type]


def test_the_way_back() -> None:
    assert original("/waiter-interstitial/a/b?x=1") == "/a/b?x=1"
    assert original("/waiter-interstitial/") == "/"
    assert with_bypass("/a?x=1", NOW) == f"/a?x=1&{BYPASS}={int(NOW * 1000) + 10_000}"
    assert with_bypass("/a", NOW) == f"/a?{BYPASS}={int(NOW * 1000) + 10_000}"


def slow_token(name: str) -> dict[str, object]:
    # A token with interstitial-secs must name its run-as-user: the router's own user here.
    fields = {"interstitial-secs": 60, "run-as-user": getpass.getuser()}
    return backend_token(name, env={"STARTUP_DELAY_MS": "2500"}, **fields)


async def test_browsers_are_redirected_and_other_clients_wait(make_router) -> None:
    r = await make_router([slow_token("echo")])
    headers = {"x-waiter-token": "echo", "accept": "text/html,application/xhtml+xml"}
    async with r.client.get(r.url + "/hello?x=1", headers=headers, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["location"] == "/waiter-interstitial/hello?x=1"
        assert resp.headers["x-waiter-interstitial"] == "true"
        assert resp.headers["x-waiter-service-id"]
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "echo"}) as resp:
        assert resp.status == 200  # not a browser: it waited for the instance
    async with r.client.get(r.url + "/hello", headers=headers, allow_redirects=False) as resp:
        assert resp.status == 200  # healthy now: no more interstitial


@needs_browser
async def test_a_browser_sees_the_starting_page_then_the_backends_answer(make_router, browser: Browser) -> None:
    r = await make_router([slow_token("slow.test")])
    port = r.url.rsplit(":", 1)[1]
    await browser.get(f"http://slow.test:{port}/hello?x=1")
    assert "/waiter-interstitial/hello?x=1" in await browser.url()
    source = await browser.source()
    assert 'id="waiter-interstitial"' in source and "Starting slow.test" in source
    await browser.wait_until(
        lambda d: "hello from" in d.page_source, timeout=60, what="the backend's answer after the service started"
    )
    final = await browser.url()
    assert "/waiter-interstitial" not in final and "/hello?x=1&" + BYPASS in final
