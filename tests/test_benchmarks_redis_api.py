"""benchmarks/redis_api.py runs and writes a well-formed report (shape only: its figures are judged in the full run)."""

from __future__ import annotations

from benchmarks.common import STAT_COLUMNS
from tests.test_benchmarks_run import assert_positive, load, run_quick, section

BACKENDS = {"TieredCache L1+L2", "django-redis RedisCache"}


def test_redis_api_quick_run_times_every_call_on_both_backends(tmp_path):
    run_quick("benchmarks.redis_api", out=tmp_path)
    markdown, data = load(tmp_path, "redis_api")
    point = section(data, "Single-key calls")["rows"]
    assert {row["call"] for row in point} == {"ttl", "expire", "set(nx=True), key present", "lock acquire + release"}
    scans = section(data, "Scans")["rows"]
    assert len({row["call"] for row in scans}) == 3
    for row in point + scans:
        assert row["backend"] in BACKENDS
        assert_positive(row, [*STAT_COLUMNS, "× django-redis (median)"])
    assert "SCAN (never KEYS" in markdown
