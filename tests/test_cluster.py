"""TieredCache on a real Redis Cluster: three primaries on loopback, no mocks.

Keys are chosen so every test touches all three primaries (checked with the
cluster's own slot map and ``CLUSTER KEYSLOT``). Several TieredCaches with
distinct L1 budgets play separate worker processes (own L1, own listener);
``tests.cache_worker`` gives real OS processes where that matters. The
backend contract itself (test_backend.py, test_coherence.py, Django's suite)
runs on the cluster as a mode of the ``cache`` fixture; what is here is the
cluster's own: settings, slots, per-node round trips, listeners on other
nodes, the epoch key, lost nodes and failover.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager

import pytest
import redis
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from redis.connection import AbstractConnection
from redis.crc import key_slot

from tests.cache_worker import load_together
from tests.redis_server import free_port
from tests.support import Arrivals, eventually, exercise_every_operation, keys_on_every_primary, run_together
from velro_cache.backends import TieredCache
from velro_cache.options import parse_options
from velro_cache.tiers.cluster import ClusterRedisTier
from velro_cache.tiers.coherence import EPOCH_KEY
from velro_cache.tiers.redis import RedisTier, lease_key

pytestmark = pytest.mark.django_db(databases=[])

BACKEND = "velro_cache.backends.TieredCache"


@pytest.fixture
def on_cluster(tiered_on):
    """Build TieredCaches on a cluster, under a key prefix of the test's own."""
    test_prefix = f"cl-{uuid.uuid4().hex[:8]}"

    def build(urls, *, prefix=test_prefix, **options):
        return tiered_on(list(urls), prefix=prefix, **options)

    return build


@pytest.fixture
def cluster_client(redis_cluster):
    client = redis_cluster.client()
    yield client
    client.close()


def rotated(urls, by):
    """The same startup nodes in another order: the listener subscribes through the first."""
    return urls[by:] + urls[:by]


def port_of(url):
    return redis.connection.parse_url(url)["port"]


class Writes:
    """Counts this thread's socket writes per node: one write is one round trip to that node."""

    def __init__(self):
        self.per_node: Counter = Counter()

    @contextmanager
    def counting(self):
        original = AbstractConnection.send_packed_command
        thread = threading.get_ident()
        per_node = self.per_node

        def send_packed_command(connection, command, check_health=True):
            if threading.get_ident() == thread:
                per_node[(connection.host, connection.port)] += 1
            return original(connection, command, check_health)

        AbstractConnection.send_packed_command = send_packed_command
        try:
            yield self
        finally:
            AbstractConnection.send_packed_command = original


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "options", "cluster", "problem"),
    [
        (["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"], {}, True, None),
        ("redis://127.0.0.1:7000,redis://127.0.0.1:7001/0", {}, True, None),
        ("redis://127.0.0.1:7000", {"CLUSTER": True}, True, None),
        ("redis://127.0.0.1:7000/3", {}, False, None),
        ("redis://127.0.0.1:7000", {"CLUSTER": "yes"}, False, "velro_cache.E016"),
        ("redis://127.0.0.1:7000/3", {"CLUSTER": True}, True, "velro_cache.E017"),
        (["redis://127.0.0.1:7000", "redis://127.0.0.1:7001?db=2"], {}, True, "velro_cache.E017"),
        (["unix:///tmp/redis.sock", "redis://127.0.0.1:7001"], {}, True, "velro_cache.E018"),
        (["rediss://127.0.0.1:7000", "redis://127.0.0.1:7001"], {}, True, "velro_cache.E018"),
        (["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"], {"CLUSTER": False}, False, "velro_cache.E019"),
    ],
)
def test_cluster_settings_are_parsed_and_checked(location, options, cluster, problem):
    parsed = parse_options(location, options)
    assert parsed.cluster is cluster
    assert [p.id for p in parsed.problems] == ([problem] if problem else [])
    if problem:
        caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, "tiered": {"BACKEND": BACKEND, "LOCATION": location, "OPTIONS": options}}
        with override_settings(CACHES=caches):
            assert problem in {message.id for message in checks.run_checks()}
        with pytest.raises(ImproperlyConfigured, match=problem):
            TieredCache(location, {"OPTIONS": options}).get("k")


