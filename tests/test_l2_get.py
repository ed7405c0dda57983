"""The L2 tier's GET, sent on a pooled connection without redis-py's command wrapper (``RedisTier.get``).

What that wrapper did for a GET must still happen: a connection that failed
mid-command is closed before anyone else uses it (its late reply must never
answer the next GET), every connection goes back to the pool whatever the
outcome, and any configuration where the wrapper adds something (retries)
keeps it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from velro_cache.exceptions import L2Unavailable
from velro_cache.options import parse_options
from velro_cache.tiers import pool as pool_module
from velro_cache.tiers import redis as tier_module
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


def test_a_pooled_connection_the_server_closed_is_reconnected_before_its_next_get(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(), POOL_SIZE=1)
    tier = cache._l2
    pool = tier.client.connection_pool
    server = own_redis.client()
    server.set("fault:y", b"y")
    connection = pool.get_connection()
    connection.send_command("CLIENT", "ID")
    client_id = connection.read_response()
    pool.release(connection)
    assert server.client_kill_filter(_id=client_id) == 1  # as a server's idle timeout or a CLIENT KILL does
    assert tier.get("fault:y") == b"y"  # no error: the checkout saw the closed socket and reconnected


def test_a_burst_past_pool_size_waits_for_connections_and_never_opens_more(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(), POOL_SIZE=2, POOL_TIMEOUT=5)
    tier = cache._l2
    own_redis.client().set("fault:k", b"v")
    start = threading.Barrier(8)

    def read(_: int) -> list[bytes | None]:
        start.wait()
        return [tier.get("fault:k") for _ in range(50)]

    with ThreadPoolExecutor(8) as threads:
        results = list(threads.map(read, range(8)))
    assert results == [[b"v"] * 50] * 8
    assert len(tier.client.connection_pool._connections) <= 2


def test_a_caller_waiting_for_a_connection_gets_the_one_returned(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(), POOL_SIZE=1, POOL_TIMEOUT=10)
    tier = cache._l2
    pool = tier.client.connection_pool
    own_redis.client().set("fault:k", b"v")
    held = pool.get_connection()
    waited: list[float] = []

    def read() -> bytes | None:
        started = time.monotonic()
        try:
            return tier.get("fault:k")
        finally:
            waited.append(time.monotonic() - started)

    with ThreadPoolExecutor(1) as thread:
        reply = thread.submit(read)
        time.sleep(0.2)
        assert not reply.done()  # waiting: the pool's one connection is held
        pool.release(held)
        assert reply.result(timeout=5) == b"v"
    assert 0.15 < waited[0] < 2  # woken by the return, not by POOL_TIMEOUT


def test_an_exhausted_pool_fails_a_get_after_pool_timeout(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(), POOL_SIZE=1, POOL_TIMEOUT=0.05)
    tier = cache._l2
    pool = tier.client.connection_pool
    held = pool.get_connection()
    try:
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            tier.get("fault:k")
        assert cache.get("k", "default") == "default"
    finally:
        pool.release(held)
    own_redis.client().set("fault:k", b"v")
    assert tier.get("fault:k") == b"v"


@pytest.mark.parametrize("metrics_on", [False, True])
def test_redis_py_metrics_see_every_checkout_and_get_while_they_are_on(own_redis, tiered_on, monkeypatch, metrics_on):
    import redis.client
    import redis.connection

    cache = tiered_on(own_redis.url())
    tier = cache._l2
    own_redis.client().set("fault:k", b"v")
    tier.get("fault:k")  # connected
    records: list[str] = []
    monkeypatch.setattr(tier_module, "redis_metrics_on", lambda: metrics_on)
    monkeypatch.setattr(pool_module, "redis_metrics_on", lambda: metrics_on)
    monkeypatch.setattr(redis.connection, "record_connection_count", lambda **kwargs: records.append(str(kwargs["connection_state"])))
    monkeypatch.setattr(redis.client, "record_operation_duration", lambda **kwargs: records.append(kwargs["command_name"]))
    assert tier.get("fault:k") == b"v"
    if metrics_on:
        assert records.count("GET") == 1 and len(records) == 5  # the GET, and IDLE/USED both ways
    else:
        assert records == []


def test_the_get_packed_here_is_the_get_redis_py_sends(own_redis, tiered_on, monkeypatch):
    import redis.connection

    cache = tiered_on(own_redis.url())
    tier = cache._l2
    key = "fault:caf\u00e9:\u2603"
    own_redis.client().set(key, b"v")
    assert tier.get(key) == b"v"  # connected: no handshake below
    sent: list[bytes] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def record(self, command, check_health=True):
        sent.append(b"".join(command) if isinstance(command, list) else command)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", record)
    assert tier.get(key) == b"v"
    assert sent == [b"".join(redis.connection.Connection().pack_command("GET", key))]
