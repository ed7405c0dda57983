"""Resilience: coherence delay between processes, Redis killed or paused under load, stampedes.

Three questions a site running several worker processes on one Redis asks,
each answered against redis-servers this benchmark starts itself (so it may
kill them) on free loopback ports:

1. After a write in one process, how long until every other process stops
   serving its L1 copy? Worker processes hold the value in L1; one writes, the
   others poll until they read the new value. Timed on CLOCK_MONOTONIC, shared
   by all processes. A plain redis-py publish -> subscriber delivery between
   processes is measured alongside as the floor.
2. Redis killed (SIGKILL) or frozen (SIGSTOP, a "slow" Redis whose sockets
   stay open) in the middle of a read load, then brought back on the same
   port: errors raised to callers, latency before/during/after, hit rate, and
   how long until L2 is used again (breaker closed, L1 on, a write lands in
   Redis).
3. 100 callers missing one cold key together, with a loader that takes
   100 ms: loader calls and wall time, for TieredCache.get_or_load, Django's
   RedisCache.get_or_set (no stampede protection) and no cache at all, in one
   process (100 threads) and across processes (4 x 25 threads).

Run: ``python -m benchmarks.resilience`` (about a minute and a half) or ``--quick``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self

import redis

from . import common
from .common import Report
from .resilience_worker import DJANGO, POLL, TIERED, Worker, caches_for, stampede

FAULTY = "tiered-faulty"
PREFIX = "bench-res"

PROPAGATION_P99_MS = 50.0
LOAD_P99_MS = 50.0
BACK_TO_L2_S = 5.0

DB_READ = 0.001  # what the loader of the read load costs: a fast indexed query
STAMPEDE_LOAD = 0.1
STAMPEDE_CALLERS = 100
STAMPEDE_PROCESSES = 4
WATCH_LIMIT = 2.0  # seconds a reader waits for a propagated write before counting it unseen
SIGN_POLL = 0.005  # seconds between two looks at the recovery signs
LOAD_SKEW = 1.0  # Zipf exponent of the read load's keys
WRITE_SHARE = 0.02  # of the load's operations: deletes, as a model save invalidates

FULL = {
    "workers": 4, "rounds": 150, "messages": 300,
    "threads": 4, "think": 0.0005, "keys": 1000, "before": 4.0, "outage": 4.0, "worst_outage": 7.0, "cap": 10.0, "tail": 4.0,
    "stampedes": 5,
}
QUICK = {
    "workers": 4, "rounds": 15, "messages": 30,
    "threads": 4, "think": 0.0005, "keys": 200, "before": 0.5, "outage": 0.8, "worst_outage": 0.3, "cap": 6.0, "tail": 0.5,
    "stampedes": 1,
}


# -- small helpers ------------------------------------------------------------------------------


def ms_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """p50 / p99 / max in ms; None (not NaN) when empty, so the JSON stays strict."""
    ordered = sorted(seconds)
    if not ordered:
        return {"n": 0, "p50 ms": None, "p99 ms": None, "max ms": None}
    return {
        "n": len(ordered),
        "p50 ms": common.percentile(ordered, 0.5) * 1000,
        "p99 ms": common.percentile(ordered, 0.99) * 1000,
        "max ms": ordered[-1] * 1000,
    }


def start_workers(url: str, count: int) -> list[Worker]:
    """Started together: each one imports Django, which is most of its start-up."""
    workers = [Worker(url, PREFIX) for _ in range(count)]
    for worker in workers:
        worker.wait_ready()
    return workers


# -- 1. propagation -------------------------------------------------------------------------------


def _prime_readers(readers: list[Worker], key: str, value: str) -> list[Worker]:
    """The readers that hold the current value in L1 (one whose L1 is off cannot be measured)."""
    for reader in readers:
        reader.send(op="prime", key=key, value=value)
    return [reader for reader in readers if reader.receive()]


def measure_propagation(workers: list[Worker], rounds: int) -> dict[str, Any]:
    """Delay from a writer's ``set()`` call to each other process reading the new value."""
    key, current = "propagation", "round -1"
    workers[0].call(op="set", key=key, value=current)
    delays, writes, unseen, unprimed = [], [], 0, 0
    for index in range(rounds):
        writer = workers[index % len(workers)]
        readers = _prime_readers([w for w in workers if w is not writer], key, current)
        unprimed += len(workers) - 1 - len(readers)
        value = f"round {index}"
        for reader in readers:
            reader.send(op="watch", key=key, value=value, limit=WATCH_LIMIT)
        for reader in readers:
            reader.armed()
        started, ended = writer.call(op="set", key=key, value=value)
        writes.append(ended - started)
        for reader in readers:
            seen = reader.receive()
            if seen is None:
                unseen += 1
            else:
                delays.append(seen - started)
        current = value
        time.sleep(random.uniform(0, 0.005))  # do not phase-lock with the listeners' heartbeats
    return {"delays": delays, "writes": writes, "unseen": unseen, "unprimed": unprimed}


