"""One history worker: an OS process with its own TieredCache (own L1, own listener) issuing random operations.

Run as ``python -m tests.history.worker CACHE_URL CONTROL_URL PREFIX WORKER_ID``
and driven over JSON lines (``tests.support.serve_commands``). The ``run``
command makes it issue, until a deadline, a seeded random mix of versioned
writes (``set``/``set_many`` of ``(worker_id, version)``), deletes
(``delete``/``delete_many``) and reads (``get``/``get_many``) on a few keys,
recording each operation's start, end and result to a JSON file.

Versions come from ``INCR`` on a *control* Redis that no fault touches, so
every write and delete carries a number no other operation has, and the
numbers of one key grow in the order the writes were issued. The checker
does not need that order (it works from the recorded intervals), only the
identity: a read's result names the very write it saw.

Clock: ``time.monotonic()``. On Linux it is CLOCK_MONOTONIC, one clock for
the whole machine, so intervals recorded by different processes (and the
fault times recorded by the test) compare directly; unlike ``time.time()`` it
never steps when NTP adjusts the wall clock.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from typing import Any

from tests.support import run_threads, serve_commands

SECRET_KEY = "velro-cache-tests"  # as tests.settings, so every process's frames verify
VERSION_KEY = "history:version"
TIMEOUT = 300  # the cached values' TTL: far beyond a history, so expiry never explains a read

# Operation kinds and their default weights in the mix: reads dominate, as on a site.
DEFAULT_MIX = {"get": 55, "get_many": 10, "set": 15, "set_many": 5, "delete": 10, "delete_many": 5}
READS = ("get", "get_many")

Event = list[Any]  # [kind, key, id, start, end, worker]; kind "w" write, "d" delete, "r" read


def start_request(cache: Any) -> None:
    """THE request boundary: every read below is one "request", and it starts here.

    The spec's property is about requests: "a request that starts after
    another process's write returned never sees the value from before it".
    Sending Django's ``request_started`` is what a real request does, and it
    runs velro_cache's read-your-writes hook (``velro_cache.freshness``, wired
    by the app's ``ready()``): each cache with an L2 confirms its L1 is
    current before the read. Sent as the WSGI handler sends it (with the
    environ): the PING goes out here and the read below waits for its PONG.
    """
    from django.core.signals import request_started

    request_started.send(sender=__name__, environ={})


def _setup(url: str, prefix: str) -> Any:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY=SECRET_KEY,
        CACHES={"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": url, "KEY_PREFIX": prefix}},
        INSTALLED_APPS=["velro_cache"],
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.cache import cache

    return cache


class History:
    """The operations of one run, issued and recorded by one worker."""

    def __init__(self, cache: Any, control: Any, worker: int, command: dict[str, Any], thread: int = 0) -> None:
        self.cache = cache
        self.control = control
        self.worker = worker
        self.keys: list[str] = command["keys"]
        self.rng = random.Random(f"{command['seed']}:{worker}:{thread}")
        mix = command.get("mix") or DEFAULT_MIX
        if not command.get("writes", True):  # a reader: its L1 copies change only by what it hears
            mix = {kind: weight for kind, weight in mix.items() if kind in READS}
        self.kinds, self.weights = list(mix), list(mix.values())
        self.pause = command.get("pause", 0.001)
        self.quiet = tuple(command.get("quiet") or (0.0, 0.0))  # no writes in [from, until): a read instead
        self.events: list[Event] = []
        self.errors: list[str] = []

    def run(self, start_at: float, until: float) -> None:
        while time.monotonic() < start_at:
            time.sleep(min(0.001, max(0.0, start_at - time.monotonic())))
        while time.monotonic() < until:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            if kind not in READS and self.quiet[0] <= time.monotonic() < self.quiet[1]:
                kind = "get"
            getattr(self, f"_{kind}")()
            if self.pause:
                time.sleep(self.rng.uniform(0, self.pause))

    def _some_keys(self) -> list[str]:
        return self.rng.sample(self.keys, self.rng.randint(2, min(3, len(self.keys))))

    def _versions(self, count: int) -> list[int]:
        return [int(self.control.incr(VERSION_KEY)) for _ in range(count)]

    def _timed(self, call: Any) -> tuple[float, float | None, Any]:
        """Run one cache call; its start, its end (None if it raised: it may or may not have happened)."""
        start = time.monotonic()
        try:
            result = call()
        except Exception:  # noqa: BLE001 - recorded: the spec says nothing raises to the caller
            self.errors.append(traceback.format_exc(limit=3))
            return start, None, None
        return start, time.monotonic(), result

    def _record_writes(self, kind: str, keys: list[str], versions: list[int], start: float, end: float | None) -> None:
        self.events.extend([kind, key, version, start, end, self.worker] for key, version in zip(keys, versions, strict=True))

    def _set(self) -> None:
        key = self.rng.choice(self.keys)
        (version,) = self._versions(1)
        start, end, _ = self._timed(lambda: self.cache.set(key, (self.worker, version), TIMEOUT))
        self._record_writes("w", [key], [version], start, end)

    def _set_many(self) -> None:
        keys = self._some_keys()
        versions = self._versions(len(keys))
        data = {key: (self.worker, version) for key, version in zip(keys, versions, strict=True)}
        start, end, _ = self._timed(lambda: self.cache.set_many(data, TIMEOUT))
        self._record_writes("w", keys, versions, start, end)

    def _delete(self) -> None:
        key = self.rng.choice(self.keys)
        (version,) = self._versions(1)
        start, end, _ = self._timed(lambda: self.cache.delete(key))
        self._record_writes("d", [key], [version], start, end)

    def _delete_many(self) -> None:
        keys = self._some_keys()
        versions = self._versions(len(keys))
        start, end, _ = self._timed(lambda: self.cache.delete_many(keys))
        self._record_writes("d", keys, versions, start, end)

    def _get(self) -> None:
        key = self.rng.choice(self.keys)
        start, end, value = self._timed(lambda: self._request(lambda: self.cache.get(key)))
        self._record_read(key, value, start, end)

    def _get_many(self) -> None:
        keys = self._some_keys()
        start, end, found = self._timed(lambda: self._request(lambda: self.cache.get_many(keys)))
        for key in keys:
            self._record_read(key, (found or {}).get(key), start, end)

    def _request(self, read: Any) -> Any:
        start_request(self.cache)
        return read()

    def _record_read(self, key: str, value: Any, start: float, end: float | None) -> None:
        if end is None:
            return  # a read that raised saw nothing (the error is counted)
        self.events.append(["r", key, _version_of(value), start, end, self.worker])


def _version_of(value: Any) -> int | str | None:
    """The version a read returned: None for a miss, the write's number, or the odd value itself."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(part, int) for part in value):
        return value[1]
    return repr(value)  # not something any writer stored: the checker reports it


