"""TieredCache behaviour beyond Django's suite: tiers, promotion, copies, safety, stats."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import os
import pickle
import threading
import time
import uuid
import zoneinfo
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils.safestring import SafeString, mark_safe

from tests.support import Arrivals, Background, behind, eventually, run_together, spread_keys
from velro_cache.exceptions import UnserializableValue

pytestmark = pytest.mark.django_db(databases=[])


@dataclasses.dataclass
class Record:
    """A plain dataclass: L1 copies it instead of unpickling it on every hit."""

    id: int
    tags: list


@dataclasses.dataclass(frozen=True)
class FrozenRecord:
    id: int
    name: str


class Color(enum.IntEnum):
    RED = 1


class Point:
    """A plain object: not msgpack data, so it takes the pickle fallback."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


ROUND_TRIP_VALUES = {
    "str": "hello",
    "empty-str": "",
    "unicode": "Ünïcødé ✓ 清",
    "bytes": b"\x00\xff binary",
    "int": 42,
    "negative-int": -7,
    "big-int": 2**80,
    "float": 3.25,
    "bool": True,
    "none": None,
    "list": [1, "two", 3.0, None],
    "tuple": (1, (2, 3), "x"),
    "dict": {"a": 1, 2: "b", (1, 2): [3]},
    "nested": {"rows": [{"id": i, "tags": ["x", "y"]} for i in range(5)]},
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "datetime-naive": datetime.datetime(2026, 11, 24, 12, 30, 1, 5),
    "datetime-utc": datetime.datetime(2026, 11, 24, 12, 30, tzinfo=datetime.timezone.utc),
    "datetime-zoneinfo": datetime.datetime(2026, 11, 24, 12, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    "date": datetime.date(2026, 11, 24),
    "time": datetime.time(12, 30, 15),
    "timedelta": datetime.timedelta(days=2, seconds=5, microseconds=7),
    "decimal": decimal.Decimal("10.050"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "safestring": mark_safe("<b>safe</b>"),
    "intenum": Color.RED,
    "ordereddict": collections.OrderedDict([("b", 1), ("a", 2)]),
    "object": Point(1, 2),
    "dataclass": Record(1, ["a"]),
    "frozen-dataclass": FrozenRecord(2, "x"),
    "large-text": "lorem ipsum " * 2000,
    "large-records": [{"id": i, "url": f"https://cdn.example.com/{i}.png"} for i in range(300)],
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_VALUES))
def test_every_storable_type_round_trips_with_its_type(cache, make_cache, name):
    value = ROUND_TRIP_VALUES[name]
    cache.set("value", value)
    got = cache.get("value")
    assert got == value
    assert type(got) is type(value)
    if cache._l2 is not None:
        # Read back through another "process" (its own L1): the wire path.
        other = make_cache(like=cache)
        from_l2 = other.get("value")
        assert from_l2 == value and type(from_l2) is type(value)
        assert other.get("value") == value  # and again from its L1 after promotion


@pytest.mark.parametrize(
    "make_value",
    [lambda: {"a": [1, 2]}, lambda: [{"id": 1}], lambda: {"s": {1, 2}}, lambda: Point(1, 2), lambda: Record(1, ["a"])],
    ids=["dict", "list", "set", "object", "dataclass"],
)
def test_values_are_copies_nobody_else_holds(cache, make_value):
    value = make_value()
    cache.set("k", value)
    if isinstance(value, Record):
        value.tags.append("changed after set")
        got = cache.get("k")
        got.tags.append("changed by a caller")
        assert cache.get("k") == Record(1, ["a"])
        return
    if isinstance(value, Point):
        value.x = 99  # mutating the original after set
        got = cache.get("k")
        got.y = 42
        assert cache.get("k") == Point(1, 2)
        return
    original = pickle.loads(pickle.dumps(value))
    got = cache.get("k")
    (got["a"].append(3) if "a" in got else got.clear()) if isinstance(got, dict) else got[0].update(id=2)
    assert cache.get("k") == original


def test_non_string_keys_that_compare_equal_stay_distinct(cache):
    cache.set(1, "int one")
    cache.set(True, "bool true")
    cache.set("1", "str one")
    assert cache.get(1) == "str one"  # Django formats 1 and "1" to the same key
    assert cache.get(True) == "bool true"
    assert cache.get("1") == "str one"


# -- L2 specifics ---------------------------------------------------------------


def test_l2_hit_is_promoted_into_l1_with_no_more_than_its_remaining_ttl(l2_cache, make_cache):
    writer = l2_cache
    redis_client = behind(l2_cache)
    writer.set("gen:1:meta", {"id": 1}, timeout=30)
    time.sleep(0.2)
    reader = make_cache(like=writer)
    assert reader.get("gen:1:meta") == {"id": 1}
    full = reader.make_key("gen:1:meta")
    _, l1_expires = reader._l1.get_with_expiry(full)
    l1_left = l1_expires - time.monotonic()
    l2_left = redis_client.pttl(full) / 1000
    assert 0 < l1_left <= l2_left + 0.01
    assert l1_left < 30 - 0.15  # the 0.2 s spent in L2 were taken off
    stats = reader.stats()["by_type"]["gen"]
    assert (stats["l2_hits"], stats["l1_hits"]) == (1, 0)
    assert reader.get("gen:1:meta") == {"id": 1}
    assert reader.stats()["by_type"]["gen"]["l1_hits"] == 1


def test_l1_never_outlives_l2_after_a_touch_shortens_the_ttl(l2_cache, make_cache):
    writer = l2_cache
    writer.set("k", "v", timeout=300)
    assert writer.touch("k", timeout=1) is True
    reader = make_cache(like=writer)
    assert reader.get("k") == "v"
    _, l1_expires = reader._l1.get_with_expiry(reader.make_key("k"))
    assert l1_expires - time.monotonic() <= 1.0
    time.sleep(1.1)
    assert reader.get("k") is None


def test_l1_max_age_bounds_entries_without_a_timeout(make_cache):
    cache = make_cache(options={"L1": {"MAX_AGE": 5}})
    cache.set("forever", "x", timeout=None)
    _, expires = cache._l1.get_with_expiry(cache.make_key("forever"))
    assert expires - time.monotonic() <= 5


def test_integers_are_raw_in_redis_and_incr_is_atomic_across_threads(l2_cache, make_cache):
    cache = l2_cache
    redis_client = behind(l2_cache)
    cache.set("counter", 0)
    assert redis_client.get(cache.make_key("counter")) == b"0"

    def bump(_index):
        for _ in range(200):
            cache.incr("counter")

    run_together(8, bump)
    assert cache.get("counter") == 1600
    other = make_cache(like=cache)
    other.incr("counter", 5)
    assert cache.get("counter") == 1605  # no stale local copy of a counter


def test_incr_keeps_the_ttl(l2_cache, make_cache):
    cache = l2_cache
    redis_client = behind(l2_cache)
    cache.set("n", 1, timeout=100)
    cache.incr("n")
    assert 0 < redis_client.pttl(cache.make_key("n")) <= 100_000


def _commandstats(client) -> dict[str, int]:
    return {name: stat["calls"] for name, stat in client.info("commandstats").items()}


def _delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(f"cmdstat_{name}", 0) - before.get(f"cmdstat_{name}", 0)


def test_get_many_and_delete_many_are_one_command_each(private_redis):
    from velro_cache.backends import TieredCache

    def make(max_bytes):
        return TieredCache(private_redis.url(), {"OPTIONS": {"L1": {"MAX_BYTES": max_bytes}}})

    redis_client = private_redis.client()
    writer = make(1_000_001)
    writer.set_many({f"k{i}": i * 1.5 for i in range(50)})
    reader = make(1_000_002)
    before = _commandstats(redis_client)
    found = reader.get_many([f"k{i}" for i in range(50)] + ["absent"])
    after = _commandstats(redis_client)
    assert found == {f"k{i}": i * 1.5 for i in range(50)}
    assert _delta(before, after, "mget") == 1 and _delta(before, after, "get") == 0
    before = _commandstats(redis_client)
    reader.delete_many([f"k{i}" for i in range(50)])
    after = _commandstats(redis_client)
    # One pipeline: a DEL of the 50 values, a DEL of their fill leases, one PUBLISH.
    assert _delta(before, after, "del") == 2 and _delta(before, after, "publish") == 1
    assert make(1_000_003).get_many(["k1", "k2"]) == {}


def test_corrupt_or_foreign_bytes_are_a_counted_miss_left_in_place(l2_cache, make_cache, caplog):
    cache = l2_cache
    redis_client = behind(l2_cache)
    garbage = {
        "text": b"not ours",
        "bad-msgpack": b"\xa1" + b"\x00" * 8 + b"\xc1\xc1",
        "truncated": b"\xb2\x00",
        "bad-lz4": b"\xb2" + b"\x00" * 28 + b"\xff\xff\xff\x7fjunk",
        "empty": b"",
    }
    for name, data in garbage.items():
        redis_client.set(cache.make_key(f"junk:{name}"), data)
    assert cache.get("junk:text", "default") == "default"
    assert cache.get_many([f"junk:{name}" for name in garbage]) == {}
    counters = cache.stats()["by_type"]["junk"]
    assert counters["corrupt"] == len(garbage) + 1  # junk:text twice: it is still there
    assert counters["misses"] == len(garbage) + 1
    # Unverified bytes are never deleted by a read (they may be another
    # deployment's), yet cannot block add()/get_or_set() on those keys.
    assert all(redis_client.get(cache.make_key(f"junk:{name}")) == data for name, data in garbage.items())
    assert cache.get_or_set("junk:text", "fresh") == "fresh"
    assert cache.get("junk:text") == "fresh"
    assert cache.add("junk:bad-msgpack", "added") is True
    assert make_cache(like=cache).get("junk:bad-msgpack") == "added"


def test_an_authentic_frame_that_does_not_decode_is_retired(l2_cache, make_cache):
    cache = l2_cache
    redis_client = behind(l2_cache)
    full = cache.make_key("k")
    redis_client.set(full, cache._serializer.frame(1, b"\xc1\xc1", None, key=full))  # MSGPACK, bad body, good MAC
    assert cache.get("k", "miss") == "miss"
    assert cache.stats()["totals"]["corrupt"] == 1
    assert not redis_client.exists(full)


def test_retiring_a_corrupt_entry_never_deletes_a_newer_good_value(l2_cache, make_cache):
    cache = l2_cache
    redis_client = behind(l2_cache)
    full = cache.make_key("k")
    redis_client.set(full, b"garbage")
    cache.set("k", "good")  # a writer replaces it before anyone retires the garbage
    assert cache._l2.delete_if_equal(full, b"garbage") is False
    assert make_cache(like=cache).get("k") == "good"


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickles_written_by_others_are_never_unpickled(l2_cache, make_cache, tmp_path):
    cache = l2_cache
    redis_client = behind(l2_cache)
    marker = tmp_path / "code-ran"
    body = pickle.dumps(_Exploit(str(marker)))
    forged = {
        "unsigned": b"\xa3" + b"\x00" * 8 + b"\x00" * 16 + body,
        "unsigned-v2": b"\xb3" + b"\x00" * 12 + b"\x00" * 16 + body,
        "other-key": make_cache(options={"SIGNING_KEY": "someone else"})._serializer.frame(3, body, None, key=cache.make_key("other-key")),
    }
    for name, data in forged.items():
        redis_client.set(cache.make_key(name), data)
        assert cache.get(name) is None
    assert not marker.exists()
    assert cache.stats()["totals"]["corrupt"] == 3


def test_pickle_fallback_can_be_forbidden(make_cache):
    cache = make_cache(options={"PICKLE_FALLBACK": False})
    cache.set("plain", {"ok": [1, 2, datetime.date(2026, 1, 1)]})
    assert cache.get("plain") == {"ok": [1, 2, datetime.date(2026, 1, 1)]}
    with pytest.raises(UnserializableValue, match="PICKLE_FALLBACK"):
        cache.set("object", Point(1, 2))
    assert isinstance(UnserializableValue("x"), TypeError)
    # A pickled entry written while the fallback was allowed is now refused, not unpickled.
    permissive = make_cache(KEY_PREFIX=cache.key_prefix)
    permissive.set("object", Point(1, 2))
    strict_reader = make_cache(KEY_PREFIX=cache.key_prefix, options={"PICKLE_FALLBACK": False})
    assert strict_reader.get("object") is None


def test_clear_with_a_prefix_leaves_other_prefixes_and_foreign_keys(l2_cache, make_cache):
    other = make_cache(like=l2_cache, KEY_PREFIX=f"other-{uuid.uuid4().hex[:6]}")
    keys = spread_keys(l2_cache, per_node=4)
    raw = behind(l2_cache)
    raw.set("someone-elses-key", b"1")
    l2_cache.set_many({key: "mine" for key in keys}, 60)
    other.set_many({key: "other" for key in keys}, 60)
    l2_cache.clear()
    assert l2_cache.get_many(keys) == {}
    assert other.get_many(keys) == {key: "other" for key in keys}
    assert raw.get("someone-elses-key") == b"1"
    raw.delete("someone-elses-key")


def test_clear_without_a_prefix_empties_the_l2_and_every_l1(l2_cache, make_cache):
    keys = spread_keys(l2_cache, per_node=4)
    l2_cache.set_many({key: "mine" for key in keys}, 60)
    assert l2_cache.get_many(keys) == {key: "mine" for key in keys}
    make_cache(like=l2_cache, KEY_PREFIX="").clear()  # FLUSHDB (on every primary of a cluster)
    assert list(behind(l2_cache).scan_iter(match=f"{l2_cache.key_prefix}:*")) == []
    assert eventually(lambda: l2_cache.get_many(keys) == {})


def test_single_key_operations_and_their_scripts(cache):
    """On a cluster the keys span every primary, so each node runs the scripts."""
    raw = behind(cache)
    for key in spread_keys(cache, per_node=2, pattern="op:{}"):
        assert cache.add(key, "first") is True
        assert cache.add(key, "second") is False
        assert cache.get(key) == "first" and cache.has_key(key)
        assert cache.touch(key, 120) is True
        if raw is not None:
            assert 100 < raw.ttl(cache.make_key(key)) <= 120
        cache.set(f"{key}:n", 1)
        assert cache.incr(f"{key}:n", 41) == 42
        cache.set(f"{key}:s", "text")
        with pytest.raises(TypeError):
            cache.incr(f"{key}:s")
        with pytest.raises(ValueError):
            cache.incr(f"{key}:absent")
        assert cache.delete(key) is True and cache.get(key) is None


def test_a_forked_child_uses_the_l2_on_its_own_connections(l2_cache):
    """gunicorn --preload: the parent's client is shared, its sockets are not.

    Right after the fork the child's listener is still connecting, and a read
    in that moment may be a miss (never a wrong value): the child reads again
    for a few seconds, as test_async's forked child does.
    """
    l2_cache.set("fork:before", "parent", 60)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if eventually(lambda: l2_cache.get("fork:before") == "parent"):
                l2_cache.set("fork:child", "child", 60)
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert eventually(lambda: l2_cache.get("fork:child") == "child")


def test_large_values_are_compressed_on_the_wire(l2_cache, make_cache):
    cache = l2_cache
    redis_client = behind(l2_cache)
    text = "the same words again " * 500
    cache.set("big", text)
    stored = redis_client.get(cache.make_key("big"))
    assert len(stored) < len(text) / 4
    assert make_cache(like=cache).get("big") == text


# -- L1 budget --------------------------------------------------------------------


def test_l1_bytes_stay_within_budget_and_match_the_entries(make_cache):
    cache = make_cache(l2=False, max_bytes=256 * 1024)
    for i in range(2000):
        cache.set(f"k{i}", {"id": i, "payload": "x" * 100})
    l1 = cache.stats()["l1"]
    assert 0 < l1["bytes"] <= 256 * 1024
    assert l1["entries"] < 2000 and l1["evictions"] > 0
    assert l1["bytes"] == cache._l1.weighted_size


def test_oversize_value_is_reported_in_l1_only_mode_and_kept_in_l2_mode(make_cache):
    big = "x" * 200_000
    l1_only = make_cache(l2=False, max_bytes=100_000)
    l1_only.set("old", "small")
    assert l1_only.set_many({"big": big, "small": "ok"}) == ["big"]
    l1_only.set("old", big)  # replacing with an oversize value drops the old one
    assert l1_only.get("old") is None
    tiered = make_cache(max_bytes=100_000)
    assert tiered.set_many({"big": big}) == []
    assert tiered.get("big") == big


# -- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "options", "message"),
    [
        ("http://example.com", {}, "not a Redis URL"),
        (None, {"L1": {"MAX_BYTES": -1}}, "MAX_BYTES"),
        (None, {"L1": {"MAX_BYTES": "300MB"}}, "MAX_BYTES"),
        (None, {"PICKLE_FALLBACK": "no"}, "PICKLE_FALLBACK"),
        (None, {"POOL_SIZE": 0}, "POOL_SIZE"),
    ],
)
def test_bad_options_raise_improperly_configured(location, options, message):
    from velro_cache.backends import TieredCache

    cache = TieredCache(location, {"OPTIONS": options})  # constructible, so system checks can run
    for use in (lambda: cache.get("k"), lambda: cache.set("k", 1), lambda: cache.get_many(["k"]), lambda: cache.incr("k")):
        with pytest.raises(ImproperlyConfigured, match=message):
            use()
    cache.close()  # Django closes every cache after a request; that must not raise


