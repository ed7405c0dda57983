"""The async API against the real Redis: native (no thread hop), single-flight, coherent, fault-tolerant.

Each test here is something an ASGI application relies on: ``aget_or_set``
runs a loader once for a burst of coroutines (and once between coroutines,
threads and other processes), an ``aset`` reaches every other process's L1,
an outage never raises into a coroutine and its writes are replayed, and one
cache serves several event loops and a forked child.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.conftest import L1_CLUSTER, L1_ONLY, L1_REDIS
from tests.support import Arrivals, AsyncArrivals, Background, WorkerProcess, announce_echoes, eventually
from velro_cache.tiers import process


@pytest.fixture(params=[L1_ONLY, L1_REDIS, L1_CLUSTER])
def acache(request, make_cache):
    return make_cache(mode=request.param)


@pytest.fixture(params=[L1_REDIS, L1_CLUSTER])
def l2_mode(request) -> str:
    """The L2s the async tiers serve: one Redis (``tiers.aredis``), a Redis Cluster (``tiers.acluster``)."""
    return request.param


class RefusingExecutor(ThreadPoolExecutor):
    """A default executor that fails any call handed to it: proof that nothing hopped to a thread."""

    def submit(self, fn, /, *args, **kwargs):
        raise AssertionError(f"{getattr(fn, '__name__', fn)} was sent to a worker thread")


async def test_32_coroutines_run_the_loader_once(acache):
    runs = []

    def loader():
        runs.append(1)
        return {"answer": 42}

    async def ask():
        await asyncio.sleep(0)
        return await acache.aget_or_set("burst", loader, 60)

    results = await asyncio.gather(*(ask() for _ in range(32)))
    assert results == [{"answer": 42}] * 32
    assert len(runs) == 1


async def test_an_async_loader_is_awaited_once_for_32_coroutines(acache):
    runs = []
    asked = AsyncArrivals(32)

    async def loader():
        runs.append(1)
        await asked.wait()  # the load stays open until all 32 have made their call
        return "loaded"

    async def ask():
        asked.arrive()
        return await acache.aget_or_load("slow", loader, 60)

    results = await asyncio.gather(*(ask() for _ in range(32)))
    assert results == ["loaded"] * 32
    assert len(runs) == 1
    assert await acache.aget("slow") == "loaded"


async def exercise_every_method(cache) -> None:
    """Each a* method once, with the answer Django's contract gives."""
    await cache.aset("k", "v", 60)
    assert await cache.aget("k") == "v"
    assert await cache.aadd("k", "other") is False
    assert await cache.aadd("new", [1, 2]) is True
    assert await cache.aget_many(["k", "new", "absent"]) == {"k": "v", "new": [1, 2]}
    assert await cache.aset_many({"a": 1, "b": 2}) == []
    assert await cache.aincr("a", 10) == 11
    assert await cache.adecr("b") == 1
    assert await cache.aincr("a", 2**64) == 11 + 2**64  # past 64 bits: the compare-and-set path
    assert await cache.ahas_key("k") is True
    assert await cache.atouch("k", 120) is True
    assert await cache.adelete("k") is True
    assert await cache.adelete("k") is False
    await cache.adelete_many(["a", "b"])
    assert await cache.aget_many(["a", "b"]) == {}
    assert await cache.aget_or_set("gs", lambda: "made", 60) == "made"
    await cache.aclear()
    assert await cache.aget_many(["new", "gs"]) == {}
    await cache.aclose()


async def test_every_method_runs_on_the_loop_without_a_thread(make_cache, l2_mode):
    cache = make_cache(mode=l2_mode)
    await cache.aget("warm-up")  # the loop's client is made here
    asyncio.get_running_loop().set_default_executor(RefusingExecutor())
    await exercise_every_method(cache)


