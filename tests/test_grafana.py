"""The shipped Grafana dashboard loads and asks only for metrics the router exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from waiter.api.metrics import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "waiter-router.json"

# PromQL words that are not metric names (functions are recognised by the "(" after them).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> set[str]:
    return {name + suffix for name, (kind, _) in FAMILIES.items() for suffix in _SUFFIXES[kind]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers, ranges,
    grouping clauses, numbers and function calls are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()[:1]
        if following != "(" and match.group() not in _KEYWORDS and not match.group().startswith("$"):
            names.add(match.group())
    return names


def expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\(([^,)]+).*$", r"\1", variable["definition"]))
    return exprs


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (service_id, le) (rate(waiter_queue_wait_seconds_bucket{service_id=~"$service"}[1m]))',
         {"waiter_queue_wait_seconds_bucket"}),
        ("a_total / on (x) b_count > 0.5", {"a_total", "b_count"}),
        ('max(x{state="healthy"}) == 1', {"x"}),
    ],
)
def test_metric_names_of_an_expression(expr, names):
    assert metric_names(expr) == names


def test_dashboard_reads_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    exprs = expressions(dashboard)
    assert len(exprs) >= 10
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - exported() == set()
    # Every panel has a unique id and a place on the grid; every target reads the dashboard's data source.
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_prometheus_example_scrapes_the_metrics_path() -> None:
    config = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"]