# -- stats ----------------------------------------------------------------------------


def test_stats_count_hits_and_misses_per_tier_and_data_type(l2_cache, make_cache):
    writer = l2_cache
    writer.set("gen:1", "a")
    writer.set("auth:user:1", "b")
    reader = make_cache(like=writer)
    reader.get("gen:1")  # L2 hit
    reader.get("gen:1")  # L1 hit
    reader.get("gen:2")  # miss
    reader.get_many(["auth:user:1", "auth:user:2"])  # L2 hit + miss
    snapshot = reader.stats()
    assert snapshot["by_type"]["gen"] == {"l1_hits": 1, "l2_hits": 1, "misses": 1, "corrupt": 0, "requests": 3}
    assert snapshot["by_type"]["auth"]["l2_hits"] == 1 and snapshot["by_type"]["auth"]["misses"] == 1
    assert snapshot["totals"]["hit_rate"] == pytest.approx(3 / 5)
    assert snapshot["latency"]["l2"]["count"] >= 3


def test_stats_lose_no_count_under_threads(make_cache):
    cache = make_cache(l2=False)
    cache.set("hot:1", 1)

    def read(_index):
        for _ in range(5000):
            cache.get("hot:1")

    run_together(4, read)
    assert cache.stats()["by_type"]["hot"]["l1_hits"] == 20000


