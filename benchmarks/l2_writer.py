"""The other worker process of ``benchmarks.l2``: it writes the keys the benchmark then reads.

Run as ``python -m benchmarks.l2_writer REDIS_URL PREFIXES_JSON``. A worker
meets most cached data as a *first read*: another worker cached it, so this
process's TieredCache reads Redis, verifies and decodes the frame and promotes
it into its L1. Writing from another OS process (its own L1, its own
coherence listener, nothing shared) makes every timed read of
``benchmarks.l2`` exactly that, with no private attribute used to force it.

The JSON-lines protocol is ``tests.support``'s (``serve_commands`` here,
``WorkerProcess`` on the benchmark's side).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tests.support import WorkerProcess, serve_commands

WRITE_CHUNK = 100  # keys per set_many: one announcement per chunk reaches the reader


def caches_for(url: str, prefixes: dict[str, str], backends: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The same aliases, backends and key prefixes as the benchmark's own process."""
    return {name: {"BACKEND": backend, "LOCATION": url, "KEY_PREFIX": prefixes[name]} for name, backend in backends.items()}


def _values() -> dict[str, Any]:
    from .common import sample_values
    from .shapes import RECORD_PAGE, record_page

    return {**sample_values(), RECORD_PAGE: record_page()}


def write(backend: str, value: Any, keys: list[str], timeout: float) -> int:
    """Write ``value`` under every key, in set_many chunks; the number of set_many calls made."""
    from django.core.cache import caches

    cache = caches[backend]
    calls = 0
    for start in range(0, len(keys), WRITE_CHUNK):
        cache.set_many(dict.fromkeys(keys[start : start + WRITE_CHUNK], value), timeout)
        calls += 1
    return calls


def delete(backend: str, keys: list[str]) -> None:
    from django.core.cache import caches

    caches[backend].delete_many(keys)


def main() -> None:
    url, prefixes, backends = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    from .common import configure_django

    configure_django(caches_for(url, prefixes, backends))
    values = _values()

    def handle(command: dict[str, Any]) -> Any:
        if command["op"] == "write":
            return write(command["backend"], values[command["value"]], command["keys"], command["timeout"])
        if command["op"] == "delete":
            return delete(command["backend"], command["keys"])
        raise ValueError(f"unknown op {command['op']!r}")

    serve_commands(handle, ready=os.getpid())


class Writer(WorkerProcess):
    """The benchmark's handle on the writer process."""

    def __init__(self, url: str, prefixes: dict[str, str], backends: dict[str, str]) -> None:
        super().__init__("benchmarks.l2_writer", url, json.dumps(prefixes), json.dumps(backends), without_env=("DJANGO_SETTINGS_MODULE",))
        self.wait_ready()

    def write(self, backend: str, value: str, keys: list[str], timeout: float = 600) -> int:
        return self.call(op="write", backend=backend, value=value, keys=keys, timeout=timeout)

    def delete(self, backend: str, keys: list[str]) -> None:
        self.call(op="delete", backend=backend, keys=keys)


if __name__ == "__main__":
    main()
