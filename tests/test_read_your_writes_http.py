"""Read-your-writes across gunicorn servers: a PATCH on one, then at once a GET on another, busy one.

Two gunicorn servers run the example project against this session's test
database and one Redis database: A takes the PATCHes, B (threaded) is kept
busy by clients that read the same generation all the time, so B's L1 always
holds it and B's listener thread competes for the GIL with its request
threads. Each round PATCHes a new prompt on A and, as soon as A answered,
GETs it from B: B must never answer the prompt from before (before
read-your-writes at request start, about 1 read in 1,000 did).
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from studio.models import ApiToken, Generation, Team

from tests.redis_server import free_port
from tests.settings import redis_url
from tests.support import example_cache_prefix, example_env, start_gunicorn, stop_process, wait_for
from tests.test_authz_processes import request

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 8  # this module's own
ROUNDS = int(os.environ.get("VELRO_RYW_ROUNDS", "400"))
TIME_BUDGET = 40.0
READERS = 4

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def gunicorn(port: int, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = example_env(redis_url(REDIS_DB))
    return start_gunicorn(
        "example_project.wsgi:application", "--chdir", str(ROOT / "example_project"), "--timeout", "60", *extra,
        port=port, env=env, stderr=tmp_path / f"gunicorn-{port}.err",
    )


@pytest.fixture
def servers(settings, tmp_path):
    settings.CACHES = {
        **settings.CACHES,
        "default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB), "KEY_PREFIX": example_cache_prefix()},
    }
    ports = free_port(), free_port()
    processes = [
        gunicorn(ports[0], tmp_path, "--workers", "1", "--worker-class", "sync"),
        gunicorn(ports[1], tmp_path, "--workers", "1", "--worker-class", "gthread", "--threads", str(READERS + 1)),
    ]
    try:
        for port, process in zip(ports, processes):
            wait_for(lambda port=port: request(port, "GET", "/api/me/", None)[0] == 401, "gunicorn did not start", 30, until_dead=process)
        yield ports
    finally:
        for process in processes:
            stop_process(process)
        connection.close()
        from django.core.cache import caches

        caches["default"].clear()


def test_a_get_on_a_busy_server_right_after_a_patch_on_another_sees_it(servers):
    writer_port, reader_port = servers
    owner = User.objects.create(username=f"o-{random.getrandbits(48):x}")
    team = Team.objects.create(name="t", slug=f"t-{random.getrandbits(48):x}")
    generation = Generation.objects.create(owner=owner, team=team, prompt="p-start", model_name="m", status="succeeded")
    key = ApiToken.objects.create(user=owner).key
    path = f"/api/generations/{generation.pk}/"
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            request(reader_port, "GET", path, key)

    busy = [threading.Thread(target=keep_busy, daemon=True) for _ in range(READERS)]
    for thread in busy:
        thread.start()
    stale, rounds, started = [], 0, time.monotonic()
    try:
        while rounds < ROUNDS and time.monotonic() - started < TIME_BUDGET:
            prompt = f"p-{rounds}"
            status, body = request(writer_port, "PATCH", path, key, {"prompt": prompt})
            assert status == 200 and body["prompt"] == prompt, (status, body)
            status, body = request(reader_port, "GET", path, key)
            assert status == 200, (status, body)
            if body["prompt"] != prompt:
                stale.append((rounds, body["prompt"]))
            rounds += 1
    finally:
        stop.set()
        for thread in busy:
            thread.join(timeout=30)
    print(f"{rounds} rounds, stale reads: {len(stale)}, in {time.monotonic() - started:.1f} s")
    assert stale == []
    assert rounds >= min(ROUNDS, 100)
