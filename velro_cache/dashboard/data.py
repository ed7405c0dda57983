"""What the dashboard shows, gathered in one place: the combined figures, their history, views, alerts."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError

from .. import alerts
from ..stats import TIERS
from ..telemetry import deployment, history
from ..telemetry.report import duration, percent, size
from .charts import Line, bar_chart, line_chart

HISTORY_MINUTES = 60
MAX_TYPE_LINES = 6
REFRESH_LOG_ROWS = 10


def _hit_rate_charts(alias: str, series: list[dict[str, Any]]) -> list[Any]:
    def share(point: dict[str, Any], field: str | None, data_type: str | None = None) -> float | None:
        cache = point["caches"].get(alias)
        if cache is None:
            return None
        row = cache["totals"] if data_type is None else cache["by_type"].get(data_type)
        if not row or not row["requests"]:
            return None
        return row["hit_rate"] if field is None else row[field] / row["requests"]

    tiers = [
        Line("all tiers", [(p["at"], share(p, None)) for p in series]),
        Line("L1", [(p["at"], share(p, "l1_hits")) for p in series]),
        Line("L2", [(p["at"], share(p, "l2_hits")) for p in series]),
    ]
    busiest: dict[str, int] = {}
    for point in series:
        for name, row in point["caches"].get(alias, {}).get("by_type", {}).items():
            busiest[name] = busiest.get(name, 0) + row["requests"]
    types = sorted(busiest, key=lambda name: -busiest[name])[:MAX_TYPE_LINES]
    by_type = [Line(name, [(p["at"], share(p, None, name)) for p in series]) for name in types]
    as_percent = "{:.0%}".format
    return [
        line_chart(f"{alias}: hit rate per tier (share of reads, per minute)", tiers, y_max=1.0, y_format=as_percent),
        line_chart(f"{alias}: hit rate per data type", by_type, y_max=1.0, y_format=as_percent),
    ]


def _latency_chart(alias: str, series: list[dict[str, Any]]) -> Any:
    def p95(point: dict[str, Any], tier: str) -> float | None:
        return point["caches"].get(alias, {}).get("p95", {}).get(tier)

    lines = [Line(f"{tier.upper()} p95", [(p["at"], p95(p, tier)) for p in series]) for tier in TIERS]
    return line_chart(f"{alias}: read latency p95 per minute", lines, y_format=lambda s: duration(s) if s else "0")


def _occupancy_chart(alias: str, workers: list[dict[str, Any]]) -> Any:
    bars = [
        (worker["worker"], float(cache["l1"].get("bytes") or 0), float(cache["l1"].get("max_bytes") or 0))
        for worker in workers
        for name, cache in worker["caches"].items()
        if name == alias
    ]
    return bar_chart(f"{alias}: L1 occupancy per worker", bars, value_format=lambda b: size(int(b)))


def views_overview() -> tuple[list[dict[str, Any]], str]:
    """Each materialized view with its staleness and latest refreshes; an error text when the database does not answer."""
    from ..db.registry import all_views, database_for, registry
    from ..models import ViewRefresh

    try:
        found = []
        for name in all_views():
            database = database_for(name, None)
            log = list(ViewRefresh.objects.for_view(name, database).order_by("-started_at")[:REFRESH_LOG_ROWS])
            last = next((entry for entry in log if entry.succeeded), None) or ViewRefresh.objects.last_success(name, database)
            spec = registry.get(name)
            found.append(
                {
                    "name": name,
                    "database": database,
                    "staleness": last.age.total_seconds() if last else None,
                    "period": spec.refresh_period if spec else None,
                    "log": log,
                }
            )
        return found, ""
    except DatabaseError as error:
        return [], str(error)


def dashboard_context() -> dict[str, Any]:
    """Everything the page and its live fragment render."""
    found = deployment()
    series = history(HISTORY_MINUTES) if found.complete else []
    caches = []
    for alias, cache in found.view["caches"].items():
        caches.append(
            {
                "alias": alias,
                "figures": cache,
                "hit_rate": percent(cache["totals"]["hit_rate"]),
                "latency": {tier: {q: duration(cache["latency"][tier][q]) for q in ("p50", "p95", "p99")} for tier in TIERS},
                "by_type": [{"name": name, **row, "hit_rate_text": percent(row["hit_rate"])} for name, row in cache["by_type"].items()],
                "charts": [*_hit_rate_charts(alias, series), _latency_chart(alias, series), _occupancy_chart(alias, found.view["workers"])],
            }
        )
    views, views_error = views_overview()
    return {
        "complete": found.complete,
        "telemetry_error": found.error,
        "caches": caches,
        "workers": found.view["workers"],
        "alerts": alerts.current(),
        "views": views,
        "views_error": views_error,
        "switches": _switches(),
        "ttl": found.view.get("ttl", []),
    }


def _switches() -> list[dict[str, Any]]:
    """Each switch as this worker applies it: its setting, its runtime value (None: none) and the percentage in force."""
    from .. import switches

    return [state.as_dict() for state in switches.all()]
