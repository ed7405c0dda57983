"""Authorization: cached checks vs the database in one run, and the example API under load.

Budgets (capability 8 and "Example project under concurrent load"):

1. A cached check (``authorize`` inside a request's context: an L1 hit on a
   decision key) p99 under 50 µs; a batch of 100 (``authorize_many``) under
   1 ms. Side by side, the same checks answered by the database (the policy's
   one query: what a miss costs, and all a check would cost without caching).
2. The example API served by gunicorn with several sync worker processes,
   loaded from a separate process over loopback (bounded in requests and
   time): authorized ``GET /api/generations/<id>/`` p95 under 5 ms, the
   authorization hit rate, and database queries per request at least 90 %
   fewer than the same load with caching off (Django's DummyCache, which also
   turns every authorization check into a query).

3. Traffic where most (user, object) pairs are seen once (issue 12 item 3):
   users and generations both Zipf-popular, one check per request (the
   request's versions read from Redis included). Side by side on the same
   stream, each from an empty cache: per-(user, object) decisions only
   (``AUTHZ_CONTEXTS`` off: the state before role contexts), role contexts
   filled on demand, and role contexts after warming (``authz.warm_contexts``
   for every user, ``authz.warm_objects`` for every generation). Target: an
   authorization hit rate (checks that ran no query) of at least 99 % once
   contexts are warm; also queries per check and p50/p99.

Queries are counted inside the workers: gunicorn serves this module's
``application`` (the example's WSGI app wrapped to count SQL per request and
return it in ``X-Queries`` / ``X-Authz-Queries`` headers).

Run: ``python -m benchmarks.authz`` (about a minute) or ``--quick``. Needs
PostgreSQL (database ``velro_bench_authz`` recreated each run) and Redis.
"""

from __future__ import annotations

import argparse
import http.client
import io
import multiprocessing
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support import stop_process

from . import common
from .common import ROOT, Case, Report

FULL = {"users": 2_000, "teams": 200, "generations": 50_000, "checks": 20_000, "db_checks": 1_000, "pairs": 600,
        "warmup": 3_000, "requests": 6_000, "seconds": 60.0, "stream": 20_000, "stream_warmup": 5_000}
QUICK = {"users": 60, "teams": 6, "generations": 2_000, "checks": 500, "db_checks": 50, "pairs": 100,
         "warmup": 200, "requests": 300, "seconds": 20.0, "stream": 2_000, "stream_warmup": 500}
ZIPF_USERS = 1.0  # popularity exponents of the first-seen stream
ZIPF_OBJECTS = 0.9
WORKERS = 3
BATCH = 100  # objects per authorize_many, as the budget states it
CLIENT_THREADS = 2
DATABASE = "velro_bench_authz"
BUDGET_CHECK_P99_US = 50.0
BUDGET_BATCH_P99_US = 1000.0
BUDGET_GET_P95_MS = 5.0
BUDGET_FEWER = 0.90
BUDGET_HIT_RATE = 0.99  # warm role contexts, first-seen stream


# -- the workers' WSGI app (gunicorn imports this module's ``application``) --------------


def __getattr__(name: str) -> Any:
    if name == "application":
        return _counting_application()
    raise AttributeError(name)


def _counting_application() -> Any:
    sys.path.insert(0, str(ROOT / "example_project"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.core.wsgi import get_wsgi_application
    from django.db import connection

    inner = get_wsgi_application()

    def application(environ: dict, start_response: Any) -> Any:
        counts = [0, 0]

        def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            counts[0] += 1
            counts[1] += "_authz_" in sql
            return execute(sql, params, many, context)

        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            headers = [*headers, ("X-Queries", str(counts[0])), ("X-Authz-Queries", str(counts[1]))]
            return start_response(status, headers, exc_info)

        with connection.execute_wrapper(count):
            return list(inner(environ, start))

    return application


# -- setup ---------------------------------------------------------------------------------


def _configure(database: dict[str, Any], prefix: str) -> None:
    import django
    from django.conf import settings

    sys.path.insert(0, str(ROOT / "example_project"))
    settings.configure(
        SECRET_KEY="velro-cache-benchmarks", DEBUG=False, USE_TZ=True, TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "velro_cache", "studio"],
        DATABASES={"default": database},
        CACHES={"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": common.REDIS_URL, "KEY_PREFIX": prefix}},
        VELRO_CACHE={"VIEW_REFRESH_ON_WRITE": False},
        LOGGING_CONFIG=None,
    )
    django.setup()


