"""No stale allow across worker processes: the example API under gunicorn, revoked many times at random.

Three sync gunicorn workers serve the example project against this session's
test database and a Redis database of this test's own. Each trial warms a
user's allow in several workers' L1 (concurrent requests spread over the
workers), commits a revoke from this process (a randomly chosen path, after a
random pause), and sends the very next requests to whichever workers take
them: every one must be denied (403, or 401 when the token's user is gone).
Which worker served what comes from gunicorn's access log (``%(p)s`` is the
worker pid), so the test can show the allows and denies really spanned
processes.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from studio.models import ApiToken, Generation, Role, Team, TeamMembership

from tests.redis_server import free_port
from tests.settings import redis_url
from tests.support import eventually, example_cache_prefix, example_env, start_gunicorn, stop_process, wait_for

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 3
REDIS_DB = 7  # this module's own
TRIALS = int(os.environ.get("VELRO_AUTHZ_TRIALS", "120"))
TIME_BUDGET = 60.0
DENIED = {401, 403}

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@pytest.fixture
def server(settings, tmp_path):
    """Gunicorn on a free loopback port; this process's cache is made the workers' cache."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB), "KEY_PREFIX": example_cache_prefix()},
    }
    port = free_port()
    log = tmp_path / "access.log"
    process = start_gunicorn(
        "example_project.wsgi:application", "--chdir", str(ROOT / "example_project"), "--workers", str(WORKERS),
        "--worker-class", "sync", "--access-logfile", str(log), "--access-logformat", "%(p)s %(m)s %(U)s %(s)s", "--timeout", "60",
        port=port, env=example_env(redis_url(REDIS_DB)), stderr=tmp_path / "gunicorn.err",
    )
    try:
        wait_for(lambda: request(port, "GET", "/api/me/", None)[0] == 401, "gunicorn did not start", 30, until_dead=process)
        yield port, log
    finally:
        stop_process(process)
        connection.close()
        from django.core.cache import caches

        caches["default"].clear()


def request(port: int, method: str, path: str, key: str | None, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        payload = None
        if body is not None:
            payload = json.dumps(body)
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


# -- the revoke paths: each returns (user, generation, action) set up and allowed, and a revoke ---------


def _setup(role: str = Role.VIEWER, superuser: bool = False):
    team = Team.objects.create(name="t", slug=f"t-{random.getrandbits(48):x}")
    owner = User.objects.create(username=f"o-{random.getrandbits(48):x}")
    user = User.objects.create(username=f"u-{random.getrandbits(48):x}", is_superuser=superuser)
    generation = Generation.objects.create(owner=owner, team=team, prompt="p", model_name="m", status="succeeded")
    if not superuser:
        TeamMembership.objects.create(team=team, user=user, role=role)
    return team, owner, user, generation


def membership_removed():
    _, _, user, gen = _setup()
    return user, gen, "read", lambda: TeamMembership.objects.get(user=user).delete()


def role_lowered():
    _, _, user, gen = _setup(Role.EDITOR)

    def revoke():
        membership = TeamMembership.objects.get(user=user)
        membership.role = Role.VIEWER
        membership.save()

    return user, gen, "write", revoke


def ownership_transferred():
    _, owner, _, gen = _setup()

    def revoke():
        gen.owner = User.objects.create(username=f"n-{random.getrandbits(48):x}")
        gen.save()

    return owner, gen, "read", revoke


def team_changed():
    _, _, user, gen = _setup()

    def revoke():
        gen.team = Team.objects.create(name="other", slug=f"o-{random.getrandbits(48):x}")
        gen.save()

    return user, gen, "media", revoke


def user_deactivated():
    _, _, user, gen = _setup()

    def revoke():
        user.is_active = False
        user.save()

    return user, gen, "read", revoke


def superuser_dropped():
    _, _, user, gen = _setup(superuser=True)

    def revoke():
        user.is_superuser = False
        user.save()

    return user, gen, "read", revoke


PATHS = [membership_removed, role_lowered, ownership_transferred, team_changed, user_deactivated, superuser_dropped]


def check(port: int, key: str, gen_id: int, action: str) -> int:
    path = f"/api/generations/{gen_id}/"
    if action == "write":
        return request(port, "PATCH", path, key, {"prompt": f"edit {random.random()}"})[0]
    if action == "media":
        return request(port, "GET", path + "media/", key)[0]
    if random.random() < 0.3:
        status, body = request(port, "GET", f"/api/generations/?ids={gen_id}", key)
        return 200 if body.get("results") else 403 if status == 200 else status
    return request(port, "GET", path, key)[0]


def generation_lines(log: Path) -> list[str]:
    """The access log's lines for the generation API (the readiness probes hit /api/me/)."""
    lines = [line.split() for line in log.read_text().splitlines()]
    return [" ".join(parts) for parts in lines if len(parts) == 4 and parts[2].startswith("/api/generations/")]


def pids_by_status(log: Path) -> dict[int, set[str]]:
    seen: dict[int, set[str]] = {}
    for line in generation_lines(log):
        pid, _method, _path, status = line.split()
        seen.setdefault(int(status), set()).add(pid)
    return seen


def test_no_stale_allow_after_a_revoke_in_any_worker(server):
    port, log = server
    rng = random.Random(os.environ.get("VELRO_AUTHZ_SEED") or None)
    stale, trials, denials, sent = [], 0, 0, 0
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2 * WORKERS) as pool:
        while trials < TRIALS and time.monotonic() - started < TIME_BUDGET:
            path = rng.choice(PATHS)
            user, gen, action, revoke = path()
            key = ApiToken.objects.create(user=user).key
            probe = functools.partial(check, port, key, gen.pk)
            warm = list(pool.map(probe, [action] * 2 * WORKERS))
            assert set(warm) == {200}, (path.__name__, warm)
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.005)
            revoke()  # committed (autocommit), its bump applied on commit
            after = [check(port, key, gen.pk, action)]
            after += list(pool.map(probe, [action] * rng.randint(1, WORKERS)))
            for status in after:
                if status == 200:
                    stale.append((path.__name__, gen.pk, after))
                else:
                    assert status in DENIED, (path.__name__, status)
                    denials += 1
            trials += 1
            sent += len(warm) + len(after)
    # gunicorn writes a request's log line after its response: wait for every one.
    assert eventually(lambda: len(generation_lines(log)) >= sent), (len(generation_lines(log)), sent)
    served = pids_by_status(log)
    print(f"{trials} trials, {denials} denials, stale allows: {len(stale)}, in {time.monotonic() - started:.1f} s; workers {served}")
    assert stale == []
    assert trials >= min(TRIALS, 100)
    assert len(served.get(200, set())) >= 2 and len(served.get(403, set()) | served.get(401, set())) >= 2
