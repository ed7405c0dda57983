"""Worker snapshots -> one view of the deployment, and per-minute samples -> a time series.

Counters and histogram buckets add up across processes; quantiles do not, so
they are computed here from the summed buckets. Occupancy, breaker and
coherence state stay per worker as well, since "one worker's breaker is open"
is what an operator needs to see, not an average.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..stats import LATENCY_BUCKETS, TIERS, bucket_quantile
from ..ttl import EFFECT_FIELDS, effect_rows

COUNT_FIELDS = ("l1_hits", "l2_hits", "misses", "corrupt", "requests")
CACHE_COUNTERS = ("l2_errors", "l2_distrusted", "sets", "deletes")
L1_SUMS = ("bytes", "max_bytes", "entries", "evictions")
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def _hit_rate(row: Mapping[str, Any]) -> float | None:
    requests = row.get("requests", 0)
    return (row.get("l1_hits", 0) + row.get("l2_hits", 0)) / requests if requests else None


def quantile(counts: list[int], q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile of summed bucket counts (None without samples)."""
    return bucket_quantile(counts, sum(counts), q)


def bucket_counts(histogram: Mapping[str, Any]) -> list[int]:
    """A histogram snapshot's per-bucket counts, overflow last (the layout ``stats.LatencyHistogram`` keeps)."""
    return [int(count) for _bound, count in histogram.get("buckets", ())] + [int(histogram.get("overflow", 0))]


def latency_view(counts: list[int], total: float) -> dict[str, Any]:
    """Summed buckets with their quantiles: what charts, tables and Prometheus read."""
    view: dict[str, Any] = {
        "buckets": [list(pair) for pair in zip(LATENCY_BUCKETS, counts)],
        "overflow": counts[-1] if len(counts) > len(LATENCY_BUCKETS) else 0,
        "sum": total,
        "count": sum(counts),
    }
    view.update({name: quantile(counts, q) for name, q in QUANTILES.items()})
    return view


def _empty_cache() -> dict[str, Any]:
    return {
        "by_type": {},
        "latency_counts": {tier: [0] * (len(LATENCY_BUCKETS) + 1) for tier in TIERS},
        "latency_sum": dict.fromkeys(TIERS, 0.0),
        "counters": dict.fromkeys(CACHE_COUNTERS, 0),
        "l1": dict.fromkeys(L1_SUMS, 0),
        "breaker_open": 0,
        "coherence_losses": 0,
        "coherence_connected": 0,
        "workers": 0,
    }


def _add_cache(into: dict[str, Any], figures: Mapping[str, Any]) -> None:
    """Add one worker's figures of one cache into the running sums."""
    for data_type, row in figures.get("by_type", {}).items():
        summed = into["by_type"].setdefault(data_type, dict.fromkeys(COUNT_FIELDS, 0))
        for name in COUNT_FIELDS:
            summed[name] += int(row.get(name, 0))
    for tier in TIERS:
        histogram = figures.get("latency", {}).get(tier, {})
        counts = bucket_counts(histogram)
        into["latency_counts"][tier] = [a + b for a, b in zip(into["latency_counts"][tier], counts)]
        into["latency_sum"][tier] += float(histogram.get("sum", 0.0))
    for name in CACHE_COUNTERS:
        into["counters"][name] += int(figures.get(name, 0))
    l1 = figures.get("l1", {})
    for name in L1_SUMS:
        into["l1"][name] += int(l1.get(name) or 0)
    l2 = figures.get("l2", {})
    if l2.get("enabled") and (l2.get("breaker") or {}).get("state") != "closed":
        into["breaker_open"] += 1
    coherence = l2.get("coherence", {})
    into["coherence_losses"] += int(coherence.get("losses", 0))
    into["coherence_connected"] += int(bool(coherence.get("connected")))
    into["workers"] += 1


def _finish_cache(sums: dict[str, Any]) -> dict[str, Any]:
    by_type = {name: {**row, "hit_rate": _hit_rate(row)} for name, row in sorted(sums["by_type"].items())}
    totals: dict[str, Any] = {name: sum(row[name] for row in by_type.values()) for name in COUNT_FIELDS}
    totals["hit_rate"] = _hit_rate(totals)
    return {
        "totals": totals,
        "by_type": by_type,
        "latency": {tier: latency_view(sums["latency_counts"][tier], sums["latency_sum"][tier]) for tier in TIERS},
        **sums["counters"],
        "l1": sums["l1"],
        "breaker_open": sums["breaker_open"],
        "coherence_losses": sums["coherence_losses"],
        "coherence_connected": sums["coherence_connected"],
        "workers": sums["workers"],
    }


