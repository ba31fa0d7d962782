"""A real browser for tests of pages people look at: Debian's headless Chromium driven by selenium.

Shared by every test that needs one. Selenium's calls block, and the router under test runs on the test's event
loop, so async tests call the driver through ``asyncio.to_thread`` (see ``Browser``).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="chromium and chromium-driver are not installed"
)

# Quiet, private, and self-contained: nothing reaches the network or the user's profile.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


class Browser:
    """A Chromium page; ``await browser.call(fn)`` runs a blocking selenium call off the event loop."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def url(self) -> str:
        return str(await self.call(lambda: self.driver.current_url))

    async def source(self) -> str:
        return str(await self.call(lambda: self.driver.page_source))

    async def wait_until(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> None:
        """Poll ``predicate(driver)`` (off the loop) until true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not await self.call(predicate, self.driver):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; at {await self.url()}")
            await asyncio.sleep(0.1)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless Chromium; host names ending in ``.test`` resolve to 127.0.0.1 (a router's host tokens)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--host-resolver-rules=MAP *.test 127.0.0.1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages, for driver.get_log
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
