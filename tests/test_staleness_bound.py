"""Staleness under Redis faults is bounded (issue 10, item 4): at most STALENESS_BOUND after a write returned.

An L1 hit is served only while the process holds a confirmation from Redis
younger than the bound (a PING on the subscription whose PONG came back, so
every invalidation published before it was applied). Each fault is real: the
reader reaches Redis through a TCP proxy that goes silent, or the Redis
process is SIGSTOPped or SIGKILLed. The reader polls its L1 and the test
records the last time it served the value the writer had replaced.
"""

from __future__ import annotations

import time

import pytest

from tests.support import eventually
from tests.tcp_proxy import SilencingProxy
from velro_cache.tiers.memory import MISSING

pytestmark = pytest.mark.django_db(databases=[])

BOUND = 0.1
SLACK = 0.05  # the poll's own step and a scheduler tick


def last_stale_read(cache, key: str, stale: str, since: float, seconds: float = 1.0) -> float:
    """Poll ``cache`` for ``seconds``; how long after ``since`` it last served ``stale`` (0 if never)."""
    last = since
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cache.get(key) == stale:
            last = time.monotonic()
        time.sleep(0.001)
    return last - since


@pytest.fixture
def proxy(own_redis):
    proxy = SilencingProxy(own_redis.port)
    yield proxy
    proxy.close()


def warm(writer, reader, key="k", value="v1", limit=5):
    """The reader holds ``value`` in its L1, as after its own write of it.

    Written by the reader itself: an L1 filled by the reader's own write is the
    state under test, and it does not depend on a read promoting the value
    (a promotion on read was seen to be skipped in about one run in three of
    this module: reported as left in issue 10).
    """
    reader.set(key, value, None)
    assert eventually(lambda: reader.stats()["l1"]["entries"] > 0 and reader.get(key) == value, limit=limit)
    assert writer.get(key) == value


def test_a_silent_socket_stops_l1_within_the_bound(own_redis, proxy, tiered_on):
    writer, reader = tiered_on(own_redis.url()), tiered_on(proxy.url())
    warm(writer, reader)
    proxy.silence()
    writer.set("k", "v2", None)
    written = time.monotonic()
    assert last_stale_read(reader, "k", "v1", written) < BOUND + SLACK


def test_a_stopped_redis_stops_l1_within_the_bound(own_redis, tiered_on):
    writer, reader = tiered_on(own_redis.url()), tiered_on(own_redis.url())
    warm(writer, reader)
    own_redis.pause()
    paused = time.monotonic()  # a write that returned just before this may not have reached the reader
    try:
        assert last_stale_read(reader, "k", "v1", paused) < BOUND + SLACK
    finally:
        own_redis.resume()


def test_a_killed_redis_stops_l1_within_the_bound(own_redis, tiered_on):
    writer, reader = tiered_on(own_redis.url()), tiered_on(own_redis.url())
    warm(writer, reader)
    own_redis.stop()
    killed = time.monotonic()
    assert last_stale_read(reader, "k", "v1", killed) < BOUND + SLACK


def test_l1_serves_again_once_redis_answers(own_redis, proxy, tiered_on):
    writer, reader = tiered_on(own_redis.url()), tiered_on(proxy.url())
    warm(writer, reader)
    proxy.silence()
    assert eventually(lambda: reader._l1.get(reader.make_key("k")) is MISSING)
    proxy.resume()
    assert eventually(lambda: reader.get("k") == "v1" and reader._l1.get(reader.make_key("k")) is not MISSING, limit=10)


def test_a_stopped_cluster_node_stops_l1_within_the_bound(tmp_path, tiered_on):
    """The node the reader's listener subscribes through stops: its L1 copy is trusted for at most the bound.

    Polled in L1 itself: a read through the cache would find the same value in
    L2 on a live node, which is no staleness.
    """
    import signal

    from tests.redis_cluster import LocalCluster

    cluster = LocalCluster(tmp_path).start()
    try:
        cluster.wait_ok()
        writer, reader = tiered_on(cluster.urls, prefix="sb"), tiered_on(cluster.urls, prefix="sb")
        full = reader.make_key("k")

        def warmed() -> bool:
            writer.set("k", "v1", None)  # again each time: a write before the cluster settled is only a pending delete
            return reader.get("k") == "v1" and reader._l1.get(full) is not MISSING

        assert eventually(warmed, limit=15)
        node_url = reader._state.listener.endpoints.node  # the node the reader's listener subscribed through
        subscribed_through = next(node for node in cluster.nodes if node.url == node_url)
        subscribed_through.process.send_signal(signal.SIGSTOP)
        paused = last = time.monotonic()
        try:
            while time.monotonic() - paused < 1.0:
                if reader._l1.get(full) is not MISSING:
                    last = time.monotonic()
                time.sleep(0.001)
        finally:
            subscribed_through.process.send_signal(signal.SIGCONT)
        assert last - paused < BOUND + SLACK
    finally:
        cluster.stop()


