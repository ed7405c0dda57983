"""velro_cache.authz on the real PostgreSQL and Redis: the hierarchy, query counts, revokes, outages, keys."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import caches
from django.db import transaction
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from model_bakery import baker
from studio.models import ApiToken, Generation, Role, Team, TeamMembership

from velro_cache import authz
from velro_cache.authz import decisions, versions
from velro_cache.authz.policy import ObjectPolicy
from velro_cache.keys import parse_key

pytestmark = pytest.mark.django_db(transaction=True)  # grants and revokes retire on a real commit

ACTIONS = ("read", "media", "write", "delete", "share")
ALLOWED = {
    None: set(),
    Role.VIEWER: {"read", "media"},
    Role.EDITOR: {"read", "media", "write"},
    Role.OWNER: set(ACTIONS),
}


@pytest.fixture(autouse=True)
def own_prefix(settings):
    """The default cache under a prefix of this test's own: no other test's clear() reaches it."""
    default = settings.CACHES["default"]
    settings.CACHES = {**settings.CACHES, "default": {**default, "KEY_PREFIX": f"authz-{uuid.uuid4().hex[:8]}"}}
    yield
    caches["default"].clear()


@pytest.fixture
def decisions_only(settings):
    """Per-(user, object) decisions without role contexts: the path tests/test_authz_contexts.py replaces."""
    settings.VELRO_CACHE = {**getattr(settings, "VELRO_CACHE", {}), "AUTHZ_CONTEXTS": False}


@pytest.fixture
def team() -> Team:
    return baker.make(Team)


@pytest.fixture
def owner() -> User:
    return baker.make(User, is_active=True)


@pytest.fixture
def generation(owner: User, team: Team) -> Generation:
    return baker.make(Generation, owner=owner, team=team, status="succeeded")


def member(team: Team, role: str | None) -> User:
    user = baker.make(User, is_active=True)
    if role is not None:
        baker.make(TeamMembership, team=team, user=user, role=role)
    return user


def allowed_actions(user, obj) -> set[str]:
    return {action for action in ACTIONS if authz.authorize(user, obj, action)}


# -- the hierarchy ------------------------------------------------------------------------


@pytest.mark.parametrize("role", [None, Role.VIEWER, Role.EDITOR, Role.OWNER])
def test_team_role_by_action_matrix(generation, team, role):
    user = member(team, role)
    assert allowed_actions(user, generation) == ALLOWED[role]
    with authz.scope():  # the same answers cached, in one request
        assert allowed_actions(user, generation) == ALLOWED[role]
        assert allowed_actions(user, generation) == ALLOWED[role]


def test_owner_superuser_inactive_anonymous(generation, team):
    assert allowed_actions(generation.owner, generation) == set(ACTIONS)
    assert allowed_actions(baker.make(User, is_superuser=True, is_active=True), generation) == set(ACTIONS)
    assert allowed_actions(baker.make(User, is_superuser=True, is_active=False), generation) == set()
    inactive_member = member(team, Role.OWNER)
    User.objects.filter(pk=inactive_member.pk).update(is_active=False)  # the database decides, not the instance
    assert allowed_actions(inactive_member, generation) == set()
    assert allowed_actions(AnonymousUser(), generation) == set()
    assert allowed_actions(None, generation) == set()


def test_owner_of_a_teamless_generation_only(owner):
    solo = baker.make(Generation, owner=owner, team=None)
    assert allowed_actions(owner, solo) == set(ACTIONS)
    assert allowed_actions(baker.make(User, is_active=True), solo) == set()


def test_strongest_role_wins(generation, team):
    """An editor of the team who also owns the generation is its owner."""
    TeamMembership.objects.create(team=team, user=generation.owner, role=Role.VIEWER)
    assert allowed_actions(generation.owner, generation) == set(ACTIONS)


def test_unknown_action_and_unregistered_model_raise(generation, team):
    with pytest.raises(ValueError):
        authz.authorize(generation.owner, generation, "launch")
    with pytest.raises(ValueError):
        authz.authorize(AnonymousUser(), generation, "launch")
    with pytest.raises(authz.NotRegistered):
        authz.authorize(generation.owner, team, "read")


def test_object_ref_and_string_pk(generation):
    assert authz.authorize(generation.owner, authz.ObjectRef(Generation, generation.pk), "share")
    assert authz.authorize(generation.owner, authz.ObjectRef(Generation, str(generation.pk)), "share")
    assert authz.role_for(generation.owner, generation) == Role.OWNER


class TeamSharePolicy(ObjectPolicy):
    """Shares: rows naming the object itself (here a membership row "shares" a team), with a role translation."""

    roles = ("viewer", "commenter", "editor", "owner")
    actions = {"read": "viewer", "comment": "commenter", "write": "editor", "share": "owner"}
    sources = [authz.RoleSource(TeamMembership, match="team", roles={"viewer": "commenter", "editor": "editor", "owner": "owner"})]


@pytest.fixture
def shares():
    authz.registry.register(Team, TeamSharePolicy)
    yield
    authz.registry.unregister(Team)


def test_shares_and_an_extended_hierarchy(shares, team):
    viewer = member(team, Role.VIEWER)
    assert {a for a in ("read", "comment", "write", "share") if authz.authorize(viewer, team, a)} == {"read", "comment"}
    stranger = baker.make(User, is_active=True)
    assert not authz.authorize(stranger, team, "read")
    share = TeamMembership.objects.create(team=team, user=stranger, role=Role.EDITOR)
    with authz.scope():
        assert authz.authorize(stranger, team, "write")
        share.delete()  # the share is revoked: the same request sees it
        assert not authz.authorize(stranger, team, "read")
    assert not authz.authorize(stranger, team, "read")


# -- query counts -------------------------------------------------------------------------


def test_a_miss_costs_one_query_and_a_hit_none(decisions_only, generation, team, django_assert_num_queries):
    viewer = member(team, Role.VIEWER)
    with authz.scope():
        with django_assert_num_queries(1):
            assert authz.authorize(viewer, generation, "read")
        with django_assert_num_queries(0):
            assert authz.authorize(viewer, generation, "read")
            assert authz.authorize(viewer, generation, "media")  # the miss cached every action
            assert not authz.authorize(viewer, generation, "write")  # denies too
    with authz.scope(), django_assert_num_queries(0):  # a later request: versions from Redis, no query
        assert authz.authorize(viewer, generation, "read")


def test_a_batch_of_uncached_objects_costs_one_query(decisions_only, owner, team, django_assert_num_queries):
    viewer = member(team, Role.VIEWER)
    mine = baker.make(Generation, owner=viewer, team=None, _quantity=10)
    theirs = baker.make(Generation, owner=owner, team=team, _quantity=30)
    hidden = baker.make(Generation, owner=owner, team=None, _quantity=10)
    objs = [*mine, *theirs, *hidden]
    with authz.scope():
        with django_assert_num_queries(1):
            result = authz.authorize_many(viewer, objs, "read")
        assert result == {g.pk: g in mine or g in theirs for g in objs}
        with django_assert_num_queries(0):
            assert authz.authorize_many(viewer, objs, "read") == result
        with django_assert_num_queries(0):
            assert authz.authorize_many(viewer, objs, "write") == {g.pk: g in mine for g in objs}


# -- revokes and grants -------------------------------------------------------------------


def test_every_revoke_path_denies_the_next_check(owner, team):
    other_team = baker.make(Team)
    gen = baker.make(Generation, owner=owner, team=team)
    viewer = member(team, Role.VIEWER)
    editor = member(team, Role.EDITOR)
    newcomer = member(other_team, Role.VIEWER)
    superuser = baker.make(User, is_active=True, is_superuser=True)
    for user in (owner, viewer, editor, superuser):
        assert authz.authorize(user, gen, "read")  # cached allows

    TeamMembership.objects.filter(team=team, user=viewer).get().delete()  # membership removed
    assert not authz.authorize(viewer, gen, "read")

    membership = TeamMembership.objects.get(team=team, user=editor)  # role lowered
    assert authz.authorize(editor, gen, "write")
    membership.role = Role.VIEWER
    membership.save()
    assert not authz.authorize(editor, gen, "write") and authz.authorize(editor, gen, "read")

    gen.owner = editor  # ownership transferred
    gen.save()
    assert not authz.authorize(owner, gen, "read")
    assert authz.authorize(editor, gen, "share")

    assert not authz.authorize(newcomer, gen, "read")
    gen.team = other_team  # team changed: old members out, new members in
    gen.save()
    assert authz.authorize(newcomer, gen, "read")
    assert not authz.authorize(member(team, Role.VIEWER), gen, "read")

    superuser.is_superuser = False  # superuser flag dropped
    superuser.save()
    assert not authz.authorize(superuser, gen, "read")

    editor.is_active = False  # user deactivated (authorize sees the saved flag)
    editor.save()
    assert not authz.authorize(User.objects.get(pk=editor.pk), gen, "read")


def test_deleting_a_team_revokes_its_members(generation, team):
    viewer = member(team, Role.VIEWER)
    assert authz.authorize(viewer, generation, "read")
    team.delete()
    assert not authz.authorize(viewer, generation, "read")


def test_a_grant_is_seen_by_the_granting_request_before_and_after_commit(decisions_only, generation, team):
    user = member(team, Role.VIEWER)
    with authz.scope():
        assert not authz.authorize(user, generation, "write")  # a cached deny
        with transaction.atomic():
            TeamMembership.objects.filter(team=team, user=user).get()
            membership = TeamMembership.objects.get(team=team, user=user)
            membership.role = Role.EDITOR
            membership.save()
            assert authz.authorize(user, generation, "write")  # uncommitted: from the database
        assert authz.authorize(user, generation, "write")  # committed: the new version
        assert caches["default"].get(decisions.decision_key(
            decisions.key_prefix(user.pk, *versions.read_tokens(caches["default"], user.pk)),
            authz.registry.for_model(Generation), generation.pk, "write")) is True


def test_a_rolled_back_revoke_changes_nothing(generation, team):
    viewer = member(team, Role.VIEWER)
    assert authz.authorize(viewer, generation, "read")
    tokens = versions.read_tokens(caches["default"], viewer.pk)
    with pytest.raises(RuntimeError), transaction.atomic():
        TeamMembership.objects.filter(user=viewer).get().delete()
        raise RuntimeError("roll back")
    assert versions.read_tokens(caches["default"], viewer.pk) == tokens
    assert authz.authorize(viewer, generation, "read")


def test_writes_without_signals_are_captured_and_explicit_bumps_still_work(generation, team):
    viewer = member(team, Role.VIEWER)
    assert authz.authorize(viewer, generation, "read")
    TeamMembership.objects.filter(user=viewer).update(role="nobody")  # no signal: write capture bumps
    assert not authz.authorize(viewer, generation, "read")
    authz.invalidate_user(viewer)
    assert not authz.authorize(viewer, generation, "read")
    TeamMembership.objects.filter(user=viewer).update(role=Role.VIEWER)
    authz.invalidate_all()
    assert authz.authorize(viewer, generation, "read")


def test_caching_off_answers_from_the_database(settings, generation, team, django_assert_num_queries):
    settings.VELRO_CACHE = {**settings.VELRO_CACHE, "AUTHZ_CACHE": False}
    viewer = member(team, Role.VIEWER)
    with authz.scope():
        for _ in range(2):
            with django_assert_num_queries(1):
                assert authz.authorize(viewer, generation, "read")


# -- the API, the middleware and the backend -----------------------------------------------


def api_headers(user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {baker.make(ApiToken, user=user).key}"}


def test_api_revoke_then_next_request_403(client, generation, team):
    viewer = member(team, Role.VIEWER)
    headers = api_headers(viewer)
    url = f"/api/generations/{generation.pk}/"
    assert client.get(url, headers=headers).status_code == 200
    assert client.get(url + "media/", headers=headers).status_code == 200
    TeamMembership.objects.filter(user=viewer).get().delete()
    assert client.get(url, headers=headers).status_code == 403
    assert client.get(url + "media/", headers=headers).status_code == 403
    batch = client.get(f"/api/generations/?ids={generation.pk},999999999", headers=headers).json()
    assert batch == {"results": [], "denied": [generation.pk], "missing": [999999999]}


def test_api_patch_needs_editor(client, generation, team):
    viewer = member(team, Role.VIEWER)
    url = f"/api/generations/{generation.pk}/"
    patch = {"data": '{"prompt": "x"}', "content_type": "application/json"}
    assert client.patch(url, headers=api_headers(viewer), **patch).status_code == 403
    TeamMembership.objects.filter(user=viewer).update(role=Role.EDITOR)
    authz.invalidate_user(viewer)
    assert client.patch(url, headers=api_headers(viewer), **patch).status_code == 200


def test_batch_is_one_authorization_query(decisions_only, client, owner, team, django_assert_max_num_queries):
    viewer = member(team, Role.VIEWER)
    gens = baker.make(Generation, owner=owner, team=team, _quantity=20)
    headers = api_headers(viewer)
    url = "/api/generations/?ids=" + ",".join(str(g.pk) for g in gens)
    client.get("/api/me/", headers=headers)  # the token's identity is cached
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert len(client.get(url, headers=headers).json()["results"]) == 20
    authz_queries = [q for q in captured.captured_queries if "_authz_" in q["sql"]]
    assert len(authz_queries) == 1


def test_has_perm_through_the_cached_backend(generation, team, django_assert_num_queries):
    editor = member(team, Role.EDITOR)
    viewer = member(team, Role.VIEWER)
    with authz.scope():
        assert editor.has_perm("studio.change_generation", generation)
        assert editor.has_perm("studio.view_generation", generation)
        assert not editor.has_perm("studio.delete_generation", generation)
        assert not viewer.has_perm("studio.change_generation", generation)
        assert not editor.has_perm("studio.change_team", generation)  # not this object's model
        with django_assert_num_queries(0):
            assert editor.has_perm("studio.change_generation", generation)
    assert not editor.has_perm("studio.change_generation")  # model level: not ours


# -- Redis down ---------------------------------------------------------------------------


def test_redis_down_decides_from_the_database(settings, own_redis, client, generation, team):
    default = settings.CACHES["default"]
    settings.CACHES = {**settings.CACHES, "default": {**default, "LOCATION": own_redis.url(), "KEY_PREFIX": "down"}}
    viewer = member(team, Role.VIEWER)
    headers = api_headers(viewer)
    url = f"/api/generations/{generation.pk}/"
    assert client.get(url, headers=headers).status_code == 200  # allow cached in L1 and Redis
    own_redis.stop()
    try:
        assert client.get(url, headers=headers).status_code == 200
        with authz.scope() as scope:
            context = scope.context_for(viewer)
            assert authz.authorize(viewer, generation, "read") and not context.validated
        TeamMembership.objects.filter(user=viewer).get().delete()  # its bump cannot reach Redis
        for _ in range(3):
            assert client.get(url, headers=headers).status_code == 403
            assert client.get(url + "media/", headers=headers).status_code == 403
        assert client.get(f"/api/generations/?ids={generation.pk}", headers=headers).json()["denied"] == [generation.pk]
    finally:
        own_redis.start()


# -- keys ---------------------------------------------------------------------------------

tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=8, max_size=8)
identities = st.tuples(
    st.integers(min_value=1, max_value=10**12),  # user
    tokens, tokens,  # versions: user, global
    st.sampled_from(["gen", "team", "studio.generation", "a:b", ""]),  # object type
    st.one_of(st.integers(min_value=0, max_value=10**12), st.uuids(), st.text(max_size=20)),  # object id
    st.sampled_from([*ACTIONS, "comment", "read:x", ""]),  # action
)


class _Named:
    def __init__(self, key_name: str) -> None:
        self.key_name = key_name
        self.fingerprint = "f1ngerpr"


def key_of(identity) -> str:
    user, user_token, global_token, kind, pk, action = identity
    return decisions.decision_key(decisions.key_prefix(user, user_token, global_token), _Named(kind), pk, action)


def normalized(identity):
    # 5 and "5" are one id on purpose (ORM int vs URL str): velro_cache.keys
    return tuple(str(part) if isinstance(part, (int, uuid.UUID)) else part for part in identity)


@hsettings(max_examples=400, deadline=None)
@given(identities, identities)
def test_distinct_identities_never_share_a_decision_key(a, b):
    assert (key_of(a) == key_of(b)) == (normalized(a) == normalized(b))
    parse_key(key_of(a))  # a well-formed hierarchical key
    assert key_of(a).startswith(f"auth:user:{a[0]}:v:")


def test_roles_are_part_of_the_versioned_state(generation, team):
    """A role change always changes the key a decision is read under (the user's version)."""
    viewer = member(team, Role.VIEWER)
    before = versions.read_tokens(caches["default"], viewer.pk)
    TeamMembership.objects.filter(user=viewer).update(role=Role.EDITOR)
    TeamMembership.objects.get(user=viewer).save()
    assert versions.read_tokens(caches["default"], viewer.pk) != before


# -- system checks ------------------------------------------------------------------------


def test_checks_report_bad_settings_and_declarations():
    from velro_cache.checks import AUTHZ_MIDDLEWARE, authz_setting_problems
    from velro_cache.conf import parse_settings

    assert [m.id for m in authz_setting_problems(parse_settings({"AUTHZ_CACHE": "yes"}), {}, [])] == ["velro_cache.E040"]
    dummy = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    assert [m.id for m in authz_setting_problems(parse_settings({}), dummy, [AUTHZ_MIDDLEWARE])] == ["velro_cache.W040"]
    assert authz_setting_problems(parse_settings({}), dummy, []) == []

    class Broken(ObjectPolicy):
        owner = "nobody"
        sources = (authz.RoleSource(TeamMembership, match="squad"),)

    problems = Broken(Generation).problems()
    assert len(problems) == 2 and "'nobody'" in problems[0] and "'squad'" in problems[1]
    assert authz.registry.for_model(Generation).problems() == []


def test_a_policy_tightened_in_settings_never_reads_decisions_cached_under_the_old_one(generation, team):
    """A deploy that raises "read" to editors: the viewer's cached allow (in Redis, in L1) is under another key."""
    from studio.permissions import GenerationPolicy

    viewer = member(team, Role.VIEWER)
    assert authz.authorize(viewer, generation, "read")  # cached under the current policy's fingerprint

    class Tightened(GenerationPolicy):
        actions = {**GenerationPolicy.actions, "read": Role.EDITOR}

    original = authz.registry.for_model(Generation)
    authz.registry.unregister(Generation)
    try:
        tightened = authz.registry.register(Generation, Tightened)
        assert tightened.fingerprint != original.fingerprint
        assert not authz.authorize(viewer, generation, "read")
    finally:
        authz.registry.unregister(Generation)
        authz.registry._policies[Generation] = original
    assert authz.authorize(viewer, generation, "read")
