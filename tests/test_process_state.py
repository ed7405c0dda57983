"""Per-process tier state: one per cache configuration, on the real Redis.

Two aliases on one Redis URL that differ in any option get their own state
(pool, timeouts, signing key, leases, L1 bounds); aliases configured alike
share one, as LocMemCache aliases with one location do.
"""

from __future__ import annotations

import dataclasses

import pytest
import redis

from tests.settings import redis_url
from velro_cache.options import TieredOptions, parse_options
from velro_cache.tiers.process import ProcessState, discard, state_for

URL = redis_url(12)


@pytest.fixture
def states():
    """``states(options)`` -> the state for these OPTIONS on the test Redis; all discarded afterwards."""
    made: list[ProcessState] = []

    def build(options: dict) -> ProcessState:
        parsed = parse_options(URL, options)
        assert parsed.problems == ()
        state = state_for(parsed)
        made.append(state)
        return state

    yield build
    for state in made:
        discard(state)


def test_two_aliases_on_one_redis_each_get_their_own_pool_size_and_timeouts(states):
    small = states({"POOL_SIZE": 2, "SOCKET_TIMEOUT": 0.5, "POOL_TIMEOUT": 0.05})
    large = states({"POOL_SIZE": 5, "SOCKET_TIMEOUT": 1.5, "POOL_TIMEOUT": 0.05})
    assert small is not large
    assert (small.options.pool_size, small.options.socket_timeout) == (2, 0.5)
    assert (large.options.pool_size, large.options.socket_timeout) == (5, 1.5)
    small_pool = small.l2.client.connection_pool
    large_pool = large.l2.client.connection_pool
    assert small_pool.connection_kwargs["socket_timeout"] == 0.5
    assert large_pool.connection_kwargs["socket_timeout"] == 1.5

    # Each pool really has its own size on the real Redis: the small one is
    # exhausted after 2 connections while the large one still hands out 5.
    held = [small_pool.get_connection() for _ in range(2)]
    try:
        with pytest.raises(redis.ConnectionError):
            small_pool.get_connection()
        more = [large_pool.get_connection() for _ in range(5)]
        for connection in more:
            connection.send_command("PING")
            assert connection.read_response() == b"PONG"
            large_pool.release(connection)
    finally:
        for connection in held:
            small_pool.release(connection)


def test_aliases_configured_alike_share_one_state(states):
    options = {"POOL_SIZE": 4, "SOCKET_TIMEOUT": 0.75, "L1": {"MAX_BYTES": 1 << 20}}
    first = states(options)
    assert states(dict(options)) is first


L1 = {"MAX_BYTES": 1 << 20}

# One configuration per option, differing from the L1-only (location None, L1)
# base in that option alone.
DIFFERENT: dict[str, tuple[str | None, dict]] = {
    "redis_urls": (URL, {"L1": L1}),
    "cluster": (None, {"L1": L1, "CLUSTER": True}),
    "l1_max_bytes": (None, {"L1": {"MAX_BYTES": 1 << 21}}),
    "l1_max_age": (None, {"L1": {**L1, "MAX_AGE": 30}}),
    "compress_min_bytes": (None, {"L1": L1, "COMPRESS_MIN_BYTES": 4096}),
    "pickle_fallback": (None, {"L1": L1, "PICKLE_FALLBACK": False}),
    "pool_size": (None, {"L1": L1, "POOL_SIZE": 3}),
    "socket_timeout": (None, {"L1": L1, "SOCKET_TIMEOUT": 2.0}),
    "socket_connect_timeout": (None, {"L1": L1, "SOCKET_CONNECT_TIMEOUT": 2.0}),
    "pool_timeout": (None, {"L1": L1, "POOL_TIMEOUT": 2.0}),
    "signing_key": (None, {"L1": L1, "SIGNING_KEY": "another key"}),
    "signing_key_fallbacks": (None, {"L1": L1, "SIGNING_KEY_FALLBACKS": ["an older key"]}),
    "lease_timeout": (None, {"L1": L1, "LEASE_TIMEOUT": 9.0}),
    "lease_wait": (None, {"L1": L1, "LEASE_WAIT": 9.0}),
    "early_refresh_beta": (None, {"L1": L1, "EARLY_REFRESH_BETA": 0.0}),
    "staleness_bound": (None, {"L1": L1, "STALENESS_BOUND": 0.5}),
}


# Need a LOCATION naming the service, so they cannot differ from the L1-only
# base alone: tests/test_sentinel.py covers them.
SENTINEL_FIELDS = {"sentinels", "sentinel_kwargs"}


def test_every_option_that_shapes_the_state_is_covered_below():
    shaping = {f.name for f in dataclasses.fields(TieredOptions) if f.name != "problems"}
    assert set(DIFFERENT) == shaping - SENTINEL_FIELDS


@pytest.mark.parametrize("option", sorted(DIFFERENT))
def test_an_alias_that_differs_in_any_one_option_gets_a_state_of_its_own(option):
    base_options = parse_options(None, {"L1": L1})
    location, options = DIFFERENT[option]
    other_options = parse_options(location, options)
    assert other_options.problems == ()
    assert dataclasses.replace(other_options, **{option: getattr(base_options, option)}) == base_options  # only it differs
    base, other = state_for(base_options), state_for(other_options)
    try:
        assert other is not base
        assert getattr(other.options, option) == getattr(other_options, option) != getattr(base.options, option)
    finally:
        discard(base)
        discard(other)
