"""Fill leases: a value loaded before the data changed never lands in Redis after the change.

``get_or_load`` takes a lease before it loads and stores only while the lease
is still its own; anything that invalidates the key (a write, a delete, a
clear) retires the lease. Interleavings are forced with Events, on the real
Redis and Redis Cluster; the rest of read-through is in test_readthrough.py.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.support import Background, behind, eventually, spread_keys
from velro_cache.tiers.memory import MISSING
from velro_cache.tiers.redis import lease_key

pytestmark = pytest.mark.django_db(databases=[])


def test_clear_retires_in_flight_fills(l2_cache, make_cache):
    filler, other = l2_cache, make_cache(like=l2_cache)  # two "processes" on one L2, same prefix
    key = f"fill-{uuid.uuid4().hex[:8]}"
    started, proceed = threading.Event(), threading.Event()

    def loader():
        started.set()  # the loader has read the database: "old"
        assert proceed.wait(10)
        return "old"

    thread = Background(lambda: filler.get_or_load(key, loader, 60))
    assert started.wait(5)
    filler.clear()  # the data changed: invalidate everything
    proceed.set()
    assert thread.join() == "old"  # the caller gets what it loaded
    assert other.get(key) is None  # "old", read before the clear, is in Redis after it


def test_a_fill_that_lost_its_lease_to_another_processs_write_is_not_stored(l2_cache, make_cache):
    """On a cluster the keys span every primary: each lease lives in its key's slot."""
    loader_cache, writer = l2_cache, make_cache(like=l2_cache)
    raw = behind(l2_cache)
    for key in spread_keys(loader_cache, per_node=1):
        read, written = threading.Event(), threading.Event()

        def stale_loader(read=read, written=written):
            read.set()
            assert written.wait(5)  # the other process's write lands while this loader runs
            return "read before the write"

        def write(key=key, read=read, written=written):
            assert read.wait(5)
            writer.set(key, "written")
            written.set()

        thread = Background(write)
        assert loader_cache.get_or_load(key, stale_loader, 60) == "read before the write"
        thread.join()
        assert raw.get(lease_key(loader_cache.make_key(key))) is None
        assert writer.get(key) == "written"
        assert eventually(lambda key=key: loader_cache.get(key) == "written")


def test_a_fill_finished_between_our_miss_and_our_lease_is_used_not_loaded_again(l2_cache, make_cache):
    """The exact interleaving: B misses in L1, A fills and gives up its lease, then B reads L2 and would take the lease.

    B's look at L2 and its lease are one atomic step in Redis (``value_or_lease``),
    so A's value is what B finds, and B's loader never runs.
    """
    first, second = l2_cache, make_cache(like=l2_cache)  # two "processes": own L1, one L2
    key = f"fill-{uuid.uuid4().hex[:8]}"
    calls = []
    value_or_lease = second.value_or_lease

    def look_after_the_other_fill(*args):
        # ``second`` has missed in its L1; ``first`` fills and releases its lease now.
        assert first.get_or_load(key, lambda: calls.append("first") or "first's value", 60) == "first's value"
        return value_or_lease(*args)

    second.value_or_lease = look_after_the_other_fill
    assert second.get_or_load(key, lambda: calls.append("second") or "second's value", 60) == "first's value"
    assert calls == ["first"]
    assert raw_lease_is_gone(second, key)


def test_a_fill_finished_between_our_wait_and_our_lease_is_used_not_loaded_again(l2_cache, make_cache):
    """After waiting out another holder's lease, a fill can still land before ours: it is looked for, not loaded again."""
    first, second = l2_cache, make_cache(like=l2_cache)
    key = f"fill-{uuid.uuid4().hex[:8]}"
    calls = []
    take_lease = second.take_fill_lease
    value_or_lease = second.value_or_lease

    def held_elsewhere(full, counters, ticket):
        value_or_lease(full, counters, ticket)  # takes the lease ...
        behind(second).delete(lease_key(full))  # ... which its "holder" gives up without storing: B waits, finds no lease
        return MISSING, None

    def take_after_the_other_fill(full):
        assert first.get_or_load(key, lambda: calls.append("first") or "first's value", 60) == "first's value"
        return take_lease(full)

    second.value_or_lease = held_elsewhere
    second.take_fill_lease = take_after_the_other_fill
    assert second.get_or_load(key, lambda: calls.append("second") or "second's value", 60) == "first's value"
    assert calls == ["first"]
    assert raw_lease_is_gone(second, key)


def raw_lease_is_gone(cache, key) -> bool:
    return behind(cache).get(lease_key(cache.make_key(key))) is None
