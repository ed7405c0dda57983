"""Per-process cache statistics, cheap enough to update on every hit.

Counters are ``itertools.count`` objects: ``next()`` on one is a single C call
and atomic under the GIL, so concurrent threads never lose an increment and the
hit path takes no lock. Read latency is sampled (every L2 read, one in
``L1_SAMPLE`` L1 reads; writes are not timed) into fixed log-spaced buckets,
the shape Prometheus histograms want.
"""

from __future__ import annotations

import itertools
import threading
from bisect import bisect_left
from typing import Any

from .keys import data_type_segment

TIERS = ("l1", "l2")
MAX_DATA_TYPES = 64
OTHER_TYPE = "other"
L1_SAMPLE = 64  # power of two: sampled with a bit mask

# Upper bounds in seconds, from 1 us to 1 s.
LATENCY_BUCKETS = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


def _read(counter: itertools.count) -> int:
    """The next value a count would return, without advancing it.

    ``repr`` is ``count(N)`` on every Python; ``__reduce__`` would also work
    but is deprecated from 3.12 and removed in 3.14.
    """
    return int(repr(counter)[6:-1])


def stats_group_of(key: Any) -> str:
    """The row of the statistics a key counts in: its first segment (``gen`` for ``gen:456:meta``).

    Not the TTL data type (``ttl`` maps segments to configured names): the
    statistics show the keys as they are, configured or not.
    """
    return data_type_segment(str(key)) or OTHER_TYPE


class DataTypeCounters:
    """Hits and misses of one data type, one counter per tier and outcome."""

    __slots__ = ("l1_hits", "l2_hits", "misses", "corrupt")

    def __init__(self) -> None:
        self.l1_hits = itertools.count()
        self.l2_hits = itertools.count()
        self.misses = itertools.count()
        self.corrupt = itertools.count()

    def snapshot(self) -> dict[str, int]:
        l1, l2, misses = _read(self.l1_hits), _read(self.l2_hits), _read(self.misses)
        return {"l1_hits": l1, "l2_hits": l2, "misses": misses, "corrupt": _read(self.corrupt), "requests": l1 + l2 + misses}


def bucket_quantile(counts: list[int], samples: int, q: float) -> float | None:
    """Upper bound of the ``LATENCY_BUCKETS`` bucket holding the q-quantile (None without samples).

    One process's histogram and the buckets summed over workers
    (``telemetry.combine``) use the same rule.
    """
    if not samples:
        return None
    rank, seen = q * samples, 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts):
        seen += count
        if seen >= rank:
            return bound
    return float("inf")


class LatencyHistogram:
    """Cumulative-free bucket counts plus sum, updated under a small lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.samples = 0

    def observe(self, seconds: float) -> None:
        index = bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            self.counts[index] += 1
            self.total += seconds
            self.samples += 1

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None without samples)."""
        with self._lock:
            counts, samples = list(self.counts), self.samples
        return bucket_quantile(counts, samples, q)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "buckets": list(zip(LATENCY_BUCKETS, self.counts)),
                "overflow": self.counts[-1],
                "sum": self.total,
                "count": self.samples,
            }


class CacheStats:
    """All statistics of one logical cache in one process."""

    def __init__(self) -> None:
        self._types: dict[str, DataTypeCounters] = {}
        self._types_lock = threading.Lock()
        self.latency = {tier: LatencyHistogram() for tier in TIERS}
        self.l1_tick = itertools.count()
        self.l2_errors = itertools.count()
        self.l2_distrusted = itertools.count()  # L2 answers discarded right after an outage (tiers.process)
        self.sets = itertools.count()
        self.deletes = itertools.count()

    def reset_locks(self) -> None:
        """New locks after fork(): a lock held by a parent thread would hang the child."""
        self._types_lock = threading.Lock()
        for histogram in self.latency.values():
            histogram._lock = threading.Lock()

    def for_type(self, name: str) -> DataTypeCounters:
        """The counters of a data type; past MAX_DATA_TYPES names share ``other``."""
        counters = self._types.get(name)
        if counters is not None:
            return counters
        with self._types_lock:
            if name not in self._types and len(self._types) >= MAX_DATA_TYPES:
                name = OTHER_TYPE
            counters = self._types.get(name)
            if counters is None:  # made only when kept: past the limit every new name lands here
                counters = self._types[name] = DataTypeCounters()
            return counters

    def for_key(self, key: Any) -> DataTypeCounters:
        return self.for_type(stats_group_of(key))

    def snapshot(self) -> dict[str, Any]:
        by_type = {name: counters.snapshot() for name, counters in list(self._types.items())}
        counts = {field: sum(row[field] for row in by_type.values()) for field in ("l1_hits", "l2_hits", "misses", "corrupt", "requests")}
        requests = counts["requests"]
        hit_rate = (counts["l1_hits"] + counts["l2_hits"]) / requests if requests else None
        totals: dict[str, int | float | None] = {**counts, "hit_rate": hit_rate}
        return {
            "totals": totals,
            "by_type": by_type,
            "latency": {tier: hist.snapshot() for tier, hist in self.latency.items()},
            "latency_p50": {tier: hist.quantile(0.5) for tier, hist in self.latency.items()},
            "latency_p99": {tier: hist.quantile(0.99) for tier, hist in self.latency.items()},
            "l2_errors": _read(self.l2_errors),
            "l2_distrusted": _read(self.l2_distrusted),
            "sets": _read(self.sets),
            "deletes": _read(self.deletes),
        }
