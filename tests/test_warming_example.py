"""Velro's warming plan on the example project, on the real PostgreSQL and Redis.

What a user relies on: after ``warm()`` the first requests of the most active
users are served without a query; the plan runs in the issue's order; the
command reports it; and a write that commits while the warm-up is loading is
never undone by it (with raw sets it would be: the control test shows the
same interleaving serving the retired row).
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from studio.materialized import recent_generation_ids, top_active_users
from studio.models import ApiToken, Generation, TeamMembership
from studio.reads import generation_key, generation_meta

from tests.support import save_after_generation_select
from velro_cache import warming
from velro_cache.db.refresh import refresh_views
from velro_cache.namespaces import current_tokens, stamp
from velro_cache.reads import _namespaces, peek

PLAN_ORDER = ["active_users", "recent_generations", "team_memberships", "system_config"]


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    warming.reset_results()
    yield
    cache.clear()


@pytest.fixture
def seeded():
    """Committed data (tests here are transactional): writes of the test's own open
    transaction would make reads bypass the cache, as they should."""
    call_command("velro_seed", users=40, teams=6, generations=400, stdout=io.StringIO())
    refresh_views()


def readable_recent_generation(user_id: int) -> int | None:
    """A recent generation the user owns or shares a team with (what the plan warms decisions for)."""
    team_ids = set(TeamMembership.objects.filter(user_id=user_id).values_list("team_id", flat=True))
    for generation in Generation.objects.filter(pk__in=recent_generation_ids(500)).order_by("-created_at", "-id"):
        if generation.owner_id == user_id or generation.team_id in team_ids:
            return generation.pk
    return None


@pytest.mark.django_db(transaction=True)
def test_after_warming_an_active_users_first_read_runs_no_query(client, seeded):
    run = warming.warm()
    assert [step.name for step in run.steps] == PLAN_ORDER
    assert {step.name: step.status for step in run.steps} == dict.fromkeys(PLAN_ORDER, "done"), run.as_dict()
    assert all(step.entries > 0 for step in run.steps), run.as_dict()

    user_id, generation_id = next(
        (row["user_id"], pk) for row in top_active_users(100)
        if (pk := readable_recent_generation(row["user_id"])) is not None
    )
    token = ApiToken.objects.filter(user_id=user_id).values_list("key", flat=True).first()
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/api/generations/{generation_id}/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert len(queries) == 0, [q["sql"] for q in queries]


@pytest.mark.django_db(transaction=True)
def test_warmed_identities_survive_another_tokens_first_request(client, seeded):
    """A token's first request refreshes its last_used_at; that must not retire every warmed identity.

    (It did while studio/auth.py refreshed it with QuerySet.update(): a write of
    unknown rows, so write capture retired all of ``session``.)
    """
    from studio.reads import token_digest, token_key

    active = [row["user_id"] for row in top_active_users(100)]
    stale = ApiToken.objects.exclude(user_id__in=active).filter(user__is_active=True).first()
    ApiToken.objects.filter(pk=stale.pk).update(last_used_at=None)  # due for a refresh (a bulk write: warm after it)
    warming.warm(only=["active_users"])
    kept = ApiToken.objects.filter(user_id=active[0]).first()
    assert peek(token_key(token_digest(kept.key))) is not None
    assert peek(token_key(token_digest(stale.key))) is None
    assert client.get("/api/me/", headers={"Authorization": f"Bearer {stale.key}"}).status_code == 200
    assert ApiToken.objects.get(pk=stale.pk).last_used_at is not None  # refreshed
    assert peek(token_key(token_digest(kept.key))) is not None


@pytest.mark.django_db(transaction=True)
def test_without_warming_the_same_first_read_queries(client, seeded):
    """The counterpart of the test above: the zero is warming's doing."""
    user_id = top_active_users(100)[0]["user_id"]
    generation_id = readable_recent_generation(user_id) or Generation.objects.filter(owner_id=user_id).values_list("pk", flat=True).first()
    token = ApiToken.objects.filter(user_id=user_id).values_list("key", flat=True).first()
    with CaptureQueriesContext(connection) as queries:
        client.get(f"/api/generations/{generation_id}/", headers={"Authorization": f"Bearer {token}"})
    assert len(queries) > 0


@pytest.mark.django_db(transaction=True)
def test_velro_warm_prints_what_it_warmed_as_json(seeded):
    out = io.StringIO()
    call_command("velro_warm", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert [step["name"] for step in report["steps"]] == PLAN_ORDER
    assert report["entries"] == sum(step["entries"] for step in report["steps"]) > 0
    assert report["errors"] == 0 and report["seconds"] > 0
    assert warming.results()["last_run"]["entries"] == report["entries"]


@pytest.mark.django_db(transaction=True)
def test_velro_warm_summary_and_one_step(seeded):
    out, err = io.StringIO(), io.StringIO()
    call_command("velro_warm", "--step", "system_config", stdout=out, stderr=err)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:2] == ["step", "tiers"]
    assert [line.split()[0] for line in lines[1:-1]] == ["system_config"]
    assert lines[-1].startswith("warmed ")


@pytest.mark.django_db
def test_velro_warm_names_an_unknown_cache_alias_instead_of_a_traceback():
    with pytest.raises(CommandError, match=r"Unknown cache alias 'nosuch'; CACHES defines: .*'default'"):
        call_command("velro_warm", "--cache", "nosuch", stdout=io.StringIO())


def raw_set_warm(ids: list[int]) -> int:
    """What a warmer with raw sets does: load, then set under the tokens current *at store time*."""
    from studio.reads import serialize_generation

    rows = list(Generation.objects.filter(pk__in=ids))
    for generation in rows:
        logical, names = _namespaces(generation_key(generation.pk))
        cache.set(stamp(logical, current_tokens(cache, names)), serialize_generation(generation), 300)
    return len(rows)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("warmer", ["plan", "raw sets (control)"])
def test_a_write_committed_during_the_warm_up_is_not_undone(seeded, warmer):
    generation_id = recent_generation_ids(500)[0]
    generation_meta(generation_id)  # tokens exist, as on a running site
    cache.clear()
    if warmer == "plan":
        step = warming.declared().ordered(["recent_generations"])[0]
    else:
        step = warming.Step("recent_generations", lambda: raw_set_warm(recent_generation_ids(500)[:100]))
    wrapper, interleaved = save_after_generation_select(generation_id, "changed while warming")
    with connection.execute_wrapper(wrapper):
        run = warming.warm(warming.Plan([step]))
    assert interleaved.is_set() and run.steps[0].status == "done" and run.steps[0].entries > 0
    served = generation_meta(generation_id)["prompt"]
    if warmer == "plan":
        assert served == "changed while warming"
    else:
        assert served != "changed while warming"  # the retired row, served: what the plan's reads prevent
