"""django-redis's extension API on TieredCache (velro_cache/redis_api.py): what the suite cannot see.

django-redis's own suite (test_django_redis_suite.py) checks the return values
in one process. Here: every process's L1 follows expiry changes, pattern
deletes and lock releases; scans use SCAN and never KEYS; a key prefix with
glob characters matches only itself; L1-only mode; and Redis down (a real
redis-server of the test's own, killed).
"""

from __future__ import annotations

import time

import pytest

from tests.support import behind, eventually, is_cluster
from velro_cache.exceptions import L2Required, L2Unavailable
from velro_cache.redis_api import get_redis_connection, glob_regex

pytestmark = pytest.mark.django_db(databases=[])


def in_l1(cache, key) -> bool:
    return cache.make_key(key) in cache._l1


# -- every process's L1 follows ---------------------------------------------------------
def test_expire_shortens_the_ttl_of_every_processs_l1_copy(l2_cache, make_cache):
    other = make_cache(like=l2_cache)
    l2_cache.set("k", "v", timeout=300)
    assert eventually(lambda: other.get("k") == "v" and in_l1(other, "k"))  # promoted for 300 s, once its channel is up
    assert l2_cache.expire("k", 1) is True
    assert eventually(lambda: not in_l1(other, "k"))  # dropped, not left to live 300 s
    assert 0 < other.pttl("k") <= 1000
    time.sleep(1.2)
    assert other.get("k") is None and l2_cache.get("k") is None


def test_persist_and_expire_at_change_what_every_process_reads(l2_cache, make_cache):
    other = make_cache(like=l2_cache)
    l2_cache.set("k", "v", timeout=1)
    assert other.get("k") == "v"
    assert l2_cache.persist("k") is True
    assert l2_cache.persist("k") is False  # no TTL left to remove, as Redis's PERSIST
    assert other.ttl("k") is None
    time.sleep(1.2)
    # eventually: a read that timed out on a loaded machine is a miss; an expired value never comes back.
    assert eventually(lambda: other.get("k") == "v")
    assert l2_cache.expire_at("k", time.time() - 1) is True  # in the past: deleted
    assert eventually(lambda: other.get("k") is None)
    assert l2_cache.expire_at("k", time.time() + 60) is False


def test_delete_pattern_retires_matching_l1_copies_everywhere(l2_cache, make_cache):
    other = make_cache(like=l2_cache)
    names = [f"foo-a{n}" for n in range(25)] + ["foo-b1", "bar-a1"]
    l2_cache.set_many({name: name for name in names})
    assert eventually(lambda: other.get_many(names) == {name: name for name in names} and all(in_l1(other, name) for name in names))
    assert l2_cache.delete_pattern("foo-a*", itersize=10) == 25  # three SCAN batches
    assert eventually(lambda: not any(in_l1(other, f"foo-a{n}") for n in range(25)))
    assert other.get_many(names) == {"foo-b1": "foo-b1", "bar-a1": "bar-a1"}
    assert l2_cache.delete_pattern("foo-a*") == 0


def test_scans_use_scan_never_keys(private_redis, tiered_on):
    cache = tiered_on(private_redis.url(5), prefix="scan-only")
    raw = private_redis.client(5)
    raw.config_resetstat()
    cache.set_many({"x1": 1, "x2": 2, "y1": 3})
    assert sorted(cache.keys("x*")) == ["x1", "x2"]
    assert sorted(cache.iter_keys("*1", itersize=1)) == ["x1", "y1"]
    assert cache.delete_pattern("x*") == 2
    stats = raw.info("commandstats")
    assert "cmdstat_keys" not in stats and stats["cmdstat_scan"]["calls"] >= 3


def test_a_prefix_with_glob_characters_matches_only_itself(make_cache):
    starred = make_cache(KEY_PREFIX="a*b")
    plain = make_cache(like=starred, KEY_PREFIX="aXb")
    starred.set("k", 1)
    plain.set("k", 2)
    assert starred.keys("*") == ["k"]
    assert starred.delete_pattern("*") == 1
    assert plain.get("k") == 2
    plain.clear()


def test_versions_are_part_of_the_pattern(l2_cache):
    l2_cache.set("k", 1, version=1)
    l2_cache.set("k", 2, version=2)
    assert l2_cache.keys("k", version=2) == ["k"]
    assert l2_cache.delete_pattern("k", version=2) == 1
    assert l2_cache.get("k", version=1) == 1 and l2_cache.get("k", version=2) is None


# -- lock, set(nx=True), incr(ignore_key_check=True) ----------------------------------------
def test_a_lock_excludes_other_processes_and_its_release_reaches_their_l1(l2_cache, make_cache):
    other = make_cache(like=l2_cache)
    held = l2_cache.lock("job", timeout=30)
    assert held.acquire(blocking=False)
    assert not other.lock("job").acquire(blocking=False)
    assert eventually(lambda: other.get("job") is not None and in_l1(other, "job"))  # the token, in other's L1
    assert other.has_key("job")
    held.release()
    assert eventually(lambda: not other.has_key("job"))
    assert other.lock("job").acquire(blocking=False)


def test_a_lock_that_times_out_takes_other_processes_l1_copies_with_it(l2_cache, make_cache):
    other = make_cache(like=l2_cache)
    assert l2_cache.lock("job", timeout=1).acquire(blocking=False)
    assert eventually(lambda: other.get("job") is not None and in_l1(other, "job"))
    time.sleep(1.2)  # never released: Redis expires the lock
    assert not other.has_key("job") and other.get("job") is None
    assert other.lock("job").acquire(blocking=False)


