"""Filling TieredCache on a miss: one loader per key, no stale fill, hot keys refreshed early.

What ``TieredCache.get_or_load`` / ``get_or_set`` do; every read-through
(``velro_cache.reads``) ends here. Three guarantees, each from one mechanism:

* **One loader per key.** In a process, concurrent misses queue on a per-key
  lock and the first fills for all (single flight). Across processes, the
  filler takes a Redis lease (``SET NX PX``); the others wait for the value,
  polling with a bounded wait (``LEASE_WAIT``), and load themselves only if
  the wait runs out, without storing.
* **No stale fill.** The loader's result is stored in L2 only while its lease
  is still held (every write or delete of the key removes the lease), and in
  L1 only if the process's write log shows no change of the key since the load
  began. A value read before an invalidation is never stored after it.
* **Hot keys refresh before they expire** (probabilistic early expiration,
  XFetch: Vattani et al., VLDB 2015). A value loaded through here records how
  long its loader took (delta); a reader recomputes early when
  ``now - delta * beta * ln(rand) >= expiry``, so the earliest refresh is
  spread over the last few deltas before expiry and usually one caller does it
  while the others keep the current value.

The mechanism talks to the cache only through ``Fillable``: the few tier
operations TieredCache offers for it. Keys reach it already made (``fill_key``),
with the counters of the logical key's data type, so nothing here depends on
what a physical key looks like (a custom ``KEY_FUNCTION`` is fine).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from .exceptions import L2Unavailable
from .options import TieredOptions
from .stats import DataTypeCounters
from .tiers.memory import MISSING
from .tiers.redis import MemberSets

# Waiting for another process's fill: a short first look, then every 20 ms.
POLL_START, POLL_MAX = 0.005, 0.02

Members = MemberSets  # (made set key, member, TTL seconds or None)
Tracking = Callable[[], Members]  # called only when a loaded value is stored


class Fillable(Protocol):
    """What the fill mechanism needs from a cache (TieredCache implements it)."""

    options: TieredOptions

    @property
    def has_l2(self) -> bool: ...

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any: ...

    def fill_key(self, key: Any, version: int | None) -> tuple[str, DataTypeCounters]:
        """The physical key and the counters of the logical key's data type."""

    def key_lock(self, full: str) -> AbstractContextManager[None]:
        """This process's lock for one key: the single flight."""

    def write_ticket(self) -> int:
        """A mark in the process's write log; a fill stores in L1 only if its key is unchanged since."""

    def seconds_for(self, timeout: Any) -> float | None:
        """Django's timeout as seconds to live (None: forever)."""

    def local_value(self, full: str, counters: DataTypeCounters) -> Any:
        """The value this process's L1 holds (an L1 hit counted), else MISSING; no round trip."""

    def value_or_lease(self, full: str, counters: DataTypeCounters, ticket: int) -> tuple[Any, str | None]:
        """One L2 round trip: (the value, None) when L2 holds it, else (MISSING, our lease token or None when held elsewhere or L2 down)."""

    def take_fill_lease(self, full: str) -> str | None:
        """A lease token when this caller may fill ``full`` in L2, else None (held elsewhere, or L2 down)."""

    def release_fill_lease(self, full: str, token: str) -> None: ...

    def l2_trusted(self) -> bool:
        """Whether L2 answers normally (breaker closed): only then is waiting for another filler worth it."""

    def peek_fill(self, full: str, counters: DataTypeCounters, ticket: int) -> tuple[bool, Any, bool]:
        """(found, value, still leased) from L2; raises L2Unavailable."""

    def store_fill(
        self, full: str, value: Any, seconds: float | None, delta: float, token: str | None, ticket: int, members: Members = ()
    ) -> None:
        """Store a loaded value: in L2 only under ``token``, in L1 only if unchanged since ``ticket``.

        ``members``: ``(set key, member, TTL)`` of the sets the stored key joins
        (``namespaces.track``), written in the store's round trip, best effort.
        """

    def load_record(self, full: str) -> tuple[float, float | None] | None:
        """(loader seconds, expiry as time.time()) of this process's last fill of ``full``."""


def get_or_load(
    cache: Fillable,
    key: Any,
    loader: Callable[[], Any],
    timeout: Any = DEFAULT_TIMEOUT,
    version: int | None = None,
    tracking: Tracking | None = None,
) -> Any:
    """The cached value, or ``loader()``'s result, stored and returned.

    Unlike Django's ``get_or_set``, a result of ``None`` is cached as well.
    ``timeout`` may be a callable, called only when a value is stored, so a
    computed TTL costs nothing on a hit. ``tracking`` (``velro_cache.reads``)
    names the member sets a stored value joins, written with the store.

    Round trips: none on an L1 hit; one on an L2 hit; on a miss, one that both
    reads L2 and takes the lease (``value_or_lease``: atomic in Redis, so no
    fill can land between our miss and our lease), then the store.
    """
    full, counters = cache.fill_key(key, version)
    value = cache.local_value(full, counters)
    if value is MISSING:
        with cache.key_lock(full):
            value = cache.local_value(full, counters)  # filled by the thread ahead of us?
            if value is MISSING:
                value, loaded = _miss(cache, full, counters, loader, timeout, tracking)
                if loaded:
                    return value
    if _due_for_early_refresh(cache, full):
        return _refresh_early(cache, full, loader, timeout, value, tracking)
    return value


