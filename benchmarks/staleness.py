"""Staleness under Redis faults, and what read-your-writes costs a request.

1. Worst staleness per fault. A reader process holds a value in its L1 and
   reads it in a loop (every 0.5 ms), noting on CLOCK_MONOTONIC (shared by the
   processes) the last time it served it. The fault is injected for real: the
   reader's sockets go silent (a TCP proxy this benchmark controls stops
   forwarding, the socket stays open), or the redis-server is SIGSTOPped or
   SIGKILLed. With a silent socket the writer (another process, straight to
   Redis) replaces the value and the staleness is counted from its return;
   with Redis stopped or killed no write can land afterwards, so it is counted
   from the fault (a write that returned just before it may not have reached
   the reader). Budget: STALENESS_BOUND (100 ms) plus 20 ms of scheduling.
2. Read-your-writes at request start: the time of Django's request_started
   signal with one TieredCache on L2 (one PING on the subscription and the
   wait for its PONG), with READ_YOUR_WRITES on and off.

Run: ``python -m benchmarks.staleness [--quick] [--out DIR]`` (about 30 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common
from .common import ROOT, Report

BOUND = 0.1
SCHEDULING = 0.02
FAULTS = ("silent socket", "SIGSTOP", "SIGKILL")


# -- the reader process ----------------------------------------------------------------------


def reader_main(url: str, prefix: str) -> None:
    """Hold ``key`` in L1, then report the last monotonic time it was served, on request."""
    common.configure_django({"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": url, "KEY_PREFIX": prefix}})
    from django.core.cache import cache

    from velro_cache.tiers.memory import MISSING

    for line in sys.stdin:
        command = json.loads(line)
        key, value = command["key"], command["value"]
        deadline = time.monotonic() + 10
        while cache.get(key) != value or cache._l1.get(cache.make_key(key)) is MISSING:
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
        print(json.dumps({"ready": True}), flush=True)
        last, end = 0.0, time.monotonic() + command["watch"]
        while time.monotonic() < end:
            if cache.get(key) == value:
                last = time.monotonic()
            time.sleep(0.0005)
        print(json.dumps({"last": last}), flush=True)


# -- the benchmark --------------------------------------------------------------------------


def _reader(url: str, prefix: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.staleness", "--reader", url, prefix],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
    )


def _ask(reader: subprocess.Popen, **command: object) -> dict:
    assert reader.stdin and reader.stdout
    reader.stdin.write(json.dumps(command) + "\n")
    reader.stdin.flush()
    return json.loads(reader.stdout.readline())


def one_trial(fault: str, workdir: Path, number: int) -> float:
    """Seconds the reader served the replaced value after the write (or the fault)."""
    sys.path.insert(0, str(ROOT))
    from tests.redis_server import RedisServer
    from tests.tcp_proxy import SilencingProxy

    server = RedisServer(workdir)
    server.start()
    proxy = SilencingProxy(server.port)
    prefix = f"stale-{number}"
    reader = _reader(proxy.url() if fault == "silent socket" else server.url(), prefix)
    writer = _writer(server.url(), prefix)
    try:
        writer.set("k", "old", None)
        assert _ask(reader, key="k", value="old", watch=1.0)["ready"]
        if fault == "silent socket":
            proxy.silence()
            writer.set("k", "new", None)
        elif fault == "SIGSTOP":
            server.pause()
        else:
            server.stop()
        since = time.monotonic()
        assert reader.stdout
        last = json.loads(reader.stdout.readline())["last"]
        return max(0.0, last - since)
    finally:
        server.resume()
        reader.kill()
        reader.wait()
        proxy.close()
        server.stop()


def _writer(url: str, prefix: str):
    """The writing process's cache (this one), on the server itself, never through the proxy."""
    from velro_cache.backends import TieredCache

    return TieredCache(url, {"KEY_PREFIX": prefix})


# How a request's start is signalled: WSGI passes the environ (the PING goes out, the first L1 read waits for its
# PONG), ASGI the scope (the receiver waits for the PONG in its thread before the view runs).
STARTS = {"WSGI (PING sent, first L1 read waits)": {"environ": {}}, "ASGI (wait at the start)": {"scope": {"type": "http"}}}
SHAPES = ("L1 hit only", "own Redis read, then L1 hit")
BLOCK_WARMUP = 5