def test_a_forked_child_does_not_inherit_held_stats_locks(private_redis, tiered_on):
    cache = tiered_on(private_redis.url(7))
    lock = cache._state.stats.latency["l2"]._lock
    held, done = threading.Event(), threading.Event()

    def parent_request_thread():  # a request thread of the parent, inside observe(), at the moment of fork
        with lock:
            held.set()
            assert done.wait(10)

    thread = Background(parent_request_thread)
    assert held.wait(5)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one L2 read, bounded by a watchdog thread
        try:
            worker = threading.Thread(target=lambda: cache.get("fork-probe"), daemon=True)
            worker.start()
            worker.join(3)
            os.write(write_end, b"hung" if worker.is_alive() else b"ok")
        finally:
            os._exit(0)
    done.set()
    thread.join()
    os.close(write_end)
    outcome = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert outcome == b"ok"



def test_close_keeps_the_l1(cache):
    cache.set("k", "v")
    cache.close()
    assert cache.get("k") == "v"


# -- async --------------------------------------------------------------------------


async def test_async_api_round_trips(cache):
    await cache.aset("a", {"x": 1})
    assert await cache.aget("a") == {"x": 1}
    assert await cache.aadd("a", "other") is False
    await cache.aset_many({"b": 2, "c": "three"})
    assert await cache.aget_many(["a", "b", "c", "missing"]) == {"a": {"x": 1}, "b": 2, "c": "three"}
    assert await cache.aincr("b", 3) == 5
    assert await cache.ahas_key("c") is True
    assert await cache.atouch("c", 10) is True
    assert await cache.adelete("c") is True
    assert await cache.aget("c", "gone") == "gone"
    assert await cache.aget_or_set("d", lambda: "made") == "made"
    await cache.aclear()
    assert await cache.aget("a") is None


