"""The Velro traffic model (``studio.traffic``) and ``benchmarks.traffic``.

The model is pinned on a hand-made ``World`` (no database): deterministic by
seed, 5 % writes, 401/403/404 mixed in, sessions that revisit, creations that
later reads name and resolve. The benchmark's own judges (which reads are
first-time or repeat, the infinite cache's bound, the stale-read check) are
pinned on crafted streams, then the benchmark runs (--quick) against real
gunicorn, PostgreSQL and Redis and writes its report; never a timing
assertion.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.test_benchmarks_run import assert_budgets_well_formed, load, run_quick, section

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def world():
    import sys

    from benchmarks.common import ROOT

    sys.path.insert(0, str(ROOT / "example_project"))
    from studio.demo.plan import World

    users = list(range(1, 201))
    teams = {team: users[(team - 1) * 10:(team - 1) * 10 + 12] for team in range(1, 21)}
    owner_of = {pk: users[pk % len(users)] for pk in range(1, 2001)}
    team_of = {pk: (pk % 20) + 1 for pk in owner_of}
    built = World(generations=list(owner_of), owner_of=owner_of, team_of=team_of, members=teams,
                  token_of={user: f"token-{user}" for user in users}, users=users, max_generation_id=2000)
    for pk in built.generations:
        built.team_generations.setdefault(team_of[pk], []).append(pk)
    return built


def _stream(world, seed=3, count=5000):
    from studio.traffic import TrafficModel

    return TrafficModel(world, random.Random(seed)).stream(count)


def test_the_stream_is_deterministic_by_seed(world):
    assert _stream(world) == _stream(world)
    assert _stream(world) != _stream(world, seed=4)


def test_the_mix_has_five_percent_writes_and_every_failure(world):
    plan = _stream(world)
    methods = Counter(item.method for item in plan)
    assert 0.04 <= (methods["PATCH"] + methods["POST"]) / len(plan) <= 0.06
    assert any(item.token is None for item in plan)  # 401
    assert any(item.token and not item.token.startswith("token-") for item in plan)  # 401, bad token
    assert any(item.path.startswith("/api/generations/") and item.path.split("/")[3].isdigit()
               and int(item.path.split("/")[3]) > world.max_generation_id for item in plan)  # 404
    tokens = {item.token for item in plan if item.token}
    assert len(tokens) > 100


def test_sessions_revisit_and_new_generations_are_read_after_their_creation(world):
    from studio.traffic import NEW_ID, resolve

    plan = _stream(world)
    reads = [item.path for item in plan if item.method == "GET" and "/generations/" in item.path and "?" not in item.path]
    assert len(set(reads)) < 0.7 * len(reads)  # revisits
    created_at = {item.creates: index for index, item in enumerate(plan) if item.creates is not None}
    named = [(index, int(k)) for index, item in enumerate(plan) for k in NEW_ID.findall(item.path)]
    assert named, "no read of a new generation"
    assert all(created_at[k] < index for index, k in named)
    assert resolve("/api/generations/new:3/", {3: 77}, 1000) == "/api/generations/77/"
    assert resolve("/api/generations/?ids=1,new:2", {}, 1000) == "/api/generations/?ids=1,1002"


def test_repeat_reads_and_the_infinite_cache_bound(world):
    from studio.demo.plan import DETAIL, PATCH, PlannedRequest

    from benchmarks.traffic import classify

    read = PlannedRequest(DETAIL, "GET", "/api/generations/5/", "token-1")
    edit = PlannedRequest(PATCH, "PATCH", "/api/generations/5/", "token-1", "{}")
    classes, hits, reads = classify([read, read, edit, read, read], {"token-1": 1})
    assert classes == ["first", "repeat", "write", "first", "repeat"]
    # items: token, generation, decision per read; the edit reads the token and retires the generation
    assert (hits, reads) == (2 + 1 + 3 + 2 + 3 - 2, 13)


def test_the_stale_read_check_catches_a_version_older_than_a_completed_write():
    from benchmarks.traffic import stale_reads

    def sample(method, sent, received, version, status=200, path="/api/generations/5/"):
        return {"method": method, "sent": sent, "received": received, "status": status, "path": path,
                "versions": [(5, version)] if version else None}

    fresh = {"initial": {5: "v0"}, "samples": [sample("GET", 1, 2, "v0"), sample("PATCH", 3, 4, "v1"),
                                               sample("GET", 3.5, 5, "v0"), sample("GET", 6, 7, "v1")]}
    assert stale_reads(fresh) == (0, 3)  # the read overlapping the write may show either
    stale = {"initial": {5: "v0"}, "samples": [sample("PATCH", 3, 4, "v1"), sample("GET", 6, 7, "v0")]}
    assert stale_reads(stale) == (1, 1)
    created = {"initial": {}, "samples": [sample("POST", 1, 2, "v1"), sample("GET", 3, 4, None, status=404)]}
    assert stale_reads(created) == (1, 1)


def test_traffic_benchmark_runs_and_writes_its_report(tmp_path):
    run_quick("benchmarks.traffic", out=tmp_path, timeout=420)  # five arms, each a gunicorn start
    markdown, data = load(tmp_path, "traffic")
    assert_budgets_well_formed(markdown, data)
    warm = section(data, "Warm state")
    assert [row["arm"] for row in warm["rows"]] == [
        "caching off", "velro-cache", "velro-cache + warming", "django-cachalot", "django-cacheops"]
    for row in warm["rows"]:
        assert row["queries/request"] >= 0 and row["p95 ms"] > 0 and row["stale reads"].startswith("0 of ")
    assert section(data, "velro-cache's counters")["rows"]
    assert section(data, "The cache's own efficiency")["rows"]
    assert (tmp_path / "traffic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![cold-start curves](traffic.png)" in markdown


# -- the API the model drives: creations, and reads that name them --------------------------------


@pytest.fixture
def api_users(db):
    from django.contrib.auth.models import User
    from studio.models import ApiToken, Role, Team, TeamMembership

    team = Team.objects.create(name="Team", slug="team-create")
    users = {}
    for name, role in (("editor", Role.EDITOR), ("viewer", Role.VIEWER), ("outsider", None)):
        user = User.objects.create(username=f"create-{name}")
        if role:
            TeamMembership.objects.create(team=team, user=user, role=role)
        users[name] = (user, ApiToken.objects.create(user=user).key)
    return team, users


def _post(client, token, body):
    import json

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/api/generations/", json.dumps(body), content_type="application/json", headers=headers)


def test_a_creation_is_owned_by_its_caller_and_needs_an_editor_role_in_its_team(client, api_users):
    from studio.models import Generation

    team, users = api_users
    editor, editor_token = users["editor"]
    created = _post(client, editor_token, {"prompt": "a red fox", "team_id": team.pk})
    assert created.status_code == 201
    row = Generation.objects.get(pk=created.json()["id"])
    assert (row.owner_id, row.team_id, row.prompt) == (editor.pk, team.pk, "a red fox")
    assert _post(client, users["viewer"][1], {"prompt": "x", "team_id": team.pk}).status_code == 403
    assert _post(client, users["outsider"][1], {"prompt": "x", "team_id": team.pk}).status_code == 403
    assert _post(client, users["outsider"][1], {"prompt": "mine"}).status_code == 201  # no team: their own
    assert _post(client, None, {"prompt": "x"}).status_code == 401
    assert _post(client, editor_token, {"prompt": ""}).status_code == 400


def test_the_demo_runner_resolves_a_read_of_a_generation_the_stream_created(api_users):
    import json

    from django.core.cache import cache
    from studio.demo import runner
    from studio.demo.plan import CREATE, DETAIL, PlannedRequest

    cache.clear()
    team, users = api_users
    token = users["editor"][1]
    teammate = users["viewer"][1]
    plan = [
        PlannedRequest(CREATE, "POST", "/api/generations/", token, json.dumps({"prompt": "new", "team_id": team.pk}), 0),
        PlannedRequest(DETAIL, "GET", "/api/generations/new:0/", teammate),
        PlannedRequest(DETAIL, "GET", "/api/generations/new:1/", teammate),  # never created: a 404
    ]
    assert [sample.status for sample in runner.run(plan, 1).samples] == [201, 200, 404]
