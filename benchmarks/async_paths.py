"""The async API: TieredCache's native a* methods against its sync path, Django's thread-hop wrappers and django-redis.

Five paths to the same Redis (loopback, database of the benchmarks), side by
side in one run:

* ``Tiered async``: TieredCache's native ``aget``/``aset``/... (``velro_cache.aio``,
  redis.asyncio on the running loop);
* ``Tiered sync``: the same cache's sync methods, called from plain code;
* ``Tiered thread hop``: what TieredCache's async methods were before they were
  native: Django's ``BaseCache`` wrappers (``sync_to_async`` around the sync
  method, a worker thread per call), called on the same instance;
* ``django-redis async`` and ``django-redis sync``: django-redis's async methods
  are those same ``BaseCache`` wrappers around its sync client.

Each call is timed on its own (async ones inside the event loop, so the loop's
own start-up is not in the figure), cases interleaved in rounds. An L2 hit is
forced as ``benchmarks.l2`` does: the key is dropped from TieredCache's L1
before each timed get, outside the timed window.

Two concurrency measures follow: how many times a burst of 32 coroutines
missing one key runs its loader (``aget_or_set``: single flight or not), and
the throughput of 64 coroutines doing L2-hit gets on one loop.

Last, the same TieredCache calls on a three-primary Redis Cluster of the run's
own (``tests.redis_cluster.LocalCluster``; skipped without redis-server and
redis-cli): ``aget``/``aset``/``aget_many`` on the cluster's native async tier
(``tiers.acluster``) against the thread hop they replaced (``ThreadedTier`` here,
the sync cluster tier's methods in worker threads, installed for one cache
here only) and against the sync methods.

Run: ``python -m benchmarks.async_paths`` (about four minutes) or ``--quick``.
Results: ``benchmarks/results/async.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from . import common
from .common import Report

TIERED, DJANGO_REDIS = "TieredCache", "django-redis"
BACKENDS = {TIERED: "velro_cache.backends.TieredCache", DJANGO_REDIS: "django_redis.cache.RedisCache"}
PREFIXES = {TIERED: common.key_prefix("async-tiered"), DJANGO_REDIS: common.key_prefix("async-djredis")}

T_ASYNC, T_SYNC, T_HOP, DR_ASYNC, DR_SYNC = "Tiered async", "Tiered sync", "Tiered thread hop", "django-redis async", "django-redis sync"
PATHS = (T_ASYNC, T_SYNC, T_HOP, DR_ASYNC, DR_SYNC)
VALUE = {"id": 7, "owner": 3, "status": "done", "prompt": "a fox at dusk", "tags": ["a", "b", "c"]}
BATCH = 10

FULL = {"calls": 5_000, "rounds": 10, "burst": 32, "concurrent": 64, "throughput": 4_000}
QUICK = {"calls": 100, "rounds": 2, "burst": 32, "concurrent": 16, "throughput": 200}


def _caches() -> dict[str, dict[str, Any]]:
    return {name: {"BACKEND": backend, "LOCATION": common.REDIS_URL, "KEY_PREFIX": PREFIXES[name]} for name, backend in BACKENDS.items()}


async def _time_each_async(fn: Callable[..., Any], args: tuple, n: int, out: list[int], before: Callable[[], Any] | None) -> None:
    """``common.time_each`` for a coroutine function, timed inside the running loop."""
    clock = time.perf_counter_ns
    for _ in range(n):
        if before is not None:
            before()
        start = clock()
        await fn(*args)
        out.append(clock() - start)


def _interleaved(loop: asyncio.AbstractEventLoop, cases: dict[str, tuple], total: int, rounds: int) -> dict[str, list[int]]:
    """``common.interleaved`` for a mix of sync and async cases: (fn, args, before, is_async)."""
    samples: dict[str, list[int]] = {name: [] for name in cases}
    names = list(cases)

    def slice_of(name: str, n: int, out: list[int]) -> None:
        fn, args, before, is_async = cases[name]
        if is_async:
            loop.run_until_complete(_time_each_async(fn, args, n, out, before))
        else:
            common.time_each(fn, args, n, out, before)

    for name in names:
        slice_of(name, max(20, total // 20), [])  # warm-up: connections, key memos, the thread pool
    per_round = max(1, total // rounds)
    with common.gc_paused():
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                slice_of(name, per_round, samples[name])
    return samples


def _hop(cache: Any, name: str) -> Callable[..., Any]:
    """Django's BaseCache async wrapper of ``name`` (sync_to_async around the sync method), bound to ``cache``."""
    from django.core.cache.backends.base import BaseCache

    method = getattr(BaseCache, "a" + name)
    return lambda *args: method(cache, *args)


