"""Traffic: the Velro traffic model over real HTTP against gunicorn, with caching off, velro-cache, cachalot and cacheops.

One request stream (``studio.traffic``: sessions that revisit, Zipf teams and
generations, new generations created over time, 5 % writes, 401/403/404) is
replayed against the example project under gunicorn (several sync workers,
PostgreSQL, Redis) by ``benchmarks.traffic_driver`` (other OS processes,
http.client), once per arm: caching off, velro-cache without and with
warming, django-cachalot, django-cacheops (``benchmarks.traffic_settings``).
Every arm starts from a flushed Redis and the same rows (the previous arm's
creations deleted).

The stream runs in two phases: the first ``mark`` requests (the cold start,
a curve per request) and the rest (the warm state, where the targets are
judged). Per request the client records status, latency, the server's SQL
statement count and read-through hits (response headers), and the versions
of the generations it was shown; the backend's counters per data type come
from velro-cache's telemetry (every worker's snapshot) at the phase limits.

Computed from the stream itself, independent of any cache: each request's
data items (token identity, generation, authorization decision, /me), so
"first-time" reads (an item not read since the start or since its last
write) and "repeat" reads (all items already read) are known, and the hit
rate an infinite cache would reach is the share of repeat item reads.

Stale reads: each generation version a response showed is checked against
the database's history (the versions before the arm plus every write's
answer): a version is stale when a newer write had completed before the read
was sent; a 404 for a generation whose creation had answered is stale too.

Run: ``python -m benchmarks.traffic`` (5-8 minutes on 2 quiet cores) or
``--quick``. ``VELRO_BENCH_TRAFFIC_REQUESTS`` / ``VELRO_BENCH_TRAFFIC_MARK``
shorten the stream and its cold start on a loaded machine (the report says
so). Needs PostgreSQL (``VELRO_BENCH_PG_*``), Redis (``VELRO_BENCH_REDIS_URL``)
and the ``bench`` extra (django-cachalot, django-cacheops).
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.support import stop_process

from . import common, warming
from .common import REDIS_URL, ROOT, Report

FULL = {"users": 10_000, "teams": 500, "generations": 50_000, "history": 30_000, "requests": 16_000, "mark": 10_000,
        "workers": 3, "clients": 3}
QUICK = {"users": 200, "teams": 10, "generations": 2_000, "history": 1_000, "requests": 300, "mark": 150,
         "workers": 2, "clients": 2}
# A machine too loaded to replay the full stream five times in minutes: shorter streams (the report says so).
OVERRIDES = {"requests": "VELRO_BENCH_TRAFFIC_REQUESTS", "mark": "VELRO_BENCH_TRAFFIC_MARK"}
ARMS = ("off", "velro", "velro_warm", "cachalot", "cacheops")
LABELS = {"off": "caching off", "velro": "velro-cache", "velro_warm": "velro-cache + warming",
          "cachalot": "django-cachalot", "cacheops": "django-cacheops"}
WORLD_SEED, HISTORY_SEED, STREAM_SEED = 7, 1, 2
CURVE_MARKS = (1_000, 10_000)
START_TIMEOUT = 300  # seconds for gunicorn to answer: minutes on a machine loaded many times over


# -- setup ------------------------------------------------------------------------------------


def _database_name(quick: bool) -> str:
    return os.environ.get("VELRO_BENCH_PG_NAME_TRAFFIC", "velro_cache_bench_traffic" + ("_quick" if quick else ""))


def _environment(database: str, arm: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(ROOT / "example_project"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "DJANGO_SETTINGS_MODULE": "benchmarks.traffic_settings",
            "VELRO_TRAFFIC_ARM": arm, "VELRO_TRAFFIC_DB": database, "VELRO_TRAFFIC_REDIS_URL": REDIS_URL, "REDIS_URL": REDIS_URL}


def _configure(database: str) -> None:
    """This process: the server's settings in the velro arm (its cache reads the workers' telemetry)."""
    os.environ.update(_environment(database, "velro"))
    sys.path[:0] = [str(ROOT / "example_project")]
    import django

    django.setup()


def _flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def _reset_rows(max_id: int) -> None:
    """The previous arm's creations gone, every token used "now" (no last_used_at writes mid-run)."""
    from studio.models import Generation

    Generation.objects.filter(pk__gt=max_id).delete()
    warming._same_token_clock()


