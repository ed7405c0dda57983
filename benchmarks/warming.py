"""Warming: the hit rate over the first requests after a cold start, with and without warming.

The example project on PostgreSQL with L1 + L2 (Redis), its API driven
in-process through Django's full request path (test ``Client``, one client),
on the Velro traffic model (``studio.traffic``: sessions that revisit, Zipf teams
and generations, new generations over time, 5 % writes, some 401/403/404).

Yesterday's traffic comes from the same model with another seed: its reads are
written to the access log (``studio_generationaccess``) and the views are
refreshed, so "the most active users of the last 24 h" are the users that the
same popularity makes active today, as on a real site. Then, in one run, the
same request stream after a cold start (``cache.clear()``: L1 and L2 empty),

- without warming: the requests fill the cache themselves;
- with warming: ``velro_cache.warming.warm()`` with the example project's plan
  first (its time reported), then the same requests.

Per request: the cache's own counters (hits and misses of data reads; the
namespace-token lookups every read makes are not data and are left out) and
the SQL statements the request ran. Reported per window of requests and
cumulatively, with a PNG of the curves when matplotlib is installed.

Run: ``python -m benchmarks.warming`` (a few minutes the first time, mostly
seeding) or ``--quick``. Needs PostgreSQL (``VELRO_BENCH_PG_*``) and Redis
(``VELRO_BENCH_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from . import common
from .common import REDIS_URL, ROOT, Report

FULL = {"users": 3_000, "teams": 150, "generations": 30_000, "history": 30_000, "requests": 10_000, "window": 250}
QUICK = {"users": 150, "teams": 10, "generations": 1_500, "history": 1_500, "requests": 300, "window": 50}
MARKS = (100, 1_000, 10_000)  # the "first 1,000 and 10,000 requests", and the very first ones
WORLD_SEED, HISTORY_SEED, TODAY_SEED = 7, 1, 2


# -- setup -------------------------------------------------------------------------------


def _database_name(quick: bool) -> str:
    return os.environ.get("VELRO_BENCH_PG_NAME", "velro_cache_bench_warming" + ("_quick" if quick else ""))


def _configure(database: str) -> None:
    """The example project's API (apps, middleware, URLs) on a database and a Redis prefix of the benchmark's own."""
    import django
    from django.conf import settings

    sys.path.insert(0, str(ROOT / "example_project"))
    settings.configure(
        SECRET_KEY="velro-cache-benchmarks",
        DEBUG=False,
        ALLOWED_HOSTS=["testserver", "localhost"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        ROOT_URLCONF="example_project.urls",
        INSTALLED_APPS=["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                        "django.contrib.sessions", "django.contrib.messages", "velro_cache", "studio"],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware", "velro_cache.authz.middleware.AuthorizationMiddleware"],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True, "OPTIONS": {}}],
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": database, **common.PG}},
        CACHES={"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": REDIS_URL,
                            "KEY_PREFIX": common.key_prefix("warming")}},
        VELRO_CACHE={"VIEW_REFRESH_ON_WRITE": False},
        LOGGING_CONFIG=None,
    )
    django.setup()


def _execute(sql: str, params: list[Any] | None = None) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _seed(plan: dict[str, int]) -> float:
    from django.core.management import call_command

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    call_command("velro_seed", users=plan["users"], teams=plan["teams"], generations=plan["generations"],
                 stdout=io.StringIO())
    lag = _execute("SELECT now() - max(created_at) FROM studio_generation")[0][0]
    if lag is not None and lag.total_seconds() > 3600:  # an old seed: move it to now, so the 24/48 h windows hold it
        _execute("UPDATE studio_generation SET created_at = created_at + %s", [lag])
    return time.perf_counter() - started


def _world() -> Any:
    from studio.demo.plan import World

    return World.load(random.Random(WORLD_SEED))


def _write_history(world: Any, plan: list[Any]) -> int:
    """Yesterday's traffic (a stream of the same model): its reads into the access log, its users' tokens marked used."""
    from datetime import timedelta

    from django.utils import timezone
    from studio.demo.plan import DETAIL, MEDIA
    from studio.models import ApiToken, GenerationAccess

    user_of = {key: user for user, key in world.token_of.items()}
    rng = random.Random(HISTORY_SEED)
    now = timezone.now()
    rows = []
    for item in plan:
        part = item.path.split("/")[3] if item.endpoint in (DETAIL, MEDIA) else ""
        generation_id = int(part) if part.isdigit() else None  # not the stream's own creations
        if generation_id in world.owner_of and item.token in user_of:  # not the planned 404s and 401s
            rows.append(GenerationAccess(generation_id=generation_id, user_id=user_of[item.token],
                                         kind="media" if item.endpoint == MEDIA else "read",
                                         accessed_at=now - timedelta(seconds=86_000 * rng.random())))
    GenerationAccess.objects.all().delete()
    GenerationAccess.objects.bulk_create(rows, batch_size=5_000)
    ApiToken.objects.filter(user_id__in={row.user_id for row in rows}).update(last_used_at=now)
    return len(rows)


def _refresh_views() -> None:
    from velro_cache.db.refresh import refresh_views

    for _ in refresh_views():
        pass


# -- the replay ------------------------------------------------------------------------------


def _data_counts(cache: Any) -> tuple[int, int]:
    """(hits, misses) of data reads so far: every data type but the namespace tokens'."""
    from velro_cache.namespaces import TOKEN_KEY_TYPE

    rows = cache.stats()["by_type"]
    hits = sum(row["l1_hits"] + row["l2_hits"] for name, row in rows.items() if name != TOKEN_KEY_TYPE)
    misses = sum(row["misses"] for name, row in rows.items() if name != TOKEN_KEY_TYPE)
    return hits, misses