@pytest.mark.parametrize("bound", [0, 0.001, 61, "0.1", True, None])
def test_a_bad_bound_is_a_check_error(bound):
    from velro_cache.options import parse_options

    assert [p.id for p in parse_options("redis://127.0.0.1:6379/0", {"STALENESS_BOUND": bound}).errors] == ["velro_cache.E050"]


def test_the_bound_is_the_option():
    from velro_cache.options import parse_options

    assert parse_options("redis://127.0.0.1:6379/0", {"STALENESS_BOUND": 0.5}).staleness_bound == 0.5
    assert parse_options("redis://127.0.0.1:6379/0", {}).staleness_bound == 0.1


def busy_through_outage(cache, seconds: float) -> None:
    """Requests all through an outage, as a busy worker's: each failed probe doubles its breaker's back-off.

    Misses, so L1 cannot answer them and each one that the breaker lets
    through really goes to the dead server.
    """
    deadline = time.monotonic() + seconds
    number = 0
    while time.monotonic() < deadline:
        cache.get(f"absent-{number}")
        number += 1
        time.sleep(0.005)
    assert cache._state.breaker.state != "closed"


def test_a_write_dropped_while_redis_was_down_reaches_redis_within_the_bound(own_redis, tiered_on):
    """The writer's breaker is still open when another process already writes to the restarted Redis.

    The other process's value lands in Redis; the writer's later write is
    dropped (held as a pending invalidation). Until the writer delivers it,
    every process reads the replaced value from Redis: that must end within
    the bound of the write's return, not after the writer's breaker back-off
    or its listener's reconnect back-off.
    """
    writer, other = tiered_on(own_redis.url()), tiered_on(own_redis.url())
    warm(other, writer)
    own_redis.stop()
    busy_through_outage(writer, 0.8)  # long enough for the breaker's and the listener's back-off to grow
    own_redis.start()
    other.set("k", "old", None)  # the other process is back first: Redis holds "old"
    writer.set("k", "new", None)  # dropped: the writer's breaker is still open
    written = time.monotonic()
    assert last_stale_read(other, "k", "old", written) < BOUND + SLACK


def test_a_write_dropped_while_redis_was_frozen_reaches_redis_within_the_bound(own_redis, tiered_on):
    """SIGSTOP: the writer's breaker opened on the frozen server, so its write is never sent, only held.

    (A write that merely timed out was sent: the frozen server runs it when
    it wakes, so it needs no replay.) After SIGCONT every process reads the
    replaced value, from Redis or an L1 whose confirmations resumed, until
    the writer delivers the held delete: that must be within the bound of
    the write's return, not on the listener's next slow tick. Several short
    freezes, so the resume falls anywhere between two of its ticks.
    """
    writer, other = tiered_on(own_redis.url(), SOCKET_TIMEOUT=0.02), tiered_on(own_redis.url())
    worst = 0.0
    for round_ in range(4):
        warm(other, writer, value=f"v{round_}")
        own_redis.pause()
        try:
            busy_through_outage(writer, 0.15)
            writer.set("k", "new", None)  # refused by the open breaker: held for replay
            assert writer._state.pending
        finally:
            own_redis.resume()
        written = time.monotonic()
        worst = max(worst, last_stale_read(other, "k", f"v{round_}", written, seconds=0.6))
    assert worst < BOUND + SLACK


def test_a_reader_idle_through_a_freeze_does_not_serve_what_a_held_write_replaced(own_redis, tiered_on):
    """A reader that made no call while Redis was frozen reads it right after SIGCONT.

    The writer's write was held (its breaker had opened) and is delivered a
    moment after the resume; a read in that moment would get the replaced
    value from Redis, long after the write returned. The reader's
    confirmations lapsed during the freeze, so it asks Redis again before it
    trusts an answer, and the late PONGs it then handles tell it Redis was
    frozen: it treats Redis's answers as misses for the bound.
    """
    writer, reader = tiered_on(own_redis.url(), SOCKET_TIMEOUT=0.02), tiered_on(own_redis.url())
    worst = 0.0
    for round_ in range(4):
        writer.set("k", f"v{round_}", None)
        assert eventually(lambda: reader._l2.get(reader.make_key("k")) is not None)
        reader._state.forget_all_local()  # the reader reads from Redis, not its L1
        own_redis.pause()
        try:
            busy_through_outage(writer, 0.15)
            writer.set("k", "new", None)  # held: the writer's breaker is open
            written = time.monotonic()
            time.sleep(0.15)
        finally:
            own_redis.resume()
        worst = max(worst, last_stale_read(reader, "k", f"v{round_}", written, seconds=0.5))
    assert worst < BOUND + SLACK


