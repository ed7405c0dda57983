"""Alerts: the thresholds of ``VELRO_CACHE["ALERTS"]`` held against the deployment's figures.

``evaluate`` is a pure function of the combined view, the per-minute series
and the views' staleness, so each rule is tested on figures, not on timing.
The publisher thread runs ``check_now`` every interval; one worker per
interval wins a Redis lock and evaluates for all, so a firing is logged once
(logger ``velro_cache.alerts``, at WARNING when it starts, INFO when it
clears) and stored in Redis for every worker's dashboard and ``/metrics``.
Where the figures point at a cause, the alert carries a recommendation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import redis

from .conf import settings

logger = logging.getLogger("velro_cache.alerts")

ALERT_NAMES = ("hit_rate_low", "l1_p95_high", "l2_p95_high", "breaker_open", "view_stale", "evictions_high")
MIN_REQUESTS = 100  # fewer reads in the window say nothing about a hit rate
FIRING_KEY = "velro:{telemetry}:alerts:firing"
LOCK_KEY = "velro:{telemetry}:alerts:lock"


@dataclass(frozen=True)
class Alert:
    name: str
    subject: str  # the cache alias or view it is about
    message: str
    value: float
    threshold: float
    recommendation: str = ""


def _window(series: list[dict[str, Any]], alias: str) -> dict[str, Any]:
    """The last minutes of the series for one cache, summed: requests, hits, evictions, per data type."""
    totals: dict[str, Any] = {"requests": 0, "hits": 0, "evictions": 0, "sets": 0, "minutes": len(series)}
    by_type: dict[str, dict[str, int]] = {}
    for point in series:
        cache = point["caches"].get(alias)
        if cache is None:
            continue
        totals["requests"] += cache["totals"]["requests"]
        totals["hits"] += cache["totals"]["l1_hits"] + cache["totals"]["l2_hits"]
        totals["evictions"] += cache["evictions"]
        for name, row in cache["by_type"].items():
            into = by_type.setdefault(name, {"requests": 0, "misses": 0})
            into["requests"] += row["requests"]
            into["misses"] += row["misses"]
    totals["by_type"] = by_type
    return totals


def _hit_rate_advice(cache: dict[str, Any], window: dict[str, Any]) -> str:
    """Why the hit rate is low, when the figures say: L1 full and evicting, or one data type missing most."""
    l1 = cache["l1"]
    if window["evictions"] and l1["max_bytes"] and l1["bytes"] >= 0.9 * l1["max_bytes"]:
        return (
            f"L1 is full ({l1['bytes']} of {l1['max_bytes']} bytes) and evicted {window['evictions']} entries: "
            "it is too small for its working set; raise OPTIONS['L1']['MAX_BYTES']."
        )
    missing = sorted(window["by_type"].items(), key=lambda item: item[1]["misses"], reverse=True)
    if missing and missing[0][1]["misses"]:
        name, row = missing[0]
        ttl = settings.TTL.get(settings.KEY_DATA_TYPES.get(name, name), settings.DEFAULT_TTL)
        return (
            f"'{name}' keys miss most ({row['misses']} of {row['requests']} reads) with a TTL of {ttl} s: if they change "
            "less often than that, the TTL is shorter than their change interval; raise VELRO_CACHE['TTL'] for them."
        )
    return ""


def _cache_alerts(alias: str, cache: dict[str, Any], window: dict[str, Any], limits: dict[str, Any]) -> list[Alert]:
    found = []
    limit = limits.get("HIT_RATE_BELOW")
    if limit is not None and window["requests"] >= MIN_REQUESTS:
        rate = window["hits"] / window["requests"]
        if rate < limit:
            message = f"{alias}: hit rate {rate:.1%} over the last {window['minutes']} min is below {limit:.0%}"
            found.append(Alert("hit_rate_low", alias, message, rate, limit, _hit_rate_advice(cache, window)))
    for tier, name in (("l1", "L1_P95_ABOVE"), ("l2", "L2_P95_ABOVE")):
        limit, p95 = limits.get(name), cache["latency"][tier]["p95"]
        if limit is not None and p95 is not None and p95 > limit:
            message = f"{alias}: {tier.upper()} read p95 {p95 * 1e3:.3g} ms is above {limit * 1e3:.3g} ms"
            found.append(Alert(f"{tier}_p95_high", alias, message, p95, limit))
    if limits.get("BREAKER_OPEN") and cache["breaker_open"]:
        message = f"{alias}: the L2 breaker is open in {cache['breaker_open']} of {cache['workers']} workers (Redis down or slow)"
        found.append(Alert("breaker_open", alias, message, cache["breaker_open"], 0))
    limit = limits.get("EVICTIONS_PER_MINUTE_ABOVE")
    if limit is not None and window["minutes"]:
        rate = window["evictions"] / window["minutes"]
        if rate > limit:
            advice = "L1 churns: raise OPTIONS['L1']['MAX_BYTES'] if the hit rate suffers."
            found.append(Alert("evictions_high", alias, f"{alias}: {rate:.0f} L1 evictions a minute, above {limit:g}", rate, limit, advice))
    return found


def evaluate(view: dict[str, Any], series: list[dict[str, Any]], staleness: dict[str, float | None], limits: dict[str, Any]) -> list[Alert]:
    """Every alert that fires for these figures (``staleness``: view -> seconds since its last good refresh, None if never)."""
    recent = series[-int(limits.get("WINDOW_MINUTES") or 5) :]
    found = []
    for alias, cache in view["caches"].items():
        found += _cache_alerts(alias, cache, _window(recent, alias), limits)
    limit = limits.get("VIEW_STALENESS_ABOVE")
    if limit is not None:
        for name, age in sorted(staleness.items()):
            if age is None or age > limit:
                told = "never refreshed" if age is None else f"last refreshed {age:.0f} s ago"
                advice = f"run `manage.py velro_refresh_views {name}` or turn on VIEW_REFRESH_SCHEDULE."
                found.append(Alert("view_stale", name, f"view {name}: {told}, above {limit:g} s", age or float("inf"), limit, advice))
    return found


def view_staleness() -> dict[str, float | None]:
    """Seconds since each known view's last successful refresh started (None: never), from the refresh log."""
    from .db.registry import all_views, database_for
    from .models import ViewRefresh

    found: dict[str, float | None] = {}
    for name in all_views():
        last = ViewRefresh.objects.last_success(name, database_for(name, None))
        found[name] = last.age.total_seconds() if last is not None else None
    return found


