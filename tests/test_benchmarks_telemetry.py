"""The telemetry benchmark runs and writes well-formed results (shape only: a smoke run's timings are noise)."""

from __future__ import annotations

from pathlib import Path

from tests.test_benchmarks_run import assert_budgets_well_formed, load, run_quick, section


def test_telemetry_benchmark_times_the_hit_with_the_publisher_on_and_off(tmp_path: Path) -> None:
    run_quick("benchmarks.telemetry", out=tmp_path)
    markdown, data = load(tmp_path, "telemetry")
    assert_budgets_well_formed(markdown, data)
    hits = section(data, "L1 hit latency")
    assert [row["case"] for row in hits["rows"]][:2] == ["TieredCache L1 hit, publisher off", "TieredCache L1 hit, publisher on"]
    costs = section(data, "What a publish")
    assert len(costs["rows"]) == 2