def _seed(plan: dict[str, Any]) -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("velro_seed", users=plan["users"], teams=plan["teams"], generations=plan["generations"], seed=42, stdout=io.StringIO())


def _subject() -> tuple[Any, list[Any]]:
    """A team member and BATCH generations: some theirs, some their team's, some they may not read."""
    from django.contrib.auth.models import User
    from studio.models import Generation, TeamMembership

    membership = TeamMembership.objects.order_by("pk").first()
    user = User.objects.get(pk=membership.user_id)
    team_gens = list(Generation.objects.filter(team_id=membership.team_id)[:50])
    others = list(Generation.objects.exclude(team_id=membership.team_id).exclude(owner=user)[:BATCH - len(team_gens)])
    return user, team_gens + others


# -- 1. checks in process ------------------------------------------------------------------


def measure_checks(plan: dict[str, Any], report: Report) -> None:
    from velro_cache import authz
    from velro_cache.authz import decisions

    user, objs = _subject()
    one = objs[0]
    policy = authz.registry.for_object(one)
    with authz.scope():
        authz.authorize_many(user, objs, "read")  # warm: every decision cached
        with common.library_warnings() as warned:
            cached = common.interleaved(
                {"cached check": Case(authz.authorize, (user, one, "read")),
                 f"cached batch of {BATCH}": Case(authz.authorize_many, (user, objs, "read"))},
                total=plan["checks"], rounds=10, warmup=200)
    pks = [obj.pk for obj in objs]
    database = common.interleaved(
        {"database check (1 query)": Case(decisions.computed, (policy, user.pk, [one.pk], "read")),
         f"database batch of {BATCH} (1 query)": Case(decisions.computed, (policy, user.pk, pks, "read"))},
        total=plan["db_checks"], rounds=5, warmup=20)
    rows = []
    for name, samples in {**cached, **database}.items():
        rows.append({"case": name, "calls": len(samples), **common.summarize(samples)})
    check_p99 = common.summarize(cached["cached check"])["p99 µs"]
    batch_p99 = common.summarize(cached[f"cached batch of {BATCH}"])["p99 µs"]
    db_median = common.summarize(database["database check (1 query)"])["median µs"]
    rows[0]["budget"] = report.budget(f"cached check p99 < {BUDGET_CHECK_P99_US:g} µs", check_p99 < BUDGET_CHECK_P99_US, f"p99 {check_p99:.2f} µs")
    rows[1]["budget"] = report.budget(f"cached batch of {BATCH} p99 < {BUDGET_BATCH_P99_US / 1000:g} ms", batch_p99 < BUDGET_BATCH_P99_US, f"p99 {batch_p99:.1f} µs")
    report.table(
        "Checks in one process: cached vs the database",
        ["case", "calls", *common.STAT_COLUMNS, "budget"], rows,
        notes=[f"A cached check is {common.ratio(db_median, common.median_us(cached['cached check'])):.0f}x faster than asking "
               "PostgreSQL (medians). Cached = inside one request's context (versions already read): with role contexts (the default), an L1 hit on the object's facts, the context being loaded once per request.",
               *common.warnings_note(warned)],
    )


# -- 3. traffic where most (user, object) pairs are seen once ----------------------------


