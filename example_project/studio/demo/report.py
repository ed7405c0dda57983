"""Turn run samples into the text report `velro_demo` prints.

The numbers are only what was measured: latencies are in-process (Django's full
middleware and URL stack through the test client, no network or WSGI server), hit
rates come from the app's own read-through counts and, separately, from whatever
the cache backend reports about itself, and "queries saved" compares the same kind
of traffic replayed with caching off.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .plan import DETAIL, ENDPOINTS, MEDIA
from .runner import RunResult, Sample

STATUS_NAMES = {
    200: "OK", 400: "bad request", 401: "no valid token", 403: "not authorized",
    404: "missing", 405: "method not allowed", 500: "server error",
}
MAX_STATS_LINES = 40


@dataclass
class ReportInput:
    cached: RunResult
    uncached: RunResult | None
    read_types: Mapping[str, Mapping[str, int]]
    backend_stats: Any
    setup: Mapping[str, str]


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile, which never invents a value that was not observed."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:5.1f} %" if whole else "    n/a"


def _ms(samples: Iterable[Sample]) -> list[float]:
    return sorted(s.latency_ns / 1e6 for s in samples)


def _by_endpoint(samples: list[Sample]) -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = {e: [] for e in ENDPOINTS}
    for sample in samples:
        grouped.setdefault(sample.endpoint, []).append(sample)
    return {e: s for e, s in grouped.items() if s}


def render(data: ReportInput) -> list[str]:
    lines = _header(data)
    lines += _statuses(data.cached)
    lines += _latency(data.cached, data.uncached)
    lines += _backend_stats(data.backend_stats)
    lines += _hit_rates(data.cached, data.read_types, backend_has_types(data.backend_stats))
    lines += _queries(data.cached, data.uncached)
    return lines


def _header(data: ReportInput) -> list[str]:
    run = data.cached
    n = len(run.samples)
    rate = n / run.elapsed_s if run.elapsed_s else 0.0
    lines = [
        "",
        "=" * 78,
        f"Velro demo report: {n} requests, {run.clients} concurrent client(s), "
        f"{run.elapsed_s:.2f} s ({rate:,.0f} req/s)",
        "=" * 78,
    ]
    lines += [f"  {name:<9} {value}" for name, value in data.setup.items()]
    lines.append("  Latencies are in-process: full Django middleware and URL stack via the")
    lines.append("  test client, no network or WSGI server.")
    if run.clients > 1:
        lines.append(f"  The {run.clients} clients are threads of one interpreter: each latency")
        lines.append("  includes waiting for the others to release the GIL.")
    return lines


def _statuses(run: RunResult) -> list[str]:
    counts = Counter(s.status for s in run.samples)
    total = len(run.samples)
    lines = ["", "Requests by status"]
    for status, count in sorted(counts.items()):
        name = STATUS_NAMES.get(status, "")
        lines.append(f"  {status} {name:<20} {count:>7}  {pct(count, total)}")
    return lines


def _latency(cached: RunResult, uncached: RunResult | None) -> list[str]:
    off = _by_endpoint(uncached.samples) if uncached else {}
    head = f"  {'endpoint':<34}{'n':>6}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"
    lines = ["", "Latency per endpoint (ms, all statuses)", head + ("  p50 no cache" if off else "")]
    for endpoint, samples in _by_endpoint(cached.samples).items():
        ms = _ms(samples)
        row = (
            f"  {endpoint:<34}{len(ms):>6}{percentile(ms, 50):>8.2f}{percentile(ms, 95):>8.2f}"
            f"{percentile(ms, 99):>8.2f}{ms[-1]:>8.2f}"
        )
        if endpoint in off:
            row += f"  {percentile(_ms(off[endpoint]), 50):>12.2f}"
        lines.append(row)
    authorized = _ms(s for s in cached.samples if s.endpoint in (DETAIL, MEDIA) and s.status == 200)
    if authorized:
        lines.append(
            f"  authorized GETs (200): p50 {percentile(authorized, 50):.2f} ms, "
            f"p95 {percentile(authorized, 95):.2f} ms, p99 {percentile(authorized, 99):.2f} ms"
        )
    return lines


def _hit_rate_line(label: str, hits: int, misses: int, detail: str = "") -> str:
    reads = hits + misses
    detail = detail or f"{hits} hits / {reads} reads"
    return f"  {label:<22} {pct(hits, reads)}  ({detail})"


def _hit_rates(
    run: RunResult, read_types: Mapping[str, Mapping[str, int]], backend_has_types: bool
) -> list[str]:
    samples = run.samples
    half = samples[len(samples) // 2:]
    lines = ["", "Cache hit rate, counted by the app's read-through helpers"]
    lines.append(_hit_rate_line("overall", sum(s.hits for s in samples), sum(s.misses for s in samples)))
    lines.append(_hit_rate_line("second half of run", sum(s.hits for s in half), sum(s.misses for s in half)))
    if not backend_has_types:
        for data_type, counts in sorted(read_types.items()):
            lines.append(_hit_rate_line(f"  {data_type}", counts["hits"], counts["misses"]))
    return lines


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tier_line(label: str, counts: Any) -> str | None:
    """``{"l1_hits": a, "l2_hits": b, "misses": c, ...}`` as one line with a hit rate."""
    if not isinstance(counts, Mapping) or not _is_number(counts.get("misses")):
        return None
    tiers = {k: v for k, v in counts.items() if k.endswith("hits") and _is_number(v)}
    if not tiers:
        return None
    misses = int(counts["misses"])
    parts = [f"{k.removesuffix('_hits').removesuffix('hits').upper() or 'hits'} {int(v)}"
             for k, v in tiers.items()]
    extra = [f"{k} {v}" for k, v in counts.items()
             if k not in tiers and k not in ("misses", "requests", "hit_rate") and _is_number(v) and v]
    detail = ", ".join([*parts, f"misses {misses}", *extra])
    return _hit_rate_line(label, int(sum(tiers.values())), misses, detail)


def backend_has_types(stats: Any) -> bool:
    return isinstance(stats, Mapping) and isinstance(stats.get("by_type"), Mapping)


def _backend_stats(stats: Any) -> list[str]:
    lines = ["", "Cache backend's own statistics (cache.stats(), this process)"]
    if stats is None:
        return lines + ["  not exposed by this backend; see the app's counts above"]
    if isinstance(stats, Exception):
        return lines + [f"  unavailable: {type(stats).__name__}: {stats}"]
    if not isinstance(stats, Mapping):
        return lines + list(_describe(stats, "stats"))
    rest = dict(stats)
    totals = _tier_line("overall", rest.get("totals"))
    if totals:
        lines.append(totals)
        rest.pop("totals")
    if backend_has_types(stats):
        for data_type, counts in sorted(rest.pop("by_type").items()):
            lines.append(_tier_line(f"  {data_type}", counts) or f"  {data_type}: {counts!r}")
    body = list(_describe(rest, ""))
    if len(body) > MAX_STATS_LINES:
        body = body[:MAX_STATS_LINES] + [f"  ... {len(body) - MAX_STATS_LINES} more lines"]
    return lines + body


def _describe(value: Any, path: str) -> Iterable[str]:
    """Print any nesting of dicts defensively: hit counts get a rate, latencies
    (seconds, by the backend's convention) are shown in microseconds."""
    if isinstance(value, Mapping):
        line = _tier_line(path or "total", value)
        if line:
            yield line
            return
        for key, item in value.items():
            yield from _describe(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        yield f"  {path:<22} [{len(value)} values]"
    elif isinstance(value, float) and "latency" in path:
        yield f"  {path:<22} {value * 1e6:,.1f} µs"
    elif _is_number(value) and path.endswith("bytes"):
        yield f"  {path:<22} {value / 2**20:,.2f} MiB"
    elif isinstance(value, float):
        yield f"  {path:<22} {value:.4g}"
    else:
        text = repr(value)
        yield f"  {path:<22} {text if len(text) < 60 else text[:57] + '...'}"


def _queries(cached: RunResult, uncached: RunResult | None) -> list[str]:
    lines = ["", "Database queries"]
    on = cached.samples
    per_on = sum(s.queries for s in on) / len(on) if on else 0.0
    half = on[len(on) // 2:]
    per_half = sum(s.queries for s in half) / len(half) if half else 0.0
    lines.append(f"  with cache:    {per_on:.3f} queries/request over the run, "
                 f"{per_half:.3f} in its second half")
    if not uncached or not uncached.samples:
        return lines + ["  (no comparison pass without cache was run)"]
    off = uncached.samples
    per_off = sum(s.queries for s in off) / len(off)
    lines.append(f"  without cache: {per_off:.3f} queries/request "
                 f"(the same traffic mix, {len(off)} requests replayed with DummyCache)")
    if per_off:
        lines.append(f"  saved:         {100 * (1 - per_on / per_off):.1f} % fewer queries per request "
                     f"over the run, {100 * (1 - per_half / per_off):.1f} % once warm")
    on_by, off_by = _by_endpoint(on), _by_endpoint(off)
    lines.append(f"  {'endpoint':<34}{'cached':>10}{'uncached':>10}{'saved':>9}")
    for endpoint, samples in on_by.items():
        q_on = sum(s.queries for s in samples) / len(samples)
        if endpoint in off_by:
            q_off = sum(s.queries for s in off_by[endpoint]) / len(off_by[endpoint])
            saved = f"{100 * (1 - q_on / q_off):7.1f} %" if q_off else "     n/a"
            lines.append(f"  {endpoint:<34}{q_on:>10.3f}{q_off:>10.3f}{saved:>9}")
        else:
            lines.append(f"  {endpoint:<34}{q_on:>10.3f}{'-':>10}{'-':>9}")
    return lines


# -- several passes -------------------------------------------------------------------------------

COUNTS = ("l1_hits", "l2_hits", "misses", "corrupt", "requests")


def stats_delta(after: Any, before: Any) -> Any:
    """What a pass added to the backend's counters (they are cumulative per process): totals and per data type."""
    if not backend_has_types(after) or not backend_has_types(before):
        return after

    def minus(now: Mapping[str, Any], then: Mapping[str, Any]) -> dict[str, int]:
        return {name: int(now.get(name, 0)) - int(then.get(name, 0)) for name in COUNTS if _is_number(now.get(name))}

    by_type = {name: minus(row, before["by_type"].get(name, {})) for name, row in after["by_type"].items()}
    by_type = {name: row for name, row in by_type.items() if row.get("requests", 0)}
    return {"totals": minus(after["totals"], before["totals"]), "by_type": by_type}


def curve(passes: Mapping[str, RunResult], window: int) -> list[str]:
    """The warm-up curve of each pass: the read-through hit rate per window of requests, and cumulative."""
    labels = list(passes)
    count = min(len(run.samples) for run in passes.values())
    lines = ["", "=" * 78, f"Warm-up curve: hit rate per {window} requests after a cold start (cumulative in brackets)", "=" * 78]
    lines.append(f"  {'requests':<14}" + "".join(f"{label:>28}" for label in labels))
    totals = {label: [0, 0] for label in labels}
    for start in range(0, count, window):
        row = f"  {f'{start + 1}-{min(start + window, count)}':<14}"
        for label in labels:
            part = passes[label].samples[start:start + window]
            hits, misses = sum(s.hits for s in part), sum(s.misses for s in part)
            totals[label][0] += hits
            totals[label][1] += misses
            cumulative = pct(totals[label][0], sum(totals[label])).strip()
            row += f"{pct(hits, hits + misses).strip():>16} {_bar(hits, hits + misses)} ({cumulative})".rjust(28)
        lines.append(row)
    return lines


def _bar(part: int, whole: int, width: int = 5) -> str:
    filled = round(width * part / whole) if whole else 0
    return "#" * filled + "." * (width - filled)
