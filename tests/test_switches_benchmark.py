"""The switches benchmark runs and writes well-formed results (shape only: a smoke run's timings are noise)."""

from __future__ import annotations

from pathlib import Path

from tests.test_benchmarks_run import assert_budgets_well_formed, load, run_quick, section


def test_switches_benchmark_times_the_hit_a_decision_and_the_reach_of_a_change(tmp_path: Path) -> None:
    run_quick("benchmarks.switches", out=tmp_path)
    markdown, data = load(tmp_path, "switches")
    assert_budgets_well_formed(markdown, data)
    hits = section(data, "L1 hit latency")
    cases = [row["case"] for row in hits["rows"]]
    assert cases == ["TieredCache L1 hit, refresher off", "TieredCache L1 hit, refresher on", "LocMemCache get"]
    assert len(section(data, "What a decision costs")["rows"]) == 4
    reach = section(data, "A change reaching")["rows"]
    assert [row["changes"] for row in reach] == [2, 2] and all(row["max s"] >= row["median s"] >= 0 for row in reach)
