"""`velro_stats` and `velro_bench`: the deployment's figures as a table, as JSON, repeatedly, and after a load run.

A real worker process (``python -m tests.metrics_site``) reads and publishes to
the real Redis; the commands run in this process and must show its reads next
to their own. With Redis down, the table says it shows one process only.
"""

from __future__ import annotations

import json
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from tests.settings import redis_url
from tests.support import caches_in_force
from tests.test_telemetry import run_worker
from velro_cache.telemetry import store

REDIS_DB = 5  # the worker of tests.test_telemetry publishes here
CACHES = {"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB), "KEY_PREFIX": "velro-stats-tests"}}


@pytest.fixture
def published():
    with caches_in_force(CACHES, flush=redis_url(REDIS_DB)):
        yield run_worker(40)


def command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_json_adds_the_other_workers_reads_and_lists_each_worker(published):
    report = json.loads(command("velro_stats", "--json"))
    assert report["complete"] is True
    assert published in [row["worker"] for row in report["workers"]]
    assert report["caches"]["default"]["by_type"]["gen"]["requests"] == 40
    assert report["alerts"] == []


def test_the_table_shows_hit_rate_per_data_type_and_a_row_per_worker(published):
    text = command("velro_stats")
    assert "hit rate" in text and "gen" in text
    assert published in text
    assert "Redis does not answer" not in text


def test_the_table_shows_what_adaptive_ttl_made_of_each_data_types_ttl(published):
    from velro_cache import ttl

    ttl.reset_effect()
    try:
        with override_settings(VELRO_CACHE={"TTL_JITTER": 0}):
            ttl.ttl_for(f"generation:{uuid.uuid4().hex}:meta")  # a subject no test read or changed: the table's 300 s, x1
        text = command("velro_stats")
        report = json.loads(command("velro_stats", "--json"))
    finally:
        ttl.reset_effect()
    assert "adaptive TTL, per data type:" in text
    [line] = [line for line in text.splitlines() if line.strip().startswith("generation")]
    assert line.split() == ["generation", "300", "1", "x1.00", "300", "0", "0"]
    assert report["ttl"] == [
        {"data_type": "generation", "base_seconds": 300, "ttls": 1, "mean_factor": 1.0, "mean_seconds": 300.0, "shortened": 0, "lengthened": 0}
    ]


def test_watch_redraws_until_told_to_stop(published):
    text = command("velro_stats", "--watch", "0.05", "--count", "3")
    assert text.count("no alerts firing") == 3  # the last line of each report


def test_history_prints_a_row_per_minute(published):
    report = json.loads(command("velro_stats", "--json", "--history", "5"))
    # The worker started this minute, so its reads count from zero in this minute's point.
    generation = [point["caches"]["default"]["by_type"].get("gen", {}).get("requests", 0) for point in report["history"]]
    assert sum(generation) == 40
    assert "minute (UTC)" in command("velro_stats", "--history", "5")


def test_with_redis_down_the_table_says_it_is_this_process_only():
    store.reset_clients()
    dead = {"default": {**CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    with override_settings(CACHES=dead):
        text = command("velro_stats")
    store.reset_clients()
    assert "Redis does not answer" in text and "this process's figures only" in text


def test_velro_bench_reads_what_it_wrote_and_the_cache_counted_the_same_reads(published):
    report = json.loads(command("velro_bench", "--seconds", "0.3", "--keys", "200", "--json"))
    (run,) = report["runs"]
    assert run["reads"] > 1000 and run["hits"] == run["reads"]
    assert run["p50"] <= run["p95"] <= run["p99"]
    counted = report["caches"]["default"]["by_type"]["velro_bench"]
    assert counted["requests"] >= run["reads"]
    assert counted["l1_hits"] + counted["l2_hits"] >= run["hits"]


def test_velro_bench_refuses_an_alias_that_is_not_a_tiered_cache():
    with pytest.raises(CommandError, match="Not a TieredCache alias"):
        command("velro_bench", "--cache", "nope")