def _first_seen_stream(plan: dict[str, Any]) -> tuple[list[Any], list[int]]:
    """(users, generation ids) drawn independently, Zipf over both: most pairs come once."""
    from django.contrib.auth.models import User
    from studio.models import Generation

    rng = random.Random(12)
    users = list(User.objects.filter(is_active=True).order_by("?"))
    gens = list(Generation.objects.values_list("pk", flat=True).order_by("?"))
    total = plan["stream_warmup"] + plan["stream"]
    user_weights = [1 / (rank + 1) ** ZIPF_USERS for rank in range(len(users))]
    gen_weights = [1 / (rank + 1) ** ZIPF_OBJECTS for rank in range(len(gens))]
    return rng.choices(users, user_weights, k=total), rng.choices(gens, gen_weights, k=total)


def _run_stream(users: list[Any], gen_ids: list[int], skip: int) -> dict[str, Any]:
    """One check per request over the stream; queries and latency of the checks after ``skip``."""
    from django.db import connection
    from studio.models import Generation

    from velro_cache import authz

    queries = [0]

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries[0] += 1
        return execute(sql, params, many, context)

    latencies, per_check = [], []
    with connection.execute_wrapper(count):
        for index, (user, pk) in enumerate(zip(users, gen_ids)):
            before = queries[0]
            started = time.perf_counter_ns()
            with authz.scope():
                authz.authorize(user, authz.ObjectRef(Generation, pk), "read")
            elapsed = time.perf_counter_ns() - started
            if index >= skip:
                latencies.append(elapsed / 1000)
                per_check.append(queries[0] - before)
    latencies.sort()
    return {
        "checks": len(per_check),
        "hit rate": 1 - common.ratio(sum(1 for q in per_check if q), len(per_check)),
        "queries / check": common.ratio(sum(per_check), len(per_check)),
        "p50 µs": common.percentile(latencies, 0.5),
        "p99 µs": common.percentile(latencies, 0.99),
    }


def _warm_everything(users: list[Any]) -> dict[str, Any]:
    from studio.models import Generation

    from velro_cache import authz

    started = time.perf_counter()
    contexts = authz.warm_contexts(dict.fromkeys(users))
    facts = authz.warm_objects(Generation, list(Generation.objects.values_list("pk", flat=True)))
    return {"contexts": contexts, "facts": facts, "seconds": time.perf_counter() - started}


def measure_first_seen(plan: dict[str, Any], report: Report) -> None:
    from django.conf import settings
    from django.core.cache import cache
    from django.test.utils import override_settings

    users, gen_ids = _first_seen_stream(plan)
    skip = plan["stream_warmup"]
    seen: set[tuple[int, int]] = set()
    repeats = 0
    for index, pair in enumerate(zip((u.pk for u in users), gen_ids)):
        repeats += index >= skip and pair in seen
        seen.add(pair)
    bound = common.ratio(repeats, len(users) - skip)  # what an unbounded per-pair cache could hit
    base = dict(settings.VELRO_CACHE)
    rows, warmed = [], {}
    for name, contexts, warm in (("per-(user, object) decisions (contexts off)", False, False),
                                 ("role contexts, filled on demand", True, False),
                                 ("role contexts, warmed first", True, True)):
        cache.clear()
        with override_settings(VELRO_CACHE={**base, "AUTHZ_CONTEXTS": contexts}):
            if warm:
                warmed = _warm_everything(users)
            row = _run_stream(users, gen_ids, skip)
        rows.append({"mode": name, **row})
    hit = rows[-1]["hit rate"]
    rows[-1]["budget"] = report.budget(f"authorization hit rate ≥ {100 * BUDGET_HIT_RATE:g} % with warm contexts",
                                       hit >= BUDGET_HIT_RATE, f"{100 * hit:.2f} %")
    for row in rows[:-1]:
        row["budget"] = ""
    distinct_users = len({u.pk for u in users})
    report.table(
        f"Traffic where most (user, object) pairs are seen once: {plan['users']:,} users x {plan['generations']:,} generations, Zipf",
        ["mode", "checks", "hit rate", "queries / check", "p50 µs", "p99 µs", "budget"], rows,
        notes=[f"One stream of {len(users):,} checks (`read`, one per request: `authz.scope()` around each, so each reads its versions "
               f"from Redis), users Zipf s={ZIPF_USERS:g} ({distinct_users:,} distinct), generations Zipf s={ZIPF_OBJECTS:g}, "
               f"drawn independently; the first {skip:,} warm up and are not counted. Each mode starts from an empty cache. "
               f"Of the counted checks {100 * (1 - bound):.1f} % ask about a (user, object) pair for the first time, so "
               f"{100 * bound:.1f} % is the most any per-pair cache could hit on this stream.",
               "Hit rate = checks that ran no query / checks. A context costs 2 queries when loaded (the user's flags, their "
               "memberships), an object's facts 1 (owner, team; shared by every user); per-pair decisions cost 1 query per new pair.",
               f"Warming (last row, before the stream, not timed in it): {warmed.get('contexts', 0):,} contexts and "
               f"{warmed.get('facts', 0):,} objects' facts in {warmed.get('seconds', 0):.1f} s. In process, PostgreSQL and Redis on "
               f"loopback, {report.machine['nproc']} cores shared with other work."],
    )