def test_safestring_stays_safe(cache):
    cache.set("html", mark_safe("<i>x</i>"))
    assert isinstance(cache.get("html"), SafeString)


# -- read-through ---------------------------------------------------------------


def test_get_or_load_runs_the_loader_once_for_concurrent_misses(cache):
    calls = []
    arrivals = Arrivals(8)

    def loader():
        calls.append(1)
        arrivals.wait()  # the flight stays open until every thread has made its call
        time.sleep(0.05)  # a slow database read: the late callers reach the flight's wait
        return {"loaded": True}

    def miss(_index):
        arrivals.arrive()
        return cache.get_or_load("gen:9:meta", loader, timeout=60)

    results = run_together(8, miss)
    assert len(calls) == 1
    assert results == [{"loaded": True}] * 8
    assert cache.get_or_load("gen:9:meta", loader) == {"loaded": True} and len(calls) == 1


def test_get_or_load_caches_none(cache):
    calls = []
    assert cache.get_or_load("maybe", lambda: calls.append(1)) is None
    assert cache.get_or_load("maybe", lambda: calls.append(1)) is None
    assert len(calls) == 1


def test_fetch_authoritative_reads_l2_not_l1_and_says_when_it_cannot(own_redis, tiered_on):
    from velro_cache.exceptions import L2Unavailable

    url = own_redis.url()
    writer, reader = tiered_on(url), tiered_on(url)
    writer.set("auth:ver:user:1", "token-1")
    in_l1 = lambda: reader.get("auth:ver:user:1") == "token-1" and reader.stats()["by_type"]["auth"]["l1_hits"] >= 1  # noqa: E731
    assert eventually(in_l1)  # now in reader's L1
    full = "fault:1:auth:ver:user:1"
    own_redis.client().set(full, writer._serializer.dumps("token-2", key=full))  # behind every L1's back
    assert reader.get("auth:ver:user:1") == "token-1"
    assert reader.fetch_authoritative(["auth:ver:user:1", "absent"]) == {"auth:ver:user:1": "token-2"}
    own_redis.stop()
    with pytest.raises(L2Unavailable):
        for _ in range(5):  # the first failures open the breaker; then it refuses at once
            reader.fetch_authoritative(["auth:ver:user:1"])


def test_get_or_load_computes_a_callable_timeout_only_when_storing(cache):
    computed = []

    def timeout():
        computed.append(1)
        return 60

    assert cache.get_or_load("k", lambda: "v", timeout=timeout) == "v"
    assert cache.get_or_load("k", lambda: "other", timeout=timeout) == "v"
    assert computed == [1]
