"""Randomized histories (Jepsen-style): is a replaced value ever served, and for how long, under each fault?

Several worker OS processes, each a TieredCache with its own L1, issue
versioned writes, deletes and reads on a few keys against one real
redis-server (through a TCP proxy), while a fault is injected for real:
none, SIGKILL and restart, SIGSTOP/SIGCONT, a silent pub/sub socket, FLUSHALL,
and a restart from an older RDB snapshot. ``tests.history.checker`` judges
every read: one that started after a write (or delete) of its key had
returned must not serve a value that write replaced. The bound asserted per
fault is the spec's (``tests.history.faults``): 0 stale reads without a fault
and under FLUSHALL, at most 100 ms under kill, stop and a silent socket, and
no resurrected value after a restore. Longer runs: ``benchmarks/histories.py``.

Every read is one "request" starting at ``tests.history.worker.start_request``,
the single place to switch on the library's request-boundary hook.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.history.checker import check
from tests.history.faults import FAULTS
from tests.history.run import Outcome, Plan, run_history

MIN_HITS = 200  # a history whose reads all miss judges nothing: it must not pass for that


def assert_within_bound(outcome: Outcome) -> None:
    """The spec's bound for the history's fault; on failure the worst reads and the seed to replay."""
    bound = FAULTS[outcome.plan.fault].bound
    problems = []
    if outcome.hits < MIN_HITS:
        problems.append(f"only {outcome.hits} reads hit: too few to judge anything")
    if outcome.verdict.impossible:
        problems.append(f"{len(outcome.verdict.impossible)} reads of values no write stored")
    if outcome.errors:
        problems.append(f"the cache raised to its caller {len(outcome.errors)} times")
    if bound.no_resurrection and outcome.resurrected():
        problems.append(f"{len(outcome.resurrected())} reads of values the restored snapshot brought back")
    if bound.worst == 0 and outcome.verdict.stale:
        problems.append(f"{len(outcome.verdict.stale)} stale reads where the spec allows none")
    if bound.worst and outcome.verdict.worst > bound.worst:
        problems.append(f"staleness {outcome.verdict.worst * 1000:.1f} ms, beyond {bound.worst * 1000:.0f} ms")
    if problems:
        pytest.fail(f"{'; '.join(problems)} (spec: {bound.describe()})\n{outcome.describe()}", pytrace=False)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_history_under_fault(fault, tmp_path):
    """One history per fault, fixed seed: what the spec allows under it, and nothing more."""
    outcome = run_history(Plan(fault=fault, seed=1000 + list(FAULTS).index(fault)), tmp_path)
    assert_within_bound(outcome)


def test_randomized_history(tmp_path):
    """Fault, operation mix, keys, pacing and timing drawn from a seed, printed on failure for replay.

    ``VELRO_HISTORY_SEED=<n>`` replays a seed's plan (the interleaving itself
    depends on the scheduler, so a replay reproduces the conditions, not every
    operation's timing).
    """
    seed = int(os.environ.get("VELRO_HISTORY_SEED") or random.SystemRandom().randrange(1 << 30))
    plan = Plan.randomized(seed)
    outcome = run_history(plan, tmp_path)
    assert_within_bound(outcome)


# -- the checker itself: it must catch what it is for, and allow what the spec allows ---------------


def ev(kind, key, ident, start, end, worker=0):
    return [kind, key, ident, start, end, worker]


def test_checker_flags_a_read_of_a_replaced_value():
    verdict = check([ev("w", "k", 1, 0.0, 1.0), ev("w", "k", 2, 2.0, 3.0), ev("r", "k", 1, 3.5, 3.6, 1)])
    assert len(verdict.stale) == 1 and verdict.worst == pytest.approx(0.5)


def test_checker_flags_a_value_read_after_its_delete_returned():
    verdict = check([ev("w", "k", 1, 0.0, 1.0), ev("d", "k", 2, 2.0, 3.0), ev("r", "k", 1, 3.2, 3.3, 1)])
    assert [s.replaced_by.id for s in verdict.stale] == [2] and verdict.worst == pytest.approx(0.2)


def test_checker_allows_concurrent_writes_either_order():
    """w1 overlaps w2: either may have landed last, so reading w1 after both is no violation."""
    verdict = check([ev("w", "k", 1, 0.0, 2.0), ev("w", "k", 2, 1.0, 1.5), ev("r", "k", 1, 3.0, 3.1, 1)])
    assert not verdict.stale


def test_checker_allows_misses_and_reads_overlapping_the_write():
    verdict = check([
        ev("w", "k", 1, 0.0, 1.0), ev("w", "k", 2, 2.0, 3.0),
        ev("r", "k", None, 3.5, 3.6, 1),  # a miss
        ev("r", "k", 1, 2.5, 2.6, 1),  # started before the replacing write returned
        ev("r", "k", 2, 2.5, 2.6, 2),  # saw the write in flight
    ])
    assert not verdict.stale and not verdict.impossible


def test_checker_never_lets_a_failed_write_replace_anything():
    """A write that raised may not have happened: reading the value before it is allowed."""
    verdict = check([ev("w", "k", 1, 0.0, 1.0), ev("w", "k", 2, 2.0, None), ev("r", "k", 1, 5.0, 5.1, 1)])
    assert not verdict.stale


def test_checker_reports_invented_and_future_values():
    verdict = check([ev("w", "k", 1, 0.0, 1.0), ev("r", "k", 7, 2.0, 2.1), ev("r", "k", "'junk'", 2.0, 2.1),
                     ev("w", "j", 3, 5.0, 6.0), ev("r", "j", 3, 1.0, 2.0)])
    assert len(verdict.impossible) == 3


def test_checker_measures_from_the_earliest_replacement():
    verdict = check([ev("w", "k", 1, 0.0, 1.0), ev("w", "k", 2, 1.5, 4.0), ev("w", "k", 3, 1.6, 2.0),
                     ev("r", "k", 1, 5.0, 5.1, 1)])
    assert verdict.worst == pytest.approx(3.0)
