"""Adaptive W-TinyLFU admission and eviction for a byte-weighted cache (after Caffeine).

Plain LRU loses its working set to every scan and to every burst of one-hit
wonders; plain LFU cannot follow a workload whose hot set moves. W-TinyLFU keeps
both: new entries land in a small LRU *window* (recency), and an entry leaving the
window must beat the main space's next victim on estimated frequency
(:class:`~velro_cache.tiers.sketch.FrequencySketch`) to be admitted. The main
space is a segmented LRU: *probation* (seen once in main) and *protected*
(re-used there, about 80 % of main).

How much of the budget the window gets is tuned online, as in Caffeine: the
window moves by a step of 6.25 % of the budget toward a new target, and the rest
of the way once the next decision names the same target; it may take the whole
budget (plain LRU, where a hot set keeps moving), where Caffeine stops at about
80 %. Caffeine decides the direction by comparing the hit rate of one sample period (10x capacity) with the
previous one; that compares two different stretches of the workload, and on a
drifting trace (OLTP) the drift drowns the effect of the window, so the climb
became a random walk (60.7 to 67.1 % at capacity 18,688 for small changes of the
sample length, against LRU's 66.5). Here the direction comes instead from
:class:`WindowTuner`: a few shadow caches with fixed window sizes replay a
hash-sampled subset of the keys (SHARDS-style spatial sampling), so every window
size is measured on the *same* requests and the climber heads for the best one.

Simplification versus Caffeine, documented because it only matters for mixed
weights: once the entries that just left the window have all been judged, further
victims are taken from the head of probation without a duel, instead of duelling
older probation entries against each other.

Nothing here is thread-safe; the store calls it under its lock.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .sketch import FrequencySketch

__all__ = ["Entry", "LruEviction", "WTinyLfuEviction", "WindowTuner", "WINDOW", "PROBATION", "PROTECTED"]

WINDOW, PROBATION, PROTECTED = range(3)
REGION_NAMES = ("window", "probation", "protected")

PERCENT_MAIN = 0.99  # the window starts at 1 % of the budget, as in Caffeine
PERCENT_MAIN_PROTECTED = 0.80
QUEUE_TRANSFER_THRESHOLD = 1000  # bounds the work of one maintenance pass
ADMIT_HASHDOS_THRESHOLD = 6  # a warm candidate is sometimes admitted so collisions cannot pin a victim
STEP_PERCENT = 0.0625  # the first move toward a new window target, as a fraction of the budget

_MASK64 = 0xFFFFFFFFFFFFFFFF
_SAMPLE_MUL = 0xD6E8FEB86659FD93  # differs from the sketch's multiplier: sampling stays independent


class Entry:
    """One cached value and its bookkeeping; the store's dict maps keys to these."""

    __slots__ = ("key", "payload", "weight", "expires_at", "region")

    def __init__(self, key: Any, payload: object, weight: int, expires_at: float | None) -> None:
        self.key = key
        self.payload = payload
        self.weight = weight
        self.expires_at = expires_at
        self.region = WINDOW


def _first(region: OrderedDict[Any, Entry]) -> Entry:
    return region[next(iter(region))]