def worker_row(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """What the per-worker table shows: occupancy, breaker and coherence of each cache."""
    caches = {}
    for alias, figures in snapshot.get("caches", {}).items():
        l2 = figures.get("l2", {})
        caches[alias] = {
            "l1": figures.get("l1", {}),
            "requests": figures.get("totals", {}).get("requests", 0),
            "hit_rate": figures.get("totals", {}).get("hit_rate"),
            "breaker": (l2.get("breaker") or {}).get("state") if l2.get("enabled") else None,
            "coherence_connected": l2.get("coherence", {}).get("connected") if l2.get("enabled") else None,
            "coherence_losses": l2.get("coherence", {}).get("losses", 0),
        }
    return {key: snapshot.get(key) for key in ("worker", "pid", "host", "started_at", "taken_at", "warming")} | {"caches": caches}


def combine(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Worker snapshots (``snapshot.process_snapshot``) -> the deployment: sums per cache, plus one row per worker."""
    rows = list(snapshots)
    sums: dict[str, dict[str, Any]] = {}
    ttl_sums: dict[str, dict[str, float]] = {}
    for snapshot in rows:
        for alias, figures in snapshot.get("caches", {}).items():
            _add_cache(sums.setdefault(alias, _empty_cache()), figures)
        _add_ttl(ttl_sums, snapshot.get("ttl") or {})
    return {
        "caches": {alias: _finish_cache(cache_sums) for alias, cache_sums in sums.items()},
        "workers": sorted((worker_row(snapshot) for snapshot in rows), key=lambda row: str(row["worker"])),
        "ttl": effect_rows(ttl_sums),
    }


def _add_ttl(into: dict[str, dict[str, float]], figures: Mapping[str, Mapping[str, Any]]) -> None:
    """Add one worker's TTL sums per data type (``ttl.effect_sums``); a malformed row is skipped, not fatal."""
    for data_type, row in figures.items():
        if not isinstance(row, Mapping):
            continue
        summed = into.setdefault(str(data_type), dict.fromkeys(EFFECT_FIELDS, 0.0))
        for name in EFFECT_FIELDS:
            value = row.get(name, 0)
            summed[name] += float(value) if isinstance(value, int | float) else 0.0


# -- the time series ----------------------------------------------------------------------------


def _minute_figures(snapshot: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The cumulative numbers of one sample that a per-minute delta is taken of, per cache."""
    figures: dict[str, dict[str, Any]] = {}
    for alias, cache in snapshot.get("caches", {}).items():
        flat: dict[str, Any] = {
            f"type:{name}:{field}": int(row.get(field, 0)) for name, row in cache.get("by_type", {}).items() for field in COUNT_FIELDS
        }
        for tier in TIERS:
            for index, count in enumerate(bucket_counts(cache.get("latency", {}).get(tier, {}))):
                flat[f"lat:{tier}:{index}"] = count
        flat["evictions"] = int(cache.get("l1", {}).get("evictions") or 0)
        flat["sets"] = int(cache.get("sets", 0))
        figures[alias] = flat
    return figures


def _delta(now: Mapping[str, int], before: Mapping[str, int] | None) -> dict[str, int]:
    if before is None:
        return dict(now)
    return {name: max(0, value - before.get(name, 0)) for name, value in now.items()}


def _series_point(minute: int, deltas: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    caches = {}
    for alias, flat in deltas.items():
        by_type: dict[str, dict[str, int]] = {}
        counts = {tier: [0] * (len(LATENCY_BUCKETS) + 1) for tier in TIERS}
        for name, value in flat.items():
            kind, _, rest = name.partition(":")
            if kind == "type":
                data_type, _, field = rest.rpartition(":")
                by_type.setdefault(data_type, dict.fromkeys(COUNT_FIELDS, 0))[field] += value
            elif kind == "lat":
                tier, _, index = rest.partition(":")
                counts[tier][int(index)] += value
        totals = {field: sum(row[field] for row in by_type.values()) for field in COUNT_FIELDS}
        caches[alias] = {
            "totals": {**totals, "hit_rate": _hit_rate(totals)},
            "by_type": {name: {**row, "hit_rate": _hit_rate(row)} for name, row in sorted(by_type.items())},
            "p95": {tier: quantile(counts[tier], 0.95) for tier in TIERS},
            "evictions": flat.get("evictions", 0),
            "sets": flat.get("sets", 0),
        }
    return {"minute": minute, "at": minute * 60, "caches": caches}


def minute_series(samples: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """``{epoch minute: {worker: its last snapshot in that minute}}`` -> what happened in each minute, all workers summed.

    A minute's figure is each worker's growth since its previous sample. A
    worker seen first in the window counts from zero only if it started in
    that minute (new since then); otherwise its first sample is a baseline, since
    its growth before the window is unknown. The oldest minute is a baseline only.
    """
    last: dict[str, dict[str, dict[str, int]]] = {}
    series = []
    for index, minute in enumerate(sorted(samples)):
        deltas: dict[str, dict[str, int]] = {}
        for worker, snapshot in samples[minute].items():
            now = _minute_figures(snapshot)
            before = last.get(worker)
            fresh = float(snapshot.get("started_at", 0)) >= (minute - 1) * 60
            if before is not None or fresh:
                for alias, flat in now.items():
                    delta = _delta(flat, (before or {}).get(alias))
                    into = deltas.setdefault(alias, {})
                    for name, value in delta.items():
                        into[name] = into.get(name, 0) + value
            last[worker] = now
        if index or deltas:
            series.append(_series_point(minute, deltas))
    return series
