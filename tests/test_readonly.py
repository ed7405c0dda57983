"""A redis:// LOCATION that still points at a demoted master (issue 14).

After a failover the old master is a replica: it answers reads and refuses
writes with READONLY. Before, such a write was logged with the value it
carried (redis-py quotes a failed pipeline command with its arguments), the
breaker flapped (a PING to a replica succeeds), and other processes kept
reading the value the write replaced. Now a replica is "not the master": an
outage to the breaker (one warning, the write held as an invalidation and
delivered once a master answers there), and no log line carries a value.
Real servers throughout: the demotion is a real REPLICAOF.
"""

from __future__ import annotations

import logging
import time

import pytest

from tests.redis_server import RedisServer
from tests.support import wait_for

SECRET = "cached-secret-7f3a"
KEY = "fault:1:k"


@pytest.fixture
def servers(tmp_path):
    """Two redis-servers of our own: the master a cache points at, and the one a failover promotes."""
    started = []
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        server = RedisServer(tmp_path / name)
        server.start()
        started.append(server)
    yield started
    for server in started:
        server.stop()


def replicate(replica: RedisServer, master: RedisServer) -> None:
    replica.client().replicaof("127.0.0.1", master.port)
    wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", "replica did not sync", 15)


def promote(server: RedisServer) -> None:
    server.client().replicaof("NO", "ONE")


def fail_over(old: RedisServer, new: RedisServer) -> None:
    """What Sentinel does, by hand: ``new`` takes the writes and ``old`` becomes its replica."""
    promote(new)
    replicate(old, new)


def drive(caches, seconds: float) -> list:
    """Reads and writes from every cache for ``seconds``; every value a read returned."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for cache in caches:
            seen.append(cache.get("k"))
            cache.set("other", SECRET)
        time.sleep(0.01)
    return seen


def test_a_write_to_a_demoted_master_is_held_not_dropped_and_never_logged(servers, tiered_on, caplog):
    old, new = servers
    writer, reader = tiered_on(old.url()), tiered_on(old.url())
    replicate(new, old)
    writer.set("k", "v1")
    assert reader.get("k") == "v1" and reader.get("k") == "v1"  # now in the reader's L1 too
    wait_for(lambda: new.client().get(KEY) is not None, "v1 did not replicate", 5)
    fail_over(old, new)
    wait_for(lambda: old.client().get(KEY) is not None, "the demoted master did not resync", 5)

    with caplog.at_level(logging.WARNING):
        writer.set("k", SECRET)  # READONLY: no error reaches the caller
        # Within a heartbeat (0.5 s) every process knows the server is not the
        # master: the writer from its write, the reader from its listener's
        # epoch check, a write a replica refuses. Until then the reader may
        # still read v1 from the replica (docs/consistency.md says so).
        drive([writer, reader], 1.0)
        assert not reader.l2_trusted() and not writer.l2_trusted(), "the demoted master still counts as up"
        seen = drive([writer, reader], 2.0)
    assert "v1" not in seen, "a read returned the value a write that returned had replaced"
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if SECRET in m], "a log line carried a cached value"
    assert not [m for m in messages if "circuit closed" in m], "the breaker flapped on a replica"
    demotions = [m for m in messages if "answers as a replica, not the master" in m]
    assert len(demotions) == 1, messages
    # The outage is said once per process, not once per failed probe (the back-off doubles).
    assert len([m for m in messages if "circuit open" in m]) <= 2, messages

    # A master at that address again: the held write is delivered, v1 is gone for everyone.
    promote(old)
    replicate(new, old)
    wait_for(lambda: writer.get("k") is None and reader.get("k") is None and writer.l2_trusted(), "L2 did not come back", 10)
    assert old.client().get(KEY) is None
    writer.set("k", "v3")
    wait_for(lambda: reader.get("k") == "v3", "the reader did not read the write made after the master came back", 5)


def test_a_cache_pointed_at_a_replica_from_the_start_refuses_it(servers, tiered_on, caplog):
    master, replica = servers
    replicate(replica, master)
    cache = tiered_on(replica.url())
    with caplog.at_level(logging.WARNING):
        cache.set("k", SECRET)
        assert cache.get("k") is None  # the write was not taken; nothing to read back
        drive([cache], 1.0)
    assert replica.client().get(KEY) is None and master.client().get(KEY) is None
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if SECRET in m]
    assert not [m for m in messages if "circuit closed" in m]
    assert cache.get("k") is None


def test_async_calls_on_a_replica_refuse_it_as_the_sync_ones_do(servers, tiered_on, caplog):
    """aset/aget/aget_many through redis.asyncio on a server that answers as a replica: the same outage, never a write lost quietly."""
    import asyncio

    master, replica = servers
    replicate(replica, master)
    cache = tiered_on(replica.url())

    async def drive_async(seconds: float) -> list:
        seen = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await cache.aset("other", SECRET)
            seen.append(await cache.aget("k"))
            seen.extend((await cache.aget_many(["k", "other"])).values())
            await asyncio.sleep(0.01)
        return seen

    with caplog.at_level(logging.WARNING):
        asyncio.run(cache.aset("k", SECRET))
        seen = asyncio.run(drive_async(1.0))
    assert replica.client().get(KEY) is None and master.client().get(KEY) is None
    assert SECRET not in seen, "a value the replica refused was read back"
    assert not cache.l2_trusted(), "the replica counts as a master"
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if SECRET in m], "a log line carried a cached value"
    assert not [m for m in messages if "circuit closed" in m], "the breaker flapped on a replica"
    assert [m for m in messages if "answers as a replica, not the master" in m], messages
