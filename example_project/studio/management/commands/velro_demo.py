"""`manage.py velro_demo`: drive simulated Velro traffic and print what the cache did.

The traffic is the Velro traffic model (``studio.traffic``). By default
(``--warming compare``) the same stream runs twice after a cold start (the
cache cleared, as after a deploy): without warming, then after
``velro_cache.warming.warm()`` with the example's plan; both reports print,
then the warm-up curve of the two side by side. The warmed pass runs last,
so the caches are warm when the command ends. Then (unless --compare 0) a
replay of the start of the same stream with caching off, which is the honest
way to say how many database queries the cache saved.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test.utils import override_settings
from tqdm import tqdm

from studio.demo import report, runner
from studio.demo.plan import PATCH, PlannedRequest, World
from studio.models import ApiToken, Generation
from studio.reads import forget_generation, read_stats
from studio.traffic import TrafficModel
from velro_cache import warming

NO_CACHE = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
# label (None: one pass on the cache as it is) and whether warm() runs first
PASSES = {
    "compare": [("cold start, no warming", False), ("cold start, warmed", True)],
    "on": [("cold start, warmed", True)],
    "off": [("", False)],
}


@dataclass
class Pass:
    label: str
    result: runner.RunResult
    read_types: dict
    backend_stats: Any
    warm_up: str


@contextmanager
def quiet_request_log() -> Iterator[None]:
    """The planned 401/403/404s would each log a warning; keep errors only."""
    logger = logging.getLogger("django.request")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


class Command(BaseCommand):
    help = "Simulate Velro API traffic through the cache and print a report."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requests", type=int, default=3000, help="requests per pass (two passes by default)")
        parser.add_argument(
            "--clients", type=int, default=1,
            help="concurrent client threads (they share one interpreter: latencies include GIL waits)",
        )
        parser.add_argument("--seed", type=int, default=7, help="random seed of the traffic plan")
        parser.add_argument(
            "--compare", type=int, default=1000,
            help="requests replayed with caching off to count the queries saved (0 = skip)",
        )
        parser.add_argument(
            "--cold", action="store_true",
            help="clear the default cache first (its KEY_PREFIX's keys; without a prefix, "
            "the whole Redis database)",
        )
        parser.add_argument(
            "--warming", choices=("compare", "on", "off"), default="compare",
            help="compare: a cold pass without warming, then a cold pass after warm() (the default); "
            "on: only the warmed pass; off: one pass on the cache as it is",
        )
        parser.add_argument("--window", type=int, default=250, help="requests per point of the warm-up curve")
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["requests"] < 1 or options["clients"] < 1 or options["compare"] < 0:
            raise CommandError("--requests and --clients must be positive, --compare >= 0.")
        if not Generation.objects.exists() or not ApiToken.objects.exists():
            raise CommandError("No Velro data yet: run `manage.py velro_seed` first.")
        rng = random.Random(options["seed"])
        plan = TrafficModel(World.load(rng), rng).stream(options["requests"])

        passes = [self._pass(label, warm, plan, options) for label, warm in PASSES[options["warming"]]]
        uncached = None
        if options["compare"]:
            uncached = self._run_uncached(plan[: options["compare"]], options)

        setup = {
            "cache": self._cache_description(),
            "database": f"{connection.vendor} ({connection.settings_dict['NAME']})",
            "debug": str(settings.DEBUG),
        }
        for one in passes:
            if one.label:
                self.stdout.write(f"\n### {one.label}" + (f": {one.warm_up}" if one.warm_up else ""))
            self.stdout.write("\n".join(report.render(
                report.ReportInput(one.result, uncached, one.read_types, one.backend_stats, setup))))
        if len(passes) > 1:
            self.stdout.write("\n".join(report.curve({one.label: one.result for one in passes}, options["window"])))

    def _pass(self, label: str, warm: bool, plan: list[PlannedRequest], options: dict) -> Pass:
        """One pass of the stream: after a cold start (and a warm-up) when ``label`` names one."""
        if label or options["cold"]:
            cache.clear()
        warm_up = ""
        if warm:
            run = warming.warm()
            warm_up = f"warm() loaded {run.entries:,} entries in {run.seconds:.2f} s, {run.errors} error(s)"
        before = self._backend_stats()
        read_stats.reset()
        result = self._run(label or "cached", plan, options)
        return Pass(label, result, read_stats.snapshot(), report.stats_delta(self._backend_stats(), before), warm_up)

    def _run(self, label: str, plan: list[PlannedRequest], options: dict) -> runner.RunResult:
        with quiet_request_log(), tqdm(
            total=len(plan), desc=f"{label} traffic", unit="req",
            disable=options["no_progress"], file=sys.stderr,
        ) as bar:
            return runner.run(plan, options["clients"], bar)

    def _run_uncached(self, plan: list[PlannedRequest], options: dict) -> runner.RunResult:
        """Replay with DummyCache, then drop what its edits made stale in the real cache."""
        with override_settings(CACHES=NO_CACHE):
            result = self._run("uncached", plan, options)
        for item in plan:
            if item.endpoint == PATCH and "new:" not in item.path:
                forget_generation(int(item.path.rstrip("/").rsplit("/", 1)[1]))
        return result

    @staticmethod
    def _backend_stats() -> Any:
        stats = getattr(cache, "stats", None)
        if not callable(stats):
            return None
        try:
            return stats()
        except Exception as exc:  # noqa: BLE001 - the report says what went wrong
            return exc

    @staticmethod
    def _cache_description() -> str:
        config = settings.CACHES["default"]
        location = config.get("LOCATION")
        tiers = f"L2 at {location}" if location else "no LOCATION"
        return f"{config['BACKEND']} ({tiers})"
