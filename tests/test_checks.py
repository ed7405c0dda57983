"""Misconfiguration surfaces as Django system checks with stable ids, before serving."""

from __future__ import annotations

import pytest
from django.core import checks
from django.test import override_settings

BACKEND = "velro_cache.backends.TieredCache"


def run_checks() -> dict[str, str]:
    return {message.id: message.msg for message in checks.run_checks() if message.id and message.id.startswith("velro_cache.")}


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
        ({"OPTIONS": {"MAXBYTES": 10}}, "velro_cache.W001"),
        ({"OPTIONS": {"L1": {"SIZE": 10}}}, "velro_cache.W001"),
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
        "default": {"BACKEND": BACKEND, "LOCATION": "redis://127.0.0.1:6379/1", "OPTIONS": {"L1": {"MAX_BYTES": 1 << 20, "MAX_AGE": None}}},
        "local": {"BACKEND": BACKEND},
    }
    with override_settings(CACHES=caches):
        assert run_checks() == {}


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


def test_app_settings_merge_over_defaults_and_follow_overrides():
    from velro_cache.conf import settings

    assert settings.TTL["generation"] == 300
    with override_settings(VELRO_CACHE={"TTL": {"generation": 60}}):
        assert settings.TTL["generation"] == 60
        assert settings.TTL["authorization"] == 900
    assert settings.TTL["generation"] == 300
