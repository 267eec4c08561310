"""The Grafana dashboard and Prometheus configs only use metrics and ports the code really has."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import billing.http.middleware  # noqa: F401  registers the HTTP metrics
import billing.streams.metrics  # noqa: F401  registers the stream metrics
from billing.cli import PROCESSES

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
PROMQL_WORDS = {"sum", "by", "rate", "max", "histogram_quantile", "le", "stream", "action", "group", "service",
                "method", "route", "status", "__rate_interval"}


def exported_series() -> set[str]:
    """Every series name our collectors expose, e.g. streams_processed_total, billing_http_request_seconds_bucket."""
    names = set()
    for metric in REGISTRY.collect():
        names.update(metric.name + suffix for suffix in SUFFIXES.get(metric.type, ()))
    return names


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "ops/grafana/billing-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    found = set()
    for expr in exprs:
        expr = re.sub(r'"[^"]*"', "", expr)  # label values
        found.update(w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS)
    return found


def test_every_metric_in_the_dashboard_is_exported_by_the_code():
    used, exported = dashboard_metrics(), exported_series()
    assert used, "no metric found in the dashboard"
    assert used <= exported, f"not exported by billing: {sorted(used - exported)}"
    # and the dashboard covers HTTP and streams
    assert {"billing_http_requests_total", "billing_http_request_seconds_bucket", "streams_processed_total",
            "streams_dead_total", "streams_pending", "streams_lag", "streams_handler_seconds_bucket"} <= used


def test_prometheus_scrapes_the_ports_the_processes_listen_on():
    ports = {"8001", "8002"} | set(re.findall(r"--metrics-port (\d+)", " ".join(PROCESSES.values())))
    for name in ("prometheus.yml", "prometheus.local.yml"):
        config = yaml.safe_load((ROOT / "ops" / name).read_text())
        targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
        assert {t.rsplit(":", 1)[1] for t in targets} == ports, name
