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
