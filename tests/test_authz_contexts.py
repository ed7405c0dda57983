"""Role contexts (velro_cache.authz.roles + facts) on the real PostgreSQL and Redis.

What a user relies on: a check on an object the user never checked, with the
user's context and the object's facts cached, runs no query (per-(user,
object) decisions ran one); the answers equal the database's on any
hierarchy; every revoke path retires the context (and object moves retire the
facts), a Redis restored from an older snapshot included; a user with more
rows than the bound is still decided correctly; warming and the login preload
fill contexts. The cross-process matrix is tests/test_authz_contexts_processes.py.
"""

from __future__ import annotations

import random
import shutil
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from model_bakery import baker
from studio.models import Generation, Role, Team, TeamMembership

from tests.redis_server import RedisServer
from tests.support import eventually
from velro_cache import authz, warming
from velro_cache.authz import decisions, roles, versions
from velro_cache.authz.policy import ObjectPolicy
from velro_cache.db.refresh import refresh_views

pytestmark = pytest.mark.django_db(transaction=True)  # grants and revokes retire on a real commit

ACTIONS = ("read", "media", "write", "delete", "share")


@pytest.fixture(autouse=True)
def own_prefix(settings):
    """The default cache under a prefix of this test's own: no other test's clear() reaches it."""
    default = settings.CACHES["default"]
    settings.CACHES = {**settings.CACHES, "default": {**default, "KEY_PREFIX": f"ctx-{uuid.uuid4().hex[:8]}"}}
    yield
    caches["default"].clear()


@pytest.fixture
def team() -> Team:
    return baker.make(Team)


def member(team: Team, role: str | None) -> User:
    user = baker.make(User, is_active=True)
    if role is not None:
        baker.make(TeamMembership, team=team, user=user, role=role)
    return user


def authz_queries(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries]


def cached_context(user: User) -> object:
    """The role context cached for the user under their current versions (None: none)."""
    cache = caches["default"]
    prefix = decisions.key_prefix(user.pk, *versions.read_tokens(cache, user.pk))
    return cache.get(roles.context_key(prefix, authz.registry.for_model(Generation)))


# -- no query for an object never seen ------------------------------------------------------


def test_a_first_check_on_an_unseen_object_with_a_warm_context_runs_no_query(team):
    viewer = member(team, Role.VIEWER)
    owner = baker.make(User, is_active=True)
    ours = baker.make(Generation, owner=owner, team=team, _quantity=5)
    elsewhere = baker.make(Generation, owner=owner, team=baker.make(Team))
    with authz.scope():  # another user's request reads the generations: their facts are cached for everyone
        authz.authorize_many(owner, [*ours, elsewhere], "read")
    with authz.scope():
        assert authz.authorize(viewer, ours[0], "read")  # the viewer's context is loaded once
    with authz.scope(), CaptureQueriesContext(connection) as captured:  # a later request, objects the viewer never checked
        assert authz.authorize(viewer, ours[3], "read")
        assert not authz.authorize(viewer, ours[4], "write")
        assert not authz.authorize(viewer, elsewhere, "read")
        assert authz.authorize_many(viewer, ours[1:], "media") == {g.pk: True for g in ours[1:]}
    assert authz_queries(captured) == []


def test_what_a_cold_context_and_cold_objects_cost(team, django_assert_num_queries):
    viewer = member(team, Role.VIEWER)
    gens = baker.make(Generation, owner=baker.make(User), team=team, _quantity=50)
    with authz.scope():
        with django_assert_num_queries(3):  # the context (user flags, memberships), then the facts
            assert authz.authorize(viewer, gens[0], "read")
        with django_assert_num_queries(1):  # 49 objects never seen by anyone: one query for all their facts
            assert all(authz.authorize_many(viewer, gens[1:], "read").values())
        with django_assert_num_queries(0):
            assert authz.authorize_many(viewer, gens, "write") == dict.fromkeys((g.pk for g in gens), False)


