"""A separate OS process with its own TieredCache, driven over stdin/stdout.

Run as ``python -m tests.cache_worker REDIS_URL KEY_PREFIX``; each input line
is a JSON command, each output line the JSON result (``tests.support`` holds
the protocol). This is how the tests get real worker processes (own L1, own
coherence listener) on one Redis.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support import WorkerProcess, eventually, serve_commands

request_started: Any = None  # django.core.signals.request_started, once Django is set up
SECRET_KEY = "velro-cache-tests"  # the same as tests.settings, so pickle MACs agree


def _setup(url: str, prefix: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY=SECRET_KEY,
        CACHES={"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": url, "KEY_PREFIX": prefix}},
        INSTALLED_APPS=["velro_cache"],
    )
    django.setup()


def _arrive(command: dict) -> None:
    """Say "I am asking" in the shared arrivals file (a barrier across processes)."""
    if "arrivals" in command:
        with open(command["arrivals"], "a") as arrivals:
            arrivals.write(f"{os.getpid()}\n")


def _wait_for_arrivals(command: dict, limit: float = 10) -> None:
    """Block until ``expect`` workers have arrived, so every caller asks while the loader runs."""
    if "arrivals" not in command:
        return
    path = Path(command["arrivals"])
    if not eventually(lambda: len(path.read_text().splitlines()) >= command["expect"], limit, interval=0.001):
        raise TimeoutError(f"only {len(path.read_text().splitlines())} of {command['expect']} workers asked")


def _slow_loader(command: dict):
    def load():
        with open(command["log"], "a") as log:
            log.write(f"{os.getpid()}\n")
        _wait_for_arrivals(command)
        time.sleep(command.get("sleep", 0))  # a slow database read: the late callers reach the lease's wait
        return command["value"]

    return load


def _start_busy_threads(count: int) -> None:
    """Threads that only compute: the listener thread then waits for the GIL, as in a busy worker."""

    def spin() -> None:
        while True:
            sum(range(1000))

    for _ in range(count):
        threading.Thread(target=spin, daemon=True).start()


def _write(cache, command: dict):
    """One of the write paths a read-your-writes round changes a key with."""
    key, value, path = command["key"], command.get("value"), command["path"]
    if path == "set":
        cache.set(key, value, 300)
    elif path == "set_many":
        cache.set_many({key: value}, 300)
    elif path == "delete":
        cache.delete(key)
    elif path == "delete_many":
        cache.delete_many([key])
    elif path == "clear":
        cache.clear()
    elif path == "incr_version":
        cache.incr_version(key)
    else:
        raise ValueError(f"unknown write path {path!r}")
    return True


def _poll(cache, keys: list[str], seconds: float) -> list[list]:
    reads = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key in keys:
            start = time.monotonic()
            value = cache.get(key)
            reads.append([key, start, time.monotonic(), value])
        time.sleep(0.001)
    return reads


def _handle(cache, command: dict):
    op = command["op"]
    if command.get("request"):  # as a request would start: Django's handlers send this first
        handler = command["request"]  # "wsgi": the WSGI handler's signal (environ), "asgi": the ASGI one's (scope)
        request_started.send(sender=None, **({"environ": {}} if handler == "wsgi" else {"scope": {"type": "http"}}))
    if op == "get":
        return cache.get(command["key"], command.get("default"))
    if op == "get_or_set":
        return cache.get_or_set(command["key"], command["value"], 300)
    if op == "write":
        return _write(cache, command)
    if op == "busy":
        _start_busy_threads(command.get("threads", 2))
        return True
    if op == "set":
        cache.set(command["key"], command["value"], command.get("timeout", 300))
        return True
    if op == "delete":
        return cache.delete(command["key"])
    if op == "get_or_load":
        _arrive(command)
        return cache.get_or_load(command["key"], _slow_loader(command), command.get("timeout", 300))
    if op == "wait_until":  # poll until the key reads as the value; returns seconds waited
        start = time.perf_counter()
        if eventually(lambda: cache.get(command["key"]) == command["value"], command.get("limit", 5), interval=0.0005):
            return time.perf_counter() - start
        return None
    if op == "timed_set":  # [start, end] of each set, on CLOCK_MONOTONIC (shared by every process)
        times = []
        for key in command["keys"]:
            start = time.monotonic()
            cache.set(key, command["value"], 300)
            times.append([start, time.monotonic()])
        return times
    if op == "poll":  # read the keys for ``seconds``: [key, start, end, value] of each read
        return _poll(cache, command["keys"], command["seconds"])
    if op == "subscribed":  # the node URL this process's listener subscribes through
        return cache._state.listener.endpoints.node
    if op == "stats":
        stats = cache.stats()
        return {"l1": stats["l1"], "coherence": stats["l2"]["coherence"], "breaker": stats["l2"]["breaker"]["state"]}
    if op == "raise":  # for the test that a worker's exception reaches its test
        raise RuntimeError(command.get("message", "raised on request"))
    if op == "exit":  # for the test that a worker's death reaches its test
        print(command.get("message", "exiting on request"), file=sys.stderr, flush=True)
        os._exit(command.get("status", 3))
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    global request_started
    url, prefix = sys.argv[1], sys.argv[2]
    _setup(url, prefix)
    from django.core.cache import cache
    from django.core.signals import request_started

    serve_commands(lambda command: _handle(cache, command), ready=os.getpid())


class Worker(WorkerProcess):
    """The test-side handle of one worker process, ready once constructed."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__("tests.cache_worker", url, prefix)
        self.pid = self.wait_ready()


def load_together(urls: list[str], prefix: str, log: Path) -> tuple[list[Any], int]:
    """One worker process per URL asks for the same cold key at once.

    Returns what each got and how many times the loader ran (it appends a line
    to ``log`` per run), for the "one loader across processes" property. The
    loader returns only after every worker has made its call (an arrivals
    file next to ``log`` is the barrier), so the calls certainly overlap.
    """
    workers = [Worker(url, prefix) for url in urls]
    arrivals = log.with_name(log.name + ".arrivals")
    arrivals.touch()
    try:
        for worker in workers:  # all ask at once; each reply waits for its loader or the filler
            worker.send(
                op="get_or_load", key="gen:7:meta", value="loaded", sleep=0.05, log=str(log),
                arrivals=str(arrivals), expect=len(workers),
            )
        results = [worker.receive() for worker in workers]
    finally:
        for worker in workers:
            worker.stop()
    return results, len(log.read_text().splitlines())


if __name__ == "__main__":
    main()