def _versions() -> dict[int, str]:
    from studio.models import Generation

    return {pk: updated.isoformat() for pk, updated in Generation.objects.values_list("pk", "updated_at")}


# -- the server ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(database: str, arm: str, workers: int, port: int) -> subprocess.Popen:
    env = {**_environment(database, arm), "VELRO_BIND": f"127.0.0.1:{port}", "VELRO_WORKERS": str(workers)}
    # The example's config warms each worker (post_worker_init); the other arms run without a config
    # file (from the repository root, where gunicorn finds none).
    config = ["-c", str(ROOT / "example_project" / "gunicorn.conf.py")] if arm == "velro_warm" else []
    command = [*config, "-b", f"127.0.0.1:{port}", "-w", str(workers), "example_project.wsgi:application"]
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", *command, "--log-level", "warning"], cwd=ROOT, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:  # it exited (a port taken since _free_port, a settings error): say so now
            raise SystemExit(f"gunicorn ({arm}) exited with status {server.returncode} before answering on port {port}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/me/", timeout=2)
        except urllib.error.HTTPError:
            return server  # 401: Django answers
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"gunicorn ({arm}) did not answer on port {port}")


def _telemetry(workers: int, need_warming: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Every worker's counters per data type, summed, once each worker has published (and warmed, if asked)."""
    from velro_cache.telemetry.combine import combine
    from velro_cache.telemetry.store import _live_snapshots, client

    deadline = time.monotonic() + timeout
    time.sleep(1.2)  # > 2 publish intervals: the workers' figures include the phase just run
    while True:
        snapshots = [s for s in _live_snapshots(client()) if s.get("pid") != os.getpid() and s.get("caches")]
        warmed = [s for s in snapshots if s.get("warming")]
        if len(snapshots) >= workers and (not need_warming or len(warmed) >= workers) or time.monotonic() > deadline:
            view = combine(snapshots)["caches"].get("default", {"by_type": {}})
            return {"by_type": view["by_type"], "workers": len(snapshots),
                    "warming": [s["warming"] for s in warmed]}
        time.sleep(0.25)


# -- one arm ------------------------------------------------------------------------------------


def _arm(arm: str, plan: list[Any], sizes: dict[str, int], database: str, max_id: int) -> dict[str, Any]:
    _reset_rows(max_id)
    _flush_redis()
    initial = _versions()
    port = _free_port()
    server = _start_server(database, arm, sizes["workers"], port)
    velro = arm.startswith("velro")
    try:
        stats = [_telemetry(sizes["workers"], need_warming=arm == "velro_warm")] if velro else []
        missing = max_id + 10_000_000
        samples, elapsed = [], []
        common.stop_background_threads()  # before the manager and the clients fork from this process
        with multiprocessing.Manager() as manager:
            created = manager.dict()
            for start, stop in ((0, sizes["mark"]), (sizes["mark"], len(plan))):
                part, seconds = _replay(port, plan, start, stop, sizes["clients"], created, missing)
                samples += part
                elapsed.append(seconds)
                if velro:
                    stats.append(_telemetry(sizes["workers"]))
    finally:
        stop_process(server, timeout=30)
    return {"samples": samples, "elapsed": elapsed, "stats": stats, "initial": initial}


def _replay(port: int, plan: list[Any], start: int, stop: int, clients: int, created: Any, missing: int) -> tuple[list[dict], float]:
    from .traffic_driver import replay

    return replay("127.0.0.1", port, plan, start, stop, clients, created, missing)


# -- what the stream reads (cache-independent) -----------------------------------------------------


def _items(item: Any, user_of: dict[str, int]) -> tuple[list[tuple], list[tuple]]:
    """(data items the request reads, items it changes), by the stream's own names for generations."""
    from studio.demo.plan import BATCH, CREATE, DETAIL, ME, MEDIA, PATCH

    user = user_of.get(item.token) if item.token else None
    if item.token is None:
        return [], []
    if user is None:
        return [("token", item.token)], []
    reads: list[tuple] = [("token", item.token)]
    path = item.path
    if item.endpoint in (DETAIL, MEDIA) and item.method == "GET":
        pk = path.split("/")[3]
        action = "media" if item.endpoint == MEDIA else "read"
        return [*reads, ("gen", pk), ("auth", user, pk, action)], []
    if item.endpoint == BATCH:
        ids = path.split("ids=", 1)[1].split(",")
        return [*reads, *(entry for pk in ids for entry in (("gen", pk), ("auth", user, pk, "read")))], []
    if item.endpoint == ME:
        return [*reads, ("me", user)], []
    if item.endpoint == PATCH:
        return reads, [("gen", path.split("/")[3])]
    if item.endpoint == CREATE:
        return reads, [("gen", f"new:{item.creates}")]
    return reads, []


def classify(plan: list[Any], user_of: dict[str, int]) -> tuple[list[str], int, int]:
    """Each request's class ("first" / "repeat" GET, "write", "none") and the infinite cache's (hits, reads) of items."""
    seen: set[tuple] = set()
    classes, hits, reads = [], 0, 0
    for item in plan:
        read, written = _items(item, user_of)
        repeat = [entry in seen for entry in read]
        hits += sum(repeat)
        reads += len(read)
        seen.update(read)
        for entry in written:
            seen.discard(entry)
        if item.method != "GET":
            classes.append("write")
        elif not read:
            classes.append("none")
        else:
            classes.append("repeat" if all(repeat) else "first")
    return classes, hits, reads


# -- stale reads ------------------------------------------------------------------------------------


def stale_reads(result: dict[str, Any]) -> tuple[int, int]:
    """(stale, checked) generation versions shown by reads, against the history of writes in this arm."""
    history: dict[int, list[tuple[float, float, str]]] = defaultdict(list)  # id -> (sent, received, version)
    created_at: dict[int, float] = {}
    for sample in result["samples"]:
        if sample["method"] in ("PATCH", "POST") and sample["versions"]:
            pk, version = sample["versions"][0]
            history[pk].append((sample["sent"], sample["received"], version))
            if sample["method"] == "POST":
                created_at[pk] = sample["received"]
    for writes in history.values():
        writes.sort(key=lambda write: write[1])
    stale = checked = 0
    initial = result["initial"]
    for sample in result["samples"]:
        if sample["method"] != "GET":
            continue
        if sample["status"] == 404 and "/generations/" in sample["path"]:
            pk = int(sample["path"].split("/")[3])
            checked += 1
            stale += pk in created_at and created_at[pk] < sample["sent"]
            continue
        for pk, version in sample["versions"] or ():
            checked += 1
            stale += not _acceptable(version, initial.get(pk), history.get(pk, []), sample["sent"], sample["received"])
    return stale, checked


def _acceptable(version: str, initial: str | None, writes: list[tuple[float, float, str]], sent: float, received: float) -> bool:
    """The last write completed before the read was sent, or any write overlapping the read."""
    done = bisect.bisect_right([write[1] for write in writes], sent)
    allowed = {writes[done - 1][2] if done else initial}
    allowed.update(write[2] for write in writes[done:] if write[0] < received)
    return version in allowed


# -- figures ----------------------------------------------------------------------------------------


def _pct(part: float, whole: float) -> float | None:
    return 100 * part / whole if whole else None


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, int]]:
    from velro_cache.namespaces import TOKEN_KEY_TYPE

    rows = {}
    for name, row in after["by_type"].items():
        if name == TOKEN_KEY_TYPE:
            continue  # namespace tokens: looked up by every read, not data
        old = before["by_type"].get(name, {})
        rows[name] = {field: row.get(field, 0) - old.get(field, 0) for field in ("l1_hits", "l2_hits", "misses")}
    return rows


