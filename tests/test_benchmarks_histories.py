"""benchmarks/histories.py runs and writes a well-formed report (shape only: its figures are judged in the full run)."""

from __future__ import annotations

import math

from tests.test_benchmarks_run import load, run_quick, section


def test_histories_quick_run_reports_every_scenario(tmp_path):
    run_quick("benchmarks.histories", out=tmp_path)
    markdown, data = load(tmp_path, "histories")
    rows = section(data, "Stale reads per scenario")["rows"]
    assert [row["scenario"] for row in rows] == [
        "none", "none, no proxy", "none, readers spinning", "kill", "stop", "silent-socket", "flush", "restore",
        "cluster: none", "cluster: node-stop", "cluster: node-kill",
    ]
    for row in rows:
        assert row["reads"] > 0 and row["operations"] >= row["reads"]
        assert all(math.isfinite(row[column]) for column in ("stale %", "p50 stale ms", "p99 stale ms", "worst ms"))
        assert row["verdict"] in ("PASS", "FAIL")
    assert "scenarios stay within the spec's bound" in markdown
