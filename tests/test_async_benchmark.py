"""``benchmarks.async_paths`` runs and writes well-formed results (shape only, never a timing)."""

from __future__ import annotations

from pathlib import Path

from tests.test_benchmarks_run import assert_positive, load, run_quick, section

PATHS = ("Tiered async", "Tiered sync", "Tiered thread hop", "django-redis async", "django-redis sync")


def test_async_paths(tmp_path: Path) -> None:
    run_quick("benchmarks.async_paths", out=tmp_path)
    _, data = load(tmp_path, "async")
    latency = section(data, "Latency per call")
    assert {row["operation"] for row in latency["rows"]} == {"get (L1 hit)", "get (L2 hit)", "set", "get_many(10) (L2 hits)", "incr"}
    for row in latency["rows"]:
        assert_positive(row, [f"{path} µs" for path in PATHS] + ["async × sync", "async × thread hop", "async × django-redis async"])
    burst = {row["path"]: row["loader runs"] for row in section(data, "32 coroutines missing one key")["rows"]}
    assert burst["Tiered async"] == 1  # single flight: a behaviour, not a timing
    assert burst["django-redis async"] > 1
    for row in section(data, "Throughput")["rows"]:
        assert_positive(row, ["gets/s"])
    cluster = section(data, "On a Redis Cluster")
    assert {row["operation"] for row in cluster["rows"]} == {"aget (L2 hit)", "aset", "aget_many(10) (L2 hits)"}
    for row in cluster["rows"]:
        paths = [f"{path} µs" for path in ("cluster async", "cluster thread hop", "cluster sync")]
        assert_positive(row, paths + ["async × thread hop", "async × sync"])