def backend_rates(rows: dict[str, dict[str, int]]) -> dict[str, float | None]:
    """Overall data hit rate, L1's share of the hits, and the authorization decisions' hit rate."""
    l1 = sum(row["l1_hits"] for row in rows.values())
    l2 = sum(row["l2_hits"] for row in rows.values())
    misses = sum(row["misses"] for row in rows.values())
    auth = rows.get("auth", {"l1_hits": 0, "l2_hits": 0, "misses": 0})
    auth_hits = auth["l1_hits"] + auth["l2_hits"]
    return {"overall": _pct(l1 + l2, l1 + l2 + misses), "l1 share": _pct(l1, l1 + l2),
            "authz": _pct(auth_hits, auth_hits + auth["misses"])}


def _ms(samples: list[dict[str, Any]], q: float) -> float | None:
    values = sorted(s["latency_ns"] for s in samples)
    return common.percentile(values, q / 100) / 1e6 if values else None


def _window_row(label: str, samples: list[dict[str, Any]], seconds: float, off_queries: float | None,
                stale: tuple[int, int]) -> dict[str, Any]:
    authorized = [s for s in samples if s["method"] == "GET" and s["status"] == 200]
    queries = sum(s["queries"] for s in samples) / len(samples)
    hits = sum(s["read_hits"] for s in samples)
    return {
        "arm": label,
        "queries/request": queries,
        "% fewer than off": None if off_queries is None else 100 * (1 - queries / off_queries),
        "read-through hit %": _pct(hits, hits + sum(s["read_misses"] for s in samples)),
        "p50 ms": _ms(samples, 50), "p95 ms": _ms(samples, 95), "p99 ms": _ms(samples, 99),
        "authorized GET p95 ms": _ms(authorized, 95),
        "req/s": len(samples) / seconds if seconds else None,
        "stale reads": f"{stale[0]} of {stale[1]:,}",
    }


