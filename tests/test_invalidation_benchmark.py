"""benchmarks.invalidation runs and writes well-formed results (shape only: a smoke run's numbers are noise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT


def test_the_invalidation_benchmark_runs_and_reports(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.invalidation", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "invalidation.json").read_text())
    markdown = (tmp_path / "invalidation.md").read_text()
    assert data["benchmark"] == "invalidation" and data["quick"] is True
    sections = {section["title"].split(":")[0].split(",")[0]: section for section in data["sections"]}
    queries = sections["Queries per request"]
    passes = {row["pass"]: row for row in queries["rows"]}
    assert passes["cached"]["requests"] == passes["caching off"]["requests"] == 300
    assert 0 < passes["cached"]["queries / request"] < passes["caching off"]["queries / request"]
    freshness = sections["Freshness"]["rows"][0]
    assert freshness["reads checked"] > 0 and freshness["stale"] == 0
    assert {b["name"].split(" ")[0] for b in data["budgets"]} == {"≥", "no"}
    assert "## Budgets" in markdown and "PATCH /api/generations/<id>/" in markdown


def test_write_capture_benchmark_counts_the_extra_queries_per_write_path(tmp_path):
    """benchmarks/write_capture.py runs and reports every path; a read never pays a query for capture."""
    from tests.test_benchmarks_run import load, run_quick, section

    run_quick("benchmarks.write_capture", out=tmp_path)
    _, data = load(tmp_path, "write_capture")
    rows = {row["path"]: row for row in section(data, "Per write")["rows"]}
    assert {"save() of one instance", "QuerySet.update, 1 row", "read by pk"} <= set(rows)
    assert any(path.startswith("bulk_update") for path in rows)
    read = rows["read by pk"]
    assert read["queries on"] == read["queries off"]
    save = rows["save() of one instance"]
    assert save["queries on"] - save["queries off"] <= 1
