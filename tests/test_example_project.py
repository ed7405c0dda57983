"""The example project's API, permissions and its seed/demo commands, on the real servers."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from model_bakery import baker

from studio.models import ApiToken, Generation, Role, SystemConfig, Team, TeamMembership
from studio.permissions import can, role_for
from velro_cache.reads import peek

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


def token_for(user: User) -> str:
    return baker.make(ApiToken, user=user).key


def auth(user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user)}"}


@pytest.fixture
def owner() -> User:
    return baker.make(User, is_active=True)


@pytest.fixture
def team() -> Team:
    return baker.make(Team)


@pytest.fixture
def generation(owner: User, team: Team) -> Generation:
    return baker.make(
        Generation, owner=owner, team=team, status="succeeded",
        media_url="https://cdn.velro.example/media/a.png",
        thumbnail_url="https://cdn.velro.example/thumbs/a.webp",
    )


def member(team: Team, role: str) -> User:
    user = baker.make(User, is_active=True)
    baker.make(TeamMembership, team=team, user=user, role=role)
    return user


def detail(generation_id: int) -> str:
    return f"/api/generations/{generation_id}/"


# -- authentication -----------------------------------------------------------------


def test_no_token_is_401_with_json_error(client, generation):
    response = client.get(detail(generation.pk))
    assert response.status_code == 401
    assert response.json()["error"] == "authentication_required"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header", ["Bearer " + "0" * 40, "Bearer short", "Token " + "a" * 40, "Bearer"]
)
def test_bad_token_is_401(client, generation, header):
    response = client.get(detail(generation.pk), headers={"Authorization": header})
    assert response.status_code == 401


def test_inactive_user_token_is_401(client, generation):
    generation.owner.is_active = False
    generation.owner.save()
    assert client.get(detail(generation.pk), headers=auth(generation.owner)).status_code == 401


def test_missing_generation_is_404(client, owner):
    response = client.get(detail(999_999), headers=auth(owner))
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# -- authorization on read ------------------------------------------------------------


def test_stranger_is_403(client, generation):
    stranger = baker.make(User, is_active=True)
    response = client.get(detail(generation.pk), headers=auth(stranger))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


def test_owner_reads(client, generation):
    response = client.get(detail(generation.pk), headers=auth(generation.owner))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == generation.pk
    assert body["prompt"] == generation.prompt
    assert "media_url" not in body  # media goes through its own endpoint


@pytest.mark.parametrize("role", [Role.OWNER, Role.EDITOR, Role.VIEWER])
def test_team_member_of_any_role_reads(client, generation, team, role):
    user = member(team, role)
    assert client.get(detail(generation.pk), headers=auth(user)).status_code == 200
    media = client.get(detail(generation.pk) + "media/", headers=auth(user))
    assert media.status_code == 200
    assert media.json()["media_url"] == generation.media_url


def test_member_of_another_team_is_403(client, generation):
    outsider = member(baker.make(Team), Role.OWNER)
    assert client.get(detail(generation.pk), headers=auth(outsider)).status_code == 403


def test_superuser_reads_everything(client, generation):
    admin = baker.make(User, is_active=True, is_superuser=True)
    assert client.get(detail(generation.pk), headers=auth(admin)).status_code == 200


def test_media_reports_url_ttl_from_system_config(client, generation):
    SystemConfig.objects.create(key="media.url_ttl_seconds", value=120)
    response = client.get(detail(generation.pk) + "media/", headers=auth(generation.owner))
    assert response.json()["expires_in"] == 120
    assert response.json()["thumbnail_url"] == generation.thumbnail_url


def test_media_stranger_is_403(client, generation):
    stranger = baker.make(User, is_active=True)
    response = client.get(detail(generation.pk) + "media/", headers=auth(stranger))
    assert response.status_code == 403


# -- writes ---------------------------------------------------------------------------


def patch(client, generation_id, body, headers):
    return client.patch(
        detail(generation_id), json.dumps(body), content_type="application/json", headers=headers
    )


def test_patch_by_viewer_is_403(client, generation, team):
    viewer = member(team, Role.VIEWER)
    response = patch(client, generation.pk, {"prompt": "nope"}, auth(viewer))
    assert response.status_code == 403
    generation.refresh_from_db()
    assert generation.prompt != "nope"


def test_patch_by_editor_updates_and_next_read_is_fresh(client, generation, team):
    editor = member(team, Role.EDITOR)
    headers = auth(editor)
    assert client.get(detail(generation.pk), headers=headers).json()["status"] == "succeeded"

    response = patch(client, generation.pk, {"prompt": "a calmer sea", "status": "failed"}, headers)

    assert response.status_code == 200
    assert response.json()["prompt"] == "a calmer sea"
    generation.refresh_from_db()
    assert (generation.prompt, generation.status) == ("a calmer sea", "failed")
    fresh = client.get(detail(generation.pk), headers=headers).json()
    assert (fresh["prompt"], fresh["status"]) == ("a calmer sea", "failed")


def test_patch_by_owner_is_200(client, generation):
    response = patch(client, generation.pk, {"status": "running"}, auth(generation.owner))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "body, code",
    [
        ({"status": "exploded"}, "invalid_status"),
        ({"owner_id": 1}, "invalid_fields"),
        ({"prompt": ""}, "invalid_prompt"),
        ({}, "invalid_body"),
        ([1, 2], "invalid_body"),
    ],
)
def test_patch_rejects_bad_bodies(client, generation, body, code):
    response = patch(client, generation.pk, body, auth(generation.owner))
    assert response.status_code == 400
    assert response.json()["error"] == code


def test_patch_rejects_invalid_json(client, generation):
    response = client.patch(
        detail(generation.pk), "{not json", content_type="application/json",
        headers=auth(generation.owner),
    )
    assert response.status_code == 400


def test_patch_missing_is_404_and_without_token_401(client, owner):
    assert patch(client, 999_999, {"prompt": "x"}, auth(owner)).status_code == 404
    assert patch(client, 999_999, {"prompt": "x"}, {}).status_code == 401


def test_delete_is_not_allowed(client, generation):
    response = client.delete(detail(generation.pk), headers=auth(generation.owner))
    assert response.status_code == 405


# -- batch ----------------------------------------------------------------------------


def test_batch_returns_allowed_and_lists_denied_and_missing(client, owner, team):
    mine = baker.make(Generation, owner=owner, _quantity=2)
    teams = baker.make(Generation, team=team)
    member_user = member(team, Role.VIEWER)
    baker.make(Generation, owner=member_user)
    others = baker.make(Generation)
    ids = [mine[0].pk, others.pk, teams.pk, 999_999, mine[1].pk]

    response = client.get(
        "/api/generations/", {"ids": ",".join(map(str, ids))}, headers=auth(owner)
    )

    assert response.status_code == 200
    body = response.json()
    assert [g["id"] for g in body["results"]] == [mine[0].pk, mine[1].pk]
    assert body["denied"] == [others.pk, teams.pk]
    assert body["missing"] == [999_999]

    as_member = client.get(
        "/api/generations/", {"ids": f"{teams.pk},{mine[0].pk}"}, headers=auth(member_user)
    ).json()
    assert [g["id"] for g in as_member["results"]] == [teams.pk]
    assert as_member["denied"] == [mine[0].pk]


@pytest.mark.parametrize("ids", ["", "1,two", ",,"])
def test_batch_rejects_bad_ids(client, owner, ids):
    response = client.get("/api/generations/", {"ids": ids}, headers=auth(owner))
    assert response.status_code == 400


def test_batch_limit_comes_from_system_config(client, owner):
    SystemConfig.objects.create(key="api.batch_max_ids", value=3)
    response = client.get("/api/generations/", {"ids": "1,2,3,4"}, headers=auth(owner))
    assert response.status_code == 400
    assert response.json()["error"] == "too_many_ids"


def test_batch_requires_token(client):
    assert client.get("/api/generations/", {"ids": "1"}).status_code == 401


# -- /api/me/ -------------------------------------------------------------------------


def test_me_returns_user_and_memberships(client):
    user = baker.make(User, is_active=True, username="ada", email="ada@velro.example")
    alpha = baker.make(Team, name="Alpha", slug="alpha")
    beta = baker.make(Team, name="Beta", slug="beta")
    baker.make(TeamMembership, team=alpha, user=user, role=Role.EDITOR)
    baker.make(TeamMembership, team=beta, user=user, role=Role.VIEWER)

    response = client.get("/api/me/", headers=auth(user))

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["username"], body["email"]) == (user.pk, "ada", "ada@velro.example")
    assert body["teams"] == [
        {"id": alpha.pk, "name": "Alpha", "slug": "alpha", "role": "editor"},
        {"id": beta.pk, "name": "Beta", "slug": "beta", "role": "viewer"},
    ]


def test_me_requires_token(client):
    assert client.get("/api/me/").status_code == 401


# -- the cache is really used ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # data written under a test transaction is dirty: never cached
def test_repeated_reads_are_served_without_queries(
    client, generation, team, django_assert_num_queries
):
    viewer = member(team, Role.VIEWER)
    headers = auth(viewer)
    assert client.get(detail(generation.pk), headers=headers).status_code == 200
    assert client.get("/api/me/", headers=headers).status_code == 200
    assert client.get(detail(generation.pk) + "media/", headers=headers).status_code == 200
    with django_assert_num_queries(0):
        assert client.get(detail(generation.pk), headers=headers).status_code == 200
        assert client.get(detail(generation.pk) + "media/", headers=headers).status_code == 200
        assert client.get("/api/me/", headers=headers).status_code == 200


@pytest.mark.django_db(transaction=True)  # data written under a test transaction is dirty: never cached
def test_cache_keys_are_grouped_by_data_type(client, generation, team):
    viewer = member(team, Role.VIEWER)
    headers = auth(viewer)
    client.get(detail(generation.pk), headers=headers)
    client.get("/api/me/", headers=headers)  # authorization no longer reads the team list (velro_cache.authz)
    # Physical keys carry namespace tokens (velro_cache.namespaces); peek reads as the app does.
    assert peek(f"generation:{generation.pk}:meta")["id"] == generation.pk
    assert [m["role"] for m in peek(f"team_membership:user:{viewer.pk}")] == ["viewer"]


# -- permissions, directly ---------------------------------------------------------------


def test_roles_and_actions(generation, team):
    editor = member(team, Role.EDITOR)
    viewer = member(team, Role.VIEWER)
    inactive_owner_of_team = member(team, Role.OWNER)
    inactive_owner_of_team.is_active = False

    assert role_for(generation.owner, generation) == Role.OWNER
    assert role_for(editor, generation) == Role.EDITOR
    assert role_for(inactive_owner_of_team, generation) is None
    assert can(viewer, generation, "read") and can(viewer, generation, "media")
    assert not can(viewer, generation, "write")
    assert can(editor, generation, "write") and not can(editor, generation, "delete")
    assert can(generation.owner, generation, "share")
    with pytest.raises(ValueError):
        can(viewer, generation, "launch")


def test_role_without_team_is_owner_only(owner):
    solo = baker.make(Generation, owner=owner, team=None)
    assert role_for(owner, solo) == Role.OWNER
    assert role_for(baker.make(User, is_active=True), solo) is None


# -- commands -----------------------------------------------------------------------


def seed(**options) -> str:
    out = io.StringIO()
    defaults = {"users": 20, "teams": 3, "generations": 150, "seed": 1}
    call_command("velro_seed", stdout=out, **{**defaults, **options})
    return out.getvalue()


def test_seed_creates_a_realistic_data_set_and_is_idempotent():
    seed()
    counts = (User.objects.count(), Team.objects.count(), Generation.objects.count())
    assert counts == (21, 3, 150)  # 20 users + the demo admin
    assert ApiToken.objects.count() == 21
    assert set(TeamMembership.objects.values_list("role", flat=True)) <= {"owner", "editor", "viewer"}
    assert TeamMembership.objects.filter(role="owner").values("team").distinct().count() == 3
    assert Generation.objects.filter(team__isnull=False).exists()
    assert Generation.objects.filter(status="succeeded").exists()
    assert SystemConfig.objects.filter(key="api.batch_max_ids").exists()

    output = seed()

    assert "Created 0 users, 0 teams, 0 memberships, 0 API tokens, 0 generations" in output
    assert (User.objects.count(), Team.objects.count(), Generation.objects.count()) == counts


def test_seed_flush_starts_over():
    seed()
    first_tokens = set(ApiToken.objects.values_list("key", flat=True))
    seed(flush=True, generations=40)
    assert Generation.objects.count() == 40
    assert User.objects.filter(username__startswith="velro_user_").count() == 20
    assert first_tokens.isdisjoint(ApiToken.objects.values_list("key", flat=True))


def demo(**options) -> str:
    out = io.StringIO()
    call_command("velro_demo", stdout=out, no_progress=True, **options)
    return out.getvalue()


def test_demo_requires_seeded_data():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="velro_seed"):
        demo(requests=10)


def test_demo_runs_end_to_end_and_reports():
    seed()
    report = demo(requests=300, compare=100)

    assert "Velro demo report: 300 requests, 1 concurrent client(s)" in report
    assert "Requests by status" in report
    assert "200 OK" in report
    for endpoint in ("GET /api/generations/<id>/", "GET /api/me/", "GET /api/generations/?ids="):
        assert endpoint in report
    assert "p50" in report and "p95" in report and "p99" in report
    assert "Cache backend's own statistics" in report
    assert "Cache hit rate, counted by the app's read-through helpers" in report
    assert "Database queries" in report
    assert "fewer queries per request" in report
    assert "100 requests replayed with DummyCache" in report


def test_demo_reports_status_mix_and_saved_queries():
    seed()
    report = demo(requests=400, compare=200, seed=3)
    statuses = {
        line.split()[0]
        for line in report.splitlines()
        if line.startswith("  ") and line.split()[0].isdigit()
    }
    assert {"200", "401"} <= statuses
    saved = next(line for line in report.splitlines() if "fewer queries per request" in line)
    assert float(saved.split("saved:")[1].split("%")[0]) > 0


@pytest.mark.django_db(transaction=True)
def test_demo_with_concurrent_clients():
    seed()
    report = demo(requests=200, clients=3, compare=0)
    assert "200 requests, 3 concurrent client(s)" in report
    assert "no comparison pass without cache was run" in report
    assert "threads of one interpreter" in report
