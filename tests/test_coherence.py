"""Cross-process L1 coherence: real worker processes on one real Redis, and on a Redis Cluster."""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.cache_worker import Worker
from tests.support import Background, eventually

pytestmark = pytest.mark.django_db(databases=[])


@pytest.fixture(params=["redis", "cluster"])
def workers(request, private_redis):
    """Three worker processes; on the cluster each subscribes through another node (the first URL)."""
    prefix = f"coh-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        locations = [private_redis.url(3)] * 3
    else:
        urls = request.getfixturevalue("redis_cluster").urls
        locations = [",".join(urls[n:] + urls[:n]) for n in range(3)]
    started = [Worker(location, prefix) for location in locations]
    yield started
    for worker in started:
        worker.stop()


def test_a_write_in_one_process_reaches_every_other_l1(workers):
    writer, *readers = workers
    writer.call(op="set", key="generation:1:meta", value="v1")
    for reader in readers:
        assert reader.call(op="get", key="generation:1:meta") == "v1"  # from L2, promoted
        assert reader.call(op="get", key="generation:1:meta") == "v1"  # now from L1
        assert reader.call(op="stats")["l1"]["entries"] >= 1
    writer.call(op="set", key="generation:1:meta", value="v2")
    for reader in readers:
        waited = reader.call(op="wait_until", key="generation:1:meta", value="v2", limit=5)
        assert waited is not None, "the other process kept serving v1 from its L1"
    writer.call(op="delete", key="generation:1:meta")
    for reader in readers:
        assert eventually(lambda: reader.call(op="get", key="generation:1:meta", default="gone") == "gone")
    for round_number in range(5):  # every write, not only the first, reaches every L1
        writer.call(op="set", key="generation:1:meta", value=f"v{round_number}")
        for reader in readers:
            assert reader.call(op="wait_until", key="generation:1:meta", value=f"v{round_number}", limit=5) is not None
            assert reader.call(op="get", key="generation:1:meta") == f"v{round_number}"


def test_a_process_ignores_its_own_echo_but_not_another_write_to_the_same_key(workers):
    first, second, observer = workers
    for round_number in range(20):
        first.call(op="set", key="k", value=f"first-{round_number}")
        second.call(op="set", key="k", value=f"second-{round_number}")
        # The first process's echo arrives around the second's message; the
        # second write is the last one and every process must end on it.
        for worker in workers:
            assert worker.call(op="wait_until", key="k", value=f"second-{round_number}", limit=5) is not None


def test_a_listener_skips_exactly_its_own_origins_messages():
    """Its echoes are recognised by their first bytes; an origin that only starts or ends like ours is another process."""
    from velro_cache.tiers.coherence import CoherenceListener, clear_message, drop_message

    dropped: list = []
    listener = CoherenceListener("redis://127.0.0.1:1/0", "7-abc", on_drop=dropped.append, on_lost=print, on_ready=print)
    for origin, keys in (("7-abc", ["own"]), ("7-abcd", ["longer"]), ("7-ab", ["shorter"]), ("17-abc", ["other"])):
        listener._apply({"data": drop_message(origin, keys)})
    listener._apply({"data": clear_message("7-abc")})
    assert dropped == [["longer"], ["shorter"], ["other"]]
    assert listener.messages_applied == 3


def test_separate_l1s_in_one_process_stay_coherent_too(private_redis, tiered_on):
    url = private_redis.url(4)
    a, b = tiered_on(url), tiered_on(url)
    a.set("x", {"n": 1})
    assert b.get("x") == {"n": 1}
    # A promotion is refused when a's own announcement of the write lands after
    # b's read began (the write log cannot tell it from a newer write), so the
    # value reaches b's L1 on a later read.
    assert eventually(lambda: b.get("x") == {"n": 1} and b.stats()["by_type"]["x"]["l1_hits"] >= 1)
    a.set("x", {"n": 2})
    assert eventually(lambda: b.get("x") == {"n": 2})
    a.clear()
    assert eventually(lambda: b.get("x") is None)


# -- a write racing another process's write to the same key ------------------------------------------
# The interleaving is forced at the exact point by wrapping ``_l2_call`` on one
# cache *instance* with Event waits; Redis itself is never mocked.