def _replay(plan: list[Any]) -> list[dict[str, int]]:
    """Each request's status, data hits and misses and SQL statements, in order."""
    import logging

    logging.getLogger("django.request").setLevel(logging.ERROR)  # the planned 403/404s are not news
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client
    from studio.demo.runner import Created, _send
    from studio.models import Generation
    from studio.reads import read_stats

    client = Client(raise_request_exception=False)
    created = Created(missing=(Generation.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 10_000_000)
    counter = common.QueryCounter()
    reads = read_stats.thread_counter()
    samples = []
    with connection.execute_wrapper(counter):
        for item in plan:
            hits, misses = _data_counts(cache)
            read_hits, read_misses = reads["hits"], reads["misses"]
            queries = counter.count
            status = _send(client, item, created)
            after = _data_counts(cache)
            samples.append({"status": status, "hits": after[0] - hits, "misses": after[1] - misses,
                            "read_hits": reads["hits"] - read_hits, "read_misses": reads["misses"] - read_misses,
                            "queries": counter.count - queries})
    return samples


def _same_token_clock() -> None:
    """Every used token marked used now, before each replay, so both replays see the same state.

    A token's identity load refreshes ``last_used_at`` when it is older than
    five minutes (studio/auth.py), and that write retires cached session
    data: without this, the replay that runs second (minutes later) would pay
    for writes the first did not make.
    """
    from django.utils import timezone
    from studio.models import ApiToken

    ApiToken.objects.filter(last_used_at__isnull=False).update(last_used_at=timezone.now())


def _cold_start() -> None:
    """L1 and L2 empty, as after a deploy with a flushed Redis; the warming lock gone with them."""
    from django.core.cache import cache

    cache.clear()


def _by_type(cache: Any) -> dict[str, tuple[int, int]]:
    from velro_cache.namespaces import TOKEN_KEY_TYPE

    rows = cache.stats()["by_type"]
    return {name: (row["l1_hits"] + row["l2_hits"], row["misses"]) for name, row in rows.items() if name != TOKEN_KEY_TYPE}


def _arm(plan: list[Any], warm: bool) -> tuple[list[dict[str, int]], dict[str, Any] | None, dict[str, tuple[int, int]]]:
    """One replay after a cold start: per-request samples, the warm-up's run, and hits/misses per data type."""
    from django.core.cache import cache

    from velro_cache import warming

    _same_token_clock()
    _cold_start()
    run = warming.warm() if warm else None
    before = _by_type(cache)
    samples = _replay(plan)
    after = _by_type(cache)
    zero = (0, 0)
    types = {name: (hits - before.get(name, zero)[0], misses - before.get(name, zero)[1]) for name, (hits, misses) in after.items()}
    return samples, (run.as_dict() if run is not None else None), types


def _type_rows(types: dict[str, dict[str, tuple[int, int]]]) -> list[dict[str, Any]]:
    names = sorted({name for per_arm in types.values() for name in per_arm})
    rows = []
    for name in names:
        if not any(sum(per_arm.get(name, (0, 0))) for per_arm in types.values()):
            continue  # read by nobody in this replay (the views, warming's lock)
        row: dict[str, Any] = {"data type": name}
        for arm, per_arm in types.items():
            hits, misses = per_arm.get(name, (0, 0))
            row[f"reads, {arm}"] = hits + misses
            row[f"hit rate, {arm}"] = 100 * hits / (hits + misses) if hits + misses else None
        rows.append(row)
    return rows


# -- the report ----------------------------------------------------------------------------------


def _rate(samples: list[dict[str, int]], kind: str = "read_") -> float:
    """Hit rate of reads (``read_``: each read-through call once) or of the backend's counters (``""``)."""
    hits = sum(s[f"{kind}hits"] for s in samples)
    total = hits + sum(s[f"{kind}misses"] for s in samples)
    return hits / total if total else float("nan")


def _pct(rate: float) -> float | None:
    """A rate as a percentage; None (an empty cell, valid JSON) when nothing was read."""
    return None if math.isnan(rate) else 100 * rate


def _cumulative_rows(arms: dict[str, list[dict[str, int]]], marks: list[int]) -> list[dict[str, Any]]:
    rows = []
    for mark in marks:
        row: dict[str, Any] = {"first requests": mark}
        for name, samples in arms.items():
            head = samples[:mark]
            row[f"hit rate, {name}"] = _pct(_rate(head))
            row[f"backend hit rate, {name}"] = _pct(_rate(head, ""))
            row[f"queries/request, {name}"] = sum(s["queries"] for s in head) / len(head)
            row[f"no-query requests %, {name}"] = 100 * sum(1 for s in head if s["queries"] == 0) / len(head)
        rows.append(row)
    return rows


def _window_rows(arms: dict[str, list[dict[str, int]]], window: int) -> list[dict[str, Any]]:
    count = min(len(samples) for samples in arms.values())
    rows = []
    for start in range(0, count, window):
        row: dict[str, Any] = {"requests": f"{start + 1}-{min(start + window, count)}"}
        for name, samples in arms.items():
            part = samples[start:start + window]
            row[f"hit rate, {name}"] = _pct(_rate(part))
            row[f"queries/request, {name}"] = sum(s["queries"] for s in part) / len(part)
        rows.append(row)
    return rows


def _typed(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    return (list(rows[0]) if rows else ["data type"]), rows


def _plot(arms: dict[str, list[dict[str, int]]], window: int, path: Path) -> bool:
    """The cumulative and per-window hit-rate curves as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for (name, samples), color in zip(arms.items(), ("tab:blue", "tab:orange")):
        for kind, style, label in (("read_", "-", "reads"), ("", ":", "backend counters")):
            hits = misses = 0
            curve = []
            for sample in samples:
                hits += sample[f"{kind}hits"]
                misses += sample[f"{kind}misses"]
                curve.append(100 * hits / (hits + misses) if hits + misses else float("nan"))
            left.plot(range(1, len(curve) + 1), curve, style, color=color, label=f"{name} ({label})")
        windows = [(start + window, 100 * _rate(samples[start:start + window])) for start in range(0, len(samples), window)]
        right.plot([x for x, _ in windows], [y for _, y in windows], marker=".", color=color, label=f"{name} (reads)")
    for axis, title in ((left, "cumulative hit rate"), (right, f"hit rate per {window} requests")):
        axis.set_title(title)
        axis.set_xlabel("requests after a cold start")
        axis.set_ylabel("% of data reads served from cache")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend()
    if len(next(iter(arms.values()))) > 1000:
        left.set_xscale("log")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True


def run(args: argparse.Namespace) -> Report:
    sizes = QUICK if args.quick else FULL
    if not common.redis_answers():
        raise SystemExit(f"benchmarks.warming needs Redis at {REDIS_URL}")
    database = _database_name(args.quick)
    common.ensure_database(database)
    _configure(database)
    from studio.traffic import TrafficModel

    seeded = _seed(sizes)
    world = _world()
    history = _write_history(world, TrafficModel(world, random.Random(HISTORY_SEED)).stream(sizes["history"]))
    _refresh_views()
    plan = TrafficModel(world, random.Random(TODAY_SEED)).stream(sizes["requests"])

    with common.library_warnings() as warned:
        without, _, types_cold = _arm(plan, warm=False)
        with_warming, warm_run, types_warm = _arm(plan, warm=True)
    arms = {"no warming": without, "warmed": with_warming}
    assert warm_run is not None

    report = Report(
        "warming",
        "Warming: hit rate over the first requests after a cold start, with and without",
        [
            "Generated by `python -m benchmarks.warming`: the example project (PostgreSQL, L1 + Redis L2), its API",
            "driven in-process through Django's request path on the demo's traffic model. One request stream,",
            "replayed twice in this run after a cold start (L1 and L2 cleared): without warming, then after",
            "`velro_cache.warming.warm()` with the example project's plan (studio/warming.py). Yesterday's",
            f"traffic ({sizes['history']:,} planned requests, {history:,} reads into the access log, another seed of",
            "the same popularity) decides which users the views call active. Hit rate: the share of the",
            "example's cached reads (`studio.reads` read-through calls, each counted once) served without its",
            "loader; backend hit rate: the cache's own hit/miss counters for data (namespace-token lookups left",
            "out; a read that misses is counted by each `get` it makes, and authorization decisions are included).",
            f"Data: `velro_seed --users {sizes['users']} --teams {sizes['teams']} --generations {sizes['generations']}`"
            f" (seed/top-up {seeded:.0f} s); the stream's ~5 % edits are real writes, made in both replays.",
        ],
        quick=args.quick,
    )
    report.intro += ["", *common.warnings_note(warned)] if warned else []
    marks = [mark for mark in MARKS if mark <= len(plan)] or [len(plan)]
    cumulative = _cumulative_rows(arms, marks)
    report.table("After a cold start: the first N requests", list(cumulative[0]), cumulative)
    steps = [{"step": s["name"], "tiers": "+".join(s["tiers"]), "status": s["status"], "entries": s["entries"],
              "seconds": s["seconds"]} for s in warm_run["steps"]]
    steps.append({"step": "total", "tiers": "", "status": f"{warm_run['errors']} error(s)", "entries": warm_run["entries"],
                  "seconds": warm_run["seconds"]})
    report.table("What warming loaded, and in what time", ["step", "tiers", "status", "entries", "seconds"], steps)
    report.table(f"Per data type, over all {len(plan):,} requests", *_typed(_type_rows({"no warming": types_cold, "warmed": types_warm})),
                 ["`auth` are authorization decisions, cached per (user, object, versions): the pairs a stream",
                  "repeats are few, so those warmed for the most active users keep paying long after the start."])
    windows = _window_rows(arms, sizes["window"])
    png = (args.out if args.out is not None else common.RESULTS) / "warming.png"
    plotted = not args.quick or args.out is not None
    notes = ["![hit rate after a cold start](warming.png)"] if plotted and _plot(arms, sizes["window"], png) else [
        "(no PNG: matplotlib is not installed, or a --quick run without --out)"]
    report.table(f"Per window of {sizes['window']} requests", list(windows[0]), windows, notes)
    first = marks[min(1, len(marks) - 1)]
    gain = next(row for row in cumulative if row["first requests"] == first)
    report.budget(
        f"warming raises the hit rate over the first {first:,} requests",
        gain["hit rate, warmed"] > gain["hit rate, no warming"],
        f"{gain['hit rate, warmed']:.1f} % warmed vs {gain['hit rate, no warming']:.1f} % cold",
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("warming", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