async def test_l2_calls_on_a_cluster_complete_while_every_worker_thread_is_blocked(make_cache):
    """With the pool of worker threads exhausted (slow sync views, say), a cluster's aget/aset/aget_many still answer."""
    cache = make_cache(mode=L1_CLUSTER)
    other = make_cache(like=cache)  # its L1 is empty: its reads go to the cluster
    await cache.aset_many({"a": 1, "b": 2, "c": 3}, 60)
    release = threading.Event()
    workers = ThreadPoolExecutor(max_workers=2)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(workers)
    blocked = [loop.run_in_executor(None, release.wait, 30) for _ in range(2)]
    try:
        async def calls():
            await cache.aset("k", "v", 60)
            return await other.aget("k"), await other.aget_many(["a", "b", "c"])

        assert await asyncio.wait_for(calls(), 10) == ("v", {"a": 1, "b": 2, "c": 3})
    finally:
        release.set()
        await asyncio.gather(*blocked)
        workers.shutdown()


async def test_a_burst_past_pool_size_on_a_cluster_waits_for_connections_instead_of_failing(make_cache):
    """redis.asyncio's cluster pool raises past its size; the tier queues callers as the sync pool does."""
    cache = make_cache(mode=L1_CLUSTER, options={"POOL_SIZE": 2})
    other = make_cache(like=cache, options={"POOL_SIZE": 2})  # reads go to the cluster: its L1 is empty
    await asyncio.gather(*(cache.aset(f"b{i}", i, 60) for i in range(64)))
    got = await asyncio.gather(*(other.aget(f"b{i}") for i in range(64)))
    assert got == list(range(64))
    for each in (cache, other):
        assert each.stats()["l2"]["breaker"]["state"] == "closed"
        assert each.stats()["l2_errors"] == 0


async def test_every_method_on_a_redis_cluster(make_cache):
    """The cluster's async tier (tiers.acluster) gives the answers, and the coherence, of the sync one."""
    cache = make_cache(mode=L1_CLUSTER)
    await exercise_every_method(cache)
    other = make_cache(like=cache)
    await cache.aset("seen", "old", 60)
    assert await other.aget("seen") == "old"
    await cache.aset("seen", "new", 60)
    assert await asyncio.to_thread(eventually, lambda: other.get("seen") == "new", 5)


class AsyncSends:
    """Counts the commands sent on redis.asyncio connections (a pipeline or a script is one send)."""

    def __init__(self, monkeypatch) -> None:
        from redis.asyncio.connection import AbstractConnection

        self.sent = 0
        original = AbstractConnection.send_packed_command

        async def counted(connection, command, check_health=True):
            self.sent += 1
            return await original(connection, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)

    def since(self, before: int) -> int:
        return self.sent - before


async def test_an_async_miss_reads_and_takes_the_lease_in_one_round_trip_then_stores(make_cache, l2_mode, monkeypatch):
    cache = make_cache(mode=l2_mode)
    other = make_cache(like=cache)  # its own L1: another "process"
    for each in (cache, other):  # each client connected to the key's node, its scripts loaded there (one slot: {fill})
        await each.aget_or_set("{fill}warm-up", lambda: "warm", 60)
    sends = AsyncSends(monkeypatch)
    before = sends.sent
    assert await cache.aget_or_set("{fill}", lambda: "loaded", 60) == "loaded"
    # Value-or-lease, then the store (before: GET, GET, SET NX, GET+EXISTS, store); on a cluster the
    # store's PUBLISH may be echoed where readers listen (docs/consistency.md), one more.
    assert sends.since(before) == 2 + announce_echoes(cache, "{fill}")
    assert process.confirm_current(timeout=2)  # the store's announcement applied: it cannot drop what other reads next
    before = sends.sent
    assert await other.aget_or_set("{fill}", lambda: "loaded again", 60) == "loaded"
    assert sends.since(before) == 1  # an L2 hit: the value-or-lease read alone, nothing loaded
    before = sends.sent
    assert await other.aget_or_set("{fill}", lambda: "loaded again", 60) == "loaded"
    assert sends.since(before) == 0  # now an L1 hit


async def test_an_async_write_reaches_another_processes_l1(make_cache, l2_mode):
    writer = make_cache(mode=l2_mode)
    reader = make_cache(like=writer)  # its own L1 and listener: another "process"
    await writer.aset("shared", "old", 60)
    assert await reader.aget("shared") == "old"  # now held in the reader's L1
    await writer.aset("shared", "new", 60)
    assert eventually(lambda: reader.get("shared") == "new", 2)
    await writer.adelete("shared")
    assert eventually(lambda: reader.get("shared") is None, 2)


