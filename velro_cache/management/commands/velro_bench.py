"""`manage.py velro_bench`: a short load run against the configured caches, then the dashboard's figures.

    velro_bench                         # 5 s per TieredCache, 1,000 keys, Zipf-skewed reads
    velro_bench --seconds 2 --cache default --json

It writes ``velro_bench:<n>`` keys (deleted at the end), reads them with the
skew a real site shows (a few keys take most reads), times every call, and
prints the operations per second, the latency percentiles it measured, and
then the same tables as ``velro_stats``: the figures the cache itself kept
during the run, which should agree with what was timed from outside.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from django.core.cache import caches
from django.core.management.base import BaseCommand, CommandError, CommandParser

from velro_cache import alerts
from velro_cache.telemetry import deployment
from velro_cache.telemetry.report import duration, render, table
from velro_cache.telemetry.snapshot import tiered_aliases

KEY = "velro_bench:{}"


def zipf_sequence(keys: int, length: int, seed: int = 13) -> list[int]:
    """Key indexes drawn with weight 1/rank: the skew of real read traffic, reproducible by seed."""
    rng = random.Random(seed)
    return rng.choices(range(keys), weights=[1 / (rank + 1) for rank in range(keys)], k=length)


def percentile(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e9


def run(alias: str, seconds: float, keys: int) -> dict[str, Any]:
    """Fill ``keys`` keys, then read Zipf-skewed keys for ``seconds``; every call timed."""
    cache = caches[alias]
    value = {"id": 0, "prompt": "a lighthouse at dusk, oil on canvas", "status": "done", "tags": ["sea", "light"]}
    started = time.perf_counter()
    cache.set_many({KEY.format(index): {**value, "id": index} for index in range(keys)}, 300)
    fill_seconds = time.perf_counter() - started
    sequence = zipf_sequence(keys, 10_000)
    timings: list[int] = []
    hits = 0
    deadline = time.perf_counter() + seconds
    clock = time.perf_counter_ns
    while time.perf_counter() < deadline:
        for index in sequence:
            before = clock()
            found = cache.get(KEY.format(index))
            timings.append(clock() - before)
            hits += found is not None
        if len(timings) >= 5_000_000:
            break
    elapsed = seconds if time.perf_counter() >= deadline else max(1e-9, sum(timings) / 1e9)
    cache.delete_many([KEY.format(index) for index in range(keys)])
    timings.sort()
    return {
        "cache": alias,
        "keys": keys,
        "fill_seconds": fill_seconds,
        "reads": len(timings),
        "hits": hits,
        "reads_per_second": len(timings) / elapsed,
        "p50": percentile(timings, 0.5),
        "p95": percentile(timings, 0.95),
        "p99": percentile(timings, 0.99),
    }


class Command(BaseCommand):
    help = "Run a short load against the configured caches and print the same figures as the dashboard."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=5.0, help="reading time per cache (default 5)")
        parser.add_argument("--keys", type=int, default=1000, help="keys written and read (default 1000)")
        parser.add_argument("--cache", action="append", default=[], help="a cache alias (repeatable; default every TieredCache)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = options["cache"] or tiered_aliases()
        unknown = [alias for alias in aliases if alias not in tiered_aliases()]
        if unknown or not aliases:
            known = ", ".join(tiered_aliases()) or "(none configured)"
            raise CommandError(f"Not a TieredCache alias: {', '.join(unknown)}; known: {known}.")
        if options["seconds"] <= 0 or options["keys"] <= 0:
            raise CommandError("--seconds and --keys must be positive.")
        runs = [run(alias, options["seconds"], options["keys"]) for alias in aliases]
        found = deployment()
        if options["json"]:
            self.stdout.write(json.dumps({"runs": runs, "complete": found.complete, **found.view}, default=str))
            return
        rows = [
            (r["cache"], r["reads"], f"{r['reads_per_second']:,.0f}", f"{r['hits'] / r['reads']:.1%}" if r["reads"] else "-",
             duration(r["p50"]), duration(r["p95"]), duration(r["p99"]))
            for r in runs
        ]  # fmt: skip
        self.stdout.write("\n".join(table(("cache", "reads", "reads/s", "found", "get p50", "get p95", "get p99"), rows)))
        self.stdout.write("\nwhat the caches counted (the dashboard's figures):\n")
        self.stdout.write(render(found.view, complete=found.complete, error=found.error, alerts=alerts.current()))
