"""Coherence in ASGI workers: real uvicorn processes serving async views that read the cache.

Two uvicorn workers (``tests/asgi_app.py``) hold values in their L1s; this
test process is another process on the same Redis (and, as a second mode,
on the same Redis Cluster). A write made here (sync
``set`` or native ``aset``) is seen by the very next request to any worker
(read-your-writes at the request's start, applied by the worker's listener);
an ``aset`` made in a worker's view is seen here after its response returned;
and concurrent requests missing one key run its loader once across workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from tests.conftest import L1_CLUSTER, L1_REDIS
from tests.redis_server import free_port
from tests.support import ROOT, eventually

ROUNDS = 60


def _get(port: int, view: str, **params: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{view}?{urlencode(params)}", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(params=[L1_REDIS, L1_CLUSTER])
def uvicorn_workers(request, make_cache, tmp_path):
    """Two uvicorn workers on the cache's Redis (or Redis Cluster) and key prefix; yields (port, the test's own cache)."""
    cache = make_cache(mode=request.param)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VELRO_ASGI_REDIS_URL": cache._l2.url, "VELRO_ASGI_PREFIX": cache.key_prefix}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log = open(tmp_path / "uvicorn.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.asgi_app:application", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2", "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        try:
            return "value" in _get(port, "read", key="probe")
        except OSError:
            return False

    try:
        assert eventually(answers, 30, interval=0.1), (tmp_path / "uvicorn.log").read_text()[-3000:]
        yield port, cache
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def test_a_write_from_another_process_is_seen_by_the_next_request(uvicorn_workers):
    port, cache = uvicorn_workers
    stale, from_l1, pids = 0, 0, set()
    for round_ in range(ROUNDS):
        for _ in range(3):  # every worker (likely) holds the current value in its L1
            _get(port, "read", key="shared")
        value = f"v{round_}"
        if round_ % 2:
            asyncio.run(cache.aset("shared", value, 300))
        else:
            cache.set("shared", value, 300)
        answer = _get(port, "read", key="shared")
        stale += answer["value"] != value
        pids.add(answer["pid"])
        follow = _get(port, "read", key="shared")
        from_l1 += follow["from_l1"] and follow["value"] == value
    assert stale == 0
    assert from_l1 > 0  # the workers did serve from L1: the test exercised coherence, not just Redis
    assert len(pids) >= 1


def test_an_aset_in_a_worker_is_seen_here_after_its_response(uvicorn_workers):
    from velro_cache.freshness import confirm_current

    port, cache = uvicorn_workers
    stale = 0
    for round_ in range(ROUNDS):
        cache.get("written-there")  # held in this process's L1
        value = f"w{round_}"
        _get(port, "write", key="written-there", value=value)
        confirm_current()  # outside a request: what read-your-writes does at a request's start
        stale += cache.get("written-there") != value
    assert stale == 0


def test_concurrent_requests_run_one_loader_across_workers(uvicorn_workers, tmp_path):
    port, _ = uvicorn_workers
    log = tmp_path / "loads.log"
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _get(port, "load", key="once", log=str(log)), range(32)))
    assert [answer["value"] for answer in answers] == ["loaded"] * 32
    assert len(log.read_text().splitlines()) == 1