async def test_a_sync_thread_and_coroutines_share_one_loader(make_cache, l2_mode):
    """The sync fill takes the Redis lease; coroutines wait for its value instead of loading."""
    cache = make_cache(mode=l2_mode)
    runs = []
    started = threading.Event()
    asked = Arrivals(8)

    def slow_loader():
        runs.append("thread")
        started.set()
        asked.wait()  # the lease is held until every coroutine has made its call
        return "from-thread"

    async def ask():
        asked.arrive()
        return await cache.aget_or_load("mixed", lambda: runs.append("loop") or "from-loop", 60)

    thread = Background(lambda: cache.get_or_load("mixed", slow_loader, 60))
    await asyncio.to_thread(started.wait, 5)
    results = await asyncio.gather(*(ask() for _ in range(8)))
    await asyncio.to_thread(thread.join, 5)
    assert results == ["from-thread"] * 8
    assert runs == ["thread"]


def test_coroutines_wait_for_another_processes_fill(make_cache, l2_mode, tmp_path):
    """Across OS processes the flight is the Redis lease: the worker loads, our coroutines wait for it."""
    cache = make_cache(mode=l2_mode)
    log = tmp_path / "loads.log"
    worker = WorkerProcess("tests.cache_worker", cache._l2.url, cache.key_prefix)
    try:
        worker.wait_ready()
        worker.send(op="get_or_load", key="cross", value="from-worker", log=str(log), sleep=0.5)
        assert eventually(lambda: log.exists() and log.read_text(), 10)

        async def burst():
            return await asyncio.gather(*(cache.aget_or_load("cross", lambda: "from-here", 60) for _ in range(16)))

        assert asyncio.run(burst()) == ["from-worker"] * 16
        assert worker.receive() == "from-worker"
    finally:
        worker.stop()
    assert len(log.read_text().splitlines()) == 1


def _child_reads(cache, queue) -> None:
    """The forked child's own loop and clients read what the parent wrote.

    Right after a fork the child's listener is still connecting, and a read
    in that moment may be a miss (never a wrong value); the child reads again
    for a few seconds before it reports what it got.
    """
    deadline = time.monotonic() + 5
    value = asyncio.run(cache.aget("before-fork"))
    while value is None and time.monotonic() < deadline:
        time.sleep(0.05)
        value = asyncio.run(cache.aget("before-fork"))
    queue.put(value)


def test_one_cache_serves_several_loops_and_a_forked_child(make_cache, l2_mode):
    cache = make_cache(mode=l2_mode)
    asyncio.run(cache.aset("before-fork", "parent", 60))
    assert asyncio.run(cache.aget("before-fork")) == "parent"  # a second loop: its own client
    cache.delete("before-fork")
    cache.set("before-fork", "parent-again", 60)
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_reads, args=(cache, queue))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == "parent-again"


async def test_an_outage_never_raises_and_its_writes_are_replayed(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(0), prefix="aio")
    other = tiered_on(own_redis.url(0), prefix="aio")
    await cache.aset("held", "before", 60)
    assert await other.aget("held") == "before"
    own_redis.pause()
    try:
        started = time.monotonic()
        await cache.aset("held", "during", 60)  # dropped locally, held for replay
        assert await cache.aget("held", "miss") == "miss"
        assert await cache.aadd("x", 1) is False
        with pytest.raises(ValueError):
            await cache.aincr("counter")
        assert time.monotonic() - started < 30
    finally:
        own_redis.resume()
    # The held write is delivered as a delete: nobody keeps "before".
    assert await asyncio.to_thread(eventually, lambda: other.get("held", "gone") == "gone", 10)
    assert await asyncio.to_thread(eventually, lambda: own_redis.client().get("aio:1:held") is None, 10)


@pytest.fixture
def surviving_cluster(tmp_path):
    """A cluster of the test's own whose survivors keep serving their slots when a node is lost (``full_coverage=False``)."""
    from tests.redis_cluster import LocalCluster

    cluster = LocalCluster(tmp_path, full_coverage=False).start()
    yield cluster
    cluster.stop()


