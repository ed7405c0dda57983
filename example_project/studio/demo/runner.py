"""Replay a request plan through Django's full request path, in-process.

Each simulated client is a thread with its own test `Client` and its own database
connection, so the cache is exercised concurrently the way worker threads would.
Every request records its status, latency, the SQL queries it ran (counted with
an execute wrapper on that thread's connection) and its cache hits and misses.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.test import Client

from studio.reads import read_stats
from studio.traffic import resolve

from .plan import PlannedRequest


@dataclass(frozen=True)
class Sample:
    endpoint: str
    status: int
    latency_ns: int
    queries: int
    hits: int
    misses: int


@dataclass
class RunResult:
    samples: list[Sample]
    elapsed_s: float
    clients: int


class _QueryCounter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


def request_host() -> str:
    """A host name the settings accept, so requests are not rejected with 400."""
    for host in settings.ALLOWED_HOSTS:
        host = host.lstrip(".")
        if host and host != "*":
            return host
    return "localhost"


class Created:
    """The ids the server gave the plan's creations, shared by the clients (``studio.traffic.resolve``)."""

    def __init__(self, missing: int) -> None:
        self.ids: dict[int, int] = {}
        self.missing = missing  # above every real id: an unresolved ``new:<k>`` is a 404

    def path(self, item: PlannedRequest) -> str:
        return resolve(item.path, self.ids, self.missing)

    def record(self, item: PlannedRequest, response: Any) -> None:
        if item.creates is not None and response.status_code == 201:
            self.ids[item.creates] = response.json()["id"]


def _send(client: Client, item: PlannedRequest, created: Created | None = None) -> int:
    headers = {"Authorization": f"Bearer {item.token}"} if item.token else {}
    path = created.path(item) if created is not None else item.path
    if item.method in ("PATCH", "POST"):
        send = client.patch if item.method == "PATCH" else client.post
        response = send(path, item.body, content_type="application/json", headers=headers)
    else:
        response = client.get(path, headers=headers)
    if created is not None:
        created.record(item, response)
    return response.status_code


def _work(
    plan: list[PlannedRequest],
    samples: list[Sample | None],
    next_index: Callable[[], int],
    tick: Callable[[int], None],
    created: Created,
) -> None:
    client = Client(SERVER_NAME=request_host(), raise_request_exception=False)
    counter = _QueryCounter()
    reads = read_stats.thread_counter()
    done = 0
    with connection.execute_wrapper(counter):
        while (index := next_index()) < len(plan):
            queries, hits, misses = counter.count, reads["hits"], reads["misses"]
            started = time.perf_counter_ns()
            status = _send(client, plan[index], created)
            latency = time.perf_counter_ns() - started
            samples[index] = Sample(
                plan[index].endpoint, status, latency, counter.count - queries,
                reads["hits"] - hits, reads["misses"] - misses,
            )
            done += 1
            if done % 25 == 0:
                tick(25)
    tick(done % 25)


def run(plan: list[PlannedRequest], clients: int, progress: Any = None) -> RunResult:
    """Run the plan with ``clients`` concurrent clients (1 = in the calling thread)."""
    from studio.models import Generation

    created = Created(missing=(Generation.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 10_000_000)
    samples: list[Sample | None] = [None] * len(plan)
    counter = itertools.count()
    lock = threading.Lock()

    def next_index() -> int:
        with lock:
            return next(counter)

    def tick(n: int) -> None:
        if progress is not None and n:
            progress.update(n)

    started = time.perf_counter()
    if clients <= 1:
        _work(plan, samples, next_index, tick, created)
    else:
        threads = [
            threading.Thread(target=_threaded, args=(plan, samples, next_index, tick, created), daemon=True)
            for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - started
    return RunResult([s for s in samples if s is not None], elapsed, max(clients, 1))


def _threaded(*args: Any) -> None:
    try:
        _work(*args)
    finally:
        # A worker thread's connection would otherwise outlive it (and block test teardown).
        connection.close()