def test_a_flush_noticed_through_the_epoch_does_not_make_redis_answers_misses(own_redis, tiered_on):
    """A FLUSHDB (Django's clear() without a key prefix) drops values, not writes: nothing is held elsewhere.

    L1 is dropped when the epoch changes, but Redis's answers stay usable at
    once; only a subscription back after a loss waits out the bound.
    """
    writer, reader = tiered_on(own_redis.url(), prefix=""), tiered_on(own_redis.url(), prefix="")
    losses = reader._state.listener.losses
    writer.clear()  # FLUSHDB: the epoch key goes with it
    assert eventually(lambda: reader._state.listener.losses > losses and reader._state.listener.ready)
    writer.set("k", "after the flush", None)
    assert reader.get("k") == "after the flush"


# -- a Redis Cluster: a fault on a primary the listeners do not subscribe through -------------


def keys_by_node(cluster, prefix: str) -> list[str]:
    """One key name per primary, in ``cluster.nodes`` order, hashed as the cache names it (``prefix:1:name``)."""
    client = cluster.client()
    try:
        ports = [node.port for node in cluster.nodes]
        found: dict[int, str] = {}
        number = 0
        while len(found) < len(ports):
            name = f"k{number}"
            number += 1
            found.setdefault(client.get_node_from_key(f"{prefix}:1:{name}").port, name)
        return [found[port] for port in ports]
    finally:
        client.close()


def history_of(writes: dict[str, list], reads: list[list]) -> list[list]:
    """The writer's sets (version n of every key: round n) and the reader's reads as ``tests.history.checker`` events."""
    events = [["w", key, version, start, end, 0] for key, rounds in writes.items() for version, (start, end) in enumerate(rounds)]
    events += [["r", key, None if value is None else int(value[1:]), start, end, 1] for key, start, end, value in reads]
    return events


@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_a_fault_on_a_primary_not_subscribed_through_is_never_served_stale_beyond_the_bound(tmp_path, fault):
    """Two OS processes on a three-primary cluster; the primary hit is not the one the listeners subscribe through.

    The writer writes a key on the dead node first: that write fails and
    opens its breaker, and its writes of the keys on the live nodes are then
    held back unsent. The reader reads only those keys, which it holds in L1
    when the fault starts, so it makes no call to the dead node and its
    confirmations keep coming from the live subscribed node: only what the
    writer announces can tell it. No read that started after a write
    returned may serve what that write replaced for more than the bound,
    during the fault or after the recovery. Before the fix: stale for the
    whole outage (1.7-2.8 s).
    """
    import signal

    from tests.cache_worker import Worker
    from tests.history.checker import check
    from tests.redis_cluster import LocalCluster

    cluster = LocalCluster(tmp_path, full_coverage=False).start()
    workers = []
    try:
        location = ",".join(cluster.urls)
        writer, reader = Worker(location, "ns"), Worker(location, "ns")
        workers += [writer, reader]
        by_node = keys_by_node(cluster, "ns")
        victim = cluster.nodes[1]
        keys = [by_node[1], by_node[0], by_node[2]]  # the dead node's key first: the breaker opens on it
        live = keys[1:]
        assert reader.call(op="subscribed") == cluster.urls[0] != victim.url
        writes: dict[str, list] = {key: [] for key in keys}

        def write_round(number: int) -> None:
            for key, times in zip(keys, writer.call(op="timed_set", keys=keys, value=f"v{number}"), strict=True):
                writes[key].append(times)

        def warmed() -> bool:
            for key in keys:
                writes[key].clear()
            write_round(0)
            return [reader.call(op="get", key=key) for key in live] == ["v0"] * 2 and reader.call(op="stats")["l1"]["entries"] >= 2

        assert eventually(warmed, limit=15)
        reader.send(op="poll", keys=live, seconds=6.0)  # past the recovery, however long the first failing write takes
        time.sleep(0.3)
        if fault == "SIGSTOP":
            victim.process.send_signal(signal.SIGSTOP)
        else:
            victim.kill()
        try:
            for number in range(1, 5):
                write_round(number)
                time.sleep(0.2)
            time.sleep(1.0)  # the fault goes on after the writes returned (the first one waits out timeouts)
        finally:
            if fault == "SIGSTOP":
                victim.process.send_signal(signal.SIGCONT)
            else:
                victim.start()
        reads = reader.receive()
        verdict = check(history_of(writes, reads))
        assert not verdict.impossible
        assert sum(1 for read in reads if read[3] is not None) > 100  # it served values, from L1 and L2, not only misses
        assert verdict.worst < BOUND + SLACK, verdict.summary()
    finally:
        for worker in workers:
            worker.stop()
        cluster.stop()
