"""A separate OS process with its own TieredCache, driven over stdin/stdout.

Run as ``python -m tests.cache_worker REDIS_URL KEY_PREFIX``; each input line
is a JSON command, each output line the JSON result. This is how the tests
get real worker processes (own L1, own coherence listener) on one Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def _slow_loader(command: dict):
    def load():
        with open(command["log"], "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(command.get("sleep", 0))
        return command["value"]

    return load


def _handle(cache, command: dict):
    op = command["op"]
    if op == "get":
        return cache.get(command["key"], command.get("default"))
    if op == "set":
        cache.set(command["key"], command["value"], command.get("timeout", 300))
        return True
    if op == "delete":
        return cache.delete(command["key"])
    if op == "get_or_load":
        return cache.get_or_load(command["key"], _slow_loader(command), command.get("timeout", 300))
    if op == "wait_until":  # poll until the key reads as the value; returns seconds waited
        start = time.perf_counter()
        deadline = start + command.get("limit", 5)
        while time.perf_counter() < deadline:
            if cache.get(command["key"]) == command["value"]:
                return time.perf_counter() - start
            time.sleep(0.0005)
        return None
    if op == "stats":
        stats = cache.stats()
        return {"l1": stats["l1"], "coherence": stats["l2"]["coherence"], "breaker": stats["l2"]["breaker"]["state"]}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    url, prefix = sys.argv[1], sys.argv[2]
    _setup(url, prefix)
    from django.core.cache import cache

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            print(json.dumps({"result": _handle(cache, command)}), flush=True)
        except Exception as exc:  # report, keep serving
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)


class Worker:
    """The test-side handle of one worker process."""

    def __init__(self, url: str, prefix: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cache_worker", url, prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env=env,
        )
        self.pid = json.loads(self.process.stdout.readline())["ready"]

    def send(self, **command) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self):
        reply = json.loads(self.process.stdout.readline())
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def call(self, **command):
        self.send(**command)
        return self.receive()

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)


def load_together(urls: list[str], prefix: str, log: Path) -> tuple[list, int]:
    """One worker process per URL asks for the same cold key at once.

    Returns what each got and how many times the loader ran (it appends a line
    to ``log`` per run), for the "one loader across processes" property.
    """
    workers = [Worker(url, prefix) for url in urls]
    try:
        for worker in workers:  # all ask at once; each reply waits for its loader or the filler
            worker.send(op="get_or_load", key="gen:7:meta", value="loaded", sleep=0.3, log=str(log))
        results = [worker.receive() for worker in workers]
    finally:
        for worker in workers:
            worker.stop()
    return results, len(log.read_text().splitlines())


if __name__ == "__main__":
    main()