def measure_pubsub(url: str, subscribers: list[Worker], count: int) -> list[float]:
    """The floor: a plain publish in this process to subscribers in other processes."""
    channel = "bench:resilience:baseline"
    for subscriber in subscribers:
        subscriber.send(op="subscribe", channel=channel, count=count, limit=count * 0.01 + 5)
    for subscriber in subscribers:
        subscriber.armed()
    client = redis.Redis.from_url(url)
    for _ in range(count):
        client.publish(channel, repr(time.monotonic()))
        time.sleep(random.uniform(0.001, 0.003))
    client.close()
    return [delay for subscriber in subscribers for delay in subscriber.receive()]


def report_propagation(report: Report, result: dict[str, Any], pubsub: list[float], processes: int, health: list[str]) -> None:
    stats = ms_stats(result["delays"])
    p99 = stats["p99 ms"]
    ok = p99 is not None and p99 < PROPAGATION_P99_MS and result["unseen"] == 0
    mark = report.budget(
        f"invalidation propagation between processes p99 < {PROPAGATION_P99_MS:g} ms",
        ok,
        f"p99 {p99:.2f} ms over {stats['n']} deliveries, {result['unseen']} never seen" if p99 is not None else "nothing measured",
    )
    rows = [
        {"path": "TieredCache set() -> other process reads the new value", **stats, f"not seen in {WATCH_LIMIT:g} s": result["unseen"], f"p99 < {PROPAGATION_P99_MS:g} ms": mark},
        {"path": "writer's set() call itself (SET + lease DEL + PUBLISH pipeline)", **ms_stats(result["writes"])},
        {"path": "plain redis-py PUBLISH -> subscriber receives (floor)", **ms_stats(pubsub)},
    ]
    notes = [
        f"{processes} worker processes on one Redis; each round one writes (rotating), the others hold the old value in L1",
        f"and poll `get()` every {POLL * 1000:g} ms until they read the new one. Delay = reader's first read of the new value",
        "minus the moment the writer called `set()` (both CLOCK_MONOTONIC), so it includes the writer's own round trip.",
        f"Reader slots skipped because the value could not be held in L1 (L1 off): {result['unprimed']}.",
        "The floor row publishes from this process to the same number of subscriber processes.",
    ]
    columns = ["path", "n", "p50 ms", "p99 ms", "max ms", f"not seen in {WATCH_LIMIT:g} s", f"p99 < {PROPAGATION_P99_MS:g} ms"]
    report.table("1. Invalidation propagation between processes", columns, rows, notes + health)


# -- 2. Redis killed or paused under load ------------------------------------------------------------


def expected(key: str) -> str:
    return f"row for {key}"


def zipf_keys(count: int, skew: float = LOAD_SKEW) -> tuple[list[str], list[float]]:
    """A skewed key space, as real traffic is: a few hot rows, a long tail."""
    keys = [f"row:{rank}" for rank in range(count)]
    cumulative, total = [], 0.0
    for rank in range(1, count + 1):
        total += 1.0 / rank**skew
        cumulative.append(total)
    return keys, cumulative


