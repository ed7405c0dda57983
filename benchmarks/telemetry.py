"""Telemetry's cost to the hot path: an L1 hit with the publisher thread running against without it, in one run.

Cross-worker statistics must not make a hit dearer: the counters stay
lock-free and the snapshot goes to Redis from a background thread. Here the
thread publishes every 0.1 s (50 times the default rate, so its share of the
GIL is as large as it ever gets), alternating with rounds where it is stopped,
on the same cache and key; LocMemCache is timed in the same rounds as the
yardstick. Also measured: one publish (snapshot, JSON, one pipeline) and one
combined read (``deployment()``, what ``/metrics`` and the dashboard pay).

Run: ``python -m benchmarks.telemetry`` (about half a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import common
from .common import Report

LOCMEM, TIERED = "LocMemCache", "TieredCache"
INTERVAL = 0.1  # seconds between publishes while "on" (the shortest TELEMETRY_INTERVAL allowed)
MEDIAN_BUDGET = 1.10  # x the same get with the thread stopped
P99_BUDGET_US = 10.0

FULL = {"get": 1_000_000, "rounds": 10, "publishes": 300}  # 100k gets a slice: longer than an interval
QUICK = {"get": 4_000, "rounds": 2, "publishes": 10}


def _caches() -> dict[str, dict[str, Any]]:
    return {
        LOCMEM: {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": common.key_prefix("telemetry")},
        TIERED: {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": common.REDIS_URL, "KEY_PREFIX": common.key_prefix("telemetry")},
    }


def _time_rounds(caches: dict[str, Any], plan: dict[str, int]) -> tuple[dict[str, list[int]], int]:
    """L1 hits with the publisher on and off, in alternating rounds; LocMem timed in every round too."""
    from velro_cache.telemetry import publisher

    published = []
    publisher.on_tick.append(lambda: published.append(1))
    key, value = "gen:1", {"id": 1, "prompt": "a lighthouse at dusk", "status": "done"}
    for cache in caches.values():
        cache.set(key, value, None)
    samples: dict[str, list[int]] = {"publisher on": [], "publisher off": [], LOCMEM: []}
    per_round = max(1, plan["get"] // plan["rounds"])
    for cache in caches.values():
        common.time_each(cache.get, (key,), 2000, [])  # warm up
    with common.gc_paused():
        for index in range(plan["rounds"]):
            for phase in (("publisher on", "publisher off") if index % 2 == 0 else ("publisher off", "publisher on")):
                if phase == "publisher on":
                    publisher.start()
                    time.sleep(INTERVAL * 2)  # let it get going: at least one publish inside the timed slice
                common.time_each(caches[TIERED].get, (key,), per_round, samples[phase])
                if phase == "publisher on":
                    publisher.stop()
            common.time_each(caches[LOCMEM].get, (key,), per_round, samples[LOCMEM])
    return samples, len(published)


def _publish_and_read_costs(plan: dict[str, int]) -> dict[str, Any]:
    from velro_cache.telemetry import deployment, process_snapshot, store

    publish_ns: list[int] = []
    read_ns: list[int] = []
    common.time_each(store.publish, (), plan["publishes"], publish_ns)
    common.time_each(deployment, (), plan["publishes"], read_ns)
    return {
        "publish": common.summarize(publish_ns),
        "deployment": common.summarize(read_ns),
        "snapshot bytes": len(json.dumps(process_snapshot(), separators=(",", ":"))),
    }


def run(args: argparse.Namespace) -> Report:
    report = Report("telemetry", "Telemetry: the L1 hit with the publisher thread on and off", [__doc__.strip().splitlines()[0]], quick=args.quick)
    if not common.redis_answers():
        report.budget("Redis answers", False, f"{common.REDIS_URL} does not answer: the publisher has nowhere to publish")
        return report
    common.configure_django(_caches())
    from django.core.cache import caches as django_caches
    from django.test import override_settings

    plan = QUICK if args.quick else FULL
    with override_settings(VELRO_CACHE={"TELEMETRY_INTERVAL": INTERVAL}):
        caches = {name: django_caches[name] for name in (LOCMEM, TIERED)}
        with common.library_warnings() as warnings:
            samples, published = _time_rounds(caches, plan)
            costs = _publish_and_read_costs(plan)
    off = common.summarize(samples["publisher off"])
    on = common.summarize(samples["publisher on"])
    locmem = common.summarize(samples[LOCMEM])
    share = common.ratio(on["median µs"], off["median µs"])
    rows = [
        {"case": name, **stats, "× off (median)": common.ratio(stats["median µs"], off["median µs"])}
        for name, stats in (("TieredCache L1 hit, publisher off", off), ("TieredCache L1 hit, publisher on", on), ("LocMemCache get", locmem))
    ]
    ok_median = report.budget(
        f"L1 hit median with the publisher on <= {MEDIAN_BUDGET}x off", share <= MEDIAN_BUDGET, f"{share:.3f}x ({published} publishes while timing)"
    )
    ok_p99 = report.budget(f"L1 hit p99 with the publisher on < {P99_BUDGET_US} µs", on["p99 µs"] < P99_BUDGET_US, f"{on['p99 µs']:.2f} µs")
    rows[1]["budget"] = f"{ok_median} / {ok_p99}"
    report.table("L1 hit latency (same key, same value, alternating rounds)", ["case", *common.STAT_COLUMNS, "× off (median)", "budget"], rows,
                 common.warnings_note(warnings))  # fmt: skip
    report.table(
        "What a publish and a combined read cost (off the hot path)",
        ["operation", *common.STAT_COLUMNS],
        [{"operation": "store.publish() (snapshot + JSON + one pipeline)", **costs["publish"]},
         {"operation": "deployment() (publish + read every worker + combine)", **costs["deployment"]}],
        [f"One snapshot of this process is {costs['snapshot bytes']} bytes of JSON; at the default 5 s interval a worker sends that "
         "12 times a minute."],
    )  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("telemetry", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
