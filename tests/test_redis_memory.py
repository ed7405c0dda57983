"""Redis memory per data type (``velro_cache.telemetry.memory``, ``velro_stats --memory``), on a real Redis and Cluster.

Keys are counted exactly, memory from ``MEMORY USAGE`` of a bounded sample;
a retired namespace's reclaimed keys no longer count.
"""

from __future__ import annotations

import json
import os
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

from tests.settings import redis_url
from velro_cache import namespaces
from velro_cache.reads import cached_read
from velro_cache.telemetry.memory import redis_memory

pytestmark = pytest.mark.django_db(databases=[])


def test_memory_is_reported_per_data_type_with_exact_key_counts(l2_cache):
    cache = l2_cache
    cache.set_many({f"rmsmall:{i}": i * 1.5 for i in range(30)}, 600)
    cache.set_many({f"rmlarge:{i}": os.urandom(5000) for i in range(7)}, 600)  # incompressible
    memory = redis_memory(cache, sample_per_type=10)
    assert memory["rmsmall"]["keys"] == 30 and memory["rmsmall"]["sampled"] == 10
    assert memory["rmlarge"] == {"keys": 7, "sampled": 7, "bytes": memory["rmlarge"]["bytes"]}
    assert memory["rmlarge"]["bytes"] > 7 * 5000 > memory["rmsmall"]["bytes"] > 0


def test_reclaimed_keys_leave_the_memory_report(l2_cache):
    cache = l2_cache
    for round_number in range(10):
        cached_read("rmgen:1:meta", lambda n=round_number: "v" * 2000 + str(n), timeout=600, cache=cache)
        namespaces.retire(cache, ["rmgen"])
    cached_read("rmgen:1:meta", lambda: "v" * 2000, timeout=600, cache=cache)
    assert redis_memory(cache)["rmgen"]["keys"] == 1  # before reclaiming: 11, one per token


def test_velro_stats_memory_lists_each_tiered_cache_with_redis():
    caches = {
        "default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(6), "KEY_PREFIX": "velro-memory-tests"},
        "l1only": {"BACKEND": "velro_cache.backends.TieredCache", "KEY_PREFIX": "velro-memory-l1"},
    }
    with override_settings(CACHES=caches):
        from django.core.cache import caches as configured

        configured["default"].clear()
        configured["default"].set_many({f"rmcmd:{i}": {"i": i} for i in range(4)}, 600)
        out = StringIO()
        call_command("velro_stats", "--memory", "--json", stdout=out)
        memory = json.loads(out.getvalue())["redis_memory"]
        assert set(memory) == {"default"}
        assert memory["default"]["rmcmd"]["keys"] == 4 and memory["default"]["rmcmd"]["bytes"] > 0
        table = StringIO()
        call_command("velro_stats", "--memory", stdout=table)
        assert "rmcmd" in table.getvalue() and "keys in Redis" in table.getvalue()
        configured["default"].clear()
