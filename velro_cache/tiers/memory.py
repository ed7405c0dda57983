"""L1: the byte-bounded, thread-safe, in-process store every worker thread shares.

A hit must cost well under a microsecond, so :meth:`MemoryStore.get` takes no
lock: one dict lookup, an expiry check, and an append of the key to a read
buffer. The eviction (:mod:`velro_cache.tiers.eviction`) learns about those
reads in batches, when some thread finds the buffer long enough and the lock
free (``acquire(blocking=False)``); if the lock stays busy the buffer is simply
reset and those accesses are lost, which only blurs the frequency estimates
(Caffeine does the same). Everything that changes what is stored (set, add,
touch, delete, clear) takes :attr:`MemoryStore.lock`, applies the buffered reads
first so the eviction sees events in order, and evicts before returning, so the
weighted size never exceeds ``max_bytes`` once a write has returned.

This relies on the GIL making single dict and list operations atomic
(CPython 3.11-3.13 default builds).

Budget rules: weights are bytes, and an entry heavier than half the budget is
rejected (``set`` returns False) because admitting it would flush most of the
working set for one key; such values are better served from L2. Weights below 1
count as 1, so every entry is paid for.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .eviction import REGION_NAMES, Entry, LruEviction, WTinyLfuEviction

__all__ = ["MISSING", "MemoryStore"]

logger = logging.getLogger(__name__)

MISSING: Any = object()
"""Returned by :meth:`MemoryStore.get` for an absent or expired key (``None`` is a valid payload)."""

READ_BATCH = 256  # reads buffered before a thread tries to hand them to the eviction (<1 % of gets pay the drain)
READ_BUFFER_LIMIT = 4096  # beyond this (lock busy), buffered reads are dropped

EvictionListener = Callable[[str, str], None]


def _never() -> bool:
    """A store alone never regains trust it lost (it never loses it: see ``trusted_until``)."""
    return False


class _ExpiryQueue:
    """Min-heap of deadlines so sweeping expired entries never scans the whole store.

    Replaced and touched entries leave stale heap items behind; they are skipped
    when popped and the heap is rebuilt when stale items dominate.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, entry: Entry, deadline: float) -> None:
        """Queue ``entry`` to expire at ``deadline`` (its ``expires_at``, known not to be None)."""
        heapq.heappush(self._heap, (deadline, next(self._seq), entry))

    def due(self, now: float) -> bool:
        return bool(self._heap) and self._heap[0][0] <= now

    def pop_due(self, now: float) -> list[tuple[float, Entry]]:
        heap = self._heap
        out = []
        while heap and heap[0][0] <= now:
            deadline, _, entry = heapq.heappop(heap)
            out.append((deadline, entry))
        return out

    def compact(self, live: dict[Any, Entry]) -> None:
        if len(self._heap) <= 2 * len(live) + 1024:
            return
        self._heap = [
            item for item in self._heap if live.get(item[2].key) is item[2] and item[2].expires_at == item[0]
        ]
        heapq.heapify(self._heap)

    def clear(self) -> None:
        self._heap = []


