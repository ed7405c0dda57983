"""benchmarks.warming runs (--quick) and writes well-formed results: the curve's tables, the plan's steps, the PNG.

Only the shape is checked, never a number's size: a smoke run is too short to
judge warming by (the committed full run in benchmarks/results does that).
"""

from __future__ import annotations

import math

import pytest

from tests.test_benchmarks_run import assert_budgets_well_formed, load, run_quick, section

pytestmark = pytest.mark.timeout(300)


def test_warming_benchmark_writes_the_cold_start_curve(tmp_path):
    run_quick("benchmarks.warming", out=tmp_path)
    markdown, data = load(tmp_path, "warming")
    assert_budgets_well_formed(markdown, data)
    first = section(data, "After a cold start")
    for row in first["rows"]:
        for arm in ("no warming", "warmed"):
            assert 0 <= row[f"hit rate, {arm}"] <= 100 and math.isfinite(row[f"queries/request, {arm}"])
    steps = section(data, "What warming loaded")
    assert [row["step"] for row in steps["rows"]] == ["active_users", "recent_generations", "team_memberships", "system_config", "total"]
    windows = section(data, "Per window of")
    assert windows["rows"][0]["requests"].startswith("1-")
    assert (tmp_path / "warming.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![hit rate after a cold start](warming.png)" in markdown
