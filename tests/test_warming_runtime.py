"""Runtime warming: a session's working set preloaded in the background, and each predictor scored.

The mechanism (``velro_cache.warming.runtime``) with loads of the test's own,
then the example project's session preload on the real PostgreSQL and Redis:
a login and a token's first request each queue it, and the next reads of that
user's recent generations run no query, and count as the predictor's hits.
"""

from __future__ import annotations

import io
import threading

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from studio.models import ApiToken, RecentGeneration, TeamMembership
from studio.reads import generation_key, memberships_key

from tests.support import save_after_generation_select
from velro_cache import warming
from velro_cache.db.refresh import refresh_views
from velro_cache.reads import peek
from velro_cache.warming import runtime


@pytest.fixture(autouse=True)
def fresh():
    warming.reset_results()
    yield
    assert warming.drain(30)
    warming.reset_results()


def test_precision_is_the_share_of_warmed_keys_read_later():
    assert warming.preload("next-page", lambda: ["a:1", "a:2", "a:3", "a:4"])
    assert warming.drain(10)
    warming.note_read("a:1")
    warming.note_read("a:3")
    warming.note_read("a:3")  # a second read of one key is one right prediction
    warming.note_read("b:9")  # never predicted
    score = warming.predictor_results()["next-page"]
    assert (score["runs"], score["warmed"], score["read"]) == (1, 4, 2)
    assert score["precision"] == 0.5
    assert warming.results()["predictors"]["next-page"]["precision"] == 0.5


def test_reads_made_by_warming_itself_score_nothing():
    warming.preload("first", lambda: ["k:1"])
    warming.drain(10)
    warming.preload("second", lambda: (warming.note_read("k:1"), ["k:2"])[1])
    warming.drain(10)
    assert warming.predictor_results()["first"]["read"] == 0


def test_the_same_user_is_preloaded_once_per_session():
    assert warming.preload("login", lambda: ["u:1"], dedupe=("user", 1))
    assert not warming.preload("login", lambda: ["u:1"], dedupe=("user", 1))
    warming.drain(10)
    score = warming.predictor_results()["login"]
    assert score["runs"] == 1 and score["deduped"] == 1


def test_a_full_queue_drops_preloads_instead_of_piling_up():
    release = threading.Event()
    try:
        accepted = [warming.preload("burst", lambda: (release.wait(10), [])[1]) for _ in range(runtime.QUEUE_LIMIT + 5)]
    finally:
        release.set()
    warming.drain(20)
    assert accepted.count(True) == runtime.QUEUE_LIMIT
    assert warming.predictor_results()["burst"]["dropped"] == 5


def test_a_failing_preload_is_counted_and_never_raised(caplog):
    def broken():
        raise RuntimeError("database is down")

    assert warming.preload("broken", broken)
    warming.drain(10)
    assert warming.predictor_results()["broken"]["errors"] == 1
    assert any("broken" in record.getMessage() for record in caplog.records)


# -- the example project's session preload ----------------------------------------------------


@pytest.fixture
def seeded(settings):
    settings.STUDIO_SESSION_PRELOAD = True
    call_command("velro_seed", users=40, teams=6, generations=400, stdout=io.StringIO())
    refresh_views()
    cache.clear()


def user_with_recent_generations() -> User:
    """An active user with a token and at least three generations of the last 48 h."""
    from django.db.models import Count

    owners = (RecentGeneration.objects.values("owner_id").annotate(n=Count("id")).filter(n__gte=3)
              .values_list("owner_id", flat=True))
    return User.objects.filter(pk__in=owners, is_active=True, api_tokens__isnull=False).order_by("pk").first()


def users_recent_generation_ids(user: User) -> list[int]:
    return list(RecentGeneration.objects.filter(owner_id=user.pk).order_by("-created_at").values_list("id", flat=True)[:5])


@pytest.mark.django_db(transaction=True)
def test_a_tokens_first_request_preloads_the_users_working_set(client, seeded):
    user = user_with_recent_generations()
    token = ApiToken.objects.filter(user=user).values_list("key", flat=True).first()
    headers = {"Authorization": f"Bearer {token}"}
    first, *later = users_recent_generation_ids(user)
    assert later, "the seed gave this user one recent generation only"
    assert client.get("/api/me/", headers=headers).status_code == 200  # the session's first request
    assert warming.drain(30)
    assert peek(memberships_key(user.pk)) is not None
    for pk in later:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/api/generations/{pk}/", headers=headers).status_code == 200
        assert len(queries) == 0, (pk, [q["sql"] for q in queries])
    score = warming.predictor_results()["token_session"]
    assert score["runs"] == 1 and score["read"] >= len(later)  # each generation read after the preload
    assert 0 < score["precision"] <= 1


@pytest.mark.django_db(transaction=True)
def test_a_login_preloads_the_users_working_set(client, seeded):
    user = user_with_recent_generations()
    user.set_password("pw-for-the-test")
    user.save()
    assert client.login(username=user.username, password="pw-for-the-test")
    assert warming.drain(30)
    assert all(peek(generation_key(pk)) is not None for pk in users_recent_generation_ids(user))
    assert warming.predictor_results()["login"]["runs"] == 1


@pytest.mark.django_db(transaction=True)
def test_without_the_setting_nothing_is_preloaded(client, seeded, settings):
    settings.STUDIO_SESSION_PRELOAD = False
    user = user_with_recent_generations()
    token = ApiToken.objects.filter(user=user).values_list("key", flat=True).first()
    client.get("/api/me/", headers={"Authorization": f"Bearer {token}"})
    assert warming.drain(10)
    assert warming.predictor_results() == {}
    assert all(peek(generation_key(pk)) is None for pk in users_recent_generation_ids(user))


@pytest.mark.django_db(transaction=True)
def test_a_write_during_a_preload_is_not_undone(seeded):
    """The preload reads through the same helpers: a save committed after its SELECT wins."""
    from studio.warming import preload_working_set

    user = user_with_recent_generations()
    target = users_recent_generation_ids(user)[0]
    wrapper, done = save_after_generation_select(target, "edited mid-preload")

    from studio.reads import generation_meta

    generation_meta(target)
    cache.clear()
    with connection.execute_wrapper(wrapper):
        preload_working_set(user.pk)
    assert done.is_set()
    assert generation_meta(target)["prompt"] == "edited mid-preload"
    assert TeamMembership.objects.exists()
