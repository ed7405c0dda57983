"""L1 hit latency: TieredCache against Django's LocMemCache, on the same values, in one run.

The spec's budget for an in-process hit is relative (median at most 0.25x
LocMemCache's) because LocMemCache is what a Django user would otherwise run,
and a ratio measured in one interleaved run survives a noisy shared machine
where absolute microseconds do not. p99 has an absolute budget (10 us) because
tails are what a request actually waits on.

TieredCache runs twice: L1 only, and with a Redis L2 behind it, where an L1 hit
must cost the same (it never touches Redis; the run checks that no L2 read
happened). DummyCache is the floor: Django's cache API with nothing behind it.

Run: ``python -m benchmarks.latency`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from . import common
from .common import Case, Report
from .shapes import RECORD_PAGE, record_page

LOCMEM, TIERED, TIERED_L2, DUMMY = "LocMemCache", "TieredCache L1", "TieredCache L1+L2", "DummyCache (floor)"
TIERED_MODES = (TIERED, TIERED_L2)

MEDIAN_BUDGET = 0.25  # x LocMemCache's median
P99_BUDGET_US = 10.0

FULL = {"get": 50_000, "set": 5_000, "get_many": 25_000, "rounds": 20}
QUICK = {"get": 2_000, "set": 200, "get_many": 1_000, "rounds": 2}

GET_MANY_KEYS = 10


def _caches(with_l2: bool) -> dict[str, dict[str, Any]]:
    caches = {
        LOCMEM: {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": common.key_prefix("latency")},
        TIERED: {"BACKEND": "velro_cache.backends.TieredCache", "KEY_PREFIX": common.key_prefix("lat-l1")},
        DUMMY: {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
    }
    if with_l2:
        caches[TIERED_L2] = {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": common.REDIS_URL, "KEY_PREFIX": common.key_prefix("lat-l2")}
    return caches


def _l2_reads(cache: Any) -> Counter:
    """L2 hits and misses so far: neither may move while timing L1 hits."""
    totals = cache.stats()["totals"]
    return Counter({"L2 hits": totals["l2_hits"], "misses": totals["misses"]})


RATIO = "× LocMem (median)"
COLUMNS = ["value", "backend", *common.STAT_COLUMNS, RATIO]


def _row(labels: dict[str, str], samples: list[int], baseline: float) -> dict[str, Any]:
    row: dict[str, Any] = {**labels, **common.summarize(samples)}
    row[RATIO] = common.ratio(row["median µs"], baseline)
    return row


def _time_gets(caches: dict[str, Any], values: dict[str, Any], plan: dict[str, int]) -> tuple[dict, dict[str, Counter]]:
    """Per value, per backend: get latencies of an L1 hit, all backends interleaved.

    Also, per value, how many of the L1+L2 mode's gets went to L2: any at all
    means L1 was not serving (e.g. turned off by a lost coherence channel).
    """
    results, l2_reads = {}, {}
    l2_cache = caches.get(TIERED_L2)
    for index, (name, value) in enumerate(values.items()):
        key = f"gen:{index}"
        cases = {}
        for backend, cache in caches.items():
            cache.set(key, value, None)
            cases[backend] = Case(cache.get, (key,))
        before = _l2_reads(l2_cache) if l2_cache is not None else Counter()
        results[name] = common.interleaved(cases, plan["get"], plan["rounds"])
        l2_reads[name] = _l2_reads(l2_cache) - before if l2_cache is not None else Counter()
    return results, l2_reads


SET_TIMEOUT = 300  # seconds: long enough that no timed set's entry expires during the run


def _time_sets(caches: dict[str, Any], values: dict[str, Any], plan: dict[str, int]) -> dict[str, dict[str, list[int]]]:
    results = {}
    for index, (name, value) in enumerate(values.items()):
        key = f"gen:{index}"
        cases = {backend: Case(cache.set, (key, value, SET_TIMEOUT)) for backend, cache in caches.items()}
        results[name] = common.interleaved(cases, plan["set"], plan["rounds"], warmup=100)
    return results


def _time_get_many(caches: dict[str, Any], value: Any, plan: dict[str, int]) -> dict[str, list[int]]:
    keys = [f"gen:many:{i}" for i in range(GET_MANY_KEYS)]
    for cache in caches.values():
        cache.set_many(dict.fromkeys(keys, value), None)
    cases = {backend: Case(cache.get_many, (keys,)) for backend, cache in caches.items()}
    return common.interleaved(cases, plan["get_many"], plan["rounds"])


def _distribution_table(report: Report, title: str, results: dict[str, dict[str, list[int]]], notes: list[str]) -> dict:
    rows, medians = [], {}
    for value_name, by_backend in results.items():
        baseline = common.median_us(by_backend[LOCMEM])
        for backend, samples in by_backend.items():
            row = _row({"value": value_name, "backend": backend}, samples, baseline)
            rows.append(row)
            medians[value_name, backend] = row
    report.table(title, COLUMNS, rows, notes)
    return medians


def _budget_table(report: Report, rows_by: dict, modes: list[str]) -> None:
    """One line per value: the ratio and p99 of each TieredCache mode, with PASS/FAIL."""
    rows = []
    for value_name in dict.fromkeys(name for name, _ in rows_by):
        row: dict[str, Any] = {"value": value_name, "LocMem median µs": rows_by[value_name, LOCMEM]["median µs"]}
        for mode in modes:
            measured = rows_by[value_name, mode]
            tag = "L1" if mode == TIERED else "L1+L2"
            median_ratio, p99 = measured[RATIO], measured["p99 µs"]
            row[f"{tag} median µs"] = measured["median µs"]
            row[f"{tag} mean µs"] = measured["mean µs"]
            row[f"{tag} ratio"] = median_ratio
            row[f"{tag} ratio ≤ {MEDIAN_BUDGET}"] = report.budget(
                f"{mode} get median ≤ {MEDIAN_BUDGET}× LocMem: {value_name}", median_ratio <= MEDIAN_BUDGET, f"{median_ratio:.2f}×"
            )
            row[f"{tag} p99 µs"] = p99
            row[f"{tag} p99 < {P99_BUDGET_US:g} µs"] = report.budget(
                f"{mode} get p99 < {P99_BUDGET_US:g} µs: {value_name}", p99 < P99_BUDGET_US, f"{p99:.2f} µs"
            )
        rows.append(row)
    columns = list(rows[0]) if rows else []
    report.table("Budgets: get on an L1 hit, TieredCache / LocMemCache", columns, rows)


def run(args: argparse.Namespace) -> Report:
    with_l2 = common.redis_answers()
    common.configure_django(_caches(with_l2))
    from django.core.cache import caches as django_caches

    plan = QUICK if args.quick else FULL
    backends = [LOCMEM, TIERED, *([TIERED_L2] if with_l2 else []), DUMMY]
    caches = {name: django_caches[name] for name in backends}
    values = {**common.sample_values(), RECORD_PAGE: record_page()}
    floor = common.timer_floor_ns()

    with common.library_warnings() as logged:
        gets, l2_reads = _time_gets(caches, values, plan)
        get_many = _time_get_many(caches, values["small dict"], plan)
        sets = _time_sets(caches, values, plan)
    if with_l2:  # leave db 14 as we found it
        caches[TIERED_L2].delete_many([f"gen:{i}" for i in range(len(values))] + [f"gen:many:{i}" for i in range(GET_MANY_KEYS)])

    report = Report(
        "latency",
        "L1 hit latency: TieredCache vs Django's LocMemCache",
        [
            "Generated by `python -m benchmarks.latency`. Every call is timed on its own with",
            "`time.perf_counter_ns`, after a warm-up, with the garbage collector off, the backends",
            f"interleaved in {plan['rounds']} rounds (rotating order) so they share the machine's noise.",
            f"Samples: {plan['get']:,} per get cell, {plan['get_many']:,} per get_many cell, {plan['set']:,} per set cell.",
            f"Each figure includes the timer itself: timing an empty call costs {floor:.0f} ns (median).",
            "",
            f"Budgets (spec): median ≤ {MEDIAN_BUDGET}× LocMemCache's on the same value, p99 < {P99_BUDGET_US:g} µs.",
            "Values: see `benchmarks/common.py:sample_values` (sizes are about the msgpack/pickle size)",
            "and `benchmarks/shapes.py:record_page` (30 records with a datetime, a Decimal and nested lists each).",
        ],
        quick=args.quick,
    )
    distribution_notes = common.warnings_note(logged)
    if with_l2:
        missed = {name: count for name, count in l2_reads.items() if count}
        distribution_notes.append(
            "L1+L2 mode: every timed get was an L1 hit (0 L2 reads)."
            if not missed
            else "**L1+L2 mode: some timed gets were not L1 hits**: "
            + "; ".join(f"{name}: " + ", ".join(f"{n:,} {kind}" for kind, n in count.items()) for name, count in missed.items())
        )
    else:
        distribution_notes.append(f"No Redis answered at {common.REDIS_URL}: the L1+L2 mode was skipped.")
    rows_by = _distribution_table(report, "get on an L1 hit: distribution", gets, distribution_notes)
    # The summary reads better first, right after the machine and the budget list.
    _budget_table(report, rows_by, [mode for mode in TIERED_MODES if mode in caches])
    report.tables.insert(0, report.tables.pop())

    many_baseline = common.median_us(get_many[LOCMEM])
    report.table(
        f"get_many of {GET_MANY_KEYS} L1-hit keys (small dict each)",
        COLUMNS[1:],
        [_row({"backend": backend}, samples, many_baseline) for backend, samples in get_many.items()],
    )
    _distribution_table(
        report,
        f"set (informational, timeout {SET_TIMEOUT} s)",
        sets,
        ["In L1+L2 mode a set writes through to Redis, so it costs a round trip."] if with_l2 else [],
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("latency", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
