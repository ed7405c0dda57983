"""django-redis's set, hash and sorted-set helpers on TieredCache (velro_cache/redis_collections.py): what the suite cannot see.

django-redis's suite (test_django_redis_suite.py) checks the return values of
one cache. Here: members are authenticated (bytes nobody signed are skipped and
counted, never unpickled; SECRET_KEY_FALLBACKS honoured) and encode the same in
every process; no helper touches the L1, and a ``*store`` that overwrites a
cached value retires it from every process's L1; on a cluster the multi-key
calls work on keys of one slot and of many; Redis down (a real redis-server of
the test's own, stopped) raises ``L2Unavailable``; L1 only raises ``L2Required``.
"""

from __future__ import annotations

import pickle
import time

import pytest
import redis

from tests.support import behind, eventually, is_cluster
from velro_cache.exceptions import L2Required, L2Unavailable

pytestmark = pytest.mark.django_db(databases=[])

UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    """What a forged pickle in a set would run if a member were unpickled unverified."""
    UNPICKLED.append("ran")
    return "forged"


class Forged:
    def __reduce__(self):
        return (_record_unpickling, ())


# -- members are authenticated ----------------------------------------------------------------
def test_members_nobody_signed_are_skipped_counted_and_never_unpickled(l2_cache):
    l2_cache.sadd("s", "good", 7)
    l2_cache.zadd("z", {"good": 1.0})
    raw, full_s, full_z = behind(l2_cache), l2_cache.make_key("s"), l2_cache.make_key("z")
    raw.sadd(full_s, pickle.dumps(Forged()), b"plain text", b"007")  # django-redis's own bytes, junk, a sloppy int
    raw.zadd(full_z, {pickle.dumps(Forged()): 0.5})
    before = l2_cache.stats()["totals"]["corrupt"]
    assert l2_cache.smembers("s") == {"good", 7}
    assert l2_cache.zrange("z", 0, -1, withscores=True) == [("good", 1.0)]
    assert UNPICKLED == []
    assert l2_cache.stats()["totals"]["corrupt"] - before >= 4
    assert l2_cache.scard("s") == 5  # left in place: Redis's count is Redis's


def test_a_member_frame_is_signed_for_members_not_for_a_key(l2_cache):
    """The same bytes whichever key holds them, so SINTER and SMOVE compare and carry them as Redis does."""
    l2_cache.sadd("{t}a", ("tuple", 1), 2.5, "text")
    l2_cache.sadd("{t}b", ("tuple", 1), 2.5)
    raw = behind(l2_cache)
    assert raw.smembers(l2_cache.make_key("{t}a")) > raw.smembers(l2_cache.make_key("{t}b"))
    assert l2_cache.sinter("{t}a", "{t}b") == {("tuple", 1), 2.5}
    assert l2_cache.smove("{t}a", "other", "text") is True
    assert l2_cache.smembers("other") == {"text"}


def test_another_process_finds_and_removes_the_members_this_one_wrote(l2_cache, make_cache):
    other = make_cache(like=l2_cache)
    l2_cache.sadd("s", ("a", 1), 2**70, 5, b"bytes")
    l2_cache.zadd("z", {("a", 1): 3.0})
    assert other.smismember("s", ("a", 1), 2**70, 5, b"bytes", "absent") == [True, True, True, True, False]
    assert other.zscore("z", ("a", 1)) == 3.0
    assert other.srem("s", ("a", 1), 2**70) == 2 and other.zrem("z", ("a", 1)) == 1
    assert l2_cache.smembers("s") == {5, b"bytes"}


def test_members_signed_with_a_fallback_key_read_after_a_rotation(make_cache):
    old = make_cache(options={"SIGNING_KEY": "old-secret"})
    rotated = make_cache(like=old, options={"SIGNING_KEY": "new-secret", "SIGNING_KEY_FALLBACKS": ["old-secret"]})
    stranger = make_cache(like=old, options={"SIGNING_KEY": "another-secret"})
    old.sadd("s", "written-before")
    rotated.sadd("s", "written-after")
    assert rotated.smembers("s") == {"written-before", "written-after"}
    assert old.smembers("s") == {"written-before"}  # the new key is not one it knows
    assert stranger.smembers("s") == set()


def test_sscan_matches_decoded_members(l2_cache):
    l2_cache.sadd("s", "bar1", "bar2", "zoo", 10, 20, ("bar", 3))
    assert set(l2_cache.sscan_iter("s", match="bar*", count=1)) == {"bar1", "bar2"}
    assert l2_cache.sscan("s", match="[12]0") == {10, 20}


# -- the L1 ------------------------------------------------------------------------------------------
def test_helpers_never_put_anything_in_l1(l2_cache):
    l2_cache.sadd("s", "m")
    l2_cache.hset("h", "f", "v")
    l2_cache.zadd("z", {"m": 1.0})
    assert l2_cache.smembers("s") == {"m"} and l2_cache.hkeys("h") == ["f"] and l2_cache.zrange("z", 0, -1) == ["m"]
    assert not any(l2_cache.make_key(key) in l2_cache._l1 for key in ("s", "h", "z"))


