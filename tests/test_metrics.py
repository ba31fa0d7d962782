"""/metrics: per-service series from a real router and backend, gone with the service; the access log."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAKE, RunningRouter, backend_token
from waiter.api.metrics import FAMILIES, merge_workers

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

TOKEN = {"x-waiter-token": "echo"}


async def scrape(r: RunningRouter) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name of each sample -> its labels (sorted) -> value."""
    async with r.client.get(r.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name in FAMILIES, f"{family.name} is exported but not listed in FAMILIES"
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def of(samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


async def test_service_series_follow_requests_and_vanish_with_the_service(make_router) -> None:
    # /status answers 404 (HEALTH_STATUS) and health checks go to /hello instead.
    r = await make_router([backend_token("echo", env={"HEALTH_STATUS": "404"}, **{"health-check-url": "/hello"})])
    for path in ("/hello", "/status", "/hello"):
        async with r.client.get(r.url + path, headers=TOKEN) as resp:
            await resp.read()
    sid = await r.service_id(TOKEN)
    m = await scrape(r)
    assert of(m, "waiter_requests_total", service_id=sid) == 3
    assert of(m, "waiter_responses_total", service_id=sid, code="2xx") == 2
    assert of(m, "waiter_responses_total", service_id=sid, code="4xx") == 1
    assert of(m, "waiter_instances", service_id=sid, state="healthy") == 1
    assert of(m, "waiter_backend_response_seconds_count", service_id=sid) == 3
    assert of(m, "waiter_queue_wait_seconds_count", service_id=sid) == 3
    # The first request waited for the first instance: one cold start, as long as its queue wait.
    assert of(m, "waiter_cold_start_seconds_count", service_id=sid) == 1
    assert of(m, "waiter_cold_start_seconds_sum", service_id=sid) > 0
    assert of(m, "waiter_queue_wait_seconds_sum", service_id=sid) >= of(m, "waiter_cold_start_seconds_sum",
                                                                          service_id=sid)
    assert of(m, "waiter_outstanding_requests", service_id=sid) == 0
    assert of(m, "waiter_connections_total") >= 1
    assert of(m, "waiter_sent_bytes_total") > 0 and of(m, "waiter_received_bytes_total") > 0
    assert of(m, "waiter_scaling_leader") == 1
    assert sum(v for k, v in m["waiter_scaling_decision"].items() if ("service_id", sid) in k) == 1
    async with r.client.delete(r.url + f"/apps/{sid}") as resp:
        assert resp.status == 200, await resp.text()
    m = await scrape(r)
    assert not any(("service_id", sid) in labels for series in m.values() for labels in series)


def test_workers_merge_with_a_worker_label() -> None:
    one = '# HELP waiter_connections_total Client connections accepted.\n# TYPE waiter_connections_total counter\n'
    texts = {"r-w0": one + "waiter_connections_total 3.0\n", "r-w1": one + "waiter_connections_total 4.0\n"}
    merged = merge_workers(texts).decode()
    assert merged.count("# TYPE waiter_connections_total counter") == 1
    assert 'waiter_connections_total{worker="r-w0"} 3.0' in merged
    assert 'waiter_connections_total{worker="r-w1"} 4.0' in merged


async def test_access_log_is_one_json_line_per_request(make_router, capsys) -> None:
    r = await make_router([backend_token("echo")], **{"access-log": "json"})
    async with r.client.get(r.url + "/hello?secret=1", headers={**TOKEN, "x-cid": "cid-1"}) as resp:
        body = await resp.read()
    async with r.client.get(r.url + "/status") as resp:
        await resp.read()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    proxied, api = lines
    sid = await r.service_id(TOKEN)
    assert proxied["cid"] == "cid-1" and proxied["path"] == "/hello" and proxied["method"] == "GET"
    assert (proxied["token"], proxied["service-id"], proxied["status"]) == ("echo", sid, 200)
    assert proxied["instance-id"].startswith(sid)
    assert proxied["bytes"] > len(body)  # the head counts too
    assert 0 <= proxied["backend-ms"] <= proxied["total-ms"] and proxied["queue-wait-ms"] > 0  # a cold start
    assert proxied["router-id"] == r.settings.router_id
    assert (api["path"], api["status"], api["service-id"], api["instance-id"]) == ("/status", 200, None, None)


async def test_access_log_is_off_by_default(make_router, capsys) -> None:
    r = await make_router([backend_token("echo")])
    async with r.client.get(r.url + "/hello", headers=TOKEN) as resp:
        await resp.read()
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