class Load:
    """Threads issuing a read-heavy mix, each operation recorded as (start, seconds, kind)."""

    def __init__(self, cache: Any, plan: dict[str, Any]) -> None:
        self.cache = cache
        self.plan = plan
        self.keys, self.cumulative = zipf_keys(plan["keys"])
        self.stop = threading.Event()
        self.records: list[tuple[float, float, str]] = []
        self.errors: list[tuple[float, str]] = []
        self.wrong: list[tuple[float, str]] = []
        self._threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(plan["threads"])]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        record, think = self.records.append, self.plan["think"]
        while not self.stop.is_set():
            key = rng.choices(self.keys, cum_weights=self.cumulative)[0]
            write = rng.random() < WRITE_SHARE
            start = time.monotonic()
            kind = self._one(key, write, start)
            record((start, time.monotonic() - start, kind))
            time.sleep(think)

    def _one(self, key: str, write: bool, start: float) -> str:
        """One request; never lets an exception out, so the load keeps going."""
        ran = []

        def loader() -> str:
            ran.append(1)
            time.sleep(DB_READ)
            return expected(key)

        try:
            if write:
                self.cache.delete(key)
                return "write"
            value = self.cache.get_or_load(key, loader, 300)
        except Exception as exc:  # noqa: BLE001 - any exception reaching a caller is what the budget counts
            self.errors.append((start, f"{type(exc).__name__}: {exc}"))
            return "error"
        if value != expected(key):
            self.wrong.append((start, repr(value)[:80]))
        return "load" if ran else "hit"


class Recovery:
    """Polls, from the moment Redis answers again, the signs that L2 is really back."""

    SIGNS = ("breaker closed", "L1 enabled", "coherence connected", "write lands in Redis")

    def __init__(self, cache: Any, raw: redis.Redis) -> None:
        self.cache = cache
        self.raw = raw
        self.first: dict[str, float] = {}
        self.all_at: float | None = None

    def _signs(self, index: int) -> dict[str, bool]:
        stats = self.cache.stats()
        probe = f"probe:{index}"
        self.cache.set(probe, "probe", 60)
        try:
            landed = bool(self.raw.exists(self.cache.make_key(probe)))
        except redis.RedisError:
            landed = False
        return {
            "breaker closed": stats["l2"]["breaker"]["state"] == "closed",
            "L1 enabled": stats["l1"]["enabled"],
            "coherence connected": stats["l2"]["coherence"]["connected"],
            "write lands in Redis": landed,
        }

    def watch(self, since: float, cap: float) -> None:
        index = 0
        while time.monotonic() < since + cap:
            signs = self._signs(index)
            now = time.monotonic() - since
            for sign, ok in signs.items():
                if ok:
                    self.first.setdefault(sign, now)
            if all(signs.values()):
                self.all_at = now
                return
            index += 1
            time.sleep(SIGN_POLL)


KILL, STOP, KILL_WORST = "SIGKILL", "SIGSTOP", "SIGKILL, back right after a failed probe"
FAULTS = (KILL, STOP, KILL_WORST)


def wait_for_failed_probe(transitions: list, limit: float) -> None:
    """Until the breaker's next probe fails: from then on it waits longest before probing again."""
    seen = len(transitions)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if any(old == "half_open" and new == "open" for _, old, new in transitions[seen:]):
            return
        time.sleep(0.001)


def run_fault(cache: Any, server: Any, fault: str, plan: dict[str, Any], transitions: list) -> dict[str, Any]:
    """One timeline: load, fault, Redis back, wait until L2 is used again, a tail of load.

    The worst case for recovery is Redis returning just after the breaker's
    probe failed with its back-off at the maximum: ``KILL_WORST`` stays down
    long enough for that, then restarts right after a failed probe.
    """
    cache.set_many({key: expected(key) for key in zipf_keys(plan["keys"])[0]}, 300)
    raw = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=1, socket_connect_timeout=1)
    marks: dict[str, float] = {}
    first_transition = len(transitions)
    with Load(cache, plan) as load:
        time.sleep(plan["before"])
        marks["fault"] = time.monotonic()
        server.pause() if fault == STOP else server.stop()
        if fault == KILL_WORST:
            time.sleep(plan["worst_outage"])
            wait_for_failed_probe(transitions, limit=10.0)
        else:
            time.sleep(plan["outage"])
        marks["restart"] = time.monotonic()
        server.resume() if fault == STOP else server.start()
        marks["back"] = time.monotonic()
        recovery = Recovery(cache, raw)
        recovery.watch(marks["back"], plan["cap"])
        marks["recovered"] = time.monotonic()
        time.sleep(plan["tail"])
    marks["end"] = time.monotonic()
    raw.close()
    return {
        "fault": fault,
        "marks": marks,
        "load": load,
        "recovery": recovery,
        "transitions": transitions[first_transition:],
        "stats": cache.stats(),
    }


