"""Prometheus metrics ``velro_cache_*`` for the whole deployment, whichever worker is scraped.

A collector, not module-level counters: at each scrape it combines every live
worker's snapshot from Redis (``store.deployment``), so the numbers add up to
the deployment's traffic under any number of gunicorn workers without
prometheus_client's multiprocess mode, and the hot path keeps its own
lock-free counters instead of paying for a second set. It is registered in
prometheus_client's default registry, which django-prometheus's ``/metrics``
view exports (leave ``PROMETHEUS_MULTIPROC_DIR`` unset: with it that view
reads only its own files); projects without django-prometheus mount
``metrics_view``.

Labels: ``cache`` (the CACHES alias), ``tier`` (``l1``, ``l2``), ``data_type``
(a key's first segment, the rows of ``cache.stats()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
except ImportError:  # the `prometheus` extra is optional
    prometheus_client = None  # type: ignore[assignment]

from ..stats import TIERS
from .store import deployment

_registered: set[int] = set()


def _counter(name: str, doc: str, labels: list[str]) -> Any:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> Any:
    return GaugeMetricFamily(name, doc, labels=labels)


def _latency(alias: str, cache: dict[str, Any], family: Any) -> None:
    for tier in TIERS:
        view = cache["latency"][tier]
        cumulative, buckets = 0, []
        for bound, count in view["buckets"]:
            cumulative += count
            buckets.append((repr(float(bound)), cumulative))
        buckets.append(("+Inf", view["count"]))
        family.add_metric([alias, tier], buckets, view["sum"])


def families(view: dict[str, Any], complete: bool) -> list[Any]:
    """The metric families of one combined view (``combine.combine``)."""
    hits = _counter("velro_cache_hits", "Reads answered by a tier, all workers.", ["cache", "tier", "data_type"])
    misses = _counter("velro_cache_misses", "Reads no tier answered, all workers.", ["cache", "data_type"])
    corrupt = _counter("velro_cache_corrupt_entries", "Entries that failed to decode or authenticate (misses).", ["cache", "data_type"])
    requests = _counter("velro_cache_requests", "Reads, all tiers and outcomes.", ["cache", "data_type"])
    ops = _counter("velro_cache_operations", "Writes and deletes, all workers.", ["cache", "operation"])
    l2_errors = _counter("velro_cache_l2_errors", "L2 calls that failed or timed out.", ["cache", "tier"])
    evictions = _counter("velro_cache_evictions", "Entries evicted from L1, all workers.", ["cache", "tier"])
    losses = _counter("velro_cache_coherence_losses", "Times a worker lost its coherence channel.", ["cache"])
    l1_bytes = _gauge("velro_cache_l1_bytes", "Bytes held in L1, summed over workers.", ["cache", "tier"])
    l1_max = _gauge("velro_cache_l1_max_bytes", "L1 byte budget, summed over workers.", ["cache", "tier"])
    l1_entries = _gauge("velro_cache_l1_entries", "Entries held in L1, summed over workers.", ["cache", "tier"])
    breaker = _gauge("velro_cache_breaker_open_workers", "Workers whose L2 circuit breaker is not closed.", ["cache", "tier"])
    workers = _gauge("velro_cache_workers", "Worker processes that published in the last three intervals.", ["cache"])
    latency = HistogramMetricFamily("velro_cache_read_latency_seconds", "Sampled read latency per tier.", labels=["cache", "tier"])
    for alias, cache in view["caches"].items():
        for data_type, row in cache["by_type"].items():
            hits.add_metric([alias, "l1", data_type], row["l1_hits"])
            hits.add_metric([alias, "l2", data_type], row["l2_hits"])
            misses.add_metric([alias, data_type], row["misses"])
            corrupt.add_metric([alias, data_type], row["corrupt"])
            requests.add_metric([alias, data_type], row["requests"])
        ops.add_metric([alias, "set"], cache["sets"])
        ops.add_metric([alias, "delete"], cache["deletes"])
        l2_errors.add_metric([alias, "l2"], cache["l2_errors"])
        evictions.add_metric([alias, "l1"], cache["l1"]["evictions"])
        losses.add_metric([alias], cache["coherence_losses"])
        l1_bytes.add_metric([alias, "l1"], cache["l1"]["bytes"])
        l1_max.add_metric([alias, "l1"], cache["l1"]["max_bytes"])
        l1_entries.add_metric([alias, "l1"], cache["l1"]["entries"])
        breaker.add_metric([alias, "l2"], cache["breaker_open"])
        workers.add_metric([alias], cache["workers"])
        _latency(alias, cache, latency)
    complete_gauge = GaugeMetricFamily(
        "velro_cache_telemetry_complete", "1 if the figures cover every worker, 0 if only the scraped one (Redis down)."
    )
    complete_gauge.add_metric([], 1 if complete else 0)
    counters = [hits, misses, corrupt, requests, ops, l2_errors, evictions, losses]
    gauges = [l1_bytes, l1_max, l1_entries, breaker, workers, complete_gauge]
    return counters + gauges + [latency] + _alert_families() + _view_families() + _warming_families(view["workers"])


def _warming_families(workers: list[dict[str, Any]]) -> list[Any]:
    """Each step's entries and failures in the workers' last warm-ups, summed over workers (``velro_cache.warming``)."""
    from ..warming.results import ERROR_OUTCOMES

    entries = GaugeMetricFamily("velro_cache_warming_entries", "Entries the workers' last warm-ups stored, per step.", labels=["step"])
    errors = GaugeMetricFamily(
        "velro_cache_warming_errors", "Workers whose last warm-up step failed, ran out of budget or found no L2.", labels=["step"]
    )
    totals: dict[str, list[int]] = {}
    for worker in workers:
        for step in (worker.get("warming") or {}).get("steps", []):
            total = totals.setdefault(step["name"], [0, 0])
            total[0] += step["entries"]
            total[1] += 1 if step["status"] in ERROR_OUTCOMES else 0
    for name, (stored, failed) in sorted(totals.items()):
        entries.add_metric([name], stored)
        errors.add_metric([name], failed)
    return [entries, errors]


def _view_families() -> list[Any]:
    """Seconds since each materialized view's last good refresh started (+Inf: never), from the refresh log."""
    from ..alerts import view_staleness

    family = GaugeMetricFamily("velro_cache_view_staleness_seconds", "Age of a view's data (+Inf: never refreshed).", labels=["view"])
    try:
        staleness = view_staleness()
    except Exception:  # no database here (none configured, down, not allowed): a scrape still answers, without view figures
        return [family]
    for view, age in sorted(staleness.items()):
        family.add_metric([view], float("inf") if age is None else age)
    return [family]


