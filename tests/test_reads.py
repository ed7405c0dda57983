"""The read API (velro_cache.reads): @cached, one meaning per timeout, per-key TTLs in batches, read_view."""

from __future__ import annotations

import pytest
from django.core.cache import caches

import velro_cache
from velro_cache.db.reads import read_view, view_key
from velro_cache.namespaces import current_tokens, levels, stamp
from velro_cache.reads import cached, cached_read, cached_read_many
from velro_cache.ttl import ttl_for

pytestmark = pytest.mark.django_db(databases=[])


def physical_key(cache, logical: str) -> str:
    """Where a cached read of ``logical`` is stored in Redis now."""
    return cache.make_key(stamp(logical, current_tokens(cache, levels.namespaces_of(logical))))


def seconds_left(cache, logical: str) -> float:
    """Redis's TTL of the stored read (-1: none, -2: not stored)."""
    millis = cache._l2.client.pttl(physical_key(cache, logical))
    return millis / 1000 if millis >= 0 else millis


@pytest.fixture
def ttl_settings(settings):
    settings.VELRO_CACHE = {
        **settings.VELRO_CACHE,
        "TTL": {"generation": 100, "system_config": 2000},
        "DEFAULT_TTL": 50,
        "ADAPTIVE_TTL": False,
        "TTL_JITTER": 0.1,
    }


# -- @cached -----------------------------------------------------------------------------------


def test_cached_decorator():
    calls = []

    @cached(timeout=60, cache="l1only")
    def profile(user_id: int) -> dict:
        calls.append(user_id)
        return {"id": user_id}

    try:
        assert profile(1) == {"id": 1} and profile(1) == {"id": 1} and profile(2) == {"id": 2}
        assert calls == [1, 2]
        profile.invalidate(1)
        assert profile(1) == {"id": 1} and calls == [1, 2, 1]
        assert profile.key_for(1).startswith("fn:tests.test_reads:")
    finally:
        caches["l1only"].clear()


def test_cached_results_are_retired_by_namespace_invalidation(make_cache):
    cache = make_cache()
    calls = []

    @cached(key=lambda gen_id: ("generation", gen_id, "summary"), cache=cache)
    def summary(gen_id: int) -> str:
        calls.append(gen_id)
        return f"summary {gen_id} #{len(calls)}"

    @cached(cache=cache, tags=lambda team_id: [("team", team_id)])
    def roster(team_id: int) -> str:
        calls.append(team_id)
        return f"roster {team_id} #{len(calls)}"

    assert summary(7) == summary(7) == "summary 7 #1"
    velro_cache.invalidate(prefixes=[("generation", 7)], cache=cache)  # what a Generation save retires
    assert summary(7) == "summary 7 #2"
    assert roster(3) == roster(3) == "roster 3 #3"
    velro_cache.invalidate(tags=[("team", 3)], cache=cache)
    assert roster(3) == "roster 3 #4"
    velro_cache.invalidate(data_types="fn", cache=cache)  # every default-keyed @cached result
    assert roster(3) == "roster 3 #5" and summary(7) == "summary 7 #2"


# -- timeout: DEFAULT_TIMEOUT = the data-type TTL (ttl_for), None = never expire, a number = seconds ---------------


def test_ttl_for_is_always_seconds(ttl_settings):
    assert 90 <= ttl_for("generation:1:meta") <= 110
    assert ttl_for("unknown:1") == 50  # DEFAULT_TTL when no data type applies


def test_cached_read_timeouts_mean_what_they_mean_in_django(ttl_settings, make_cache):
    cache = make_cache()
    cached_read("unknown:policy", lambda: "v", cache=cache)
    assert 49 <= seconds_left(cache, "unknown:policy") <= 50  # DEFAULT_TTL
    cached_read("generation:1:meta", lambda: "v", cache=cache)
    assert 89 <= seconds_left(cache, "generation:1:meta") <= 110  # the data type's TTL
    cached_read("generation:2:meta", lambda: "v", timeout=None, cache=cache)
    assert seconds_left(cache, "generation:2:meta") == -1  # never expires
    cached_read("generation:3:meta", lambda: "v", timeout=7, cache=cache)
    assert 6 <= seconds_left(cache, "generation:3:meta") <= 7
    calls = []
    assert cached_read("generation:4:meta", lambda: calls.append(1) or "v", timeout=0, cache=cache) == "v"
    assert cached_read("generation:4:meta", lambda: calls.append(1) or "v", timeout=0, cache=cache) == "v"
    assert calls == [1, 1] and seconds_left(cache, "generation:4:meta") == -2  # 0: not stored


def test_a_batch_stores_each_key_with_its_own_data_types_ttl(ttl_settings, make_cache):
    cache = make_cache()
    keys = {
        **{("gen", pk): f"generation:{pk}:meta" for pk in range(8)},
        **{("config", pk): f"system_config:k{pk}" for pk in range(8)},
        **{("other", pk): f"unknown:{pk}" for pk in range(8)},
    }
    result = cached_read_many(keys, lambda wanted: {item: f"value {item}" for item in wanted}, cache=cache)
    assert result == {item: f"value {item}" for item in keys}
    left = {kind: [seconds_left(cache, key) for (k, _), key in keys.items() if k == kind] for kind in ("gen", "config", "other")}
    assert all(89 <= seconds <= 110 for seconds in left["gen"]), left
    assert all(1790 <= seconds <= 2200 for seconds in left["config"]), left
    assert all(49 <= seconds <= 50 for seconds in left["other"]), left
    assert len({round(seconds, 1) for seconds in left["gen"]}) > 1, left  # jitter-spread: not all expire at once
    assert cached_read_many(keys, lambda wanted: pytest.fail(f"reloaded {wanted}"), cache=cache) == result


def test_a_batch_with_an_explicit_timeout_stores_every_key_with_it(ttl_settings, make_cache):
    cache = make_cache()
    keys = {pk: f"generation:{pk}:meta" for pk in range(4)} | {10: "system_config:x"}
    cached_read_many(keys, lambda wanted: dict.fromkeys(wanted, "v"), timeout=30, cache=cache)
    assert all(29 <= seconds_left(cache, key) <= 30 for key in keys.values())


# -- read_view ------------------------------------------------------------------------------------


def test_view_keys_are_built_keys_so_parts_never_collide(make_cache):
    cache = make_cache(l2=False)
    assert view_key("some_view", "a:b") != view_key("some_view", "a", "b")
    assert read_view("some_view", ("a:b",), lambda: "one part", cache=cache) == "one part"
    assert read_view("some_view", ("a", "b"), lambda: "two parts", cache=cache) == "two parts"
    assert read_view("some_view", ("a:b",), lambda: "reloaded", cache=cache) == "one part"


def test_read_view_reads_through_the_configured_alias(settings):
    settings.VELRO_CACHE = {**settings.VELRO_CACHE, "CACHE_ALIAS": "l1only"}
    try:
        assert read_view("some_view", "aliased", lambda: "from the view") == "from the view"
        assert read_view("some_view", "aliased", lambda: "reloaded", cache="l1only") == "from the view"
        assert read_view("some_view", "aliased", lambda: "default cache", cache="default") == "default cache"
    finally:
        caches["l1only"].clear()
        caches["default"].clear()