class _Segments:
    """Window + SLRU main with TinyLFU admission; no adaptation.

    Shared by the real eviction and by the shadow caches of :class:`WindowTuner`,
    so the shadows behave exactly like the cache they stand in for.
    """

    def __init__(self, maximum: int, sketch: FrequencySketch, window_fraction: float, seed: int) -> None:
        self.maximum = maximum
        self.window_max = max(1, int(window_fraction * maximum))
        self.protected_max = int(PERCENT_MAIN_PROTECTED * (maximum - self.window_max))
        self.regions: tuple[OrderedDict[Any, Entry], ...] = tuple(OrderedDict() for _ in REGION_NAMES)
        self.window, self.probation, self.protected = self.regions
        self.weighted_size = 0
        self.window_size = 0
        self.protected_size = 0
        self.entries = 0
        self.sketch = sketch
        self._randbits = random.Random(seed).getrandbits

    # -- bookkeeping -------------------------------------------------------

    def _add_size(self, region: int, delta: int) -> None:
        if region == WINDOW:
            self.window_size += delta
        elif region == PROTECTED:
            self.protected_size += delta

    def _place(self, entry: Entry, region: int) -> None:
        entry.region = region
        self.regions[region][entry.key] = entry
        self._add_size(region, entry.weight)

    def _unlink(self, entry: Entry) -> None:
        del self.regions[entry.region][entry.key]
        self._add_size(entry.region, -entry.weight)

    def _insert(self, entry: Entry) -> None:
        self.weighted_size += entry.weight
        self.entries += 1
        self._place(entry, WINDOW)

    def _reorder(self, entry: Entry) -> None:
        """Recency within the entry's region; a re-use in probation earns protection."""
        if entry.region == PROBATION:
            self._promote(entry)
        else:
            self.regions[entry.region].move_to_end(entry.key)

    def _promote(self, entry: Entry) -> None:
        """Protected overflow is demoted later, during maintenance (as Caffeine)."""
        if entry.weight > self.protected_max:
            self.probation.move_to_end(entry.key)
            return
        del self.probation[entry.key]
        self._place(entry, PROTECTED)

    def on_remove(self, entry: Entry) -> None:
        self._unlink(entry)
        self.weighted_size -= entry.weight
        self.entries -= 1

    def clear(self) -> None:
        for region in self.regions:
            region.clear()
        self.weighted_size = self.window_size = self.protected_size = self.entries = 0

    # -- eviction -------------------------------------------------------------

    def evict(self) -> list[Entry]:
        """Bring the weighted size within the maximum; returns the entries removed."""
        candidates = self._evict_from_window()
        evicted: list[Entry] = []
        if self.weighted_size > self.maximum:
            self._evict_from_main(candidates, evicted)
        return evicted

    def _evict_from_window(self) -> list[Entry]:
        """Move the window's overflow to probation's tail; they are the admission candidates."""
        window = self.window
        probation = self.probation
        candidates: list[Entry] = []
        while self.window_size > self.window_max and window:
            key, entry = window.popitem(last=False)
            self.window_size -= entry.weight
            entry.region = PROBATION
            probation[key] = entry
            candidates.append(entry)
        return candidates

    def _next_victim(self) -> Entry | None:
        for region in (self.probation, self.protected, self.window):
            if region:
                return _first(region)
        return None

    def _evict_from_main(self, candidates: list[Entry], evicted: list[Entry]) -> None:
        """Duel the newest candidates against probation's LRU head; the less frequent goes.

        Candidates sit at probation's tail in arrival order, so the victim (the
        head) can only be a candidate once every older entry is gone; it is then
        the oldest remaining candidate.
        """
        first, last = 0, len(candidates) - 1
        while self.weighted_size > self.maximum:
            victim = self._next_victim()
            if victim is None:
                return
            if first > last:
                self._drop(victim, evicted)
                continue
            candidate = candidates[last]
            if candidate is victim:
                self._drop(victim, evicted)
                last -= 1
            elif self._admit(candidate.key, victim.key):
                if victim is candidates[first]:
                    first += 1
                self._drop(victim, evicted)
                last -= 1
            else:
                self._drop(candidate, evicted)
                last -= 1

    def _admit(self, candidate_key: Any, victim_key: Any) -> bool:
        sketch = self.sketch
        candidate_freq = sketch.frequency(candidate_key)
        if candidate_freq > sketch.frequency(victim_key):
            return True
        if candidate_freq >= ADMIT_HASHDOS_THRESHOLD:
            return self._randbits(7) == 0
        return False

    def _drop(self, entry: Entry, evicted: list[Entry]) -> None:
        self.on_remove(entry)
        evicted.append(entry)

    # -- resizing the window ------------------------------------------------------

    def _demote_from_protected(self) -> None:
        """Protected overflow goes back to probation's tail, LRU first."""
        protected = self.protected
        for _ in range(QUEUE_TRANSFER_THRESHOLD):
            if self.protected_size <= self.protected_max or not protected:
                return
            entry = _first(protected)
            self._unlink(entry)
            self._place(entry, PROBATION)

    def _increase_window(self, amount: int) -> int:
        """Take quota from protected, then from probation's share, and move main's LRU entries into the window.

        Caffeine stops where protected's quota runs out (a window of about 80 %
        of the budget); here the window may grow to the whole budget, which is
        plain LRU, because on a trace whose hot set keeps moving (new keys that
        are never frequent yet) every entry main keeps instead of a recent one
        is a loss, and LRU is what wins there. Returns the part of ``amount``
        not applied yet (entries too heavy for the quota left, or the per-pass
        transfer bound); the caller retries it later.
        """
        quota = min(amount, self.maximum - self.window_max)
        if quota <= 0:
            return 0
        from_protected = min(quota, self.protected_max)
        self.protected_max -= from_protected
        self.window_max += quota
        self._demote_from_protected()

        def main_lru(quota: int) -> OrderedDict[Any, Entry]:
            """Probation's LRU entry while it fits, else protected's."""
            probation = self.probation
            return probation if probation and quota >= _first(probation).weight else self.protected

        quota = self._move_lru(quota, main_lru, WINDOW)
        self.protected_max += min(quota, from_protected)
        self.window_max -= quota
        return quota

    def _decrease_window(self, amount: int) -> int:
        """Give window quota to protected (up to its share of main) and move the window's LRU entries to probation."""
        if self.window_max <= 1:
            return 0
        quota = min(amount, max(0, self.window_max - 1))
        self.window_max -= quota
        window = self.window
        left = self._move_lru(quota, lambda _: window, PROBATION)
        self.window_max += left
        share = int(PERCENT_MAIN_PROTECTED * (self.maximum - self.window_max))
        self.protected_max = min(self.protected_max + quota - left, share)
        return left

    def _move_lru(self, quota: int, source_for: Callable[[int], OrderedDict[Any, Entry]], region: int) -> int:
        """Move LRU entries of ``source_for(quota left)`` into ``region`` while they fit in ``quota``.

        At most QUEUE_TRANSFER_THRESHOLD entries per pass; returns the quota left.
        """
        for _ in range(QUEUE_TRANSFER_THRESHOLD):
            source = source_for(quota)
            if not source:
                break
            entry = _first(source)
            if quota < entry.weight:
                break
            quota -= entry.weight
            self._unlink(entry)
            self._place(entry, region)
        return quota