def test_a_store_over_a_cached_value_retires_it_from_every_processs_l1(l2_cache, make_cache):
    other = make_cache(like=l2_cache)
    l2_cache.set("dest", "plain", timeout=300)
    assert eventually(lambda: other.get("dest") == "plain" and l2_cache.make_key("dest") in other._l1)
    l2_cache.sadd("src", "m")
    assert l2_cache.sunionstore("dest", "src") == 1
    assert eventually(lambda: other.get("dest") is None)  # not the old value, for 300 s
    assert l2_cache.get("dest") is None and l2_cache.smembers("dest") == {"m"}


def test_redis_refuses_a_helper_on_a_key_holding_a_cached_value(l2_cache):
    """WRONGTYPE, raised as django-redis raises it, not as an outage: the cached value (and its L1 copy) stay right."""
    l2_cache.set("k", "plain")
    assert l2_cache.get("k") == "plain"
    errors = l2_cache.stats()["l2_errors"]
    for call in (lambda: l2_cache.sadd("k", "m"), lambda: l2_cache.hset("k", "f", "v"), lambda: l2_cache.zadd("k", {"m": 1})):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            call()
    with pytest.raises(redis.DataError):
        l2_cache.hset("h")  # no field, no mapping: redis-py refuses before sending
    assert l2_cache.get("k") == "plain"
    assert l2_cache.stats()["l2_errors"] == errors  # no outage counted: the breaker saw Redis answer


# -- a cluster -----------------------------------------------------------------------------------------
def test_multi_key_calls_work_within_one_slot_and_across_slots(l2_cache):
    for a, b, dest in (("{t}a", "{t}b", "{t}d"), ("a", "b", "d")):  # one slot; on a cluster, three
        l2_cache.sadd(a, 1, 2, 3)
        l2_cache.sadd(b, 3, 4)
        assert l2_cache.sdiff(a, b) == {1, 2} and l2_cache.sinter(a, b) == {3} and l2_cache.sunion(a, b) == {1, 2, 3, 4}
        assert l2_cache.sdiffstore(dest, a, b) == 2 and l2_cache.smembers(dest) == {1, 2}
        assert l2_cache.sinterstore(dest, a, "nothing") == 0 and not behind(l2_cache).exists(l2_cache.make_key(dest))
        assert l2_cache.smove(a, b, 1) is True and l2_cache.smove(a, b, 1) is False
        assert l2_cache.smembers(b) == {1, 3, 4}
    if is_cluster(l2_cache):
        assert l2_cache.stats()["l2_errors"] == 0


# -- without Redis --------------------------------------------------------------------------------------
def test_with_redis_down_every_helper_raises_l2_unavailable(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    cache.sadd("s", "m")
    cache.zadd("z", {"m": 1.0})
    own_redis.stop()
    calls = [
        lambda: cache.sadd("s", "n"),
        lambda: cache.smembers("s"),
        lambda: cache.sismember("s", "m"),
        lambda: cache.sunionstore("d", "s"),
        lambda: list(cache.sscan_iter("s")),
        lambda: cache.hset("h", "f", "v"),
        lambda: cache.hkeys("h"),
        lambda: cache.zrange("z", 0, -1),
        lambda: cache.zpopmax("z"),
    ]
    for call in calls:
        with pytest.raises(L2Unavailable):
            call()


def test_l1_only_refuses_every_helper(make_cache):
    cache = make_cache(l2=False)
    for call in (lambda: cache.sadd("s", 1), lambda: cache.hlen("h"), lambda: cache.zcard("z"), lambda: cache.sdiff("a", "b")):
        with pytest.raises(L2Required):
            call()


# -- expiry of a collection ------------------------------------------------------------------------
def test_expire_and_ttl_on_a_collection_keep_it(l2_cache):
    l2_cache.sadd("s", 1, 2)
    assert l2_cache.expire("s", 60) is True
    assert l2_cache.smembers("s") == {1, 2} and 0 < l2_cache.ttl("s") <= 60
    assert l2_cache.persist("s") is True and l2_cache.ttl("s") is None
    l2_cache.hset("h", "f", 1)
    assert l2_cache.expire_at("h", time.time() + 30) is True and 0 < l2_cache.pttl("h") <= 30_000
    assert l2_cache.expire("h", 0) is True and l2_cache.hlen("h") == 0  # zero or less deletes, as for any key
    assert l2_cache.expire("no-such-set", 60) is False and l2_cache.ttl("no-such-set") == 0


def test_atouch_on_a_collection_retimes_it_too(l2_cache):
    """Django's async touch through redis.asyncio (or the cluster's async client): the set is kept and re-timed."""
    import asyncio

    l2_cache.sadd("s", 1, 2)
    assert asyncio.run(l2_cache.atouch("s", 60)) is True
    assert l2_cache.smembers("s") == {1, 2} and 0 < l2_cache.ttl("s") <= 60
    assert asyncio.run(l2_cache.atouch("s", None)) is True and l2_cache.ttl("s") is None
    assert asyncio.run(l2_cache.atouch("no-such-set", 60)) is False