def _staleness_from_this_thread() -> dict[str, float | None]:
    try:
        return view_staleness()
    except Exception:  # no database reachable from here: judge the caches anyway
        return {}


# -- shared state across workers ---------------------------------------------------------------

_local: list[Alert] = []  # the last evaluation this process saw (Redis down: its own)


def _announce(before: set[tuple[str, str]], now: list[Alert]) -> None:
    for alert in now:
        if (alert.name, alert.subject) not in before:
            logger.warning("alert %s: %s%s", alert.name, alert.message, f" ({alert.recommendation})" if alert.recommendation else "")
    for name, subject in before - {(alert.name, alert.subject) for alert in now}:
        logger.info("alert %s cleared for %s", name, subject)


def check_now(*, force: bool = False) -> list[Alert] | None:
    """Evaluate once for the deployment; None when another worker holds this interval's turn."""
    from .telemetry import store

    connection = store.client()
    interval = max(settings.TELEMETRY_INTERVAL, 1.0)
    try:
        if connection is not None and not force and not connection.set(LOCK_KEY, store.worker_id(), nx=True, px=int(interval * 900)):
            return None
        found = store.deployment()
        series = store.history(int(settings.ALERTS.get("WINDOW_MINUTES") or 5) + 1)
        staleness = _staleness_from_this_thread()
        alerts = evaluate(found.view, series, staleness, dict(settings.ALERTS))
        before = {(alert.name, alert.subject) for alert in current()}
        _announce(before, alerts)
        _local[:] = alerts
        if connection is not None and found.complete:
            connection.set(FIRING_KEY, json.dumps([asdict(alert) for alert in alerts], default=str), ex=int(interval * 4) + 1)
    except redis.RedisError as error:
        logger.debug("alerts not shared: %s", error)
    return list(_local)


def current() -> list[Alert]:
    """The alerts firing now, as last evaluated by any worker (this process's own evaluation when Redis does not answer)."""
    from .telemetry import store

    connection = store.client()
    if connection is None:
        return list(_local)
    try:
        raw = connection.get(FIRING_KEY)
    except redis.RedisError:
        return list(_local)
    if raw is None:
        return []
    return [Alert(**{**item, "value": float(item["value"]), "threshold": float(item["threshold"])}) for item in json.loads(raw)]


def _tick() -> None:
    """One evaluation on the publisher thread, whose database connection is closed again at once.

    A connection left open by a background thread is never closed by Django's
    request cycle, and would hold the database (a test's DROP DATABASE waits on it).
    """
    from django.db import connections

    try:
        check_now()
    finally:
        connections.close_all()


def install() -> None:
    """Evaluate on the publisher thread's every tick."""
    from .telemetry import publisher

    if _tick not in publisher.on_tick:
        publisher.on_tick.append(_tick)


__all__ = ["ALERT_NAMES", "Alert", "check_now", "current", "evaluate", "install"]
