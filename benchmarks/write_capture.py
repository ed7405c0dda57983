"""Write-path cost of write capture: queries and time per write, capture on vs off.

Write capture (``velro_cache.invalidation.capture``) puts an execute wrapper
on every connection. Its budget (issue 10): a write pays at most one extra
indexed query; reads pay none. Measured here on the example's models, against
the real database, for each write path, alternating capture on and off in
rounds so both see the same machine state:

- ``save()`` of one loaded instance (the old row read by pk, ``FOR UPDATE``);
- ``QuerySet.update`` of one row and ``bulk_update`` of 100 rows (no extra
  query: the table is retired coarsely);
- ``create()`` then ``delete()`` of a generation (the DELETE hands back its
  rows with ``RETURNING``; a generation is also an authorization-protected
  object, whose delete looks up its team's members to bump them: the one
  extra query);
- a read (``filter(pk=...).first()``): the wrapper's only cost is one regex match.

Queries are counted without ``BEGIN``/``COMMIT``; time is wall time per
write, median and p90, including the retirement it schedules (applied at once
in autocommit). Run: ``python -m benchmarks.write_capture`` or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import common
from .common import Report
from .invalidation import _cache, _configure, bench_database

FULL = {"rounds": 20, "per_round": 25, "bulk": 100}
QUICK = {"rounds": 2, "per_round": 5, "bulk": 20}
DATABASE = "velro_bench_write_capture"


def _paths(bulk: int) -> dict[str, Callable[[int], None]]:
    from django.contrib.auth.models import User
    from studio.models import Generation, Team

    owner = User.objects.create(username=f"bench-{uuid.uuid4().hex[:8]}")
    team = Team.objects.create(name="bench", slug=f"bench-{uuid.uuid4().hex[:8]}")
    many = [Generation.objects.create(owner=owner, team=team, prompt="p", model_name="m") for _ in range(bulk)]
    one = many[0]

    def save(i: int) -> None:
        one.prompt = f"save {i}"
        one.save()

    def update(i: int) -> None:
        Generation.objects.filter(pk=one.pk).update(prompt=f"update {i}")

    def bulk_update(i: int) -> None:
        for generation in many:
            generation.prompt = f"bulk {i}"
        Generation.objects.bulk_update(many, ["prompt"])

    def delete(i: int) -> None:
        Generation.objects.create(owner=owner, team=team, prompt="d", model_name="m").delete()

    def read(i: int) -> None:
        Generation.objects.filter(pk=one.pk).first()

    return {"save() of one instance": save, "QuerySet.update, 1 row": update,
            f"bulk_update, {bulk} rows": bulk_update, "create + delete() of a protected object": delete, "read by pk": read}


def _measure(write: Callable[[int], None], n: int) -> tuple[list[int], float]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    samples = []
    with CaptureQueriesContext(connection) as captured:
        for i in range(n):
            started = time.perf_counter_ns()
            write(i)
            samples.append(time.perf_counter_ns() - started)
    statements = [q for q in captured.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    return samples, len(statements) / n


def run(args: argparse.Namespace) -> Report:
    plan = QUICK if args.quick else FULL
    database, database_label = bench_database(DATABASE, args.quick)
    cache_config, cache_label = _cache(f"bench-capture-{uuid.uuid4().hex[:8]}")
    _configure(database, cache_config)
    from django.core.cache import cache
    from django.core.management import call_command

    from velro_cache.invalidation import capture

    call_command("migrate", verbosity=0)
    paths = _paths(plan["bulk"])
    results: dict[tuple[str, bool], dict[str, Any]] = {}
    try:
        for _ in range(plan["rounds"]):
            for on in (True, False):
                capture.enable() if on else capture.disable()
                for name, write in paths.items():
                    samples, queries = _measure(write, plan["per_round"])
                    entry = results.setdefault((name, on), {"samples": [], "queries": queries})
                    entry["samples"] += samples
    finally:
        capture.enable()
        cache.clear()
    return _report(args, plan, database_label, cache_label, results, list(paths))


def _report(args: argparse.Namespace, plan: dict[str, int], database: str, cache_label: str,
            results: dict[tuple[str, bool], dict[str, Any]], names: list[str]) -> Report:
    report = Report(
        name="write_capture",
        title="Write capture: queries and time per write, capture on vs off",
        intro=[
            f"Database: {database}. Cache: {cache_label}.",
            f"{plan['rounds']} rounds x {plan['per_round']} writes per path and mode, capture on and off alternating.",
        ],
        quick=args.quick,
    )
    rows = []
    for name in names:
        on, off = results[(name, True)], results[(name, False)]
        on_s, off_s = common.summarize(on["samples"]), common.summarize(off["samples"])
        extra = on["queries"] - off["queries"]
        within = extra <= 1.0 + 1e-9 if name != "read by pk" else extra == 0
        budget = "0" if name == "read by pk" else "≤ 1"
        mark = report.budget(f"{name}: extra queries", within, f"{extra:+.2f} queries per write (budget: {budget})")
        rows.append({
            "path": name,
            "queries off": round(off["queries"], 2), "queries on": round(on["queries"], 2), "extra": f"{extra:+.2f} {mark}",
            "median µs off": round(off_s["median µs"], 1), "median µs on": round(on_s["median µs"], 1),
            "p90 µs off": round(off_s["p90 µs"], 1), "p90 µs on": round(on_s["p90 µs"], 1),
        })
    columns = ["path", "queries off", "queries on", "extra", "median µs off", "median µs on", "p90 µs off", "p90 µs on"]
    report.table("Per write", columns, rows, [
        "Time on includes the retirement the write schedules (namespace tokens written to L1 and Redis, "
        "applied at once in autocommit); off retires nothing, which is what made those paths stale.",
    ])
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("write_capture", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
