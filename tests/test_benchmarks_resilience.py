"""benchmarks.resilience runs end to end and writes well-formed results.

It starts, kills, pauses and restarts its own redis-servers, so it needs the
binary (as the rest of the suite does) but not the shared Redis. Only the shape is checked, never a timing or
a budget's outcome: a smoke run's numbers are noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_benchmarks_run import (
    assert_budgets_well_formed,
    assert_positive,
    load,
    run_quick,
    section,
)

FAULTS = {"SIGKILL", "SIGSTOP", "SIGKILL, back right after a failed probe"}
WINDOWS = {"before", "outage", "Redis back, L2 not yet", "L2 back", "overall"}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    out: Path = tmp_path_factory.mktemp("resilience")
    run_quick("benchmarks.resilience", out=out)
    return load(out, "resilience")


def test_budgets_cover_every_goal(results: tuple[str, dict]) -> None:
    markdown, data = results
    assert_budgets_well_formed(markdown, data)
    names = " | ".join(budget["name"] for budget in data["budgets"])
    assert "propagation" in names
    for fault in FAULTS:
        for goal in ("zero errors", "p99 < 50 ms (outage)", "p99 < 50 ms (overall)", "back to L2", "no wrong value"):
            assert f"{fault}: {goal}" in names
    assert names.count("one loader call") == 2


def test_propagation_section(results: tuple[str, dict]) -> None:
    rows = section(results[1], "1. Invalidation propagation")["rows"]
    assert len(rows) == 3
    for row in rows:
        assert_positive(row, ["n", "p50 ms", "p99 ms", "max ms"])
        assert row["p50 ms"] <= row["p99 ms"] <= row["max ms"]


def test_fault_sections(results: tuple[str, dict]) -> None:
    _, data = results
    rows = section(data, "2. Redis killed")["rows"]
    assert {(row["fault"], row["window"]) for row in rows} == {(fault, window) for fault in FAULTS for window in WINDOWS}
    for row in rows:
        assert isinstance(row["errors"], int) and isinstance(row["wrong values"], int)
        if row["window"] == "overall":
            assert_positive(row, ["n", "p50 ms", "p99 ms", "max ms", "ops/s", "seconds"])
            assert 0 <= row["hit rate %"] <= 100
    recovery = section(data, "2b. Recovery")["rows"]
    assert {row["fault"] for row in recovery} == FAULTS
    transitions = section(data, "2c. Breaker transitions")["rows"]
    for fault in FAULTS:  # every fault opened the breaker: the run really lost Redis
        assert any(row["fault"] == fault and row["to"] == "open" for row in transitions)


def test_stampede_section(results: tuple[str, dict]) -> None:
    rows = section(results[1], "3. 100 concurrent misses")["rows"]
    assert len(rows) == 6
    assert len({row["backend"] for row in rows}) == 3 and len({row["callers"] for row in rows}) == 2
    for row in rows:
        assert_positive(row, ["rounds", "loader calls (max)", "loader calls (mean)", "wall ms (median)", "wall ms (max)"])
        if row["backend"].startswith("no cache"):
            assert row["loader calls (max)"] == 100  # every caller reads the database: the harness counts right
