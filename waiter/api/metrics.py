"""``GET /metrics``: Prometheus metrics, read from the router's own state when scraped.

Nothing here runs on the request path: the request path keeps plain counters and bucket counts (waiter.service,
waiter.histogram, waiter.frontdoor) and this collector turns them into metric families at scrape time. Series are
those of the services this router knows now, so a reaped service's series are gone from the next scrape.

With ``--workers N`` every worker is a router of its own behind one port, and a scrape reaches any one of them.
The scraped worker hands its own text to the supervisor (the scheduler agent, which keeps each worker's last
text) and gets the others' back; the answer is every worker's series, each with a ``worker`` label (the worker's
router id). Each worker also pushes every ``PUSH_SECS``: Prometheus keeps its connection, so it scrapes one
worker only.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from waiter.auth import Access, access
from waiter.errors import WaiterError
from waiter.scaling import CAUSES
from waiter.scheduler.base import SchedulerError

if TYPE_CHECKING:
    from waiter.router import Router
    from waiter.service import Service

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
SCALING_STATES = ("scale-up", "scale-down", "stable")
PUSH_SECS = 10.0

# name -> (type, help): every family the router exports; tests check dashboards against this list.
FAMILIES: dict[str, tuple[str, str]] = {
    "waiter_requests": ("counter", "Requests received for a service on this router."),
    "waiter_responses": ("counter", "Proxied responses by status class (router-made errors included)."),
    "waiter_outstanding_requests": ("gauge", "Requests in flight or queued on this router."),
    "waiter_queued_requests": ("gauge", "Requests waiting for a slot on this router."),
    "waiter_in_flight_requests": ("gauge", "Requests holding a slot on this router."),
    "waiter_instances": ("gauge", "Instances this router tracks, by state (healthy, starting, unhealthy, expired)."),
    "waiter_target_instances": ("gauge", "The autoscaler's smoothed target (the leader only)."),
    "waiter_requested_instances": ("gauge", "Instances requested from the scheduler."),
    "waiter_scaling_decision": ("gauge", "1 for the state and cause of the last scaling decision (the leader only)."),
    "waiter_arrival_rate": ("gauge", "Requests a second the autoscaler measured, all routers (the leader only)."),
    "waiter_service_failing": ("gauge", "1 while a service has a deployment error."),
    "waiter_queue_wait_seconds": ("histogram", "Time requests waited for a slot."),
    "waiter_cold_start_seconds": ("histogram", "Wait of requests that arrived while no instance was healthy."),
    "waiter_backend_response_seconds": ("histogram", "Time a proxied request held its slot (backend time)."),
    "waiter_connections": ("counter", "Client connections accepted."),
    "waiter_open_connections": ("gauge", "Client connections open now."),
    "waiter_received_bytes": ("counter", "Bytes received from clients."),
    "waiter_sent_bytes": ("counter", "Bytes sent to clients."),
    "waiter_redis_errors": ("counter", "Failed calls to Redis (shared state and token store)."),
    "waiter_leader_changes": ("counter", "Times this router became or stopped being the scaling leader."),
    "waiter_shared_state_available": ("gauge", "1 while the shared state (Redis) answers."),
    "waiter_scaling_leader": ("gauge", "1 while this router holds the scaling lease."),
    "waiter_handoffs": (
        "counter",
        "Client connections handed to another router of this machine holding their service's slots (sent), taken "
        "from one (received), or kept here because the holder could not take them (declined).",
    ),
}


def _counter(name: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, FAMILIES[name][1], labels=list(labels))


def _gauge(name: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, FAMILIES[name][1], labels=list(labels))


def _histogram(name: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, FAMILIES[name][1], labels=["service_id"])


class RouterCollector(Collector):
    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        yield from self._services()
        yield from self._router()

    def _services(self) -> Iterator[Metric]:
        router = self.router
        sid_label = ("service_id",)
        requests = _counter("waiter_requests", sid_label)
        responses = _counter("waiter_responses", ("service_id", "code"))
        gauges = {name: _gauge(name, sid_label) for name in (
            "waiter_outstanding_requests", "waiter_queued_requests", "waiter_in_flight_requests",
            "waiter_target_instances", "waiter_requested_instances", "waiter_arrival_rate", "waiter_service_failing",
        )}
        instances = _gauge("waiter_instances", ("service_id", "state"))
        decisions = _gauge("waiter_scaling_decision", ("service_id", "state", "cause"))
        histograms = {name: _histogram(name) for name in (
            "waiter_queue_wait_seconds", "waiter_cold_start_seconds", "waiter_backend_response_seconds",
        )}
        autoscaler = router.autoscaler if router.autoscaler.is_leader else None
        for sid, service in router.registry.services.items():
            res = service.reservations
            requests.add_metric([sid], service.total_requests)
            for code, count in zip(STATUS_CLASSES, service.responses[1:], strict=True):
                responses.add_metric([sid, code], count)
            gauges["waiter_outstanding_requests"].add_metric([sid], res.outstanding)
            gauges["waiter_queued_requests"].add_metric([sid], res.queued)
            gauges["waiter_in_flight_requests"].add_metric([sid], res.outstanding - res.queued)
            gauges["waiter_service_failing"].add_metric([sid], 1 if service.deployment_error else 0)
            for state, count in instance_counts(service).items():
                instances.add_metric([sid, state], count)
            scheduled = service.scheduler.service_state(sid)
            if scheduled is not None:
                gauges["waiter_requested_instances"].add_metric([sid], scheduled.requested)
            # Requests that took a free slot at once waited 0 and are not observed one by one.
            waits = service.queue_waits
            zeros = max(0, service.total_requests - waits.count)
            histograms["waiter_queue_wait_seconds"].add_metric([sid], waits.cumulative(zeros), waits.sum)
            for name, buckets in (("waiter_cold_start_seconds", service.cold_starts),
                                  ("waiter_backend_response_seconds", service.backend_times)):
                histograms[name].add_metric([sid], buckets.cumulative(), buckets.sum)
            decision = autoscaler.decisions.get(sid) if autoscaler is not None else None
            if autoscaler is not None and decision is not None:
                gauges["waiter_target_instances"].add_metric([sid], decision.state.target)
                counts = autoscaler.counts_seen.get(sid)
                if counts is not None and counts.arrival_rate is not None:
                    gauges["waiter_arrival_rate"].add_metric([sid], counts.arrival_rate)
                for scaling_state in SCALING_STATES:
                    for cause in CAUSES:
                        hit = scaling_state == decision.scaling_state and cause == decision.cause
                        decisions.add_metric([sid, scaling_state, cause], 1 if hit else 0)
        yield from (requests, responses, instances, decisions)
        yield from gauges.values()
        yield from histograms.values()

    def _router(self) -> Iterator[Metric]:
        router = self.router
        traffic = router.client_traffic
        received, sent = traffic.bytes()
        counters = {
            "waiter_connections": traffic.accepted,
            "waiter_received_bytes": received,
            "waiter_sent_bytes": sent,
            "waiter_leader_changes": router.autoscaler.leader_changes,
            "waiter_redis_errors": router.tokens.store.errors + router.coordinator.state.errors,
        }
        for name, value in counters.items():
            counter = _counter(name)
            counter.add_metric([], value)
            yield counter
        values = {
            "waiter_open_connections": len(traffic.connections),
            "waiter_shared_state_available": 1 if router.coordinator.available else 0,
            "waiter_scaling_leader": 1 if router.autoscaler.is_leader else 0,
        }
        for name, value in values.items():
            gauge = _gauge(name)
            gauge.add_metric([], value)
            yield gauge
        handoff = router.handoff
        if handoff is not None:
            handoffs = _counter("waiter_handoffs", ["direction"])
            counts = {"sent": handoff.sent, "received": handoff.received, "declined": handoff.declined}
            for direction, count in counts.items():
                handoffs.add_metric([direction], count)
            yield handoffs


def instance_counts(service: Service) -> dict[str, int]:
    """healthy, starting (never healthy yet), unhealthy (was healthy), expired (of any health)."""
    counts = dict.fromkeys(("healthy", "starting", "unhealthy", "expired"), 0)
    for tracked in service.tracker.tracked.values():
        if tracked.expired:
            counts["expired"] += 1
        elif tracked.healthy:
            counts["healthy"] += 1
        elif not tracked.ever_healthy:
            counts["starting"] += 1
        else:
            counts["unhealthy"] += 1
    return counts


_registries: weakref.WeakKeyDictionary[Router, CollectorRegistry] = weakref.WeakKeyDictionary()


def exposition(router: Router) -> bytes:
    """This router's metrics in Prometheus's text format."""
    registry = _registries.get(router)
    if registry is None:
        registry = _registries[router] = CollectorRegistry(auto_describe=False)
        registry.register(RouterCollector(router))
    return generate_latest(registry)


def merge_workers(texts: Mapping[str, str]) -> bytes:
    """Several workers' texts as one: each sample gains a ``worker`` label, families keep one header."""
    merged: dict[str, Metric] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                into.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
    return generate_latest(_Fixed(list(merged.values())))


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Peers(Protocol):
    """Where a worker's metrics meet the other workers' (the supervisor's agent: ``AgentScheduler``)."""

    async def exchange_metrics(self, router_id: str, text: str) -> dict[str, str]: ...


async def push_loop(router: Router, peers: Peers) -> None:
    """A worker's metrics to the supervisor every PUSH_SECS, so a scrape of any worker shows them."""
    while True:
        await asyncio.sleep(PUSH_SECS)
        try:
            await peers.exchange_metrics(router.settings.router_id, exposition(router).decode())
        except SchedulerError as exc:
            log.warning("could not hand the metrics to the supervisor: %s", exc)


@access(Access.PUBLIC)
async def metrics(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    body = exposition(router)
    if router.metrics_peers is not None:
        try:
            texts = await router.metrics_peers.exchange_metrics(router.settings.router_id, body.decode())
        except SchedulerError as exc:
            raise WaiterError(503, f"The other workers' metrics are out of reach: {exc}") from None
        body = merge_workers(texts)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE})
