"""Warming real worker processes: gunicorn with the example project's config, three workers.

Each worker warms itself from ``post_worker_init`` (in the background); the
plan's L2-only step runs in exactly one of them (the Redis lock), its L1 steps
in all three; every worker answers requests. Which worker did what comes from
the workers' own log lines (``pid`` in the warming summary). The ASGI
lifespan example is driven through the lifespan protocol against the real
Django application.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import re
import subprocess
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from tests.redis_server import free_port
from tests.settings import redis_url
from tests.support import eventually, example_cache_prefix, example_env, start_gunicorn, stop_process, wait_for
from velro_cache import warming
from velro_cache.db.refresh import refresh_views

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 5  # this module's own
WORKERS = 3
SUMMARY = re.compile(r"warming default \(worker, pid (\d+)\): (\d+) entries .*; (.*)$")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def status_of(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def summaries(log: Path) -> dict[int, dict[str, str]]:
    """pid -> {step: status} from the workers' warming summaries."""
    found = {}
    for line in log.read_text().splitlines():
        match = SUMMARY.search(line)
        if match:
            steps = dict(part.split("=", 1) for part in match.group(3).split())
            found[int(match.group(1))] = {name: value.split(":")[0] for name, value in steps.items()}
    return found


def start_warming_gunicorn(port: int, log: Path) -> subprocess.Popen:
    """The example project's gunicorn (its gunicorn.conf.py: warming in each worker) with WORKERS workers, stderr to ``log``."""
    return start_gunicorn(
        "-c", "gunicorn.conf.py", "--workers", str(WORKERS),
        port=port, env=example_env(redis_url(REDIS_DB)), stderr=log, cwd=ROOT / "example_project",
    )


@pytest.fixture
def seeded():
    call_command("velro_seed", users=40, teams=6, generations=400, stdout=io.StringIO())
    refresh_views()


def test_three_gunicorn_workers_warm_l1_each_and_l2_once(seeded, tmp_path):
    import redis

    redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()
    port, log = free_port(), tmp_path / "gunicorn.err"
    process = start_warming_gunicorn(port, log)
    try:
        wait_for(lambda: status_of(port, "/api/me/") == 401, "gunicorn did not start", 30, until_dead=process)
        wait_for(lambda: len(summaries(log)) == WORKERS, "not every worker logged its warm-up", 60, until_dead=process)
        runs = summaries(log)
        assert all(steps["active_users"] == "done" and steps["recent_generations"] == "done" for steps in runs.values()), runs
        assert sorted(steps["team_memberships"] for steps in runs.values()) == ["done", "skipped", "skipped"], runs
        assert status_of(port, "/api/me/") == 401  # still serving
    finally:
        stop_process(process)
        connection.close()
        redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()


def runs_per_pid(log: Path) -> dict[int, list[dict[str, str]]]:
    found: dict[int, list[dict[str, str]]] = {}
    for line in log.read_text().splitlines():
        match = SUMMARY.search(line)
        if match:
            steps = dict(part.split("=", 1) for part in match.group(3).split())
            found.setdefault(int(match.group(1)), []).append({name: value.split(":")[0] for name, value in steps.items()})
    return found


def test_a_trigger_on_redis_makes_every_worker_warm_again(seeded, tmp_path, settings):
    import redis

    redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()
    settings.CACHES = {**settings.CACHES, "default": {"BACKEND": "velro_cache.backends.TieredCache",
                                                      "LOCATION": redis_url(REDIS_DB), "KEY_PREFIX": example_cache_prefix()}}
    port, log = free_port(), tmp_path / "gunicorn.err"
    process = start_warming_gunicorn(port, log)
    try:
        wait_for(lambda: len(summaries(log)) == WORKERS, "not every worker logged its warm-up", 60, until_dead=process)
        received = []
        wait_for(lambda: received.append(warming.trigger(["team_memberships", "system_config"])) or received[-1] == WORKERS,
                 "not every worker listens", 30, until_dead=process)
        # Each worker logs its start-up run, then one run per trigger it received (an early
        # trigger may have reached fewer workers); each worker's last run is the last round.
        wait_for(lambda: sum(len(runs) for runs in runs_per_pid(log).values()) >= WORKERS + sum(received),
                 "not every worker ran the trigger", 60, until_dead=process)
        last = [runs[-1] for runs in runs_per_pid(log).values()]
        assert all(set(steps) == {"team_memberships", "system_config"} for steps in last), last
        assert all(steps["system_config"] == "done" for steps in last), last
        assert sorted(steps["team_memberships"] for steps in last) == ["done", "skipped", "skipped"], last
        assert status_of(port, "/api/me/") == 401
    finally:
        stop_process(process)
        connection.close()
        redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()


def test_a_trigger_without_redis_reaches_nobody(settings):
    settings.CACHES = {**settings.CACHES, "default": {"BACKEND": "velro_cache.backends.TieredCache", "KEY_PREFIX": "no-l2"}}
    assert warming.trigger() == 0
    assert warming.listen() is None


def test_the_asgi_lifespan_example_starts_at_once_and_warms_in_the_background(seeded):
    from example_project.asgi_lifespan import application

    warming.reset_results()

    async def startup() -> list[str]:
        inbox: asyncio.Queue = asyncio.Queue()
        inbox.put_nowait({"type": "lifespan.startup"})
        inbox.put_nowait({"type": "lifespan.shutdown"})
        sent: list[str] = []

        async def send(message):
            sent.append(message["type"])

        await application({"type": "lifespan"}, inbox.get, send)
        return sent

    assert asyncio.run(startup()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    eventually(lambda: warming.results()["runs"], 30)
    last = warming.results()["last_run"]
    assert last["mode"] == "worker" and last["entries"] > 0
    assert [step["name"] for step in last["steps"]][:2] == ["active_users", "recent_generations"]