def _curve(samples: list[dict[str, Any]]) -> list[float]:
    hits = misses = 0
    curve = []
    for sample in samples:
        hits += sample["read_hits"]
        misses += sample["read_misses"]
        curve.append(100 * hits / (hits + misses) if hits + misses else float("nan"))
    return curve


def _plot(results: dict[str, dict[str, Any]], bound: list[float], path: Path) -> bool:
    """The cold-start curves (first 1,000 and first 10,000 requests), with and without warming, and the infinite cache's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for axis, mark in zip(axes, CURVE_MARKS):
        for arm, color in (("velro", "tab:blue"), ("velro_warm", "tab:orange")):
            curve = _curve(results[arm]["samples"][:mark])
            axis.plot(range(1, len(curve) + 1), curve, color=color, label=LABELS[arm])
        axis.plot(range(1, min(mark, len(bound)) + 1), bound[:mark], ":", color="gray", label="infinite cache (bound)")
        axis.set_title(f"cumulative hit rate, first {mark:,} requests")
        axis.set_xlabel("requests after a cold start")
        axis.set_ylabel("% of reads served from cache")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True


def _bound_curve(plan: list[Any], user_of: dict[str, int]) -> list[float]:
    seen: set[tuple] = set()
    hits = reads = 0
    curve = []
    for item in plan:
        read, written = _items(item, user_of)
        hits += sum(entry in seen for entry in read)
        reads += len(read)
        seen.update(read)
        seen.difference_update(written)
        curve.append(100 * hits / reads if reads else float("nan"))
    return curve


def first_time_cost(arm: list[dict[str, Any]], off: list[dict[str, Any]], classes: list[str], wanted: str) -> dict[str, Any]:
    """Latency of one class of GETs in an arm against the very same requests with caching off."""
    pairs = [(a, o) for a, o, c in zip(arm, off, classes) if c == wanted and a["status"] == o["status"]]
    mine, theirs = [a for a, _ in pairs], [o for _, o in pairs]
    row: dict[str, Any] = {"requests": len(pairs)}
    for q in (50, 95):
        a, o = _ms(mine, q), _ms(theirs, q)
        row[f"p{q} ms"], row[f"p{q} ms off"] = a, o
        row[f"p{q} ratio"] = a / o if a is not None and o else None
    row["no-query %"] = _pct(sum(1 for a in mine if a["queries"] == 0), len(mine))
    return row


# -- the run -----------------------------------------------------------------------------------------


def _sizes(quick: bool) -> dict[str, int]:
    sizes = dict(QUICK if quick else FULL)
    sizes.update({name: int(os.environ[variable]) for name, variable in OVERRIDES.items() if os.environ.get(variable)})
    sizes["mark"] = min(sizes["mark"], sizes["requests"] - 1)
    return sizes


def _terminate_cleanly() -> None:
    """SIGTERM as SystemExit in this process, so the running arm's ``finally`` stops its gunicorn.

    The driver's forked clients inherit the handler; a pool ends them with
    SIGTERM, which in them keeps its default meaning.
    """
    main = os.getpid()

    def handle(signum: int, frame: Any) -> None:
        if os.getpid() != main:
            os._exit(128 + signum)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handle)


def run(args: argparse.Namespace) -> Report:
    _terminate_cleanly()
    sizes = _sizes(args.quick)
    if not common.redis_answers():
        raise SystemExit(f"benchmarks.traffic needs Redis at {REDIS_URL}")
    database = _database_name(args.quick)
    common.ensure_database(database)
    _configure(database)
    from studio.demo.plan import World
    from studio.models import Generation
    from studio.traffic import TrafficModel

    seeded = warming._seed(sizes)
    world = World.load(random.Random(WORLD_SEED))
    history = warming._write_history(world, TrafficModel(world, random.Random(HISTORY_SEED)).stream(sizes["history"]))
    warming._refresh_views()
    plan = TrafficModel(world, random.Random(STREAM_SEED)).stream(sizes["requests"])
    user_of = {token: user for user, token in world.token_of.items()}
    max_id = Generation.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    classes, bound_hits, bound_reads = classify(plan, user_of)

    results = {}
    for arm in ARMS:
        started = time.perf_counter()
        results[arm] = _arm(arm, plan, sizes, database, max_id)
        print(f"  {LABELS[arm]}: {len(plan):,} requests, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    _reset_rows(max_id)
    return _report(args, sizes, plan, world, results, classes, (bound_hits, bound_reads), seeded, history)


def _report(args: argparse.Namespace, sizes: dict[str, int], plan: list[Any], world: Any, results: dict[str, dict[str, Any]],
            classes: list[str], bound: tuple[int, int], seeded: float, history: int) -> Report:
    mark = sizes["mark"]
    users = {item.token for item in plan if item.token in set(world.token_of.values())}
    writes = sum(1 for item in plan if item.method != "GET")
    statuses: dict[int, int] = defaultdict(int)
    for sample in results["off"]["samples"]:
        statuses[sample["status"]] += 1
    report = Report(
        "traffic",
        "Traffic: the Velro traffic model over real HTTP, caching off / velro-cache / cachalot / cacheops",
        [
            "Generated by `python -m benchmarks.traffic`. The example project under gunicorn "
            f"({sizes['workers']} sync workers) on PostgreSQL and Redis; {sizes['clients']} client processes",
            "(`benchmarks/traffic_driver.py`, http.client, closed loop) replay ONE request stream of the traffic model",
            f"(`studio/traffic.py`, seed {STREAM_SEED}) in each arm, each from a flushed Redis and the same rows.",
            f"Stream: {len(plan):,} requests, {len(users):,} distinct users (of {len(world.users):,} seeded, "
            f"{len(world.generations):,} generations), {100 * writes / len(plan):.1f} % writes; status mix with caching off: "
            + ", ".join(f"{code}: {count:,}" for code, count in sorted(statuses.items())) + ".",
            f"Cold start: requests 1-{mark:,}; warm state: requests {mark + 1:,}-{len(plan):,} (the targets are judged there).",
            f"Warming's \"active users\" come from {history:,} reads of yesterday's traffic (same model, seed {HISTORY_SEED}).",
            f"Seed/top-up: {seeded:.0f} s. The machine has 2 cores, shared with other work during the run: the server, the",
            "clients, PostgreSQL and Redis compete for them, so latencies include CPU waits (compare arms, not absolutes).",
        ],
        quick=args.quick,
    )
    shortened = [f"{variable}={os.environ[variable]}" for variable in OVERRIDES.values() if os.environ.get(variable)]
    if shortened:
        report.intro.append(f"Shortened stream ({', '.join(shortened)}; the default is {FULL['requests']:,} requests, "
                            f"cold start {FULL['mark']:,}): the machine was too loaded to replay the full stream five times.")
    out = args.out if args.out is not None else (None if args.quick else common.RESULTS)
    _tables(report, sizes, plan, results, classes, bound, out, {token: user for user, token in world.token_of.items()})
    return report


def _tables(report: Report, sizes: dict[str, int], plan: list[Any], results: dict[str, dict[str, Any]],
            classes: list[str], bound: tuple[int, int], out: Path | None, user_of: dict[str, int]) -> None:
    mark = sizes["mark"]
    warm_rows, all_rows = [], []
    off_warm = sum(s["queries"] for s in results["off"]["samples"][mark:]) / max(1, len(results["off"]["samples"][mark:]))
    off_all = sum(s["queries"] for s in results["off"]["samples"]) / max(1, len(results["off"]["samples"]))
    stale = {arm: stale_reads(result) for arm, result in results.items()}
    for arm, result in results.items():
        samples = result["samples"]
        warm_rows.append(_window_row(LABELS[arm], samples[mark:], result["elapsed"][1], None if arm == "off" else off_warm, stale[arm]))
        all_rows.append(_window_row(LABELS[arm], samples, sum(result["elapsed"]), None if arm == "off" else off_all, stale[arm]))
    report.table(f"Warm state (requests {mark + 1:,}-{len(plan):,}), side by side", list(warm_rows[0]), warm_rows,
                 ["Queries: SQL statements each request sent (an ORM cache's hit sends none). Stale reads: over the whole run."])
    report.table("Whole stream (cold start included)", list(all_rows[0]), all_rows)

    rates_rows = []
    for arm in ("velro", "velro_warm"):
        stats = results[arm]["stats"]
        for label, (before, after) in (("cold start", (stats[0], stats[1])), ("warm state", (stats[1], stats[2]))):
            rates = backend_rates(_delta(after, before))
            rates_rows.append({"arm": LABELS[arm], "window": label, "overall hit %": rates["overall"],
                               "L1 share of hits %": rates["l1 share"], "authorization hit %": rates["authz"]})
    bound_rate = 100 * bound[0] / bound[1] if bound[1] else None
    report.table("velro-cache's counters (every worker, data types; namespace tokens left out)", list(rates_rows[0]), rates_rows,
                 [f"An infinite cache on this stream would hit {bound_rate:.1f} % of its item reads (token, generation,"
                  " decision, /me; first reads and reads after a write miss)."])

    cost_rows = []
    for arm in ("velro", "velro_warm", "cachalot", "cacheops"):
        for wanted in ("first", "repeat"):
            row = first_time_cost(results[arm]["samples"], results["off"]["samples"], classes, wanted)
            cost_rows.append({"arm": LABELS[arm], "reads": f"{wanted}-time" if wanted == "first" else "repeat", **row})
    report.table("The cache's own efficiency: GETs by whether their data was read before (whole stream)", list(cost_rows[0]), cost_rows,
                 ["first-time: a GET reading at least one item not read since the start or its last write; repeat: all",
                  "items already read. Ratios: the same requests' latency in this arm over caching off, same run."])

    _type_table(report, results)
    curve = _bound_curve(plan, user_of)
    plotted = out is not None and _plot(results, curve, out / "traffic.png")
    columns = ["first requests", *(f"hit %, {LABELS[arm]}" for arm in ("velro", "velro_warm")), "infinite cache %"]
    report.table("Cold start: cumulative read-through hit rate", columns, _curve_rows(results, curve),
                 ["![cold-start curves](traffic.png)" if plotted else "(no PNG: a --quick run without --out, or no matplotlib)"])
    _budgets(report, warm_rows, rates_rows, cost_rows)


def _curve_rows(results: dict[str, dict[str, Any]], bound: list[float]) -> list[dict[str, Any]]:
    rows = []
    for mark in (100, *CURVE_MARKS, len(bound)):
        if mark > len(bound) or any(row["first requests"] == mark for row in rows):
            continue
        row: dict[str, Any] = {"first requests": mark}
        for arm in ("velro", "velro_warm"):
            row[f"hit %, {LABELS[arm]}"] = _curve(results[arm]["samples"][:mark])[-1]
        row["infinite cache %"] = bound[mark - 1]
        rows.append(row)
    return rows


def _type_table(report: Report, results: dict[str, dict[str, Any]]) -> None:
    rows = []
    deltas = {arm: _delta(results[arm]["stats"][2], results[arm]["stats"][1]) for arm in ("velro", "velro_warm")}
    for name in sorted({name for rows_ in deltas.values() for name in rows_}):
        row: dict[str, Any] = {"data type": name}
        for arm, by_type in deltas.items():
            counts = by_type.get(name, {"l1_hits": 0, "l2_hits": 0, "misses": 0})
            reads = sum(counts.values())
            row[f"reads, {LABELS[arm]}"] = reads
            row[f"hit %, {LABELS[arm]}"] = _pct(counts["l1_hits"] + counts["l2_hits"], reads)
            row[f"L1 %, {LABELS[arm]}"] = _pct(counts["l1_hits"], counts["l1_hits"] + counts["l2_hits"])
        if any(row[f"reads, {LABELS[arm]}"] for arm in deltas):
            rows.append(row)
    if rows:
        report.table("velro-cache per data type, warm state", list(rows[0]), rows)


def _budgets(report: Report, warm_rows: list[dict[str, Any]], rates_rows: list[dict[str, Any]], cost_rows: list[dict[str, Any]]) -> None:
    """The issue's warm-state targets, judged on velro-cache with warming (and the efficiency ones without)."""
    warm = next(row for row in warm_rows if row["arm"] == LABELS["velro_warm"])
    rates = next(row for row in rates_rows if row["arm"] == LABELS["velro_warm"] and row["window"] == "warm state")

    def at_least(name: str, value: float | None, target: float, unit: str = " %") -> None:
        report.budget(name, value is not None and value >= target, f"{_fmt(value)}{unit} (target >= {target:g}{unit})")

    at_least("overall hit rate, warm", rates["overall hit %"], 97)
    at_least("L1 share of hits, warm", rates["L1 share of hits %"], 97)
    at_least("authorization hit rate, warm", rates["authorization hit %"], 99)
    at_least("fewer queries per request than off, warm", warm["% fewer than off"], 90)
    p95 = warm["authorized GET p95 ms"]
    report.budget("authorized GET p95, warm", p95 is not None and p95 < 5, f"{_fmt(p95)} ms (target < 5 ms)")
    for arm in ("velro", "velro_warm"):
        repeat = next(row for row in cost_rows if row["arm"] == LABELS[arm] and row["reads"] == "repeat")
        at_least(f"repeat reads that run no query, {LABELS[arm]}", repeat["no-query %"], 97)
    first = next(row for row in cost_rows if row["arm"] == LABELS["velro"] and row["reads"] == "first-time")
    for q in (50, 95):
        ratio = first[f"p{q} ratio"]
        report.budget(f"first-time read p{q} vs caching off", ratio is not None and ratio <= 1.1,
                      f"{_fmt(ratio)}x (target <= 1.1x)")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    return common.cli("traffic", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