def phases(run: dict[str, Any]) -> dict[str, Callable[[float, float], bool]]:
    """Which operations belong to which window (an operation in flight at the fault counts as outage)."""
    m = run["marks"]
    recovered = m["back"] + run["recovery"].all_at if run["recovery"].all_at is not None else m["end"]
    return {
        "before": lambda start, took: start + took < m["fault"],
        "outage": lambda start, took: start < m["back"] and start + took >= m["fault"],
        "Redis back, L2 not yet": lambda start, took: m["back"] <= start < recovered,
        "L2 back": lambda start, took: start >= recovered,
        "overall": lambda start, took: True,
    }


def phase_row(run: dict[str, Any], name: str, belongs: Callable[[float, float], bool]) -> dict[str, Any]:
    load = run["load"]
    picked = [(start, took, kind) for start, took, kind in load.records if belongs(start, took)]
    reads = [kind for _, _, kind in picked if kind in ("hit", "load")]
    span = (max(s + t for s, t, _ in picked) - min(s for s, _, _ in picked)) if picked else 0.0
    loads = sum(kind == "load" for kind in reads)
    return {
        "fault": run["fault"],
        "window": name,
        **ms_stats([took for _, took, _ in picked]),
        "errors": sum(kind == "error" for _, _, kind in picked),
        "wrong values": sum(1 for start, _ in load.wrong if belongs(start, 0.0)),
        "hit rate %": 100.0 * (len(reads) - loads) / len(reads) if reads else None,
        "loader calls/s": loads / span if span else None,
        "ops/s": len(picked) / span if span else None,
        "seconds": span,
    }


def recovery_gaps(runs: list[dict[str, Any]]) -> list[str]:
    """Say so when the subscription proved Redis was back long before the breaker let L2 be used."""
    notes = []
    for run in runs:
        first, done = run["recovery"].first, run["recovery"].all_at
        connected = first.get("coherence connected")
        if connected is not None and done is not None and done - connected > 0.5:
            notes.append(
                f"{run['fault']}: the coherence subscription was back {done - connected:.2f} s before L2 was used again;"
                " meanwhile the breaker waited out its back-off (see 2c), with L1 off and every read going to the loader."
            )
    return notes


def report_faults(report: Report, runs: list[dict[str, Any]], plan: dict[str, Any]) -> None:
    rows = []
    for run in runs:
        fault = run["fault"]
        for name, belongs in phases(run).items():
            row = phase_row(run, name, belongs)
            if name in ("outage", "overall"):
                p99 = row["p99 ms"]
                row[f"p99 < {LOAD_P99_MS:g} ms"] = report.budget(
                    f"{fault}: p99 < {LOAD_P99_MS:g} ms ({name})", p99 is not None and p99 < LOAD_P99_MS, f"{p99:.1f} ms" if p99 is not None else "no operations"
                )
            rows.append(row)
        overall = rows[-1]
        errors = overall["errors"]
        first = run["load"].errors[0][1] if run["load"].errors else ""
        report.budget(f"{fault}: zero errors raised to callers", errors == 0, f"{errors} errors in {overall['n']} operations {first}".strip())
        report.budget(f"{fault}: no wrong value served", overall["wrong values"] == 0, f"{overall['wrong values']} wrong")
        back = run["recovery"].all_at
        report.budget(
            f"{fault}: back to L2 < {BACK_TO_L2_S:g} s after Redis answers again",
            back is not None and back < BACK_TO_L2_S,
            f"{back:.2f} s" if back is not None else f"not back within {run['marks']['recovered'] - run['marks']['back']:.0f} s",
        )
    columns = ["fault", "window", "n", "errors", "wrong values", "hit rate %", "loader calls/s", "p50 ms", "p99 ms", "max ms", f"p99 < {LOAD_P99_MS:g} ms", "ops/s", "seconds"]
    notes = [
        f"{plan['threads']} threads in one process, each: `get_or_load(key)` on a Zipf({LOAD_SKEW:g}) key space of {plan['keys']} rows",
        f"(loader sleeps {DB_READ * 1000:g} ms, like a fast query), {WRITE_SHARE:.0%} of operations `delete(key)` (an invalidation),",
        f"{plan['think'] * 1000:g} ms think time between operations. Keys pre-filled. Redis down for {plan['outage']} s, then",
        "started again on the same port (SIGKILL: empty, no persistence) or continued (SIGSTOP). The third run stays down",
        f"at least {plan['worst_outage']} s and restarts right after a probe of the breaker failed: the longest wait for L2.",
        "Windows: `outage` = operations overlapping [fault, Redis answers again]; `Redis back, L2 not yet` = until every sign",
        "in the recovery table holds; `hit rate` = reads served without running the loader in that call.",
    ]
    report.table("2. Redis killed (SIGKILL) or frozen (SIGSTOP) under a read load", columns, rows, notes)
    recovery_rows, transition_rows = [], []
    for run in runs:
        recovery = run["recovery"]
        row = {"fault": run["fault"], **{f"{sign} s": recovery.first.get(sign) for sign in Recovery.SIGNS}, "all at once s": recovery.all_at}
        recovery_rows.append(row)
        for at, old, new in run["transitions"]:
            transition_rows.append({"fault": run["fault"], "s after fault": at - run["marks"]["fault"], "from": old, "to": new})
    report.table(
        "2b. Recovery: seconds from Redis answering again until each sign first holds",
        ["fault", *(f"{sign} s" for sign in Recovery.SIGNS), "all at once s"],
        recovery_rows,
        [
            f"Polled every {SIGN_POLL * 1000:g} ms from this process: `cache.stats()` for the breaker, L1 and the coherence subscription,",
            "and a `set()` of a fresh probe key followed by a plain EXISTS on the server. Blank = never within the cap.",
            *recovery_gaps(runs),
        ],
    )
    report.table(
        "2c. Breaker transitions (seconds after the fault)",
        ["fault", "s after fault", "from", "to"],
        transition_rows,
        [f"Redis answered again at {run['marks']['back'] - run['marks']['fault']:.2f} s ({run['fault']})." for run in runs],
    )