def _miss(
    cache: Fillable, full: str, counters: DataTypeCounters, loader: Callable[[], Any], timeout: Any, tracking: Tracking | None
) -> tuple[Any, bool]:
    """Not in L1: (L2's value, False), else (the value loaded under our lease or the holder's, whether we loaded it)."""
    ticket = cache.write_ticket()
    value, token = cache.value_or_lease(full, counters, ticket)
    if value is not MISSING:
        return value, False
    if token is None and cache.has_l2 and cache.l2_trusted():
        found, ticket = _wait_for_filler(cache, full, counters)
        if found is not MISSING:
            return found, True
        token = cache.take_fill_lease(full)
        if token is not None:
            found, ticket = _filled_before_our_lease(cache, full, counters, token)
            if found is not MISSING:
                return found, True
    return _run_and_store(cache, full, loader, timeout, token, ticket, tracking), True


def _filled_before_our_lease(cache: Fillable, full: str, counters: DataTypeCounters, token: str) -> tuple[Any, int]:
    """The value another process stored between our miss and our lease, if any.

    Its filler stores and then gives up its lease in one step, so a lease we
    get can follow a fill we did not see: our miss was read just before it.
    Without this look the loader would run twice for one key.
    """
    ticket = cache.write_ticket()
    try:
        found, value, _ = cache.peek_fill(full, counters, ticket)
    except L2Unavailable:
        return MISSING, ticket
    except BaseException:
        cache.release_fill_lease(full, token)
        raise
    if not found:
        return MISSING, ticket
    cache.release_fill_lease(full, token)
    return value, ticket


def _run_and_store(
    cache: Fillable, full: str, loader: Callable[[], Any], timeout: Any, token: str | None, ticket: int, tracking: Tracking | None = None
) -> Any:
    """Run the loader and store its result; the lease is given back on every way out.

    Whatever fails (the loader, a timeout callable, a value that cannot be
    serialized, Redis, a KeyboardInterrupt), a lease left behind would make
    every other process wait ``LEASE_WAIT`` for a value that never comes.
    Releasing a lease a store already consumed is a no-op (it is checked by
    token).
    """
    try:
        start = time.perf_counter()
        value = loader()
        delta = time.perf_counter() - start
        seconds = cache.seconds_for(timeout() if callable(timeout) else timeout)
        if seconds is not None and seconds <= 0:
            if token is not None:
                cache.release_fill_lease(full, token)
        elif token is not None or not cache.has_l2:  # without the lease, the lease holder's value is the one to keep
            cache.store_fill(full, value, seconds, delta, token, ticket, tracking() if tracking is not None else ())
    except BaseException:
        if token is not None:
            cache.release_fill_lease(full, token)
        raise
    return value


def _wait_for_filler(cache: Fillable, full: str, counters: DataTypeCounters) -> tuple[Any, int]:
    """Poll for the lease holder's value; MISSING when it gave up or time ran out."""
    deadline = time.monotonic() + cache.options.lease_wait
    pause = POLL_START
    while time.monotonic() < deadline:
        ticket = cache.write_ticket()
        try:
            found, value, leased = cache.peek_fill(full, counters, ticket)
        except L2Unavailable:
            break
        if found:
            return value, ticket
        if not leased:
            break  # the holder failed or its lease expired: we may fill
        time.sleep(pause)
        pause = min(pause * 2, POLL_MAX)
    return MISSING, cache.write_ticket()


def _due_for_early_refresh(cache: Fillable, full: str) -> bool:
    beta = cache.options.early_refresh_beta
    if not beta:
        return False
    record = cache.load_record(full)
    if record is None:
        return False
    delta, expires_at = record
    if expires_at is None:
        return False
    return time.time() - delta * beta * math.log(1.0 - random.random()) >= expires_at


def _refresh_early(cache: Fillable, full: str, loader: Callable[[], Any], timeout: Any, current: Any, tracking: Tracking | None) -> Any:
    """One caller recomputes; the others keep the current value meanwhile."""
    ticket = cache.write_ticket()
    if not cache.has_l2:
        return _run_and_store(cache, full, loader, timeout, None, ticket, tracking)
    token = cache.take_fill_lease(full)
    if token is None:
        return current
    return _run_and_store(cache, full, loader, timeout, token, ticket, tracking)


__all__ = ["Fillable", "get_or_load"]