def request_overhead(rounds: int) -> list[dict[str, Any]]:
    """Microseconds from request_started to the request's first L1 hit, READ_YOUR_WRITES on (each handler) and off.

    Two request shapes: one whose first cache read is an L1 hit, and one that
    first makes a Redis round trip of its own (an MGET of three keys, as the
    authorization versions read is), where the WSGI start's PONG arrives during it.
    """
    import redis
    from django.core.cache import caches
    from django.core.signals import request_started
    from django.test import override_settings

    from velro_cache import freshness

    freshness.connect()
    cache = caches["default"]
    cache.set("warm", "page")  # not an int: counters live in Redis only, never in L1
    own = redis.Redis.from_url(common.REDIS_URL)
    own_keys = ["velro-bench:ryw:a", "velro-bench:ryw:b", "velro-bench:ryw:c"]
    arms = [*((label, True, kwargs) for label, kwargs in STARTS.items()), ("off", False, {"environ": {}})]
    samples: dict[tuple[str, str], list[int]] = {(label, shape): [] for label, _, _ in arms for shape in SHAPES}
    blocks = 10  # the arms take turns in blocks; a block's first requests (settings re-read) are not counted
    for _ in range(blocks):
        for label, on, kwargs in arms:
            with override_settings(VELRO_CACHE={"READ_YOUR_WRITES": on}):
                for number in range(BLOCK_WARMUP + rounds // blocks):
                    for shape in SHAPES:
                        start = time.perf_counter_ns()
                        request_started.send(sender=None, **kwargs)
                        if shape != SHAPES[0]:
                            own.mget(own_keys)
                        assert cache.get("warm") == "page"
                        if number >= BLOCK_WARMUP:
                            samples[label, shape].append(time.perf_counter_ns() - start)
    if cache.stats()["totals"]["l1_hits"] < len(arms) * len(SHAPES) * rounds // 2:
        raise SystemExit("the first reads were not L1 hits: the table would time something else")
    rows = []
    for (label, shape), taken in samples.items():
        taken.sort()
        rows.append({"read-your-writes": label, "request": shape, "p50 µs": round(statistics.median(taken) / 1000, 1),
                     "p99 µs": round(common.percentile(taken, 0.99) / 1000, 1), "max µs": round(taken[-1] / 1000, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.staleness", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--reader", nargs=2, metavar=("URL", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reader:
        reader_main(*args.reader)
        return 0
    common.configure_django(
        {"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": common.REDIS_URL, "KEY_PREFIX": common.key_prefix("ryw")}}
    )
    trials = 2 if args.quick else 6
    report = Report(
        "staleness",
        "Staleness under Redis faults; request cost of read-your-writes",
        [line for line in (__doc__ or "").strip().splitlines()[2:]],
        quick=args.quick,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fault in FAULTS:
            seen = [one_trial(fault, Path(tmp), number) * 1000 for number in range(trials)]
            worst = max(seen)
            rows.append(
                {
                    "fault": fault,
                    "trials": trials,
                    "worst stale ms": round(worst, 1),
                    "median stale ms": round(statistics.median(seen), 1),
                    "budget": report.budget(f"{fault}: worst staleness", worst <= (BOUND + SCHEDULING) * 1000, f"{worst:.1f} ms"),
                }
            )
    report.table("Worst staleness per fault (reader in another process, L1 hit polled every 0.5 ms)", list(rows[0]), rows)
    overhead = request_overhead(300 if args.quick else 3000)
    off = {row["request"]: row["p50 µs"] for row in overhead if row["read-your-writes"] == "off"}
    for row in overhead:
        row["p50 over off"] = f"+{row['p50 µs'] - off[row['request']]:.1f} µs"
    report.table(
        "A request's start to its first L1 hit, one TieredCache on loopback Redis",
        ["read-your-writes", "request", "p50 µs", "p99 µs", "max µs", "p50 over off"],
        overhead,
        ["On: one PING on the cache's subscription per request start. WSGI sends it and goes on; the request's first "
         "L1 read waits for the PONG if it has not been handled yet, so a request that reads Redis first (its "
         "authorization versions) has it by then. ASGI waits for it in the signal's thread, before the view runs. "
         "The arms take turns in 10 blocks; the first requests of a block are not counted."],
    )
    if not args.quick or argv and "--out" in argv:
        report.write(Path(args.out))
    print(report.markdown())
    return common.EXIT_BUDGET_MISSED if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
