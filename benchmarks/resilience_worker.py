"""A worker process for ``benchmarks.resilience``, driven over stdin/stdout.

Run as ``python -m benchmarks.resilience_worker REDIS_URL``. It plays one
web-server process: its own TieredCache (own L1, own coherence listener) and,
for comparison, Django's RedisCache on the same Redis.

The JSON-lines protocol is ``tests.support``'s (``serve_commands`` here,
``WorkerProcess`` on the benchmark's side), the same as ``tests.cache_worker``.
One line per command cannot say "I am now watching" before a write happens
elsewhere; measuring propagation needs that, so commands that wait first print
``{"armed": true}`` and then their result. Every time exchanged is ``time.monotonic()``: on Linux it is
CLOCK_MONOTONIC, one clock for every process on the machine, so a writer's
timestamp and a reader's can be subtracted.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from tests.support import WorkerProcess, emit, eventually, serve_commands

TIERED, DJANGO = "tiered", "django"
POLL = 0.0002  # seconds between reads while watching: the resolution of a delay


def caches_for(url: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The caches of a worker (and of the benchmark's own process, on its Redis)."""
    return {
        TIERED: {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": url, "KEY_PREFIX": prefix},
        DJANGO: {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": prefix + "-dj"},
    }


def in_l1(cache: Any, key: str) -> bool:
    """Whether the key is held in this process's L1 (so a read would not touch Redis)."""
    from velro_cache.tiers.memory import MISSING

    return cache._l1.get(cache.make_key(key)) is not MISSING


def prime(cache: Any, key: str, value: Any, limit: float = 5.0) -> bool:
    """Read until the value is in L1: a later change can only reach us as an invalidation."""
    return eventually(lambda: cache.get(key) == value and in_l1(cache, key), limit, interval=0.001)


def watch(cache: Any, key: str, value: Any, limit: float) -> float | None:
    """The monotonic time at which this process first reads the new value."""
    emit({"armed": True})
    deadline = time.monotonic() + limit
    while True:
        if cache.get(key) == value:
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL)


def subscribe(url: str, channel: str, count: int, limit: float) -> list[float]:
    """Plain redis-py pub/sub: delays (s) of ``count`` messages carrying their send time."""
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation: now we are listening
    emit({"armed": True})
    delays: list[float] = []
    deadline = time.monotonic() + limit
    while len(delays) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            delays.append(time.monotonic() - float(message["data"]))
    pubsub.close()
    client.close()
    return delays


def stampede(backend: str, key: str, threads: int, sleep: float, start_at: float) -> dict[str, Any]:
    """``threads`` threads miss ``key`` together at ``start_at``; how many ran the loader."""
    from django.core.cache import caches

    calls: list[int] = []
    ends: list[float] = []
    errors: list[str] = []

    def loader() -> str:
        calls.append(1)
        time.sleep(sleep)
        return f"loaded {key}"

    def one() -> None:
        cache = caches[backend] if backend in (TIERED, DJANGO) else None
        time.sleep(max(0.0, start_at - time.monotonic()))
        try:
            if backend == TIERED:
                cache.get_or_load(key, loader, 300)
            elif backend == DJANGO:
                cache.get_or_set(key, loader, 300)
            else:
                loader()  # caching off: every request reads the database
        except Exception as exc:  # noqa: BLE001 - counted and reported, like any caller would see it
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            ends.append(time.monotonic())

    pool = [threading.Thread(target=one) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {"calls": len(calls), "last_end": max(ends), "errors": errors}


def _handle(url: str, command: dict[str, Any]) -> Any:
    from django.core.cache import caches

    op = command["op"]
    cache = caches[TIERED]
    if op == "set":
        started = time.monotonic()
        cache.set(command["key"], command["value"], 300)
        return [started, time.monotonic()]
    if op == "prime":
        return prime(cache, command["key"], command["value"])
    if op == "watch":
        return watch(cache, command["key"], command["value"], command.get("limit", 5.0))
    if op == "subscribe":
        return subscribe(url, command["channel"], command["count"], command.get("limit", 10.0))
    if op == "stampede":
        return stampede(command["backend"], command["key"], command["threads"], command["sleep"], command["start_at"])
    if op == "stats":
        stats = cache.stats()
        return {"l1_enabled": stats["l1"]["enabled"], "breaker": stats["l2"]["breaker"]["state"], "coherence": stats["l2"]["coherence"]}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    url, prefix = sys.argv[1], sys.argv[2]
    from .common import configure_django

    configure_django(caches_for(url, prefix))
    from django.core.cache import caches

    caches[TIERED].get("warm-up")  # build the process state: listener subscribed before we say ready
    serve_commands(lambda command: _handle(url, command), ready=os.getpid())


class Worker(WorkerProcess):
    """The benchmark's handle on one worker process (started in parallel; ``wait_ready`` for each)."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__("benchmarks.resilience_worker", url, prefix, without_env=("DJANGO_SETTINGS_MODULE",))

    def armed(self) -> None:
        """The worker is watching: now the write it measures may happen."""
        self.expect("armed")


if __name__ == "__main__":
    main()
