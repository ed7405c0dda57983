"""Bad input, each case against every mode (L1 only, L1+Redis, L1+Redis Cluster) and LocMemCache.

The rule: store what LocMemCache stores, or refuse before anything is
written; never leave a key that makes another process's read raise; give
leases back on every failure; announce every write.
"""

from __future__ import annotations

import math
import uuid

import pytest
from django.core.cache.backends.locmem import LocMemCache

from tests.support import behind, eventually
from velro_cache.tiers.memory import MISSING
from velro_cache.tiers.redis import lease_key


@pytest.fixture
def locmem():
    """A LocMemCache of its own (LocMemCache instances with one name share their data)."""
    return LocMemCache(f"bad-input-{uuid.uuid4().hex}", {})


def _self_referencing():
    value: list = [1]
    value.append(value)
    return value


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _depth(value) -> int:
    depth = 0
    while value:
        value, depth = value[0], depth + 1
    return depth


# -- recursive and deep values ---------------------------------------------------


def test_a_self_referencing_list_round_trips_in_every_process(cache, make_cache, locmem):
    """Before: RecursionError after Redis stored it, and every other process's get raised too."""
    locmem.set("k", _self_referencing())
    got = locmem.get("k")
    assert got[0] == 1 and got[1] is got
    cache.set("k", _self_referencing())
    got = cache.get("k")
    assert got[0] == 1 and got[1] is got
    other = make_cache(like=cache)
    seen = other.get("k", "miss")
    assert seen == "miss" if cache._l2 is None else seen[1] is seen
    if cache._l2 is not None:
        again = other.get("k")  # promoted into its L1 and served from there
        assert again[1] is again and again is not seen


def test_a_value_350_deep_round_trips_in_every_process(cache, make_cache, locmem):
    locmem.set("k", _nested(350))
    assert _depth(locmem.get("k")) == 350
    cache.set("k", _nested(350))
    assert _depth(cache.get("k")) == 350
    cache.set_many({"a": _nested(350), "b": _nested(351)})
    assert [_depth(v) for v in cache.get_many(["a", "b"]).values()] == [350, 351]
    if cache._l2 is not None:
        other = make_cache(like=cache)
        assert _depth(other.get("k")) == 350
        assert _depth(other.get("k")) == 350
        assert cache.add("c", _nested(350)) is True and _depth(other.get("c")) == 350
        assert _depth(other.get_or_set("d", lambda: _nested(350))) == 350


def test_a_value_no_encoder_can_take_is_refused_before_anything_is_written(cache, make_cache, locmem):
    """20,000 deep is past pickle too: LocMemCache refuses it; so does this, leaving the old value."""
    too_deep = _nested(20_000)
    locmem.set("k", "old")
    with pytest.raises(RecursionError):
        locmem.set("k", too_deep)
    assert locmem.get("k") == "old"
    cache.set("k", "old")
    with pytest.raises(RecursionError):
        cache.set("k", too_deep)
    # Polled: on a loaded machine a read may be a designed miss (the listener's
    # confirmation lapsed); a value the refused set had replaced or deleted never reads "old".
    assert eventually(lambda: cache.get("k") == "old")
    other = make_cache(like=cache)
    assert eventually(lambda: other.get("k", "old" if cache._l2 is None else None) == "old")


def test_a_deep_frame_written_by_someone_else_is_a_miss_not_an_exception(l2_cache, make_cache):
    """Even a genuinely signed frame that decodes past the stack is a counted miss for the reader."""
    full = l2_cache.make_key("k")
    body = b"\x91" * 100_000 + b"\xc0"  # msgpack: a list of a list of ... 100,000 deep
    behind(l2_cache).set(full, l2_cache._serializer.frame(1, body, None, key=full))
    assert make_cache(like=l2_cache).get("k", "miss") == "miss"


# -- leases -------------------------------------------------------------------------


def _unpicklable():
    return lambda: None


@pytest.mark.parametrize(
    "case",
    ["unserializable result", "timeout callable raises", "loader raises KeyboardInterrupt"],
)
def test_a_failed_fill_gives_its_lease_back(l2_cache, make_cache, case):
    """Before: an unserializable result left the lease behind, and the next process waited LEASE_WAIT for nothing."""
    raw = behind(l2_cache)
    full = l2_cache.make_key("k")
    loader, timeout, error = {
        "unserializable result": (_unpicklable, 60, Exception),
        "timeout callable raises": (lambda: "v", lambda: 1 / 0, ZeroDivisionError),
        "loader raises KeyboardInterrupt": (lambda: (_ for _ in ()).throw(KeyboardInterrupt), 60, KeyboardInterrupt),
    }[case]
    with pytest.raises(error):
        l2_cache.get_or_load("k", loader, timeout=timeout)
    assert not raw.exists(lease_key(full)), "lease left behind"
    other = make_cache(like=l2_cache, options={"LEASE_WAIT": 30})
    calls = []
    assert other.get_or_load("k", lambda: calls.append(1) or "fresh") == "fresh"
    assert calls == [1]


# -- add announces -------------------------------------------------------------------


def test_add_after_redis_lost_the_key_reaches_every_l1(l2_cache, make_cache):
    """Before: add sent no coherence message, so a process kept its old copy after Redis evicted the key."""
    writer, reader = l2_cache, make_cache(like=l2_cache)
    assert reader.get("k") is None
    assert eventually(lambda: reader.stats()["l2"]["coherence"]["connected"])
    applied = reader.stats()["l2"]["coherence"]["messages_applied"]
    writer.set("k", "old")
    # The set's own message must land before the reader promotes, or it would drop the copy itself.
    assert eventually(lambda: reader.stats()["l2"]["coherence"]["messages_applied"] > applied)
    assert reader.get("k") == "old"
    assert reader._l1.get(reader.make_key("k")) is not MISSING  # now held in the reader's L1
    behind(writer).delete(writer.make_key("k"))  # evicted (maxmemory) or expired early in Redis
    assert writer.add("k", "new") is True
    assert eventually(lambda: reader.get("k") == "new", limit=3)
    assert writer.add("k", "newer") is False
    assert reader.get("k") == "new"


