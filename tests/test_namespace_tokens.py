"""Namespace tokens: found or created in one round trip (``TieredCache.get_or_add``), and creators agree.

A row's namespace token is missing from Redis the first time the row is read
after a flush, a restart or an eviction, and for every namespace never read
before; it used to cost a ``get`` and then an ``add``. Counted where the
commands leave for the real Redis (and Redis Cluster); the contention cases
are real caches with their own L1s ("processes") on one Redis.
"""

from __future__ import annotations

import threading

import pytest

from tests.support import RoundTrips, announce_echoes, behind
from velro_cache import namespaces
from velro_cache.tiers import process

pytestmark = pytest.mark.django_db(databases=[])


def test_a_missing_token_is_created_in_one_round_trip_and_another_process_finds_it_in_one(l2_cache, make_cache):
    other = make_cache(like=l2_cache)  # its own L1
    for cache in (l2_cache, other):  # connected, scripts loaded, on the node of the {row} slot
        namespaces.current_tokens(cache, ["{row}warm-up"])
    assert process.confirm_current(timeout=2)  # both listeners subscribed: L1 serves hits
    with RoundTrips() as created:
        (token,) = namespaces.current_tokens(l2_cache, ["{row}1"])
    # Before: a GET that missed, then the add (and on a cluster maybe its echo).
    assert created.sent == 1 + announce_echoes(l2_cache, namespaces.token_key("{row}1"))
    assert process.confirm_current(timeout=2)  # the creation's announcement applied: it cannot drop what other reads next
    with RoundTrips() as found:
        assert namespaces.current_tokens(other, ["{row}1"]) == [token]
    assert found.sent == 1
    with RoundTrips() as held:
        assert namespaces.current_tokens(other, ["{row}1"]) == [token]
    assert held.sent == 0  # now in that L1


def test_get_or_add_returns_what_redis_kept_when_another_process_added_first(l2_cache, make_cache):
    other = make_cache(like=l2_cache)
    assert l2_cache.get_or_add("shared", "first", None) == "first"
    assert other.get_or_add("shared", "second", None) == "first"
    assert other.get("shared") == "first" and l2_cache.get("shared") == "first"


def test_processes_creating_one_token_at_once_all_get_the_same(l2_cache, make_cache):
    caches = [make_cache(like=l2_cache) for _ in range(6)]
    start, seen = threading.Barrier(len(caches)), []

    def create(cache) -> None:
        start.wait()
        seen.append(namespaces.current_tokens(cache, ["row:race"])[0])

    threads = [threading.Thread(target=create, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(seen) == len(caches) and len(set(seen)) == 1


def test_bytes_this_deployment_cannot_verify_are_replaced_not_served(l2_cache):
    full = l2_cache.make_key(namespaces.token_key("row:garbage"))
    behind(l2_cache).set(full, b"\x00not a frame of ours")
    (token,) = namespaces.current_tokens(l2_cache, ["row:garbage"])
    assert token != "\x00not a frame of ours" and l2_cache.get(namespaces.token_key("row:garbage")) == token


def test_without_redis_the_token_lives_in_l1(make_cache):
    cache = make_cache(l2=False)
    (token,) = namespaces.current_tokens(cache, ["row:local"])
    assert namespaces.current_tokens(cache, ["row:local"]) == [token]
    assert cache.get_or_add("local", "first", None) == "first" and cache.get_or_add("local", "second", None) == "first"


async def test_the_async_read_path_finds_or_creates_a_token_in_one_round_trip(l2_cache, make_cache, monkeypatch):
    from tests.test_async import AsyncSends
    from velro_cache.reads import _acurrent_tokens

    other = make_cache(like=l2_cache)
    for cache in (l2_cache, other):
        await _acurrent_tokens(cache, ["{arow}warm-up"])
    sends = AsyncSends(monkeypatch)
    (token,) = await _acurrent_tokens(l2_cache, ["{arow}1"])
    assert sends.sent == 1 + announce_echoes(l2_cache, namespaces.token_key("{arow}1"))  # before: an MGET that missed, then the add
    assert await _acurrent_tokens(other, ["{arow}1"]) == [token]
    assert other.get_or_add(namespaces.token_key("{arow}1"), "another", None) == token


def test_with_redis_down_a_token_is_made_not_stored_and_nothing_raises(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    assert namespaces.current_tokens(cache, ["row:before"])  # connected and working
    own_redis.stop()
    (first,) = namespaces.current_tokens(cache, ["row:down"])
    (second,) = namespaces.current_tokens(cache, ["row:down"])
    assert first and second and first != second  # nothing kept: no key ever stamped with it can be read back
    assert cache.get(namespaces.token_key("row:down")) is None
