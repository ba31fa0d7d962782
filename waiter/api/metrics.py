"""``GET /metrics``: Prometheus metrics, read from the router's own state when scraped (nothing on the request path)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from waiter.router import Router


class RouterCollector(Collector):
    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        router = self.router
        requests = CounterMetricFamily("waiter_requests", "Requests received for a service.", labels=["service_id"])
        outstanding = GaugeMetricFamily(
            "waiter_outstanding_requests", "Requests in flight or queued on this router.", labels=["service_id"]
        )
        queued = GaugeMetricFamily("waiter_queued_requests", "Requests waiting for a slot.", labels=["service_id"])
        instances = GaugeMetricFamily(
            "waiter_instances", "Instances this router tracks, by health.", labels=["service_id", "health"]
        )
        failing = GaugeMetricFamily(
            "waiter_service_failing", "1 while a service has a deployment error.", labels=["service_id"]
        )
        for sid, service in router.registry.services.items():
            res = service.reservations
            requests.add_metric([sid], service.total_requests)
            outstanding.add_metric([sid], res.outstanding)
            queued.add_metric([sid], res.queued)
            healthy = service.tracker.healthy_count()
            instances.add_metric([sid, "healthy"], healthy)
            instances.add_metric([sid, "unhealthy"], len(service.tracker.tracked) - healthy)
            failing.add_metric([sid], 1 if service.deployment_error else 0)
        yield from (requests, outstanding, queued, instances, failing)
        coordinator, autoscaler = router.coordinator, router.autoscaler
        shared = GaugeMetricFamily("waiter_shared_state_available", "1 while the shared state (Redis) answers.")
        shared.add_metric([], 1 if coordinator.available else 0)
        leader = GaugeMetricFamily("waiter_scaling_leader", "1 while this router holds the scaling lease.")
        leader.add_metric([], 1 if autoscaler.is_leader else 0)
        yield from (shared, leader)


_registries: weakref.WeakKeyDictionary[Router, CollectorRegistry] = weakref.WeakKeyDictionary()


async def metrics(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    registry = _registries.get(router)
    if registry is None:
        registry = _registries[router] = CollectorRegistry(auto_describe=False)
        registry.register(RouterCollector(router))
    return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")
