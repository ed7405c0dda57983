"""A Redis that comes back older must not resurrect what was retired (issue 10, item 3).

Real faults only: a redis-server restarted from an RDB file saved before a
revoke-like token bump, and a Redis Cluster whose primary dies after writes its
replica never received, the replica then promoted. Each time the raw Redis is
checked to really hold the old data before any cache connects, so the test
attacks a real resurrection; then no cache, old or new, may serve it.
"""

from __future__ import annotations

import time

import pytest

from tests.support import eventually, keys_on_every_primary
from velro_cache import namespaces
from velro_cache.authz import versions

pytestmark = pytest.mark.django_db(databases=[])


def reads_for(cache, keys, seconds: float = 1.5) -> list:
    """Every value ``cache`` serves for ``keys`` during ``seconds`` (misses included, as None)."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.extend(cache.get(key) for key in keys)
        time.sleep(0.01)
    return seen


def l2_answers(cache) -> bool:
    cache.set("probe", "ok")
    return cache.get("probe") == "ok" and cache.stats()["l2"]["breaker"]["state"] == "closed"


def test_a_restart_from_an_older_snapshot_serves_no_retired_token(own_redis, tiered_on):
    writer, reader = tiered_on(own_redis.url()), tiered_on(own_redis.url())
    old_ns = namespaces.current_tokens(writer, ["team"])[0]
    old_user, _ = versions.read_tokens(writer, 7)
    writer.set("value", "v1", None)
    assert eventually(lambda: reader.get("value") == "v1") and namespaces.current_tokens(reader, ["team"]) == [old_ns]
    snapshot = own_redis.snapshot()
    namespaces.retire(writer, ["team"])  # the revoke-like bump the snapshot does not have
    writer.set_many({versions.user_key(7): "revoked", "value": "v2"}, None)
    assert eventually(lambda: reader.get("value") == "v2")

    own_redis.restart_from(snapshot)
    raw = own_redis.client()
    assert raw.get(writer.make_key(namespaces.token_key("team"))) is not None, "the snapshot brought nothing back"
    assert raw.exists(writer.make_key("value")), "the snapshot brought nothing back"

    newcomer = tiered_on(own_redis.url())
    for cache in (writer, reader, newcomer):
        assert eventually(lambda cache=cache: l2_answers(cache), limit=10)
        assert "v1" not in reads_for(cache, ["value"], 0.3)
        assert namespaces.current_tokens(cache, ["team"]) != [old_ns]
        assert versions.read_tokens(cache, 7)[0] != old_user


def test_a_promoted_replica_that_missed_writes_serves_none_of_its_old_values(tmp_path, tiered_on):
    from tests.redis_cluster import LocalCluster

    cluster = LocalCluster(tmp_path, size=6, replicas=1).start()
    try:
        writer = tiered_on(cluster.urls, prefix="inc")
        reader = tiered_on(list(reversed(cluster.urls)), prefix="inc")
        client = cluster.client()
        keys = keys_on_every_primary(writer, client, per_node=2)
        writer.set_many({key: "old" for key in keys}, None)
        assert eventually(lambda: reader.get_many(keys) == {key: "old" for key in keys})
        victim_port = client.get_node_from_key(writer.make_key(keys[0])).port
        victim = next(node for node in cluster.nodes if node.port == victim_port)
        replica = next(node for node in cluster.nodes if node.port != victim_port and _replica_of(node, victim_port))
        cluster.wait_ok()
        old_frame = victim.client().get(writer.make_key(keys[0]))
        # The replica loses its link and cannot get it back (it now sends a password
        # the primary does not have), so it misses the next writes.
        replica.client().config_set("masterauth", "not-the-password")
        victim.client().client_kill_filter(_type="replica")
        assert eventually(lambda: replica.client().info("replication").get("master_link_status") == "down")
        writer.set_many({key: "new" for key in keys}, None)
        assert eventually(lambda: reader.get_many(keys) == {key: "new" for key in keys})
        victim.kill()
        replica.client().execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        assert eventually(lambda: replica.client().info("replication")["role"] == "master", limit=20)
        assert replica.client().get(writer.make_key(keys[0])) == old_frame, "the promoted replica did not miss the write"
        newcomer = tiered_on(cluster.urls, prefix="inc")
        for cache in (writer, reader, newcomer):
            assert eventually(lambda cache=cache: l2_answers(cache), limit=20)
            served = reads_for(cache, keys, 0.5)
            assert "old" not in served, f"a value from before the failover was served: {served.count('old')} times"
        client.close()
    finally:
        cluster.stop()


def _replica_of(node, primary_port: int) -> bool:
    info = node.client().info("replication")
    return info.get("role") == "slave" and int(info.get("master_port", 0)) == primary_port


def test_a_connection_is_checked_before_it_carries_a_command(own_redis, tiered_on):
    from velro_cache.tiers import incarnation

    cache = tiered_on(own_redis.url())
    cache.set("k", "v")
    raw = own_redis.client()
    assert raw.get(incarnation.MARKER) == raw.info("server")["run_id"].encode()