@pytest.mark.parametrize("full", ["a", "p:1:gen:1:meta", "p:1:{user:7}:x", "{}x", "a}b", "x{}y}", "a{b", "{a}", "}{", "", "é{ü}"])
def test_a_lease_hashes_to_its_keys_slot(full, cluster_client):
    lease = lease_key(full)
    assert lease != full and lease.startswith("velro_lease:")
    assert key_slot(lease.encode()) == key_slot(full.encode())
    # And by the server's own hashing, not only redis-py's:
    assert cluster_client.execute_command("CLUSTER KEYSLOT", lease) == cluster_client.execute_command("CLUSTER KEYSLOT", full)


def test_the_tier_is_chosen_once_by_the_options(on_cluster, redis_cluster, make_cache):
    assert type(make_cache()._l2) is RedisTier  # one URL: the single-Redis tier, untouched
    several = on_cluster(redis_cluster.urls)
    assert type(several._l2) is ClusterRedisTier
    assert several.stats()["l2"]["url"] == ",".join(redis_cluster.urls)
    one_node = on_cluster(redis_cluster.urls[1:2], CLUSTER=True)
    assert type(one_node._l2) is ClusterRedisTier
    keys = keys_on_every_primary(one_node, several._l2.client.real(), per_node=1)
    one_node.set_many({key: "v" for key in keys}, 60)  # the other nodes are found from the one given
    assert several.get_many(keys) == {key: "v" for key in keys}


# -- the L2 wire -----------------------------------------------------------------------------------


def test_many_key_calls_span_all_primaries(on_cluster, redis_cluster, cluster_client):
    writer, reader = on_cluster(redis_cluster.urls), on_cluster(rotated(redis_cluster.urls, 1))
    keys = keys_on_every_primary(writer, cluster_client)
    values = {key: {"key": key, "n": n} for n, key in enumerate(keys)}
    assert writer.set_many(values, 60) == []
    for key in keys:  # each value really is on its slot's node
        node = cluster_client.get_node_from_key(writer.make_key(key))
        assert cluster_client.get_redis_connection(node).get(writer.make_key(key)) is not None
    assert reader.get_many(keys + ["gen:missing:meta"]) == values
    assert reader.stats()["totals"]["l2_hits"] == len(keys)
    writer.delete_many(keys[::2])
    assert eventually(lambda: reader.get_many(keys) == {key: values[key] for key in keys[1::2]})
    assert all(cluster_client.get(writer.make_key(key)) is None for key in keys[::2])


def test_get_many_and_writes_ask_each_node_once(on_cluster, redis_cluster, cluster_client):
    cache = on_cluster(redis_cluster.urls)
    keys = keys_on_every_primary(cache, cluster_client, per_node=10)
    fulls = [cache.make_key(key) for key in keys]
    cache._l2.get_many(fulls)  # connect every node outside the count
    with Writes().counting() as reads:
        cache._l2.get_many(fulls)
    assert len(reads.per_node) == 3 and set(reads.per_node.values()) == {1}
    with Writes().counting() as writes:
        cache.set_many({key: "v" for key in keys}, 60)
    # One pipeline per node, then the announcement through the last key's node.
    assert len(writes.per_node) == 3 and sum(writes.per_node.values()) == 4
    with Writes().counting() as deletes:
        cache.delete_many(keys)
    assert len(deletes.per_node) == 3 and sum(deletes.per_node.values()) == 4


# -- fill leases -------------------------------------------------------------------------------------


def test_concurrent_misses_in_separate_caches_run_the_loader_once_per_key(on_cluster, redis_cluster, cluster_client):
    caches = [on_cluster(rotated(redis_cluster.urls, n % 3)) for n in range(4)]
    keys = keys_on_every_primary(caches[0], cluster_client, per_node=1)
    calls = Counter()
    lock = threading.Lock()
    arrivals = Arrivals(12)

    def loader_for(key):
        def load():
            with lock:
                calls[key] += 1
            arrivals.wait()  # each key's flight stays open until every caller has made its call
            time.sleep(0.05)  # a slow database read: the late callers reach the lease's wait
            return {"loaded": key}

        return load

    def miss(index):
        arrivals.arrive()
        return caches[index % 4].get_or_load(keys[index % 3], loader_for(keys[index % 3]), 60)

    results = run_together(12, miss)
    assert calls == {key: 1 for key in keys}
    assert results == [{"loaded": keys[index % 3]} for index in range(12)]


def test_concurrent_misses_in_separate_os_processes_run_the_loader_once(redis_cluster, tmp_path):
    urls = [",".join(rotated(redis_cluster.urls, n % 3)) for n in range(3)]
    results, loader_calls = load_together(urls, f"clrt-{uuid.uuid4().hex[:8]}", tmp_path / "loader-calls")
    assert results == ["loaded"] * 3
    assert loader_calls == 1


