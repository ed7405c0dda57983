"""Filling TieredCache on a miss, for coroutines: ``velro_cache.fill`` with its waits awaited.

The guarantees are ``fill``'s, from the same mechanisms:

* **One loader per key.** Coroutines of one event loop queue on an asyncio
  lock per key (a thread lock would block the loop); across loops, threads
  and processes the filler takes the same Redis lease as a sync fill, and the
  others poll for its value (``asyncio.sleep``, so the loop keeps serving).
  A sync ``get_or_set`` and an ``aget_or_set`` of one key therefore run one
  loader between them. Without Redis (L1-only mode) the flight is per loop.
* **No stale fill**: the lease and the write ticket, exactly as in ``fill``.
* **Early refresh** (XFetch): the same draw, ``fill._due_for_early_refresh``.

The loader may be a plain callable or return an awaitable (an ``async def``),
which is awaited.

``_wait_for_filler`` and ``_run_and_store`` repeat ``fill``'s lines with
``await`` on purpose (a coroutine cannot call the blocking ones); the
decisions in them (when to store, when to give the lease back, the early
refresh draw) are ``fill``'s and change together.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from .exceptions import L2Unavailable
from .fill import POLL_MAX, POLL_START, _due_for_early_refresh
from .options import TieredOptions
from .stats import DataTypeCounters
from .tiers.memory import MISSING


class AsyncFillable(Protocol):
    """What the async fill needs from a cache (TieredCache implements it); see ``fill.Fillable``."""

    options: TieredOptions

    @property
    def has_l2(self) -> bool: ...

    def local_value(self, full: str, counters: DataTypeCounters) -> Any: ...

    async def avalue_or_lease(self, full: str, counters: DataTypeCounters, ticket: int) -> tuple[Any, str | None]: ...

    def fill_key(self, key: Any, version: int | None) -> tuple[str, DataTypeCounters]: ...

    def write_ticket(self) -> int: ...

    def seconds_for(self, timeout: Any) -> float | None: ...

    def l2_trusted(self) -> bool: ...

    def load_record(self, full: str) -> tuple[float, float | None] | None: ...

    async def atake_fill_lease(self, full: str) -> str | None: ...

    async def arelease_fill_lease(self, full: str, token: str) -> None: ...

    async def apeek_fill(self, full: str, counters: DataTypeCounters, ticket: int) -> tuple[bool, Any, bool]: ...

    async def astore_fill(self, full: str, value: Any, seconds: float | None, delta: float, token: str | None, ticket: int) -> None: ...


class AsyncKeyLocks:
    """One asyncio lock per key in flight on one loop, dropped when its last waiter leaves."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}  # key -> [lock, holders]

    @asynccontextmanager
    async def lock_for(self, key: str) -> AsyncIterator[None]:
        slot = self._locks.setdefault(key, [asyncio.Lock(), 0])
        slot[1] += 1
        try:
            async with slot[0]:
                yield
        finally:
            slot[1] -= 1
            if slot[1] == 0:
                del self._locks[key]


_flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncKeyLocks] = weakref.WeakKeyDictionary()
_flights_lock = threading.Lock()


def flights() -> AsyncKeyLocks:
    """The running loop's key locks (an asyncio lock must not be shared across loops)."""
    loop = asyncio.get_running_loop()
    locks = _flights.get(loop)
    if locks is None:
        with _flights_lock:
            locks = _flights.setdefault(loop, AsyncKeyLocks())
    return locks


def _forget_after_fork() -> None:
    global _flights, _flights_lock
    _flights = weakref.WeakKeyDictionary()
    _flights_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


