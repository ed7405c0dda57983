"""The switches' cost and reach: the L1 hit with the refresher running and stopped, a decision, a change reaching a worker.

An L1 hit must not get slower for the switches: ``get`` asks none of them
(the L1 switch is decided when a value is put into L1, not when it is read),
and the refresher is a thread that re-reads one Redis hash a second. Here the
hit is timed with the refresher re-reading every 10 ms (100 times its rate,
so its share of the GIL is as large as it gets), alternating with rounds
where it is stopped, on the same cache and key, with LocMemCache timed in
the same rounds as the yardstick. Then what a decision costs where one is
made (an L2 hit's promotion, a write, a TTL: ``switches.on`` at 100 %, at
0 % and at a partial percentage, which hashes), what a refresh costs, and
how long a change takes to reach another OS process (written here, watched
there), through ``switches.set`` (which nudges every worker) and written
into the hash by hand (the periodic re-read); the budget is the issue's
"within a second".

Run: ``python -m benchmarks.switches`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from . import common
from .common import Report

LOCMEM, TIERED = "LocMemCache", "TieredCache"
FAST_REFRESH = 0.01  # seconds between refreshes while "on" in the hit rounds
MEDIAN_BUDGET = 1.05  # x the same hit with the refresher stopped
REACH_BUDGET = 1.0  # seconds: a change applied by another worker within a second

FULL = {"get": 600_000, "rounds": 12, "decisions": 200_000, "refreshes": 2_000, "changes": 30}
QUICK = {"get": 4_000, "rounds": 2, "decisions": 2_000, "refreshes": 20, "changes": 2}


def _caches() -> dict[str, dict[str, Any]]:
    return {
        LOCMEM: {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": common.key_prefix("switches")},
        TIERED: {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": common.REDIS_URL, "KEY_PREFIX": common.key_prefix("switches")},
    }


def _hit_rounds(caches: dict[str, Any], plan: dict[str, int]) -> tuple[dict[str, list[int]], int]:
    """L1 hits with the refresher on (every 10 ms) and off, in alternating rounds; LocMem timed in every round too."""
    from velro_cache import switches

    refreshes = []
    original = switches.refresh

    def counted(using: str | None = None) -> bool:
        refreshes.append(1)
        return original(using)

    switches.refresh = counted  # type: ignore[assignment]  # counts the refresher's reads; restored below
    key, value = "gen:1", {"id": 1, "prompt": "a lighthouse at dusk", "status": "done"}
    for cache in caches.values():
        cache.set(key, value, None)
    tiered = caches[TIERED]
    if not _until_hit(tiered, key):
        raise RuntimeError("the L1 never served the key")
    samples: dict[str, list[int]] = {"refresher on": [], "refresher off": [], LOCMEM: []}
    per_round = max(1, plan["get"] // plan["rounds"])
    for cache in caches.values():
        common.time_each(cache.get, (key,), 2000, [])
    old_every = switches.REFRESH_EVERY
    try:
        with common.gc_paused():
            for index in range(plan["rounds"]):
                for phase in ("refresher on", "refresher off") if index % 2 == 0 else ("refresher off", "refresher on"):
                    if phase == "refresher on":
                        switches.REFRESH_EVERY = FAST_REFRESH
                        switches.start(read_now=False)
                        time.sleep(FAST_REFRESH * 3)
                    common.time_each(tiered.get, (key,), per_round, samples[phase])
                    if phase == "refresher on":
                        switches.stop()
                common.time_each(caches[LOCMEM].get, (key,), per_round, samples[LOCMEM])
    finally:
        switches.REFRESH_EVERY = old_every
        switches.refresh = original  # type: ignore[assignment]
    return samples, len(refreshes)


def _until_hit(cache: Any, key: str) -> bool:
    """Read until L1 serves (it trusts itself from its listener's first PONG)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        before = cache.stats()["totals"]["l1_hits"]
        cache.get(key)
        if cache.stats()["totals"]["l1_hits"] > before:
            return True
        time.sleep(0.01)
    return False


def _decision_costs(plan: dict[str, int]) -> dict[str, list[int]]:
    """``switches.on`` where the optimizations decide, at 100 %, 0 % and 37 % (the hashing path), and one refresh."""
    from velro_cache import switches

    keys = [f"gen:{number}:meta" for number in range(1000)]
    cases = {}
    for label, share in (("on() at 100 % (the default)", None), ("on() at 0 %", 0.0), ("on() at 37 % (hashes the key)", 37.0)):
        if share is None:
            switches._runtime.pop(switches.COMPRESSION, None)
        else:
            switches._runtime[switches.COMPRESSION] = share
        samples: list[int] = []
        for start in range(0, plan["decisions"], len(keys)):
            for key in keys[: plan["decisions"] - start]:
                common.time_each(switches.on, (switches.COMPRESSION, key), 1, samples)
        cases[label] = samples
    switches._runtime.pop(switches.COMPRESSION, None)
    refresh: list[int] = []
    common.time_each(switches.refresh, (), plan["refreshes"], refresh)
    cases["refresh() (one HGETALL, parse, apply)"] = refresh
    return cases


ANNOUNCED, BY_HAND = "switches.set (hash + nudge)", "written by hand (hash only: the periodic re-read)"


def _reach(plan: dict[str, int]) -> dict[str, list[float]]:
    """Seconds from a change written here to another OS process seeing it, per change, both ways of writing one."""
    import redis

    from tests.support import WorkerProcess
    from velro_cache import switches

    client = redis.Redis.from_url(common.REDIS_URL)
    client.hdel(switches.HASH_KEY, switches.WARMING)
    worker = WorkerProcess("tests.test_switches_processes", common.REDIS_URL)
    worker.wait_ready()
    delays: dict[str, list[float]] = {ANNOUNCED: [], BY_HAND: []}
    try:
        for index in range(2 * plan["changes"]):
            way = (ANNOUNCED, BY_HAND)[index % 2]
            share = 10.0 + index % 4  # 10, 11, 12, 13, 10, ...: every write is a change
            worker.send(op="watch", name=switches.WARMING, want=share)
            time.sleep(0.05 + (index * 0.137) % 1.0)  # spread the writes over the worker's refresh period
            if way == ANNOUNCED:
                switches.set(switches.WARMING, share)
            else:
                client.hset(switches.HASH_KEY, switches.WARMING, f"{share:g}")
            written = time.time()
            seen = worker.receive()
            delays[way].append(max(0.0, seen - written) if seen is not None else float("inf"))
    finally:
        client.hdel(switches.HASH_KEY, switches.WARMING)
        worker.stop()
    return delays


def run(args: argparse.Namespace) -> Report:
    report = Report("switches", "Switches: the L1 hit with the refresher on and off, a decision, a change reaching a worker",
                    [__doc__.strip().splitlines()[0]], quick=args.quick)  # fmt: skip
    if not common.redis_answers():
        report.budget("Redis answers", False, f"{common.REDIS_URL} does not answer: the switches live there")
        return report
    common.configure_django(_caches())
    from django.core.cache import caches as django_caches

    plan = QUICK if args.quick else FULL
    caches = {name: django_caches[name] for name in (LOCMEM, TIERED)}
    with common.library_warnings() as warnings:
        samples, refreshes = _hit_rounds(caches, plan)
        decisions = _decision_costs(plan)
        delays = _reach(plan)
    off, on, locmem = (common.summarize(samples[name]) for name in ("refresher off", "refresher on", LOCMEM))
    share = common.ratio(on["median µs"], off["median µs"])
    rows = [
        {"case": name, **stats, "× off (median)": common.ratio(stats["median µs"], off["median µs"])}
        for name, stats in (
            ("TieredCache L1 hit, refresher off", off), ("TieredCache L1 hit, refresher on", on), ("LocMemCache get", locmem),
        )
    ]
    rows[1]["budget"] = report.budget(
        f"L1 hit median with the refresher on <= {MEDIAN_BUDGET}x off", share <= MEDIAN_BUDGET,
        f"{share:.3f}x ({refreshes} refreshes while timing)",
    )
    report.table("L1 hit latency, every switch at its default (same key, same value, alternating rounds)",
                 ["case", *common.STAT_COLUMNS, "× off (median)", "budget"], rows,
                 ["`TieredCache.get` asks no switch: an L1 hit runs the same code as before the switches existed.",
                  *common.warnings_note(warnings)])  # fmt: skip
    report.table(
        "What a decision costs where one is made (L2-hit promotion, a write, a TTL, a request start), and a refresh",
        ["operation", *common.STAT_COLUMNS],
        [{"operation": name, **common.summarize(values)} for name, values in decisions.items()],
        ["Each figure includes the timer itself (about 0.1 µs).",
         f"The refresher runs one refresh every {1.0:g} s per process."],
    )  # fmt: skip
    reach_rows = []
    for way, values in delays.items():
        ordered = sorted(values)
        row = {"written": way, "changes": len(ordered), "median s": common.percentile(ordered, 0.5),
               "p90 s": common.percentile(ordered, 0.9), "max s": ordered[-1]}  # fmt: skip
        if way == ANNOUNCED:
            row["budget"] = report.budget(
                f"every change made with switches.set seen by the other process within {REACH_BUDGET:g} s",
                ordered[-1] <= REACH_BUDGET, f"max {ordered[-1]:.3f} s",
            )
        reach_rows.append(row)
    report.table("A change reaching another OS process (written here, watched there every 1 ms)",
                 ["written", "changes", "median s", "p90 s", "max s", "budget"], reach_rows,
                 ["Writes are spread over the worker's 1 s refresh period. A change written by hand waits for the "
                  "periodic re-read (the period's remainder plus one HGETALL, more when the machine is loaded)."])  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("switches", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
