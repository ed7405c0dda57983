"""Read-through: ``get_or_load``, ``get_or_set`` and ``@cached``.

Three guarantees, each from one mechanism:

* **One loader per key.** In a process, concurrent misses queue on a per-key
  lock and the first fills for all (single-flight). Across processes, the
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
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT

from .exceptions import L2Unavailable
from .tiers.breaker import CLOSED
from .tiers.memory import MISSING

# Waiting for another process's fill: a short first look, then every 20 ms.
POLL_START, POLL_MAX = 0.005, 0.02


class ReadThroughMixin:
    """Mixed into TieredCache; uses its key, tier and L1-fill helpers."""

    def get_or_load(self, key: Any, loader: Callable[[], Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """The cached value, or ``loader()``'s result, stored and returned.

        Unlike Django's ``get_or_set``, a result of ``None`` is cached as well.
        ``timeout`` may be a callable, called only when a value is stored, so
        a computed TTL costs nothing on a hit.
        """
        value = self.get(key, MISSING, version=version)
        full, _ = self._key(key, version)
        if value is not MISSING:
            if self._due_for_early_refresh(full):
                return self._refresh_early(full, loader, timeout, value)
            return value
        with self._state.flights.lock_for(full):
            value = self.get(key, MISSING, version=version)  # filled by the thread ahead of us?
            if value is not MISSING:
                return value
            return self._load(full, loader, timeout)

    def get_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """Django's get_or_set, with single-flight and race-free fills."""
        loader = default if callable(default) else (lambda: default)
        return self.get_or_load(key, loader, timeout=timeout, version=version)

    # -- loading ------------------------------------------------------------------------
    def _load(self, full: str, loader: Callable[[], Any], timeout: Any) -> Any:
        ticket = self._state.writes.ticket()
        token = None
        if self._l2 is not None:
            token = self._take_lease(full)
            if token is None and self._state.breaker.state == CLOSED:
                found, ticket = self._wait_for_filler(full)
                if found is not MISSING:
                    return found
                token = self._take_lease(full)
        return self._run_and_store(full, loader, timeout, token, ticket)

    def _run_and_store(self, full: str, loader: Callable[[], Any], timeout: Any, token: str | None, ticket: int) -> Any:
        start = time.perf_counter()
        try:
            value = loader()
        except BaseException:
            if token is not None:
                self._release_lease(full, token)
            raise
        delta = time.perf_counter() - start
        self._store_loaded(full, value, self._ttl(timeout() if callable(timeout) else timeout), delta, token, ticket)
        return value

    def _store_loaded(self, full: str, value: Any, seconds: float | None, delta: float, token: str | None, ticket: int) -> None:
        if seconds is not None and seconds <= 0:
            if token is not None:
                self._release_lease(full, token)
            return
        expires_at = None if seconds is None else time.time() + seconds
        if self._l2 is None:
            if self._store_l1(full, value, seconds, ticket=ticket):
                self._state.remember_load(full, delta, expires_at)
            return
        if token is None:
            return  # another process holds the lease; its value is the one to keep
        data, encoded = self._wire(value, seconds, delta)
        try:
            stored = self._l2_call(self._l2.store_if_leased, full, token, data, seconds, self._state.drop_message([full]))
        except L2Unavailable:
            return
        if stored:
            self._state.remember_load(full, delta, expires_at)
            self._store_l1(full, value, seconds, encoded, ticket)

    def _take_lease(self, full: str) -> str | None:
        token = uuid.uuid4().hex
        try:
            return token if self._l2_call(self._l2.acquire_lease, full, token, self.options.lease_timeout) else None
        except L2Unavailable:
            return None

    def _release_lease(self, full: str, token: str) -> None:
        try:
            self._l2_call(self._l2.release_lease, full, token)
        except L2Unavailable:
            pass

    def _wait_for_filler(self, full: str) -> tuple[Any, int]:
        """Poll for the lease holder's value; MISSING when it gave up or time ran out."""
        counters = self._stats.for_key(full.split(":", 2)[-1])
        deadline = time.monotonic() + self.options.lease_wait
        pause = POLL_START
        while time.monotonic() < deadline:
            ticket = self._state.writes.ticket()
            try:
                data, leased = self._l2_call(self._l2.peek_fill, full)
            except L2Unavailable:
                break
            if data is not None:
                found, value = self._accept_from_l2(full, data, counters, ticket)
                if found:
                    return value, ticket
            if not leased:
                break  # the holder failed or its lease expired: we may fill
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX)
        return MISSING, self._state.writes.ticket()

    # -- early refresh ------------------------------------------------------------------
    def _due_for_early_refresh(self, full: str) -> bool:
        beta = self.options.early_refresh_beta
        info = self._state.loaded.get(full)
        if not beta or info is None or info[1] is None:
            return False
        delta, expires_at = info
        return time.time() - delta * beta * math.log(1.0 - random.random()) >= expires_at

    def _refresh_early(self, full: str, loader: Callable[[], Any], timeout: Any, current: Any) -> Any:
        """One caller recomputes; the others keep the current value meanwhile."""
        ticket = self._state.writes.ticket()
        if self._l2 is None:
            return self._run_and_store(full, loader, timeout, None, ticket)
        token = self._take_lease(full)
        if token is None:
            return current
        return self._run_and_store(full, loader, timeout, token, ticket)


def _argument_digest(args: tuple, kwargs: dict) -> str:
    material = repr((args, sorted(kwargs.items()))).encode()
    return hashlib.blake2b(material, digest_size=12).hexdigest()


def cached(
    timeout: Any = DEFAULT_TIMEOUT,
    *,
    key: str | Callable[..., str] | None = None,
    cache_alias: str = "default",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Cache a function's results through ``get_or_load``.

    ``key`` is a prefix (default ``fn:<module>.<qualname>``), to which a digest
    of the arguments' reprs is appended - so use arguments with stable reprs
    (ids, strings) - or a callable taking the same arguments and returning the
    whole key. ``wrapper.invalidate(*args, **kwargs)`` deletes one result.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        prefix = key if isinstance(key, str) else f"fn:{func.__module__}.{func.__qualname__}"

        def key_for(*args: Any, **kwargs: Any) -> str:
            if callable(key):
                return key(*args, **kwargs)
            return f"{prefix}:{_argument_digest(args, kwargs)}"

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return caches[cache_alias].get_or_load(key_for(*args, **kwargs), lambda: func(*args, **kwargs), timeout)

        wrapper.key_for = key_for  # type: ignore[attr-defined]
        wrapper.invalidate = lambda *args, **kwargs: caches[cache_alias].delete(key_for(*args, **kwargs))  # type: ignore[attr-defined]
        return wrapper

    return decorate
