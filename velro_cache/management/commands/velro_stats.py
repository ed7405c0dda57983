"""`manage.py velro_stats`: the cache figures of every worker process, combined, as a table or JSON.

    velro_stats                 # the deployment now: per cache, per data type, per worker, alerts
    velro_stats --json          # the same figures, machine-readable
    velro_stats --watch 2       # redraw every 2 seconds until interrupted
    velro_stats --history 30    # add the last 30 minutes, one row per minute (--json: the series)
    velro_stats --memory        # add Redis memory per data type of each TieredCache (SCAN + sampled MEMORY USAGE)

Figures come from the snapshots the workers publish to Redis (velro_cache.telemetry);
when Redis does not answer, this process's own figures are shown under a warning.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from velro_cache import alerts
from velro_cache.telemetry import deployment, history
from velro_cache.telemetry.report import duration, percent, render, size, table


class Command(BaseCommand):
    help = "Show the cache statistics of every worker process, combined (table, --json, --watch)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
        parser.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS until interrupted")
        parser.add_argument("--count", type=int, default=0, help="with --watch: stop after this many reports (0: never)")
        parser.add_argument("--history", type=int, default=0, metavar="MINUTES", help="also the last MINUTES minutes, per minute")
        parser.add_argument("--memory", action="store_true", help="also Redis memory per data type (scans the cache's keys)")

    def handle(self, *args: Any, **options: Any) -> None:
        shown = 0
        try:
            while True:
                self._show(options, clear=bool(options["watch"]) and not options["json"] and shown > 0)
                shown += 1
                if not options["watch"] or (options["count"] and shown >= options["count"]):
                    return
                time.sleep(options["watch"])
        except KeyboardInterrupt:
            return

    def _show(self, options: dict[str, Any], clear: bool) -> None:
        found = deployment()
        firing = alerts.current()
        series = history(options["history"]) if options["history"] else []
        if options["json"]:
            payload = {"complete": found.complete, "error": found.error, **found.view, "alerts": [asdict(alert) for alert in firing]}
            if options["history"]:
                payload["history"] = series
            if options["memory"]:
                payload["redis_memory"] = self._memory()
            self.stdout.write(json.dumps(payload, default=str))
            return
        if clear:
            self.stdout.write("\x1b[2J\x1b[H", ending="")
        self.stdout.write(render(found.view, complete=found.complete, error=found.error, alerts=firing))
        if series:
            self.stdout.write("\n" + "\n".join(self._history_lines(series)))
        if options["memory"]:
            self.stdout.write("\n" + "\n".join(self._memory_lines(self._memory())))

    @staticmethod
    def _memory() -> dict[str, dict[str, dict[str, Any]]]:
        """Per TieredCache alias with a Redis L2: its memory per data type (``telemetry.memory``)."""
        from django.core.cache import caches

        from velro_cache.backends import TieredCache
        from velro_cache.telemetry.memory import redis_memory

        return {alias: redis_memory(caches[alias]) for alias in caches if isinstance(caches[alias], TieredCache) and caches[alias].has_l2}

    @staticmethod
    def _memory_lines(memory: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
        rows = [
            (alias, data_type, row["keys"], size(row["bytes"]), "exact" if row["sampled"] == row["keys"] else f"{row['sampled']} sampled")
            for alias, by_type in memory.items()
            for data_type, row in by_type.items()
        ]
        return table(("cache", "data type", "keys in Redis", "memory", "bytes"), rows)

    @staticmethod
    def _history_lines(series: list[dict[str, Any]]) -> list[str]:
        rows = []
        for point in series:
            for alias, cache in point["caches"].items():
                stamp = time.strftime("%H:%M", time.gmtime(point["at"]))
                totals, p95 = cache["totals"], cache["p95"]
                rows.append((stamp, alias, totals["requests"], percent(totals["hit_rate"]), duration(p95["l1"]), duration(p95["l2"])))
        return table(("minute (UTC)", "cache", "reads", "hit rate", "L1 p95", "L2 p95"), rows)
