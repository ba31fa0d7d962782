"""The interstitial page (docs/api.md §4 "Interstitial"): a browser asking a token's service for a page while no
instance is healthy yet is shown a page that says the service is starting, instead of a request that hangs.

The gate (pure, ``gate``): a request from a browser (``Accept`` has ``text/html``) to a token with
``interstitial-secs > 0`` whose service has no healthy instance, within ``interstitial-secs`` of the service's start,
is answered 303 to ``/waiter-interstitial<path>``. That page (``page``) reloads itself every second and, once an
instance is healthy (or the time is up), sends the browser back to the original URL with
``x-waiter-bypass-interstitial=<epoch ms + 10 s>`` as the last query parameter, which opens the gate for that
request and is stripped before it is proxied.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

PREFIX = "/waiter-interstitial"
BYPASS = "x-waiter-bypass-interstitial"
BYPASS_WINDOW_MS = 10_000  # how long the page's redirect opens the gate
BYPASS_BYTES = BYPASS.encode() + b"="


@dataclass(frozen=True, slots=True)
class Gate:
    redirect: str | None  # where to send the browser (303), or None to serve the request
    url: bytes  # the request target to forward, without the bypass parameter


def gate(
    url: bytes,
    *,
    html_wanted: bool,
    by_token: bool,
    interstitial_secs: int,
    healthy: bool,
    started_at: float,
    now: float,
) -> Gate:
    """Decide for one proxied request; ``url`` is its origin-form target."""
    bypass_until, url = _take_bypass(url)
    closed = (
        html_wanted
        and by_token
        and interstitial_secs > 0
        and not healthy
        and now < started_at + interstitial_secs
        and bypass_until <= now * 1000
    )
    return Gate(PREFIX + url.decode("utf-8", "surrogateescape") if closed else None, url)


def _take_bypass(url: bytes) -> tuple[float, bytes]:
    """The bypass parameter's deadline (0 if absent or not a number) and the URL without it."""
    path, _, query = url.partition(b"?")
    if BYPASS_BYTES not in query:
        return 0.0, url
    kept, until = [], 0.0
    for part in query.split(b"&"):
        if part.startswith(BYPASS_BYTES):
            try:
                until = float(part[len(BYPASS_BYTES) :])
            except ValueError:
                until = 0.0
        else:
            kept.append(part)
    return until, path + (b"?" + b"&".join(kept) if kept else b"")


def original(raw_path: str) -> str:
    """The URL the browser first asked for, from the interstitial page's own (raw) path and query."""
    target = raw_path[len(PREFIX) :]
    return target if target.startswith("/") else "/" + target


def with_bypass(url: str, now: float) -> str:
    """``url`` with the bypass parameter last (the page's way back through the gate)."""
    until = int(now * 1000) + BYPASS_WINDOW_MS
    return f"{url}{'&' if '?' in url else '?'}{BYPASS}={until}"


def page(service_name: str, service_id: str, status: str, waited_secs: float, limit_secs: int) -> str:
    """The page shown while the service starts: it reloads itself every second."""
    name, sid = html.escape(service_name), html.escape(service_id)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="1">'
        f"<title>Starting {name}</title></head><body>"
        f'<h1 id="waiter-interstitial">Starting {name}</h1>'
        f'<p>The service <code>{sid}</code> is <span id="status">{html.escape(status)}</span>. '
        f"This page reloads every second and takes you to it as soon as it is ready "
        f"(waited {waited_secs:.0f} of at most {limit_secs} seconds).</p>"
        "</body></html>"
    )