def _alert_families() -> list[Any]:
    from ..alerts import ALERT_NAMES, current

    firing = {alert.name for alert in current()}
    family = GaugeMetricFamily("velro_cache_alert_firing", "1 while an alert of VELRO_CACHE['ALERTS'] fires.", labels=["alert"])
    for name in ALERT_NAMES:
        family.add_metric([name], 1 if name in firing else 0)
    return [family]


class DeploymentCollector:
    """A prometheus_client collector over the combined view of every worker."""

    def collect(self) -> Iterator[Any]:
        found = deployment()
        yield from families(found.view, found.complete)

    def describe(self) -> list[Any]:
        return []  # unchecked collector: no Redis call when it is registered


def register_default() -> bool:
    """Register the collector in prometheus_client's default registry once (False without prometheus_client)."""
    if prometheus_client is None:
        return False
    registry = prometheus_client.REGISTRY
    if id(registry) not in _registered:
        registry.register(DeploymentCollector())
        _registered.add(id(registry))
    return True


def metrics_view(request: Any) -> Any:
    """``/metrics`` for projects without django-prometheus: the default registry in the text format."""
    from django.http import HttpResponse

    if prometheus_client is None:
        return HttpResponse("prometheus_client is not installed (pip install velro-cache[prometheus])", status=501)
    return HttpResponse(prometheus_client.generate_latest(prometheus_client.REGISTRY), content_type=prometheus_client.CONTENT_TYPE_LATEST)