async def aget_or_load(
    cache: AsyncFillable, key: Any, loader: Callable[[], Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
) -> Any:
    """The cached value, or the loader's result, stored and returned (``fill.get_or_load`` awaited).

    Round trips as in ``fill.get_or_load``: none on an L1 hit; one on an L2
    hit; on a miss, one that both reads L2 and takes the lease
    (``avalue_or_lease``), then the store.
    """
    full, counters = cache.fill_key(key, version)
    value = cache.local_value(full, counters)
    if value is MISSING:
        async with flights().lock_for(full):
            value = cache.local_value(full, counters)  # filled by the coroutine ahead of us?
            if value is MISSING:
                value, loaded = await _miss(cache, full, counters, loader, timeout)
                if loaded:
                    return value
    if _due_for_early_refresh(cache, full):  # type: ignore[arg-type]  # reads only options and load_record
        return await _refresh_early(cache, full, loader, timeout, value)
    return value


async def _miss(cache: AsyncFillable, full: str, counters: DataTypeCounters, loader: Callable[[], Any], timeout: Any) -> tuple[Any, bool]:
    """As ``fill._miss``: (L2's value, False), else (the value loaded under our lease or the holder's, True)."""
    ticket = cache.write_ticket()
    value, token = await cache.avalue_or_lease(full, counters, ticket)
    if value is not MISSING:
        return value, False
    if token is None and cache.has_l2 and cache.l2_trusted():
        found, ticket = await _wait_for_filler(cache, full, counters)
        if found is not MISSING:
            return found, True
        token = await cache.atake_fill_lease(full)
        if token is not None:
            found, ticket = await _filled_before_our_lease(cache, full, counters, token)
            if found is not MISSING:
                return found, True
    return await _run_and_store(cache, full, loader, timeout, token, ticket), True


async def _filled_before_our_lease(cache: AsyncFillable, full: str, counters: DataTypeCounters, token: str) -> tuple[Any, int]:
    """As ``fill._filled_before_our_lease``: another process may have stored between our miss and our lease."""
    ticket = cache.write_ticket()
    try:
        found, value, _ = await cache.apeek_fill(full, counters, ticket)
    except L2Unavailable:
        return MISSING, ticket
    except BaseException:
        await cache.arelease_fill_lease(full, token)
        raise
    if not found:
        return MISSING, ticket
    await cache.arelease_fill_lease(full, token)
    return value, ticket


async def _run_and_store(cache: AsyncFillable, full: str, loader: Callable[[], Any], timeout: Any, token: str | None, ticket: int) -> Any:
    """Run (and await) the loader and store its result; the lease is given back on every way out."""
    try:
        start = time.perf_counter()
        value = loader()
        if inspect.isawaitable(value):
            value = await value
        delta = time.perf_counter() - start
        seconds = cache.seconds_for(timeout() if callable(timeout) else timeout)
        if seconds is not None and seconds <= 0:
            if token is not None:
                await cache.arelease_fill_lease(full, token)
        elif token is not None or not cache.has_l2:  # without the lease, the lease holder's value is the one to keep
            await cache.astore_fill(full, value, seconds, delta, token, ticket)
    except BaseException:
        if token is not None:
            # Shielded: a cancelled fill must still give its lease back, or
            # every other process waits LEASE_WAIT for a value that never comes.
            await asyncio.shield(cache.arelease_fill_lease(full, token))
        raise
    return value


async def _wait_for_filler(cache: AsyncFillable, full: str, counters: DataTypeCounters) -> tuple[Any, int]:
    """Poll for the lease holder's value; MISSING when it gave up or time ran out."""
    deadline = time.monotonic() + cache.options.lease_wait
    pause = POLL_START
    while time.monotonic() < deadline:
        ticket = cache.write_ticket()
        try:
            found, value, leased = await cache.apeek_fill(full, counters, ticket)
        except L2Unavailable:
            break
        if found:
            return value, ticket
        if not leased:
            break  # the holder failed or its lease expired: we may fill
        await asyncio.sleep(pause)
        pause = min(pause * 2, POLL_MAX)
    return MISSING, cache.write_ticket()


async def _refresh_early(cache: AsyncFillable, full: str, loader: Callable[[], Any], timeout: Any, current: Any) -> Any:
    """One caller recomputes; the others keep the current value meanwhile."""
    ticket = cache.write_ticket()
    if not cache.has_l2:
        return await _run_and_store(cache, full, loader, timeout, None, ticket)
    token = await cache.atake_fill_lease(full)
    if token is None:
        return current
    return await _run_and_store(cache, full, loader, timeout, token, ticket)


__all__ = ["AsyncFillable", "aget_or_load"]
