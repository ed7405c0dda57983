"""`manage.py velro_invalidate`: by model, instance, prefix, tag, key and data type."""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from model_bakery import baker

from studio.models import Generation, Team
from studio.reads import generation_meta

pytestmark = pytest.mark.django_db(transaction=True)  # the command retires on a real commit


@pytest.fixture(autouse=True)
def _isolated(own_cache):
    """A default cache of this test's own (conftest.own_cache)."""


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("velro_invalidate", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def behind_the_apps_back(sql: str, params: list) -> None:
    """A write on a DB-API connection of its own, as psql would make it: Django's write capture never sees it."""
    raw = connection.get_new_connection(connection.get_connection_params())
    try:
        cursor = raw.cursor()
        cursor.execute(sql.replace("%s", "?") if connection.vendor == "sqlite" else sql, params)
        raw.commit()
    finally:
        raw.close()


@pytest.fixture
def stale_generation():
    """A generation whose row changed behind the app's back: the cache still has the old prompt."""
    team = baker.make(Team)
    generation = baker.make(Generation, prompt="first", team=team)
    assert generation_meta(generation.pk)["prompt"] == "first"
    behind_the_apps_back("UPDATE studio_generation SET prompt = %s WHERE id = %s", ["changed in psql", generation.pk])
    assert generation_meta(generation.pk)["prompt"] == "first"
    return generation


def test_by_instance(stale_generation):
    out, _ = run("--model", "studio.Generation", "--pk", str(stale_generation.pk))
    assert "Retired 2 namespaces:" in out
    assert f"  generation:{stale_generation.pk}\n" in out and f"  team:{stale_generation.team_id}\n" in out
    assert generation_meta(stale_generation.pk)["prompt"] == "changed in psql"


def test_by_model(stale_generation):
    out, _ = run("--model", "studio.Generation")
    assert "Retired 2 namespaces:\n  generation\n  team\n" in out
    assert generation_meta(stale_generation.pk)["prompt"] == "changed in psql"


def test_by_prefix(stale_generation):
    out, err = run("--prefix", f"generation:{stale_generation.pk}")
    assert out == f"Retired 1 namespace:\n  generation:{stale_generation.pk}\n" and err == ""
    assert generation_meta(stale_generation.pk)["prompt"] == "changed in psql"


def test_a_prefix_that_is_no_level_is_retired_with_a_note(stale_generation):
    out, err = run("--prefix", f"generation:{stale_generation.pk}:meta")
    assert "Retired 1 namespace" in out
    assert "not a declared prefix level" in err and "generation:*" in err
    assert generation_meta(stale_generation.pk)["prompt"] == "first"  # as the note says


def test_by_data_type(stale_generation):
    out, _ = run("--data-type", "generation")
    assert "  gen\n" in out and "  generation\n" in out
    assert generation_meta(stale_generation.pk)["prompt"] == "changed in psql"


def test_by_tag_and_key(own_cache):
    own_cache.set("system_config:banner", "old")
    out, _ = run("--tag", "team:3", "--key", "system_config:banner")
    assert "  team:3\n" in out and "Deleted 1 plain key:\n  system_config:banner\n" in out
    assert own_cache.get("system_config:banner") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Say what to invalidate"),
        (("--pk", "1"), "--pk needs --model"),
        (("--model", "studio.Nope"), "Unknown model"),
        (("--model", "contenttypes.ContentType"), "no cache declarations"),
        (("--model", "studio.Generation", "--pk", "999999"), "No studio.Generation with pk 999999"),
        (("--prefix", "bad key"), "not a key made by"),
    ],
)
def test_mistakes_are_clear_errors(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_an_unknown_cache_alias_is_a_clear_error_naming_the_known_ones(settings):
    with pytest.raises(CommandError, match=r"Unknown cache alias 'nosuch'; CACHES defines: .*'default'") as raised:
        run("--cache", "nosuch", "--key", "system_config:banner")
    assert all(repr(alias) in str(raised.value) for alias in settings.CACHES)


@pytest.fixture
def l1_only_cache(settings):
    """An alias with no LOCATION: a TieredCache whose data lives in this process only."""
    from django.core.cache import caches

    settings.CACHES = {
        **settings.CACHES,
        "l1_only": {"BACKEND": "velro_cache.backends.TieredCache", "KEY_PREFIX": f"l1-{uuid.uuid4().hex[:8]}"},
    }
    yield caches["l1_only"]
    caches["l1_only"].clear()


def test_an_l1_only_cache_warns_that_other_processes_are_not_reached(l1_only_cache):
    l1_only_cache.set("system_config:banner", "old")
    out, err = run("--cache", "l1_only", "--key", "system_config:banner")
    assert "Retired 1 namespace:\n  system_config:banner\n" in out
    assert "Deleted 1 plain key:\n  system_config:banner\n" in out
    assert "'l1_only' has no L2" in err and "other processes' L1 are not reached without L2" in err
    assert l1_only_cache.get("system_config:banner") is None  # this process's own L1 was retired


def test_a_cache_with_l2_gives_no_process_warning(own_cache):
    own_cache.set("system_config:banner", "old")
    _, err = run("--key", "system_config:banner")
    assert err == ""
