"""Behaviour of the L1 store that the backend and its users rely on.

Runs without Django settings: ``pytest tests/test_memory_store.py -p no:django``.
No test asserts on timing; time is an injected clock.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from itertools import accumulate

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Background, run_together
from velro_cache.tiers.memory import MISSING, MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def read_through(store: MemoryStore, key: str, weight: int = 1) -> bool:
    """Get, and on a miss set: how the backend fills L1. Returns True on a hit."""
    if store.get(key) is MISSING:
        store.set(key, f"value-{key}", weight, None)
        return False
    return True


def held_regions(store: MemoryStore) -> int:
    return sum(store.eviction_stats()["regions"].values())


# -- the byte budget ----------------------------------------------------------------

KEYS = st.sampled_from([f"k{i}" for i in range(40)])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers(1, 120), st.one_of(st.none(), st.integers(1, 30))),
        st.tuples(st.just("add"), KEYS, st.integers(1, 120), st.one_of(st.none(), st.integers(1, 30))),
        # A batch promoted together (get_many's first reads), a key possibly twice.
        st.tuples(st.just("set_many"), st.lists(st.tuples(KEYS, st.integers(1, 120), st.one_of(st.none(), st.integers(1, 30))), max_size=12)),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("touch"), KEYS, st.one_of(st.none(), st.integers(1, 30))),
        st.tuples(st.just("tick"), st.integers(1, 20)),
        st.tuples(st.just("maintenance")),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, max_bytes=st.integers(10, 400))
def test_budget_and_values_hold_under_random_operations(ops: list[tuple], max_bytes: int) -> None:
    clock = FakeClock()
    store = MemoryStore(max_bytes, clock=clock)
    model: dict[str, tuple[str, int, float | None]] = {}  # last value written per key
    serial = 0
    for op in ops:
        name = op[0]
        if name in ("set", "add"):
            _, key, weight, ttl = op
            serial += 1
            payload = f"{key}#{serial}"
            expires_at = None if ttl is None else clock.now + ttl
            was_live = key in store
            stored = getattr(store, name)(key, payload, weight, expires_at)
            if weight > max_bytes // 2:
                assert stored is False
            if name == "add" and was_live:
                assert stored is False
            if stored:
                model[key] = (payload, weight, expires_at)
            elif name == "set" or not was_live:
                model.pop(key, None)
        elif name == "set_many":
            items = []
            for key, weight, ttl in op[1]:
                serial += 1
                items.append((key, f"{key}#{serial}", weight, None if ttl is None else clock.now + ttl))
            stored = store.set_many(items)
            last = {item[0]: item for item in items}
            assert sorted(stored) == sorted(key for key, (_, _, weight, _) in last.items() if weight <= max_bytes // 2)
            for key, payload, weight, expires_at in last.values():
                if key in stored:
                    model[key] = (payload, weight, expires_at)
                else:
                    model.pop(key, None)
        elif name == "get":
            value = store.get(op[1])
            if value is not MISSING:
                payload, _, expires_at = model[op[1]]
                assert value == payload  # never a stale or foreign value
                assert expires_at is None or expires_at > clock.now
        elif name == "delete":
            store.delete(op[1])
            model.pop(op[1], None)
        elif name == "touch":
            if store.touch(op[1], None if op[2] is None else clock.now + op[2]):
                payload, weight, _ = model[op[1]]
                model[op[1]] = (payload, weight, None if op[2] is None else clock.now + op[2])
        elif name == "tick":
            clock.advance(op[1])
        else:
            store.maintenance()

        assert store.weighted_size <= max_bytes
        count = len(store)  # also frees expired entries
        keys = store.keys()
        assert count == len(keys) == held_regions(store)
        assert store.weighted_size == sum(model[key][1] for key in keys)


def test_an_entry_heavier_than_half_the_budget_is_rejected_and_drops_the_old_value() -> None:
    store = MemoryStore(1000)
    assert store.set("small", "v1", 100, None) is True
    assert store.set("small", "v2", 501, None) is False
    assert store.get("small") is MISSING
    assert store.weighted_size == 0
    assert store.set("edge", "v", 500, None) is True
    assert store.add("huge", "v", 10_000, None) is False


def test_a_batch_holds_what_the_same_sets_one_by_one_hold() -> None:
    """set_many (a get_many's promotion): with room for all, the same keys, values and weights as sequential sets."""
    items = [(f"k{i % 70}", f"v{i}", 1 + i % 13, None) for i in range(200)]
    one_by_one, batched = MemoryStore(100_000), MemoryStore(100_000)
    for key, payload, weight, expires_at in items:
        one_by_one.set(key, payload, weight, expires_at)
    for start in range(0, len(items), 50):
        batched.set_many(items[start : start + 50])
    assert sorted(batched.keys()) == sorted(one_by_one.keys())
    assert {key: batched.get(key) for key in batched.keys()} == {key: one_by_one.get(key) for key in one_by_one.keys()}
    assert batched.weighted_size == one_by_one.weighted_size
    assert len(batched) == held_regions(batched)


def test_weights_below_one_still_count() -> None:
    store = MemoryStore(10)
    for i in range(50):
        store.set(f"k{i}", i, 0, None)
    assert store.weighted_size == len(store) <= 10


def test_replacing_a_value_updates_its_weight() -> None:
    store = MemoryStore(1000)
    store.set("k", "a", 100, None)
    store.set("k", "b", 300, None)
    assert store.get("k") == "b"
    assert store.weighted_size == 300
    assert len(store) == 1


# -- TTL ----------------------------------------------------------------------------


def test_entries_expire_at_their_deadline() -> None:
    clock = FakeClock()
    store = MemoryStore(1000, clock=clock)
    store.set("k", "v", 10, clock.now + 5)
    clock.advance(4.9)
    assert store.get("k") == "v"
    assert store.get_with_expiry("k") == ("v", clock.now + 0.1)
    assert "k" in store
    clock.advance(0.1)
    assert store.get("k") is MISSING
    assert store.get_with_expiry("k") is None
    assert "k" not in store
    assert store.delete("k") is False


def test_expired_entries_stop_holding_budget_without_being_read() -> None:
    clock = FakeClock()
    events: list[tuple[str, str]] = []
    store = MemoryStore(1000, clock=clock, on_evict=lambda key, reason: events.append((key, reason)))
    for i in range(20):
        store.set(f"t{i}", i, 10, clock.now + 60)
    store.set("forever", "v", 10, None)
    clock.advance(61)
    store.maintenance()
    assert store.weighted_size == 10
    assert store.keys() == ["forever"]
    assert store.expirations == 20
    assert sorted(events) == sorted((f"t{i}", "expired") for i in range(20))


def test_add_replaces_only_an_absent_or_expired_key() -> None:
    clock = FakeClock()
    store = MemoryStore(1000, clock=clock)
    assert store.add("k", "first", 1, clock.now + 10) is True
    assert store.add("k", "second", 1, None) is False
    assert store.get("k") == "first"
    clock.advance(10)
    assert store.add("k", "third", 1, None) is True
    assert store.get("k") == "third"


def test_touch_moves_the_deadline() -> None:
    clock = FakeClock()
    store = MemoryStore(1000, clock=clock)
    store.set("k", "v", 1, clock.now + 5)
    assert store.touch("k", clock.now + 100) is True
    clock.advance(50)
    assert store.get("k") == "v"
    assert store.touch("k", None) is True
    clock.advance(10_000)
    assert store.get("k") == "v"
    assert store.touch("missing", None) is False
    store.set("short", "v", 1, clock.now + 1)
    clock.advance(1)
    assert store.touch("short", clock.now + 100) is False
    assert store.get("short") is MISSING


def test_contains_does_not_count_as_a_use() -> None:
    store = MemoryStore(1000)
    store.set("k", "v", 1, None)
    for _ in range(1000):
        assert "k" in store
    store.maintenance()
    assert store.eviction_stats()["reads_buffered"] == 0
    assert store._eviction.sketch.frequency("k") <= 1


def test_clear_empties_the_store() -> None:
    store = MemoryStore(1000)
    for i in range(50):
        store.set(f"k{i}", i, 7, None)
    store.clear()
    assert len(store) == 0
    assert store.weighted_size == 0
    assert store.get("k1") is MISSING
    store.set("again", 1, 7, None)
    assert store.get("again") == 1


# -- eviction policy ---------------------------------------------------------------


def test_a_frequently_read_set_survives_scans_that_flush_lru() -> None:
    """Between two reads of the hot set come more one-hit keys than the cache holds."""
    capacity = 100
    hot = [f"hot{i}" for i in range(20)]
    warmup = [key for _ in range(10) for key in hot]
    store = MemoryStore(capacity)
    lru: OrderedDict[str, bool] = OrderedDict()

    def lru_read(key: str) -> bool:
        if key in lru:
            lru.move_to_end(key)
            return True
        lru[key] = True
        if len(lru) > capacity:
            lru.popitem(last=False)
        return False

    for key in warmup:
        read_through(store, key)
        lru_read(key)
    hot_hits = {"l1": 0, "lru": 0}
    for chunk in range(60):
        for i in range(150):
            key = f"scan{chunk}-{i}"
            read_through(store, key)
            lru_read(key)
        for key in hot:
            hot_hits["l1"] += read_through(store, key)
            hot_hits["lru"] += lru_read(key)

    reads = 60 * len(hot)
    assert hot_hits["lru"] == 0
    assert hot_hits["l1"] >= 0.95 * reads
    store.maintenance()
    assert all(key in store for key in hot)


def test_on_evict_reports_size_evictions() -> None:
    events: list[tuple[str, str]] = []
    store = MemoryStore(50, on_evict=lambda key, reason: events.append((key, reason)))
    for i in range(200):
        store.set(f"k{i}", i, 1, None)
    assert store.evictions == 150 == len(events)
    assert {reason for _, reason in events} == {"size"}
    assert all(key not in store for key, _ in events)


def test_a_failing_eviction_listener_does_not_fail_the_write() -> None:
    def listener(key: str, reason: str) -> None:
        raise RuntimeError("boom")

    store = MemoryStore(5, on_evict=listener)
    for i in range(20):
        assert store.set(f"k{i}", i, 1, None) is True
    assert store.weighted_size <= 5


def _zipf(rng: random.Random, keys: list[str], alpha: float, n: int) -> list[str]:
    weights = list(accumulate(1.0 / (rank**alpha) for rank in range(1, len(keys) + 1)))
    return rng.choices(keys, cum_weights=weights, k=n)


def _recency_trace(rng: random.Random, n: int, prefix: str) -> list[str]:
    """Every key is used a few times within a short span, then never again (LRU's best case)."""
    trace: list[str] = []
    recent: list[str] = []
    serial = 0
    while len(trace) < n:
        if recent and rng.random() < 0.6:
            trace.append(recent[-rng.randrange(1, min(len(recent), 600) + 1)])
        else:
            serial += 1
            recent.append(f"{prefix}{serial}")
            trace.append(recent[-1])
    return trace


def test_the_window_grows_for_recency_and_shrinks_for_frequency() -> None:
    rng = random.Random(7)
    capacity = 2000
    store = MemoryStore(capacity)
    initial = store.eviction_stats()["window_max"]

    for key in _recency_trace(rng, 120_000, "r"):
        read_through(store, key)
    store.maintenance()
    grown = store.eviction_stats()["window_max"]
    assert grown > 5 * initial

    hot_keys = [f"z{i}" for i in range(20_000)]
    for key in _zipf(rng, hot_keys, 0.9, 150_000):
        read_through(store, key)
    store.maintenance()
    stats = store.eviction_stats()
    assert stats["window_max"] < grown / 2
    assert stats["tuner_decisions"] > 0


def test_on_a_moving_hot_set_the_window_takes_the_whole_budget_and_keeps_up_with_lru() -> None:
    """A timeline-like trace (new keys keep arriving, old ones never return): LRU's ground, never more than 1 point below it."""
    rng = random.Random(4)
    capacity = 5000
    trace = [int(i * 0.05) + int(abs(rng.gauss(0, 2000))) for i in range(300_000)]
    store = MemoryStore(capacity)
    hits = sum(read_through(store, key) for key in trace)
    lru: OrderedDict[int, None] = OrderedDict()
    lru_hits = 0
    for key in trace:
        if key in lru:
            lru.move_to_end(key)
            lru_hits += 1
        else:
            lru[key] = None
            if len(lru) > capacity:
                lru.popitem(last=False)
    assert store.eviction_stats()["window_max"] == capacity  # Caffeine's climb stops near 80 %
    assert 100 * (hits - lru_hits) / len(trace) > -1.0


# -- concurrency --------------------------------------------------------------------


def _weight_of(key: str) -> int:
    return int(key[1:]) % 37 + 1


def test_threads_sharing_a_store_keep_the_invariants() -> None:
    store = MemoryStore(3000)

    def worker(seed: int) -> None:  # an exception here fails the test (run_together re-raises it)
        rng = random.Random(seed)
        for _ in range(6000):
            key = f"k{rng.randrange(400)}"
            roll = rng.random()
            if roll < 0.6:
                value = store.get(key)
                assert value is MISSING or value == f"value-{key}"
            elif roll < 0.9:
                store.set(key, f"value-{key}", _weight_of(key), None)
            elif roll < 0.97:
                store.delete(key)
            else:
                store.add(key, f"value-{key}", _weight_of(key), None)

    run_together(8, worker)
    store.maintenance()
    keys = store.keys()
    assert store.weighted_size == sum(_weight_of(key) for key in keys) <= 3000
    assert len(store) == len(keys) == held_regions(store)


def test_add_is_atomic_across_threads() -> None:
    for attempt in range(20):
        store = MemoryStore(1000)
        results = dict(enumerate(run_together(8, lambda i, store=store: store.add("lock", f"owner-{i}", 1, None))))
        winners = [i for i, won in results.items() if won]
        assert len(winners) == 1, (attempt, results)
        assert store.get("lock") == f"owner-{winners[0]}"


def test_readers_do_not_wait_for_a_writer_holding_the_lock() -> None:
    store = MemoryStore(1000)
    store.set("k", "v", 1, None)
    held = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with store.lock:
            held.set()
            assert release.wait(30)

    def reader(out: list[object]) -> None:
        out.extend(store.get("k") for _ in range(5000))  # several read-buffer drains

    blocker = Background(writer)
    assert held.wait(30)
    seen: list[object] = []
    thread = Background(lambda: reader(seen))
    try:
        thread.join(30)  # raises if get() is still blocked on the store lock
    finally:
        release.set()
        blocker.join()
    assert seen == ["v"] * 5000


# -- the hit-rate benchmark ---------------------------------------------------------


def write_lirs_trace(path, keys) -> None:
    """A trace in the LIRS format the shared traces use: one key a line, ``*`` markers between runs."""
    import gzip

    with gzip.open(path, "wt") as out:
        for index, key in enumerate(keys):
            out.write("*\n" if index % 500 == 0 else "")
            out.write(f"{key}\n")


def test_hit_rate_benchmark_quick_run(tmp_path) -> None:
    """The quick run replays the LIRS traces it names; small ones of our own, so no clone lacks them."""
    from benchmarks import hit_rate

    rng = random.Random(7)
    traces = tmp_path / "traces"
    traces.mkdir()
    for name in ("gli", "multi2"):
        write_lirs_trace(traces / f"{name}.lirs.gz", [int(rng.paretovariate(1.2)) for _ in range(5000)])
    assert hit_rate.main(["--quick", "--jobs", "1", "--traces", str(traces), "--out", str(tmp_path)]) == 0
    report = (tmp_path / "hit_rate.md").read_text()
    assert "| multi2 | skewed | 100 |" in report
    assert "| gli | other | 250 |" in report
    assert (tmp_path / "hit_rate.json").exists()


def test_rewriting_keys_with_ttls_does_not_grow_the_deadline_queue() -> None:
    clock = FakeClock()
    store = MemoryStore(10_000, clock=clock)
    for i in range(20_000):
        store.set(f"k{i % 10}", i, 1, clock.now + 3600)
    assert len(store._expiry) <= 2 * len(store) + 1024  # stale deadlines are compacted away
