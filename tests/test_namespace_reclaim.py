"""Retired namespace tokens give their keys' memory back: Redis holds one live copy, not one per retirement.

A generation PATCHed 2,000 times left 2,001 stamped copies of its reads in
Redis until their TTL (issue 11). Each fill now records its key under its
namespaces' tokens; retiring a token deletes those keys, in bounded batches,
with no scan. Checked on the raw Redis (and Redis Cluster) behind the cache.
"""

from __future__ import annotations

import pytest

from tests.support import behind, is_cluster
from velro_cache import namespaces
from velro_cache.namespaces import RECLAIM_LIMIT, members_key
from velro_cache.reads import cached_read, cached_read_many

pytestmark = pytest.mark.django_db(databases=[])


def stored_copies(cache, fragment: str) -> list[bytes]:
    """The cache's keys in Redis (every primary of a cluster) that start with ``fragment``; a test-side scan only."""
    client, match = behind(cache), cache.make_key(fragment) + "*"
    if is_cluster(cache):
        return sorted(key for node in client.get_primaries() for key in client.scan_iter(match=match, target_nodes=node))
    return sorted(client.scan_iter(match=match))


def test_retiring_a_namespace_deletes_the_keys_stamped_with_its_old_token(l2_cache):
    cache = l2_cache
    for round_number in range(30):  # a read, then a PATCH retiring its namespace, thirty times
        assert cached_read("rgen:456:meta", lambda n=round_number: {"round": n}, timeout=600, cache=cache) == {"round": round_number}
        namespaces.retire(cache, ["rgen"])
    assert cached_read("rgen:456:meta", lambda: {"round": "last"}, timeout=600, cache=cache) == {"round": "last"}
    assert len(stored_copies(cache, "rgen:456:meta")) == 1  # before: 31, one per token until the TTL
    assert not stored_copies(cache, f"{namespaces.MEMBERS_KEY_TYPE}:rgen:")[1:]  # only the live token's set


def test_a_batch_read_is_reclaimed_too_and_other_namespaces_keep_their_keys(l2_cache):
    cache = l2_cache
    keys = {i: f"rbatch:{i}:row" for i in range(5)}
    cached_read_many(keys, lambda ids: {i: i * 10 for i in ids}, timeout=600, cache=cache)
    cached_read("rother:1:row", lambda: "kept", timeout=600, cache=cache)
    assert len(stored_copies(cache, "rbatch:")) == 5
    namespaces.retire(cache, ["rbatch"])
    assert stored_copies(cache, "rbatch:") == []
    assert len(stored_copies(cache, "rother:1:row")) == 1
    assert cached_read("rother:1:row", lambda: "reloaded", timeout=600, cache=cache) == "kept"
    # and the retired reads load again under the new token
    assert cached_read_many(keys, lambda ids: {i: -i for i in ids}, timeout=600, cache=cache) == {i: -i for i in keys}


def test_a_retired_key_is_gone_from_another_process_l1_as_well(l2_cache, make_cache):
    cache = l2_cache
    other = make_cache(like=cache)
    cached_read("rl1:7:meta", lambda: "v1", timeout=600, cache=cache)
    physical = namespaces.stamp("rl1:7:meta", namespaces.current_tokens(cache, ["rl1"]))
    assert other.get(physical) == "v1"  # in other's L1 now
    namespaces.retire(cache, ["rl1"])
    from tests.support import eventually

    assert eventually(lambda: other.get(physical) is None)


def test_one_retire_reclaims_a_bounded_number_of_keys(l2_cache):
    """The request that retires pays for at most RECLAIM_LIMIT deletions per namespace; the rest age out by TTL."""
    cache = l2_cache
    total = RECLAIM_LIMIT + 40
    cached_read_many({i: f"rbig:{i}" for i in range(total)}, lambda ids: dict.fromkeys(ids, "x"), timeout=600, cache=cache)
    token = namespaces.current_tokens(cache, ["rbig"])[0]
    namespaces.retire(cache, ["rbig"])
    assert len(stored_copies(cache, "rbig:")) == total - RECLAIM_LIMIT
    assert behind(cache).scard(cache.make_key(members_key("rbig", token))) == total - RECLAIM_LIMIT