# -- 3. stampede ------------------------------------------------------------------------------------


STAMPEDE_BACKENDS = {
    TIERED: "TieredCache get_or_load",
    DJANGO: "Django RedisCache get_or_set",
    "off": "no cache (loader every call)",
}


def stampede_in_threads(backend: str, key: str) -> tuple[int, float, list[str]]:
    start_at = time.monotonic() + 0.05
    result = stampede(backend, key, STAMPEDE_CALLERS, STAMPEDE_LOAD, start_at)
    return result["calls"], result["last_end"] - start_at, result["errors"]


def stampede_in_processes(workers: list[Worker], backend: str, key: str) -> tuple[int, float, list[str]]:
    start_at = time.monotonic() + 0.2
    threads = STAMPEDE_CALLERS // len(workers)
    for worker in workers:
        worker.send(op="stampede", backend=backend, key=key, threads=threads, sleep=STAMPEDE_LOAD, start_at=start_at)
    results = [worker.receive() for worker in workers]
    calls = sum(result["calls"] for result in results)
    errors = [error for result in results for error in result["errors"]]
    return calls, max(result["last_end"] for result in results) - start_at, errors


def measure_stampedes(workers: list[Worker], rounds: int) -> dict[tuple[str, str], list[tuple[int, float, list[str]]]]:
    layouts = {
        f"{STAMPEDE_CALLERS} threads, 1 process": lambda backend, key: stampede_in_threads(backend, key),
        f"{len(workers)} processes x {STAMPEDE_CALLERS // len(workers)} threads": lambda backend, key: stampede_in_processes(workers, backend, key),
    }
    results: dict[tuple[str, str], list] = {}
    for index in range(-1, rounds):  # round -1 warms pools and listeners, as a serving process has them
        for layout, run in layouts.items():
            for backend in STAMPEDE_BACKENDS:
                key = f"stampede:{backend}:{index}:{layout[:3].strip()}:{random.getrandbits(32)}"
                outcome = run(backend, key)
                if index >= 0:
                    results.setdefault((backend, layout), []).append(outcome)
    return results


