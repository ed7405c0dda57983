"""Alerts: each threshold of ``VELRO_CACHE["ALERTS"]`` fires on the figures that cross it, and only then.

The rules (``velro_cache.alerts.evaluate``) are checked on combined views built
the way ``telemetry.combine`` builds them; the breaker rule on a real cache
whose Redis port does not answer; the firing path (logged once, shared through
Redis, exported as ``velro_cache_alert_firing``) against the real Redis.
"""

from __future__ import annotations

import logging

import pytest
from django.core.cache import caches
from prometheus_client import CollectorRegistry, generate_latest

from tests.settings import redis_url
from tests.support import caches_in_force
from velro_cache import alerts
from velro_cache.conf import DEFAULT_ALERTS
from velro_cache.stats import LATENCY_BUCKETS
from velro_cache.telemetry import combine, deployment, minute_series
from velro_cache.telemetry.prometheus import DeploymentCollector

REDIS_DB = 3
LIMITS = dict(DEFAULT_ALERTS)


def worker(by_type: dict, *, l1_bytes: int = 0, max_bytes: int = 1000, evictions: int = 0, l1_latency_bucket: int = 3) -> dict:
    counts = [0] * len(LATENCY_BUCKETS)
    counts[l1_latency_bucket] = 100
    return {
        "worker": "w1",
        "started_at": 0,
        "caches": {
            "default": {
                "by_type": by_type,
                "latency": {"l1": {"buckets": list(zip(LATENCY_BUCKETS, counts)), "overflow": 0, "sum": 0.0}},
                "l1": {"bytes": l1_bytes, "max_bytes": max_bytes, "entries": 10, "evictions": evictions},
                "l2": {"enabled": False},
            }
        },
    }


def row(hits: int, misses: int) -> dict:
    return {"l1_hits": hits, "l2_hits": 0, "misses": misses, "corrupt": 0, "requests": hits + misses}


def figures(before: dict, after: dict) -> tuple[dict, list]:
    """The combined view of ``after`` and a two-minute series whose only traffic is ``after - before``."""
    series = minute_series({100: {"w1": before}, 101: {"w1": after}})
    return combine([after]), series


def names(found: list) -> list[str]:
    return [alert.name for alert in found]


def test_a_low_hit_rate_with_a_full_evicting_l1_recommends_a_bigger_l1():
    view, series = figures(worker({"gen": row(0, 0)}), worker({"gen": row(300, 700)}, l1_bytes=990, max_bytes=1000, evictions=5000))
    found = alerts.evaluate(view, series, {}, LIMITS)
    assert names(found) == ["hit_rate_low"]
    assert "MAX_BYTES" in found[0].recommendation and found[0].value == pytest.approx(0.3)


def test_a_low_hit_rate_of_one_data_type_with_room_in_l1_points_at_its_ttl():
    view, series = figures(worker({"gen": row(0, 0), "auth": row(0, 0)}), worker({"gen": row(50, 900), "auth": row(400, 0)}, l1_bytes=10))
    found = alerts.evaluate(view, series, {}, LIMITS)
    assert names(found) == ["hit_rate_low"]
    assert "'gen'" in found[0].recommendation and "TTL" in found[0].recommendation and "300 s" in found[0].recommendation


def test_a_good_hit_rate_or_too_few_reads_fire_nothing():
    view, series = figures(worker({"gen": row(0, 0)}), worker({"gen": row(950, 50)}))
    assert alerts.evaluate(view, series, {}, LIMITS) == []
    view, series = figures(worker({"gen": row(0, 0)}), worker({"gen": row(10, 50)}))
    assert alerts.evaluate(view, series, {}, LIMITS) == []  # 60 reads say nothing yet


def test_l1_p95_above_its_threshold_fires_and_none_turns_it_off():
    slow_bucket = LATENCY_BUCKETS.index(2.5e-3)
    view, series = figures(worker({"gen": row(0, 0)}), worker({"gen": row(990, 10)}, l1_latency_bucket=slow_bucket))
    assert names(alerts.evaluate(view, series, {}, LIMITS)) == ["l1_p95_high"]
    assert alerts.evaluate(view, series, {}, {**LIMITS, "L1_P95_ABOVE": None}) == []


def test_evictions_per_minute_above_the_threshold_fire():
    view, series = figures(worker({"gen": row(0, 0)}, evictions=0), worker({"gen": row(990, 10)}, evictions=20_000))
    assert names(alerts.evaluate(view, series, {}, LIMITS)) == ["evictions_high"]


def test_a_view_never_refreshed_or_older_than_the_threshold_fires():
    view, series = figures(worker({}), worker({}))
    found = alerts.evaluate(view, series, {"fresh": 10.0, "old": 7200.0, "never": None}, LIMITS)
    assert sorted(alert.subject for alert in found) == ["never", "old"]
    assert all("velro_refresh_views" in alert.recommendation for alert in found)


def test_an_open_breaker_on_a_dead_redis_fires():
    dead = {"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": "redis://127.0.0.1:1/0", "KEY_PREFIX": "alerts-dead"}}
    with caches_in_force(dead):
        cache = caches["default"]
        for index in range(20):
            cache.get(f"gen:{index}")  # each failed call counts toward opening the breaker
        found = deployment()
    assert not found.complete
    assert "breaker_open" in names(alerts.evaluate(found.view, [], {}, LIMITS))


@pytest.fixture
def alert_redis():
    config = {"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB), "KEY_PREFIX": "alerts"}}
    limits = {"ALERTS": {"HIT_RATE_BELOW": None, "VIEW_STALENESS_ABOVE": 1}}
    with caches_in_force(config, flush=redis_url(REDIS_DB), VELRO_CACHE=limits) as client:
        yield client
    alerts._local.clear()


@pytest.mark.django_db
def test_a_firing_is_logged_once_shared_through_redis_and_exported(alert_redis, caplog):
    """The example project's views have an empty refresh log in the test database: each is stale."""
    from velro_cache.db.registry import all_views

    views = all_views()
    assert views, "the test project declares no materialized view"
    with caplog.at_level(logging.WARNING, logger="velro_cache.alerts"):
        first = alerts.check_now(force=True)
        alerts.check_now(force=True)
    assert sorted(alert.subject for alert in first or []) == sorted(views)
    assert len(caplog.records) == len(views)  # the second evaluation found nothing new to say
    assert all("never refreshed" in record.getMessage() for record in caplog.records)
    assert {alert.subject for alert in alerts.current()} == set(views)  # what another worker reads from Redis

    registry = CollectorRegistry()
    registry.register(DeploymentCollector())
    exported = generate_latest(registry).decode()
    assert 'velro_cache_alert_firing{alert="view_stale"} 1.0' in exported
    assert 'velro_cache_alert_firing{alert="breaker_open"} 0.0' in exported


def test_only_one_worker_evaluates_per_interval(alert_redis):
    alert_redis.set(alerts.LOCK_KEY, "another-worker", px=5000)
    assert alerts.check_now() is None
