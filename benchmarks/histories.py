"""Histories per fault: the history test's runs, longer and repeated, with the worst staleness each fault allowed.

The same machinery as ``tests/test_history.py`` (``tests.history``): worker
OS processes, each a TieredCache with its own L1, issue versioned writes,
deletes and reads on a few keys through a TCP proxy to a redis-server this
run owns, while a fault is injected for real (none, SIGKILL + restart,
SIGSTOP/SIGCONT, the pub/sub socket held silent, FLUSHALL, a restart from an
older RDB snapshot), and on a three-primary Redis Cluster (no fault, SIGSTOP
or SIGKILL of a primary the listeners do not subscribe through). The checker
marks every read that served a value some
write had replaced before the read began, and its staleness (how long after
that write returned). Each fault runs several rounds with different seeds;
the table gives the totals and the worst round, against the spec's bound.

Run: ``python -m benchmarks.histories`` (about three minutes) or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from . import common
from .common import Report

QUICK = {"rounds": 1, "lead": 0.2, "hold": 0.4, "tail": 0.2}
FULL = {"rounds": 3, "lead": 1.5, "hold": 3.0, "tail": 1.5}


@dataclass(frozen=True)
class Scenario:
    """One row: a fault, and how its histories differ from the default plan."""

    label: str
    fault: str
    overrides: tuple[tuple[str, Any], ...] = ()


SCENARIOS = (
    Scenario("none", "none"),
    Scenario("none, no proxy", "none", (("proxied", False),)),  # the proxy's own delay, as a control
    Scenario("none, readers spinning", "none", (("pause", 0.0), ("writers", 1))),
    Scenario("kill", "kill"),
    Scenario("stop", "stop"),
    Scenario("silent-socket", "silent-socket"),
    Scenario("flush", "flush"),
    Scenario("restore", "restore"),
    # On a three-primary Redis Cluster of the run's own; the fault hits a primary the listeners do not subscribe through.
    Scenario("cluster: none", "cluster-none"),
    Scenario("cluster: node-stop", "node-stop"),
    Scenario("cluster: node-kill", "node-kill"),
)


def run_scenario(scenario: Scenario, plan: dict[str, Any], first_seed: int) -> list[Any]:
    from tests.history.run import Plan, run_history

    outcomes = []
    for round_ in range(plan["rounds"]):
        history = Plan(fault=scenario.fault, seed=first_seed + round_, lead=plan["lead"], hold=plan["hold"], tail=plan["tail"])
        for name, value in scenario.overrides:
            setattr(history, name, value)
        outcome = run_history(history)
        print(f"{scenario.label} round {round_ + 1}: {outcome.verdict.summary(limit=1)}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def _ms(seconds: float) -> float:
    return seconds * 1000


def _percentile_ms(outcomes: list[Any], q: float) -> float:
    samples = sorted(s.staleness for outcome in outcomes for s in outcome.verdict.stale)
    return _ms(common.percentile(samples, q)) if samples else 0.0


def row_for(report: Report, scenario: Scenario, outcomes: list[Any]) -> dict[str, Any]:
    """Totals over the rounds, the worst staleness of any round, and the spec's verdict."""
    from tests.history.faults import FAULT_BOUND, FAULTS

    bound = FAULTS[scenario.fault].bound
    stale = sum(len(outcome.verdict.stale) for outcome in outcomes)
    worst = max(outcome.verdict.worst for outcome in outcomes)
    resurrected = sum(len(outcome.resurrected()) for outcome in outcomes)
    errors = sum(len(outcome.errors) for outcome in outcomes)
    ok = errors == 0 and (stale == 0 if bound.worst == 0 else worst <= bound.worst) and not (bound.no_resurrection and resurrected)
    reads = sum(outcome.verdict.reads for outcome in outcomes)
    return {
        "scenario": scenario.label,
        "rounds": len(outcomes),
        "operations": sum(outcome.verdict.operations for outcome in outcomes),
        "reads": reads,
        "hits": sum(outcome.hits for outcome in outcomes),
        "stale reads": stale,
        "stale %": 100.0 * stale / reads if reads else 0.0,
        "in fault window": sum(len(outcome.within_fault()) for outcome in outcomes),
        "resurrected": resurrected,
        "errors": errors,
        "> 100 ms": sum(1 for outcome in outcomes for s in outcome.verdict.stale if s.staleness > FAULT_BOUND),
        "p50 stale ms": _percentile_ms(outcomes, 0.5),
        "p99 stale ms": _percentile_ms(outcomes, 0.99),
        "worst ms": _ms(worst),
        "spec": bound.describe(),
        "verdict": report.budget(
            f"staleness under {scenario.label}", ok, f"{stale} stale reads, worst {_ms(worst):.1f} ms; spec: {bound.describe()}"
        ),
    }


