"""Misconfiguration surfaces as Django system checks with stable ids, before serving.

By concern: cache options, VELRO_CACHE as a whole, TTL and keys, invalidation,
materialized views (more in test_materialized_views), authorization.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.core import checks
from django.test import override_settings

from tests.settings import redis_url
import velro_cache
from velro_cache import authz
from velro_cache.authz.policy import ObjectPolicy
from velro_cache.conf import current_settings
from velro_cache.invalidation import registry

BACKEND = "velro_cache.backends.TieredCache"
AUTHZ_MIDDLEWARE = "velro_cache.authz.middleware.AuthorizationMiddleware"


def run_checks() -> dict[str, str]:
    return {message.id: message.msg for message in checks.run_checks() if message.id and message.id.startswith("velro_cache.")}


# -- cache options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected_id"),
    [
        ({"LOCATION": "memcached://127.0.0.1"}, "velro_cache.E001"),
        ({"LOCATION": 6379}, "velro_cache.E001"),
        ({"OPTIONS": {"L1": "big"}}, "velro_cache.E002"),
        ({"OPTIONS": {"L1": {"MAX_BYTES": 0}}}, "velro_cache.E003"),
        ({"OPTIONS": {"L1": {"MAX_AGE": -5}}}, "velro_cache.E004"),
        ({"OPTIONS": {"COMPRESS_MIN_BYTES": "1k"}}, "velro_cache.E005"),
        ({"OPTIONS": {"POOL_SIZE": 2.5}}, "velro_cache.E006"),
        ({"OPTIONS": {"SOCKET_TIMEOUT": 0}}, "velro_cache.E007"),
        ({"OPTIONS": {"PICKLE_FALLBACK": 1}}, "velro_cache.E008"),
        ({"OPTIONS": {"SIGNING_KEY": ""}}, "velro_cache.E009"),
        ({"OPTIONS": {"LEASE_TIMEOUT": 0}}, "velro_cache.E014"),
        ({"OPTIONS": {"LEASE_WAIT": "2s"}}, "velro_cache.E014"),
        ({"OPTIONS": {"EARLY_REFRESH_BETA": -1}}, "velro_cache.E015"),
        ({"OPTIONS": {"MAXBYTES": 10}}, "velro_cache.E060"),
        ({"OPTIONS": {"L1": {"SIZE": 10}}}, "velro_cache.E060"),
    ],
)
def test_bad_cache_settings_are_reported_with_ids(config, expected_id):
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, "tiered": {"BACKEND": BACKEND, **config}}
    with override_settings(CACHES=caches):
        found = run_checks()
    assert expected_id in found
    assert "CACHES['tiered']" in found[expected_id]


def test_good_cache_settings_pass():
    caches = {
        "default": {"BACKEND": BACKEND, "LOCATION": redis_url(12), "OPTIONS": {"L1": {"MAX_BYTES": 1 << 20, "MAX_AGE": None}}},
        "local": {"BACKEND": BACKEND},
    }
    with override_settings(CACHES=caches):
        assert run_checks() == {}


# -- VELRO_CACHE as a whole, and TTL --------------------------------------------------------------


@pytest.mark.parametrize(
    ("velro_settings", "expected_id"),
    [
        ([], "velro_cache.E012"),
        ({"TTL": [300]}, "velro_cache.E010"),
        ({"TTL": {"generation": 0}}, "velro_cache.E011"),
        ({"TTL": {"session": "10m"}}, "velro_cache.E011"),
        ({"DEFAULT_TTL": -1}, "velro_cache.E013"),
        ({"TTLS": {}}, "velro_cache.W002"),
    ],
)
def test_bad_app_settings_are_reported_with_ids(velro_settings, expected_id):
    with override_settings(VELRO_CACHE=velro_settings):
        assert expected_id in run_checks()


def test_checks_report_exactly_the_problems_the_settings_parse_found():
    """Checks only report: every parse problem once, with its message, and nothing the parse did not find."""
    bad = {
        "TTLS": {},
        "TTL": {"generation": 0},
        "DEFAULT_TTL": 0,
        "KEY_DATA_TYPES": {"g en": "generation", "fd": "feed"},
        "ADAPTIVE_TTL": "yes",
        "TTL_MIN_FACTOR": 2,
        "TTL_JITTER": 1,
        "INVALIDATION": "studio.cache",
        "CACHE_ALIAS": ["default"],
        "VIEW_REFRESH_ON_WRITE": "on",
        "VIEW_REFRESH_DEBOUNCE": -1,
        "VIEW_REFRESH_PERIOD": 0,
        "VIEW_REFRESH_LOG_KEEP": 1.5,
        "AUTHZ_CACHE": "yes",
    }
    with override_settings(VELRO_CACHE=bad):
        parsed = Counter((p.id, p.msg) for p in current_settings().problems)
        reported = Counter((m.id, m.msg) for m in checks.run_checks() if m.id and m.id.startswith("velro_cache."))
    assert reported == parsed
    assert {problem_id for problem_id, _ in parsed} == {
        f"velro_cache.{n}"
        for n in ("W002", "E011", "E013", "E020", "W020", "E021", "E022", "E023", "E024", "E026", "E030", "E031", "E032", "E033", "E040")
    }


# -- TTL and keys, invalidation (moved from test_ttl) --------------------------------------------


def my_check_ids() -> dict[str, str]:
    found = {}
    for message in checks.run_checks():
        if message.id and message.id[len("velro_cache.") + 1:len("velro_cache.") + 3] == "02":
            found[message.id] = message.msg
    return found


@pytest.mark.parametrize(
    ("velro_settings", "expected_id"),
    [
        ({"KEY_DATA_TYPES": ["gen"]}, "velro_cache.E020"),
        ({"KEY_DATA_TYPES": {"g en": "generation"}}, "velro_cache.E020"),
        ({"KEY_DATA_TYPES": {"fd": "feed"}}, "velro_cache.W020"),
        ({"ADAPTIVE_TTL": "yes"}, "velro_cache.E021"),
        ({"TTL_MIN_FACTOR": 2}, "velro_cache.E022"),
        ({"TTL_MAX_FACTOR": 0.5}, "velro_cache.E022"),
        ({"TTL_MIN_FACTOR": "0.5"}, "velro_cache.E022"),
        ({"TTL_JITTER": 0.9}, "velro_cache.E023"),
        ({"TTL_JITTER": -0.1}, "velro_cache.E023"),
        ({"INVALIDATION": "studio.cache"}, "velro_cache.E024"),
        ({"INVALIDATION": ["no_such_module.cache"]}, "velro_cache.E025"),
        ({"CACHE_ALIAS": "nope"}, "velro_cache.E026"),
        ({"CACHE_ALIAS": ["default"]}, "velro_cache.E026"),
    ],
)
def test_bad_policy_settings_are_reported_with_ids(velro_settings, expected_id):
    with override_settings(VELRO_CACHE=velro_settings):
        found = my_check_ids()
    assert expected_id in found, found


def test_good_policy_settings_pass():
    good = {
        "KEY_DATA_TYPES": {"fd": "feed"},
        "TTL": {"feed": 30},
        "ADAPTIVE_TTL": False,
        "TTL_MIN_FACTOR": 1,
        "TTL_MAX_FACTOR": 1,
        "TTL_JITTER": 0,
        "INVALIDATION": ["studio.cache"],
        "CACHE_ALIAS": "default",
    }
    with override_settings(VELRO_CACHE=good):
        assert my_check_ids() == {}


def test_a_declaration_naming_nothing_is_reported():
    from studio.models import Team

    declaration = velro_cache.register(Team, prefixes=["team:{no_such_field}"], fields=["nope"])
    try:
        found = [m.msg for m in checks.run_checks() if m.id == "velro_cache.E027"]
    finally:
        registry.unregister(Team, type(declaration))
    assert len(found) == 2
    assert "{no_such_field}" in found[0] and "'nope'" in found[1]
    assert "velro_cache.E027" not in my_check_ids()


# -- authorization --------------------------------------------------------------------------------


def test_a_bad_authz_cache_setting_is_reported():
    with override_settings(VELRO_CACHE={"AUTHZ_CACHE": "yes"}):
        found = run_checks()
    assert "velro_cache.E040" in found and "'yes'" in found["velro_cache.E040"]


def test_authorization_cached_on_a_cache_that_cannot_hold_versions_is_warned_about():
    caches = {
        "default": {"BACKEND": BACKEND, "LOCATION": redis_url(12)},
        "plain": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
    }
    with override_settings(CACHES=caches, VELRO_CACHE={"CACHE_ALIAS": "plain"}, MIDDLEWARE=[AUTHZ_MIDDLEWARE]):
        assert "velro_cache.W040" in run_checks()
    with override_settings(CACHES=caches, VELRO_CACHE={"CACHE_ALIAS": "plain", "AUTHZ_CACHE": False}, MIDDLEWARE=[AUTHZ_MIDDLEWARE]):
        assert "velro_cache.W040" not in run_checks()
    with override_settings(CACHES=caches, VELRO_CACHE={"CACHE_ALIAS": "default"}, MIDDLEWARE=[AUTHZ_MIDDLEWARE]):
        assert "velro_cache.W040" not in run_checks()


def test_a_policy_naming_a_missing_field_is_reported(monkeypatch):
    from studio.models import Team, TeamMembership

    class Broken(ObjectPolicy):
        owner = "nobody"
        sources = (authz.RoleSource(TeamMembership, match="squad"),)

    # Registering wires invalidation, which would fail on the missing fields
    # first; the check is what reports them when that wiring is not reached.
    monkeypatch.setattr(authz.registry, "on_register", [])
    authz.registry.register(Team, Broken)
    try:
        found = [m for m in checks.run_checks() if m.id == "velro_cache.E041"]
    finally:
        authz.registry.unregister(Team)
    assert len(found) == 2 and all(m.obj is Team for m in found)
    assert "'nobody'" in found[0].msg and "'squad'" in found[1].msg
    assert "velro_cache.E041" not in run_checks()
