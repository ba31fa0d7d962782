"""One health probe of one instance: GET health-check-url, healthy iff 2xx within the timeout."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True, slots=True)
class ProbeResult:
    healthy: bool
    status: int | None = None
    error: str | None = None  # "connect", "timeout" or "hangup" when no HTTP answer came
    connected: bool = False
    responded: bool = False

    def describe(self) -> str:
        if self.status is not None:
            return f"health check answered {self.status}"
        return {
            "connect": "health check could not connect",
            "timeout": "health check timed out",
        }.get(self.error or "", "health check connection broke")


async def probe(
    session: aiohttp.ClientSession,
    host: str,
    port: int,
    path: str,
    timeout: float,
    *,
    scheme: str = "http",
    instance_id: str = "",
) -> ProbeResult:
    url = f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"
    headers = {"x-waiter-request-type": "health-check", "x-cid": f"waiter-health-check-{instance_id}"}
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                return ProbeResult(200 <= resp.status < 300, resp.status, None, True, True)
    except TimeoutError:
        return ProbeResult(False, error="timeout", connected=True)
    except aiohttp.ClientConnectorError:
        return ProbeResult(False, error="connect")
    except (aiohttp.ClientError, OSError):
        return ProbeResult(False, error="hangup", connected=True)
