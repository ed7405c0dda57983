"""Signal-driven invalidation on the real PostgreSQL and Redis: every mutation path, commits,
rollbacks, savepoints, reads inside writing transactions, relations and the reader/writer race.

These tests commit for real (``transaction=True``): on-commit behaviour is the
point, and a test-case transaction never commits.
"""

from __future__ import annotations

import secrets

import threading
import uuid
from contextlib import suppress

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from model_bakery import baker

import velro_cache
from studio.models import ApiToken, Generation, Role, Team, TeamMembership
from studio.reads import generation_meta, team_memberships
from tests.support import Arrivals, Background, eventually
from velro_cache.invalidation import InvalidatingQuerySet, invalidating, registry
from velro_cache.namespaces import current_tokens, levels, stamp
from velro_cache.reads import cached_read, cached_read_many

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def _isolated(own_cache):
    """Every test here on a default cache of its own (see conftest.own_cache)."""


@pytest.fixture
def team_a() -> Team:
    return baker.make(Team, name="Alpha", slug=f"alpha-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def team_b() -> Team:
    return baker.make(Team, name="Beta", slug=f"beta-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def generation(team_a: Team) -> Generation:
    return baker.make(Generation, prompt="first", team=team_a)


def prompt(pk: int) -> str | None:
    meta = generation_meta(pk)
    return None if meta is None else meta["prompt"]


def team_feed(team_id: int) -> list[int]:
    """A read that depends on which generations a team has: tagged with the team."""
    return cached_read(
        ("teamfeed", team_id),
        lambda: sorted(Generation.objects.filter(team_id=team_id).values_list("pk", flat=True)),
        tags=[f"team:{team_id}"],
    )


def in_other_thread(func):
    """Run ``func`` on another thread (its own database connection) and return its result."""
    return Background(lambda: _closing(func)).join()


# -- query counts: cached, invalidated on commit, untouched by rollback --------------------------


def test_the_second_read_costs_no_query(generation, django_assert_num_queries):
    with django_assert_num_queries(1):
        assert prompt(generation.pk) == "first"
    with django_assert_num_queries(0):
        assert prompt(generation.pk) == "first"


def test_after_a_committed_save_the_next_read_sees_it(generation, django_assert_num_queries):
    assert prompt(generation.pk) == "first"
    generation.prompt = "second"
    generation.save()
    with django_assert_num_queries(1):
        assert prompt(generation.pk) == "second"
    with django_assert_num_queries(0):
        assert prompt(generation.pk) == "second"


def test_after_a_rollback_the_cache_still_serves(generation, django_assert_num_queries):
    assert prompt(generation.pk) == "first"
    with pytest.raises(Boom), transaction.atomic():
        generation.prompt = "rolled back"
        generation.save()
        raise Boom
    with django_assert_num_queries(0):
        assert prompt(generation.pk) == "first"


def test_a_savepoint_rollback_retires_nothing_but_the_outer_commit_does(team_a, django_assert_num_queries):
    kept, dropped = baker.make(Generation, prompt="a1", team=team_a), baker.make(Generation, prompt="b1", team=team_a)
    assert (prompt(kept.pk), prompt(dropped.pk)) == ("a1", "b1")
    with transaction.atomic():
        kept.prompt = "a2"
        kept.save()
        with suppress(Boom), transaction.atomic():
            dropped.prompt = "b2"
            dropped.save()
            raise Boom
    with django_assert_num_queries(1):
        assert prompt(kept.pk) == "a2"
    with django_assert_num_queries(0):
        assert prompt(dropped.pk) == "b1"


def test_invalidation_waits_for_the_commit(generation):
    assert prompt(generation.pk) == "first"
    with transaction.atomic():
        generation.prompt = "second"
        generation.save()
        # Another connection still sees the committed row, and so does the cache.
        assert in_other_thread(lambda: prompt(generation.pk)) == "first"
    assert in_other_thread(lambda: prompt(generation.pk)) == "second"


# -- reads inside a transaction that wrote ----------------------------------------------------


def test_reads_inside_a_writing_transaction_bypass_the_cache_for_what_it_wrote(team_a, django_assert_num_queries):
    written, untouched = baker.make(Generation, prompt="first", team=team_a), baker.make(Generation, prompt="other")
    assert (prompt(written.pk), prompt(untouched.pk)) == ("first", "other")
    with pytest.raises(Boom), transaction.atomic():
        written.prompt = "uncommitted"
        written.save()
        for _ in range(2):  # from the database each time: never served stale, never stored
            with django_assert_num_queries(1):
                assert prompt(written.pk) == "uncommitted"
        with django_assert_num_queries(0):
            assert prompt(untouched.pk) == "other"  # data the transaction did not write stays cached
        assert in_other_thread(lambda: prompt(written.pk)) == "first"
        raise Boom
    with django_assert_num_queries(0):
        assert prompt(written.pk) == "first"  # the uncommitted value never reached the cache


def test_batch_reads_inside_a_writing_transaction_bypass_only_what_it_wrote(team_a, django_assert_num_queries):
    rows = [baker.make(Generation, prompt=f"p{n}", team=team_a) for n in range(3)]
    keys = {row.pk: ("generation", row.pk, "prompt") for row in rows}

    def load(pks):
        return dict(Generation.objects.filter(pk__in=pks).values_list("pk", "prompt"))

    assert cached_read_many(keys, load) == {row.pk: f"p{n}" for n, row in enumerate(rows)}
    with transaction.atomic():
        Generation.objects.filter(pk=rows[0].pk).update(prompt="mine")
        velro_cache.invalidate(rows[0])
        with django_assert_num_queries(1):
            assert cached_read_many(keys, load)[rows[0].pk] == "mine"
        assert in_other_thread(lambda: cached_read_many(keys, load)[rows[0].pk]) == "p0"
    with django_assert_num_queries(1):
        assert cached_read_many(keys, load)[rows[0].pk] == "mine"
    with django_assert_num_queries(0):
        assert cached_read_many(keys, load) == {rows[0].pk: "mine", rows[1].pk: "p1", rows[2].pk: "p2"}


# -- every mutation path ---------------------------------------------------------------------------


def test_delete_with_cascades(generation, team_a, client):
    owner = generation.owner
    baker.make(TeamMembership, team=team_a, user=owner, role=Role.EDITOR)
    token = baker.make(ApiToken, user=owner)
    headers = {"Authorization": f"Bearer {token.key}"}
    assert client.get(f"/api/generations/{generation.pk}/", headers=headers).status_code == 200
    assert [m["team_id"] for m in team_memberships(owner.pk)] == [team_a.pk]

    owner.delete()  # cascades to the generation, the membership and the token

    assert generation_meta(generation.pk) is None
    assert team_memberships(owner.pk) == []
    assert client.get(f"/api/generations/{generation.pk}/", headers=headers).status_code == 401


def test_deleting_a_team_reaches_generations_it_detached_and_its_members(generation, team_a):
    member = baker.make(User)
    baker.make(TeamMembership, team=team_a, user=member, role=Role.VIEWER)
    assert generation_meta(generation.pk)["team_id"] == team_a.pk
    assert team_feed(team_a.pk) == [generation.pk]
    assert [m["team_name"] for m in team_memberships(member.pk)] == ["Alpha"]

    team_id = team_a.pk
    team_a.delete()  # memberships cascade; generations are SET_NULL without any signal of their own

    assert generation_meta(generation.pk)["team_id"] is None
    assert team_feed(team_id) == []
    assert team_memberships(member.pk) == []


def test_moving_a_row_to_another_team_retires_both_teams(generation, team_a, team_b):
    assert (team_feed(team_a.pk), team_feed(team_b.pk)) == ([generation.pk], [])
    fetched = Generation.objects.get(pk=generation.pk)
    fetched.team = team_b
    fetched.save(update_fields=["team"])
    assert (team_feed(team_a.pk), team_feed(team_b.pk)) == ([], [generation.pk])


def test_a_save_of_fields_nothing_depends_on_retires_nothing(django_assert_num_queries):
    token = baker.make(ApiToken)
    key = ("session", "token", "probe", token.pk)
    probe = velro_cache.register(ApiToken, keys=["session:token:probe:{pk}"], fields=["key"])
    try:
        cached_read(key, lambda: "cached")
        token.save(update_fields=["last_used_at"])  # every ApiToken declaration lists fields without it
        with django_assert_num_queries(0):
            assert cached_read(key, lambda: "reloaded") == "cached"
        token.save(update_fields=["key"])  # saved unchanged: the database row says nothing changed
        assert cached_read(key, lambda: "reloaded") == "cached"
        token.key = secrets.token_hex(20)
        token.save(update_fields=["key"])
        assert cached_read(key, lambda: "reloaded") == "reloaded"
    finally:
        registry.unregister(ApiToken, type(probe))


@pytest.fixture
def group_declarations():
    """Both sides of auth's User.groups many-to-many declare what depends on them."""
    users = velro_cache.register(User, prefixes=["perm:user:{pk}"], fields=["groups"])
    groups = velro_cache.register(Group, prefixes=["perm:group:{pk}"], fields=["user"])
    yield
    registry.unregister(User, type(users))
    registry.unregister(Group, type(groups))


def groups_of(user: User) -> list[str]:
    return cached_read(("perm", "user", user.pk, "groups"), lambda: sorted(user.groups.values_list("name", flat=True)))


def members_of(group: Group) -> list[str]:
    return cached_read(("perm", "group", group.pk, "members"), lambda: sorted(group.user_set.values_list("username", flat=True)))


@pytest.mark.parametrize("side", ["forward", "reverse"])
def test_m2m_add_remove_and_clear_retire_both_sides(group_declarations, side):
    user, group = baker.make(User, username=f"u-{uuid.uuid4().hex[:6]}"), baker.make(Group, name=f"g-{uuid.uuid4().hex[:6]}")
    relation = user.groups if side == "forward" else group.user_set
    other = group if side == "forward" else user
    assert (groups_of(user), members_of(group)) == ([], [])

    relation.add(other)
    assert (groups_of(user), members_of(group)) == ([group.name], [user.username])

    relation.remove(other)
    assert (groups_of(user), members_of(group)) == ([], [])

    relation.add(other)
    assert (groups_of(user), members_of(group)) == ([group.name], [user.username])
    relation.clear()
    assert (groups_of(user), members_of(group)) == ([], [])


def test_m2m_changes_in_a_rolled_back_transaction_retire_nothing(group_declarations):
    user, group = baker.make(User, username=f"u-{uuid.uuid4().hex[:6]}"), baker.make(Group, name=f"g-{uuid.uuid4().hex[:6]}")
    assert groups_of(user) == []
    with pytest.raises(Boom), transaction.atomic():
        user.groups.add(group)
        raise Boom
    assert groups_of(user) == []
    with pytest.raises(Boom), transaction.atomic():
        Group.objects.filter(pk=group.pk).update(name="renamed")  # keeps the transaction honest
        user.groups.add(group)
        raise Boom
    assert groups_of(user) == []


def test_queryset_update_through_the_mixin_sees_old_and_new_values(generation, team_a, team_b):
    assert (prompt(generation.pk), team_feed(team_a.pk), team_feed(team_b.pk)) == ("first", [generation.pk], [])
    rows = invalidating(Generation.objects).filter(pk=generation.pk).update(team=team_b, prompt="moved")
    assert rows == 1
    assert (prompt(generation.pk), team_feed(team_a.pk), team_feed(team_b.pk)) == ("moved", [], [generation.pk])


@pytest.mark.parametrize("shape", ["values", "values_list"])
def test_an_update_after_values_through_the_mixin_commits_and_invalidates(generation, team_a, team_b, shape):
    """It raised AttributeError (a dict has no pk) and rolled the update back."""
    assert (prompt(generation.pk), team_feed(team_b.pk)) == ("first", [])
    rows = getattr(invalidating(Generation.objects).filter(pk=generation.pk), shape)("prompt").update(team=team_b, prompt="moved")
    assert rows == 1
    assert (prompt(generation.pk), team_feed(team_a.pk), team_feed(team_b.pk)) == ("moved", [], [generation.pk])


def test_the_queryset_class_itself_invalidates(generation):
    assert prompt(generation.pk) == "first"
    InvalidatingQuerySet(Generation).filter(pk=generation.pk).update(prompt="second")
    assert prompt(generation.pk) == "second"


def test_a_plain_update_and_raw_sql_are_captured_and_the_explicit_api_still_works(generation):
    assert prompt(generation.pk) == "first"
    Generation.objects.filter(pk=generation.pk).update(prompt="plain")  # no signal: write capture sees the UPDATE
    assert prompt(generation.pk) == "plain"
    with connection.cursor() as cursor:
        cursor.execute("UPDATE studio_generation SET prompt = %s WHERE id = %s", ["raw", generation.pk])
    assert prompt(generation.pk) == "raw"
    velro_cache.invalidate(generation)
    assert prompt(generation.pk) == "raw"


@pytest.mark.parametrize(
    "how",
    [
        lambda g: velro_cache.invalidate(g),
        lambda g: velro_cache.invalidate(Generation.objects.filter(pk=g.pk)),
        lambda g: velro_cache.invalidate(Generation),
        lambda g: velro_cache.invalidate(prefixes=[f"generation:{g.pk}"]),
        lambda g: velro_cache.invalidate(prefixes=[("generation", g.pk)]),
        lambda g: velro_cache.invalidate(data_types="generation"),
    ],
    ids=["instance", "queryset", "model", "prefix", "prefix-parts", "data-type"],
)
def test_every_form_of_the_explicit_api(generation, how):
    assert prompt(generation.pk) == "first"
    Generation.objects.filter(pk=generation.pk).update(prompt="raw")
    how(generation)
    assert prompt(generation.pk) == "raw"


def test_the_explicit_api_inside_a_transaction_waits_for_its_commit(generation):
    assert prompt(generation.pk) == "first"
    with pytest.raises(Boom), transaction.atomic():
        Generation.objects.filter(pk=generation.pk).update(prompt="raw")
        velro_cache.invalidate(generation)
        raise Boom
    with transaction.atomic():
        Generation.objects.filter(pk=generation.pk).update(prompt="raw")
        velro_cache.invalidate(generation)
        assert in_other_thread(lambda: prompt(generation.pk)) == "first"
    assert prompt(generation.pk) == "raw"


def test_bulk_create_through_the_mixin(team_a):
    user = baker.make(User)
    assert (team_memberships(user.pk), team_feed(team_a.pk)) == ([], [])
    invalidating(TeamMembership.objects).bulk_create([TeamMembership(team=team_a, user=user, role=Role.EDITOR)])
    created = invalidating(Generation.objects).bulk_create([Generation(owner=user, team=team_a, prompt="new", model_name="m")])
    assert [m["role"] for m in team_memberships(user.pk)] == ["editor"]
    assert team_feed(team_a.pk) == [created[0].pk]
    assert prompt(created[0].pk) == "new"


def test_a_cached_miss_is_retired_by_the_rows_creation(team_a):
    next_pk = (Generation.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000
    assert prompt(next_pk) is None  # "no such row" is cached too
    invalidating(Generation.objects).bulk_create([Generation(pk=next_pk, owner=baker.make(User), prompt="born", model_name="m")])
    assert prompt(next_pk) == "born"


def test_bulk_update_through_the_mixin_sees_old_and_new_values(generation, team_a, team_b):
    assert (prompt(generation.pk), team_feed(team_a.pk), team_feed(team_b.pk)) == ("first", [generation.pk], [])
    generation.team, generation.prompt = team_b, "bulk"
    invalidating(Generation.objects).bulk_update([generation], ["team", "prompt"])
    assert (prompt(generation.pk), team_feed(team_a.pk), team_feed(team_b.pk)) == ("bulk", [], [generation.pk])


# -- relations: membership -> team -> generations, through the example API -----------------------


def test_a_membership_change_reaches_what_depends_on_the_team_and_the_user(generation, team_a, client):
    member = baker.make(User, is_active=True)
    membership = baker.make(TeamMembership, team=team_a, user=member, role=Role.VIEWER)
    headers = {"Authorization": f"Bearer {baker.make(ApiToken, user=member).key}"}
    detail, edit = f"/api/generations/{generation.pk}/", {"content_type": "application/json", "headers": headers}

    assert client.get(detail, headers=headers).status_code == 200
    assert client.patch(detail, '{"prompt": "x"}', **edit).status_code == 403
    assert team_feed(team_a.pk) == [generation.pk]

    membership.role = Role.EDITOR
    membership.save()
    assert client.patch(detail, '{"prompt": "edited"}', **edit).status_code == 200
    assert client.get(detail, headers=headers).json()["prompt"] == "edited"

    team_a.name = "Renamed"
    team_a.save()
    assert [t["name"] for t in client.get("/api/me/", headers=headers).json()["teams"]] == ["Renamed"]

    membership.delete()
    assert client.get(detail, headers=headers).status_code == 403
    assert client.get("/api/me/", headers=headers).json()["teams"] == []


def test_deactivating_a_user_ends_their_cached_token(client):
    user = baker.make(User, is_active=True)
    headers = {"Authorization": f"Bearer {baker.make(ApiToken, user=user).key}"}
    assert client.get("/api/me/", headers=headers).status_code == 200
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert client.get("/api/me/", headers=headers).status_code == 401


# -- the race: a reader in flight while a writer commits -------------------------------------------


def test_a_value_read_before_a_committed_change_is_never_served_after_it(generation, own_cache, django_assert_num_queries):
    """The reader loads "first"; the writer commits "second" and retires the namespace before
    the reader stores; the reader's value lands under the retired token, unreachable."""
    key = ("generation", generation.pk, "prompt")
    loaded, release = threading.Event(), threading.Event()

    def slow_load():
        value = Generation.objects.values_list("prompt", flat=True).get(pk=generation.pk)
        loaded.set()
        assert release.wait(30)
        return value

    tokens_before = current_tokens(own_cache, levels.namespaces_of("generation:%d:prompt" % generation.pk))
    reader = Background(lambda: _closing(lambda: cached_read(key, slow_load)))
    assert loaded.wait(30), "the reader never reached its load"

    generation.prompt = "second"
    generation.save()  # commits (autocommit) and retires generation:<pk> before the reader stores

    release.set()
    assert reader.join() == "first"  # the reader answers with what it read...
    old_physical = stamp("generation:%d:prompt" % generation.pk, tokens_before)
    assert own_cache.get(old_physical) == "first"  # ...and stores it, but under the retired token
    with django_assert_num_queries(1):
        assert cached_read(key, lambda: Generation.objects.values_list("prompt", flat=True).get(pk=generation.pk)) == "second"
    with django_assert_num_queries(0):
        assert cached_read(key, lambda: "never") == "second"


def _closing(func):
    try:
        return func()
    finally:
        connection.close()


def test_concurrent_readers_never_see_a_value_older_than_the_last_commit(generation):
    """Readers check every answer against the version committed before their read began."""
    committed = [0]
    done = threading.Event()
    stale: list[tuple[int, int]] = []
    reads = [0]
    reading = Arrivals(4)

    def version() -> int:
        return int(prompt(generation.pk).removeprefix("v").removeprefix("first") or 0)

    def read_loop():
        try:
            first = True
            while not done.is_set():
                floor = committed[0]
                seen = version()
                reads[0] += 1
                if seen < floor:
                    stale.append((seen, floor))
                if first:
                    reading.arrive()
                    first = False
        finally:
            connection.close()

    readers = [Background(read_loop) for _ in range(4)]
    try:
        reading.wait(30)  # every reader is in its loop before the first commit
        for number in range(1, 41):
            row = Generation.objects.get(pk=generation.pk)
            row.prompt = f"v{number}"
            row.save(update_fields=["prompt"])
            committed[0] = number
            before = reads[0]
            assert eventually(lambda before=before: reads[0] >= before + 4), "the readers stopped reading"
    finally:
        done.set()
        for thread in readers:
            thread.join()
    assert not stale, stale[:5]
    assert reads[0] > 40
    assert version() == 40


# -- every tier, every process -------------------------------------------------------------------------


def test_an_invalidation_in_one_process_reaches_reads_in_another(generation, make_cache):
    """Two TieredCaches with separate L1s over one Redis play two worker processes."""
    worker_a, worker_b = make_cache(), make_cache()
    key = ("generation", generation.pk, "prompt")

    def read(cache):
        return cached_read(key, lambda: Generation.objects.values_list("prompt", flat=True).get(pk=generation.pk), cache=cache)

    assert read(worker_b) == "first"
    assert read(worker_a) == "first"
    assert worker_b.stats()["l1"]["entries"] > 0  # worker B holds the tokens and the value in its L1

    Generation.objects.filter(pk=generation.pk).update(prompt="second")
    velro_cache.invalidate(generation, cache=worker_a)  # worker A commits the change

    assert read(worker_a) == "second"
    assert eventually(lambda: read(worker_b) == "second"), "worker B kept serving the retired value"
    assert all(read(worker_b) == "second" for _ in range(50))
    fresh_process = make_cache()  # an empty L1: the new token comes from Redis (L2)
    assert read(fresh_process) == "second"


def test_a_retirement_reaches_every_tier(generation, own_cache, make_cache):
    assert prompt(generation.pk) == "first"
    namespace_key = f"ns:generation:{generation.pk}"
    old_token = own_cache.get(namespace_key)
    generation.prompt = "second"
    generation.save()
    new_token = own_cache.get(namespace_key)  # this process: L1
    assert new_token not in (None, old_token)
    assert make_cache(KEY_PREFIX=own_cache.key_prefix).get(namespace_key) == new_token  # an empty L1: from Redis


# -- the explicit API and read helpers on other backends --------------------------------------------


@pytest.mark.parametrize("backend", ["django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache"])
def test_cached_reads_work_on_any_django_backend(generation, settings, backend):
    settings.CACHES = {**settings.CACHES, "plain": {"BACKEND": backend, "LOCATION": f"inval-{uuid.uuid4().hex}"}}
    key = ("generation", generation.pk, "prompt")
    loads = []

    def load():
        loads.append(1)
        return Generation.objects.values_list("prompt", flat=True).get(pk=generation.pk)

    assert cached_read(key, load, cache="plain") == "first"
    assert cached_read(key, load, cache="plain") == "first"
    Generation.objects.filter(pk=generation.pk).update(prompt="second")
    velro_cache.invalidate(generation, cache="plain")
    assert cached_read(key, load, cache="plain") == "second"
    assert len(loads) == (2 if backend.endswith("LocMemCache") else 3)