def test_a_missing_object_is_denied_and_not_cached_so_its_pk_created_later_is_allowed(team):
    owner = baker.make(User, is_active=True)
    pk = (Generation.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000
    with authz.scope():
        assert not authz.authorize(owner, authz.ObjectRef(Generation, pk), "read")
    Generation.objects.create(pk=pk, owner=owner, team=team, prompt="p", model_name="m", status="succeeded")
    with authz.scope():
        assert authz.authorize(owner, authz.ObjectRef(Generation, pk), "read")


# -- the same answers as the database -------------------------------------------------------


def test_contexts_decide_exactly_what_the_database_decides_on_random_hierarchies():
    rng = random.Random(7)
    teams = baker.make(Team, _quantity=4)
    users = [baker.make(User, is_active=rng.random() > 0.15, is_superuser=rng.random() < 0.1) for _ in range(12)]
    for user in users:
        for team in rng.sample(teams, rng.randint(0, 3)):
            baker.make(TeamMembership, user=user, team=team, role=rng.choice([Role.VIEWER, Role.EDITOR, Role.OWNER]))
    gens = [baker.make(Generation, owner=rng.choice(users), team=rng.choice([*teams, None])) for _ in range(25)]
    policy = authz.registry.for_model(Generation)
    for user in users:
        truth = policy.roles_of(user.pk, [g.pk for g in gens])
        with authz.scope():
            for action in ACTIONS:
                expected = {g.pk: user.is_active and policy.allows(truth[g.pk], action) for g in gens}
                assert authz.authorize_many(user, gens, action) == expected, (user.pk, action)
                assert {g.pk: authz.authorize(user, g, action) for g in gens[:5]} == {pk: expected[pk] for pk in list(expected)[:5]}
    assert cached_context(users[0]) is not None


class TeamSharePolicy(ObjectPolicy):
    """A source matching the object itself (via="pk") with a role translation and an extended hierarchy."""

    roles = ("viewer", "commenter", "editor", "owner")
    actions = {"read": "viewer", "comment": "commenter", "write": "editor", "share": "owner"}
    sources = [authz.RoleSource(TeamMembership, match="team", roles={"viewer": "commenter", "editor": "editor", "owner": "owner"})]


def test_a_source_on_the_object_itself_with_a_translation(team, django_assert_num_queries):
    authz.registry.register(Team, TeamSharePolicy)
    try:
        viewer = member(team, Role.VIEWER)
        other = baker.make(Team)
        with authz.scope():
            assert {a for a in ("read", "comment", "write", "share") if authz.authorize(viewer, team, a)} == {"read", "comment"}
            assert not authz.authorize(viewer, other, "read")
        with authz.scope(), django_assert_num_queries(0):
            assert authz.authorize(viewer, team, "comment")
    finally:
        authz.registry.unregister(Team)


# -- every revoke path retires the context (one process; across processes: test_authz_contexts_processes.py) --


def _allowed_then(user: User, gen: Generation, action: str, revoke) -> bool:
    """Warm the allow from the context (asserting it is one), revoke, and check in a new request."""
    with authz.scope():
        assert authz.authorize(user, gen, action)
    assert isinstance(cached_context(user), dict)
    revoke()
    with authz.scope():
        return authz.authorize(user, gen, action)


def _raw(sql: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def revoke_paths():
    """(name, role the user starts with, action, revoke(user, gen, team, membership))."""
    def save_role(m, role):
        m.role = role
        m.save()

    def transfer(gen):
        gen.owner = baker.make(User)
        gen.save()

    def move(gen):
        gen.team = baker.make(Team)
        gen.save()

    def flag(user, **values):
        for name, value in values.items():
            setattr(user, name, value)
        user.save()

    def reuse(gen):
        values = {f.attname: getattr(gen, f.attname) for f in Generation._meta.concrete_fields}
        Generation.objects.filter(pk=gen.pk).delete()
        Generation.objects.create(**{**values, "owner_id": baker.make(User).pk, "team_id": None})

    return [
        ("membership deleted", Role.VIEWER, "read", lambda u, g, t, m: m.delete()),
        ("membership queryset delete", Role.VIEWER, "read", lambda u, g, t, m: TeamMembership.objects.filter(pk=m.pk).delete()),
        ("membership raw delete", Role.VIEWER, "read", lambda u, g, t, m: _raw("delete from studio_teammembership where id = %s", [m.pk])),
        ("role lowered, save", Role.EDITOR, "write", lambda u, g, t, m: save_role(m, Role.VIEWER)),
        ("role lowered, update", Role.EDITOR, "write", lambda u, g, t, m: TeamMembership.objects.filter(pk=m.pk).update(role=Role.VIEWER)),
        ("role lowered, bulk_update", Role.EDITOR, "write",
         lambda u, g, t, m: TeamMembership.objects.bulk_update([TeamMembership(pk=m.pk, team=t, user=u, role=Role.VIEWER)], ["role"])),
        ("role lowered, raw", Role.EDITOR, "write",
         lambda u, g, t, m: _raw("update studio_teammembership set role = 'viewer' where id = %s", [m.pk])),
        ("ownership transferred, save", None, "delete", lambda u, g, t, m: transfer(g)),
        ("ownership transferred, update", None, "delete",
         lambda u, g, t, m: Generation.objects.filter(pk=g.pk).update(owner=baker.make(User))),
        ("ownership transferred, raw", None, "delete",
         lambda u, g, t, m: _raw("update studio_generation set owner_id = %s where id = %s", [baker.make(User).pk, g.pk])),
        ("team changed, save", Role.VIEWER, "read", lambda u, g, t, m: move(g)),
        ("team changed, update", Role.VIEWER, "read", lambda u, g, t, m: Generation.objects.filter(pk=g.pk).update(team=baker.make(Team))),
        ("team changed, raw", Role.VIEWER, "read",
         lambda u, g, t, m: _raw("update studio_generation set team_id = %s where id = %s", [baker.make(Team).pk, g.pk])),
        ("user deactivated, save", Role.VIEWER, "read", lambda u, g, t, m: flag(User.objects.get(pk=u.pk), is_active=False)),
        ("user deactivated, update", Role.VIEWER, "read", lambda u, g, t, m: User.objects.filter(pk=u.pk).update(is_active=False)),
        ("superuser dropped, save", "superuser", "delete", lambda u, g, t, m: flag(User.objects.get(pk=u.pk), is_superuser=False)),
        ("superuser dropped, raw", "superuser", "delete",
         lambda u, g, t, m: _raw("update auth_user set is_superuser = false where id = %s", [u.pk])),
        ("pk reused after a delete", None, "read", lambda u, g, t, m: reuse(g)),
    ]


@pytest.mark.parametrize("name, role, action, revoke", revoke_paths(), ids=[p[0] for p in revoke_paths()])
def test_every_revoke_path_retires_the_context(team, name, role, action, revoke):
    owner = baker.make(User, is_active=True)
    gen = baker.make(Generation, owner=owner, team=team)
    user, membership = owner, None
    if role == "superuser":
        user = baker.make(User, is_active=True, is_superuser=True)
    elif role is not None:
        user = baker.make(User, is_active=True)
        membership = baker.make(TeamMembership, team=team, user=user, role=role)
    assert not _allowed_then(user, gen, action, lambda: revoke(user, gen, team, membership))


def test_a_policy_tightened_in_settings_never_reads_contexts_cached_under_the_old_one(team):
    from studio.permissions import GenerationPolicy

    viewer = member(team, Role.VIEWER)
    gen = baker.make(Generation, owner=baker.make(User), team=team)
    with authz.scope():
        assert authz.authorize(viewer, gen, "read")

    class Tightened(GenerationPolicy):
        actions = {**GenerationPolicy.actions, "read": Role.EDITOR}
        sources = (authz.RoleSource(TeamMembership, match="team", via="team", roles={Role.VIEWER: Role.VIEWER, Role.EDITOR: Role.EDITOR}),)

    original = authz.registry.for_model(Generation)
    authz.registry.unregister(Generation)
    try:
        tightened = authz.registry.register(Generation, Tightened)
        assert tightened.fingerprint != original.fingerprint
        with authz.scope():
            assert not authz.authorize(viewer, gen, "read")
    finally:
        authz.registry.unregister(Generation)
        authz.registry._policies[Generation] = original


def keys_in(snapshot: Path, tmp_path: Path) -> list[bytes]:
    """The keys an RDB file holds, read by a redis-server no cache connects to (ours flush an old incarnation at once)."""
    workdir = tmp_path / "probe"
    workdir.mkdir()
    shutil.copyfile(snapshot, workdir / "dump.rdb")
    probe = RedisServer(workdir)
    probe.start()
    try:
        return probe.client().keys("*")
    finally:
        probe.stop()


def test_a_redis_restored_from_an_older_snapshot_brings_back_no_context(settings, own_redis, team, tmp_path):
    default = settings.CACHES["default"]
    settings.CACHES = {**settings.CACHES, "default": {**default, "LOCATION": own_redis.url(), "KEY_PREFIX": "restore"}}
    viewer = member(team, Role.VIEWER)
    gen = baker.make(Generation, owner=baker.make(User), team=team)
    with authz.scope():
        assert authz.authorize(viewer, gen, "read")  # context and facts in L1 and Redis
    snapshot = own_redis.snapshot()
    TeamMembership.objects.filter(user=viewer).get().delete()
    with authz.scope():
        assert not authz.authorize(viewer, gen, "read")
    assert b":ctx:" in b" ".join(keys_in(snapshot, tmp_path)), "the snapshot holds no context: nothing to resurrect"
    own_redis.restart_from(snapshot)  # the old tokens and the old allow-giving context are back in Redis
    cache = caches["default"]

    def l2_answers() -> bool:
        cache.set("probe", "ok")
        return cache.get("probe") == "ok" and cache.stats()["l2"]["breaker"]["state"] == "closed"

    assert eventually(l2_answers, limit=10)
    for _ in range(3):
        with authz.scope():
            assert not authz.authorize(viewer, gen, "read")


# -- bounded size ---------------------------------------------------------------------------


def test_a_user_in_more_teams_than_the_bound_is_decided_per_object(settings, django_assert_num_queries):
    settings.VELRO_CACHE = {**getattr(settings, "VELRO_CACHE", {}), "AUTHZ_CONTEXT_MAX_ROWS": 5}
    teams = baker.make(Team, _quantity=7)
    many, bounded = baker.make(User, is_active=True), baker.make(User, is_active=True)
    for team in teams[:6]:
        baker.make(TeamMembership, team=team, user=many, role=Role.EDITOR)
    for team in teams[:5]:
        baker.make(TeamMembership, team=team, user=bounded, role=Role.EDITOR)
    gens = [baker.make(Generation, owner=baker.make(User), team=team) for team in teams]
    with authz.scope():
        assert authz.authorize_many(many, gens, "write") == {g.pk: g.team_id != teams[6].pk for g in gens}
        assert authz.authorize_many(bounded, gens, "write") == {g.pk: g.team_id in {t.pk for t in teams[:5]} for g in gens}
    assert cached_context(many) == {roles.TOO_LARGE: True}  # a marker of constant size, not 6 rows
    assert len(cached_context(bounded)["sources"][0]) == 5
    fresh = baker.make(Generation, owner=baker.make(User), team=teams[0])
    authz.warm_objects(Generation, [fresh.pk])
    with authz.scope():
        with django_assert_num_queries(1):  # over the bound: the per-object decision query
            assert authz.authorize(many, fresh, "write")
        with django_assert_num_queries(0):
            assert authz.authorize(many, fresh, "read")  # ... which cached every action
            assert authz.authorize(bounded, fresh, "write")  # within the bound: context and facts


# -- warming ---------------------------------------------------------------------------------


def test_warmed_contexts_and_objects_decide_first_checks_without_a_query(team):
    viewers = [member(team, Role.VIEWER) for _ in range(3)]
    gens = baker.make(Generation, owner=baker.make(User), team=team, _quantity=10)
    assert authz.warm_contexts(viewers) == 3
    assert authz.warm_objects(Generation, [g.pk for g in gens]) == 10
    with CaptureQueriesContext(connection) as captured:
        for viewer in viewers:
            with authz.scope():
                assert all(authz.authorize_many(viewer, gens, "read").values())
    assert authz_queries(captured) == []


def test_a_revoke_committed_while_warming_is_not_undone(team):
    """Warming reads the tokens first: a context read before a revoke commits is stored under the retired token."""
    viewer = member(team, Role.VIEWER)
    gen = baker.make(Generation, owner=baker.make(User), team=team)
    context = authz.AuthorizationContext(viewer)
    prefix = context._key_prefix()  # the warm-up's tokens, read before the revoke
    TeamMembership.objects.filter(user=viewer).delete()
    policy = authz.registry.for_model(Generation)
    stale = roles.RoleContext(True, False, [{team.pk: policy.rank(Role.VIEWER)}])
    caches["default"].set(roles.context_key(prefix, policy), stale.encode())  # what a slow warm-up would store
    with authz.scope():
        assert not authz.authorize(viewer, gen, "read")


def test_the_login_preload_fills_the_users_context(settings, client, team):
    settings.STUDIO_SESSION_PRELOAD = True
    viewer = member(team, Role.VIEWER)
    gens = baker.make(Generation, owner=baker.make(User), team=team, _quantity=3)
    refresh_views()  # the preload picks the user's recent generations from the RecentGeneration view
    warming.reset_results()
    client.force_login(viewer)
    assert warming.drain()
    assert isinstance(cached_context(viewer), dict)
    with authz.scope(), CaptureQueriesContext(connection) as captured:
        assert all(authz.authorize_many(viewer, gens, "read").values())
    assert authz_queries(captured) == []


# -- settings ----------------------------------------------------------------------------------


def test_bad_context_settings_are_check_errors_and_off_means_per_object_decisions(settings, team, django_assert_num_queries):
    from velro_cache.checks import authz_setting_problems
    from velro_cache.conf import parse_settings

    assert [m.id for m in authz_setting_problems(parse_settings({"AUTHZ_CONTEXTS": "on"}), {}, [])] == ["velro_cache.E090"]
    for bad in (0, -1, 1.5, True, "10"):
        assert [m.id for m in authz_setting_problems(parse_settings({"AUTHZ_CONTEXT_MAX_ROWS": bad}), {}, [])] == ["velro_cache.E091"]
    settings.VELRO_CACHE = {**getattr(settings, "VELRO_CACHE", {}), "AUTHZ_CONTEXTS": False}
    viewer = member(team, Role.VIEWER)
    gen = baker.make(Generation, owner=baker.make(User), team=team)
    with authz.scope(), django_assert_num_queries(1):
        assert authz.authorize(viewer, gen, "read")
    assert cached_context(viewer) is None
