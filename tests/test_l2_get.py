"""The L2 tier's GET, sent on a pooled connection without redis-py's command wrapper (``RedisTier.get``).

What that wrapper did for a GET must still happen: a connection that failed
mid-command is closed before anyone else uses it (its late reply must never
answer the next GET), every connection goes back to the pool whatever the
outcome, and any configuration where the wrapper adds something (retries)
keeps it.
"""

from __future__ import annotations

import pytest
import redis

from velro_cache.exceptions import L2Unavailable
from velro_cache.options import parse_options
from velro_cache.tiers.redis import RedisTier, direct_pool

pytestmark = pytest.mark.django_db(databases=[])


def test_a_timed_out_get_closes_its_connection_so_its_late_reply_answers_nothing(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(), POOL_SIZE=1, SOCKET_TIMEOUT=0.2)
    tier = cache._l2
    assert direct_pool(tier.client) is not None
    server = own_redis.client()
    server.set("fault:first", b"first")
    server.set("fault:second", b"second")
    own_redis.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            tier.get("fault:first")
    finally:
        own_redis.resume()
    # One connection in the pool: had it gone back open, b"first" (the
    # reply the server sends once resumed) would be read as this answer.
    assert tier.get("fault:second") == b"second"
    assert tier.get("fault:first") == b"first"


def test_a_refused_get_leaves_its_connection_in_the_pool_and_usable(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(), POOL_SIZE=1, POOL_TIMEOUT=0.05)
    tier = cache._l2
    own_redis.client().sadd("fault:a-set", "member")
    for _ in range(3):  # POOL_SIZE times over: a connection not returned would exhaust the pool
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            tier.get("fault:a-set")
    own_redis.client().set("fault:value", b"v")
    assert tier.get("fault:value") == b"v"
    assert cache.get("a-set", "default") == "default"  # through the backend: Redis refused, a miss


def test_a_killed_redis_fails_the_get_and_the_pool_recovers_after_a_restart(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(), POOL_SIZE=1, POOL_TIMEOUT=0.05)
    tier = cache._l2
    own_redis.client().set("fault:k", b"v")
    assert tier.get("fault:k") == b"v"
    own_redis.stop()
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            tier.get("fault:k")
    own_redis.start()
    own_redis.client().set("fault:k", b"again")
    assert tier.get("fault:k") == b"again"


@pytest.mark.parametrize("query", ["retry_on_timeout=true", "retry_on_error=ConnectionError"])
def test_connections_that_retry_keep_redis_py_s_command_path(query):
    url = f"redis://127.0.0.1:1/0?{query}"
    try:
        tier = RedisTier(url, parse_options(url, {}), "channel")
    except (ValueError, TypeError, L2Unavailable):
        pytest.skip(f"redis-py does not take {query} in a URL")
    assert direct_pool(tier.client) is None
