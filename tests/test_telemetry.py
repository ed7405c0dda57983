"""Statistics across worker processes: real processes publish to a real Redis, one view adds them up.

Each worker here is an OS process (``python -m tests.metrics_site N``) with its
own TieredCache and counters; it reads, publishes once, and exits. The test
process then asks ``velro_cache.telemetry.deployment()``, which must report
every worker's reads exactly, summed, next to its own. The per-minute series is
checked on samples written by real publishes, including a worker that
restarts between two minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.cache import caches
from django.test import override_settings

from tests.settings import redis_url
from tests.support import caches_in_force
from velro_cache.telemetry import combine, deployment, history, minute_series, process_snapshot, store

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 5
TELEMETRY_CACHES = {
    "default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB), "KEY_PREFIX": "velro-telemetry-tests"},
}


@pytest.fixture
def telemetry_redis():
    """This suite's Redis database, empty, and the test process's caches pointed at it."""
    with caches_in_force(TELEMETRY_CACHES, flush=redis_url(REDIS_DB)) as client:
        yield client


def run_worker(reads: int, *, interval: str = "0", publish: bool = True) -> str:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.metrics_site",
        "VELRO_METRICS_REDIS": redis_url(REDIS_DB),
        "VELRO_METRICS_INTERVAL": interval,  # "0": no thread, the worker publishes once, by hand
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "tests.metrics_site", str(reads), *([] if publish else ["--no-publish"])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_deployment_view_adds_up_every_workers_reads(telemetry_redis):
    workers = [run_worker(reads) for reads in (30, 50, 70)]
    own = caches["default"]
    for index in range(5):
        own.get(f"auth:own:{index}")

    found = deployment()

    assert found.complete
    assert {row["worker"] for row in found.view["workers"]} >= set(workers)
    cache = found.view["caches"]["default"]
    # The first worker misses gen:0..9 once each and sets them; every other read is a hit in some tier.
    generation = cache["by_type"]["gen"]
    assert generation["requests"] == 150
    assert generation["misses"] == 10
    assert generation["l1_hits"] + generation["l2_hits"] == 140
    assert cache["by_type"]["auth"]["requests"] == 5
    assert cache["workers"] == 4
    assert cache["sets"] >= 10


def test_a_publishing_process_that_exits_before_its_next_tick_still_leaves_its_figures(telemetry_redis):
    """velro_demo, a command, a recycled worker: its last seconds must reach the history."""
    worker = run_worker(25, interval="300", publish=False)  # the thread would tick only in 5 minutes
    found = deployment()
    assert worker in {row["worker"] for row in found.view["workers"]}
    assert found.view["caches"]["default"]["by_type"]["gen"]["requests"] == 25


def test_a_worker_that_stopped_publishing_leaves_the_view(telemetry_redis):
    worker = run_worker(10)
    with override_settings(CACHES=TELEMETRY_CACHES, VELRO_CACHE={"TELEMETRY_INTERVAL": 0.1}):
        time.sleep(10.5)  # three intervals, but never less than ten seconds
        found = deployment()
    assert worker not in {row["worker"] for row in found.view["workers"]}


def test_with_redis_down_the_view_is_this_process_alone_and_says_so():
    dead = {"default": {**TELEMETRY_CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    store.reset_clients()
    with override_settings(CACHES=dead):
        caches["default"].get("gen:1")
        started = time.monotonic()
        found = deployment()
        elapsed = time.monotonic() - started
    store.reset_clients()
    assert not found.complete and found.error
    assert [row["pid"] for row in found.view["workers"]] == [os.getpid()]
    assert found.view["caches"]["default"]["totals"]["requests"] >= 1
    assert elapsed < 3  # short timeouts: a dashboard still answers


def test_per_minute_samples_in_redis_give_the_traffic_of_each_minute_across_a_restart(telemetry_redis):
    """Samples as the publisher writes them, placed in three past minutes, with a restart in between."""
    now_minute = int(time.time() // 60)
    base = process_snapshot()

    def sample(worker: str, started_minute: int, l1_hits: int, misses: int) -> dict:
        snapshot = json.loads(json.dumps(base))
        snapshot.update(worker=worker, started_at=started_minute * 60 + 1)
        snapshot["caches"] = {"default": {"by_type": {"gen": {"l1_hits": l1_hits, "l2_hits": 0, "misses": misses, "corrupt": 0, "requests": l1_hits + misses}}}}
        return snapshot

    old_a = sample("a", now_minute - 50, 1000, 100)  # started long before the window: a baseline
    minutes = {
        now_minute - 3: {"a": old_a},
        now_minute - 2: {"a": sample("a", now_minute - 50, 1600, 110)},  # +600 hits, +10 misses
        now_minute - 1: {"a2": sample("a2", now_minute - 1, 40, 5)},  # a restarted as a2: counts from zero
    }
    for minute, workers in minutes.items():
        telemetry_redis.hset(store.minute_key(minute), mapping={worker: json.dumps(snapshot) for worker, snapshot in workers.items()})

    series = history(10)

    by_minute = {point["minute"]: point["caches"].get("default", {}).get("totals") for point in series}
    assert now_minute - 3 not in by_minute  # a baseline only
    assert by_minute[now_minute - 2]["l1_hits"] == 600 and by_minute[now_minute - 2]["misses"] == 10
    assert by_minute[now_minute - 1]["requests"] == 45
    assert by_minute[now_minute - 1]["hit_rate"] == pytest.approx(40 / 45)


def test_a_publish_keeps_a_bounded_per_minute_sample(telemetry_redis):
    with override_settings(CACHES=TELEMETRY_CACHES, VELRO_CACHE={"TELEMETRY_RETENTION": 2}):
        assert store.publish()
    keys = telemetry_redis.keys(store.minute_key(int(time.time() // 60) - 1)[:-3] + "*")
    assert keys
    assert 0 < telemetry_redis.ttl(keys[-1]) <= 3 * 60


def test_quantiles_come_from_summed_buckets_not_averaged_percentiles():
    fast_counts = [0] * 20
    fast_counts[3] = 99  # 99 reads at 10 us
    slow_counts = [0] * 20
    slow_counts[15] = 1  # one at 100 ms
    from velro_cache.stats import LATENCY_BUCKETS

    def worker(counts: list[int]) -> dict:
        return {"caches": {"default": {"latency": {"l1": {"buckets": list(zip(LATENCY_BUCKETS, counts[:-1])), "overflow": counts[-1], "sum": 0.0}}}}}

    view = combine([worker(fast_counts), worker(slow_counts)])
    assert view["caches"]["default"]["latency"]["l1"]["p95"] == LATENCY_BUCKETS[3]
    assert view["caches"]["default"]["latency"]["l1"]["p99"] == LATENCY_BUCKETS[3]
    assert view["caches"]["default"]["latency"]["l1"]["count"] == 100
    assert minute_series({}) == []


def test_the_ttls_workers_gave_add_up_per_data_type_and_a_bad_row_is_skipped():
    """The dashboard's and velro_stats's adaptive-TTL table: every worker's sums (``ttl.effect_sums``) added, then averaged."""
    one = {"ttl": {"generation": {"ttls": 3, "seconds": 2700.0, "factors": 9.0, "shortened": 0, "lengthened": 3}}}
    two = {"ttl": {"generation": {"ttls": 1, "seconds": 150.0, "factors": 0.5, "shortened": 1, "lengthened": 0}, "junk": "not a row"}}
    [row] = combine([one, two, {}])["ttl"]
    assert row == {
        "data_type": "generation", "base_seconds": 300, "ttls": 4, "mean_factor": 9.5 / 4, "mean_seconds": 2850 / 4,
        "shortened": 1, "lengthened": 3,
    }  # fmt: skip