COLUMNS = ["scenario", "rounds", "operations", "reads", "hits", "stale reads", "stale %", "in fault window", "resurrected",
           "errors", "> 100 ms", "p50 stale ms", "p99 stale ms", "worst ms", "spec", "verdict"]


def _findings(rows: list[dict[str, Any]]) -> list[str]:
    """The report's summary sentences, written from the figures of this run."""
    failing = [row for row in rows if row["verdict"] != common.PASS]
    lines = [f"{len(rows) - len(failing)} of {len(rows)} scenarios stay within the spec's bound."]
    for row in failing:
        lines.append(
            f"- {row['scenario']}: {row['stale reads']:,} stale reads of {row['reads']:,} ({row['stale %']:.2f} %), "
            f"worst {row['worst ms']:.1f} ms" + (f", {row['resurrected']:,} resurrected values" if row["resurrected"] else "")
            + (f", {row['errors']} errors raised" if row["errors"] else "") + f" (spec: {row['spec']})."
        )
    return lines


def _intro(plan: dict[str, Any]) -> list[str]:
    from tests.history.run import Plan

    default = Plan(fault="none", seed=0)
    return [
        "Generated by `python -m benchmarks.histories` from the machinery of `tests/test_history.py` (`tests/history/`).",
        f"Worker OS processes ({default.workers}, {default.threads} threads each; {default.writers} of them write, all read;"
        f" {default.keys} keys) share one redis-server this run starts, through a TCP proxy",
        f"(`tests/tcp_proxy.py`). Each history: {plan['lead']:g} s of traffic, the fault held {plan['hold']:g} s, {plan['tail']:g} s after",
        f"recovery; {plan['rounds']} rounds (seeds) per scenario. A read is stale when a write or delete of its key that",
        "started after the served write returned had itself returned before the read began; its staleness is the time",
        "between that return and the read's start (CLOCK_MONOTONIC, shared by all processes). Misses are never stale.",
        "\"in fault window\": stale reads that began between injection and 1 s after recovery.",
        "Every read is a \"request\" (`tests.history.worker.start_request`); without a request-boundary hook in the",
        "library these are raw cross-process figures. The fault's own plan may differ (`tests/history/faults.py`):",
        "`restore` uses 300 keys, `stop` a read-heavy mix without deletes.",
        "The `cluster:` rows run the same workers on a three-primary Redis Cluster of their own (no proxy; 6 keys spread",
        "over every primary); `node-stop`/`node-kill` SIGSTOP or SIGKILL (and restart) a primary the listeners do not",
        "subscribe through, so their confirmations keep coming from a live node while its keys' writes are held back.",
    ]


def run(args: argparse.Namespace) -> Report:
    plan = QUICK if args.quick else FULL
    report = Report("histories", "Staleness per fault: randomized histories across processes", _intro(plan), quick=args.quick)
    rows = []
    for number, scenario in enumerate(SCENARIOS):
        outcomes = run_scenario(scenario, plan, first_seed=100 * (number + 1))
        rows.append(row_for(report, scenario, outcomes))
    report.table("Stale reads per scenario", COLUMNS, rows, notes=_findings(rows))
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("histories", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
