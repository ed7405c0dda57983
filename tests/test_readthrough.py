"""Read-through: one loader per key across threads and processes, no stale fill, early refresh."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.cache_worker import load_together
from tests.support import Arrivals, Background, run_together

pytestmark = pytest.mark.django_db(databases=[])


def test_concurrent_misses_in_separate_l1s_run_the_loader_once(private_redis, tiered_on):
    url = private_redis.url(5)
    caches = [tiered_on(url) for _ in range(4)]  # four "processes": own L1, one Redis
    calls = []
    arrivals = Arrivals(16)

    def loader():
        calls.append(1)
        arrivals.wait()  # the flight stays open until every caller has made its call
        return {"answer": 42}

    def miss(index):
        arrivals.arrive()
        return caches[index % 4].get_or_load("gen:1:meta", loader, 60)

    results = run_together(16, miss)
    assert len(calls) == 1
    assert results == [{"answer": 42}] * 16


def test_concurrent_misses_in_separate_os_processes_run_the_loader_once(private_redis, tmp_path):
    results, loader_calls = load_together([private_redis.url(6)] * 4, f"rt-{uuid.uuid4().hex[:8]}", tmp_path / "loader-calls")
    assert results == ["loaded"] * 4
    assert loader_calls == 1


@pytest.mark.parametrize("invalidate", ["delete", "set"])
def test_a_value_loaded_before_an_invalidation_is_never_stored_after_it(cache, invalidate):
    loader_read_the_database = threading.Event()
    writer_committed = threading.Event()

    def stale_loader():
        value = "read before the write"
        loader_read_the_database.set()
        writer_committed.wait(5)  # the writer's invalidation lands exactly here
        return value

    def writer():
        loader_read_the_database.wait(5)
        if invalidate == "delete":
            cache.delete("gen:3:meta")
        else:
            cache.set("gen:3:meta", "written")
        writer_committed.set()

    thread = Background(writer)
    assert cache.get_or_load("gen:3:meta", stale_loader, 60) == "read before the write"
    thread.join()
    expected = None if invalidate == "delete" else "written"
    assert cache.get("gen:3:meta") == expected
    if cache._l2 is not None:
        assert cache._l2.client.get(cache.make_key("gen:3:meta")) is None or expected is not None


def test_a_failed_loader_releases_its_lease(make_cache):
    cache = make_cache()

    def failing():
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        cache.get_or_load("k", failing)
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "second try") == "second try"
    assert time.monotonic() - started < cache.options.lease_wait  # did not wait for a dead lease


def test_a_loader_slower_than_its_lease_is_not_stored(make_cache):
    cache = make_cache(options={"LEASE_TIMEOUT": 0.05})

    def slow():
        time.sleep(0.15)
        return "late"

    assert cache.get_or_load("k", slow) == "late"
    assert cache.get("k") is None  # its lease expired, so another filler may have won


def test_hot_keys_are_refreshed_before_they_expire(cache):
    calls = []

    def loader():
        calls.append(time.time())
        time.sleep(0.05)
        return len(calls)

    cache.options = type(cache.options)(**{**cache.options.__dict__, "early_refresh_beta": 20.0})
    assert cache.get_or_load("hot", loader, timeout=1) == 1
    expires = calls[0] + 0.05 + 1
    served = []
    while time.time() < expires - 0.05 and len(calls) < 2:
        served.append(cache.get_or_load("hot", loader, timeout=1))
        time.sleep(0.005)
    assert len(calls) == 2, "no early refresh before expiry"
    assert calls[1] < expires
    assert all(value == 1 for value in served[:-1])  # callers kept the current value meanwhile
    assert cache.get("hot") == 2


# -- a custom KEY_FUNCTION: the mechanism never parses physical keys ---------------------------


def reversed_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION whose physical keys do not look like ``prefix:version:key``."""
    return f"{key}|v{version}|{key_prefix}"


@pytest.mark.parametrize("mode", ["l1", "l1+l2"])
def test_read_through_and_stats_work_with_a_custom_key_function(mode, make_cache):
    cache = make_cache(l2=mode == "l1+l2", KEY_FUNCTION=reversed_key)
    calls = []
    assert cache.get_or_load("gen:1:meta", lambda: calls.append(1) or "loaded", 60) == "loaded"
    assert cache.get_or_load("gen:1:meta", lambda: calls.append(1) or "again", 60) == "loaded"
    assert cache.get_or_set("gen:2:meta", "set", 60) == "set" and cache.get_or_set("gen:2:meta", "other", 60) == "set"
    assert calls == [1]
    by_type = cache.stats()["by_type"]
    assert set(by_type) == {"gen"}, by_type  # counted by the logical key's data type
    assert by_type["gen"]["misses"] == 2 and by_type["gen"]["l1_hits"] == 2  # one miss each: the look under the single-flight lock is L1 only
    if cache.has_l2:
        assert cache._l2.client.exists(f"gen:1:meta|v1|{cache.key_prefix}")


def test_a_process_waiting_for_another_fill_counts_it_by_data_type_with_a_custom_key_function(make_cache):
    filler = make_cache(KEY_FUNCTION=reversed_key)
    waiter = make_cache(KEY_FUNCTION=reversed_key, KEY_PREFIX=filler.key_prefix)  # another "process": own L1
    loading, waiter_polled = threading.Event(), threading.Event()
    peek_fill = waiter.peek_fill

    def polled_peek(*args):
        waiter_polled.set()  # the waiter is inside the wait for the lease holder's value
        return peek_fill(*args)

    waiter.peek_fill = polled_peek

    def slow_loader():
        loading.set()
        assert waiter_polled.wait(5), "the waiter never waited for the fill"
        return "filled once"

    filling = Background(lambda: filler.get_or_load("gen:5:meta", slow_loader, 60))
    assert loading.wait(5)
    assert waiter.get_or_load("gen:5:meta", lambda: "loaded twice", 60) == "filled once"
    assert filling.join(5) == "filled once"
    by_type = waiter.stats()["by_type"]
    assert set(by_type) == {"gen"}, by_type
    assert by_type["gen"]["l2_hits"] == 1
