"""The traffic benchmark's load generator: real HTTP from other OS processes, one request stream.

``replay`` forks ``clients`` processes; each takes the stream's next request
(one shared counter, so the stream is served in its order, ``clients`` at a
time, closed loop) and sends it with ``http.client`` to the gunicorn server,
a new connection per request as a sync worker wants. Creations publish the
id the server gave them in a shared table, and a later ``new:<k>`` path waits
for it (``studio.traffic.resolve``); the wait is not part of the latency.

Why not locust: its users are independent random generators, while every
arm here must replay the *same* planned stream, and its gevent client would
share the two cores with the server in one more interpreter. This driver is
http.client and a counter, and records per request what the report needs:
status, latency, the server's ``X-Queries`` / ``X-Read-*`` headers, wall
times of send and receipt (for the stale-read check) and the versions of
the generations the response carried.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

UNRESOLVED_WAIT = 10.0


def _versions(method: str, status: int, body: bytes) -> list[tuple[int, str]] | None:
    """(id, updated_at) of each generation the response shows; None when it shows none."""
    if status not in (200, 201):
        return None
    data = json.loads(body)
    if "results" in data:
        return [(row["id"], row["updated_at"]) for row in data["results"]]
    if "updated_at" in data:
        return [(data["id"], data["updated_at"])]
    return None


def _path(item: Any, created: Any, missing: int) -> str:
    """The item's path with its ``new:<k>`` resolved, once each of those creations has answered (or the wait ran out)."""
    from studio.traffic import NEW_ID, resolve

    names = [int(k) for k in NEW_ID.findall(item.path)]
    if not names:
        return item.path
    deadline = time.monotonic() + UNRESOLVED_WAIT
    while any(k not in created for k in names) and time.monotonic() < deadline:
        time.sleep(0.001)
    ids = {k: created[k] for k in names if created.get(k, -1) != -1}
    return resolve(item.path, ids, missing)


def _send(host: str, port: int, item: Any, path: str) -> dict[str, Any]:
    headers = {"Host": "127.0.0.1"}
    if item.token:
        headers["Authorization"] = f"Bearer {item.token}"
    if item.body is not None:
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(host, port, timeout=60)
    sent = time.time()
    started = time.perf_counter_ns()
    connection.request(item.method, path, body=item.body, headers=headers)
    response = connection.getresponse()
    body = response.read()
    latency = time.perf_counter_ns() - started
    received = time.time()
    connection.close()
    return {
        "status": response.status, "latency_ns": latency, "sent": sent, "received": received,
        "queries": int(response.getheader("X-Queries", "0")),
        "read_hits": int(response.getheader("X-Read-Hits", "0")),
        "read_misses": int(response.getheader("X-Read-Misses", "0")),
        "versions": _versions(item.method, response.status, body),
        "path": path, "method": item.method,
    }


def _client(args: tuple) -> list[tuple[int, dict[str, Any]]]:
    host, port, plan, stop, missing, created = args
    out = []
    while (index := _take(stop)) is not None:
        item = plan[index]
        sample = _send(host, port, item, _path(item, created, missing))
        if item.creates is not None:  # -1: the creation failed, its reads are 404s
            created[item.creates] = sample["versions"][0][0] if sample["status"] == 201 and sample["versions"] else -1
        out.append((index, sample))
    return out


_COUNTER: Any = None  # the stream's next index, inherited by the forked clients


def _take(stop: int) -> int | None:
    with _COUNTER.get_lock():
        index = _COUNTER.value
        if index >= stop:
            return None
        _COUNTER.value = index + 1
    return index


def replay(host: str, port: int, plan: list[Any], start: int, stop: int, clients: int, created: Any,
           missing: int) -> tuple[list[dict[str, Any]], float]:
    """Send ``plan[start:stop]`` with ``clients`` processes; each request's sample in plan order, and the wall time."""
    global _COUNTER
    _COUNTER = multiprocessing.Value("q", start)
    began = time.perf_counter()
    # Not multiprocessing.Pool: a client that dies there leaves map() waiting for ever; this pool raises BrokenProcessPool.
    with ProcessPoolExecutor(clients, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = list(pool.map(_client, [(host, port, plan, stop, missing, created)] * clients))
    elapsed = time.perf_counter() - began
    samples: list[dict[str, Any] | None] = [None] * (stop - start)
    for part in parts:
        for index, sample in part:
            samples[index - start] = sample
    return [s for s in samples if s is not None], elapsed