# -- 2. the API under load -----------------------------------------------------------------


def _workload(plan: dict[str, Any]) -> list[tuple[str, int]]:
    """(token, generation id) pairs a user may read, Zipf-weighted like real traffic."""
    from studio.models import ApiToken, Generation, TeamMembership

    rng = random.Random(11)
    tokens = dict(ApiToken.objects.values_list("user_id", "key"))
    teams: dict[int, set[int]] = {}
    for user_id, team_id in TeamMembership.objects.values_list("user_id", "team_id"):
        teams.setdefault(team_id, set()).add(user_id)
    pairs = []
    for gen_id, owner_id, team_id in Generation.objects.values_list("pk", "owner_id", "team_id").order_by("?")[: plan["pairs"]]:
        reader = rng.choice(sorted(teams.get(team_id, set()) | {owner_id}))
        if reader in tokens:
            pairs.append((tokens[reader], gen_id))
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(pairs))]
    return [pair for pair in rng.choices(pairs, weights, k=plan["warmup"] + plan["requests"])]


def _get(port: int, token: str, gen_id: int) -> tuple[int, float, int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        started = time.perf_counter()
        conn.request("GET", f"/api/generations/{gen_id}/", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        return response.status, elapsed, int(response.getheader("X-Queries", 0)), int(response.getheader("X-Authz-Queries", 0))
    finally:
        conn.close()


def _load_client(port: int, requests: list[tuple[str, int]], warmup: int, seconds: float, out: Any) -> None:
    """Runs in its own process: the load must not share a GIL with anything measured."""
    deadline = time.monotonic() + seconds
    results = []
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        for index, result in enumerate(pool.map(lambda pair: None if time.monotonic() > deadline else _get(port, *pair), requests)):
            if result is not None and index >= warmup:
                results.append(result)
    out.send(results)


def _serve(database: dict[str, Any], port: int, caching: bool) -> subprocess.Popen:
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "example_project.settings", "DJANGO_DEBUG": "0",
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "REDIS_URL": common.REDIS_URL, "PYTHONPATH": str(ROOT),
    }
    if not caching:
        env["VELRO_DEMO_CACHE_BACKEND"] = "django.core.cache.backends.dummy.DummyCache"
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "benchmarks.authz:application", "--chdir", str(ROOT),
         "--workers", str(WORKERS), "--worker-class", "sync", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _get(port, "0" * 40, 1)
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gunicorn did not start")


def run_load(database: dict[str, Any], plan: dict[str, Any], caching: bool) -> dict[str, Any]:
    from tests.redis_server import free_port

    requests = _workload(plan)
    port = free_port()
    process = _serve(database, port, caching)
    try:
        common.stop_background_threads()  # before the client forks from this process
        receive, send = multiprocessing.Pipe(duplex=False)
        client = multiprocessing.get_context("fork").Process(target=_load_client, args=(port, requests, plan["warmup"], plan["seconds"], send))
        started = time.perf_counter()
        client.start()
        results = receive.recv()
        client.join()
        elapsed = time.perf_counter() - started
    finally:
        stop_process(process)
    statuses = [r[0] for r in results]
    latencies = sorted(r[1] * 1000 for r in results)
    cached = sorted(r[1] * 1000 for r in results if r[2] == 0)
    return {
        "requests": len(results),
        "ok": statuses.count(200),
        "errors": sum(s >= 500 for s in statuses),
        "p50 ms": common.percentile(latencies, 0.5),
        "p95 ms": common.percentile(latencies, 0.95),
        "p99 ms": common.percentile(latencies, 0.99),
        "p95 ms, no query": common.percentile(cached, 0.95) if cached else None,
        "queries / request": common.ratio(sum(r[2] for r in results), len(results)),
        "authz hit rate": 1 - common.ratio(sum(r[3] for r in results), len(results)),
        "requests / s": common.ratio(len(results) + plan["warmup"], elapsed),
    }


def measure_load(database: dict[str, Any], plan: dict[str, Any], report: Report) -> None:
    from django.db import connections

    connections.close_all()
    on = run_load(database, plan, caching=True)
    off = run_load(database, plan, caching=False)
    fewer = 1 - common.ratio(on["queries / request"], off["queries / request"])
    on["budget"] = " ".join([
        report.budget(f"authorized GET p95 < {BUDGET_GET_P95_MS:g} ms ({WORKERS} workers)", on["p95 ms"] < BUDGET_GET_P95_MS, f"p95 {on['p95 ms']:.2f} ms"),
        report.budget(f"≥ {100 * BUDGET_FEWER:g} % fewer queries per request than caching off", fewer >= BUDGET_FEWER,
                      f"{on['queries / request']:.3f} vs {off['queries / request']:.3f}: {100 * fewer:.1f} % fewer"),
        report.budget("no failed requests", on["errors"] == 0 and off["errors"] == 0, f"{on['errors']} + {off['errors']} 5xx"),
    ])
    on["caching"], off["caching"] = "on (TieredCache L1 + Redis)", "off (DummyCache)"
    report.table(
        f"The example API under load: gunicorn, {WORKERS} sync workers, {CLIENT_THREADS} client threads in another process",
        ["caching", "requests", "ok", "errors", "p50 ms", "p95 ms", "p99 ms", "p95 ms, no query", "queries / request", "authz hit rate", "requests / s", "budget"],
        [on, off],
        notes=[f"Authorized GET /api/generations/<id>/ for (user, generation) pairs the user may read, Zipf-weighted; "
               f"the first {plan['warmup']} requests of each pass warm up and are not counted. Latency is measured by the client "
               "over loopback (HTTP included). Queries are counted in the workers; the authorization hit rate is 1 - "
               "(authorization queries / requests), one check per request. \"p95 ms, no query\": the requests every tier "
               "answered from cache, i.e. the latency a warm cache gives; the overall p95 also holds the misses' database round trips "
               f"and CPU contention ({report.machine['nproc']} cores shared by {WORKERS} workers, the client, PostgreSQL and Redis)."],
    )


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Report:
    plan = QUICK if args.quick else FULL
    name = f"{DATABASE}_quick" if args.quick else DATABASE
    database = common.fresh_database(name)
    _configure(database, common.key_prefix("authz"))
    _seed(plan)
    report = Report("authz", "Authorization: cached checks and the example API under load", [
        "Cached checks against the database in one process, then the example API under gunicorn with caching on and off, "
        f"in one run on one data set ({plan['users']} users, {plan['teams']} teams, {plan['generations']} generations; "
        "PostgreSQL and Redis on loopback).",
    ], quick=args.quick)
    measure_checks(plan, report)
    measure_first_seen(plan, report)
    measure_load(database, plan, report)
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("authz", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