def _operations(tiered: Any, djredis: Any) -> dict[str, dict[str, tuple]]:
    """Per operation, the five paths as (fn, args, before, is_async)."""
    full = tiered.make_key("hit")
    drop_l1 = lambda: tiered._l1.delete(full)  # noqa: E731 - forces the L2 hit, untimed
    many = [f"m{i}" for i in range(BATCH)]
    fulls = [tiered.make_key(key) for key in many]

    def drop_many() -> None:
        for key in fulls:
            tiered._l1.delete(key)

    def paths(name: str, args: tuple, before: Callable[[], Any] | None = None, dr_before: Callable[[], Any] | None = None) -> dict:
        return {
            T_ASYNC: (getattr(tiered, "a" + name), args, before, True),
            T_SYNC: (getattr(tiered, name), args, before, False),
            T_HOP: (_hop(tiered, name), args, before, True),
            DR_ASYNC: (getattr(djredis, "a" + name), args, dr_before, True),
            DR_SYNC: (getattr(djredis, name), args, dr_before, False),
        }

    return {
        "get (L1 hit)": paths("get", ("hit",)),
        "get (L2 hit)": paths("get", ("hit",), drop_l1),
        "set": paths("set", ("written", VALUE, 300)),
        f"get_many({BATCH}) (L2 hits)": paths("get_many", (many,), drop_many),
        # The counter is set again (untimed) before each incr: on a loaded machine a key lost to a
        # failed write would otherwise end the run with "Key not found".
        "incr": paths("incr", ("counter",), lambda: tiered.set("counter", 0, None), lambda: djredis.set("counter", 0, None)),
    }


async def _burst(cache: Any, key: str, size: int) -> int:
    """How many times ``size`` coroutines missing one key run the loader of ``aget_or_set``."""
    runs = []

    def loader() -> dict:
        runs.append(1)
        return VALUE

    async def one() -> Any:
        await asyncio.sleep(0)
        return await cache.aget_or_set(key, loader, 300)

    await asyncio.gather(*(one() for _ in range(size)))
    return len(runs)


