"""The L1 miss path (miss, load, set) of a small value: TieredCache against the fastest W-TinyLFU cache on PyPI.

A cache earns its keep on hits, but every key is first a miss: ``get`` finds
nothing, the caller loads the value, ``set`` admits it (sketch, window,
eviction). Issue 11 asks for that path within 2x of theine (a W-TinyLFU
cache with a Rust core, the fastest such cache for Python on PyPI), measured
side by side. cachebox's LRUCache (Rust, no admission policy) and Django's
LocMemCache are shown for scale; they do less work per miss, or different work.

Every timed call is one fresh key: ``get`` (a miss), the load (the same
trivial loader for every cache: a new small dict), ``set``. The caches are
full before timing starts (capacity ``CAPACITY`` entries; TieredCache is
bounded by bytes, so its ``MAX_BYTES`` is ``CAPACITY`` times the weight it
gives such an entry), so each set also evicts or rejects, as in a warm worker.

TieredCache runs L1 only: with an L2 a miss is a Redis round trip, which
``benchmarks.l2`` measures. Its read-through API (``get_or_load``: single
flight, leases off in L1-only mode) is timed too, since that is how most
reads reach the miss path.

Run: ``python -m benchmarks.miss_path`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Any

from . import common
from .common import Case, Report

CAPACITY = 10_000
BUDGET = 2.0  # TieredCache's miss path median at most this many times theine's

FULL = {"calls": 30_000, "rounds": 10, "warmup": 2_000}
QUICK = {"calls": 1_000, "rounds": 2, "warmup": 200}

THEINE, CACHEBOX, TIERED, TIERED_LOAD, LOCMEM = (
    "theine 2 (W-TinyLFU, Rust)",
    "cachebox LRUCache (Rust)",
    "TieredCache L1 (get + set)",
    "TieredCache L1 (get_or_load)",
    "LocMemCache",
)
RATIO = "× theine (median)"


def load(index: int) -> dict[str, Any]:
    """The value a miss loads: a small record, made fresh each time as a query result would be."""
    return {"id": index, "owner": 17, "status": "done", "ms": 412.5}


def _keys(tag: str, count: int) -> Iterator[str]:
    return iter([f"gen:{tag}:{i}" for i in range(count)])


def _theine_path(cache: Any, keys: Iterator[str]) -> Callable[[], Any]:
    def miss() -> Any:
        key = next(keys)
        value, found = cache.get(key)
        if not found:
            value = load(0)
            cache.set(key, value)
        return value

    return miss


def _cachebox_path(cache: Any, keys: Iterator[str]) -> Callable[[], Any]:
    def miss() -> Any:
        key = next(keys)
        value = cache.get(key)
        if value is None:
            value = load(0)
            cache.insert(key, value)
        return value

    return miss


def _django_path(cache: Any, keys: Iterator[str]) -> Callable[[], Any]:
    def miss() -> Any:
        key = next(keys)
        value = cache.get(key)
        if value is None:
            value = load(0)
            cache.set(key, value, 300)
        return value

    return miss


def _read_through_path(cache: Any, keys: Iterator[str]) -> Callable[[], Any]:
    def miss() -> Any:
        return cache.get_or_load(next(keys), lambda: load(0), 300)

    return miss


def _caches(max_bytes: int) -> dict[str, dict[str, Any]]:
    tiered = {"BACKEND": "velro_cache.backends.TieredCache", "OPTIONS": {"L1": {"MAX_BYTES": max_bytes}}}
    return {
        TIERED: {**tiered, "KEY_PREFIX": common.key_prefix("miss-l1")},
        TIERED_LOAD: {**tiered, "KEY_PREFIX": common.key_prefix("miss-load"), "OPTIONS": {"L1": {"MAX_BYTES": max_bytes + 1}}},
        LOCMEM: {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": common.key_prefix("miss-locmem"),
            "OPTIONS": {"MAX_ENTRIES": CAPACITY},
        },
    }


def _cases(plan: dict[str, int]) -> dict[str, Case]:
    import cachebox
    from django.core.cache import caches
    from theine import Cache as Theine

    count = plan["warmup"] + plan["calls"] + plan["rounds"]
    theine, lru = Theine(CAPACITY), cachebox.LRUCache(CAPACITY)
    paths = {
        THEINE: _theine_path(theine, _keys("theine", count)),
        CACHEBOX: _cachebox_path(lru, _keys("cachebox", count)),
        TIERED: _django_path(caches[TIERED], _keys("tiered", count)),
        TIERED_LOAD: _read_through_path(caches[TIERED_LOAD], _keys("load", count)),
        LOCMEM: _django_path(caches[LOCMEM], _keys("locmem", count)),
    }
    for fill in (theine.set, lru.insert):
        for i in range(CAPACITY):
            fill(f"gen:fill:{i}", load(i))
    for name in (TIERED, TIERED_LOAD, LOCMEM):
        caches[name].set_many({f"gen:fill:{i}": load(i) for i in range(CAPACITY)}, 300)
    return {name: Case(path) for name, path in paths.items()}


def run(args: argparse.Namespace) -> Report:
    plan = QUICK if args.quick else FULL
    report = Report(
        "miss_path",
        "L1 miss path (miss, load, set) of a small value: TieredCache vs theine's W-TinyLFU",
        [
            "Generated by `python -m benchmarks.miss_path`. One fresh key per timed call: get (a miss), the same",
            "trivial load for every cache, set; each cache full at "
            f"{CAPACITY:,} entries before timing, so every set also admits or evicts.",
            f"Backends interleaved in {plan['rounds']} rounds, {plan['calls']:,} calls each, each call timed on its own.",
            f"Budget (issue 11 item 5): TieredCache's median at most {BUDGET:g}× theine's.",
        ],
        quick=args.quick,
    )
    common.configure_django(_caches(_probe_weight_bytes()))
    cases = _cases(plan)
    samples = common.interleaved(cases, plan["calls"], plan["rounds"], warmup=plan["warmup"])
    _table(report, samples)
    return report


def _probe_weight_bytes() -> int:
    """CAPACITY times the bytes TieredCache charges one loaded entry (its keys are the same length)."""
    from velro_cache.backends import ENTRY_OVERHEAD
    from velro_cache.tiers.copying import plan_copy

    _, size = plan_copy(load(0))
    return CAPACITY * (size + sys.getsizeof(f"{common.key_prefix('miss-l1')}:1:gen:tiered:{CAPACITY}") + ENTRY_OVERHEAD)


def _table(report: Report, samples: dict[str, list[int]]) -> None:
    baseline = common.median_us(samples[THEINE])
    rows = []
    for name, timed in samples.items():
        row: dict[str, Any] = {"cache": name, **common.summarize(timed)}
        row[RATIO] = ratio = common.ratio(row["median µs"], baseline)
        if name in (TIERED, TIERED_LOAD):
            check = f"{name} miss path within {BUDGET:g}× theine (median)"
            row[f"≤ {BUDGET:g}× theine"] = report.budget(check, ratio <= BUDGET, f"{ratio:.2f}×")
        rows.append(row)
    notes = [
        "theine: `Cache(size)`, `get` then `set` (W-TinyLFU with a count-min sketch, adaptive window, as here).",
        "cachebox: `LRUCache(size)`, `get` then `insert`: plain LRU, no admission policy (for scale, no budget).",
        "TieredCache pays Django's cache API on top: key making (prefix, version, validation), per-data-type counters,",
        "and a copy plan for the value it admits (so later hits hand out an independent copy).",
    ]
    columns = ["cache", *common.STAT_COLUMNS, RATIO, f"≤ {BUDGET:g}× theine"]
    report.table("Miss, load, set of a fresh key (cache full)", columns, rows, notes)


def main(argv: list[str] | None = None) -> int:
    return common.cli("miss_path", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
