"""A worker process for ``benchmarks.resilience``, driven over stdin/stdout.

Run as ``python -m benchmarks.resilience_worker REDIS_URL``. It plays one
web-server process: its own TieredCache (own L1, own coherence listener) and,
for comparison, Django's RedisCache on the same Redis.

``tests.cache_worker`` answers one line per command, which cannot say "I am
now watching" before a write happens elsewhere; measuring propagation needs
that, so commands that wait first print ``{"armed": true}`` and then their
result. Every time exchanged is ``time.monotonic()``: on Linux it is
CLOCK_MONOTONIC, one clock for every process on the machine, so a writer's
timestamp and a reader's can be subtracted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TIERED, DJANGO = "tiered", "django"
POLL = 0.0002  # seconds between reads while watching: the resolution of a delay


def caches_for(url: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The caches of a worker (and of the benchmark's own process, on its Redis)."""
    return {
        TIERED: {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": url, "KEY_PREFIX": prefix},
        DJANGO: {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": prefix + "-dj"},
    }


def _emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def in_l1(cache: Any, key: str) -> bool:
    """Whether the key is held in this process's L1 (so a read would not touch Redis)."""
    from velro_cache.tiers.memory import MISSING

    return cache._l1.get(cache.make_key(key)) is not MISSING


def prime(cache: Any, key: str, value: Any, limit: float = 5.0) -> bool:
    """Read until the value is in L1: a later change can only reach us as an invalidation."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cache.get(key) == value and in_l1(cache, key):
            return True
        time.sleep(0.001)
    return False


def watch(cache: Any, key: str, value: Any, limit: float) -> float | None:
    """The monotonic time at which this process first reads the new value."""
    _emit({"armed": True})
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
    _emit({"armed": True})
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
    _emit({"ready": os.getpid()})
    for line in sys.stdin:
        try:
            _emit({"result": _handle(url, json.loads(line))})
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            _emit({"error": f"{type(exc).__name__}: {exc}"})


class Worker:
    """The benchmark's handle on one worker process."""

    def __init__(self, url: str, prefix: str) -> None:
        env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
        env["PYTHONPATH"] = str(ROOT)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.resilience_worker", url, prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env=env,
        )

    def wait_ready(self) -> int:
        """Workers start in parallel; this waits for one to have its cache up."""
        return self._line()["ready"]

    def send(self, **command: Any) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def _line(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.pid} exited with {self.process.wait()}")
        return json.loads(line)

    def armed(self) -> None:
        reply = self._line()
        if not reply.get("armed"):
            raise RuntimeError(f"worker {self.process.pid} did not arm: {reply}")

    def receive(self) -> Any:
        reply = self._line()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def call(self, **command: Any) -> Any:
        self.send(**command)
        return self.receive()

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