# -- coherence ---------------------------------------------------------------------------------------


def test_writes_reach_an_l1_subscribed_through_another_node(on_cluster, redis_cluster, cluster_client):
    a, b = on_cluster(redis_cluster.urls), on_cluster(rotated(redis_cluster.urls, 1))
    assert eventually(lambda: a._state.listener.ready and b._state.listener.ready)
    assert a._state.listener.endpoints.node != b._state.listener.endpoints.node
    keys = keys_on_every_primary(a, cluster_client, per_node=2)
    a.set_many({key: "v1" for key in keys}, 60)
    assert eventually(lambda: all(b.get(key) == "v1" for key in keys) and all(b.make_key(key) in b._l1 for key in keys))
    for key in keys:
        a.set(key, "v2")
    assert eventually(lambda: all(b.get(key) == "v2" for key in keys)), "b kept serving v1 from its L1"
    a.delete_many(keys)
    assert eventually(lambda: b.get_many(keys) == {})
    b.set_many({key: "from b" for key in keys}, 60)
    assert eventually(lambda: a.get_many(keys) == {key: "from b" for key in keys})
    b.clear()
    assert eventually(lambda: a.get_many(keys) == {})


def test_a_flush_is_noticed_through_the_epoch_key(on_cluster, redis_cluster, cluster_client):
    cache = on_cluster(redis_cluster.urls)
    keys = keys_on_every_primary(cache, cluster_client, per_node=1)
    cache.set_many({key: "v" for key in keys}, 60)
    assert eventually(lambda: cache._state.listener.ready and cache.get(keys[0]) == "v")
    assert cluster_client.exists(EPOCH_KEY)
    losses = cache._state.listener.losses
    redis_cluster.flush()  # behind the cache's back: no message, only the epoch tells
    assert eventually(lambda: cache._state.listener.losses > losses)
    assert eventually(lambda: cache.get_many(keys) == {})


# -- faults ------------------------------------------------------------------------------------------


def test_a_killed_primary_raises_nothing_and_the_cache_recovers(own_cluster, on_cluster):
    urls = own_cluster.urls
    a, b = on_cluster(urls), on_cluster(rotated(urls, 1))
    client = own_cluster.client()
    keys = keys_on_every_primary(a, client, per_node=2)
    a.set_many({key: "before" for key in keys}, 60)
    assert eventually(lambda: all(b.get(key) == "before" for key in keys))
    victim = next(node for node in own_cluster.nodes if node.port == client.get_node_from_key(a.make_key(keys[0])).port)
    client.close()
    victim.kill()

    for cache in (a, b):  # before the cluster notices (node timeout 1 s): connection refused
        results = exercise_every_operation(cache, keys)
        assert results["get_or_load"] == ["loaded"] * len(keys)
        assert results["get_or_set"] == ["computed"] * len(keys)
        with pytest.raises(ValueError):
            cache.incr(keys[0])  # a counter's value is unknown without its node
    own_cluster.wait_down()
    for cache in (a, b):  # now every node answers CLUSTERDOWN
        results = exercise_every_operation(cache, keys)
        assert results["get_or_load"] == ["loaded"] * len(keys)
        assert eventually(lambda cache=cache: not cache.stats()["l1"]["enabled"])
        assert cache.get(keys[1], "default") == "default"

    victim.start()
    own_cluster.wait_ok()
    for cache in (a, b):
        assert eventually(lambda cache=cache: cache.stats()["l2"]["breaker"]["state"] == "closed" and cache.stats()["l1"]["enabled"], limit=10)
    a.set_many({key: "after" for key in keys}, 60)
    assert eventually(lambda: b.get_many(keys) == {key: "after" for key in keys})
    assert b.stats()["l2"]["pending_invalidations"] == 0


