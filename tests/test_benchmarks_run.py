"""The benchmarks run and write well-formed results.

Only the shape is checked (sections, rows, finite numbers, machine info),
never a timing: a smoke run's numbers are noise, and budgets are judged by the
full runs whose results are committed under benchmarks/results.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import ROOT, STAT_COLUMNS
from tests.settings import redis_url

TIMEOUT = 240
BENCH_REDIS_DB = 14  # the benchmarks' database, on the tests' Redis


def run_quick(*args: str, out: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``python -m <args> --quick --out <out>`` without the test suite's Django settings.

    The benchmarks use the Redis the tests use (not a default port a fresh
    machine may not have), so a smoke run never skips. The run is its own
    process group: one that overruns ``timeout`` first dumps every thread's
    stack (faulthandler, on SIGABRT) into the failure message, so a hang says
    where it hangs, then the whole group goes, the gunicorn it started with it.
    """
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["VELRO_BENCH_REDIS_URL"] = redis_url(BENCH_REDIS_DB)
    env["PYTHONFAULTHANDLER"] = "1"
    command = [sys.executable, "-m", *args, "--quick", "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stacks_then_kill(process)
        pytest.fail(f"{' '.join(args)} --quick ran past {timeout:g} s; its stacks and output:\n{stdout[-3000:]}{stderr[-12000:]}")
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _stacks_then_kill(process: subprocess.Popen) -> tuple[str, str]:
    """SIGABRT to the benchmark (faulthandler prints its threads), then SIGKILL to its whole process group."""
    import signal

    process.send_signal(signal.SIGABRT)
    try:
        stdout, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", ""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    return stdout or "", stderr or ""


def load(out: Path, name: str) -> tuple[str, dict]:
    markdown = (out / f"{name}.md").read_text()
    data = json.loads((out / f"{name}.json").read_text())
    assert data["benchmark"] == name
    assert data["quick"] is True
    machine = data["machine"]
    assert machine["nproc"] >= 1 and machine["python"] and machine["date"] and machine["packages"]["django"]
    for heading in ("## Machine", "- nproc:", "- python:", "- django:", "- redis-server:", "- date:"):
        assert heading in markdown
    return markdown, data


def section(data: dict, title_start: str) -> dict:
    matches = [s for s in data["sections"] if s["title"].startswith(title_start)]
    assert len(matches) == 1, [s["title"] for s in data["sections"]]
    found = matches[0]
    assert found["rows"], f"{title_start}: no rows"
    for row in found["rows"]:
        assert set(row) <= set(found["columns"])
    return found


def assert_positive(row: dict, columns: list[str]) -> None:
    for column in columns:
        value = row[column]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (column, row)


def assert_budgets_well_formed(markdown: str, data: dict) -> None:
    assert data["budgets"], "no budget was checked"
    for budget in data["budgets"]:
        assert isinstance(budget["ok"], bool) and budget["name"] and budget["detail"]
        assert f"{'PASS' if budget['ok'] else 'FAIL'}: {budget['name']}" in markdown
    assert "## Budgets" in markdown


def test_latency(tmp_path: Path) -> None:
    run_quick("benchmarks.latency", out=tmp_path)
    markdown, data = load(tmp_path, "latency")
    assert_budgets_well_formed(markdown, data)

    gets = section(data, "get on an L1 hit: distribution")
    backends = {row["backend"] for row in gets["rows"]}
    assert {"LocMemCache", "TieredCache L1", "DummyCache (floor)"} <= backends
    assert len({row["value"] for row in gets["rows"]}) == 8  # sample_values and the record page
    for row in gets["rows"]:
        assert_positive(row, [*STAT_COLUMNS, "× LocMem (median)"])
    assert section(data, "Budgets: get on an L1 hit")["rows"][0]["L1 ratio ≤ 0.25"] in ("PASS", "FAIL")
    for row in section(data, "get_many of 10")["rows"]:
        assert_positive(row, STAT_COLUMNS)
    for row in section(data, "set (informational")["rows"]:
        assert_positive(row, STAT_COLUMNS)


@pytest.mark.redis
def test_l2(tmp_path: Path) -> None:
    run_quick("benchmarks.l2", out=tmp_path)
    markdown, data = load(tmp_path, "l2")
    assert_budgets_well_formed(markdown, data)

    gets = section(data, "get of a first read (written by another process)")
    assert {row["backend"] for row in gets["rows"]} == {"TieredCache", "django-redis", "Django RedisCache"}
    for row in gets["rows"]:
        assert_positive(row, [*STAT_COLUMNS, "× django-redis (median)", "× Django (median)"])
    # Only meaningful if every TieredCache get of the keys the writer process wrote went to L2 (a first read).
    assert any("every one was an L2 hit" in note for note in gets["notes"]), gets["notes"]

    batches = section(data, "Batches of 100 keys")
    assert {row["operation"] for row in batches["rows"]} == {"get_many(100)", "set_many(100)", "delete_many(100)"}
    for row in batches["rows"]:
        assert_positive(row, STAT_COLUMNS)

    stages = section(data, "Where an L2-hit get spends its time")
    assert {"whole get (L2 hit)", "decode body", "frame: parse + verify MAC"} <= {row["stage"] for row in stages["rows"]}
    for row in stages["rows"]:
        assert_positive(row, ["median µs", "p99 µs"])

    trips = section(data, "Redis round trips per call")
    assert len(trips["rows"]) == 12
    for row in trips["rows"]:
        assert_positive(row, ["round trips / call"])


def test_miss_path(tmp_path: Path) -> None:
    run_quick("benchmarks.miss_path", out=tmp_path)
    markdown, data = load(tmp_path, "miss_path")
    assert_budgets_well_formed(markdown, data)
    rows = section(data, "Miss, load, set of a fresh key")["rows"]
    assert {row["cache"] for row in rows} >= {"theine 2 (W-TinyLFU, Rust)", "TieredCache L1 (get + set)", "TieredCache L1 (get_or_load)"}
    for row in rows:
        assert_positive(row, [*STAT_COLUMNS, "× theine (median)"])


def test_compression(tmp_path: Path) -> None:
    run_quick("benchmarks.compression", out=tmp_path)
    _, data = load(tmp_path, "compression")
    codecs = section(data, "Codecs per payload")
    assert {row["payload"] for row in codecs["rows"]} == {"2 KiB record", "4 KiB list of records", "16 KiB page of text", "64 KiB blob"}
    assert {"none", "lz4 (block)"} <= {row["codec"] for row in codecs["rows"]}
    for row in codecs["rows"]:
        assert_positive(row, ["body B", "compressed B", "ratio", "compress µs", "decompress µs"])
        if row["codec"] == "none":
            assert row["ratio"] == 1


def test_runner_runs_a_subset_and_reports(tmp_path: Path) -> None:
    done = run_quick("benchmarks", "compression", out=tmp_path)
    assert "compression" in done.stdout.split("=== summary ===")[1]
    assert (tmp_path / "compression.json").exists()


def test_make_bench_runs_every_benchmark_module() -> None:
    """``python -m benchmarks`` (make bench) knows every module with a ``main``, except the workers other benchmarks start."""
    import benchmarks.__main__ as runner

    source = (ROOT / "benchmarks" / "__main__.py").read_text()
    assert source.count("\nMODULES = ") == 1  # a merge once left three assignments, and only the last one ran
    workers = {"l2_writer", "resilience_worker"}  # started by l2 and resilience, not benchmarks of their own
    with_main = {path.stem for path in (ROOT / "benchmarks").glob("*.py") if "\ndef main(" in path.read_text()} - {"__main__"}
    assert with_main - workers == set(runner.MODULES)