def report_stampedes(report: Report, results: dict[tuple[str, str], list], health: list[str]) -> None:
    rows = []
    for (backend, layout), outcomes in results.items():
        calls = [c for c, _, _ in outcomes]
        walls = [w * 1000 for _, w, _ in outcomes]
        errors = [e for _, _, errs in outcomes for e in errs]
        row = {
            "backend": STAMPEDE_BACKENDS[backend],
            "callers": layout,
            "rounds": len(outcomes),
            "loader calls (max)": max(calls),
            "loader calls (mean)": statistics.fmean(calls),
            "wall ms (median)": statistics.median(walls),
            "wall ms (max)": max(walls),
            "errors": len(errors),
        }
        if backend == TIERED:
            row["1 loader call"] = report.budget(
                f"{STAMPEDE_CALLERS} concurrent misses, {layout}: one loader call",
                max(calls) == 1 and not errors,
                f"loader calls per round {calls}" + (f"; errors: {errors[0]}" if errors else ""),
            )
        rows.append(row)
    columns = ["backend", "callers", "rounds", "loader calls (max)", "loader calls (mean)", "wall ms (median)", "wall ms (max)", "errors", "1 loader call"]
    waits = "; ".join(
        f"{row['callers']}: {row['wall ms (median)'] - STAMPEDE_LOAD * 1000:.1f} ms" for row in rows if row["backend"] == STAMPEDE_BACKENDS[TIERED]
    )
    notes = [
        f"Every caller misses the same cold key at the same instant; the loader sleeps {STAMPEDE_LOAD * 1000:g} ms.",
        "Wall = from the common start instant to the last caller returning. TieredCache waiters wait for the lease",
        "holder's value (across processes by polling Redis with a doubling backoff); what waiting adds over the",
        f"loader's time, median wall minus the loader's sleep: {waits}.",
        "A fresh key per round, after one unrecorded warm-up round (connection pools, subscriptions).",
    ]
    report.table(f"3. {STAMPEDE_CALLERS} concurrent misses on one key", columns, rows, notes + health)


# -- the run ----------------------------------------------------------------------------------------


def steady_health(workers: list[Worker], logged: list[str]) -> list[str]:
    """Whether sections 1 and 3 measured normal operation: a lost channel turns L1 off and changes them."""
    losses = sum(worker.call(op="stats")["coherence"]["losses"] for worker in workers)
    line = f"Coherence channel losses in the worker processes while sections 1 and 3 ran: {losses}."
    return [line if not losses else f"**{line} Those rows do not describe normal operation.**", *common.warnings_note(logged)]


def _intro(plan: dict[str, Any]) -> list[str]:
    return [
        "Generated by `python -m benchmarks.resilience`. Every Redis here is a redis-server this run starts on a free",
        "loopback port (so it may kill it), never the shared one. Worker processes are `benchmarks.resilience_worker`.",
        "",
        f"Budgets (spec and issue 3): propagation p99 < {PROPAGATION_P99_MS:g} ms; Redis killed under load: zero errors,",
        f"p99 < {LOAD_P99_MS:g} ms, back to L2 within {BACK_TO_L2_S:g} s of Redis returning; {STAMPEDE_CALLERS} concurrent misses: one loader call.",
    ]


def run(args: argparse.Namespace) -> Report:
    plan = QUICK if args.quick else FULL
    from tests.redis_server import RedisServer

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="velro-bench-res-")))
        steady, faulty = RedisServer(workdir), RedisServer(workdir)
        for server in (steady, faulty):
            server.start()
            stack.callback(server.stop)
            stack.callback(server.resume)
        report = Report("resilience", "Resilience: coherence, Redis faults under load, stampedes", _intro(plan), quick=args.quick, machine=common.machine_info(steady.url()))
        common.configure_django({**caches_for(steady.url(), PREFIX), FAULTY: {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": faulty.url(), "KEY_PREFIX": PREFIX + "-fault"}})
        from django.core.cache import caches

        workers = start_workers(steady.url(), plan["workers"])
        for worker in workers:
            stack.callback(worker.stop)
        with common.library_warnings() as logged:
            propagation = measure_propagation(workers, plan["rounds"])
            pubsub = measure_pubsub(steady.url(), workers[1:], plan["messages"])
            stampedes = measure_stampedes(workers, plan["stampedes"])
        health = steady_health(workers, logged)

        cache = caches[FAULTY]
        transitions: list[tuple[float, str, str]] = []
        cache._state.breaker.add_listener(lambda old, new: transitions.append((time.monotonic(), old, new)))
        runs = []
        for fault in FAULTS:
            runs.append(run_fault(cache, faulty, fault, plan, transitions))

    report_propagation(report, propagation, pubsub, plan["workers"], health)
    report_faults(report, runs, plan)
    report_stampedes(report, stampedes, health)
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("resilience", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