def pause_after_l2(cache, method_name: str):
    """After the named RedisTier call returns (Redis has applied it), block until released."""
    reached, release = threading.Event(), threading.Event()
    original = cache._l2_call

    def hooked(method, *args):
        result = original(method, *args)
        if getattr(method, "__name__", "") == method_name and not reached.is_set():
            reached.set()
            assert release.wait(10)
        return result

    cache._l2_call = hooked
    return reached, release


def race_other_process_write(url, tiered_on, write):
    """Process A writes k=mine; just after Redis took it, process B sets k=theirs and A hears it."""
    a, b = tiered_on(url), tiered_on(url)
    key = f"race-{uuid.uuid4().hex[:8]}"
    method = "add" if write == "add" else "set_many"
    reached, release = pause_after_l2(a, method)
    thread = Background(lambda: getattr(a, write)(key, "mine", 60))
    assert reached.wait(5)
    heard = a._state.listener.messages_applied
    b.set(key, "theirs", 60)  # later in Redis than A's write
    assert eventually(lambda: a._state.listener.messages_applied > heard)  # A's listener applied B's drop
    release.set()
    thread.join()
    assert b.get(key) == "theirs"
    return a, key


def test_set_does_not_keep_a_value_another_process_overwrote(private_redis, tiered_on):
    a, key = race_other_process_write(private_redis.url(7), tiered_on, "set")
    assert a.get(key) == "theirs"  # A serves "mine" from L1 until TTL/MAX_AGE


def test_add_does_not_keep_a_value_another_process_overwrote(private_redis, tiered_on):
    a, key = race_other_process_write(private_redis.url(7), tiered_on, "add")
    assert a.get(key) == "theirs"

def test_set_many_keeps_its_batch_in_l1_but_not_a_value_another_process_overwrote(private_redis, tiered_on):
    """set_many settles its values into L1 together (ProcessState.settle_writes), except one replaced since Redis took it."""
    url = private_redis.url(7)
    a, b = tiered_on(url), tiered_on(url)
    keys = [f"batch-set:{uuid.uuid4().hex[:8]}:{i}" for i in range(20)]
    reached, release = pause_after_l2(a, "set_many")
    thread = Background(lambda: a.set_many({key: f"mine-{i}" for i, key in enumerate(keys)}, 60))
    assert reached.wait(5)  # Redis holds a's batch
    heard = a._state.listener.messages_applied
    b.set(keys[7], "theirs", 60)  # later in Redis than a's write
    assert eventually(lambda: a._state.listener.messages_applied > heard)
    release.set()
    thread.join()
    held = [a.make_key(key) in a._l1 for key in keys]
    assert held == [i != 7 for i in range(len(keys))]  # the batch is held, but not the value b replaced
    assert a.get(keys[7]) == "theirs"
    assert a.get_many(keys) == {key: "theirs" if i == 7 else f"mine-{i}" for i, key in enumerate(keys)}


def test_get_many_promotes_its_batch_but_not_a_value_overwritten_while_it_read(private_redis, tiered_on):
    """get_many admits the values it read into L1 together, except one another process replaced meanwhile."""
    url = private_redis.url(7)
    a, b = tiered_on(url), tiered_on(url)
    keys = [f"batch:{uuid.uuid4().hex[:8]}:{i}" for i in range(20)]
    heard = a._state.listener.messages_applied
    b.set_many({key: {"v": "old", "i": i} for i, key in enumerate(keys)}, 60)
    assert eventually(lambda: a._state.listener.messages_applied > heard)  # a's reads begin after it heard the write
    reached, release = pause_after_l2(a, "get_many")
    thread = Background(lambda: a.get_many(keys))
    assert reached.wait(5)  # Redis answered a's MGET with the old values
    heard = a._state.listener.messages_applied
    b.set(keys[3], {"v": "new", "i": 3}, 60)
    assert eventually(lambda: a._state.listener.messages_applied > heard)
    release.set()
    thread.join()
    assert a.get(keys[3]) == {"v": "new", "i": 3}  # not the old value held from the batch
    hits = a.stats()["by_type"]
    before = sum(row["l1_hits"] for row in hits.values())
    got = a.get_many(keys)
    assert got == {key: {"v": "new" if i == 3 else "old", "i": i} for i, key in enumerate(keys)}
    after = sum(row["l1_hits"] for row in a.stats()["by_type"].values())
    assert after - before >= len(keys) - 1  # the rest was promoted by the first get_many
    got[keys[0]]["v"] = "mutated"
    assert a.get(keys[0]) == {"v": "old", "i": 0}