async def test_a_stopped_cluster_node_gives_misses_and_held_keys_never_an_error(surviving_cluster, tiered_on):
    """A primary of the cluster dies: every a* call still answers, the failed write is announced held, all heals after.

    On a cluster that requires full coverage the survivors refuse keyed commands a node timeout (1 s) after
    the loss, and the reader's channel, lost then, could miss the hold: a race, not what is tested here.
    """
    from tests.support import keys_on_every_primary
    from velro_cache.tiers.coherence import EPOCH_KEY

    urls = surviving_cluster.urls
    writer, reader = tiered_on(urls, prefix="acl-fault"), tiered_on(urls, prefix="acl-fault")
    client = surviving_cluster.client()
    keys = keys_on_every_primary(writer, client, per_node=2)
    # A victim neither the listeners' node nor the epoch key's: the reader's channel stays up,
    # so only the writer's hold announcement can retire the reader's copy.
    spared = {client.get_node_from_key(EPOCH_KEY).port, redis.connection.parse_url(urls[0])["port"]}
    victim = next(node for node in surviving_cluster.nodes if node.port not in spared)
    on_victim = [key for key in keys if client.get_node_from_key(writer.make_key(key)).port == victim.port]
    client.close()
    # Both listeners subscribed first: a message published before the writer's listener has its node goes
    # through another node, over the cluster bus, and could arrive after the hold and release it.
    assert await asyncio.to_thread(eventually, lambda: writer._state.listener.ready and reader._state.listener.ready, 5)
    await writer.aset_many({key: "before" for key in keys}, 60)
    assert await reader.aget_many(keys) == {key: "before" for key in keys}
    held_full = reader.make_key(on_victim[0])
    assert await asyncio.to_thread(eventually, lambda: reader.get(on_victim[0]) and held_full in reader._l1, 5)  # in its L1
    losses = reader._state.listener.losses
    victim.kill()

    await writer.aset(on_victim[0], "during", 60)  # refused by the dead node: held, announced
    # The hold was published before aset returned; the reader's listener applies it a moment later.
    assert await asyncio.to_thread(eventually, lambda: reader._state.held.covers(held_full) and held_full not in reader._l1, 0.8)
    assert reader._state.listener.losses == losses, "the reader dropped its L1 for a lost channel, not for the hold"
    assert await reader.aget(on_victim[0], "miss") == "miss"  # the dead node may hold "before": a miss, never it
    for cache in (writer, reader):
        assert on_victim[0] not in await cache.aget_many(keys)
        assert await cache.aget(on_victim[1], "miss") in ("miss", "before")
        assert await cache.aadd(on_victim[1], "x") is False
        assert await cache.aget_or_set(on_victim[1], lambda: "computed", 60) == "computed"
        await cache.adelete_many(on_victim)
        await cache.aclear()

    victim.start()
    surviving_cluster.wait_ok()
    assert await asyncio.to_thread(eventually, lambda: writer.stats()["l2"]["breaker"]["state"] == "closed", 10)
    assert await asyncio.to_thread(eventually, lambda: not writer._state.holds_back() and not reader._state.holds_back(), 10)  # replayed:
    # not only taken from ``pending`` but delivered; the reader's clear still under way would delete what is set next
    await writer.aset(on_victim[0], "after", 60)
    assert await asyncio.to_thread(eventually, lambda: reader.get(on_victim[0]) == "after", 10)
    assert not reader._state.held.covers(reader.make_key(on_victim[0]))


async def test_a_cluster_failover_to_a_replica_heals_the_async_path_without_an_error(tmp_path, tiered_on):
    """A primary killed, its replica promoted: a* calls never raise, and the async clients find the new primary."""
    from tests.redis_cluster import LocalCluster
    from tests.support import keys_on_every_primary

    cluster = LocalCluster(tmp_path, size=6, replicas=1).start()
    try:
        a = tiered_on(cluster.urls, prefix="acl-failover")
        b = tiered_on(cluster.urls[3:] + cluster.urls[:3], prefix="acl-failover")
        client = cluster.client()
        keys = keys_on_every_primary(a, client, per_node=2)
        await a.aset_many({key: "before" for key in keys}, 60)
        victim = next(node for node in cluster.nodes if node.port == client.get_node_from_key(a.make_key(keys[0])).port)
        client.close()
        victim.kill()

        async def healed() -> bool:  # any exception fails the test
            for cache in (a, b):
                await cache.aget_many(keys)
                await cache.aset(keys[0], "during", 60)
            # Healed once the breaker is closed, L1 is back and what the outage held back was delivered:
            # until then a write is held too (it must not overtake the replay of an older one).
            stats = [c.stats() for c in (a, b)]
            return all(
                s["l2"]["breaker"]["state"] == "closed" and s["l1"]["enabled"] and s["l2"]["pending_invalidations"] == 0 for s in stats
            )

        deadline = time.monotonic() + 30
        while not await healed():
            assert time.monotonic() < deadline, "the async path did not return to L2 after the failover"
            await asyncio.sleep(0.2)
        # A write while the cluster still settles may be held (and replayed as a delete: never stale);
        # one that lands reaches the other process.
        after = {key: "after" for key in keys}
        for _ in range(10):
            await a.aset_many(after, 60)
            if await asyncio.to_thread(eventually, lambda: b.get_many(keys) == after, 2):
                break
        assert await b.aget_many(keys) == after
    finally:
        cluster.stop()