# -- timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [math.inf, -math.inf, math.nan, 1e300, float("1e12")])
def test_odd_timeouts_behave_as_in_locmem(cache, make_cache, locmem, timeout):
    """Before: inf raised OverflowError and nan ValueError in Redis modes; LocMemCache keeps both for ever."""
    results = []
    for backend in (locmem, cache):
        outcome = [
            backend.set("s", 1, timeout=timeout),
            backend.get("s"),
            backend.add("a", 2, timeout=timeout),
            backend.get("a"),
            backend.set_many({"m": 3}, timeout=timeout),
            backend.get("m"),
            backend.set("t", 4),
            backend.touch("t", timeout=timeout),
            backend.get("t"),
            backend.get_or_set("g", 5, timeout=timeout),
        ]
        results.append(outcome)
    assert results[0] == results[1]
    if cache._l2 is not None and results[1][1] == 1:
        assert behind(cache).pttl(cache.make_key("s")) == -1  # for ever, as LocMemCache keeps it
        assert behind(cache).pttl(cache.make_key("t")) == -1


# -- keys Redis cannot encode ---------------------------------------------------------


def test_a_key_with_a_lone_surrogate_works_as_in_locmem(cache, make_cache, locmem):
    """Before: UnicodeEncodeError in Redis modes (LocMemCache takes any str)."""
    keys = ["\ud800", "\udfff", "\ud800x", "\ufffd"]  # the last is what a naive replace would collide with
    for backend in (locmem, cache):
        for number, key in enumerate(keys):
            backend.set(key, number)
        assert [backend.get(key) for key in keys] == [0, 1, 2, 3]
        assert backend.add("\ud801", "a") is True and backend.get("\ud801") == "a"
        assert backend.incr("\ud800", 10) == 10
        assert backend.delete("\udfff") is True and backend.get("\udfff") is None
        assert backend.get_many(keys) == dict(zip([keys[0], keys[2], keys[3]], [10, 2, 3]))
    if cache._l2 is not None:
        assert make_cache(like=cache).get("\ud800x") == 2


# -- integers past 64 bits -------------------------------------------------------------


def test_incr_and_decr_past_64_bits_behave_as_in_locmem(cache, make_cache, locmem):
    """Before: 'Key not found (Redis unavailable)' with Redis up; L1-only mode gave the big integer."""
    top, bottom = 2**63 - 1, -(2**63)
    results = []
    for backend in (locmem, cache):
        backend.set("up", top, timeout=300)
        backend.set("down", bottom)
        backend.set("wide", 1)
        backend.set("float", 1.5)
        results.append(
            [
                backend.incr("up"),
                backend.incr("up", 10),
                backend.decr("up", 11),  # back inside 64 bits
                backend.incr("up", 0),
                backend.decr("down", 5),
                backend.incr("wide", 2**70),
                backend.decr("wide", 2**70),
                backend.incr("float"),
                backend.get("up"),
                backend.get("wide"),
            ]
        )
    assert results[0] == results[1] == [top + 1, top + 11, top, top, bottom - 5, 2**70 + 1, 1, 2.5, top, 1]
    for backend in (locmem, cache):
        backend.set("text", "x")
        with pytest.raises(TypeError):
            backend.incr("text")
        with pytest.raises(ValueError):
            backend.incr("absent")
    if cache._l2 is not None:
        cache.incr("up", 5)
        assert make_cache(like=cache).get("up") == top + 5
        assert 0 < behind(cache).pttl(cache.make_key("up")) <= 300_000  # the TTL survives the client-side add
        assert cache.decr("up", 5) == top
        assert behind(cache).get(cache.make_key("up")) == str(top).encode()  # raw again: INCRBY works on it


def test_an_incr_result_near_the_64_bit_edge_is_exact(l2_cache):
    """Before: INCRBY's reply passed through a Lua double, so 2**63 - 1 came back as -2**63."""
    l2_cache.set("n", 2**63 - 2)
    assert l2_cache.incr("n") == 2**63 - 1
    l2_cache.set("m", 2**53 + 1)
    assert l2_cache.incr("m", 2) == 2**53 + 3


# -- unserializable and oversized values ----------------------------------------------


def test_an_unserializable_value_raises_and_loses_nothing(cache, make_cache, locmem):
    for backend in (locmem, cache):
        backend.set("k", "old")
        with pytest.raises(Exception) as raised:
            backend.set("k", _unpicklable())
        assert not isinstance(raised.value, RecursionError)
        assert backend.get("k") == "old"
    if cache._l2 is not None:
        assert make_cache(like=cache).get("k") == "old"


def test_an_oversized_value_lives_in_l2_only_or_is_reported(cache, make_cache):
    small = make_cache(like=cache, max_bytes=64 * 1024) if cache._l2 is not None else make_cache(l2=False, max_bytes=64 * 1024)
    big = "x" * 100_000
    failed = small.set_many({"big": big, "small": "y"})
    if cache._l2 is None:
        assert failed == ["big"] and small.get("big") is None
    else:
        assert failed == [] and small.get("big") == big
        assert make_cache(like=cache).get("big") == big
    assert small.get("small") == "y"