class MemoryStore:
    """Byte-bounded key/payload store with TTL and adaptive W-TinyLFU eviction."""

    def __init__(
        self,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_evict: EvictionListener | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = int(max_bytes)
        self.max_entry_bytes = max(1, self.max_bytes // 2)
        self.lock = threading.RLock()
        self.evictions = 0
        self.expirations = 0
        self.reads_dropped = 0
        self._clock = clock
        self._on_evict = on_evict
        self._data: dict[Any, Entry] = {}
        self._reads: list[Any] = []
        self._eviction: WTinyLfuEviction | LruEviction = WTinyLfuEviction(self.max_bytes)
        self._expiry = _ExpiryQueue()
        self._notes: list[tuple[Any, str]] = []
        # Hits are served only before this monotonic time (see tiers.coherence):
        # with an L2 it is the last confirmation from Redis plus the staleness
        # bound; alone, the store is the whole truth and trusts itself forever.
        self.trusted_until = math.inf
        # Called when a present entry is untrusted: True if trust came back (a
        # confirmation the owner was waiting for arrived), so the hit is served.
        self.regain_trust: Callable[[], bool] = _never

    # -- reads (lock-free) ----------------------------------------------------

    # Payloads are opaque to the store (TieredCache keeps ``(reader, stored)``
    # pairs), so reads return Any like MISSING itself: the caller knows the shape.
    def get(self, key: str) -> Any:
        """The payload for ``key``, or :data:`MISSING`. The hot path: no lock.

        Untrusted (no confirmation from Redis within the staleness bound), a
        present entry is a miss: one float comparison with the clock value the
        expiry check reads anyway.
        """
        entry = self._data.get(key)
        if entry is None:
            return MISSING
        now = self._clock()
        if now >= self.trusted_until:
            # Read again once trust is back: the wait let in drops that may remove this entry.
            return self.get(key) if self.regain_trust() else MISSING
        expires_at = entry.expires_at
        if expires_at is not None and expires_at <= now:
            self._expire_if_idle(entry)
            return MISSING
        reads = self._reads
        reads.append(key)
        if len(reads) >= READ_BATCH:
            self._drain_if_idle()
        return entry.payload

    def get_with_expiry(self, key: str) -> tuple[Any, float | None] | None:
        """``(payload, expires_at)`` for a live key, else None; counts as a read.

        Deliberately the body of :meth:`get` again rather than a shared helper:
        ``get`` is the L1 hit path and an extra call there is a measurable share
        of a hit; this one only differs in what it returns.
        """
        entry = self._data.get(key)
        if entry is None:
            return None
        expires_at = entry.expires_at
        if expires_at is not None and expires_at <= self._clock():
            self._expire_if_idle(entry)
            return None
        reads = self._reads
        reads.append(key)
        if len(reads) >= READ_BATCH:
            self._drain_if_idle()
        return entry.payload, expires_at

    def __contains__(self, key: object) -> bool:
        """Present, trusted and not expired; deliberately not counted as a use."""
        entry = self._data.get(key)
        now = self._clock()
        if entry is not None and now >= self.trusted_until:
            return self.regain_trust() and key in self  # again once trust is back (the wait may have dropped it)
        return entry is not None and not self._expired(entry, now)

    def _expired(self, entry: Entry, now: float) -> bool:
        return entry.expires_at is not None and entry.expires_at <= now

    def _drain_if_idle(self) -> None:
        """Hand buffered reads to the eviction unless another thread holds the lock."""
        if not self.lock.acquire(blocking=False):
            if len(self._reads) > READ_BUFFER_LIMIT:
                self.reads_dropped += len(self._reads)
                self._reads = []
            return
        try:
            self._drain_reads()
            self._sweep_expired()
            self._eviction.climb()
            notes = self._take_notes()
        finally:
            self.lock.release()
        self._notify(notes)

    def _expire_if_idle(self, entry: Entry) -> None:
        """Free an expired entry's budget now if that costs the reader no wait."""
        if not self.lock.acquire(blocking=False):
            return
        try:
            if self._data.get(entry.key) is entry and self._expired(entry, self._clock()):
                self._remove_expired(entry)
            notes = self._take_notes()
        finally:
            self.lock.release()
        self._notify(notes)

    # -- writes (under the lock) ------------------------------------------------

    def set(self, key: str, payload: object, weight: int, expires_at: float | None) -> bool:
        """Store ``payload``; False (and the old value dropped) if it is too heavy for L1."""
        with self.lock:
            stored = self._set_locked(key, payload, weight, expires_at)
            notes = self._take_notes()
        self._notify(notes)
        return stored

    def set_many(self, items: list[tuple[str, object, int, float | None]]) -> list[str]:
        """Store ``(key, payload, weight, expires_at)`` items; the keys stored.

        One lock, one drain of the read buffer and one eviction pass for the
        batch instead of one per key (``WTinyLfuEviction.on_add_many``): the
        eviction sees the same events in the same order (each new key enters
        the window), it only settles them once. An item too heavy for L1 is not
        stored and drops any older value; of a key given twice the last wins.
        """
        stored: list[str] = []
        added: list[Entry] = []
        if len({item[0] for item in items}) < len(items):  # rare: one pass per key, the last value kept
            items = list({item[0]: item for item in items}.values())
        with self.lock:
            self._drain_reads()
            data, eviction, limit = self._data, self._eviction, self.max_entry_bytes
            push, get, append, keep = self._expiry.push, data.get, added.append, stored.append
            for key, payload, weight, expires_at in items:
                weight = max(1, int(weight))
                old = get(key)
                if weight > limit:
                    if old is not None:
                        del data[key]
                        eviction.on_remove(old)
                    continue
                entry = data[key] = Entry(key, payload, weight, expires_at)
                if old is None:
                    append(entry)
                else:
                    eviction.on_replace(old, entry)
                if expires_at is not None:
                    push(entry, expires_at)
                keep(key)
            eviction.on_add_many(added)
            self._settle()
            notes = self._take_notes()
        self._notify(notes)
        return stored

    def add(self, key: str, payload: object, weight: int, expires_at: float | None) -> bool:
        """Store only if ``key`` is absent or expired, atomically with respect to other writers."""
        with self.lock:
            current = self._data.get(key)
            if current is not None and not self._expired(current, self._clock()):
                return False
            stored = self._set_locked(key, payload, weight, expires_at)
            notes = self._take_notes()
        self._notify(notes)
        return stored

    def touch(self, key: str, expires_at: float | None) -> bool:
        """Give a live entry a new deadline (None = never); False if absent or expired."""
        with self.lock:
            entry = self._data.get(key)
            if entry is None:
                return False
            if self._expired(entry, self._clock()):
                self._remove_expired(entry)
                notes = self._take_notes()
                stored = False
            else:
                entry.expires_at = expires_at
                if expires_at is not None:
                    self._expiry.push(entry, expires_at)
                notes = self._take_notes()
                stored = True
        self._notify(notes)
        return stored

    def delete(self, key: str) -> bool:
        """Remove ``key``; True only if a live (unexpired) value was removed."""
        with self.lock:
            entry = self._data.pop(key, None)
            if entry is None:
                return False
            self._eviction.on_remove(entry)
            live = not self._expired(entry, self._clock())
        return live

    def delete_many(self, keys: Iterable[str]) -> None:
        """``delete`` of each key, under one lock (a delete_many or a coherence drop of a batch)."""
        with self.lock:
            pop, on_remove = self._data.pop, self._eviction.on_remove
            for key in keys:
                entry = pop(key, None)
                if entry is not None:
                    on_remove(entry)

    def clear(self) -> None:
        """Drop every entry (no eviction notifications); frequency history is kept."""
        with self.lock:
            self._data = {}
            self._reads = []
            self._eviction.clear()
            self._expiry.clear()

    def use_lru(self, lru: bool) -> None:
        """Evict by plain LRU (True) or adaptive W-TinyLFU (False), keeping what is held (the eviction-policy switch).

        The entries are handed to the new policy oldest first, then it evicts
        whatever it would not keep.
        """
        with self.lock:
            if isinstance(self._eviction, LruEviction) == lru:
                return
            self._drain_reads()
            self._eviction = LruEviction(self.max_bytes) if lru else WTinyLfuEviction(self.max_bytes)
            for entry in self._data.values():
                self._eviction.on_add(entry)
            self._evict()
            notes = self._take_notes()
        self._notify(notes)

    def maintenance(self) -> None:
        """Apply buffered reads, free expired entries and adapt the window; safe anytime."""
        with self.lock:
            self._drain_reads()
            self._sweep_expired()
            self._expiry.compact(self._data)
            self._evict()
            self._eviction.climb()
            notes = self._take_notes()
        self._notify(notes)

    def _set_locked(self, key: Any, payload: object, weight: int, expires_at: float | None) -> bool:
        weight = max(1, int(weight))
        self._drain_reads()
        old = self._data.get(key)
        if weight > self.max_entry_bytes:
            if old is not None:
                del self._data[key]
                self._eviction.on_remove(old)
            return False
        entry = Entry(key, payload, weight, expires_at)
        self._data[key] = entry
        if old is None:
            self._eviction.on_add(entry)
        else:
            self._eviction.on_replace(old, entry)
        if expires_at is not None:
            self._expiry.push(entry, expires_at)
        self._settle()
        return True

    def _settle(self) -> None:
        """After writes: drop stale deadlines, expired entries and the overweight, then one climbing step."""
        self._expiry.compact(self._data)
        self._sweep_expired()
        self._evict()
        self._eviction.climb()

    def _drain_reads(self) -> None:
        reads = self._reads
        if not reads:
            return
        self._reads = []
        self._eviction.on_reads(reads, self._data)

    def _evict(self) -> None:
        data = self._data
        for entry in self._eviction.evict():
            del data[entry.key]
            self.evictions += 1
            if self._on_evict is not None:
                self._notes.append((entry.key, "size"))

    def _sweep_expired(self) -> None:
        expiry = self._expiry
        if not len(expiry):
            return
        now = self._clock()
        if not expiry.due(now):
            return
        data = self._data
        for deadline, entry in expiry.pop_due(now):
            if data.get(entry.key) is entry and entry.expires_at == deadline:
                self._remove_expired(entry)

    def _remove_expired(self, entry: Entry) -> None:
        del self._data[entry.key]
        self._eviction.on_remove(entry)
        self.expirations += 1
        if self._on_evict is not None:
            self._notes.append((entry.key, "expired"))

    # -- notifications ----------------------------------------------------------

    def _take_notes(self) -> list[tuple[Any, str]]:
        notes = self._notes
        if notes:
            self._notes = []
        return notes

    def _notify(self, notes: list[tuple[Any, str]]) -> None:
        """Call the listener after the store's own lock section; a failing listener never fails a write."""
        if not notes or self._on_evict is None:
            return
        for key, reason in notes:
            try:
                self._on_evict(key, reason)
            except Exception:
                logger.exception("velro_cache L1 on_evict listener failed for %r", key)

    # -- introspection ------------------------------------------------------------

    def __len__(self) -> int:
        with self.lock:
            self._sweep_expired()
            notes = self._take_notes()
            size = len(self._data)
        self._notify(notes)
        return size

    @property
    def weighted_size(self) -> int:
        """Sum of the weights of the entries held (expired ones still count until swept)."""
        return self._eviction.weighted_size

    def keys(self) -> list[str]:
        """Snapshot of the live keys."""
        with self.lock:
            now = self._clock()
            return [key for key, entry in self._data.items() if not self._expired(entry, now)]

    def eviction_stats(self) -> dict[str, Any]:
        """Region sizes, sketch and hill-climber state, counters: for dashboards and tests."""
        with self.lock:
            stats = self._eviction.stats()
            stats.update(
                max_bytes=self.max_bytes,
                max_entry_bytes=self.max_entry_bytes,
                evictions=self.evictions,
                expirations=self.expirations,
                reads_dropped=self.reads_dropped,
                reads_buffered=len(self._reads),
                regions={name: len(region) for name, region in zip(REGION_NAMES, self._eviction.regions)},
            )
        return stats