async def test_a_cancelled_probe_does_not_close_the_breaker(own_redis, tiered_on):
    """A coroutine cancelled while it probes a silent Redis (a timeout around the call) proves nothing."""
    from velro_cache.tiers.breaker import CLOSED

    cache = tiered_on(own_redis.url(0), prefix="aio-cancel")
    await cache.aset("k", "v", 60)  # the loop's connection is open
    breaker = cache._state.breaker
    own_redis.pause()
    try:
        breaker.force_open()
        await asyncio.sleep(breaker.reset_timeout + 0.05)  # the next call is the half-open probe
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cache.ahas_key("absent"), 0.05)
        assert breaker.state != CLOSED
        assert await cache.aget("k", "miss") == "miss"  # still served as an outage, not from a silent Redis
    finally:
        own_redis.resume()
    assert await asyncio.to_thread(eventually, lambda: cache.get("k") == "v", 10)


def connected_clients(cache) -> int:
    """Connections open to the cache's Redis, or to every primary of its cluster."""
    from redis.cluster import RedisCluster

    from velro_cache.tiers.cluster import ClusterRedisTier

    if isinstance(cache._l2, ClusterRedisTier):
        per_node = cache._l2.client.info("clients", target_nodes=RedisCluster.PRIMARIES)
        return sum(info["connected_clients"] for info in per_node.values())
    return cache._l2.client.info("clients")["connected_clients"]


def test_closed_loops_do_not_keep_their_connections(make_cache, l2_mode, caplog):
    """``asyncio.run`` per call (a script, a sync view calling async code) must not pile up Redis connections.

    Nor log about them: redis-py's cluster client reported each one let go as unclosed (an ERROR line per node).
    """
    import gc

    from velro_cache.tiers import aredis

    cache = make_cache(mode=l2_mode)
    clients = lambda: connected_clients(cache)  # noqa: E731
    asyncio.run(cache.aget("absent-0"))
    gc.collect()
    before = clients()
    for index in range(100):
        asyncio.run(cache.aget(f"absent-{index}"))  # a new loop, a new client, an L2 round trip
    gc.collect()
    assert aredis.open_loops() <= 1
    assert eventually(lambda: clients() - before <= 3, 5), clients() - before
    assert not [record.getMessage() for record in caplog.records if record.name == "asyncio" and record.levelname == "ERROR"]


def test_threads_with_their_own_loops_share_one_cache(make_cache, l2_mode):
    """Each thread's loop gets its own client; the L1, counters and coherence stay the process's."""
    from tests.support import run_threads

    cache = make_cache(mode=l2_mode)

    def on_own_loop(index: int):
        async def work():
            for round_ in range(20):
                await cache.aset(f"t{index}", round_, 60)
                assert await cache.aget(f"t{index}") == round_
                await cache.aset(f"s{index}", {"round": round_}, 60)
                assert await cache.aget(f"s{index}") == {"round": round_}
            return await cache.aget_or_set("shared-once", lambda: index, 60)

        return asyncio.run(work())

    winners = run_threads([lambda i=i: on_own_loop(i) for i in range(4)])
    assert len(set(winners)) == 1  # one loader's value for every thread's loop
    assert cache.get_many([f"s{i}" for i in range(4)]) == {f"s{i}": {"round": 19} for i in range(4)}
    assert cache.stats()["l2"]["breaker"]["state"] == "closed"