def test_a_failover_to_a_replica_heals_without_an_error(tmp_path, on_cluster):
    from tests.redis_cluster import LocalCluster

    cluster = LocalCluster(tmp_path, size=6, replicas=1).start()
    try:
        a, b = on_cluster(cluster.urls), on_cluster(rotated(cluster.urls, 3))
        client = cluster.client()
        keys = keys_on_every_primary(a, client, per_node=2)
        a.set_many({key: "before" for key in keys}, 60)
        victim = next(node for node in cluster.nodes if node.port == client.get_node_from_key(a.make_key(keys[0])).port)
        client.close()
        victim.kill()
        survivor = next(node for node in cluster.nodes if node is not victim)

        def traffic():  # any exception fails the test
            for cache in (a, b):
                cache.get_many(keys)
                cache.set(keys[0], "during")

        def promoted():
            traffic()
            view = redis.cluster.RedisCluster(host="127.0.0.1", port=survivor.port, require_full_coverage=False)
            try:
                return view.get_node_from_key(a.make_key(keys[0])).port != victim.port
            finally:
                view.close()

        assert eventually(promoted, limit=20), "no replica took over"

        def healed():
            traffic()
            return all(c.stats()["l2"]["breaker"]["state"] == "closed" and c.stats()["l1"]["enabled"] for c in (a, b))

        assert eventually(healed, limit=15), "the caches did not return to L2 after the failover"
        a.set_many({key: "after" for key in keys}, 60)
        assert eventually(lambda: b.get_many(keys) == {key: "after" for key in keys})
    finally:
        cluster.stop()


def test_a_write_that_fails_on_a_dead_node_still_reaches_other_l1s(own_cluster, on_cluster):
    urls = own_cluster.urls
    a, b = on_cluster(urls), on_cluster(urls)
    client = own_cluster.client()
    epoch_port = client.get_node_from_key(EPOCH_KEY).port
    # A key on a node that is neither the listeners' node nor the epoch key's:
    # losing it leaves b's channel up, so only the message can retire b's copy.
    victim = next(n for n in own_cluster.nodes if n.port not in (epoch_port, port_of(urls[0])))
    key = next(f"gen:{n}:meta" for n in itertools.count() if client.get_node_from_key(a.make_key(f"gen:{n}:meta")).port == victim.port)
    client.close()
    a.set(key, "old")
    assert eventually(lambda: b.get(key) == "old" and b.make_key(key) in b._l1)
    losses = b._state.listener.losses
    victim.kill()
    a.delete(key)  # fails on the dead node; announced through a live one
    # Well before the cluster notices the loss (node timeout 1 s) and b's epoch check fails:
    assert eventually(lambda: b.make_key(key) not in b._l1, limit=0.8)
    assert b._state.listener.losses == losses, "b dropped its L1 for a lost channel, not for the message"
    assert b.get(key) is None


def test_the_listener_moves_to_another_node_when_its_node_dies(tmp_path, on_cluster):
    from tests.redis_cluster import LocalCluster

    cluster = LocalCluster(tmp_path, full_coverage=False).start()
    try:
        client = cluster.client()
        epoch_port = client.get_node_from_key(EPOCH_KEY).port
        client.close()
        first = next(node for node in cluster.nodes if node.port != epoch_port)
        urls = [first.url] + [node.url for node in cluster.nodes if node is not first]
        a, b = on_cluster(urls), on_cluster(rotated(urls, 1))
        assert eventually(lambda: a._state.listener.ready) and port_of(a._state.listener.endpoints.node) == first.port
        first.kill()
        assert eventually(lambda: a._state.listener.ready and port_of(a._state.listener.endpoints.node) != first.port, limit=10)
        survivors = [node for node in cluster.nodes if node is not first]
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=survivors[0].port, require_full_coverage=False)
        key = next(f"k:{n}" for n in itertools.count() if client.get_node_from_key(a.make_key(f"k:{n}")).port != first.port)
        client.close()
        a.set(key, "from a")
        assert eventually(lambda: a.stats()["l1"]["enabled"] and a.make_key(key) in a._l1)
        b.set(key, "from b")  # heard by a only through its new node
        assert eventually(lambda: a.make_key(key) not in a._l1)
        # Within the staleness bound of the move Redis's answers are misses (a
        # write to the dead primary may be held elsewhere); then "from b" is read.
        assert eventually(lambda: a.get(key) == "from b", limit=1)
    finally:
        cluster.stop()


def test_an_unreachable_cluster_at_startup_raises_nothing(on_cluster):
    urls = [f"redis://127.0.0.1:{free_port()}/0" for _ in range(3)]
    started = time.monotonic()
    cache = on_cluster(urls)
    results = exercise_every_operation(cache, ["a", "b", "c"])
    assert results["get_or_load"] == ["loaded"] * 3
    assert time.monotonic() - started < 5
    assert cache.stats()["l2"]["breaker"]["state"] in ("open", "half_open")
    assert not cache.stats()["l1"]["enabled"]