def _handle(cache: Any, control: Any, worker: int, command: dict[str, Any]) -> Any:
    op = command["op"]
    if op == "run":
        return _run(cache, control, worker, command)
    if op == "warm":  # build the cache's clients (a cluster's slot map) before the clock starts
        cache.set("warm-up", 0, TIMEOUT)
        return cache.get("warm-up")
    if op == "stats":
        stats = cache.stats()
        return {"coherence": stats["l2"]["coherence"], "breaker": stats["l2"]["breaker"]["state"]}
    raise ValueError(f"unknown op {op!r}")


def _run(cache: Any, control: Any, worker: int, command: dict[str, Any]) -> dict[str, int]:
    """Run the history on ``threads`` threads sharing the process's cache, as a threaded web worker serves requests.

    Threads matter: while one request waits out a Redis timeout, the others
    keep being served from the process's L1, which is when a stale copy shows.
    """
    histories = [History(cache, control, worker, command, thread) for thread in range(command.get("threads", 1))]
    run_threads([lambda history=history: history.run(command["start_at"], command["until"]) for history in histories])
    events = [event for history in histories for event in history.events]
    errors = [error for history in histories for error in history.errors]
    with open(command["out"], "w") as out:
        json.dump({"events": events, "errors": errors}, out)
    return {"events": len(events), "errors": len(errors)}


def main() -> None:
    url, control_url, prefix, worker = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cache = _setup(url, prefix)
    import redis

    control = redis.Redis.from_url(control_url)
    serve_commands(lambda command: _handle(cache, control, worker, command), ready=os.getpid())


if __name__ == "__main__":
    main()