def test_set_nx_is_add_across_processes(cache, make_cache):
    assert cache.set("k", 1, nx=True) is True
    assert cache.set("k", 2, nx=True) is False
    assert cache.set("k", 3, timeout=-1, nx=True) is False  # does not delete the value in place
    assert cache.get("k") == 1
    if cache.has_l2:
        assert make_cache(like=cache).set("k", 4, nx=True) is False


def test_incr_ignore_key_check_creates_the_counter_in_every_mode(cache):
    assert cache.incr("n", 5, ignore_key_check=True) == 5
    assert cache.incr("n", 2**63, ignore_key_check=True) == 2**63 + 5
    assert cache.decr("n", 2**63) == 5
    # INCRBY's way: a created counter never expires (L1 alone keeps nothing past its MAX_AGE, and says so).
    assert cache.ttl("n") == (None if cache.has_l2 else cache.options.l1_max_age)
    with pytest.raises(ValueError):
        cache.incr("missing")


# -- the raw client -------------------------------------------------------------------------------
def test_the_raw_client_is_the_caches_redis(l2_cache, settings):
    l2_cache.set("k", "v")
    raw = l2_cache.client.get_client()
    assert raw.exists(l2_cache.make_key("k")) == 1
    assert l2_cache.get_client(write=False).ttl(l2_cache.make_key("k")) > 0
    l2_cache.close()  # after every request: connections kept
    l2_cache.client.disconnect()  # for real: the next call reconnects
    assert l2_cache.get("k") == "v" and l2_cache.set("k2", "v2") is None and behind(l2_cache).exists(l2_cache.make_key("k2"))
    if not is_cluster(l2_cache):
        settings.CACHES = {**settings.CACHES, "default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": l2_cache._l2.url}}
        assert get_redis_connection("default").ping()
    settings.CACHES = {**settings.CACHES, "plain": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with pytest.raises(TypeError, match="not a TieredCache"):
        get_redis_connection("plain")


def test_a_misconfigured_cache_refuses_the_django_redis_calls_with_the_check_message():
    from django.core.exceptions import ImproperlyConfigured

    from velro_cache.backends import TieredCache

    broken = TieredCache(None, {"OPTIONS": {"POOL_SIZE": "many"}})
    for call in (lambda: broken.ttl("k"), lambda: broken.expire("k", 1), lambda: broken.keys("*"), lambda: broken.lock("k")):
        with pytest.raises(ImproperlyConfigured, match="velro_cache.E006"):
            call()


# -- L1 only ------------------------------------------------------------------------------------
def test_l1_only_acts_on_the_l1_and_refuses_what_needs_redis(make_cache):
    cache = make_cache(l2=False)
    cache.set_many({"foo1": 1, "foo2": 2, "bar": 3}, timeout=100)
    assert 99 <= cache.ttl("foo1") <= 100 and cache.ttl("nothing") == 0
    assert cache.expire("foo1", 1) is True and cache.pttl("foo1") <= 1000
    assert cache.persist("foo1") is True and cache.ttl("foo1") == cache.options.l1_max_age  # L1's own bound
    assert sorted(cache.keys("foo?")) == ["foo1", "foo2"]
    assert cache.delete_pattern("foo[^1]") == 1 and cache.get("foo2") is None
    with pytest.raises(L2Required):
        cache.lock("k")
    with pytest.raises(L2Required):
        cache.client.get_client()


@pytest.mark.parametrize(
    ("glob", "matches", "misses"),
    [
        ("a*", ["a", "abc"], ["ba"]),
        ("h?llo", ["hello", "hallo"], ["hllo"]),
        ("h[ae]llo", ["hello", "hallo"], ["hillo"]),
        ("h[^e]llo", ["hallo"], ["hello"]),
        ("h[a-b]llo", ["hallo", "hbllo"], ["hcllo"]),
        (r"a\*", ["a*"], ["ab"]),
    ],
)
def test_the_l1_only_scan_reads_globs_as_redis_does(glob, matches, misses):
    pattern = glob_regex(glob)
    assert all(pattern.fullmatch(text) for text in matches)
    assert not any(pattern.fullmatch(text) for text in misses)


# -- Redis down ------------------------------------------------------------------------------------
def test_with_redis_down_expiry_calls_answer_and_scans_raise(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    cache.set("k", "v", timeout=100)
    own_redis.stop()
    assert cache.ttl("k") == 0 and cache.pttl("k") == 0  # as get: a miss
    assert cache.expire("k", 5) is False and cache.persist("k") is False
    with pytest.raises(L2Unavailable):
        cache.keys("*")
    with pytest.raises(ValueError):
        cache.incr("n", ignore_key_check=True)


def test_a_delete_pattern_during_an_outage_clears_the_prefix_when_redis_answers(own_redis, tiered_on):
    url = own_redis.url()
    writer, reader = tiered_on(url), tiered_on(url)
    writer.set_many({"foo-1": 1, "bar-1": 2})
    assert reader.get("foo-1") == 1
    own_redis.pause()
    try:
        assert writer.delete_pattern("foo-*") == 0  # which keys match cannot be known now
    finally:
        own_redis.resume()
    raw = own_redis.client()
    assert eventually(lambda: raw.get("fault:1:foo-1") is None, limit=8)  # more deleted than asked: safe
    assert eventually(lambda: reader.get("foo-1", "gone") == "gone", limit=8)
