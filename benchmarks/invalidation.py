"""Database queries per request on the example workload with 5 % writes: cached vs caching off.

The spec's budget (capability 5, "Example project under concurrent load"):
at least 90 % fewer database queries per request than with caching off. The
cache only earns that if invalidation lets it keep serving while 5 % of the
requests write: every PATCH retires the generation's namespace when it
commits, and the next read of it loads once.

One run, one data set, one request plan (``studio.demo.plan``: Zipf-skewed
reads, media fetches, /me, batch reads, ~5 % PATCHes and a few requests that
must fail), through Django's full request path in-process:

1. warm-up: the first ``warmup`` requests of the plan with caching on, not measured;
2. cached: the next ``requests`` requests with caching on (TieredCache, L1 +
   Redis L2 when Redis answers), counting the SQL each request runs;
3. caching off: the same ``requests`` requests again with Django's DummyCache.

Correctness is checked in the same run, outside the counted queries: every
200 answer of ``GET /api/generations/<id>/`` in the cached pass is compared
with the row in the database at that moment. A stale answer fails the run.

Run: ``python -m benchmarks.invalidation`` (a couple of minutes) or ``--quick``.
Uses PostgreSQL (``VELRO_BENCH_PG_*``, default postgres@127.0.0.1:5432, a
database ``velro_bench_invalidation`` recreated each run) when it answers,
else SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import common
from .common import ROOT, Report

FULL = {"users": 200, "teams": 20, "generations": 5_000, "warmup": 16_000, "requests": 8_000}
QUICK = {"users": 30, "teams": 4, "generations": 300, "warmup": 200, "requests": 300}
BUDGET_FEWER = 0.90
DATABASE = "velro_bench_invalidation"
NO_CACHE = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}


def __getattr__(name: str) -> Any:
    """The benchmark is its own URLconf (the example's API under /api/), built once apps are ready."""
    if name == "urlpatterns":
        from django.urls import include, path

        return [path("api/", include("studio.urls"))]
    raise AttributeError(name)


# -- setup ---------------------------------------------------------------------------------------


def _postgres_answers() -> bool:
    try:
        with common.postgres_admin(connect_timeout=2):
            return True
    except Exception:  # noqa: BLE001 - any failure means "use SQLite"
        return False


def bench_database(base: str, quick: bool) -> tuple[dict[str, Any], str]:
    """A fresh database for a benchmark (PostgreSQL when it answers, else SQLite) and its label.

    A smoke run (the test suite's) gets its own name, so it never drops the
    database of a full run in progress.
    """
    name = f"{base}_quick" if quick else base
    if _postgres_answers():
        return common.fresh_database(name), f"PostgreSQL ({name} at {common.PG['HOST']}:{common.PG['PORT']})"
    path = os.path.join(tempfile.mkdtemp(prefix="velro-bench-"), "bench.sqlite3")
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": path}, "SQLite (no PostgreSQL answered)"


def _cache(prefix: str) -> tuple[dict[str, Any], str]:
    config: dict[str, Any] = {"BACKEND": "velro_cache.backends.TieredCache", "KEY_PREFIX": prefix}
    if common.redis_answers():
        config["LOCATION"] = common.REDIS_URL
        return config, f"TieredCache, L1 + L2 Redis at {common.REDIS_URL}"
    return config, "TieredCache, L1 only (no Redis answered)"


def _configure(database: dict[str, Any], cache: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    sys.path.insert(0, str(ROOT / "example_project"))
    settings.configure(
        SECRET_KEY="velro-cache-benchmarks",
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        ALLOWED_HOSTS=["localhost", "testserver"],
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "velro_cache", "studio"],
        # The views read request.authz, which this middleware sets (and nothing else here needs one).
        MIDDLEWARE=["velro_cache.authz.middleware.AuthorizationMiddleware"],
        ROOT_URLCONF="benchmarks.invalidation",
        DATABASES={"default": database},
        CACHES={"default": cache},
        # Materialized-view refreshes are another feature's background work, not per-request queries.
        VELRO_CACHE={"VIEW_REFRESH_ON_WRITE": False},
        LOGGING_CONFIG=None,
    )
    django.setup()


def _seed(plan: dict[str, int]) -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("velro_seed", users=plan["users"], teams=plan["teams"], generations=plan["generations"],
                 seed=42, stdout=io.StringIO())


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Pass:
    """One pass over the plan: queries and statuses per endpoint, stale answers found."""

    label: str
    queries: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    checked: int = 0
    stale: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sequence: list[int] = field(default_factory=list)  # queries of each request, in order

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def total_queries(self) -> int:
        return sum(self.queries.values())

    def half(self, second: bool) -> float:
        """Queries per request in the first or second half of the pass: is it still warming up?"""
        middle = len(self.sequence) // 2
        part = self.sequence[middle:] if second else self.sequence[:middle]
        return common.ratio(sum(part), len(part))

    def per_request(self, endpoint: str | None = None) -> float:
        if endpoint is None:
            return common.ratio(self.total_queries, self.total_requests)
        return common.ratio(self.queries[endpoint], self.requests[endpoint])


def _send(client: Any, item: Any) -> Any:
    headers = {"Authorization": f"Bearer {item.token}"} if item.token else {}
    if item.method == "PATCH":
        return client.patch(item.path, item.body, content_type="application/json", headers=headers)
    return client.get(item.path, headers=headers)


def _stale_detail(response: Any) -> str | None:
    """Compare a generation read with its row now; the description of the difference, if any."""
    from studio.models import Generation

    body = response.json()
    row = Generation.objects.filter(pk=body["id"]).values("prompt", "status", "team_id").first()
    wanted = {"prompt": body["prompt"], "status": body["status"], "team_id": body["team_id"]}
    return None if row == wanted else f"generation {body['id']}: served {wanted}, database has {row}"


def run_pass(label: str, plan: list[Any], check: bool = False) -> Pass:
    from django.db import connection
    from django.test import Client

    from studio.demo.plan import DETAIL

    result = Pass(label)
    client = Client(SERVER_NAME="localhost", raise_request_exception=False)
    counter = common.QueryCounter()
    started = time.perf_counter()
    for item in plan:
        before = counter.count
        with connection.execute_wrapper(counter):
            response = _send(client, item)
        result.queries[item.endpoint] += counter.count - before
        result.sequence.append(counter.count - before)
        result.requests[item.endpoint] += 1
        result.statuses[response.status_code] += 1
        if check and item.endpoint == DETAIL and response.status_code == 200:
            result.checked += 1
            stale = _stale_detail(response)
            if stale:
                result.stale.append(stale)
    result.seconds = time.perf_counter() - started
    return result


def _plan(size: int) -> list[Any]:
    from studio.demo.plan import Planner, World

    rng = random.Random(7)
    return Planner(World.load(rng), rng).plan(size)


# -- the report ----------------------------------------------------------------------------------


def _report(args: argparse.Namespace, plan: dict[str, int], setup: dict[str, str], cached: Pass, off: Pass, hits: dict) -> Report:
    from studio.demo.plan import ENDPOINTS, PATCH

    fewer = 1 - common.ratio(cached.per_request(), off.per_request())
    writes = cached.requests[PATCH] / cached.total_requests
    report = Report(
        "invalidation",
        "Database queries per request with invalidation traffic: cached vs caching off",
        [
            "Generated by `python -m benchmarks.invalidation`: the example project's request plan",
            f"(`studio.demo.plan`, {100 * writes:.1f} % PATCH writes) through Django's full request path,",
            f"{plan['warmup']:,} warm-up requests, then the same {plan['requests']:,} requests with caching on and with",
            "Django's DummyCache, in one run on one data set. Every PATCH retires its generation's",
            "namespace on commit; the next read loads it once. The warm-up is",
            f"{common.ratio(plan['warmup'], plan['generations']):.1f} requests per generation so the measured pass sees the steady state",
            f"(cached: {cached.half(False):.3f} queries/request in its first half, {cached.half(True):.3f} in its second); after a",
            "shorter one, first reads of the Zipf tail (misses no invalidation scheme avoids) weigh more.",
            "",
            f"Data: velro_seed with {plan['users']} users, {plan['teams']} teams, {plan['generations']:,} generations.",
            f"Database: {setup['database']}. Cache: {setup['cache']}. One client (queries per request do not",
            "depend on concurrency; the load benchmark measures latency under concurrency).",
        ],
        quick=args.quick,
    )
    report.table(
        "Queries per request, same plan",
        ["pass", "requests", "queries", "queries / request", "1st half", "2nd half", "fewer than caching off", f"≥ {BUDGET_FEWER:.0%} fewer", "seconds"],
        [
            {"pass": off.label, "requests": off.total_requests, "queries": off.total_queries,
             "queries / request": off.per_request(), "1st half": off.half(False), "2nd half": off.half(True), "seconds": off.seconds},
            {"pass": cached.label, "requests": cached.total_requests, "queries": cached.total_queries,
             "queries / request": cached.per_request(), "1st half": cached.half(False), "2nd half": cached.half(True),
             "fewer than caching off": f"{100 * fewer:.1f} %",
             f"≥ {BUDGET_FEWER:.0%} fewer": report.budget(
                 f"≥ {BUDGET_FEWER:.0%} fewer database queries per request than caching off, with {100 * writes:.1f} % writes",
                 fewer >= BUDGET_FEWER, f"{100 * fewer:.1f} % fewer ({cached.per_request():.3f} vs {off.per_request():.3f} queries/request)"),
             "seconds": cached.seconds},
        ],
    )
    rows = []
    for endpoint in ENDPOINTS:
        if off.requests[endpoint]:
            on_q, off_q = cached.per_request(endpoint), off.per_request(endpoint)
            rows.append({"endpoint": endpoint, "requests": cached.requests[endpoint], "cached": on_q, "caching off": off_q,
                         "fewer": f"{100 * (1 - common.ratio(on_q, off_q)):.1f} %" if off_q else "n/a"})
    patch_share = common.ratio(cached.queries[PATCH], cached.total_queries)
    report.table("Queries per request by endpoint", ["endpoint", "requests", "cached", "caching off", "fewer"], rows, [
        "A PATCH reads the row and writes it whether or not there is a cache (only its token and membership",
        f"lookups are cached): PATCHes run {100 * patch_share:.0f} % of the cached pass's queries. The rest are first reads of",
        "rarely read generations (the Zipf tail), the one reload after each PATCH, and unknown tokens and ids.",
    ])
    report.table(
        "Freshness: every 200 generation read of the cached pass checked against the database",
        ["reads checked", "stale", "no stale read"],
        [{"reads checked": cached.checked, "stale": len(cached.stale),
          "no stale read": report.budget("no stale generation read after a committed PATCH", not cached.stale,
                                         f"{len(cached.stale)} stale of {cached.checked} checked")}],
        cached.stale[:5],
    )
    report.table(
        "Cached pass: hit rate of the app's reads by data type",
        ["data type", "hits", "misses", "hit rate"],
        [{"data type": name, "hits": c["hits"], "misses": c["misses"],
          "hit rate": f"{100 * common.ratio(c['hits'], c['hits'] + c['misses']):.1f} %"} for name, c in sorted(hits.items())],
        ["Counted by studio.reads.read_stats (one per cached_read), not by the backend, whose counts include namespace tokens."],
    )
    report.table("Statuses", ["pass", *map(str, sorted(cached.statuses))],
                 [{"pass": p.label, **{str(k): v for k, v in p.statuses.items()}} for p in (cached, off)])
    return report


def run(args: argparse.Namespace) -> Report:
    plan = QUICK if args.quick else FULL
    database, database_label = bench_database(DATABASE, args.quick)
    prefix = f"bench-inval-{uuid.uuid4().hex[:8]}"
    cache_config, cache_label = _cache(prefix)
    _configure(database, cache_config)
    from django.core.cache import cache
    from django.test.utils import override_settings

    from studio.reads import read_stats

    try:
        _seed(plan)
        requests = _plan(plan["warmup"] + plan["requests"])
        warmup, measured = requests[: plan["warmup"]], requests[plan["warmup"]:]
        run_pass("warm-up", warmup)
        read_stats.reset()
        cached = run_pass("cached", measured, check=True)
        hits = read_stats.snapshot()
        with override_settings(CACHES=NO_CACHE):
            off = run_pass("caching off", measured)
    finally:
        cache.clear()
    return _report(args, plan, {"database": database_label, "cache": cache_label}, cached, off, hits)


def main(argv: list[str] | None = None) -> int:
    return common.cli("invalidation", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