async def _throughput(get: Callable[[str], Any], before: Callable[[], Any] | None, workers: int, total: int) -> float:
    """Gets per second with ``workers`` coroutines sharing ``total`` gets on one loop."""
    per_worker = max(1, total // workers)

    async def worker() -> None:
        for _ in range(per_worker):
            if before is not None:
                before()
            await get("hit")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return per_worker * workers / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> Report:
    plan = QUICK if args.quick else FULL
    report = Report(
        "async",
        "The async API: native vs sync vs thread hop vs django-redis",
        [
            "Generated by `python -m benchmarks.async_paths`. One Redis on loopback for every path;",
            f"{plan['calls']:,} calls per path and operation, each timed on its own, paths interleaved in {plan['rounds']} rounds.",
            "`Tiered thread hop` is Django's `sync_to_async` wrapper around TieredCache's sync method: what",
            "`aset` & co. were before the async API was native. django-redis's async methods are the same wrappers.",
        ],
        quick=args.quick,
    )
    if not common.redis_answers():
        report.budget("a Redis to measure against", False, f"none at {common.REDIS_URL}")
        return report
    common.configure_django(_caches())
    from django.core.cache import caches

    tiered, djredis = caches[TIERED], caches[DJANGO_REDIS]
    for cache in (tiered, djredis):
        cache.set("hit", VALUE, 300)
        cache.set_many({f"m{i}": VALUE for i in range(BATCH)}, 300)
        cache.set("counter", 0, None)
    tiered.get("hit")  # in L1 for the L1-hit rows
    loop = asyncio.new_event_loop()
    try:
        with common.library_warnings() as warned:
            rows, tails, checks = _latency_rows(loop, tiered, djredis, plan)
            burst_rows = _burst_rows(loop, tiered, djredis, plan)
            throughput_rows = _throughput_rows(loop, tiered, djredis, plan)
    finally:
        tiered.clear()
        djredis.clear()
        loop.close()
    columns = ["operation", *(f"{path} µs" for path in PATHS), "async × sync", "async × thread hop", "async × django-redis async"]
    notes = [
        "Medians per call in µs. Ratios are medians of the native async path over the other path",
        "(below 1: the native path is faster). A `get (L1 hit)` never reaches Redis on TieredCache's native and sync",
        "paths; django-redis has no L1, so its rows are Redis round trips throughout. The `L2 hit` rows are checked",
        "on TieredCache's own counters (a miss there: Redis too slow under load, the breaker opened):",
        *(f"- {line}" for line in checks),
        *common.warnings_note(warned),
    ]
    report.table("Latency per call", columns, rows, notes)
    report.table("p99 per call", ["operation", *(f"{path} µs" for path in PATHS)], tails, ["The same samples' 99th percentiles."])
    report.table(
        f"{plan['burst']} coroutines missing one key: loader runs of aget_or_set",
        ["path", "loader runs"],
        burst_rows,
        ["TieredCache's aget_or_set is single-flight (an asyncio lock per key, then the Redis lease);",
         "Django's BaseCache.aget_or_set, which django-redis inherits, lets every coroutine run the loader."],
    )
    report.table(
        f"Throughput: {plan['concurrent']} coroutines on one loop doing L2-hit gets",
        ["path", "gets/s", "× thread hop"],
        throughput_rows,
        ["TieredCache's L1 copy is dropped before each get on its paths, so every get is a Redis round trip."],
    )
    cluster = _cluster_table(plan)
    if cluster is None:
        report.budget("a Redis Cluster to measure against", False, "redis-server or redis-cli missing")
    else:
        report.table(*cluster)
    for row in burst_rows:
        if row["path"] == T_ASYNC:
            report.budget("aget_or_set runs the loader once for a burst", row["loader runs"] == 1, f"{row['loader runs']} runs")
    return report


def _latency_rows(loop: asyncio.AbstractEventLoop, tiered: Any, djredis: Any, plan: dict) -> tuple[list[dict], list[dict], list[str]]:
    """Per operation: the medians with their ratios, the p99s, and how many forced L2 hits were not."""
    rows, tails, checks = [], [], []
    for operation, cases in _operations(tiered, djredis).items():
        before = tiered.stats()["totals"]
        samples = _interleaved(loop, cases, plan["calls"], plan["rounds"])
        after = tiered.stats()["totals"]
        if "L2 hit" in operation:
            not_l2 = after["l1_hits"] - before["l1_hits"] + after["misses"] - before["misses"]
            checks.append(f"{operation}: {not_l2} of {after['requests'] - before['requests']} TieredCache gets were not L2 hits")
        medians = {path: common.median_us(samples[path]) for path in PATHS}
        row: dict[str, Any] = {"operation": operation, **{f"{path} µs": medians[path] for path in PATHS}}
        row["async × sync"] = common.ratio(medians[T_ASYNC], medians[T_SYNC])
        row["async × thread hop"] = common.ratio(medians[T_ASYNC], medians[T_HOP])
        row["async × django-redis async"] = common.ratio(medians[T_ASYNC], medians[DR_ASYNC])
        rows.append(row)
        tails.append({"operation": operation, **{f"{path} µs": common.summarize(samples[path])["p99 µs"] for path in PATHS}})
    return rows, tails, checks


def _burst_rows(loop: asyncio.AbstractEventLoop, tiered: Any, djredis: Any, plan: dict) -> list[dict[str, Any]]:
    from django.core.cache.backends.base import BaseCache

    class Hopping:
        """TieredCache with Django's own aget_or_set (before: no single flight)."""

        def __init__(self, cache: Any) -> None:
            self.cache = cache

        async def aget_or_set(self, *args: Any) -> Any:
            return await BaseCache.aget_or_set(self.cache, *args)

    rows = []
    for path, cache in ((T_ASYNC, tiered), (T_HOP, Hopping(tiered)), (DR_ASYNC, djredis)):
        runs = loop.run_until_complete(_burst(cache, f"burst-{path}", plan["burst"]))
        rows.append({"path": path, "loader runs": runs})
    return rows


def _throughput_rows(loop: asyncio.AbstractEventLoop, tiered: Any, djredis: Any, plan: dict) -> list[dict[str, Any]]:
    full = tiered.make_key("hit")
    drop_l1 = lambda: tiered._l1.delete(full)  # noqa: E731
    paths = {T_ASYNC: (tiered.aget, drop_l1), T_HOP: (_hop(tiered, "get"), drop_l1), DR_ASYNC: (djredis.aget, None)}
    measured = {}
    for path, (get, before) in paths.items():
        measured[path] = loop.run_until_complete(_throughput(get, before, plan["concurrent"], plan["throughput"]))
    return [{"path": path, "gets/s": rate, "× thread hop": common.ratio(rate, measured[T_HOP])} for path, rate in measured.items()]


C_ASYNC, C_HOP, C_SYNC = "cluster async", "cluster thread hop", "cluster sync"
CLUSTER_PATHS = (C_ASYNC, C_HOP, C_SYNC)


def _cluster_table(plan: dict) -> tuple[str, list[str], list[dict[str, Any]], list[str]] | None:
    """The cluster rows: (title, columns, rows, notes), or None when no cluster can be started here."""
    import shutil

    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        return None
    from tests.redis_cluster import LocalCluster
    from velro_cache.tiers.process import discard

    cluster = LocalCluster().start()
    loop = asyncio.new_event_loop()
    native, hopping = _cluster_caches(cluster.urls, loop)
    try:
        # Seeded before warnings are counted: this process's first connection to each node
        # logs it as a new incarnation (tiers.incarnation), once, as any process's start does.
        native.set("hit", VALUE, 300)
        native.set_many({f"m{i}": VALUE for i in range(BATCH)}, 300)
        with common.library_warnings() as warned:
            rows, checks = _cluster_rows(loop, native, hopping, plan)
    finally:
        native.clear()
        for cache in (native, hopping):
            discard(cache._state)  # its listener stops before the cluster does
        loop.close()
        cluster.stop()
    columns = ["operation", *(f"{path} µs" for path in CLUSTER_PATHS), "async × thread hop", "async × sync"]
    notes = [
        "Medians per call in µs on a three-primary Redis Cluster (loopback, no replicas) started for this run;",
        "`cluster thread hop` is the path the cluster's a* calls took before `tiers.acluster`: `ThreadedTier`, each L2",
        "call of the sync cluster tier run in a worker thread. The L1 copies are dropped before each timed read, so every",
        "read is an L2 hit; checked on TieredCache's counters:",
        *(f"- {line}" for line in checks),
        *common.warnings_note(warned),
    ]
    return "On a Redis Cluster: native async vs the thread hop it replaced vs sync", columns, rows, notes


class ThreadedTier:
    """A sync tier's methods as coroutines run in worker threads: the path async calls took before the native tiers.

    The benchmark's baseline only (velro_cache has no use for it any more):
    each awaited L2 call becomes a ``sync_to_async`` hop to a worker thread
    that blocks on the sync client.
    """

    def __init__(self, tier: Any) -> None:
        self._tier = tier

    def __getattr__(self, name: str) -> Any:
        from asgiref.sync import sync_to_async

        method = sync_to_async(getattr(self._tier, name), thread_sensitive=False)
        setattr(self, name, method)
        return method


def _cluster_caches(urls: list[str], loop: asyncio.AbstractEventLoop) -> tuple[Any, Any]:
    """Two TieredCaches on the cluster (separate L1s, so separate sync tiers); the second's a* calls hop to threads.

    The thread hop is selected for this benchmark only, by giving the
    loop's tier map (``tiers.aredis.tier_for``) a ``ThreadedTier`` (above) for the
    second cache's sync tier before its first call.
    """
    import weakref

    from velro_cache.backends import TieredCache
    from velro_cache.tiers import aredis

    prefix = common.key_prefix("async-cluster")
    native, hopping = (
        TieredCache(urls, {"KEY_PREFIX": prefix, "OPTIONS": {"L1": {"MAX_BYTES": budget}}}) for budget in (64 << 20, 65 << 20)
    )
    aredis._tiers.setdefault(loop, weakref.WeakKeyDictionary())[hopping._l2] = ThreadedTier(hopping._l2)
    return native, hopping


def _cluster_rows(loop: asyncio.AbstractEventLoop, native: Any, hopping: Any, plan: dict) -> tuple[list[dict[str, Any]], list[str]]:
    """Per operation, the three cluster paths' medians and ratios, and how many forced L2 hits were not."""
    many = [f"m{i}" for i in range(BATCH)]

    def dropping(keys: list[str]) -> Callable[[], None]:
        fulls = [native.make_key(key) for key in keys]  # one key prefix: the same full keys in both caches

        def drop() -> None:
            for full in fulls:
                native._l1.delete(full)
                hopping._l1.delete(full)

        return drop

    def paths(name: str, args: tuple, before: Callable[[], Any] | None = None) -> dict[str, tuple]:
        return {
            C_ASYNC: (getattr(native, "a" + name), args, before, True),
            C_HOP: (getattr(hopping, "a" + name), args, before, True),
            C_SYNC: (getattr(native, name), args, before, False),
        }

    operations = {
        "aget (L2 hit)": paths("get", ("hit",), dropping(["hit"])),
        "aset": paths("set", ("written", VALUE, 300)),
        f"aget_many({BATCH}) (L2 hits)": paths("get_many", (many,), dropping(many)),
    }
    rows, checks = [], []
    for operation, cases in operations.items():
        before = [cache.stats()["totals"] for cache in (native, hopping)]
        samples = _interleaved(loop, cases, plan["calls"], plan["rounds"])
        if "L2 hit" in operation:
            after = [cache.stats()["totals"] for cache in (native, hopping)]
            not_l2 = sum(a["l1_hits"] - b["l1_hits"] + a["misses"] - b["misses"] for a, b in zip(after, before))
            asked = sum(a["requests"] - b["requests"] for a, b in zip(after, before))
            checks.append(f"{operation}: {not_l2} of {asked} TieredCache gets were not L2 hits")
        medians = {path: common.median_us(samples[path]) for path in CLUSTER_PATHS}
        row: dict[str, Any] = {"operation": operation, **{f"{path} µs": medians[path] for path in CLUSTER_PATHS}}
        row["async × thread hop"] = common.ratio(medians[C_ASYNC], medians[C_HOP])
        row["async × sync"] = common.ratio(medians[C_ASYNC], medians[C_SYNC])
        rows.append(row)
    return rows, checks


def main(argv: list[str] | None = None) -> int:
    return common.cli("async", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