class _ShadowCache(_Segments):
    """A keys-only replica with a fixed window, fed a sample of the requests."""

    def __init__(self, maximum: int, sketch: FrequencySketch, window_fraction: float, seed: int) -> None:
        super().__init__(maximum, sketch, window_fraction, seed)
        self.window_fraction = window_fraction
        self.index: dict[Any, Entry] = {}
        self.hits = 0

    def request(self, key: Any, weight: int) -> None:
        """Read-through: a hit reorders, a miss inserts and evicts."""
        entry = self.index.get(key)
        if entry is not None:
            self.hits += 1
            self._reorder(entry)
            self._demote_from_protected()
            return
        entry = Entry(key, None, weight, None)
        self.index[key] = entry
        self._insert(entry)
        index = self.index
        for victim in self.evict():
            del index[victim.key]


class WindowTuner:
    """Scores fixed window sizes on the same sampled requests; the climber heads for the best.

    Keys are sampled by hash at rate 1/2**b so that each shadow cache holds about
    ``MIN_SHADOW_ENTRIES`` or more entries at 1/2**b of the budget (SHARDS: the
    miss-ratio curve of a spatially sampled trace at a scaled-down size tracks the
    full one). Scores are decayed by half each period so they follow phase shifts.
    Shadows read the real sketch, so they cost only their queues.
    """

    FRACTIONS = (0.01, 0.04, 0.1, 0.2, 0.4, 0.7, 1.0)  # 1.0: all window, plain LRU
    MIN_SHADOW_ENTRIES = 256
    PERIOD_FACTOR = 2  # sampled requests per decision, in multiples of a shadow's capacity
    MARGIN = 0.002  # a challenger must beat the current best by this hit-rate margin

    def __init__(self, maximum: int, capacity_entries: int, sketch: FrequencySketch) -> None:
        bits = max(0, (capacity_entries // self.MIN_SHADOW_ENTRIES).bit_length() - 1)
        self.sample_bits = bits
        self.shift = 64 - bits
        shadow_max = max(1, maximum >> bits)
        self.shadows = [_ShadowCache(shadow_max, sketch, f, seed=i) for i, f in enumerate(self.FRACTIONS)]
        self.period = max(64, self.PERIOD_FACTOR * max(1, capacity_entries >> bits))
        self.requests = 0
        self.scores = [0.0] * len(self.FRACTIONS)
        self.best = 0
        self.decisions = 0

    def sampled(self, key: Any) -> bool:
        return ((hash(key) * _SAMPLE_MUL) & _MASK64) >> self.shift == 0

    def record(self, key: Any, weight: int) -> None:
        for shadow in self.shadows:
            shadow.request(key, weight)
        self.requests += 1

    def decide(self) -> float | None:
        """The best window fraction once a period is complete, else None."""
        if self.requests < self.period:
            return None
        scores = self.scores
        for i, shadow in enumerate(self.shadows):
            scores[i] = scores[i] / 2 + shadow.hits / self.requests
            shadow.hits = 0
        self.requests = 0
        self.decisions += 1
        leader = max(range(len(scores)), key=scores.__getitem__)
        if scores[leader] > scores[self.best] + self.MARGIN:
            self.best = leader
        return self.FRACTIONS[self.best]

    def stats(self) -> dict[str, Any]:
        return {
            "tuner_sample_rate": 1 / (1 << self.sample_bits),
            "tuner_decisions": self.decisions,
            "tuner_best_fraction": self.FRACTIONS[self.best],
            "tuner_scores": {f: round(s / 2, 4) for f, s in zip(self.FRACTIONS, self.scores)},
        }


class WTinyLfuEviction(_Segments):
    """What the L1 keeps and what it evicts: frequency recording and the adaptive window."""

    def __init__(self, maximum: int, *, seed: int = 0x5EED, adaptive: bool = True) -> None:
        super().__init__(maximum, FrequencySketch(), 1 - PERCENT_MAIN, seed)
        self.adaptive = adaptive
        self.tuner: WindowTuner | None = None
        self.target_window = self.window_max
        self.step = max(1, int(STEP_PERCENT * maximum))  # the first move toward a new target
        self.adjustment = 0  # window change decided but not applied yet

    def _on_growth(self) -> None:
        """Size the sketch and start tuning once half full (Caffeine's lazy initialisation).

        With byte weights the capacity in entries is unknown, so it is estimated
        from the mean weight, and re-estimated as the cache grows.
        """
        size = self.weighted_size
        if size * 2 < self.maximum:
            return
        capacity = self.entries * self.maximum // max(size, 1)
        self.sketch.ensure_capacity(capacity)
        if self.tuner is None and self.adaptive:
            self.tuner = WindowTuner(self.maximum, capacity, self.sketch)

    # -- events from the store --------------------------------------------

    def on_add(self, entry: Entry) -> None:
        """A new key enters the window."""
        self.sketch.increment(entry.key)
        self._insert(entry)
        self._sample(entry)
        self._on_growth()

    def on_add_many(self, entries: list[Entry]) -> None:
        """New keys entering the window together (a batch promoted from L2), in order.

        Same effect as :meth:`on_add` per entry, with the lookups hoisted and
        the sizes summed once, because a get_many of first reads admits a
        hundred at a time; the growth check runs once, after the batch.
        """
        increment = self.sketch.increment
        window = self.window
        tuner = self.tuner
        shift = 0 if tuner is None else tuner.shift  # tuner.sampled, inlined below
        added = 0
        for entry in entries:
            key = entry.key
            increment(key)
            entry.region = WINDOW
            window[key] = entry
            added += entry.weight
            if tuner is not None and ((hash(key) * _SAMPLE_MUL) & _MASK64) >> shift == 0:
                tuner.record(key, entry.weight)
        self.weighted_size += added
        self.window_size += added
        self.entries += len(entries)
        self._on_growth()

    def on_access(self, entry: Entry) -> None:
        """A hit: bump its frequency and its recency within its region."""
        self.sketch.increment(entry.key)
        self._reorder(entry)
        self._sample(entry)

    def _sample(self, entry: Entry) -> None:
        """Feed the tuner's shadow caches, when this key is in their sample (inlined in on_reads)."""
        tuner = self.tuner
        if tuner is not None and tuner.sampled(entry.key):
            tuner.record(entry.key, entry.weight)

    def on_reads(self, keys: list[Any], data: dict[Any, Entry]) -> None:
        """A batch of buffered hits, in order; keys no longer held are skipped.

        Same effect as :meth:`on_access` per key, in one loop with the lookups
        hoisted, because this runs once for every cache hit.
        """
        increment = self.sketch.increment
        regions = self.regions
        tuner = self.tuner
        for key in keys:
            entry = data.get(key)
            if entry is None:
                continue
            increment(key)
            region = entry.region
            if region == PROBATION:
                self._promote(entry)
            else:
                regions[region].move_to_end(key)
            if tuner is not None and tuner.sampled(key):
                tuner.record(key, entry.weight)

    def on_replace(self, old: Entry, new: Entry) -> None:
        """A new value for a held key keeps its place and history and counts as a use."""
        self.weighted_size += new.weight - old.weight
        new.region = old.region
        self.regions[old.region][old.key] = new
        self._add_size(old.region, new.weight - old.weight)
        self.on_access(new)
        self._on_growth()

    # -- adaptation -------------------------------------------------------------

    def climb(self) -> None:
        """One maintenance step: climb toward the tuner's best window, keep protected in quota."""
        if self.tuner is not None:
            fraction = self.tuner.decide()
            if fraction is not None:
                self._step_toward(max(1, int(fraction * self.maximum)))
        self._demote_from_protected()
        if self.adjustment > 0:
            self.adjustment = self._increase_window(self.adjustment)
        elif self.adjustment < 0:
            self.adjustment = -self._decrease_window(-self.adjustment)

    def _step_toward(self, target: int) -> None:
        """One step toward a new target; the whole way once a second decision in a row confirms it.

        The tuner measures every window size on the same requests, so a best
        named twice running is not noise: creeping there by decaying steps
        (Caffeine's climb) took about 200,000 requests on a drifting trace at
        capacity 5,000 (6 points below LRU over the run); going at once takes
        one period. A target named once moves one step, so a single noisy
        period (the glimpse trace, 6,000 requests) cannot swing the window.
        """
        confirmed = target == self.target_window
        self.target_window = target
        gap = target - (self.window_max + self.adjustment)
        move = abs(gap) if confirmed else min(abs(gap), self.step)
        self.adjustment += move if gap > 0 else -move

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "maximum": self.maximum,
            "weighted_size": self.weighted_size,
            "entries": self.entries,
            "window_max": self.window_max,
            "window_size": self.window_size,
            "window_target": self.target_window,
            "protected_max": self.protected_max,
            "protected_size": self.protected_size,
            "probation_size": self.weighted_size - self.window_size - self.protected_size,
            "sketch_capacity": self.sketch.capacity,
            "sketch_sample_size": self.sketch.sample_size,
            "sketch_resets": self.sketch.resets,
            "climber_step": self.step,
            "climber_pending_adjustment": self.adjustment,
        }
        if self.tuner is not None:
            stats.update(self.tuner.stats())
        return stats


class LruEviction:
    """Plain LRU, what the L1 does with the eviction-policy switch off (``velro_cache.switches``).

    The same events as :class:`WTinyLfuEviction`, so the store drives either
    one: every entry sits in one recency order (reported as the window), a
    hit moves it to the end, and the least recently used goes first. No
    sketch, no admission: the baseline the W-TinyLFU policy is measured
    against, available in production to roll back to.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.order: OrderedDict[Any, Entry] = OrderedDict()
        self.regions: tuple[OrderedDict[Any, Entry], ...] = (self.order, OrderedDict(), OrderedDict())
        self.weighted_size = 0

    def on_add(self, entry: Entry) -> None:
        entry.region = WINDOW
        self.order[entry.key] = entry
        self.weighted_size += entry.weight

    def on_add_many(self, entries: list[Entry]) -> None:
        """A batch promoted from L2, in order: :meth:`on_add` for each."""
        for entry in entries:
            self.on_add(entry)

    def on_access(self, entry: Entry) -> None:
        self.order.move_to_end(entry.key)

    def on_reads(self, keys: list[Any], data: dict[Any, Entry]) -> None:
        order = self.order
        for key in keys:
            if key in order:
                order.move_to_end(key)

    def on_replace(self, old: Entry, new: Entry) -> None:
        self.weighted_size += new.weight - old.weight
        new.region = WINDOW
        self.order[old.key] = new
        self.order.move_to_end(old.key)

    def on_remove(self, entry: Entry) -> None:
        del self.order[entry.key]
        self.weighted_size -= entry.weight

    def clear(self) -> None:
        self.order.clear()
        self.weighted_size = 0

    def evict(self) -> list[Entry]:
        evicted: list[Entry] = []
        order = self.order
        while self.weighted_size > self.maximum and order:
            _, entry = order.popitem(last=False)
            self.weighted_size -= entry.weight
            evicted.append(entry)
        return evicted

    def climb(self) -> None:
        """Nothing adapts in plain LRU."""

    def stats(self) -> dict[str, Any]:
        return {"policy": "lru", "maximum": self.maximum, "weighted_size": self.weighted_size, "entries": len(self.order)}
