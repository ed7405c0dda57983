"""Prometheus: ``/metrics`` of a real gunicorn with several workers adds up to the traffic it served.

Three sync workers serve ``tests.metrics_site`` (one cache read per request)
against a real Redis; django-prometheus's own ``ExportToDjangoView`` serves
``/metrics``. Whichever worker answers a scrape, the counters must equal what
all three did. The shipped alert rules and Grafana dashboard are checked
against the metric names a real collection exports (with ``promtool`` too
where it is installed).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import redis
from django.core.cache import caches
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.redis_server import free_port
from tests.settings import redis_url
from tests.support import caches_in_force, eventually, start_gunicorn, stop_process, wait_for
from velro_cache.telemetry.prometheus import DeploymentCollector

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 4
WORKERS = 3
READS = 120
KEYS = 12
RULES = ROOT / "deploy" / "prometheus" / "velro-cache-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "velro-cache.json"


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def gunicorn(tmp_path):
    redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.metrics_site",
        "VELRO_METRICS_REDIS": redis_url(REDIS_DB),
        "VELRO_METRICS_INTERVAL": "0.2",
        "PYTHONPATH": str(ROOT),
    }
    process = start_gunicorn(
        "django.core.wsgi:get_wsgi_application()", "--chdir", str(ROOT), "--workers", str(WORKERS), "--worker-class", "sync",
        port=port, env=env, stderr=tmp_path / "gunicorn.err",
    )
    try:
        wait_for(lambda: get(port, "/metrics")[0] == 200, "gunicorn did not start", 30, until_dead=process)
        yield port
    finally:
        stop_process(process)
        redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {metric name: value summed over its samples}, plus the pid-free totals the test needs."""
    status, text = get(port, "/metrics")
    assert status == 200
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("cache", "default") != "default":
                continue
            key = sample.name + "".join(f"|{label}={sample.labels[label]}" for label in ("tier",) if label in sample.labels)
            sums[key] = sums.get(key, 0) + sample.value
    return sums


def _read_on_every_worker(port: int, indices: list[int]) -> set[int]:
    """One read per index, WORKERS at a time on connections all opened first: each sync worker holds one.

    A sync worker that accepted a connection blocks on it until the request
    comes, so the next connection goes to another worker; requests sent one
    by one (or even from several threads) may all land on the worker idle
    first, which would prove nothing.
    """
    pids = set()
    for start in range(0, len(indices), WORKERS):
        batch = indices[start : start + WORKERS]
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in batch]
        try:
            for conn in conns:
                conn.connect()
            time.sleep(0.02)  # every connection accepted before any request is sent
            for conn, index in zip(conns, batch, strict=True):
                conn.request("GET", f"/read/gen:{index % KEYS}/")
            for conn in conns:
                response = conn.getresponse()
                assert response.status == 200
                pids.add(json.loads(response.read())["pid"])
        finally:
            for conn in conns:
                conn.close()
    return pids


def test_metrics_from_any_gunicorn_worker_add_up_to_the_traffic(gunicorn):
    """Each key's first read in turn (the misses), then the rest spread over every worker."""
    pids = set()
    for index in range(KEYS):
        status, body = get(gunicorn, f"/read/gen:{index}/")
        assert status == 200
        pids.add(json.loads(body)["pid"])
    pids |= _read_on_every_worker(gunicorn, list(range(KEYS, READS)))
    assert len(pids) > 1, "gunicorn sent every request to one worker; the test would prove nothing"

    def settled() -> dict[str, float] | None:
        found = scrape(gunicorn)
        return found if found.get("velro_cache_requests_total") == READS and found.get("velro_cache_workers") == WORKERS else None

    metrics = eventually(settled, limit=20, interval=0.3)
    assert metrics, f"/metrics never added up to {READS} reads over {WORKERS} workers: {scrape(gunicorn)}"
    assert metrics["velro_cache_misses_total"] == KEYS  # each key's first read anywhere; the others find L2 or L1
    assert metrics["velro_cache_hits_total|tier=l1"] + metrics["velro_cache_hits_total|tier=l2"] == READS - KEYS
    assert metrics["velro_cache_l1_entries|tier=l1"] >= KEYS
    assert metrics["velro_cache_breaker_open_workers|tier=l2"] == 0
    assert metrics["velro_cache_telemetry_complete"] == 1
    # Every sampled L2 read lands in exactly one bucket of the exported histogram.
    assert metrics["velro_cache_read_latency_seconds_count|tier=l2"] >= metrics["velro_cache_hits_total|tier=l2"]


def collected_names() -> set[str]:
    """The sample names a real collection exports (with _total, _bucket, ...), from this process's own cache."""
    registry = CollectorRegistry()
    registry.register(DeploymentCollector())
    with caches_in_force({"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB)}}):
        caches["default"].get("gen:1")
        text = generate_latest(registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_plain_prometheus_client_gets_every_metric_with_its_labels():
    names = collected_names()
    assert {"velro_cache_hits_total", "velro_cache_misses_total", "velro_cache_requests_total", "velro_cache_read_latency_seconds_bucket"} <= names
    assert {"velro_cache_l1_bytes", "velro_cache_evictions_total", "velro_cache_breaker_open_workers", "velro_cache_alert_firing"} <= names


def test_a_warm_up_is_exported_per_step():
    """The workers' last warm-ups, per step: entries stored and steps that failed (``velro_cache.warming``)."""
    from velro_cache import warming

    def broken() -> int:
        raise RuntimeError("a query error")

    plan = warming.Plan([warming.Step("three", lambda: 3, tiers={warming.L1}), warming.Step("broken", broken, tiers={warming.L1})])
    registry = CollectorRegistry()
    registry.register(DeploymentCollector())
    warming.reset_results()
    try:
        with caches_in_force({"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB)}}):
            warming.warm(plan)
            text = generate_latest(registry).decode()
    finally:
        warming.reset_results()
    samples = {(s.name, s.labels.get("step")): s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("velro_cache_warming_entries", "three")] == 3 and samples[("velro_cache_warming_errors", "three")] == 0
    assert samples[("velro_cache_warming_errors", "broken")] == 1


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\bvelro_cache_[a-z0-9_]+", text))


@pytest.mark.parametrize("path", [RULES, DASHBOARD], ids=["alert-rules", "grafana"])
def test_shipped_rules_and_dashboard_use_only_exported_metrics(path):
    used = referenced(path.read_text())
    assert used, f"{path.name} references no velro_cache metric"
    assert used <= collected_names(), f"{path.name} references metrics nobody exports: {sorted(used - collected_names())}"


def test_the_grafana_dashboard_is_importable_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert all(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])


def test_promtool_accepts_the_alert_rules():
    """promtool comes with `make test` (scripts/ensure_services.sh installs it): never a skip."""
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
