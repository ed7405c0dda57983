"""Runtime warming: preload what a user is about to read, off the request path, and count if they read it.

The application says when (a login, a token's first request of a session,
any access its data suggests a next read after) and what (a function that
warms through the read-through helpers and returns the logical keys it
warmed); this module runs it in one background thread, so the request that
triggered it never waits, and keeps each predictor's score:

- ``warmed``: keys a predictor loaded; ``read``: those a request read later
  (the application's read helper calls ``note_read(key)``); ``precision`` =
  read / warmed. A key not read within ``HORIZON`` seconds counts as wasted.
- ``dropped``: preloads refused because ``QUEUE_LIMIT`` were already waiting
  (warming must never pile up behind a slow database);
- ``deduped``: preloads skipped because the same ``dedupe`` key (a user) was
  preloaded less than ``DEDUPE_SECONDS`` ago;
- ``errors``: preloads that raised (logged, never raised into a request);
- ``switched_off``: preloads not queued because the ``warming`` switch is off
  for that ``dedupe`` key (``velro_cache.switches``).

Staleness is not this module's concern by design: the preload functions use
the same read-through helpers as requests (tokens stamped before the load,
fill leases), so a preload racing an invalidation stores nothing it retired.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from .. import switches

logger = logging.getLogger("velro_cache.warming")

QUEUE_LIMIT = 64
DEDUPE_SECONDS = 300.0
HORIZON = 600.0
TRACKED_MAX = 100_000  # keys awaiting their read; the oldest are forgotten (as wasted) past this


class _Scores:
    """Per predictor counters and the warmed keys still awaiting a read, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._counts: dict[str, dict[str, int]] = {}
            self._awaiting: OrderedDict[str, tuple[str, float]] = OrderedDict()
            self._recent: dict[Hashable, float] = {}

    def _row(self, predictor: str) -> dict[str, int]:
        fields = ("runs", "warmed", "read", "dropped", "deduped", "errors", "switched_off")
        return self._counts.setdefault(predictor, dict.fromkeys(fields, 0))

    def count(self, predictor: str, field: str, n: int = 1) -> None:
        with self._lock:
            self._row(predictor)[field] += n

    def claim(self, dedupe: Hashable | None, now: float) -> bool:
        """Whether a preload for ``dedupe`` may run now (none ran within DEDUPE_SECONDS)."""
        if dedupe is None:
            return True
        with self._lock:
            last = self._recent.get(dedupe)
            if last is not None and now - last < DEDUPE_SECONDS:
                return False
            if len(self._recent) > TRACKED_MAX:
                self._recent.clear()
            self._recent[dedupe] = now
            return True

    def warmed(self, predictor: str, keys: list[str], now: float) -> None:
        with self._lock:
            row = self._row(predictor)
            row["runs"] += 1
            row["warmed"] += len(keys)
            deadline = now + HORIZON
            for key in keys:
                self._awaiting.pop(key, None)
                self._awaiting[key] = (predictor, deadline)
            while len(self._awaiting) > TRACKED_MAX:
                self._awaiting.popitem(last=False)

    def read(self, key: str, now: float) -> None:
        with self._lock:
            entry = self._awaiting.pop(key, None)
            if entry is not None and entry[1] >= now:
                self._row(entry[0])["read"] += 1

    @property
    def awaiting(self) -> bool:
        return bool(self._awaiting)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                name: {**row, "precision": row["read"] / row["warmed"] if row["warmed"] else None}
                for name, row in self._counts.items()
            }


scores = _Scores()
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="velro-cache-preload")
_slots = threading.BoundedSemaphore(QUEUE_LIMIT)
_futures: set[Future] = set()
_futures_lock = threading.Lock()


_local = threading.local()


@contextmanager
def warming_reads() -> Iterator[None]:
    """Reads in here are warming's own (a preload, a plan's run): they score no prediction."""
    previous = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = previous


def preload(predictor: str, load: Callable[[], Iterable[str]], *, dedupe: Hashable | None = None) -> bool:
    """Run ``load`` in the background; it warms entries and returns their logical keys. False: not queued.

    ``predictor`` names the prediction (for its score); ``dedupe`` (e.g.
    ``("user", 42)``) skips a preload that ran for the same thing recently.
    """
    if not switches.on(switches.WARMING, dedupe):
        scores.count(predictor, "switched_off")
        return False
    if not scores.claim(dedupe, time.monotonic()):
        scores.count(predictor, "deduped")
        return False
    if not _slots.acquire(blocking=False):
        scores.count(predictor, "dropped")
        return False
    future = _executor.submit(_run, predictor, load)
    with _futures_lock:
        _futures.add(future)
    future.add_done_callback(_forget)
    return True


def _forget(future: Future) -> None:
    with _futures_lock:
        _futures.discard(future)


def _run(predictor: str, load: Callable[[], Iterable[str]]) -> None:
    from django.db import close_old_connections

    try:
        with warming_reads():
            keys = [str(key) for key in load()]
        scores.warmed(predictor, keys, time.monotonic())
    except Exception:
        scores.count(predictor, "errors")
        logger.warning("preload %r failed", predictor, exc_info=True)
    finally:
        _slots.release()
        close_old_connections()


def note_read(key: str) -> None:
    """A request read ``key`` (logical): if a predictor warmed it, that prediction was right. Cheap when none is pending."""
    if scores.awaiting and not getattr(_local, "active", False):
        scores.read(key, time.monotonic())


def drain(timeout: float = 30.0) -> bool:
    """Wait for queued preloads (tests, a command that wants them done); False if some still run."""
    deadline = time.monotonic() + timeout
    while True:
        with _futures_lock:
            pending = list(_futures)
        if not pending:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            pending[0].result(timeout=remaining)
        except Exception:  # counted by _run; a timeout is reported by the loop
            pass


def predictor_results() -> dict[str, dict[str, Any]]:
    """``{predictor: {runs, warmed, read, precision, dropped, deduped, errors}}`` of this process."""
    return scores.snapshot()


__all__ = ["drain", "note_read", "predictor_results", "preload"]
