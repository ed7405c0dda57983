"""The declaration API: templates, registration, what a change retires, namespace levels,
loading from settings, and when a write retires (on commit, also under Django's TestCase)."""

from __future__ import annotations

from contextlib import suppress

import pytest
from django.contrib.auth.models import User
from django.db import models, transaction
from django.test import override_settings
from model_bakery import baker

import velro_cache
from studio.models import Generation, Role, Team, TeamMembership
from studio.reads import generation_meta
from velro_cache.invalidation import AlreadyRegistered, ModelCache, NotRegistered, load_declarations, registry
from velro_cache.invalidation.declarations import Template
from velro_cache.namespaces import levels

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _isolated(own_cache):
    """A default cache of this test's own (conftest.own_cache)."""


def test_templates_are_literal_parts_and_whole_placeholders():
    template = Template("auth:user:{user_id}:gen:{pk}", "prefix")
    assert template.names == ("user_id", "pk")
    assert str(template.pattern()) == "auth:user:*:gen:*"
    with pytest.raises(ValueError, match="either literal"):
        Template("team:t{pk}", "prefix")
    with pytest.raises(ValueError, match="literal"):
        Template("{kind}:1", "prefix")


def test_register_forms_admin_style():
    class ProbeCache(ModelCache):
        prefixes = ["probe:{pk}"]

    assert velro_cache.register(Team)(ProbeCache) is ProbeCache  # as a decorator
    try:
        with pytest.raises(AlreadyRegistered):
            velro_cache.register(Team, ProbeCache)
        by_keywords = velro_cache.register(Team, tags=["probe-tag:{pk}"])
        assert {type(d) for d in registry.declarations_for(Team)} >= {ProbeCache, type(by_keywords)}
        registry.unregister(Team, type(by_keywords))
    finally:
        registry.unregister(Team, ProbeCache)
    with pytest.raises(NotRegistered):
        registry.unregister(Team, ProbeCache)
    with pytest.raises(TypeError):
        velro_cache.register(Team, dict)


def test_a_change_retires_its_declared_namespaces_with_relations_expanded():
    team = baker.make(Team)
    members = [baker.make(TeamMembership, team=team, role=Role.VIEWER).user_id for _ in range(2)]
    detached = baker.make(Generation, team=None)
    retirement = velro_cache.invalidate(team)
    for user_id in members:
        assert {f"team_membership:user:{user_id}", f"session:user:{user_id}"} <= retirement.namespaces
    assert f"team:{team.pk}" in retirement.namespaces
    assert velro_cache.invalidate(detached).namespaces == {f"generation:{detached.pk}"}  # no team: no team tag


def test_a_changed_foreign_key_retires_the_old_value_too():
    first, second = baker.make(Team), baker.make(Team)
    baker.make(Generation, team=first)
    loaded = Generation.objects.get(team=first)
    loaded.team = second
    retirement = velro_cache.invalidate(loaded)  # e.g. after writing it with raw SQL
    assert {f"team:{first.pk}", f"team:{second.pk}"} <= retirement.namespaces


def test_declared_prefixes_and_keys_become_namespace_levels():
    assert levels.namespaces_of("generation:5:meta") == ("generation", "generation:5")
    assert levels.namespaces_of("session:user:7:me") == ("session", "session:user:7")
    assert levels.namespaces_of("system_config:banner") == ("system_config", "system_config:banner")
    assert levels.namespaces_of("system_config:banner:extra") == ("system_config",)  # keys are exact
    assert levels.namespaces_of("undeclared:1:x") == ("undeclared",)  # the data type always
    assert levels.is_level("auth") and levels.is_level("generation:9") and not levels.is_level("generation:9:meta")


def test_declaration_modules_load_from_settings():
    with override_settings(VELRO_CACHE={"INVALIDATION": ["tests.declared_in_settings", "tests.no_such_module"]}):
        assert load_declarations() == ["tests.declared_in_settings"]
    assert levels.namespaces_of("fromsettings:3:x") == ("fromsettings", "fromsettings:3")


def test_importing_velro_cache_does_not_import_the_orm():
    import subprocess
    import sys

    code = "import sys, velro_cache; assert 'django.db.models' not in sys.modules; velro_cache.build_key"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# -- when a write retires: on commit, also in tests ---------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_write_outside_any_atomic_retires_at_once(django_assert_num_queries):
    generation = baker.make(Generation, prompt="first")
    assert generation_meta(generation.pk)["prompt"] == "first"
    generation.prompt = "second"
    generation.save()
    with django_assert_num_queries(1):
        assert generation_meta(generation.pk)["prompt"] == "second"
    with django_assert_num_queries(0):
        assert generation_meta(generation.pk)["prompt"] == "second"


@pytest.mark.django_db(transaction=True)
def test_a_committed_block_retires_on_commit_and_reads_its_own_writes_before(django_assert_num_queries):
    generation = baker.make(Generation, prompt="first")
    assert generation_meta(generation.pk)["prompt"] == "first"
    with transaction.atomic():
        generation.prompt = "second"
        generation.save()
        with django_assert_num_queries(1):
            assert generation_meta(generation.pk)["prompt"] == "second"  # dirty: from the database
    with django_assert_num_queries(1):
        assert generation_meta(generation.pk)["prompt"] == "second"
    with django_assert_num_queries(0):
        assert generation_meta(generation.pk)["prompt"] == "second"


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_block_retires_nothing(django_assert_num_queries):
    generation = baker.make(Generation, prompt="first")
    assert generation_meta(generation.pk)["prompt"] == "first"
    with suppress(ZeroDivisionError), transaction.atomic():
        Generation.objects.filter(pk=generation.pk).update(prompt="never")
        velro_cache.invalidate(generation)
        1 / 0
    with django_assert_num_queries(0):
        assert generation_meta(generation.pk)["prompt"] == "first"


def test_under_a_test_case_transaction_retirements_wait_for_its_on_commit_callbacks(
    django_capture_on_commit_callbacks, django_assert_num_queries
):
    """TestCase never commits: nothing is retired by velro-cache's own guess; Django's public hook runs them."""
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        generation = baker.make(Generation, prompt="first")
    assert callbacks
    assert generation_meta(generation.pk)["prompt"] == "first"
    with django_capture_on_commit_callbacks(execute=False) as held:
        generation.prompt = "second"
        generation.save()
        with django_assert_num_queries(1):
            assert generation_meta(generation.pk)["prompt"] == "second"  # dirty until the callbacks run
    assert held
    for callback in held:
        callback()
    with django_assert_num_queries(1):
        assert generation_meta(generation.pk)["prompt"] == "second"
    with django_assert_num_queries(0):
        assert generation_meta(generation.pk)["prompt"] == "second"


def test_the_checks_accept_the_example_declarations():
    assert all(declaration.problems() == [] for declaration in registry.declarations())
    assert {Generation, TeamMembership, Team, User} <= set(registry.models())
    assert all(issubclass(model, models.Model) for model in registry.models())


@pytest.mark.django_db(transaction=True)
def test_keys_of_a_declared_key_template_are_also_deleted_as_plain_keys(own_cache):
    from studio.models import SystemConfig

    own_cache.set("system_config:banner", "plain value")
    SystemConfig.objects.create(key="banner", value="hello")
    assert own_cache.get("system_config:banner") is None




def test_invalidating_a_model_without_declarations_raises_not_registered():
    from django.contrib.auth.models import Permission

    assert Permission not in registry.models()
    with pytest.raises(NotRegistered, match="has no cache declarations"):
        velro_cache.invalidate(Permission)
    assert issubclass(NotRegistered, LookupError)  # what callers caught before
