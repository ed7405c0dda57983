"""Redis down, slow, flushed, restarted: no errors to callers, nothing stale served.

Every fault is real: the test's own redis-server is killed (SIGKILL), paused
(SIGSTOP), flushed, and started again on the same port.
"""

from __future__ import annotations

import time

import pytest

from tests.support import eventually, exercise_every_operation
from velro_cache.tiers.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

pytestmark = pytest.mark.django_db(databases=[])


def test_killed_redis_raises_nothing_and_serves_from_the_loader(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    cache.set("k", "before")
    assert cache.get("k") == "before"
    own_redis.stop()
    started = time.monotonic()
    results = exercise_every_operation(cache, ["k", "other", "a", "b"])
    assert time.monotonic() - started < 5  # bounded, not one socket timeout per call
    assert results["get_or_load"] == ["loaded"] * 4 and results["get_or_set"] == ["computed"] * 4
    # Once the loss is seen, L1 is off: Redis cannot tell us about others' writes.
    assert eventually(lambda: not cache.stats()["l1"]["enabled"])
    assert cache.get("k", "default") == "default"
    assert cache.stats()["l2"]["breaker"]["state"] in (OPEN, HALF_OPEN)
    with pytest.raises(ValueError):
        cache.incr("counter")  # a counter's value is unknown without Redis


def test_after_a_restart_l2_and_l1_are_used_again(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    own_redis.stop()
    cache.get("k")
    cache.set("k", "while-down")
    own_redis.start()

    def back():
        cache.set("k", "after")
        return own_redis.client().get("fault:1:k") is not None and cache.stats()["l1"]["enabled"]

    assert eventually(back, limit=8)
    # Within the staleness bound of the recovery Redis's answers are misses
    # (another process may still deliver a write it held); then they are used.
    assert eventually(lambda: cache.get("k") == "after", limit=1)
    assert cache.stats()["l2"]["breaker"]["state"] == CLOSED


def test_slow_redis_costs_bounded_time_then_none(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    cache.set("k", "v")
    own_redis.pause()
    try:
        timings = []
        for _ in range(10):
            started = time.monotonic()
            assert cache.get("k", "default") in ("v", "default")
            timings.append(time.monotonic() - started)
        # At most a few calls pay a socket timeout before the breaker opens.
        assert sum(t > 0.1 for t in timings) <= 3
        assert max(timings[5:]) < 0.1
    finally:
        own_redis.resume()
    assert eventually(lambda: cache.get("k") == "v" and cache.stats()["l2"]["breaker"]["state"] == CLOSED, limit=8)


def test_invalidations_that_failed_during_an_outage_are_replayed(own_redis, tiered_on):
    url = own_redis.url()
    writer, reader = tiered_on(url), tiered_on(url)
    writer.set("gen:1", "old")
    assert reader.get("gen:1") == "old"
    own_redis.pause()
    try:
        writer.delete("gen:1")  # cannot reach Redis: held back, not lost
        assert writer.stats()["l2"]["pending_invalidations"] >= 1
    finally:
        own_redis.resume()
    # Redis kept "old" (it was only paused); the replay must retire it everywhere.
    assert eventually(lambda: own_redis.client().get("fault:1:gen:1") is None, limit=8)
    assert eventually(lambda: reader.get("gen:1", "gone") == "gone", limit=8)
    assert eventually(lambda: writer.stats()["l2"]["pending_invalidations"] == 0, limit=8)


def test_flushall_drops_every_l1(own_redis, tiered_on):
    url = own_redis.url()
    first, second = tiered_on(url), tiered_on(url)
    first.set("k", "v")
    assert eventually(lambda: second.get("k") == "v" and second.stats()["l1"]["entries"] == 1)  # in second's L1
    own_redis.client().flushall()
    # Not stale: after a flush (an operator's "empty the cache"), no L1 serves old data.
    assert eventually(lambda: second.get("k", "gone") == "gone" and first.get("k", "gone") == "gone")
    first.set("k", "new")
    assert eventually(lambda: second.get("k") == "new")


def test_garbage_written_into_redis_is_a_miss(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    own_redis.client().set("fault:1:k", b"\xa1" + b"\x00" * 12 + b"\xc1")
    assert cache.get("k", "default") == "default"
    assert cache.stats()["totals"]["corrupt"] == 1


def test_lost_channel_turns_l1_off_until_it_is_back(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    cache.set("k", "v")
    assert cache.stats()["l1"]["entries"] == 1
    own_redis.client().client_kill_filter(_type="pubsub")
    assert eventually(lambda: cache.stats()["l2"]["coherence"]["losses"] >= 1)
    assert eventually(lambda: cache.stats()["l1"]["enabled"] and cache.stats()["l2"]["coherence"]["connected"])
    assert cache.stats()["l1"]["entries"] == 0  # dropped: messages may have been missed
    assert eventually(lambda: cache.get("k") == "v", limit=1)  # from L2 again, once the bound since the return has passed


def test_a_replayed_invalidation_is_not_undone_by_the_read_that_triggered_it(own_redis, tiered_on):
    cache = tiered_on(own_redis.url())
    admin = own_redis.client()
    cache.set("k", "v0", 60)
    admin.config_set("maxmemory", 1)  # Redis refuses writes (OOM): a failed write, remembered as pending
    try:
        cache.set("k", "v1", 60)
        assert len(cache._state.pending) == 1
        cache.get("k")  # first successful call: replays the pending delete of k
    finally:
        admin.config_set("maxmemory", 0)
    assert not cache._state.pending
    assert admin.exists("fault:1:k") == 0  # L2 dropped k: the invalidation was delivered
    assert cache.get("k") is None  # but L1 holds "v0" (L1 outlives L2, a value this process overwrote)


def test_breaker_recovers_after_a_probe_refused_by_redis(own_redis, tiered_on):
    """A half-open probe that Redis answers with an error (OOM) ends the probe.

    Were it recorded as neither success nor failure, the breaker would stay
    half-open for ever, with L1 and L2 off.
    """
    cache = tiered_on(own_redis.url())
    admin = own_redis.client()
    breaker = cache._state.breaker
    admin.config_set("maxmemory", 1)
    try:
        breaker.force_open()  # as replay_pending does when Redis fails again
        time.sleep(breaker.reset_timeout + 0.05)
        cache.set("k", "v", 60)  # the probe; Redis refuses it (OOM) but answered
        assert breaker.state == CLOSED
    finally:
        admin.config_set("maxmemory", 0)
    assert eventually(lambda: (cache.get("x"), breaker.state)[1] == CLOSED, limit=6)
    cache.set("k", "v", 60)
    assert cache.get("k") == "v"


# -- the breaker itself -------------------------------------------------------------


class FakeClock:
    """Time under the test's control (the breaker is pure logic; no Redis here)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once():
    clock = FakeClock()
    transitions = []
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, max_reset_timeout=4.0, clock=clock)
    breaker.add_listener(lambda old, new: transitions.append((old, new)))
    breaker.record_failure()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 1.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one
    breaker.record_failure()
    assert breaker.state == OPEN and breaker.snapshot()["reset_timeout"] == 2.0  # backs off
    clock.now = 3.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow()
    assert transitions == [(CLOSED, OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)]
